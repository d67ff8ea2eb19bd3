/**
 * safetensors reader and writer.
 *
 * Layout: u64 LE N | N bytes of JSON header | data.
 *   header = { name: { dtype, shape: [..], data_offsets: [begin, end] }, "__metadata__": {str: str} }
 *   offsets are relative to the start of data; the header is padded with spaces.
 * Reads are lazy: opening parses only the header; each tensor is one positional read of its
 * bytes. Every header field is checked against the file size before anything is allocated.
 */
import { existsSync } from 'node:fs';
import { type FileHandle, open, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { FileError, FormatError } from '../errors.js';
import { FP8_E4M3, FP8_E5M2 } from '../formats/element-formats.js';
import { decodeBf16, decodeF16 } from '../formats/half.js';
import { openRegularFile, type Within } from './confined-path.js';
import { faultPoint } from './fault-injection.js';
import { brief, isPlainObject, jsonKind, parseJsonObject, readJsonObjectFile } from './json.js';

export const DTYPE_BYTES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
} as const;
export type SafetensorsDtype = keyof typeof DTYPE_BYTES;

/** The header may not be larger than this (the reference implementation's limit). */
const MAX_HEADER_BYTES = 100_000_000;
/** model.safetensors.index.json: a name and a file name per tensor. */
const MAX_INDEX_BYTES = 64 * 1024 * 1024;
/**
 * Tensors in one file. Published checkpoints stay below ~10^5 even unsharded (DeepSeek-V3:
 * 256 experts × 3 linears × 58 MoE layers, each with its FP8 scale, ~9·10^4); 2^18 leaves room
 * and refuses a header of 10^6 entries after a fraction of it is scanned (it took 1.2 GB and
 * tens of seconds to parse before).
 */
export const MAX_TENSORS_PER_FILE = 1 << 18;

export interface TensorInfo {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Absolute byte range in `file`. */
  begin: number;
  end: number;
  file: string;
}

export class SafetensorsFile {
  private constructor(
    readonly file: string,
    private readonly handle: FileHandle,
    readonly tensors: Map<string, TensorInfo>,
    readonly metadata: Record<string, string>,
  ) {}

  /** Open `file`; with `within`, it must resolve inside that directory (confined-path.ts). */
  static async open(file: string, within?: Within): Promise<SafetensorsFile> {
    // A regular file: a FIFO named model.safetensors would block the read forever.
    const handle = await openRegularFile(file, 'cannot open the safetensors file', within);
    try {
      const { tensors, metadata } = await readHeader(handle, file);
      return new SafetensorsFile(file, handle, tensors, metadata);
    } catch (e) {
      await handle.close();
      throw e;
    }
  }

  async readRaw(name: string): Promise<Uint8Array> {
    const info = this.info(name);
    const bytes = new Uint8Array(info.end - info.begin);
    const { bytesRead } = await this.handle.read(bytes, 0, bytes.length, info.begin);
    if (bytesRead !== bytes.length) {
      throw new FormatError('file truncated while reading a tensor', {
        file: this.file,
        field: name,
        offset: info.begin,
      });
    }
    return bytes;
  }

  /** `length` bytes of tensor `name` from byte `offset` of its data: one positional read (streaming). */
  async readRawRange(name: string, offset: number, length: number): Promise<Uint8Array> {
    const info = this.info(name);
    if (offset < 0 || length < 0 || info.begin + offset + length > info.end) {
      throw new FormatError('read outside the tensor', {
        file: this.file,
        field: name,
        expected: `a range within ${info.end - info.begin} bytes`,
        got: `[${offset}, ${offset + length})`,
      });
    }
    const bytes = new Uint8Array(length);
    const { bytesRead } = await this.handle.read(bytes, 0, length, info.begin + offset);
    if (bytesRead !== length) {
      throw new FormatError('file truncated while reading a tensor', {
        file: this.file,
        field: name,
        offset: info.begin + offset,
      });
    }
    return bytes;
  }

