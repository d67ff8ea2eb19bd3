/**
 * GGUF, the file format of ggml / llama.cpp (ggml/include/gguf.h, ggml/src/gguf.cpp).
 *
 *   "GGUF" magic, u32 version (1, 2 or 3)
 *   n_tensors, n_kv             u64 (v2, v3) | u32 (v1)
 *   n_kv × { key: string, u32 value type, value }      array: u32 elem type, count, elements
 *   n_tensors × { name: string, u32 n_dims (≤ 4), n_dims × ne (innermost first), u32 ggml type,
 *                 u64 offset relative to the data section }
 *   padding to general.alignment (u32 KV, default 32), then the data section
 *   strings: length (u64; u32 in v1) + UTF-8 bytes, no terminator; counts and ne are u32 in v1
 *
 * Tensor data tiles the data section in header order, as gguf_init_from_file requires: tensor i
 * starts at Σ_{j<i} GGML_PAD(nbytes_j, alignment), so no two tensors overlap and none leaves a gap.
 *
 * The reader parses the header in one forward pass through a bounded window of the file (1 MiB,
 * refilled with positional reads; one string longer than that widens it to the string), never
 * re-reading or restarting. Numeric metadata arrays are read in one positional read into a typed
 * array (Uint8Array for u8 and bool, Int32Array, Float32Array, BigInt64Array, ...), so a
 * metadata section costs its own size in memory, not one JS number per element. Every count,
 * length, dimension and offset is checked against the file size before anything is allocated
 * for it, and every failure is a FormatError naming the file, the byte offset and what was
 * expected. Tensor data is read lazily with positional reads.
 * The writer streams: the header is computed from the tensors' sizes, then each tensor's bytes
 * are produced and written one at a time into a temporary sibling file renamed into place once
 * complete (an interrupted export never leaves a file that looks finished).
 */
import { readSync } from 'node:fs';
import { FileError, FormatError, PtqError } from '../errors.js';
import { decodeValues, GGML_TYPES, type GgmlType, ggmlTypeById, rowBytes } from '../formats/ggml.js';
import { writeFileAtomically } from './atomic.js';
import { openRegularFile } from './confined-path.js';

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as little-endian u32
export const GGUF_DEFAULT_ALIGNMENT = 32;
const MAX_DIMS = 4;
/** Bytes of the header window (what is held of the file while parsing, strings aside). */
const WINDOW = 1 << 20;

/** gguf.h `enum gguf_type`. */
export enum GgufValueType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

const SCALAR_BYTES: Partial<Record<GgufValueType, number>> = {
  [GgufValueType.UINT8]: 1,
  [GgufValueType.INT8]: 1,
  [GgufValueType.UINT16]: 2,
  [GgufValueType.INT16]: 2,
  [GgufValueType.UINT32]: 4,
  [GgufValueType.INT32]: 4,
  [GgufValueType.FLOAT32]: 4,
  [GgufValueType.BOOL]: 1,
  [GgufValueType.UINT64]: 8,
  [GgufValueType.INT64]: 8,
  [GgufValueType.FLOAT64]: 8,
};

export type GgufScalar = number | bigint | boolean | string;

/** A numeric metadata array as stored (bool arrays: Uint8Array of 0/1). */
export type GgufNumericArray =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigUint64Array
  | BigInt64Array;

/** A metadata array: strings, or a typed array of the element type. */
export type GgufArray = string[] | GgufNumericArray;

type NumericArrayConstructor = {
  new (buffer: ArrayBuffer): GgufNumericArray;
  readonly BYTES_PER_ELEMENT: number;
};

/** The typed array holding each numeric element type (little-endian, as the file). */
const ARRAY_OF: Partial<Record<GgufValueType, NumericArrayConstructor>> = {
  [GgufValueType.UINT8]: Uint8Array,
  [GgufValueType.INT8]: Int8Array,
  [GgufValueType.UINT16]: Uint16Array,
  [GgufValueType.INT16]: Int16Array,
  [GgufValueType.UINT32]: Uint32Array,
  [GgufValueType.INT32]: Int32Array,
  [GgufValueType.FLOAT32]: Float32Array,
  [GgufValueType.BOOL]: Uint8Array,
  [GgufValueType.UINT64]: BigUint64Array,
  [GgufValueType.INT64]: BigInt64Array,
  [GgufValueType.FLOAT64]: Float64Array,
};

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Reverse the bytes of each `size`-byte element in place (file order <-> big-endian host). */
function swapBytes(bytes: Uint8Array, size: number): void {
  if (size === 1) return;
  for (let i = 0; i < bytes.length; i += size) bytes.subarray(i, i + size).reverse();
}

