/**
 * Resume state of block-wise calibrated quantization (GPTQ, AWQ): what `ptq quantize --resume`
 * continues from after an interrupted run, so that the resumed output is byte-identical to an
 * uninterrupted one.
 *
 * Why this is enough: sequential calibration (calibrate.ts) quantizes block i from the residual
 * stream produced by the already-quantized blocks 0..i-1 and changes nothing outside block i
 * (GPTQ its linears; AWQ also the norms and linears its scales fold into, all inside the block).
 * So the state after block i is (a) the tensors of blocks 0..i as they are now — quantized
 * linears exactly as stored, the block's other tensors as float32 — with their layer reports,
 * and (b) the float32 residual stream of every calibration window entering block i+1. Rerunning
 * blocks i+1.. from (a) and (b) performs the very same float operations as the uninterrupted run.
 *
 * Layout of `<output>.ptq-resume/` (beside the output directory, never inside it):
 *   state.json           the manifest: format, fingerprint, finished blocks and the files
 *                        holding them, each with its byte length and SHA-256
 *   block-<run>-<i>.dat  block i: MAGIC, then the arrays of its tensors, each 8-byte aligned
 *                        at the offsets the manifest gives
 *   act-<run>-<i>.dat    MAGIC, then the residual stream entering block i, float32
 *                        [nsamples, seqlen, hidden] (absent once the last block is finished)
 * Crash safety: every file is written as `<name>.tmp-<pid>`, fsynced and renamed; state.json is
 * replaced last, so it is the commit point: a kill at any instant leaves the previous manifest
 * whose files are all complete. Files no manifest refers to (an interrupted write, the previous
 * block's activations, an older run's blocks) are removed after each commit. A fresh run (no
 * --resume) leaves an older state in place until its own first block replaces it.
 * One run at a time: `<output>.ptq-resume.lock` (beside the directory, so the directory holds
 * only the state) is created with link(2), which fails when it exists, and holds the pid, host
 * and start time of the run using the state; a second run refuses with a UsageError naming that
 * pid; a lock whose process is gone (killed, or its pid now another process) is taken over.
 * The lock goes with the state (removeResumeState) or when the process exits.
 * Files the manifest names are plain names, read only as regular files whose real path is
 * inside the directory (io/confined-path.ts): a manifest naming `../outside/x` is refused.
 * Never a model: the directory holds no config.json or safetensors, and every file starts with
 * MAGIC, which no loader accepts (read as a llama2.c header: dim 1263621200 and negative sizes).
 * The fingerprint (SHA-256 of the model's weights and config as quantized, of the calibration
 * windows, the engine and every recorded setting) must match for --resume to use a state.
 * Cost, tinystories-656k with the default 128 windows × 512 tokens: 33.5 MB of activations and
 * 148 KB per block; 0.2-0.4 s per block commit including fsync (a few % of the GPTQ run).
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, unlinkSync } from 'node:fs';
import { link, mkdir, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { FileError, FormatError, UsageError } from '../errors.js';
import type { QuantizedTensor } from '../formats/quantized-tensor.js';
import { openRegularFile } from '../io/confined-path.js';
import { faultPoint } from '../io/fault-injection.js';
import { brief } from '../io/json.js';
import type { ModelConfig } from '../model/config.js';
import type { TensorMap } from '../tensor.js';

const RESUME_SUFFIX = '.ptq-resume';
const MANIFEST = 'state.json';
/** Suffix of the lock file beside the resume directory. */
const LOCK_SUFFIX = '.lock';
/** state.json holds the manifest and the layer reports: small; anything past this is not one. */
const MAX_MANIFEST_BYTES = 256 * 1024 * 1024;
/** The names the state's own files have (block-<run>-<i>.dat, act-<run>-<i>.dat). */
const STATE_FILE_NAME = /^(block|act)-[A-Za-z0-9-]+\.dat$/;
const FORMAT = 'ptqkit-resume';
const VERSION = 1;
/** 16 bytes at the start of every state file. */
const MAGIC = Buffer.from('PTQKIT-RESUME-1\n', 'latin1');
/** Bytes per read/write/hash call: bounded so multi-GB activations never need one huge Buffer. */
const IO_CHUNK = 1 << 26;

