/**
 * Crash-safe output: everything is written into a temporary sibling directory that is
 * renamed into place only once complete, so an interrupted or failed run never leaves a
 * partial model that looks finished.
 */
import { constants } from 'node:fs';
import { access, mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { FileError, PtqError } from '../errors.js';

export async function writeDirectoryAtomically(outDir: string, fill: (tmpDir: string) => Promise<void>): Promise<void> {
  const target = path.resolve(outDir);
  const parent = path.dirname(target);
  const tmp = path.join(parent, `.ptq-tmp-${path.basename(target)}-${process.pid}-${Date.now()}`);
  try {
    await mkdir(parent, { recursive: true });
    await mkdir(tmp);
  } catch (e) {
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
    if (existing) await rm(target, { recursive: true, force: true });
    await rename(tmp, target);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    if (e instanceof PtqError) throw e;
    throw new FileError(`writing the output failed: ${(e as Error).message}`, { file: outDir });
  }
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