/** One metadata entry; arrays carry their element type. u64/i64 values are bigints. */
export type GgufKv =
  | { key: string; type: Exclude<GgufValueType, GgufValueType.ARRAY>; value: GgufScalar }
  | {
      key: string;
      type: GgufValueType.ARRAY;
      itemType: Exclude<GgufValueType, GgufValueType.ARRAY>;
      value: GgufArray;
    };

export interface GgufTensorInfo {
  name: string;
  /** ne: dims[0] is the innermost (contiguous) dimension, e.g. [in, out] for a linear weight. */
  dims: number[];
  type: GgmlType;
  /** Offset relative to the data section. */
  offset: number;
  byteLength: number;
}

/** Typed constructors for metadata entries (the writer needs explicit GGUF types). */
export const kv = {
  u32: (key: string, value: number): GgufKv => ({ key, type: GgufValueType.UINT32, value }),
  i32: (key: string, value: number): GgufKv => ({ key, type: GgufValueType.INT32, value }),
  f32: (key: string, value: number): GgufKv => ({ key, type: GgufValueType.FLOAT32, value }),
  bool: (key: string, value: boolean): GgufKv => ({ key, type: GgufValueType.BOOL, value }),
  str: (key: string, value: string): GgufKv => ({ key, type: GgufValueType.STRING, value }),
  strings: (key: string, value: string[]): GgufKv => ({
    key,
    type: GgufValueType.ARRAY,
    itemType: GgufValueType.STRING,
    value,
  }),
  f32s: (key: string, value: ArrayLike<number>): GgufKv => ({
    key,
    type: GgufValueType.ARRAY,
    itemType: GgufValueType.FLOAT32,
    value: Float32Array.from(value),
  }),
  i32s: (key: string, value: ArrayLike<number>): GgufKv => ({
    key,
    type: GgufValueType.ARRAY,
    itemType: GgufValueType.INT32,
    value: Int32Array.from(value),
  }),
};

/**
 * Little-endian cursor over the file's header: `pos` is a file offset; the bytes around it are
 * held in a window refilled by positional reads as the parse moves forward (one pass, never
 * restarted). `fileSize` bounds every read.
 */
class HeaderCursor {
  pos = 0;
  private buf = new Uint8Array(0);
  private view = new DataView(this.buf.buffer);
  /** File offset of buf[0]; buf holds [start, start + buf.length). */
  private start = 0;
  private readonly decoder = new TextDecoder('utf-8', { fatal: true });

  constructor(
    private readonly fd: number,
    private readonly fileSize: number,
    private readonly file: string,
    /** Counts and lengths are u64 (v2, v3) or u32 (v1). */
    public wide: boolean,
  ) {}

  fail(message: string, expected: string, got: string, at = this.pos): never {
    throw new FormatError(message, { file: this.file, offset: at, expected, got });
  }

  /** Read [at, at + out.length) of the file into out; a short read means the file shrank. */
  private readAt(out: Uint8Array, at: number, what: string): void {
    let done = 0;
    while (done < out.length) {
      const n = readSync(this.fd, out, done, out.length - done, at + done);
      if (n === 0)
        this.fail(`file truncated inside ${what}`, `${out.length - done} more bytes`, '0', at + done);
      done += n;
    }
  }

  /**
   * Make sure [pos, pos + n) is in the window and return its index there; past the end of the
   * file this is a truncation. The window is refilled from pos: WINDOW bytes, or n when one
   * value (a string) is longer, never past the end of the file.
   */
  need(n: number, what: string): number {
    const end = this.pos + n;
    if (end > this.fileSize)
      this.fail(`file truncated inside ${what}`, `${n} more bytes`, `${this.fileSize - this.pos}`);
    if (this.pos < this.start || end > this.start + this.buf.length) {
      this.buf = new Uint8Array(Math.min(Math.max(WINDOW, n), this.fileSize - this.pos));
      this.view = new DataView(this.buf.buffer);
      this.start = this.pos;
      this.readAt(this.buf, this.pos, what);
    }
    return this.pos - this.start;
  }