/** The resume directory of an output directory. */
export function resumeDirFor(output: string): string {
  return `${path.resolve(output)}${RESUME_SUFFIX}`;
}

export interface ResumeTarget {
  /** The resume directory (resumeDirFor(output)). */
  dir: string;
  /** Continue from the state in `dir`; false starts over (an older state is replaced). */
  resume: boolean;
}

/** What must be equal for a state to be resumed: otherwise the result would differ. */
export interface Fingerprint {
  /** SHA-256 of the config and every tensor (name, shape, float32 bytes) as quantization starts. */
  model: string;
  /** SHA-256 of the calibration token windows and their length. */
  calibration: string;
  engine: string;
  /** The settings recorded in quantization_config (grid, method options, rotation, calibration). */
  settings: Record<string, unknown>;
}

export function fingerprint(
  config: ModelConfig,
  weights: TensorMap,
  windows: Int32Array,
  seqlen: number,
  engine: string,
  settings: Record<string, unknown>,
): Fingerprint {
  const model = createHash('sha256').update(JSON.stringify(config));
  for (const [name, t] of weights) {
    model.update(`${name}\0${t.shape.join(',')}\0`);
    model.update(bytesOf(t.data));
  }
  const calibration = createHash('sha256').update(`${seqlen}\0`).update(bytesOf(windows));
  return {
    model: model.digest('hex'),
    calibration: calibration.digest('hex'),
    engine,
    // A JSON round trip: the stored fingerprint is compared with a fresh one in the same form.
    settings: parseJson(stringifyJson(settings)) as Record<string, unknown>,
  };
}

/** One finished block: everything of the model it changed, and its layer reports. */
export interface FinishedBlock<Report> {
  layer: number;
  /** Its quantized linears, exactly as they will be stored. */
  quantized: Map<string, QuantizedTensor>;
  /** Its other tensors (norms; AWQ folds scales into them), float32. */
  tensors: TensorMap;
  reports: Report[];
}

/**
 * How a value of a QuantizedTensor field is kept: an array in the block file, an object whose
 * fields hold arrays (outliers, LoRC factors) field by field, or JSON.
 */
type FieldRecord =
  | { array: ArrayName; offset: number; length: number }
  | { undefined: true }
  | { object: Record<string, FieldRecord> }
  | { json: unknown };

const ARRAYS = {
  Uint8Array,
  Int8Array,
  Uint16Array,
  Int16Array,
  Uint32Array,
  Int32Array,
  Float32Array,
  Float64Array,
} as const;
type ArrayName = keyof typeof ARRAYS;

interface FileRecord {
  file: string;
  bytes: number;
  sha256: string;
}

interface BlockRecord<Report> extends FileRecord {
  layer: number;
  quantized: Record<string, Record<string, FieldRecord>>;
  tensors: Record<string, { shape: number[]; offset: number; length: number }>;
  reports: Report[];
}

interface Manifest<Report> {
  format: typeof FORMAT;
  version: number;
  note: string;
  layers: number;
  fingerprint: Fingerprint;
  blocks: BlockRecord<Report>[];
  /** The residual stream entering block `blocks.length`; null once every block is finished. */
  activations: (FileRecord & { length: number }) | null;
}

export interface OpenedState<Report> {
  state: ResumeState<Report>;
  /** Blocks finished by the interrupted run (empty when starting over). */
  blocks: FinishedBlock<Report>[];
  /** The residual stream entering block `blocks.length` (undefined when all are finished or starting over). */
  activations?: Float32Array;
  /** A fresh run found an older state, which its first finished block replaces. */
  replacing: boolean;
}

/**
 * Open the resume state for a run: with `target.resume`, load and verify the interrupted run's
 * state (UsageError when there is none or it belongs to a different model, calibration or
 * settings; FormatError when its files are damaged); otherwise start a new one.
 */
