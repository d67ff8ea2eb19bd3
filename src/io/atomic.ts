/**
 * Safe output: ptq never deletes or overwrites what it did not write, and never leaves a partial
 * output that looks finished.
 *
 * Who owns an output: every directory ptq writes holds `.ptq-output.json`, the list of the files
 * ptq put there. An existing directory at `-o` is replaced only when it is such an output and
 * holds nothing else; any other directory (a project, `docs/`, a model) is refused, or, with
 * `--overwrite`, written into the way Hugging Face's `save_pretrained` does: files of the same
 * names are replaced, every other file is kept. An existing file at a file output (GGUF) is
 * replaced only when its writer says ptq wrote it (`replaceable`) or with `--overwrite`. Before
 * any work, `checkOutput` refuses an output that is, contains or lies inside an input (real
 * paths, after symlinks), and an output that is itself a symbolic link.
 *
 * Crash safety: everything is written into a temporary sibling (`.ptq-tmp-<pid>-<random>-<name>`,
 * created exclusively, never through a symlink) that is renamed into place only once complete.
 *  - an error: the temporary output is removed, and the parent directories this run created;
 *  - SIGINT / SIGTERM while writing: the temporary output is removed (a swap under way is
 *    finished or undone: the old output is deleted if the new one is in place, else put back),
 *    then the process exits with 128 + the signal number; long loops call `yieldToSignals` so
 *    the handler runs within a fraction of a second;
 *  - kill -9 / power loss: the temporary output stays; it never sits at the target path,
 *    `loadModel` refuses `.ptq-tmp-*` paths, and the next write into the same directory removes
 *    temporaries whose process is gone.
 * Replacing an existing output moves the old one aside (`.ptq-old-*`) with one rename, moves the
 * new one in with a second, and only then deletes the old: at every instant the target path is
 * either the complete old output, absent, or the complete new output — never half-deleted.
 * Each of these steps is a named fault point (io/fault-injection.ts, inert unless PTQ_FAULT is
 * set), where test/cli/crash-safety.test.ts interrupts the write to check the state it leaves.
 */
import { randomBytes } from 'node:crypto';
import { constants, existsSync, renameSync, rmSync } from 'node:fs';
import {
  access,
  type FileHandle,
  lstat,
  mkdir,
  open,
  readdir,
  readFile,
  realpath,
  rename,
  rm,
  rmdir,
  writeFile,
} from 'node:fs/promises';
import path from 'node:path';
import { FileError, PtqError, UsageError } from '../errors.js';
import { isInside } from './confined-path.js';
import { faultPoint } from './fault-injection.js';

const TMP_PREFIX = '.ptq-tmp-';
const OLD_PREFIX = '.ptq-old-';
/** `.ptq-tmp-<pid>-<8 hex>` or `.ptq-old-...`, then `-<start of the target's name>`. */
const TEMPORARY_NAME = /^\.ptq-(?:tmp|old)-(\d+)-[0-9a-f]{8}(?:-|$)/;
/** What earlier versions named theirs: `.ptq-tmp-<name>-<pid>-<ms>` and `.<file>.ptq-tmp-<pid>`. */
const LEGACY_TEMPORARY_NAME = /^(?:\.ptq-(?:tmp|old)-.+-(\d+)-\d{13}|\..+\.ptq-tmp-(\d+))$/;
/** The ownership marker in every output directory: which files ptq wrote there. */
export const OUTPUT_MARKER = '.ptq-output.json';
const MARKER_FORMAT = 'ptqkit-output';
/** Longest file name most file systems take (bytes). */
const NAME_MAX = 255;

/** True for a path written by an unfinished (or interrupted) write of ptq. */
export function isTemporaryOutput(p: string): boolean {
  const base = path.basename(path.resolve(p));
  return base.startsWith(TMP_PREFIX) || base.startsWith(OLD_PREFIX);
}

/** What a writer may do at its output path (see the header), given by its caller. */
export interface OutputOptions {
  /** Write into an existing output ptq did not write (files of other names are kept). */
  overwrite?: boolean;
  /** Paths the output may not be, contain or lie inside (what the output is made from). */
  inputs?: (string | undefined)[];
}

export interface OutputCheck {
  /** What the output is: a directory (checkpoint, export, report) or one file (GGUF). */
  kind: 'directory' | 'file';
  /** Every path the command reads: the output may not be, contain or lie inside any of them. */
  inputs: (string | undefined)[];
  /** Write into an existing output ptq did not write (files of other names are kept). */
  overwrite?: boolean;
  /** File outputs: whether an existing file was written by ptq (and so may be replaced). */
  replaceable?: (file: string) => Promise<boolean>;
}

