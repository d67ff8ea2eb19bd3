/**
 * Crash safety of `ptq quantize` (src/io/atomic.ts): the write is stopped at each of its named
 * steps (src/io/fault-injection.ts: PTQ_FAULT=<signal>@<point> makes the process signal itself
 * there) by SIGKILL, SIGINT and SIGTERM, writing a new output and replacing an existing one, on
 * the streaming writer (RTN) and the in-memory one (GPTQ). Each step leaves one exact state,
 * checked byte for byte: the target path absent, the complete previous output or the complete
 * new output, and beside it only the temporaries SIGKILL cannot clean up (SIGINT/SIGTERM leave
 * none). Those are refused by `loadModel` / `ptq eval` and removed by the next run.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { FileError } from '../../src/errors.js';
import {
  FAULT_SIGNALS,
  type FaultPoint,
  type FaultSignal,
  OUTPUT_FAULT_POINTS,
} from '../../src/io/fault-injection.js';
import { loadModel } from '../../src/model/load.js';
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

function quantize(method: Method, out: string, fault?: string): ChildProcess {
  const env = { ...process.env };
  delete env.PTQ_FAULT;
  if (fault) env.PTQ_FAULT = fault;
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
    { cwd: REPO, env, stdio: ['ignore', 'ignore', 'pipe'] },
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

interface Case {
  point: FaultPoint;
  signal: FaultSignal;
  method: Method;
  /** Whether a complete output of the other method is at the target before the run. */
  replacing: boolean;
}

const BEFORE_SWAP = ['output:tmp-created', 'safetensors:header-written', 'output:filled'] as const;
const SWAP = ['output:old-aside', 'output:swapped'] as const;
const CASES: Case[] = [
  // Steps before the swap: every signal, alternately writing a new output and replacing one.
  ...BEFORE_SWAP.flatMap((point, p) =>
    FAULT_SIGNALS.map((signal, s) => ({
      point,
      signal,
      method: 'rtn' as const,
      replacing: (p + s) % 2 === 1,
    })),
  ),
  // The swap happens only when an output is replaced.
  ...SWAP.flatMap((point) =>
    FAULT_SIGNALS.map((signal) => ({ point, signal, method: 'rtn' as const, replacing: true })),
  ),
  // GPTQ writes its checkpoint with writeSafetensors, not the streaming writer RTN uses.
  { point: 'safetensors:header-written', signal: 'SIGKILL', method: 'gptq', replacing: false },
  { point: 'safetensors:header-written', signal: 'SIGTERM', method: 'gptq', replacing: true },
];

/**
 * The state a write stopped at `point` leaves: what the target path holds and the kinds of
 * temporaries beside it (atomic.ts: SIGINT/SIGTERM's handler removes the temporary output and
 * finishes or undoes a swap under way; SIGKILL leaves everything where it was).
 */
function expectedState(c: Case): { target: 'absent' | 'previous' | 'new'; temporaries: string[] } {
  const killed = c.signal === 'SIGKILL';
  switch (c.point) {
    case 'output:old-aside':
      // The old output renamed aside, the new one complete in its temporary; the handler puts the old back.
      return killed
        ? { target: 'absent', temporaries: ['.ptq-old-', '.ptq-tmp-'] }
        : { target: 'previous', temporaries: [] };
    case 'output:swapped':
      return { target: 'new', temporaries: killed ? ['.ptq-old-'] : [] };
    default:
      return { target: c.replacing ? 'previous' : 'absent', temporaries: killed ? ['.ptq-tmp-'] : [] };
  }
}

test('every step of the write stopped by kill -9 / SIGINT / SIGTERM: the state it leaves, exactly', {
  timeout: 300_000,
}, async () => {
  assert.deepEqual(
    new Set(CASES.map((c) => c.point)),
    new Set(OUTPUT_FAULT_POINTS),
    'every output-write fault point is tested',
  );
  const reference = {} as Record<Method, Buffer[]>;
  for (const method of ['rtn', 'gptq'] as Method[]) {
    const out = path.join(work, `ref-${method}`);
    const r = await exited(quantize(method, out));
    assert.equal(r.code, 0, r.stderr);
    reference[method] = snapshot(out);
  }
  assert.ok(!same(reference.rtn, reference.gptq));

  const outcomes: string[] = [];
  let stale: string | undefined;
  for (const [i, c] of CASES.entries()) {
    const label = `run ${i} (${c.method}, ${c.signal} at ${c.point}${c.replacing ? ', replacing' : ''})`;
    const other: Method = c.method === 'rtn' ? 'gptq' : 'rtn';
    const parent = path.join(work, `run-${i}`);
    mkdirSync(parent);
    const target = path.join(parent, 'out');
    if (c.replacing) cpSync(path.join(work, `ref-${other}`), target, { recursive: true });

    const child = quantize(c.method, target, `${c.signal}@${c.point}`);
    const r = await exited(child);
    // The fault fired at its point (not a kill that came too late or an error), and ended the process.
    assert.ok(
      r.stderr.includes(`ptq: fault injection: ${c.signal} at ${c.point}\n`),
      `${label}: ${r.stderr}`,
    );
    if (c.signal === 'SIGKILL') assert.equal(r.signal, 'SIGKILL', label);
    else
      assert.equal(r.code, c.signal === 'SIGINT' ? 130 : 143, `${label}: ${r.code} ${r.signal} ${r.stderr}`);

    const expected = expectedState(c);
    const state = !existsSync(target)
      ? 'absent'
      : same(snapshot(target), reference[c.method])
        ? 'new'
        : c.replacing && same(snapshot(target), reference[other])
          ? 'previous'
          : 'partial';
    assert.equal(state, expected.target, label);

    const temporaries = readdirSync(parent)
      .filter((f) => f.startsWith('.ptq-'))
      .sort();
    assert.deepEqual(
      temporaries.map((f) => f.slice(0, '.ptq-tmp-'.length)),
      expected.temporaries,
      `${label}: ${temporaries}`,
    );
    for (const t of temporaries) {
      // Named after the killed process, so the next run knows its owner is gone.
      assert.match(t, new RegExp(`^\\.ptq-(tmp|old)-${child.pid}-[0-9a-f]{8}-out$`));
      await assert.rejects(
        loadModel(path.join(parent, t)),
        (e: unknown) =>
          e instanceof FileError && /unfinished output directory of ptq quantize/.test(e.message),
      );
    }
    if (expected.temporaries.length === 2) stale = parent;
    outcomes.push(
      `${c.method} ${c.signal}@${c.point}${c.replacing ? ' (replacing)' : ''} -> ${state}${temporaries.length ? ` + ${temporaries.length} temporaries` : ''}`,
    );
  }
  console.log(`  ${CASES.length} interrupted writes:\n    ${outcomes.join('\n    ')}`);

  // A later run into the directory where kill -9 left the old output aside and the new one in
  // its temporary (the target absent) completes, removes both, and equals the reference.
  assert.ok(stale, 'a case leaves two temporaries');
  assert.equal(readdirSync(stale).filter((f) => f.startsWith('.ptq-')).length, 2);
  const r = await exited(quantize('rtn', path.join(stale, 'out')));
  assert.equal(r.code, 0, r.stderr);
  assert.ok(same(snapshot(path.join(stale, 'out')), reference.rtn));
  assert.deepEqual(readdirSync(stale), ['out']);
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