export async function openResumeState<Report>(
  target: ResumeTarget,
  fp: Fingerprint,
  layers: number,
): Promise<OpenedState<Report>> {
  const run = `${Date.now().toString(36)}-${process.pid}`;
  // One run per state: a second one would remove the first one's files under it.
  await acquireResumeLock(target.dir);
  if (!target.resume) {
    // Even a damaged older state is simply replaced.
    const replacing = (await readManifest(target.dir).catch(() => true)) !== undefined;
    return { state: new ResumeState<Report>(target.dir, run, fp, layers, []), blocks: [], replacing };
  }
  const manifest = await readManifest<Report>(target.dir);
  if (!manifest) throw noState(target.dir);
  const differences = compareFingerprints(manifest.fingerprint, fp);
  if (manifest.layers !== layers) differences.unshift(`layers (${manifest.layers} then, ${layers} now)`);
  if (differences.length) {
    throw new UsageError('the resume state was written by a different run', {
      file: target.dir,
      field: 'resume',
      expected: 'the same model, calibration text and options as the interrupted run',
      got: `different ${differences.join('; ')}`,
      hint: 'repeat the interrupted command exactly, or run without --resume to start over',
    });
  }
  const blocks: FinishedBlock<Report>[] = [];
  for (const [i, b] of manifest.blocks.entries()) {
    if (b.layer !== i) throw damaged(target.dir, MANIFEST, `block ${i}`, `block ${b.layer}`);
    blocks.push(await readBlock(target.dir, b));
  }
  let activations: Float32Array | undefined;
  if (blocks.length < layers) {
    const a = manifest.activations;
    if (!a) throw damaged(target.dir, MANIFEST, 'activations', 'none');
    await checkStateFileSize(target.dir, a, MAGIC.length + 4 * a.length);
    activations = new Float32Array(a.length);
    await readVerified(target.dir, a, [bytesOf(activations)]);
  }
  const state = new ResumeState<Report>(target.dir, run, fp, layers, manifest.blocks);
  return { state, blocks, activations, replacing: false };
}

/** The resume state of one run, committed block by block. */
export class ResumeState<Report> {
  constructor(
    readonly dir: string,
    private readonly run: string,
    private readonly fp: Fingerprint,
    private readonly layers: number,
    private readonly blocks: BlockRecord<Report>[],
  ) {}

  /**
   * Durably record a finished block and the residual stream entering the next one
   * (`next` undefined after the last block). Returns once the new state is committed.
   */
  async commit(block: FinishedBlock<Report>, next: Float32Array | undefined): Promise<void> {
    if (block.layer !== this.blocks.length) {
      throw new UsageError('resume state: blocks must be committed in order', {
        field: 'layer',
        expected: String(this.blocks.length),
        got: String(block.layer),
      });
    }
    await mkdir(this.dir, { recursive: true });
    const { record, parts } = layoutBlock(block);
    const file = `block-${this.run}-${block.layer}.dat`;
    const blockRecord: BlockRecord<Report> = {
      file,
      ...(await writeDurably(this.dir, file, parts)),
      ...record,
    };
    await faultPoint('resume:block-renamed');
    let activations: Manifest<Report>['activations'] = null;
    if (next) {
      const act = `act-${this.run}-${block.layer + 1}.dat`;
      activations = {
        file: act,
        ...(await writeDurably(this.dir, act, [bytesOf(next)])),
        length: next.length,
      };
      await faultPoint('resume:act-renamed');
    }
    const manifest: Manifest<Report> = {
      format: FORMAT,
      version: VERSION,
      note: 'state of an interrupted `ptq quantize`, for --resume; not a model',
      layers: this.layers,
      fingerprint: this.fp,
      blocks: [...this.blocks, blockRecord],
      activations,
    };
    // The commit point: before this rename the previous state holds, after it the new one.
    await writeDurably(this.dir, MANIFEST, [Buffer.from(stringifyJson(manifest))], false);
    this.blocks.push(blockRecord);
    await faultPoint('resume:committed');
    // Whatever the manifest does not name is garbage now (older activations, interrupted writes).
    const keep = new Set([
      MANIFEST,
      ...manifest.blocks.map((b) => b.file),
      ...(activations ? [activations.file] : []),
    ]);
    for (const entry of await readdir(this.dir)) {
      if (!keep.has(entry)) await rm(path.join(this.dir, entry), { force: true });
    }
  }
}

/** Remove a resume state (after the output it led to is written). */
export async function removeResumeState(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  releaseResumeLock(dir);
}

// ---------- the lock ----------

interface LockOwner {
  pid: number;
  host: string;
  /** Start time of the process (Linux: clock ticks after boot, /proc/<pid>/stat field 22); detects pid reuse. */
  started?: string;
}