  /** n bytes from pos into a fresh buffer (window part copied, the rest read directly). */
  bytes(n: number, what: string): Uint8Array {
    if (this.pos + n > this.fileSize)
      this.fail(`file truncated inside ${what}`, `${n} more bytes`, `${this.fileSize - this.pos}`);
    const out = new Uint8Array(n);
    // The parse only moves forward, so pos >= start: copy what the window holds, read the rest.
    const held = Math.max(0, Math.min(n, this.start + this.buf.length - this.pos));
    const i = this.pos - this.start;
    out.set(this.buf.subarray(i, i + held));
    if (held < n) this.readAt(out.subarray(held), this.pos + held, what);
    this.pos += n;
    return out;
  }

  u32(what = 'a u32'): number {
    const i = this.need(4, what);
    this.pos += 4;
    return this.view.getUint32(i, true);
  }

  u64(what = 'a u64'): bigint {
    const i = this.need(8, what);
    this.pos += 8;
    return this.view.getBigUint64(i, true);
  }

  /** A count or length (u64, u32 in v1), at most `max` (what the rest of the file can hold). */
  size(what: string, max: number): number {
    const at = this.pos;
    const v = this.wide ? this.u64(what) : BigInt(this.u32(what));
    if (v > BigInt(max)) this.fail(`${what} larger than the file can hold`, `<= ${max}`, `${v}`, at);
    return Number(v);
  }

  remaining(): number {
    return this.fileSize - this.pos;
  }

  string(what: string): string {
    const len = this.size(`length of ${what}`, this.remaining());
    const i = this.need(len, what);
    const at = this.pos;
    this.pos += len;
    try {
      return this.decoder.decode(this.buf.subarray(i, i + len));
    } catch {
      return this.fail(`${what} is not valid UTF-8`, 'UTF-8 text', `${len} bytes`, at);
    }
  }

  scalar(type: GgufValueType, what: string): GgufScalar {
    const n = SCALAR_BYTES[type];
    if (type === GgufValueType.STRING) return this.string(what);
    if (n === undefined)
      this.fail(`invalid value type of ${what}`, 'a GGUF type 0..12', `${type}`, this.pos - 4);
    const p = this.need(n, what);
    const at = this.pos;
    this.pos += n;
    const v = this.view;
    switch (type) {
      case GgufValueType.UINT8:
        return v.getUint8(p);
      case GgufValueType.INT8:
        return v.getInt8(p);
      case GgufValueType.UINT16:
        return v.getUint16(p, true);
      case GgufValueType.INT16:
        return v.getInt16(p, true);
      case GgufValueType.UINT32:
        return v.getUint32(p, true);
      case GgufValueType.INT32:
        return v.getInt32(p, true);
      case GgufValueType.FLOAT32:
        return v.getFloat32(p, true);
      case GgufValueType.BOOL: {
        const b = v.getUint8(p);
        if (b > 1) this.fail(`invalid bool in ${what}`, '0 or 1', `${b}`, at);
        return b === 1;
      }
      case GgufValueType.UINT64:
        return v.getBigUint64(p, true);
      case GgufValueType.INT64:
        return v.getBigInt64(p, true);
      default:
        return v.getFloat64(p, true);
    }
  }

  /** `count` elements of a numeric type in one read, as the typed array of that type. */
  numericArray(type: GgufValueType, count: number, what: string): GgufNumericArray {
    const Ctor = ARRAY_OF[type]!;
    const at = this.pos;
    // A fresh buffer starts at byte 0, so the typed view is aligned whatever the file offset.
    const raw = this.bytes(count * Ctor.BYTES_PER_ELEMENT, what);
    if (type === GgufValueType.BOOL) {
      const bad = raw.findIndex((b) => b > 1);
      if (bad >= 0) this.fail(`invalid bool in ${what}[${bad}]`, '0 or 1', `${raw[bad]}`, at + bad);
    }
    if (!LITTLE_ENDIAN_HOST) swapBytes(raw, Ctor.BYTES_PER_ELEMENT);
    return new Ctor(raw.buffer as ArrayBuffer);
  }
}

