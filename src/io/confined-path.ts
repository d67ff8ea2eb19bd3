/**
 * Files ptq reads on behalf of a directory (a model's config.json, shards, tokenizer files; the
 * tokenizer beside a llama2.c checkpoint; the block files of a resume state) must be regular
 * files whose real path lies inside that directory's real path: a symlink to `/etc/passwd` or
 * a manifest naming `../outside/x` is refused before a byte of it is read. The check is on the
 * real path (every symlink resolved), never on the path text.
 *
 * Hugging Face cache snapshots are symlinks: `models--org--name/snapshots/<rev>/config.json ->
 * ../../blobs/<sha>`. For a directory whose real path is `<repo>/snapshots/<rev>` with `<repo>`
 * named `models--*`, the repo's `blobs/` folder is inside the allowed tree as well.
 *
 * Non-regular files (FIFOs, sockets, devices, directories) are refused from a stat, before any
 * open; the file is then opened with O_NONBLOCK (a FIFO swapped in after the stat cannot block
 * the open) and checked again on the open descriptor.
 */
import { constants, type Stats } from 'node:fs';
import { type FileHandle, open, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { FileError } from '../errors.js';

/** Directories whose real paths bound the files read on their behalf. */
export type Within = string | readonly string[];

/** What a non-regular file is, for messages. */
export function fileKind(s: Stats): string {
  if (s.isFile()) return 'a regular file';
  if (s.isDirectory()) return 'a directory';
  if (s.isFIFO()) return 'a FIFO (named pipe)';
  if (s.isSocket()) return 'a socket';
  if (s.isCharacterDevice()) return 'a character device';
  if (s.isBlockDevice()) return 'a block device';
  return 'not a regular file';
}

function notRegular(file: string, s: Stats): FileError {
  return new FileError('not a regular file', { file, expected: 'a regular file', got: fileKind(s) });
}

/**
 * The real directories files of `dir` may resolve into: its own real path and, for a Hugging
 * Face cache snapshot (`models--*` / `snapshots` / `<rev>`, or a folder inside one), the repo's
 * `blobs/`.
 */
export async function allowedRoots(dir: string): Promise<string[]> {
  const real = await realpath(dir);
  const roots = [real];
  // `<repo>/snapshots/<rev>` itself or a folder inside it (`.../<rev>/onnx`).
  for (let d = real; path.dirname(d) !== d; d = path.dirname(d)) {
    const snapshots = path.dirname(d);
    const repo = path.dirname(snapshots);
    if (path.basename(snapshots) === 'snapshots' && path.basename(repo).startsWith('models--')) {
      roots.push(path.join(repo, 'blobs'));
      break;
    }
  }
  return roots;
}

/** Whether `file` lies strictly inside the directory `root` (paths as given, no symlinks resolved). */
export function isInside(file: string, root: string): boolean {
  const rel = path.relative(root, file);
  return rel !== '' && !rel.startsWith(`..${path.sep}`) && rel !== '..' && !path.isAbsolute(rel);
}

/**
 * Check that `file` is a regular file (after following symlinks) and, with `within`, that its
 * real path lies inside one of the directories' allowed trees; returns the real path. Nothing
 * is opened. `cannot` is the message for a file that does not exist or cannot be stat'ed.
 */
export async function checkRegularFile(file: string, cannot: string, within?: Within): Promise<string> {
  let info: Stats;
  try {
    info = await stat(file);
  } catch (e) {
    throw new FileError(cannot, { file, got: (e as NodeJS.ErrnoException).code });
  }
  if (!info.isFile()) throw notRegular(file, info);
  if (within === undefined) return file;
  const real = await realpath(file).catch((e: NodeJS.ErrnoException) => {
    throw new FileError(cannot, { file, got: e.code });
  });
  const dirs = [...new Set(typeof within === 'string' ? [within] : within)];
  const roots = (await Promise.all(dirs.map((d) => allowedRoots(d).catch(() => [])))).flat();
  if (!roots.some((r) => isInside(real, r))) {
    throw new FileError('file resolves outside its directory', {
      file,
      expected: `a file inside ${dirs.join(' or ')}`,
      got: `a link to ${real}`,
      hint: 'files read on behalf of a directory must not be symlinks out of it',
    });
  }
  return real;
}

/**
 * Open `file` for reading after `checkRegularFile`: by its real path, O_NONBLOCK, and refused
 * unless the open descriptor is a regular file too. The caller closes the handle.
 */
export async function openRegularFile(file: string, cannot: string, within?: Within): Promise<FileHandle> {
  const real = await checkRegularFile(file, cannot, within);
  let handle: FileHandle;
  try {
    handle = await open(real, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    throw new FileError(cannot, { file, got: (e as NodeJS.ErrnoException).code });
  }
  try {
    const info = await handle.stat();
    if (!info.isFile()) throw notRegular(file, info);
  } catch (e) {
    await handle.close();
    throw e;
  }
  return handle;
}