/** Lock files this process holds (lock path -> its content). */
const heldLocks = new Map<string, string>();
let exitHookInstalled = false;

/** The lock file of the resume directory `dir`. */
export function resumeLockFor(dir: string): string {
  return `${dir}${LOCK_SUFFIX}`;
}

/** Field 22 of /proc/<pid>/stat (start time), or undefined where there is no /proc. */
function processStartTime(pid: number | 'self'): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // After the command name "(...)", which may itself hold spaces and parentheses: fields 3...
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

function parseLock(text: string): LockOwner | undefined {
  try {
    const v = JSON.parse(text) as Partial<LockOwner>;
    if (Number.isSafeInteger(v.pid) && v.pid! > 0 && typeof v.host === 'string') return v as LockOwner;
  } catch {}
  return undefined;
}

/** False only when the owner is known to be gone: no such pid, or that pid started at another time. */
function ownerAlive(o: LockOwner): boolean {
  if (o.host !== os.hostname()) return true; // another machine's process: cannot tell
  try {
    process.kill(o.pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return false;
  }
  const now = processStartTime(o.pid);
  return !(o.started && now && now !== o.started);
}

/**
 * Take the lock of the resume directory `dir` for this process, or throw a UsageError naming the
 * process that holds it. Re-entrant within a process (sequential runs of the library).
 */
export async function acquireResumeLock(dir: string): Promise<void> {
  const lock = resumeLockFor(dir);
  if (heldLocks.has(lock)) return;
  const mine = JSON.stringify({
    pid: process.pid,
    host: os.hostname(),
    started: processStartTime('self'),
    note: 'a ptq quantize run is using the resume state beside this file',
  } satisfies LockOwner & { note: string });
  await mkdir(path.dirname(lock), { recursive: true });
  for (let attempt = 0; attempt < 8; attempt++) {
    // Written whole, then linked into place: the lock never exists half-written, and link(2)
    // fails with EEXIST when another process holds it (O_EXCL semantics, also on NFS).
    const tmp = `${lock}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      await writeFile(tmp, mine, { flag: 'wx' });
      await link(tmp, lock);
      heldLocks.set(lock, mine);
      installExitHook();
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new FileError('cannot create the resume lock', {
          file: lock,
          got: (e as NodeJS.ErrnoException).code,
        });
      }
    } finally {
      await rm(tmp, { force: true });
    }
    const text = await readFile(lock, 'latin1').catch(() => undefined);
    if (text === undefined) continue; // released meanwhile
    const owner = parseLock(text);
    if (owner && ownerAlive(owner)) {
      const who = `pid ${owner.pid}${owner.host === os.hostname() ? '' : ` on ${owner.host}`}`;
      throw new UsageError(`the resume state is in use by another run (${who})`, {
        file: dir,
        expected: 'one run at a time per output',
        hint: `wait for ${who} to finish or write to another -o; if no such process exists, remove ${lock}`,
      });
    }
    // Stale (its process is gone): moved aside under a name of ours, and removed if it is still
    // the lock we judged stale; a live lock another process took meanwhile is put back.
    const aside = `${lock}.stale-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      await rename(lock, aside);
    } catch {
      continue;
    }
    const moved = await readFile(aside, 'latin1').catch(() => undefined);
    if (moved !== undefined && moved !== text) await link(aside, lock).catch(() => {});
    await rm(aside, { force: true });
  }
  throw new UsageError('could not take the resume lock: other runs keep taking it', { file: lock });
}

/** Give up the lock of `dir` if this process holds it (its content is still ours). */
export function releaseResumeLock(dir: string): void {
  const lock = resumeLockFor(dir);
  const mine = heldLocks.get(lock);
  if (mine === undefined) return;
  heldLocks.delete(lock);
  try {
    if (readFileSync(lock, 'latin1') === mine) unlinkSync(lock);
  } catch {}
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Synchronous: 'exit' handlers cannot await. A kill -9 leaves the lock; the next run sees its
  // pid gone and takes it over.
  process.on('exit', () => {
    for (const lock of [...heldLocks.keys()]) releaseResumeLock(lock.slice(0, -LOCK_SUFFIX.length));
  });
}

