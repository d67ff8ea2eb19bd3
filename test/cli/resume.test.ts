/**
 * `ptq quantize --resume` (src/quant/resume.ts): block-wise calibrated quantization continues
 * from its last finished block and writes output byte-identical to an uninterrupted run.
 *
 *  - Library: GPTQ (act-order, so g_idx travels through the state) interrupted after every
 *    block k and resumed: the checkpoint written equals the uninterrupted one byte for byte; the
 *    same for AWQ (asymmetric; its scales fold into norms, restored from the state). A state from
 *    other options, calibration or a damaged file is refused with a typed error naming the cause.
 *  - CLI: 20 kill -9 at random points of a chain of `ptq quantize [--resume]` runs (half at a
 *    uniformly random time, half 0-4 ms after a random file event in the resume directory, i.e.
 *    inside state writes): after every kill the target is absent or the complete reference, the
 *    state is readable, and every resumed run that finishes writes the reference byte for byte.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  truncateSync,
  watch,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { calibrationFor } from '../../src/cli/commands.js';
import { FormatError, UsageError } from '../../src/errors.js';
import { gridSpecFor } from '../../src/formats/number-formats.js';
import { writePtqCheckpoint } from '../../src/io/ptq-checkpoint.js';
import { loadModel } from '../../src/model/load.js';
import { type QuantizeOptions, quantizeModel } from '../../src/quant/quantize-model.js';
import { removeResumeState, resumeDirFor, resumeProgress } from '../../src/quant/resume.js';
import { mulberry32 } from '../../src/random.js';
import { ASSETS, assetsPresent, REPO, tempDir } from '../helpers.js';
import { runCli } from './run-cli.js';

// stories260k has 5 blocks (more places to be interrupted); the bundled model 2.
const MODEL = assetsPresent
  ? path.join(ASSETS, 'models/stories260k/stories260K.bin')
  : path.join(REPO, 'models/tinystories-656k');
const TEXT = path.join(REPO, 'data/tinystories-valid-slice.txt');
const work = tempDir('ptq-resume-');

const FILES = ['config.json', 'model.safetensors'];
const snapshot = (dir: string) => FILES.map((f) => readFileSync(path.join(dir, f)));
const same = (a: Buffer[], b: Buffer[]) => a.every((x, i) => x.equals(b[i]!));

// ---------- library ----------

const model = await loadModel(MODEL);
const LAYERS = model.config.numLayers;
const calibration = (seed = 0) => calibrationFor(model, { calib: TEXT, nsamples: 4, seqlen: 64, seed });

async function options(over: Partial<QuantizeOptions> = {}): Promise<QuantizeOptions> {
  return {
    method: 'gptq',
    grid: gridSpecFor('int', { bits: 4, groupSize: 4 }),
    methodOptions: { actOrder: true },
    calibration: await calibration(),
    ...over,
  };
}

class Interrupted extends Error {}

/** Quantize and write the checkpoint; `stopAfter` blocks throws out of the run like a crash. */
async function run(out: string, o: QuantizeOptions, stopAfter?: number) {
  const q = await quantizeModel(model.config, model.weights, {
    ...o,
    onProgress: (p) => {
      if (p.layer === stopAfter) throw new Interrupted(`stopped after block ${stopAfter}`);
    },
  });
  await writePtqCheckpoint(out, { ...model, weights: q.weights }, q.quantization);
  return q;
}

test('library: GPTQ interrupted after each block k, resumed: byte-identical checkpoint', async () => {
  const o = await options();
  await run(path.join(work, 'lib-ref'), o);
  const reference = snapshot(path.join(work, 'lib-ref'));
  const dir = path.join(work, 'lib.ptq-resume');
  for (let k = 1; k <= LAYERS; k++) {
    await assert.rejects(
      run(path.join(work, `lib-${k}`), { ...o, resume: { dir, resume: false } }, k),
      Interrupted,
    );
    assert.deepEqual(await resumeProgress(dir), { blocks: k, layers: LAYERS });
    const q = await run(path.join(work, `lib-${k}`), { ...o, resume: { dir, resume: true } });
    assert.equal(q.resumedBlocks, k);
    assert.ok(same(snapshot(path.join(work, `lib-${k}`)), reference), `resumed after block ${k}`);
    // The state of a resumed run holds all blocks (the interrupted run's and its own).
    assert.deepEqual(await resumeProgress(dir), { blocks: LAYERS, layers: LAYERS });
    // Killed after the last block, before the output was written: nothing is recomputed.
    if (k === LAYERS) {
      const all = await run(path.join(work, 'lib-all'), { ...o, resume: { dir, resume: true } });
      assert.equal(all.resumedBlocks, LAYERS);
      assert.ok(same(snapshot(path.join(work, 'lib-all')), reference));
    }
    await removeResumeState(dir); // as `ptq quantize` does once the output is written
  }
});