/**
 * Everything that can be known before any long work: the output is not an input, does not hold
 * or sit inside one, is not a symbolic link, can be created, and replaces nothing ptq did not
 * write unless `overwrite`. Nothing is created on disk.
 */
export async function checkOutput(output: string, check: OutputCheck): Promise<void> {
  const target = await realTarget(output);
  for (const input of check.inputs) {
    if (input === undefined) continue;
    const real = await realpath(path.resolve(input)).catch(() => path.resolve(input));
    const relation =
      real === target
        ? 'is'
        : isInside(real, target)
          ? 'contains'
          : isInside(target, real)
            ? 'is inside'
            : undefined;
    if (relation) {
      throw new UsageError(`the output ${relation} an input (${input})`, {
        file: output,
        hint: 'write the output to a new path outside every input',
      });
    }
  }
  const existing = await lstat(output).catch(() => undefined);
  if (existing?.isSymbolicLink()) {
    throw new UsageError('the output is a symbolic link', {
      file: output,
      hint: `give the path it points to (${target}) or a new path`,
    });
  }
  if (existing) await assertReplaceable(output, existing.isDirectory(), check);
  const ancestor = await nearestExisting(path.dirname(path.resolve(output)));
  try {
    // The nearest existing ancestor is where the missing parents will be created: a directory.
    const isDirectory = (await lstat(ancestor).catch(() => undefined))?.isDirectory();
    if (!isDirectory) throw Object.assign(new Error('not a directory'), { code: 'ENOTDIR' });
    await access(ancestor, constants.W_OK);
  } catch (e) {
    throw new FileError('output location is not writable', {
      file: output,
      got: (e as NodeJS.ErrnoException).code,
      hint: 'choose a writable location with -o',
    });
  }
}

async function assertReplaceable(output: string, isDirectory: boolean, check: OutputCheck): Promise<void> {
  if (check.kind === 'directory') {
    if (!isDirectory) throw new FileError('output exists and is not a directory', { file: output });
    if (!check.overwrite) await foreignFiles(output, false);
    return;
  }
  if (isDirectory) throw new FileError('output exists and is a directory', { file: output });
  if (check.overwrite || (await check.replaceable?.(output))) return;
  throw new FileError('output file exists and was not written by ptq', {
    file: output,
    hint: 'choose a new output path, or pass --overwrite to replace it',
  });
}

/**
 * The real path `output` would have: its nearest existing ancestor through realpath, then the
 * rest as written (so `-o link/new` where link points elsewhere is compared where it will land).
 */
async function realTarget(output: string): Promise<string> {
  const absolute = path.resolve(output);
  const ancestor = await nearestExisting(absolute);
  const real = await realpath(ancestor).catch(() => ancestor);
  return path.join(real, path.relative(ancestor, absolute));
}

async function nearestExisting(p: string): Promise<string> {
  let current = p;
  while (
    !(await lstat(current).then(
      () => true,
      () => false,
    ))
  ) {
    const parent = path.dirname(current);
    if (parent === current) break;
    current = parent;
  }
  return current;
}

/** The files of a directory (relative paths, not following symlinks), the marker excepted. */
async function listFiles(dir: string, prefix = ''): Promise<string[]> {
  const files: string[] = [];
  for (const entry of await readdir(path.join(dir, prefix), { withFileTypes: true })) {
    const rel = path.posix.join(prefix, entry.name);
    if (entry.isDirectory()) files.push(...(await listFiles(dir, rel)));
    else if (rel !== OUTPUT_MARKER) files.push(rel);
  }
  return files.sort();
}

/** The files ptq recorded writing into `dir`, or undefined when it holds no valid marker. */
async function markedFiles(dir: string): Promise<Set<string> | undefined> {
  try {
    const marker = JSON.parse(await readFile(path.join(dir, OUTPUT_MARKER), 'utf8'));
    if (marker?.format !== MARKER_FORMAT || !Array.isArray(marker.files)) return undefined;
    return new Set(marker.files.filter((f: unknown) => typeof f === 'string'));
  } catch {
    return undefined;
  }
}

/** What in `dir` ptq did not write (everything, when it holds no marker); empty: ptq's own output. */
async function filesNotWrittenByPtq(dir: string): Promise<string[]> {
  const files = await listFiles(dir);
  const marked = await markedFiles(dir);
  // Without a marker even empty subdirectories are someone else's.
  if (!marked) return files.length ? files : await readdir(dir);
  return files.filter((f) => !marked.has(f));
}

