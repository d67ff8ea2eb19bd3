/**
 * `ptq quantize --resume` (src/quant/resume.ts): block-wise calibrated quantization continues
 * from its last finished block and writes output byte-identical to an uninterrupted run.
 *
 *  - Library: GPTQ (act-order, so g_idx travels through the state) interrupted after every
 *    block k and resumed: the checkpoint written equals the uninterrupted one byte for byte; the
 *    same for AWQ (asymmetric; its scales fold into norms, restored from the state). A state from
 *    other options, calibration or a damaged file is refused with a typed error naming the cause.
 *  - CLI: 20 kill -9 along a chain of `ptq quantize [--resume]` runs, each at a named step of a
 *    state commit or of the output write (src/io/fault-injection.ts; point and pass drawn from a
 *    seeded generator): after every kill the target is absent or the complete reference and the
 *    state is readable and holds exactly the blocks committed before the kill; every resumed run
 *    that finishes writes the reference byte for byte.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { calibrationFor } from '../../src/cli/commands.js';
import { FormatError, UsageError } from '../../src/errors.js';
import { gridSpecFor } from '../../src/formats/number-formats.js';
import { RESUME_FAULT_POINTS } from '../../src/io/fault-injection.js';
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

function quantize(out: string, resume: boolean, fault?: string): ChildProcess {
  const args = [path.join(REPO, 'src/cli/main.ts'), 'quantize', MODEL, '-o', out, ...ARGS];
  const env = { ...process.env };
  delete env.PTQ_FAULT;
  if (fault) env.PTQ_FAULT = fault;
  return spawn(process.execPath, ['--import', 'tsx', ...args, ...(resume ? ['--resume'] : [])], {
    cwd: REPO,
    env,
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
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
}

/**
 * The kills: a resume-state commit stopped at each of its steps (src/io/fault-injection.ts,
 * PTQ_FAULT=SIGKILL@<point>#<n>, the n-th pass in the run), or the output write after the last
 * commit. Given the run starts from `blocks` finished blocks, `passes` is how often the point is
 * reached (a commit writes its block file, the next block's activations except after the last
 * block, then state.json: three fsynced temporaries, two after the last) and `after(n)` the
 * blocks the state must hold once the n-th pass is killed.
 */
const KILLS: Record<
  string,
  { passes: (blocks: number) => number; after: (blocks: number, n: number) => number }
> = {
  'resume:tmp-synced': { passes: (b) => 3 * (LAYERS - b) - 1, after: (b, n) => b + Math.floor((n - 1) / 3) },
  'resume:block-renamed': { passes: (b) => LAYERS - b, after: (b, n) => b + n - 1 },
  'resume:act-renamed': { passes: (b) => LAYERS - b - 1, after: (b, n) => b + n - 1 },
  'resume:committed': { passes: (b) => LAYERS - b, after: (b, n) => b + n },
  'safetensors:header-written': { passes: () => 1, after: () => LAYERS },
  'output:filled': { passes: () => 1, after: () => LAYERS },
};

test('CLI: 20 × kill -9 at every step of the state commits and the output write, --resume: never a partial output, byte-identical result', {
  timeout: 300_000,
}, async () => {
  const ref = path.join(work, 'cli-ref');
  const r0 = await exited(quantize(ref, false));
  assert.equal(r0.code, 0, r0.stderr);
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
  for (let i = 0; i < 20; i++) {
    const before = await resumeProgress(state);
    const blocks = before?.blocks ?? 0;
    // Every eighth kill stops the output write (after all blocks, so the next finish resumes from
    // the end); the others a step of a commit, the four in turn, skipping those this run does not
    // reach, at an early pass (1-2, the temporaries 1-3) so that blocks are left to resume.
    const point =
      i % 8 === 7
        ? i % 16 === 7
          ? 'safetensors:header-written'
          : 'output:filled'
        : ([0, 1, 2, 3]
            .map((k) => RESUME_FAULT_POINTS[(i + k) % 4]!)
            .find((p) => KILLS[p]!.passes(blocks) > 0) ?? 'output:filled');
    const passes = KILLS[point]!.passes(blocks);
    const n = 1 + Math.floor(rand() * Math.min(passes, point === 'resume:tmp-synced' ? 3 : 2));
    const r = await exited(quantize(target, before !== undefined, `SIGKILL@${point}#${n}`));
    // The kill happened, where it was aimed.
    assert.equal(r.signal, 'SIGKILL', `run ${i} (${point}#${n}): exit ${r.code}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`ptq: fault injection: SIGKILL at ${point}\\n$`), `run ${i}`);
    // Never a partial output: the target is absent or the complete reference.
    if (existsSync(target)) assert.ok(same(snapshot(target), reference), `run ${i}: partial output`);
    // The state survives every kill readable, holding exactly the blocks committed before it.
    // (A first run killed before its first commit leaves no state.json: nothing to resume.)
    const after = await resumeProgress(state);
    const want = KILLS[point]!.after(blocks, n);
    assert.deepEqual(
      after,
      want === 0 && !before ? undefined : { blocks: want, layers: LAYERS },
      `run ${i}: ${point}#${n} from ${blocks}`,
    );
    const key = `${point} -> ${want === blocks ? 'no new block' : 'new blocks'}`;
    outcomes[key] = (outcomes[key] ?? 0) + 1;
    // Every fourth kill: resume to the end and compare.
    if ((i + 1) % 4 === 0) await finish();
  }
  // And one resume from inside the model whatever its depth (on the bundled 2-block model, used
  // without ../shared, the kills above can reach the last block before every finish): killed right
  // after the first block's commit, the state holds 1 block and the finish continues from it.
  const k = await exited(quantize(target, false, 'SIGKILL@resume:committed#1'));
  assert.equal(k.signal, 'SIGKILL', `exit ${k.code}: ${k.stderr}`);
  assert.deepEqual(await resumeProgress(state), { blocks: 1, layers: LAYERS });
  await finish();
  console.log(`  20 kill -9: ${JSON.stringify(outcomes)}; finished resumes started at block ${resumedFrom}`);
  // Resumes continued from inside the model, not only from nothing or from everything.
  assert.ok(
    resumedFrom.some((b) => b > 0 && b < LAYERS),
    `resumed from ${resumedFrom}`,
  );

  // The state is never a model: ptq eval refuses the directory and each of its files.
  const killed = await exited(quantize(target, false, 'SIGKILL@resume:committed#1'));
  assert.equal(killed.signal, 'SIGKILL', killed.stderr);
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