  info(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (!info) throw new FormatError('no such tensor', { file: this.file, field: name });
    return info;
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

async function readHeader(handle: FileHandle, file: string) {
  const { size } = await handle.stat();
  if (size < 8)
    throw new FormatError('file too short for a safetensors header', {
      file,
      expected: '>= 8 bytes',
      got: `${size}`,
    });
  const prefix = Buffer.alloc(8);
  await handle.read(prefix, 0, 8, 0);
  // u64 LE; Number() of a value above 2^53 is inexact but still far above any real file size.
  const headerLength = Number(prefix.readBigUInt64LE(0));
  if (headerLength > size - 8 || headerLength > MAX_HEADER_BYTES) {
    throw new FormatError('header length larger than the file', {
      file,
      offset: 0,
      expected: `<= ${Math.min(size - 8, MAX_HEADER_BYTES)} bytes`,
      got: `${headerLength}`,
    });
  }
  const headerBytes = Buffer.alloc(headerLength);
  const { bytesRead } = await handle.read(headerBytes, 0, headerLength, 8);
  if (bytesRead !== headerLength) {
    throw new FormatError('file truncated inside the header', {
      file,
      offset: 8 + bytesRead,
      expected: `${headerLength} header bytes`,
    });
  }
  // The reference refuses headers not starting with '{' (InvalidHeaderStart); depth 3 is all the format uses.
  if (headerBytes[0] !== 0x7b)
    throw new FormatError('header does not start with a JSON object', { file, offset: 8, expected: "'{'" });
  const header = parseJsonObject(
    headerBytes,
    file,
    {
      maxBytes: MAX_HEADER_BYTES,
      maxDepth: 4,
      topLevelKeys: {
        max: MAX_TENSORS_PER_FILE + 1,
        what: 'tensors in the header',
        expected: `at most ${MAX_TENSORS_PER_FILE} tensors (and __metadata__)`,
      },
    },
    8,
  );

  const dataStart = 8 + headerLength;
  const dataLength = size - dataStart;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = checkMetadata(entry, file);
      continue;
    }
    tensors.set(name, checkEntry(name, entry, file, dataStart, dataLength));
  }
  checkContiguous([...tensors.values()], file, dataStart, size);
  return { tensors, metadata };
}

/** `__metadata__` is a flat map of strings (the reference's HashMap<String, String>). */
function checkMetadata(entry: unknown, file: string): Record<string, string> {
  if (!isPlainObject(entry)) {
    throw new FormatError('invalid __metadata__', {
      file,
      field: '__metadata__',
      expected: 'an object of strings',
      got: jsonKind(entry),
    });
  }
  for (const [key, value] of Object.entries(entry)) {
    if (typeof value !== 'string') {
      throw new FormatError('invalid __metadata__ value', {
        file,
        field: `__metadata__.${key}`,
        expected: 'a string',
        got: jsonKind(value),
      });
    }
  }
  return entry as Record<string, string>;
}

function checkEntry(
  name: string,
  entry: unknown,
  file: string,
  dataStart: number,
  dataLength: number,
): TensorInfo {
  if (!isPlainObject(entry)) {
    throw new FormatError('invalid tensor entry', {
      file,
      field: name,
      expected: '{dtype, shape, data_offsets}',
      got: jsonKind(entry),
    });
  }
  const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (typeof e.dtype !== 'string' || !Object.hasOwn(DTYPE_BYTES, e.dtype)) {
    throw new FormatError('unknown dtype', {
      file,
      field: name,
      expected: Object.keys(DTYPE_BYTES).join('|'),
      got: brief(e.dtype),
    });
  }
  const dtype = e.dtype as SafetensorsDtype;
  if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new FormatError('invalid shape', {
      file,
      field: name,
      expected: 'non-negative integers',
      got: brief(e.shape),
    });
  }
  const offsets = e.data_offsets;
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)
  ) {
    throw new FormatError('invalid data_offsets', {
      file,
      field: name,
      expected: '[begin, end]',
      got: brief(offsets),
    });
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin || end > dataLength) {
    throw new FormatError('tensor data outside the file', {
      file,
      field: name,
      expected: `offsets within [0, ${dataLength}]`,
      got: `[${begin}, ${end}]`,
    });
  }
  const shape = e.shape as number[];
  const expectedBytes = byteCount(shape, DTYPE_BYTES[dtype], dataLength);
  if (expectedBytes === undefined) {
    throw new FormatError('shape needs more bytes than the file holds', {
      file,
      field: name,
      expected: `at most ${dataLength} bytes of data`,
      got: `${dtype} [${shape}]`,
    });
  }
  if (end - begin !== expectedBytes) {
    throw new FormatError('byte count does not match dtype and shape', {
      file,
      field: name,
      expected: `${expectedBytes} bytes for ${dtype} [${shape}]`,
      got: `${end - begin}`,
    });
  }
  return { name, dtype, shape, begin: dataStart + begin, end: dataStart + end, file };
}