/**
 * The files of the existing output directory `dir` ptq did not write; without `overwrite`, any
 * such file refuses the write.
 */
async function foreignFiles(dir: string, overwrite: boolean | undefined): Promise<string[]> {
  const foreign = await filesNotWrittenByPtq(dir);
  if (foreign.length && !overwrite) {
    const shown = foreign.slice(0, 3).join(', ') + (foreign.length > 3 ? `, ... (${foreign.length})` : '');
    throw new FileError(`output directory exists and holds files ptq did not write: ${shown}`, {
      file: dir,
      hint: 'choose a new -o, or pass --overwrite to write into it, keeping its other files',
    });
  }
  return foreign;
}

/** `.ptq-tmp-<pid>-<random>-<name>`, cut to a legal file name whatever the target's length. */
function temporaryName(prefix: string, target: string, random: string): string {
  const head = `${prefix}${process.pid}-${random}-`;
  const name = Buffer.from(path.basename(target));
  // Cut on a UTF-8 character boundary: the name only has to help a person recognise it.
  let end = Math.min(name.length, NAME_MAX - Buffer.byteLength(head));
  while (end > 0 && (name[end]! & 0xc0) === 0x80) end--;
  return head + name.subarray(0, end).toString();
}

/**
 * Write the directory `outDir`: `fill` writes into a fresh temporary directory, which is moved to
 * `outDir` once complete (see the header for what replaces what). Callers check the output with
 * `checkOutput` before their long work; the rules are enforced here again at the swap.
 */
export async function writeDirectoryAtomically(
  outDir: string,
  fill: (tmpDir: string) => Promise<void>,
  options: OutputOptions = {},
): Promise<void> {
  await checkOutput(outDir, {
    kind: 'directory',
    inputs: options.inputs ?? [],
    overwrite: options.overwrite,
  });
  const target = path.resolve(outDir);
  const parent = path.dirname(target);
  const random = randomBytes(4).toString('hex');
  const tmp = path.join(parent, temporaryName(TMP_PREFIX, target, random));
  // The handlers go in before the temporary directory exists: a signal arriving between its
  // creation and the next tick of this process (long on a loaded machine) must still remove it.
  const write: InFlight = { tmp, target };
  const release = guardOnSignals(write);
  let createdParents: string | undefined;
  try {
    createdParents = await mkdir(parent, { recursive: true });
    await removeStale(parent);
    await mkdir(tmp);
  } catch (e) {
    release();
    await removeCreatedParents(parent, createdParents);
    throw new FileError('cannot create the output directory', {
      file: outDir,
      got: (e as NodeJS.ErrnoException).code,
      hint: 'choose a writable location with -o',
    });
  }
  try {
    await faultPoint('output:tmp-created');
    await fill(tmp);
    const files = await listFiles(tmp);
    await writeMarker(tmp, files);
    await faultPoint('output:filled');
    const existing = await lstat(target).catch(() => undefined);
    // Checked before `fill` too; again here, as the directory may have changed meanwhile.
    if (existing && (!existing.isDirectory() || existing.isSymbolicLink()))
      throw new FileError('output exists and is not a directory', { file: outDir });
    const foreign = existing ? await foreignFiles(outDir, options.overwrite) : [];
    if (foreign.length) {
      await mergeInto(target, tmp, files);
    } else if (existing) {
      const old = path.join(parent, temporaryName(OLD_PREFIX, target, random));
      write.old = old;
      await rename(target, old);
      await faultPoint('output:old-aside');
      await rename(tmp, target);
      await faultPoint('output:swapped');
      await rm(old, { recursive: true, force: true });
    } else {
      await rename(tmp, target);
    }
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    await removeCreatedParents(parent, createdParents);
    if (e instanceof PtqError) throw e;
    throw new FileError(`writing the output failed: ${(e as Error).message}`, { file: outDir });
  } finally {
    release();
  }
}

async function writeMarker(dir: string, files: string[]): Promise<void> {
  const marker = { format: MARKER_FORMAT, written_by: 'ptqkit', files };
  await writeFile(path.join(dir, OUTPUT_MARKER), `${JSON.stringify(marker, null, 2)}\n`);
}

/**
 * `--overwrite` into a directory that holds files ptq did not write: each new file replaces the
 * file of its name; files an earlier ptq output listed and this one does not are removed; every
 * other file stays. The marker, written last, lists what ptq wrote.
 */