test('library: AWQ (norms and folded scales restored) resumed after block 1: byte-identical', async () => {
  const o = await options({ method: 'awq', grid: gridSpecFor('int', { bits: 3, groupSize: 4, asym: true }) });
  await run(path.join(work, 'awq-ref'), o);
  const dir = path.join(work, 'awq.ptq-resume');
  await assert.rejects(run(path.join(work, 'awq'), { ...o, resume: { dir, resume: false } }, 1), Interrupted);
  const q = await run(path.join(work, 'awq'), { ...o, resume: { dir, resume: true } });
  assert.equal(q.resumedBlocks, 1);
  assert.ok(same(snapshot(path.join(work, 'awq')), snapshot(path.join(work, 'awq-ref'))));
  assert.ok(q.layers.some((l) => l.alpha !== undefined && l.name.startsWith('model.layers.0.')));
});

test('library: GPTQ with SpQR outliers and LoRC factors (nested arrays) resumed after block 2: byte-identical', async () => {
  const o = await options({ outliers: 0.01, lorcRank: 2 });
  await run(path.join(work, 'side-ref'), o);
  const dir = path.join(work, 'side.ptq-resume');
  await assert.rejects(
    run(path.join(work, 'side'), { ...o, resume: { dir, resume: false } }, 2),
    Interrupted,
  );
  const q = await run(path.join(work, 'side'), { ...o, resume: { dir, resume: true } });
  assert.equal(q.resumedBlocks, 2);
  const restored = [...q.quantization.tensors.values()][0]!;
  assert.ok(restored.outliers!.values.length > 0 && restored.lowRank!.rank === 2);
  assert.ok(same(snapshot(path.join(work, 'side')), snapshot(path.join(work, 'side-ref'))));
});

test('library: a state of other options or calibration is refused, a damaged one detected', async () => {
  const o = await options();
  const dir = path.join(work, 'bad.ptq-resume');
  await assert.rejects(run(path.join(work, 'bad'), { ...o, resume: { dir, resume: false } }, 1), Interrupted);
  const resume = { dir, resume: true };
  const refused = async (over: Partial<QuantizeOptions>, pattern: RegExp) =>
    assert.rejects(run(path.join(work, 'bad'), { ...o, ...over, resume }), (e: unknown) => {
      assert.ok(e instanceof UsageError, String(e));
      assert.match(e.message, /the resume state was written by a different run/);
      assert.match(e.message, pattern);
      assert.match(e.message, /run without --resume to start over/);
      return true;
    });
  await refused(
    { grid: gridSpecFor('int', { bits: 3, groupSize: 4 }) },
    /different grid \(.*"bits":4.* then, .*"bits":3.* now\)/,
  );
  await refused(
    { methodOptions: { actOrder: true, damp: 0.05 } },
    /different gptq \(.*"damp":0\.01.* then, .*"damp":0\.05.* now\)/,
  );
  await refused(
    { calibration: await calibration(1) },
    /calibration windows .*calibration \(.*"seed":0.* then, .*"seed":1.* now\)/,
  );
  const changed = new Map(model.weights);
  const emb = changed.get('model.embed_tokens.weight')!;
  const data = emb.data.slice();
  data[0]! += 1e-3;
  changed.set('model.embed_tokens.weight', { shape: emb.shape, data });
  await assert.rejects(
    quantizeModel(model.config, changed, { ...o, resume }),
    (e: unknown) => e instanceof UsageError && /different model weights or config/.test(e.message),
  );

  // Damage: a flipped byte in the activations, a truncated block file.
  const files = readdirSync(dir);
  const act = path.join(dir, files.find((f) => f.startsWith('act-'))!);
  const bytes = readFileSync(act);
  bytes[100]! ^= 1;
  writeFileSync(act, bytes);
  await assert.rejects(
    run(path.join(work, 'bad'), { ...o, resume }),
    (e: unknown) => e instanceof FormatError && /damaged resume state; expected SHA-256/.test(e.message),
  );
  bytes[100]! ^= 1;
  writeFileSync(act, bytes);
  const block = path.join(dir, files.find((f) => f.startsWith('block-'))!);
  truncateSync(block, 1000);
  await assert.rejects(
    run(path.join(work, 'bad'), { ...o, resume }),
    (e: unknown) =>
      e instanceof FormatError && /damaged resume state; expected \d+ bytes, got 1000/.test(e.message),
  );

  // A fresh run replaces the damaged state: a warning, and after its first block only its own files.
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(`${w.name}: ${w.message}`);
  process.on('warning', onWarning);
  writeFileSync(path.join(dir, 'state.json.tmp-999999'), 'an interrupted manifest write');
  await assert.rejects(run(path.join(work, 'bad'), { ...o, resume: { dir, resume: false } }, 1), Interrupted);
  await new Promise((r) => setImmediate(r));
  process.off('warning', onWarning);
  assert.ok(
    warnings.some((w) => /^PtqWarning: replacing the resume state of an earlier run/.test(w)),
    String(warnings),
  );
  const now = readdirSync(dir).sort();
  assert.equal(now.length, 3, String(now));
  assert.ok(now.every((f) => !files.includes(f) || f === 'state.json'));
  assert.deepEqual(await resumeProgress(dir), { blocks: 1, layers: LAYERS });
});

