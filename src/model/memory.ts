/**
 * Sizes and the memory budget: `--target-size 800MB`, `--max-memory 8GiB` are parsed here, and
 * the default budget of the paths that bound their memory (block-streamed evaluation; streamed
 * calibration later) is taken from what the machine has free.
 */
import os from 'node:os';
import { UsageError } from '../errors.js';

const UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  kib: 2 ** 10,
  mb: 1e6,
  mib: 2 ** 20,
  gb: 1e9,
  gib: 2 ** 30,
};

/** `800MB`, `2.5MiB`, `1200KB`, `8GiB`, `123456` (bytes) → bytes; `field` names the option in errors. */
export function parseSize(text: string, field = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$/i.exec(text);
  if (!m)
    throw new UsageError('invalid size', {
      field,
      expected: 'a number with B, KB, KiB, MB, MiB, GB or GiB',
      got: text,
    });
  return Number(m[1]) * UNITS[(m[2] ?? 'b').toLowerCase()]!;
}

/** Bytes as MiB or GiB with two decimals (reports). */
export function formatBytes(bytes: number): string {
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(2)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/** Share of the available memory the default budget takes: the rest is left to the OS and others. */
const DEFAULT_SHARE = 0.75;

/**
 * The default `--max-memory`: 3/4 of the memory available now (os.freemem: the kernel's
 * MemAvailable on Linux), or of the cgroup limit when that is smaller.
 */
export function defaultMemoryBudget(): number {
  const constrained = process.constrainedMemory?.() ?? 0;
  const limit = constrained > 0 && constrained < os.totalmem() ? constrained : Number.POSITIVE_INFINITY;
  return Math.floor(DEFAULT_SHARE * Math.min(os.freemem(), limit));
}