/** A key or tensor name from the file, for messages: any length is valid, so long ones are cut. */
function shown(s: string): string {
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

interface ParsedHeader {
  version: number;
  metadata: Map<string, GgufKv>;
  tensors: GgufTensorInfo[];
  alignment: number;
  dataOffset: number;
}

function parseHeader(fd: number, fileSize: number, file: string): ParsedHeader {
  if (fileSize < 8)
    throw new FormatError('file too short for a GGUF header', {
      file,
      offset: 0,
      expected: '>= 8 bytes',
      got: `${fileSize}`,
    });
  const c: HeaderCursor = new HeaderCursor(fd, fileSize, file, true);
  const magic = c.u32('the magic');
  if (magic !== GGUF_MAGIC) {
    throw new FormatError('not a GGUF file', {
      file,
      offset: 0,
      expected: 'magic "GGUF"',
      got: `0x${magic.toString(16)}`,
    });
  }
  const version = c.u32('the version');
  if (version < 1 || version > 3) {
    const hint =
      version & 0xffff ? undefined : 'a big-endian GGUF file; only little-endian files are supported';
    throw new FormatError('unsupported GGUF version', {
      file,
      offset: 4,
      expected: '1, 2 or 3',
      got: `${version}`,
      hint,
    });
  }
  c.wide = version >= 2;
  // A tensor info takes >= 8 + 4 + 4 + 8 bytes (v1: 4 + 4 + 4 + 8), a KV >= 8 + 4 + 1.
  const nTensors = c.size('tensor count', Math.floor(fileSize / 20));
  const nKv = c.size('metadata count', Math.floor(fileSize / 9));
  const metadata = new Map<string, GgufKv>();
  for (let i = 0; i < nKv; i++) {
    const keyAt = c.pos;
    const key = c.string(`key of metadata entry ${i}`);
    const k = shown(key);
    if (metadata.has(key)) c.fail('duplicate metadata key', 'unique keys', k, keyAt);
    const type = c.u32(`type of '${k}'`) as GgufValueType;
    if (type === GgufValueType.ARRAY) {
      const itemType = c.u32(`element type of '${k}'`) as GgufValueType;
      if (
        itemType === GgufValueType.ARRAY ||
        (itemType !== GgufValueType.STRING && SCALAR_BYTES[itemType] === undefined)
      ) {
        c.fail(`invalid element type of '${k}'`, 'a scalar or string GGUF type', `${itemType}`, c.pos - 4);
      }
      const minItem = itemType === GgufValueType.STRING ? (version >= 2 ? 8 : 4) : SCALAR_BYTES[itemType]!;
      // The count is bounded by the bytes left, so the array never outgrows the file.
      const count = c.size(`element count of '${k}'`, Math.floor(c.remaining() / minItem));
      let value: GgufArray;
      if (itemType === GgufValueType.STRING) {
        const strings = new Array<string>(count);
        for (let j = 0; j < count; j++) strings[j] = c.string(`'${k}'[${j}]`);
        value = strings;
      } else {
        value = c.numericArray(itemType, count, `'${k}'`);
      }
      metadata.set(key, {
        key,
        type,
        itemType: itemType as Exclude<GgufValueType, GgufValueType.ARRAY>,
        value,
      });
    } else {
      metadata.set(key, { key, type, value: c.scalar(type, `'${k}'`) } as GgufKv);
    }
  }
  const alignKv = metadata.get('general.alignment');
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  if (alignKv) {
    const a = alignKv.value;
    if (alignKv.type !== GgufValueType.UINT32 || typeof a !== 'number' || a === 0 || (a & (a - 1)) !== 0) {
      throw new FormatError('invalid general.alignment', {
        file,
        field: 'general.alignment',
        expected: 'a power of two (u32)',
        got: String(a),
      });
    }
    alignment = a;
  }
  const tensors: GgufTensorInfo[] = [];
  /** Header position of each tensor's offset field, for errors found after the header. */
  const offsetFields: number[] = [];
  const names = new Set<string>();
  for (let i = 0; i < nTensors; i++) {
    const at = c.pos;
    const name = c.string(`name of tensor ${i}`);
    const n = shown(name);
    if (names.has(name)) c.fail('duplicate tensor name', 'unique names', n, at);
    names.add(name);
    const nDims = c.u32(`n_dims of '${n}'`);
    if (nDims < 1 || nDims > MAX_DIMS)
      c.fail(`invalid n_dims of '${n}'`, `1..${MAX_DIMS}`, `${nDims}`, c.pos - 4);
    const dims: number[] = [];
    let count = 1;
    for (let d = 0; d < nDims; d++) {
      const ne = c.size(`ne[${d}] of '${n}'`, fileSize * 8);
      if (ne < 1) c.fail(`empty dimension of '${n}'`, 'ne >= 1', `${ne}`, c.pos - (version >= 2 ? 8 : 4));
      dims.push(ne);
      count *= ne;
    }
    const typeAt = c.pos;
    const typeId = c.u32(`type of '${n}'`);
    const type = ggmlTypeById(typeId);
    if (!type)
      c.fail(
        `unsupported ggml type of '${n}'`,
        `one of ${GGML_TYPES.map((t) => `${t.name} (${t.id})`).join(', ')}`,
        `${typeId}`,
        typeAt,
      );
    if (dims[0]! % type.blockSize !== 0) {
      c.fail(
        `row of '${n}' is not whole blocks`,
        `ne[0] divisible by ${type.blockSize} (${type.name})`,
        `${dims[0]}`,
        typeAt,
      );
    }
    const offsetAt = c.pos;
    const offset = Number(c.u64(`offset of '${n}'`));
    if (offset % alignment !== 0)
      c.fail(`misaligned data offset of '${n}'`, `a multiple of ${alignment}`, `${offset}`, offsetAt);
    tensors.push({ name, dims, type, offset, byteLength: rowBytes(type, count) });
    offsetFields.push(offsetAt);
  }
  const dataOffset = Math.ceil(c.pos / alignment) * alignment;
  // gguf_init_from_file: tensor i must start at ctx->size = Σ_{j<i} GGML_PAD(nbytes_j, alignment);
  // anything else (two tensors sharing bytes, a gap, another order) is refused.
  let expected = 0;
  for (const [i, t] of tensors.entries()) {
    if (t.offset !== expected) {
      throw new FormatError('tensor data does not start where the previous tensor ends', {
        file,
        field: t.name,
        offset: offsetFields[i],
        expected: `data offset ${expected} (tensors tile the data section in order, each padded to ${alignment} bytes)`,
        got: `${t.offset}`,
      });
    }
    expected += Math.ceil(t.byteLength / alignment) * alignment;
  }
  for (const t of tensors) {
    if (dataOffset + t.offset + t.byteLength > fileSize) {
      throw new FormatError('tensor data past the end of the file', {
        file,
        field: t.name,
        offset: dataOffset + t.offset,
        expected: `${t.byteLength} bytes (${t.type.name} [${t.dims}])`,
        got: `${Math.max(0, fileSize - dataOffset - t.offset)} bytes left`,
      });
    }
  }
  return { version, metadata, tensors, alignment, dataOffset };
}

export class GgufFile {
  private readonly byName: Map<string, GgufTensorInfo>;

  private constructor(
    readonly file: string,
    private readonly handle: import('node:fs/promises').FileHandle,
    readonly size: number,
    readonly version: number,
    readonly metadata: Map<string, GgufKv>,
    readonly tensors: GgufTensorInfo[],
    readonly alignment: number,
    readonly dataOffset: number,
  ) {
    this.byName = new Map(tensors.map((t) => [t.name, t]));
  }

  static async open(file: string): Promise<GgufFile> {
    // A regular file (a FIFO would block the read forever).
    const handle = await openRegularFile(file, 'cannot open the GGUF file');
    try {
      const { size } = await handle.stat();
      // One synchronous forward pass over the header (positional reads through the window).
      const h = parseHeader(handle.fd, size, file);
      return new GgufFile(file, handle, size, h.version, h.metadata, h.tensors, h.alignment, h.dataOffset);
    } catch (e) {
      await handle.close();
      if (e instanceof PtqError) throw e;
      throw new FileError(`reading the GGUF file failed: ${(e as Error).message}`, { file });
    }
  }

  async close(): Promise<void> {
    await this.handle.close();
  }

  tensor(name: string): GgufTensorInfo {
    const t = this.byName.get(name);
    if (!t) throw new FormatError('no such tensor', { file: this.file, field: name });
    return t;
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  /** A metadata value, or undefined (arrays: string[] or the element type's typed array). */
  get(key: string): GgufScalar | GgufArray | undefined {
    return this.metadata.get(key)?.value;
  }

  /** The stored bytes of a tensor (positional read). */
  async readRaw(name: string): Promise<Uint8Array> {
    const t = this.tensor(name);
    const out = new Uint8Array(t.byteLength);
    const { bytesRead } = await this.handle.read(out, 0, t.byteLength, this.dataOffset + t.offset);
    if (bytesRead !== t.byteLength) {
      throw new FormatError('tensor data truncated', {
        file: this.file,
        field: name,
        offset: this.dataOffset + t.offset,
        expected: `${t.byteLength} bytes`,
        got: `${bytesRead}`,
      });
    }
    return out;
  }

  /** A tensor decoded to float32 with ggml's dequantize_row_* (row-major, ne[0] fastest). */
  async readFloat32(name: string): Promise<Float32Array> {
    const t = this.tensor(name);
    return decodeValues(
      t.type,
      await this.readRaw(name),
      t.dims.reduce((a, b) => a * b, 1),
    );
  }
}

// ---------- writer ----------

export interface GgufTensorToWrite {
  name: string;
  /** ne, innermost first. */
  dims: number[];
  type: GgmlType;
  /** The tensor's bytes, produced when it is written (one tensor in memory at a time). */
  data: () => Uint8Array | Promise<Uint8Array>;
}

class ByteSink {
  private chunks: Uint8Array[] = [];
  private cur = new Uint8Array(1 << 16);
  private view = new DataView(this.cur.buffer);
  private pos = 0;
  length = 0;

  private room(n: number): void {
    if (this.pos + n <= this.cur.length) return;
    this.chunks.push(this.cur.subarray(0, this.pos));
    this.cur = new Uint8Array(Math.max(1 << 16, n));
    this.view = new DataView(this.cur.buffer);
    this.pos = 0;
  }

  u8(v: number): void {
    this.room(1);
    this.view.setUint8(this.pos, v);
    this.pos += 1;
    this.length += 1;
  }
  u32(v: number): void {
    this.room(4);
    this.view.setUint32(this.pos, v, true);
    this.pos += 4;
    this.length += 4;
  }
  u64(v: number | bigint): void {
    this.room(8);
    this.view.setBigUint64(this.pos, BigInt(v), true);
    this.pos += 8;
    this.length += 8;
  }
  bytes(b: Uint8Array): void {
    this.room(b.length);
    this.cur.set(b, this.pos);
    this.pos += b.length;
    this.length += b.length;
  }
  string(s: string): void {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.bytes(b);
  }
  scalar(type: GgufValueType, v: GgufScalar, key: string): void {
    const n = SCALAR_BYTES[type];
    if (type === GgufValueType.STRING) {
      this.string(String(v));
      return;
    }
    if (n === undefined) throw new FormatError('invalid GGUF value type', { field: key, got: `${type}` });
    this.room(n);
    const d = this.view;
    const p = this.pos;
    switch (type) {
      case GgufValueType.UINT8:
        d.setUint8(p, Number(v));
        break;
      case GgufValueType.INT8:
        d.setInt8(p, Number(v));
        break;
      case GgufValueType.UINT16:
        d.setUint16(p, Number(v), true);
        break;
      case GgufValueType.INT16:
        d.setInt16(p, Number(v), true);
        break;
      case GgufValueType.UINT32:
        d.setUint32(p, Number(v), true);
        break;
      case GgufValueType.INT32:
        d.setInt32(p, Number(v), true);
        break;
      case GgufValueType.FLOAT32:
        d.setFloat32(p, Number(v), true);
        break;
      case GgufValueType.BOOL:
        d.setUint8(p, v ? 1 : 0);
        break;
      case GgufValueType.UINT64:
        d.setBigUint64(p, BigInt(v), true);
        break;
      case GgufValueType.INT64:
        d.setBigInt64(p, BigInt(v), true);
        break;
      default:
        d.setFloat64(p, Number(v), true);
    }
    this.pos += n;
    this.length += n;
  }
  /** Array elements: a typed array of the element type's own kind is copied as bytes. */
  array(type: GgufValueType, values: GgufArray, key: string): void {
    const Ctor = ARRAY_OF[type];
    if (LITTLE_ENDIAN_HOST && Ctor && values instanceof Ctor && type !== GgufValueType.BOOL) {
      this.bytes(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
      return;
    }
    for (let i = 0; i < values.length; i++) this.scalar(type, values[i]!, key);
  }
  pad(alignment: number): void {
    while (this.length % alignment !== 0) this.u8(0);
  }
  result(): Uint8Array {
    const all = [...this.chunks, this.cur.subarray(0, this.pos)];
    const out = new Uint8Array(this.length);
    let o = 0;
    for (const c of all) {
      out.set(c, o);
      o += c.length;
    }
    return out;
  }
}

/** The header bytes (magic .. padding before the data) and each tensor's offset. */
export function encodeGgufHeader(
  metadata: GgufKv[],
  tensors: Pick<GgufTensorToWrite, 'name' | 'dims' | 'type'>[],
  alignment = GGUF_DEFAULT_ALIGNMENT,
): { header: Uint8Array; offsets: number[]; sizes: number[] } {
  const s = new ByteSink();
  s.u32(GGUF_MAGIC);
  s.u32(3);
  s.u64(tensors.length);
  // general.alignment is always written (u32), right after general.architecture when present.
  const kvs = metadata.filter((m) => m.key !== 'general.alignment');
  kvs.splice(kvs[0]?.key === 'general.architecture' ? 1 : 0, 0, kv.u32('general.alignment', alignment));
  s.u64(kvs.length);
  for (const m of kvs) {
    s.string(m.key);
    s.u32(m.type);
    if (m.type === GgufValueType.ARRAY) {
      s.u32(m.itemType);
      s.u64(m.value.length);
      s.array(m.itemType, m.value, m.key);
    } else {
      s.scalar(m.type, m.value, m.key);
    }
  }
  const offsets: number[] = [];
  const sizes: number[] = [];
  let offset = 0;
  for (const t of tensors) {
    if (t.dims.length < 1 || t.dims.length > MAX_DIMS || t.dims[0]! % t.type.blockSize !== 0) {
      throw new FormatError('tensor cannot be stored', {
        field: t.name,
        expected: `1..4 dims, ne[0] divisible by ${t.type.blockSize}`,
        got: `[${t.dims}] ${t.type.name}`,
      });
    }
    const size = rowBytes(
      t.type,
      t.dims.reduce((a, b) => a * b, 1),
    );
    s.string(t.name);
    s.u32(t.dims.length);
    for (const d of t.dims) s.u64(d);
    s.u32(t.type.id);
    s.u64(offset);
    offsets.push(offset);
    sizes.push(size);
    offset += Math.ceil(size / alignment) * alignment;
  }
  s.pad(alignment);
  return { header: s.result(), offsets, sizes };
}

/**
 * Write a GGUF v3 file: header, then each tensor's bytes (aligned), streamed into an exclusively
 * created temporary sibling that is renamed to `file` only when complete (io/atomic.ts).
 */
export async function writeGguf(
  file: string,
  metadata: GgufKv[],
  tensors: GgufTensorToWrite[],
  alignment = GGUF_DEFAULT_ALIGNMENT,
): Promise<{ bytes: number }> {
  const { header, sizes } = encodeGgufHeader(metadata, tensors, alignment);
  return writeFileAtomically(file, async (handle) => {
    await handle.write(header, 0, header.length, 0);
    let written = header.length;
    for (let i = 0; i < tensors.length; i++) {
      const t = tensors[i]!;
      const data = await t.data();
      if (data.length !== sizes[i]) {
        throw new FormatError('tensor data has the wrong size', {
          file,
          field: t.name,
          expected: `${sizes[i]} bytes`,
          got: `${data.length}`,
        });
      }
      await handle.write(data, 0, data.length, written);
      written += data.length;
      const pad = (alignment - (written % alignment)) % alignment;
      if (pad && i < tensors.length - 1) {
        await handle.write(new Uint8Array(pad), 0, pad, written);
        written += pad;
      }
    }
    return { bytes: written };
  });
}
