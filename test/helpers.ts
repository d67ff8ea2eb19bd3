/** Shared test utilities: deterministic randomness, comparisons, and asset paths. */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after } from 'node:test';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const ASSETS = path.resolve(REPO, '..', 'shared', 'assets');
export const assetsPresent = existsSync(ASSETS);

/**
 * A fresh directory under the OS temporary directory, removed with its contents once the tests
 * of the calling file (or, when made inside a test, that test) have finished.
 */
export function tempDir(prefix: string): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  after(() => rmSync(dir, { recursive: true, force: true }));
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