async function mergeInto(target: string, tmp: string, files: string[]): Promise<void> {
  for (const f of files) {
    const existing = await lstat(path.join(target, f)).catch(() => undefined);
    if (existing?.isDirectory())
      throw new FileError('cannot replace a directory with a file', { file: path.join(target, f) });
  }
  const previous = (await markedFiles(target)) ?? new Set<string>();
  for (const f of files) {
    await mkdir(path.dirname(path.join(target, f)), { recursive: true });
    await rename(path.join(tmp, f), path.join(target, f));
  }
  for (const f of previous) {
    if (!files.includes(f) && !path.isAbsolute(f) && !f.split('/').includes('..'))
      await rm(path.join(target, f), { force: true });
  }
  await writeMarker(target, files);
  await rm(tmp, { recursive: true, force: true });
}

/**
 * Write one file (GGUF) atomically: `write` fills an exclusively created temporary sibling
 * (O_EXCL | O_NOFOLLOW: a planted symlink is never followed), which is synced and renamed to
 * `file` once complete. The caller checked the target with `checkOutput`.
 */
export async function writeFileAtomically<T>(
  file: string,
  write: (handle: FileHandle) => Promise<T>,
): Promise<T> {
  const target = path.resolve(file);
  const parent = path.dirname(target);
  const tmp = path.join(parent, temporaryName(TMP_PREFIX, target, randomBytes(4).toString('hex')));
  const inFlight: InFlight = { tmp, target };
  const release = guardOnSignals(inFlight);
  let createdParents: string | undefined;
  let handle: FileHandle;
  try {
    createdParents = await mkdir(parent, { recursive: true });
    await removeStale(parent);
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
    handle = await open(tmp, flags, 0o644);
  } catch (e) {
    release();
    await removeCreatedParents(parent, createdParents);
    throw new FileError('cannot create the output file', {
      file,
      got: (e as NodeJS.ErrnoException).code,
      hint: 'choose a writable location with -o',
    });
  }
  try {
    const result = await write(handle);
    await handle.sync();
    await handle.close();
    const existing = await lstat(target).catch(() => undefined);
    if (existing && (existing.isDirectory() || existing.isSymbolicLink()))
      throw new FileError('output exists and is not a regular file', { file });
    await rename(tmp, target);
    return result;
  } catch (e) {
    await handle.close().catch(() => {});
    await rm(tmp, { force: true });
    await removeCreatedParents(parent, createdParents);
    if (e instanceof PtqError) throw e;
    throw new FileError(`writing the output failed: ${(e as Error).message}`, { file });
  } finally {
    release();
  }
}

/** Undo `mkdir -p` of a failed write: remove the directories it created, if still empty. */
async function removeCreatedParents(parent: string, firstCreated: string | undefined): Promise<void> {
  if (!firstCreated) return;
  for (let dir = parent; dir.length >= firstCreated.length; dir = path.dirname(dir)) {
    if (
      !(await rmdir(dir).then(
        () => true,
        () => false,
      ))
    )
      return;
    if (dir === firstCreated) return;
  }
}

/**
 * Remove temporaries (`.ptq-tmp-<pid>-<random>-...`, `.ptq-old-...`) that processes no longer
 * alive left in `parent` (killed with -9). A live pid's temporary may be another run's work. The
 * name is ptq's: created exclusively with a random part, it cannot be a user's file by chance.
 */
async function removeStale(parent: string): Promise<void> {
  const entries = await readdir(parent).catch(() => [] as string[]);
  for (const entry of entries) {
    const match = TEMPORARY_NAME.exec(entry) ?? LEGACY_TEMPORARY_NAME.exec(entry);
    const pid = match && Number(match[1] ?? match[2]);
    if (pid && !processAlive(pid)) await rm(path.join(parent, entry), { recursive: true, force: true });
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

/** An output being written: its temporary path and, once the swap began, the old output set aside. */
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
    // A write still finishing in libuv's thread pool may add a file while the tree is removed
    // (ENOTEMPTY): retry until it is gone.
    for (let i = 0; i < 5 && existsSync(w.tmp); i++)
      rmSync(w.tmp, { recursive: true, force: true, maxRetries: 3, retryDelay: 10 });
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

let lastYield = 0;
/** Milliseconds of synchronous work after which a long loop lets pending signals be handled. */
const YIELD_EVERY_MS = 100;

/**
 * Call inside long CPU-bound loops of a write: every ~100 ms it yields to the event loop, so a
 * pending SIGINT/SIGTERM is handled (temporary output removed, exit) within a fraction of a
 * second instead of after the whole loop. Costs nothing between yields.
 */
export async function yieldToSignals(): Promise<void> {
  const now = performance.now();
  if (now - lastYield < YIELD_EVERY_MS) return;
  lastYield = now;
  await new Promise<void>((resolve) => setImmediate(resolve));
}
