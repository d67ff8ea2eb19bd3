/**
 * Settings shared by the fuzz tests: FUZZ_RUNS cases per parser or property (10,000 under
 * `npm test`), a fixed seed unless FUZZ_SEED is given or FUZZ_RANDOM asks for a random one
 * (`npm run fuzz`), and scratch files on tmpfs when there is one (a case writes a file).
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after } from 'node:test';

export const FUZZ_RUNS = Number(process.env.FUZZ_RUNS ?? 10_000);
export const FUZZ_SEED =
  process.env.FUZZ_SEED !== undefined
    ? Number(process.env.FUZZ_SEED)
    : process.env.FUZZ_RANDOM
      ? undefined
      : 20261125;

/** fast-check parameters: `runs` cases, the seed, a per-case timeout (a hang fails the property). */
export const fuzzParams = (runs = FUZZ_RUNS) => ({
  numRuns: runs,
  seed: FUZZ_SEED,
  timeout: 5000,
  endOnFailure: true,
});

/** A scratch directory removed after the test file. */
export function fuzzScratch(prefix: string): string {
  const dir = mkdtempSync(path.join(existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), prefix));
  after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
