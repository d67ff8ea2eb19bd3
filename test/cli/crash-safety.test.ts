/**
 * Crash safety of `ptq quantize` (src/io/atomic.ts): the process is killed 20 times (SIGKILL,
 * SIGINT, SIGTERM; RTN and a small GPTQ run; half of the kills aimed at the moment the output
 * is being written, half at a uniformly random time), sometimes while replacing an existing
 * output. After every kill the target path is either absent, the complete previous output, or
 * the complete new output, byte for byte; SIGINT/SIGTERM leave no temporary directory; what
 * SIGKILL leaves behind is refused by `loadModel` / `ptq eval` and removed by the next run.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, watch } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { FileError } from '../../src/errors.js';
import { loadModel } from '../../src/model/load.js';
import { mulberry32 } from '../../src/random.js';
import { REPO, tempDir } from '../helpers.js';
import { runCli } from './run-cli.js';

const MODEL = path.join(REPO, 'models/tinystories-656k');
const TEXT = path.join(REPO, 'data/tinystories-valid-slice.txt');
const work = tempDir('ptq-crash-');

const ARGS = {
  rtn: ['--method', 'rtn', '--bits', '4'],
  gptq: ['--method', 'gptq', '--bits', '4', '--calib', TEXT, '--nsamples', '4', '--seqlen', '64'],
};
type Method = keyof typeof ARGS;

function quantize(method: Method, out: string): ChildProcess {
  return spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      path.join(REPO, 'src/cli/main.ts'),
      'quantize',
      MODEL,
      '-o',
      out,
      '--json',
      ...ARGS[method],
    ],
    {
      cwd: REPO,
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
}

function exited(
  child: ChildProcess,
): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  return new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal, stderr })));
}

const FILES = ['config.json', 'model.safetensors', 'tokenizer.json'];
const snapshot = (dir: string) => FILES.map((f) => readFileSync(path.join(dir, f)));
const same = (a: Buffer[], b: Buffer[]) => a.every((x, i) => x.equals(b[i]!));

test('kill -9 / SIGINT / SIGTERM at random points: never a partial output at the target path', {
  timeout: 300_000,
}, async () => {
  // Uninterrupted references (and their durations, to place the kills).
  const reference = {} as Record<Method, Buffer[]>;
  const duration = {} as Record<Method, number>;
  for (const method of ['rtn', 'gptq'] as Method[]) {
    const out = path.join(work, `ref-${method}`);
    const t0 = performance.now();
    const r = await exited(quantize(method, out));
    duration[method] = performance.now() - t0;
    assert.equal(r.code, 0, r.stderr);
    reference[method] = snapshot(out);
  }
  assert.ok(!same(reference.rtn, reference.gptq));

  const rand = mulberry32(9);
  const signals: NodeJS.Signals[] = ['SIGKILL', 'SIGINT', 'SIGTERM'];
  const outcomes: Record<string, number> = {};
  for (let i = 0; i < 20; i++) {
    const method: Method = i % 2 ? 'gptq' : 'rtn';
    const signal = signals[i % 3]!;
    const parent = path.join(work, `run-${i}`);
    mkdirSync(parent);
    const target = path.join(parent, 'out');
    // Every fourth run replaces a complete output of the other method.
    const previous = i % 4 >= 2 ? reference[method === 'rtn' ? 'gptq' : 'rtn'] : undefined;
    if (previous)
      cpSync(path.join(work, `ref-${method === 'rtn' ? 'gptq' : 'rtn'}`), target, { recursive: true });

    const child = quantize(method, target);
    const done = exited(child);
    const aimAtWrite = i % 4 === 0 || i % 4 === 3;
    let killedAt = 'random';
    if (aimAtWrite) {
      // Kill 0-10 ms after the temporary output directory appears (the writing phase).
      const watcher = watch(parent, (_, name) => {
        if (String(name).startsWith('.ptq-tmp-')) {
          watcher.close();
          killedAt = 'while writing';
          setTimeout(() => child.kill(signal), Math.floor(rand() * 10));
        }
      });
      done.then(() => watcher.close());
    } else {
      setTimeout(() => child.kill(signal), Math.floor(rand() * duration[method] * 1.1));
    }
    const r = await done;
    const finished = r.code === 0;

    // The target: absent, the previous complete output, or the new complete output.
    let state: string;
    if (!existsSync(target)) state = 'absent';
    else {
      const now = snapshot(target);
      if (same(now, reference[method])) state = 'new';
      else if (previous && same(now, previous)) state = 'previous';
      else assert.fail(`run ${i} (${method}, ${signal}, ${killedAt}): partial output at the target`);
    }
    if (finished) assert.equal(state, 'new', `run ${i}: finished but the output is ${state}`);
    if (!finished && previous) assert.notEqual(state, 'absent', `run ${i}: the previous output was lost`);
    if (state === 'absent') assert.equal(previous, undefined);

    // Leftovers: only SIGKILL may leave a temporary directory, and it is never loadable.
    const leftovers = readdirSync(parent).filter((f) => f.startsWith('.ptq-'));
    if (signal !== 'SIGKILL' || finished)
      assert.deepEqual(leftovers, [], `run ${i} (${signal}): ${leftovers}`);
    for (const l of leftovers) {
      await assert.rejects(
        loadModel(path.join(parent, l)),
        (e: unknown) =>
          e instanceof FileError && /unfinished output directory of ptq quantize/.test(e.message),
      );
    }
    if (!finished && signal !== 'SIGKILL') {
      // Killed by the signal's default action, or by atomic.ts's handler after cleaning up (128 + n).
      assert.ok(
        r.signal === signal || r.code === (signal === 'SIGINT' ? 130 : 143),
        `run ${i}: exit ${r.code} ${r.signal}`,
      );
    }
    const key = `${finished ? 'finished' : `${signal} ${killedAt}`} -> ${state}${leftovers.length ? ' + temp dir' : ''}`;
    outcomes[key] = (outcomes[key] ?? 0) + 1;
  }
  console.log(`  20 interrupted runs: ${JSON.stringify(outcomes)}`);
  // The kills landed in the writing phase at least once (otherwise the test proves little).
  assert.ok(Object.keys(outcomes).some((k) => k.includes('while writing')));

  // A later run to a target with stale SIGKILL leftovers completes, removes them, and equals
  // the uninterrupted reference (GPTQ is deterministic).
  const stale = readdirSync(work).flatMap((d) =>
    d.startsWith('run-')
      ? readdirSync(path.join(work, d))
          .filter((f) => f.startsWith('.ptq-'))
          .map(() => d)
      : [],
  );
  const dir = stale[0] ?? 'run-0';
  const target = path.join(work, dir, 'out');
  const r = await exited(quantize('gptq', target));
  assert.equal(r.code, 0, r.stderr);
  assert.ok(same(snapshot(target), reference.gptq));
  assert.deepEqual(
    readdirSync(path.join(work, dir)).filter((f) => f.startsWith('.ptq-')),
    [],
  );
});

test('ptq eval refuses an unfinished output directory', () => {
  const tmp = path.join(work, '.ptq-tmp-out-999999-1');
  cpSync(MODEL, tmp, { recursive: true });
  const r = runCli(['eval', tmp, '--text', TEXT]);
  assert.equal(r.code, 1);
  assert.match(
    r.stderr.trim(),
    /^ptq: FileError: .*\.ptq-tmp-out-999999-1: an unfinished output directory of ptq quantize, not a model \(the run writing it was interrupted; quantize again\)$/,
  );
});