/** Blocks finished in the state at `dir` and the model's block count; undefined without a state. */
export async function resumeProgress(dir: string): Promise<{ blocks: number; layers: number } | undefined> {
  const m = await readManifest(dir);
  return m && { blocks: m.blocks.length, layers: m.layers };
}

/** Fail fast (before loading anything) when --resume has nothing to continue from. */
export async function assertResumable(dir: string): Promise<void> {
  if (!(await readManifest(dir))) throw noState(dir);
}

function noState(dir: string): UsageError {
  return new UsageError('no resume state to continue from', {
    file: dir,
    field: 'resume',
    expected: `${MANIFEST} of an interrupted gptq/awq run to the same output`,
    got: 'none',
    hint: 'the run finished or never completed a block; run without --resume to start over',
  });
}

function damaged(dir: string, file: string, expected: string, got: string): FormatError {
  return new FormatError('damaged resume state', {
    file: path.join(dir, file),
    expected,
    got,
    hint: `remove ${dir} or run without --resume to start over`,
  });
}

async function readManifest<Report>(dir: string): Promise<Manifest<Report> | undefined> {
  let text: string;
  let fh: Awaited<ReturnType<typeof open>>;
  try {
    // A regular file inside the directory (a FIFO would block; a link out of it is refused).
    fh = await openRegularFile(path.join(dir, MANIFEST), 'cannot read the resume state', dir);
  } catch (e) {
    if (e instanceof FileError && e.context.got === 'ENOENT') return undefined;
    throw e;
  }
  try {
    const { size } = await fh.stat();
    if (size > MAX_MANIFEST_BYTES) throw damaged(dir, MANIFEST, `<= ${MAX_MANIFEST_BYTES} bytes`, `${size}`);
    text = (await fh.readFile()).toString('utf8');
  } finally {
    await fh.close();
  }
  let m: Manifest<Report>;
  try {
    m = parseJson(text) as Manifest<Report>;
  } catch {
    throw damaged(dir, MANIFEST, 'JSON', 'unparsable text');
  }
  if (m?.format !== FORMAT || m.version !== VERSION || !Array.isArray(m.blocks) || !m.fingerprint) {
    throw damaged(dir, MANIFEST, `${FORMAT} version ${VERSION}`, `${m?.format} version ${m?.version}`);
  }
  return m;
}

/** The differences between the state's fingerprint and this run's, for the error message. */
function compareFingerprints(then: Fingerprint, now: Fingerprint): string[] {
  const out: string[] = [];
  if (then.model !== now.model) out.push('model weights or config');
  if (then.calibration !== now.calibration)
    out.push('calibration windows (text, tokenizer, nsamples, seqlen or seed)');
  if (then.engine !== now.engine) out.push(`engine (${then.engine} then, ${now.engine} now)`);
  const keys = new Set([...Object.keys(then.settings), ...Object.keys(now.settings)]);
  for (const k of keys) {
    const a = stringifyJson(then.settings[k]);
    const b = stringifyJson(now.settings[k]);
    if (a !== b) out.push(`${k} (${clip(a)} then, ${clip(b)} now)`);
  }
  return out;
}

const clip = (s: string | undefined) =>
  s === undefined ? 'unset' : s.length > 80 ? `${s.slice(0, 77)}...` : s;

/** The block file's arrays, 8-byte aligned after MAGIC, and the manifest entry describing them. */
function layoutBlock<Report>(block: FinishedBlock<Report>) {
  const parts: ArrayBufferView[] = [];
  let offset = MAGIC.length;
  const place = (a: ArrayBufferView) => {
    const pad = (8 - (offset % 8)) % 8;
    if (pad) parts.push(new Uint8Array(pad));
    offset += pad;
    parts.push(a);
    const at = offset;
    offset += a.byteLength;
    return at;
  };
  // Every field, whatever QuantizedTensor holds: arrays go to the file (also inside plain
  // objects such as outliers and LoRC factors), the rest to JSON.
  const recordFields = (value: object, at: string): Record<string, FieldRecord> => {
    const fields: Record<string, FieldRecord> = {};
    for (const [key, v] of Object.entries(value)) {
      if (v === undefined) fields[key] = { undefined: true };
      else if (ArrayBuffer.isView(v)) {
        const array = v.constructor.name as ArrayName;
        if (!(array in ARRAYS))
          throw new UsageError('resume state: unsupported array', { field: `${at}.${key}` });
        fields[key] = { array, offset: place(v), length: (v as Float32Array).length };
      } else if (v !== null && typeof v === 'object' && !Array.isArray(v) && hasArray(v))
        fields[key] = { object: recordFields(v, `${at}.${key}`) };
      else fields[key] = { json: v };
    }
    return fields;
  };
  const quantized: BlockRecord<Report>['quantized'] = {};
  for (const [name, q] of block.quantized) {
    quantized[name] = recordFields(q as object, name);
  }
  const tensors: BlockRecord<Report>['tensors'] = {};
  for (const [name, t] of block.tensors) {
    tensors[name] = { shape: t.shape, offset: place(t.data), length: t.data.length };
  }
  return { record: { layer: block.layer, quantized, tensors, reports: block.reports }, parts };
}