/**
 * Bytes of a tensor, or undefined when they exceed `limit`: the product is checked after every
 * factor so no intermediate loses precision (the reference's checked_mul). A zero dimension
 * makes the tensor empty whatever the other dimensions are.
 */
function byteCount(shape: number[], elementBytes: number, limit: number): number | undefined {
  if (shape.includes(0)) return 0;
  let bytes = elementBytes;
  for (const d of shape) {
    bytes *= d;
    if (bytes > limit) return undefined;
  }
  return bytes;
}

/**
 * The reference (safetensors `Metadata::validate`) requires the tensors, sorted by offset, to
 * tile the data exactly: no overlap, no hole, no trailing bytes.
 */
function checkContiguous(infos: TensorInfo[], file: string, dataStart: number, size: number): void {
  const sorted = [...infos].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = dataStart;
  let previous: TensorInfo | undefined;
  for (const t of sorted) {
    if (t.begin < at) {
      throw new FormatError('tensors overlap', {
        file,
        field: t.name,
        offset: t.begin,
        got: `overlaps '${previous!.name}'`,
      });
    }
    if (t.begin > at) {
      throw new FormatError('gap between tensors', {
        file,
        field: t.name,
        offset: at,
        expected: `data starting at offset ${at - dataStart}${previous ? ` (end of '${previous.name}')` : ''}`,
        got: `${t.begin - dataStart}`,
      });
    }
    at = t.end;
    previous = t;
  }
  if (at !== size) {
    throw new FormatError('unexpected bytes after the last tensor', {
      file,
      offset: at,
      expected: `file size ${at}`,
      got: `${size}`,
    });
  }
}

/** Convert raw little-endian bytes of any supported dtype to float32. */
export function toFloat32(bytes: Uint8Array, dtype: SafetensorsDtype): Float32Array {
  const buf = bytes.buffer;
  const off = bytes.byteOffset;
  const n = bytes.byteLength / DTYPE_BYTES[dtype];
  switch (dtype) {
    case 'F32':
      return new Float32Array(buf, off, n);
    case 'F16':
      return decodeF16(new Uint16Array(buf, off, n));
    case 'BF16':
      return decodeBf16(new Uint16Array(buf, off, n));
    case 'F64':
      return Float32Array.from(new Float64Array(buf, off, n));
    case 'I64':
      return Float32Array.from(new BigInt64Array(buf, off, n), Number);
    case 'I32':
      return Float32Array.from(new Int32Array(buf, off, n));
    case 'I16':
      return Float32Array.from(new Int16Array(buf, off, n));
    case 'I8':
      return Float32Array.from(new Int8Array(buf, off, n));
    case 'U8':
    case 'BOOL':
      return Float32Array.from(bytes);
    case 'F8_E4M3':
      return Float32Array.from(bytes, (c) => FP8_E4M3.decode(c));
    case 'F8_E5M2':
      return Float32Array.from(bytes, (c) => FP8_E5M2.decode(c));
  }
}

/** One model spread over one or more safetensors files. */
export class SafetensorsModel {
  private constructor(
    private readonly files: SafetensorsFile[],
    private readonly owner: Map<string, SafetensorsFile>,
  ) {}

