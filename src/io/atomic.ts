/**
 * Crash-safe output: everything is written into a temporary sibling directory
 * (`.ptq-tmp-<name>-<pid>-<time>`) that is renamed into place only once complete, so an
 * interrupted or failed run never leaves a partial model that looks finished.
 *
 * What each way of stopping leaves behind:
 *  - an error: the temporary directory is removed;
 *  - SIGINT / SIGTERM while writing: the temporary directory is removed (and a swap under way is
 *    finished or undone: the old output is deleted if the new one is in place, else put back),
 *    then the process exits with 128 + the signal number (handlers exist only while writing);
 *  - kill -9 / power loss: the temporary directory stays; it never sits at the target path,
 *    `loadModel` refuses `.ptq-tmp-*` paths, and the next write to the same target removes
 *    stale ones whose process is gone.
 * Replacing an existing output moves the old one aside (`.ptq-old-*`) with one rename, moves the
 * new one in with a second, and only then deletes the old: at every instant the target path is
 * either the complete old output, absent, or the complete new output — never half-deleted.
 */
import { constants, existsSync, renameSync, rmSync } from 'node:fs';
import { access, mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { FileError, PtqError } from '../errors.js';

const TMP_PREFIX = '.ptq-tmp-';
const OLD_PREFIX = '.ptq-old-';

/** True for a path written by an unfinished (or interrupted) `writeDirectoryAtomically`. */
export function isTemporaryOutput(p: string): boolean {
  const base = path.basename(path.resolve(p));
  return base.startsWith(TMP_PREFIX) || base.startsWith(OLD_PREFIX);
}

export async function writeDirectoryAtomically(
  outDir: string,
  fill: (tmpDir: string) => Promise<void>,
): Promise<void> {
  const target = path.resolve(outDir);
  const parent = path.dirname(target);
  const tag = `${path.basename(target)}-${process.pid}-${Date.now()}`;
  const tmp = path.join(parent, `${TMP_PREFIX}${tag}`);
  // The handlers go in before the temporary directory exists: a signal arriving between its
  // creation and the next tick of this process (long on a loaded machine) must still remove it.
  const write: InFlight = { tmp, target };
  const release = guardOnSignals(write);
  try {
    await mkdir(parent, { recursive: true });
    await removeStale(parent, path.basename(target));
    await mkdir(tmp);
  } catch (e) {
    release();
    throw new FileError('cannot create the output directory', {
      file: outDir,
      got: (e as NodeJS.ErrnoException).code,
      hint: 'choose a writable location with -o',
    });
  }
  try {
    await fill(tmp);
    const existing = await stat(target).catch(() => undefined);
    if (existing && !existing.isDirectory()) {
      throw new FileError('output exists and is not a directory', { file: outDir });
    }
    if (existing) {
      const old = path.join(parent, `${OLD_PREFIX}${tag}`);
      write.old = old;
      await rename(target, old);
      await rename(tmp, target);
      await rm(old, { recursive: true, force: true });
    } else {
      await rename(tmp, target);
    }
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    if (e instanceof PtqError) throw e;
    throw new FileError(`writing the output failed: ${(e as Error).message}`, { file: outDir });
  } finally {
    release();
  }
}

/**
 * Remove `.ptq-tmp-<name>-<pid>-*` and `.ptq-old-<name>-<pid>-*` siblings left by processes
 * that no longer exist (killed with -9). A live pid's directory may be another run's work.
 */
async function removeStale(parent: string, name: string): Promise<void> {
  const entries = await readdir(parent).catch(() => [] as string[]);
  for (const entry of entries) {
    const prefix = [TMP_PREFIX, OLD_PREFIX].find((p) => entry.startsWith(`${p}${name}-`));
    if (!prefix) continue;
    const match = /^(\d+)-\d+$/.exec(entry.slice(prefix.length + name.length + 1));
    if (!match || processAlive(Number(match[1]))) continue;
    await rm(path.join(parent, entry), { recursive: true, force: true });
  }
}

function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: the process exists but belongs to someone else.
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** An output being written: its temporary directory and, once the swap began, the old output set aside. */
interface InFlight {
  tmp: string;
  target: string;
  old?: string;
}

const writing = new Set<InFlight>();
const SIGNALS = { SIGINT: 2, SIGTERM: 15 } as const;

function onSignal(signal: keyof typeof SIGNALS): void {
  // Synchronous: the process ends right after, no later tick may run.
  for (const w of writing) {
    if (w.old && existsSync(w.old)) {
      // Interrupted mid-swap: keep the new output if it is in place, else put the old one back.
      if (existsSync(w.target)) rmSync(w.old, { recursive: true, force: true });
      else renameSync(w.old, w.target);
    }
    rmSync(w.tmp, { recursive: true, force: true });
  }
  process.exit(128 + SIGNALS[signal]);
}

/**
 * While an output is being written, SIGINT/SIGTERM remove what it left beside the target before
 * exiting. Without any write in flight no handler is installed, so the default behaviour of
 * signals is unchanged.
 */
function guardOnSignals(write: InFlight): () => void {
  if (writing.size === 0) for (const s of Object.keys(SIGNALS)) process.on(s, onSignal);
  writing.add(write);
  return () => {
    writing.delete(write);
    if (writing.size === 0) for (const s of Object.keys(SIGNALS)) process.off(s, onSignal);
  };
}

/** Fail before any long work when `outDir` could not be created later. */
export async function assertWritableOutput(outDir: string): Promise<void> {
  const parent = path.dirname(path.resolve(outDir));
  try {
    await mkdir(parent, { recursive: true });
    await access(parent, constants.W_OK);
  } catch (e) {
    throw new FileError('output location is not writable', {
      file: outDir,
      got: (e as NodeJS.ErrnoException).code,
      hint: 'choose a writable location with -o',
    });
  }
}