async function readBlock<Report>(dir: string, b: BlockRecord<Report>): Promise<FinishedBlock<Report>> {
  if (!(b.bytes >= MAGIC.length)) throw damaged(dir, b.file, 'a block file', `${b.bytes} bytes`);
  await checkStateFileSize(dir, b, b.bytes);
  const payload = new Uint8Array(b.bytes - MAGIC.length);
  await readVerified(dir, b, [payload]);
  const base = MAGIC.length;
  // Copies: each array gets its own buffer, as freshly computed ones have.
  const array = (name: string, r: { array: ArrayName; offset: number; length: number }) => {
    const Ctor = Object.hasOwn(ARRAYS, r.array) ? ARRAYS[r.array] : undefined;
    const start = r.offset - base;
    const end = start + r.length * (Ctor?.BYTES_PER_ELEMENT ?? 1);
    if (!Ctor || !(start >= 0 && end <= payload.length)) {
      throw damaged(dir, b.file, `${name} inside the file`, `${r.array} at ${r.offset}`);
    }
    return new Ctor(payload.buffer.slice(start, end));
  };
  const restoreFields = (fields: Record<string, FieldRecord>, at: string): Record<string, unknown> => {
    const value: Record<string, unknown> = {};
    for (const [key, f] of Object.entries(fields)) {
      if ('undefined' in f) value[key] = undefined;
      else if ('json' in f) value[key] = f.json;
      else if ('object' in f) value[key] = restoreFields(f.object, `${at}.${key}`);
      else value[key] = array(`${at}.${key}`, f);
    }
    return value;
  };
  const quantized = new Map<string, QuantizedTensor>();
  for (const [name, fields] of Object.entries(b.quantized)) {
    quantized.set(name, restoreFields(fields, name) as unknown as QuantizedTensor);
  }
  const tensors: TensorMap = new Map();
  for (const [name, t] of Object.entries(b.tensors)) {
    tensors.set(name, {
      shape: t.shape,
      data: array(name, { array: 'Float32Array', ...t }) as Float32Array,
    });
  }
  return { layer: b.layer, quantized, tensors, reports: b.reports };
}

/** True for an object with a typed array among its own values (kept field by field, not as JSON). */
function hasArray(value: object): boolean {
  return Object.values(value).some((v) => ArrayBuffer.isView(v));
}

