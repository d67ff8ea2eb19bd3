/**
 * One calibrated run per resume state (src/quant/resume.ts, issue #14 item 8): two GPTQ runs to
 * the same `-o` shared `<out>.ptq-resume/`, and one died with ENOENT on rename when the other
 * cleaned up its files. Now `<out>.ptq-resume.lock` holds the pid of the run using the state:
 *  - two real concurrent `ptq quantize` processes: one finishes, the other exits 1 with one line
 *    naming the first one's pid; nothing of either is left beside the output;
 *  - a lock held by a live process refuses a run; a lock whose process is gone (exited, or its
 *    pid now another process) is taken over, and released when the run exits, even on an error.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { REPO, tempDir } from '../helpers.js';
import { runCli } from './run-cli.js';

const MODEL = path.join(REPO, 'models/tinystories-656k');
const TEXT = path.join(REPO, 'data/tinystories-valid-slice.txt');
const work = tempDir('ptq-resume-lock-');
const ARGS = ['--method', 'gptq', '--bits', '4', '--group-size', '4', '--calib', TEXT, '--seqlen', '128'];
// Long enough (~1-2 s of GPTQ) that two runs started together overlap.
const NSAMPLES = ['--nsamples', '32'];

const stateOf = (out: string) => `${path.resolve(out)}.ptq-resume`;
const lockOf = (out: string) => `${stateOf(out)}.lock`;

function quantize(out: string, extra: string[] = []): ChildProcess {
  const args = [path.join(REPO, 'src/cli/main.ts'), 'quantize', MODEL, '-o', out, ...ARGS, ...extra];
  return spawn(process.execPath, ['--import', 'tsx', ...args], {
    cwd: REPO,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

function exited(child: ChildProcess): Promise<{ code: number | null; stderr: string; pid: number }> {
  let stderr = '';
  child.stdout!.resume();
  child.stderr!.on('data', (d) => (stderr += d));
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, stderr, pid: child.pid! })));
}

/** Start time of a process as /proc/<pid>/stat gives it (what the lock records). */
function startTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

function writeLock(out: string, owner: { pid: number; host?: string; started?: string }) {
  writeFileSync(lockOf(out), JSON.stringify({ host: os.hostname(), ...owner }));
}

/** Only the output itself is left in its parent: no state, no lock, no temporary file. */
function assertOnlyOutput(out: string) {
  const left = readdirSync(path.dirname(out)).filter((f) => f.startsWith(path.basename(out)));
  assert.deepEqual(left, [path.basename(out)]);
}

const refusal = (out: string, pid: number) =>
  `ptq: UsageError: ${stateOf(out)}: the resume state is in use by another run (pid ${pid}); expected one run at a time per output (wait for pid ${pid} to finish or write to another -o; if no such process exists, remove ${lockOf(out)})`;

test('two concurrent GPTQ runs to the same -o: one finishes, the other refuses naming its pid', {
  timeout: 120_000,
}, async () => {
  const out = path.join(work, 'both', 'out');
  mkdirSync(path.dirname(out));
  const [a, b] = await Promise.all([exited(quantize(out, NSAMPLES)), exited(quantize(out, NSAMPLES))]);
  const [winner, loser] = a.code === 0 ? [a, b] : [b, a];
  assert.equal(winner.code, 0, `one run finishes: ${winner.stderr}`);
  assert.equal(loser.code, 1, `the other is refused, exit 1: ${loser.stderr}`);
  assert.equal(loser.stderr.trim(), refusal(out, winner.pid));
  assert.ok(existsSync(path.join(out, 'model.safetensors')));
  assertOnlyOutput(out);
});

test('a lock held by a live process refuses a run (with or without --resume); nothing is touched', () => {
  const out = path.join(work, 'held');
  // This test process: alive, same host, its real start time.
  writeLock(out, { pid: process.pid, started: startTime(process.pid) });
  for (const extra of [NSAMPLES, [...NSAMPLES, '--resume']]) {
    const r = runCli(['quantize', MODEL, '-o', out, ...ARGS, ...extra]);
    assert.equal(r.code, 1, r.stderr);
    const expected = extra.includes('--resume')
      ? /^ptq: UsageError: .*no resume state to continue from/ // checked before any lock is taken
      : new RegExp(`^${refusal(out, process.pid).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);
    assert.match(r.stderr.trim(), expected);
  }
  assert.ok(!existsSync(stateOf(out)) && !existsSync(out));
  assert.ok(existsSync(lockOf(out)), "another process's lock is left alone");
});

test('stale locks are taken over: an exited pid, a reused pid; the lock goes when the run ends', () => {
  // A pid that has exited.
  const gone = spawnSync(process.execPath, ['-e', '']).pid!;
  const out1 = path.join(work, 'stale-exited');
  writeLock(out1, { pid: gone });
  let r = runCli(['quantize', MODEL, '-o', out1, ...ARGS, '--nsamples', '4']);
  assert.equal(r.code, 0, r.stderr);
  assertOnlyOutput(out1);
  // A live pid that started at another time than the locker: the pid was reused.
  const out2 = path.join(work, 'stale-reused');
  writeLock(out2, { pid: process.pid, started: '1' });
  r = runCli(['quantize', MODEL, '-o', out2, ...ARGS, '--nsamples', '4']);
  assert.equal(r.code, 0, r.stderr);
  assertOnlyOutput(out2);
});

test('killed after a block (stale lock + state), then a refused --resume: the lock is released on exit', {
  timeout: 120_000,
}, async () => {
  const out = path.join(work, 'killed');
  const child = quantize(out, NSAMPLES);
  const done = exited(child);
  // kill -9 once the first block is committed (state.json appears).
  const poll = setInterval(() => {
    if (existsSync(path.join(stateOf(out), 'state.json'))) child.kill('SIGKILL');
  }, 2);
  await done;
  clearInterval(poll);
  assert.ok(existsSync(path.join(stateOf(out), 'state.json')), 'the run was killed with a state');
  assert.ok(existsSync(lockOf(out)), 'kill -9 leaves the lock');
  // Other options: refused after the (stale) lock was taken; exit releases it.
  const r = runCli(['quantize', MODEL, '-o', out, ...ARGS, '--bits', '3', ...NSAMPLES, '--resume']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^ptq: UsageError: .*the resume state was written by a different run/);
  assert.ok(!existsSync(lockOf(out)), 'the lock is released when the refused run exits');
  // The same options resume and finish; state and lock are gone.
  const ok = runCli(['quantize', MODEL, '-o', out, ...ARGS, ...NSAMPLES, '--resume', '--json']);
  assert.equal(ok.code, 0, ok.stderr);
  assert.ok(JSON.parse(ok.stdout).resumedBlocks >= 1);
  assertOnlyOutput(out);
});