  /** A `.safetensors` file, or a directory with model.safetensors or model.safetensors.index.json. */
  static async open(pathOrDir: string): Promise<SafetensorsModel> {
    // A directory may be named *.safetensors too.
    const isDirectory = await stat(pathOrDir).then(
      (s) => s.isDirectory(),
      () => false,
    );
    if (pathOrDir.endsWith('.safetensors') && !isDirectory) return SafetensorsModel.fromFiles([pathOrDir]);
    // Every file of a model directory is read confined to it (no symlink out of it).
    const within = pathOrDir;
    const index = path.join(pathOrDir, 'model.safetensors.index.json');
    if (!existsSync(index))
      return SafetensorsModel.fromFiles([path.join(pathOrDir, 'model.safetensors')], within);
    const weightMap = (await readJsonObjectFile(index, 'shard index', { maxBytes: MAX_INDEX_BYTES, within }))
      .weight_map;
    if (!isPlainObject(weightMap)) {
      throw new FormatError('invalid shard index', {
        file: index,
        field: 'weight_map',
        expected: 'an object',
        got: jsonKind(weightMap),
      });
    }
    for (const [name, shard] of Object.entries(weightMap)) {
      // A shard is a file beside the index: never a path that leaves the model directory.
      if (
        typeof shard !== 'string' ||
        shard !== path.basename(shard) ||
        shard === '.' ||
        shard === '..' ||
        shard.includes('\\')
      ) {
        throw new FormatError('invalid shard file name', {
          file: index,
          field: name,
          expected: 'a file name in the model directory',
          got: brief(shard, 80),
        });
      }
    }
    const shards = [...new Set(Object.values(weightMap) as string[])].map((f) => path.join(pathOrDir, f));
    const model = await SafetensorsModel.fromFiles(shards, within);
    for (const [name, shard] of Object.entries(weightMap as Record<string, string>)) {
      if (model.owner.get(name)?.file !== path.join(pathOrDir, shard)) {
        await model.close();
        throw new FormatError('index names a tensor its shard does not hold', {
          file: index,
          field: name,
          expected: `in ${shard}`,
        });
      }
    }
    return model;
  }

  private static async fromFiles(files: string[], within?: Within): Promise<SafetensorsModel> {
    const opened: SafetensorsFile[] = [];
    const owner = new Map<string, SafetensorsFile>();
    try {
      for (const f of files) {
        const st = await SafetensorsFile.open(f, within);
        opened.push(st);
        for (const name of st.tensors.keys()) {
          if (owner.has(name))
            throw new FormatError('tensor stored twice', {
              file: f,
              field: name,
              got: `also in ${owner.get(name)!.file}`,
            });
          owner.set(name, st);
        }
      }
    } catch (e) {
      await Promise.all(opened.map((s) => s.close()));
      throw e;
    }
    return new SafetensorsModel(opened, owner);
  }

  names(): string[] {
    return [...this.owner.keys()];
  }

  /** `__metadata__` of all shards merged. */
  get metadata(): Record<string, string> {
    return Object.assign({}, ...this.files.map((f) => f.metadata));
  }

  info(name: string): TensorInfo {
    const st = this.owner.get(name);
    if (!st) throw new FormatError('no such tensor', { field: name });
    return st.info(name);
  }

  readRaw(name: string): Promise<Uint8Array> {
    return this.ownerOf(name).readRaw(name);
  }

  readRawRange(name: string, offset: number, length: number): Promise<Uint8Array> {
    return this.ownerOf(name).readRawRange(name, offset, length);
  }

  async readFloat32(name: string): Promise<Float32Array> {
    return toFloat32(await this.readRaw(name), this.info(name).dtype);
  }

  private ownerOf(name: string): SafetensorsFile {
    const st = this.owner.get(name);
    if (!st) throw new FormatError('no such tensor', { field: name });
    return st;
  }

  async close(): Promise<void> {
    await Promise.all(this.files.map((f) => f.close()));
  }
}

/** A tensor's header entry, without its data: what the streaming writer is told up front. */
export interface TensorHeader {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
}

export interface TensorToWrite extends TensorHeader {
  data: ArrayBufferView;
}

const tensorBytes = (t: TensorHeader) => t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];

/** u64 LE length + JSON header padded with spaces to a multiple of 8 bytes, tensors at consecutive offsets. */
function encodeHeader(tensors: readonly TensorHeader[], metadata?: Record<string, string>): Buffer {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    const bytes = tensorBytes(t);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(headerBytes.length));
  return Buffer.concat([prefix, headerBytes]);
}