/** Write MAGIC + parts to `<dir>/<name>` through a fsynced temporary file and a rename. */
async function writeDurably(
  dir: string,
  name: string,
  parts: ArrayBufferView[],
  magic = true,
): Promise<{ bytes: number; sha256: string }> {
  const tmp = path.join(dir, `${name}.tmp-${process.pid}`);
  const hash = createHash('sha256');
  let bytes = 0;
  const fh = await open(tmp, 'w');
  try {
    for (const part of magic ? [MAGIC, ...parts] : parts) {
      const all = bytesOf(part);
      for (let i = 0; i < all.length; i += IO_CHUNK) {
        const chunk = all.subarray(i, i + IO_CHUNK);
        hash.update(chunk);
        let done = 0;
        while (done < chunk.length) done += (await fh.write(chunk, done)).bytesWritten;
        bytes += chunk.length;
      }
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  await faultPoint('resume:tmp-synced');
  await rename(tmp, path.join(dir, name));
  await syncDirectory(dir);
  return { bytes, sha256: hash.digest('hex') };
}

/** Make a rename in `dir` durable (POSIX: the directory entry is data of the directory). */
async function syncDirectory(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } catch (e) {
    // Some filesystems refuse fsync on directories; the rename itself stays atomic there.
    if ((e as NodeJS.ErrnoException).code !== 'EINVAL' && (e as NodeJS.ErrnoException).code !== 'EPERM')
      throw e;
  } finally {
    await fh.close();
  }
}

/** A name the state gives its own files, never a path (`../outside/x`). */
function checkStateFileName(dir: string, r: FileRecord): void {
  if (typeof r.file !== 'string' || !STATE_FILE_NAME.test(r.file)) {
    throw damaged(dir, MANIFEST, 'block-<run>-<i>.dat or act-<run>-<i>.dat', brief(r.file, 80));
  }
}

/**
 * Before allocating what the manifest declares: the file (a plain name, a regular file inside
 * `dir`) must hold exactly `bytes` (a manifest claiming 10^15 bytes is damaged, not a RangeError).
 */
async function checkStateFileSize(dir: string, r: FileRecord, bytes: number): Promise<void> {
  checkStateFileName(dir, r);
  const fh = await openRegularFile(path.join(dir, r.file), 'cannot read the resume state', dir).catch((e) => {
    if (e instanceof FileError && e.context.got === 'ENOENT')
      throw damaged(dir, r.file, 'a file the manifest names', 'missing');
    throw e;
  });
  try {
    const { size } = await fh.stat();
    if (!(Number.isSafeInteger(bytes) && size === bytes && size === r.bytes))
      throw damaged(dir, r.file, `${r.bytes} bytes`, `${size}`);
  } finally {
    await fh.close();
  }
}

/** Read a state file (MAGIC, then exactly the bytes of `into`) and check its length and SHA-256. */
async function readVerified(dir: string, r: FileRecord, into: ArrayBufferView[]): Promise<void> {
  checkStateFileName(dir, r);
  const file = path.join(dir, r.file);
  const want = MAGIC.length + into.reduce((n, a) => n + a.byteLength, 0);
  const fh = await openRegularFile(file, 'cannot read the resume state', dir).catch((e) => {
    if (e instanceof FileError && e.context.got === 'ENOENT')
      throw damaged(dir, r.file, 'a file the manifest names', 'missing');
    throw e;
  });
  try {
    const size = (await fh.stat()).size;
    if (size !== r.bytes || size !== want) throw damaged(dir, r.file, `${r.bytes} bytes`, `${size}`);
    const hash = createHash('sha256');
    const head = Buffer.alloc(MAGIC.length);
    await fh.read(head, 0, head.length, 0);
    if (!head.equals(MAGIC)) throw damaged(dir, r.file, 'the resume-state magic', 'other bytes');
    hash.update(head);
    let position = MAGIC.length;
    for (const a of into) {
      const all = bytesOf(a);
      for (let i = 0; i < all.length; i += IO_CHUNK) {
        const chunk = all.subarray(i, i + IO_CHUNK);
        let done = 0;
        while (done < chunk.length) {
          const { bytesRead } = await fh.read(chunk, done, chunk.length - done, position + done);
          if (bytesRead === 0) throw damaged(dir, r.file, `${r.bytes} bytes`, 'fewer');
          done += bytesRead;
        }
        position += chunk.length;
        hash.update(chunk);
      }
    }
    const sha256 = hash.digest('hex');
    if (sha256 !== r.sha256) throw damaged(dir, r.file, `SHA-256 ${r.sha256}`, sha256);
  } finally {
    await fh.close();
  }
}

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** JSON that keeps every double: NaN, ±Infinity and -0 are written as {"$number": "..."}. */
function stringifyJson(value: unknown): string {
  return JSON.stringify(value, (_, v) =>
    typeof v === 'number' && (!Number.isFinite(v) || Object.is(v, -0))
      ? { $number: Object.is(v, -0) ? '-0' : String(v) }
      : v,
  );
}

function parseJson(text: string): unknown {
  return JSON.parse(text, (_, v) =>
    v && typeof v === 'object' && typeof v.$number === 'string' && Object.keys(v).length === 1
      ? Number(v.$number)
      : v,
  );
}