// ---------- CLI ----------

const ARGS = [
  '--method',
  'gptq',
  '--bits',
  '4',
  '--group-size',
  '4',
  '--act-order',
  '--calib',
  TEXT,
  '--nsamples',
  '8',
  '--seqlen',
  '128',
  '--json',
];

function quantize(out: string, resume: boolean): ChildProcess {
  const args = [path.join(REPO, 'src/cli/main.ts'), 'quantize', MODEL, '-o', out, ...ARGS];
  return spawn(process.execPath, ['--import', 'tsx', ...args, ...(resume ? ['--resume'] : [])], {
    cwd: REPO,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

function exited(
  child: ChildProcess,
): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  return new Promise((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
}

/**
 * Call `onEvent(name)` for every file event inside the resume directory `state` (created by the
 * run, so its parent is watched until it appears) until `done` settles.
 */
function watchState(state: string, done: Promise<unknown>, onEvent: (name: string) => void): void {
  let inner: ReturnType<typeof watch> | undefined;
  const follow = () => {
    if (!inner && existsSync(state)) inner = watch(state, (_, name) => onEvent(String(name)));
  };
  const outer = watch(path.dirname(state), follow);
  follow();
  done.then(() => {
    outer.close();
    inner?.close();
  });
}

test('CLI: 20 × kill -9 at random points, --resume: never a partial output, byte-identical result', {
  timeout: 300_000,
}, async () => {
  // The uninterrupted reference: its duration, when its state appeared and how many file events
  // its state writes make (to place the kills).
  const ref = path.join(work, 'cli-ref');
  const t0 = performance.now();
  const child0 = quantize(ref, false);
  const done0 = exited(child0);
  let firstEvent = 0;
  let events = 0;
  watchState(resumeDirFor(ref), done0, () => {
    firstEvent ||= performance.now() - t0;
    events++;
  });
  const r0 = await done0;
  const duration = performance.now() - t0;
  assert.equal(r0.code, 0, r0.stderr);
  assert.ok(events >= LAYERS, `${events} events`);
  assert.ok(!existsSync(resumeDirFor(ref)), 'a finished run leaves no resume state');
  const reference = snapshot(ref);

  const parent = path.join(work, 'cli');
  mkdirSync(parent);
  const target = path.join(parent, 'out');
  const state = resumeDirFor(target);
  const rand = mulberry32(9);
  const resumedFrom: number[] = [];
  const outcomes: Record<string, number> = {};
  const finish = async () => {
    const progress = await resumeProgress(state);
    const r = await exited(quantize(target, progress !== undefined));
    assert.equal(r.code, 0, r.stderr);
    assert.ok(same(snapshot(target), reference), 'resumed output differs from the uninterrupted one');
    assert.ok(!existsSync(state), 'the state is removed once the output is written');
    if (progress) {
      assert.equal(JSON.parse(r.stdout).resumedBlocks, progress.blocks);
      resumedFrom.push(progress.blocks);
    }
  };
  // 20 kills; a run the kill missed (it finished first) is checked too but does not count.
  let kills = 0;
  for (let i = 0; kills < 20; i++) {
    assert.ok(i < 40, `only ${kills} of ${i} runs were killed`);
    const before = await resumeProgress(state);
    const child = quantize(target, before !== undefined);
    const done = exited(child);
    let how = 'random time';
    if (i % 2) {
      // Inside the state writes: 0-4 ms after a random one of its file events.
      const n = 1 + Math.floor(rand() * events);
      let seen = 0;
      watchState(state, done, () => {
        if (++seen !== n) return;
        how = 'state write';
        setTimeout(() => child.kill('SIGKILL'), Math.floor(rand() * 5));
      });
    } else {
      // Uniformly random from shortly before the first block is saved to past the end.
      const at = 0.8 * firstEvent + rand() * (1.1 * duration - 0.8 * firstEvent);
      setTimeout(() => child.kill('SIGKILL'), Math.floor(at));
    }
    const r = await done;
    assert.ok(r.code === 0 || r.signal === 'SIGKILL', `run ${i}: exit ${r.code}: ${r.stderr}`);
    // Never a partial output: the target is absent or the complete reference.
    if (existsSync(target)) assert.ok(same(snapshot(target), reference), `run ${i}: partial output`);
    if (r.code === 0) {
      assert.ok(existsSync(target) && !existsSync(state), `run ${i}: finished but state left`);
      if (before) {
        assert.equal(JSON.parse(r.stdout).resumedBlocks, before.blocks);
        resumedFrom.push(before.blocks);
      }
    }
    // The state survives every kill readable (a damaged manifest would throw here).
    const after = await resumeProgress(state);
    if (before && after) assert.ok(after.blocks >= before.blocks, `run ${i}: the state went backwards`);
    const key = `${r.code === 0 ? 'finished' : `killed at ${how}`} -> ${after ? `state ${after.blocks}/${LAYERS}` : 'no state'}`;
    outcomes[key] = (outcomes[key] ?? 0) + 1;
    // Every fourth kill: resume to the end and compare.
    if (r.code !== 0 && ++kills % 4 === 0) await finish();
  }
  console.log(
    `  20 kill -9 (of ${Object.values(outcomes).reduce((a, b) => a + b)} runs): ${JSON.stringify(outcomes)}; finished resumes started at block ${resumedFrom}`,
  );
  // Resumes continued from inside the model, not only from nothing or from everything.
  assert.ok(
    resumedFrom.some((b) => b > 0 && b < LAYERS),
    `resumed from ${resumedFrom}`,
  );

  // The state is never a model: ptq eval refuses the directory and each of its files.
  const child = quantize(target, false);
  const done = exited(child);
  watchState(state, done, (name) => {
    if (name === 'state.json') child.kill('SIGKILL');
  });
  await done;
  const files = readdirSync(state);
  assert.ok(files.includes('state.json') && files.some((f) => f.startsWith('act-')), String(files));
  for (const f of ['', ...files]) {
    const e = runCli(['eval', path.join(state, f), '--text', TEXT]);
    assert.equal(e.code, 1, `ptq eval accepted ${f || 'the state directory'}`);
    assert.match(e.stderr, /^ptq: (FileError|FormatError|ConfigError): /);
  }
});

test('CLI: --resume without a state, or with a method that has none, is a usage error', () => {
  const target = path.join(work, 'never-run');
  let r = runCli(['quantize', MODEL, '-o', target, ...ARGS, '--resume']);
  assert.equal(r.code, 1);
  assert.equal(
    r.stderr.trim(),
    `ptq: UsageError: ${target}.ptq-resume 'resume': no resume state to continue from; expected state.json of an interrupted gptq/awq run to the same output, got none (the run finished or never completed a block; run without --resume to start over)`,
  );
  r = runCli(['quantize', MODEL, '-o', target, '--method', 'rtn', '--resume']);
  assert.equal(r.code, 1);
  assert.equal(
    r.stderr.trim(),
    `ptq: UsageError: 'resume': nothing to resume: rtn does not calibrate block by block; expected gptq or awq, got rtn (run without --resume)`,
  );
});