async function openTemp(file: string): Promise<{ tmp: string; handle: FileHandle }> {
  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  try {
    return { tmp, handle: await open(tmp, 'w') };
  } catch (e) {
    throw new FileError('cannot write the safetensors file', {
      file,
      got: (e as NodeJS.ErrnoException).code,
    });
  }
}

/** Write tensors in order; header padded to 8 bytes; through a temp file renamed at the end. */
export async function writeSafetensors(
  file: string,
  tensors: TensorToWrite[],
  metadata?: Record<string, string>,
): Promise<void> {
  for (const t of tensors) {
    const expected = tensorBytes(t);
    if (t.data.byteLength !== expected) {
      throw new FormatError('tensor data does not match its dtype and shape', {
        file,
        field: t.name,
        expected: `${expected} bytes`,
        got: `${t.data.byteLength}`,
      });
    }
  }
  const { tmp, handle } = await openTemp(file);
  try {
    await handle.write(encodeHeader(tensors, metadata));
    await faultPoint('safetensors:header-written');
    for (const t of tensors)
      await handle.write(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    await handle.close();
    await rename(tmp, file);
  } catch (e) {
    await handle.close().catch(() => {});
    await rm(tmp, { force: true });
    throw new FileError(`writing failed: ${(e as Error).message}`, { file });
  }
}

/**
 * A safetensors file written as its tensors are produced: the header (every name, dtype and
 * shape, hence every offset) is written first, then each tensor's bytes are appended in that
 * order, in as many pieces as the caller likes. Bytes equal `writeSafetensors` of the same
 * tensors. Nothing but the piece being written is held; `finish` checks every byte arrived and
 * renames the temp file into place, `abort` removes it.
 */
export class SafetensorsWriter {
  private index = 0;
  /** Bytes still due for tensor `index`. */
  private due: number;

  private constructor(
    readonly file: string,
    private readonly tmp: string,
    private readonly handle: FileHandle,
    private readonly tensors: readonly TensorHeader[],
  ) {
    this.due = tensors.length ? tensorBytes(tensors[0]!) : 0;
  }

  static async create(
    file: string,
    tensors: readonly TensorHeader[],
    metadata?: Record<string, string>,
  ): Promise<SafetensorsWriter> {
    const { tmp, handle } = await openTemp(file);
    const w = new SafetensorsWriter(file, tmp, handle, tensors);
    try {
      await handle.write(encodeHeader(tensors, metadata));
    } catch (e) {
      await w.abort();
      throw new FileError(`writing failed: ${(e as Error).message}`, { file });
    }
    await faultPoint('safetensors:header-written');
    return w;
  }

  /** The tensor the next bytes belong to (undefined once all are written). */
  get next(): TensorHeader | undefined {
    this.skipEmpty();
    return this.tensors[this.index];
  }

  /** Append a piece of tensor `name`'s data; the pieces of one tensor come in order, tensors in header order. */
  async write(name: string, data: ArrayBufferView): Promise<void> {
    const t = this.next;
    if (!t || t.name !== name || data.byteLength > this.due) {
      throw new FormatError('tensor written out of the announced order or size', {
        file: this.file,
        field: name,
        expected: t ? `at most ${this.due} more bytes of '${t.name}'` : 'no more tensors',
        got: `${data.byteLength} bytes`,
      });
    }
    try {
      await this.handle.write(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    } catch (e) {
      throw new FileError(`writing failed: ${(e as Error).message}`, { file: this.file, field: name });
    }
    this.due -= data.byteLength;
  }

  async finish(): Promise<void> {
    const t = this.next;
    if (t) {
      throw new FormatError('tensor data missing at the end of the file', {
        file: this.file,
        field: t.name,
        expected: `${this.due} more bytes`,
      });
    }
    await this.handle.close();
    await rename(this.tmp, this.file);
  }

  async abort(): Promise<void> {
    await this.handle.close().catch(() => {});
    await rm(this.tmp, { force: true });
  }

  private skipEmpty(): void {
    while (this.due === 0 && this.index < this.tensors.length) {
      this.index++;
      const t = this.tensors[this.index];
      if (t) this.due = tensorBytes(t);
    }
  }
}
