/** Shared test utilities: deterministic randomness, comparisons, and asset paths. */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const ASSETS = path.resolve(REPO, '..', 'shared', 'assets');
export const assetsPresent = existsSync(ASSETS);

/** Running under CI (CI set, and not to false or 0; .ci/run sets it): every outside tool must be there. */
export const CI = !!process.env.CI && process.env.CI !== 'false' && process.env.CI !== '0';

/**
 * For a test whose outside tool (llama.cpp, a compiler, Chromium) is unavailable: skip it with
 * `reason` on a developer's machine, fail with it under CI, where a comparison that did not run
 * must not pass silently (.ci/run installs the tools). `return skipOrFail(t, reason)`.
 */
export function skipOrFail(t: TestContext, reason: string): void {
  if (CI) assert.fail(`CI=true and ${reason}`);
  t.skip(reason);
}

/**
 * A fresh directory under the OS temporary directory, removed with its contents once test `t`
 * has finished, or without `t` the tests of the calling file. Inside a test, pass `t`: node:test's
 * module-level after() finds the running test by async context, and after an await on a promise
 * made during another test (the cached llama.cpp runtime) it attaches the removal to that test,
 * already finished, where it never runs.
 */
export function tempDir(prefix: string, t?: TestContext): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  const remove = () => rmSync(dir, { recursive: true, force: true });
  if (t) t.after(remove);
  else after(remove);
  return dir;
}

/** Deterministic randomness for reproducible tests. */
export { mulberry32 as seededRandom } from '../src/random.js';

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}
