/**
 * ONNX model files as they are shipped: one ModelProto (protobuf, onnx-proto binding) whose
 * initializers hold their bytes inline or in external data files (ONNX external data:
 * `data_location = EXTERNAL` with `location`, `offset`, `length` entries, `location` relative
 * to the model's directory, offsets from the start of that file).
 *
 * Reading decodes the protobuf only; an external initializer's bytes are read when asked for,
 * by offset and length, so a model of any size (> 2 GiB lives in external data) is opened in the
 * memory of its graph. Writing streams initializers one at a time into the new external data
 * file(s): tensors kept from the source are copied range by range, tensors a rewrite pass created
 * come from memory. Nothing else ever holds all weights at once.
 *
 *   TensorProto bytes: raw_data (little-endian) or the typed repeated fields (float_data for
 *   FLOAT, int32_data for FLOAT16/BF16 bit patterns and the ≤ 32-bit integer types, int64_data,
 *   double_data); onnx.proto3, "TensorProto".
 */
import { constants } from 'node:fs';
import { open, readFile, realpath, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import onnxProto from 'onnx-proto';
import { FileError, FormatError, UsageError } from '../errors.js';
import { decodeF16 } from '../formats/half.js';
import { allowedRoots } from '../io/confined-path.js';

export const { onnx } = onnxProto;
export type ModelProto = onnxProto.onnx.ModelProto;
export type TensorProto = onnxProto.onnx.TensorProto;
export type ValueInfoProto = onnxProto.onnx.ValueInfoProto;
/**
 * Decoded messages are class instances whose fields default on the prototype, so repeated and
 * scalar fields are never null; these aliases say so where the binding types them as interfaces.
 */
export interface AttributeProto extends Omit<onnxProto.onnx.AttributeProto, 't' | 'g' | 'graphs'> {
  t: TensorProto | null;
  g: GraphProto | null;
  graphs: GraphProto[];
}
export interface NodeProto extends Omit<onnxProto.onnx.NodeProto, 'attribute'> {
  attribute: AttributeProto[];
}
export interface GraphProto
  extends Omit<onnxProto.onnx.GraphProto, 'node' | 'initializer' | 'input' | 'output' | 'valueInfo'> {
  node: NodeProto[];
  initializer: TensorProto[];
  input: ValueInfoProto[];
  output: ValueInfoProto[];
  valueInfo: ValueInfoProto[];
}

export const DT = onnx.TensorProto.DataType;

/** Bytes per element of the fixed-size element types (TensorProto.DataType). */
const ELEMENT_BYTES: Record<number, number> = {
  [DT.FLOAT]: 4,
  [DT.UINT8]: 1,
  [DT.INT8]: 1,
  [DT.UINT16]: 2,
  [DT.INT16]: 2,
  [DT.INT32]: 4,
  [DT.INT64]: 8,
  [DT.BOOL]: 1,
  [DT.FLOAT16]: 2,
  [DT.DOUBLE]: 8,
  [DT.UINT32]: 4,
  [DT.UINT64]: 8,
  [DT.BFLOAT16]: 2,
};

/** A protobuf int64 (long.js object or number) as a number; refuses values past 2^53. */
export function num(x: number | { toNumber(): number } | null | undefined): number {
  if (x === null || x === undefined) return 0;
  const n = typeof x === 'number' ? x : x.toNumber();
  if (!Number.isSafeInteger(n)) throw new FormatError('integer beyond 2^53 in the model', { got: String(n) });
  return n;
}

export const dimsOf = (t: TensorProto): number[] => t.dims.map(num);
export const elementCount = (dims: readonly number[]) => dims.reduce((a, b) => a * b, 1);

/**
 * A tensor's dims as numbers, refused unless each is a non-negative integer and the element and
 * byte counts stay below 2^53: ONNX dims are int64, and [-128, -128] or [-1, -16384] multiply to
 * a plausible element count while describing no tensor (onnxruntime: "Out of bounds dimensions").
 */
export function checkedDims(t: TensorProto, file?: string): number[] {
  const shape = () => `[${t.dims.map(String).join(', ')}]`;
  let dims: number[];
  try {
    dims = dimsOf(t);
  } catch {
    throw new FormatError('tensor dimension beyond 2^53', { file, field: t.name, got: shape() });
  }
  if (dims.some((d) => d < 0))
    throw new FormatError('negative tensor dimension', {
      file,
      field: t.name,
      expected: 'dims >= 0',
      got: shape(),
    });
  const count = elementCount(dims);
  if (!Number.isSafeInteger(count * (ELEMENT_BYTES[t.dataType] ?? 1)))
    throw new FormatError('tensor size beyond 2^53 bytes', { file, field: t.name, got: shape() });
  return dims;
}

/** The typed repeated field holding a tensor's values when it has no raw_data (onnx.proto3, TensorProto). */
function typedField(t: TensorProto): { name: string; length: number } {
  switch (t.dataType) {
    case DT.FLOAT:
      return { name: 'float_data', length: t.floatData.length };
    case DT.DOUBLE:
      return { name: 'double_data', length: t.doubleData.length };
    case DT.INT64:
      return { name: 'int64_data', length: t.int64Data.length };
    case DT.UINT32:
    case DT.UINT64:
      return { name: 'uint64_data', length: t.uint64Data.length };
    default:
      return { name: 'int32_data', length: t.int32Data.length };
  }
}

/**
 * An initializer's dims and the amount of data it holds (raw_data bytes, typed values, or the
 * external `length` entry) agree, checked without reading external data.
 */
function checkInitializer(t: TensorProto, file: string): void {
  const dims = checkedDims(t, file);
  const elemBytes = ELEMENT_BYTES[t.dataType];
  if (elemBytes === undefined) return; // strings and exotic types: checked when read
  const count = elementCount(dims);
  const expected = count * elemBytes;
  const ext = externalEntry(t);
  const shape = `[${dims.join(', ')}]`;
  const disagree = (what: string, want: string, got: number) =>
    new FormatError(`${what} disagrees with the tensor shape ${shape}`, {
      file,
      field: t.name,
      expected: want,
      got: String(got),
    });
  if (ext) {
    if (ext.length !== undefined && ext.length !== expected)
      throw disagree('external data length', `${expected} bytes`, ext.length);
  } else if (t.rawData && t.rawData.byteLength > 0) {
    if (t.rawData.byteLength !== expected)
      throw disagree('raw_data length', `${expected} bytes`, t.rawData.byteLength);
  } else {
    const f = typedField(t);
    if (f.length !== count) throw disagree(`${f.name} count`, `${count} values`, f.length);
  }
}

/**
 * `location` (relative to `dir`, the directory of the file that names it) as a real path, refused
 * unless it is a regular file inside `dir`'s real path: the text of the location is checked first
 * (no absolute path, no `..` out of `dir`), then its real path, so a symlink (the location itself
 * or a directory on the way) leading outside is refused too, as onnxruntime does ("External data
 * path escapes model directory"). The allowed trees are those of io/confined-path.ts (a Hugging
 * Face cache snapshot's files may resolve into its repo's blobs/). Devices and FIFOs are refused
 * before they are opened.
 */
export async function resolveInside(
  dir: string,
  location: string,
  what: string,
  context: { file?: string; field?: string } = {},
): Promise<string> {
  const file = path.resolve(dir, location);
  const rel = path.relative(dir, file);
  if (path.isAbsolute(location) || rel === '..' || rel.startsWith(`..${path.sep}`) || path.isAbsolute(rel))
    throw new FormatError(`${what} location leaves the model directory`, {
      ...context,
      expected: `a path inside ${dir}`,
      got: location,
    });
  const [roots, real] = await Promise.all([
    allowedRoots(dir),
    realpath(file).catch((e: NodeJS.ErrnoException) => {
      throw new FileError(`cannot open ${what} (${e.code ?? e.message})`, { ...context, file });
    }),
  ]);
  const inside = (root: string) => {
    const r = path.relative(root, real);
    return r !== '' && r !== '..' && !r.startsWith(`..${path.sep}`) && !path.isAbsolute(r);
  };
  if (!roots.some(inside))
    throw new FileError(`${what} resolves outside the model directory`, {
      ...context,
      expected: `a file inside ${roots.join(' or ')}`,
      got: `${location} -> ${real}`,
      hint: 'copy the file into the model directory instead of linking it',
    });
  const info = await stat(real);
  if (!info.isFile())
    throw new FileError(`${what} is not a regular file`, { ...context, got: `${location} -> ${real}` });
  return real;
}

/** The external-data entries of a tensor, or undefined when its data is inline. */
function externalEntry(t: TensorProto): { location: string; offset: number; length?: number } | undefined {
  if (t.dataLocation !== onnx.TensorProto.DataLocation.EXTERNAL) return undefined;
  const kv = new Map(t.externalData.map((e) => [e.key, e.value ?? '']));
  const location = kv.get('location');
  if (!location) throw new FormatError('external tensor without a location', { field: t.name });
  const int = (key: string) => {
    const v = kv.get(key);
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < 0)
      throw new FormatError(`invalid external data ${key}`, { field: t.name, got: v });
    return n;
  };
  return { location, offset: int('offset') ?? 0, length: int('length') };
}

export class OnnxModel {
  readonly dir: string;
  private readonly handles = new Map<
    string,
    Promise<{ fh: import('node:fs/promises').FileHandle; size: number }>
  >();
  private initializerIndex?: Map<string, TensorProto>;
  /** The source stored (some of) its weights as external data: outputs follow by default. */
  readonly sourceExternal: boolean;

  private constructor(
    readonly file: string,
    readonly proto: ModelProto,
  ) {
    this.dir = path.dirname(file);
    for (const t of this.graph.initializer) checkInitializer(t, file);
    this.sourceExternal = this.graph.initializer.some((t) => externalEntry(t));
  }

  /** Decode `file` (its external data stays on disk until read). */
  static async read(file: string): Promise<OnnxModel> {
    const bytes = await readFile(file).catch((e: NodeJS.ErrnoException) => {
      throw new FileError(`cannot read the ONNX model (${e.code ?? e.message})`, { file });
    });
    let proto: ModelProto;
    try {
      proto = onnx.ModelProto.decode(bytes);
    } catch (e) {
      throw new FormatError(`not an ONNX ModelProto: ${(e as Error).message}`, { file });
    }
    if (!proto.graph) throw new FormatError('ONNX model without a graph', { file });
    return new OnnxModel(file, proto);
  }

  /** Wrap a model built in memory (tests, fixtures); external references resolve against `dir`. */
  static fromProto(proto: ModelProto, file: string): OnnxModel {
    return new OnnxModel(file, proto);
  }

  get graph(): GraphProto {
    return this.proto.graph as unknown as GraphProto;
  }

  /** Initializers by name (rebuilt after `invalidate()` when a pass edits the list). */
  initializer(name: string): TensorProto | undefined {
    this.initializerIndex ??= new Map(this.graph.initializer.map((t) => [t.name, t]));
    return this.initializerIndex.get(name);
  }

  invalidate(): void {
    this.initializerIndex = undefined;
  }

  /** The default-domain opset of the model. */
  opset(): number {
    const entry = this.proto.opsetImport.find((o) => !o.domain || o.domain === 'ai.onnx');
    return entry ? num(entry.version) : 1;
  }

  /** Bytes of a tensor's data (little-endian, row-major), inline or read from external data by offset. */
  async tensorBytes(t: TensorProto): Promise<Uint8Array> {
    const ext = externalEntry(t);
    const dims = checkedDims(t, this.file);
    const elemBytes = ELEMENT_BYTES[t.dataType];
    if (elemBytes === undefined)
      throw new FormatError('unsupported initializer element type', {
        file: this.file,
        field: t.name,
        got: String(t.dataType),
      });
    const expected = elementCount(dims) * elemBytes;
    if (ext) {
      const length = ext.length ?? expected;
      if (length !== expected)
        throw new FormatError('external data length disagrees with the tensor shape', {
          file: this.file,
          field: t.name,
          expected: `${expected} bytes`,
          got: String(length),
        });
      return this.readExternal(t.name, ext.location, ext.offset, length);
    }
    if (t.rawData && t.rawData.byteLength > 0) {
      if (t.rawData.byteLength !== expected)
        throw new FormatError('raw_data length disagrees with the tensor shape', {
          file: this.file,
          field: t.name,
          expected: `${expected} bytes`,
          got: String(t.rawData.byteLength),
        });
      return t.rawData;
    }
    return typedFieldBytes(t, expected);
  }

  /** A FLOAT / FLOAT16 initializer as float32 values. */
  async floatData(t: TensorProto): Promise<Float32Array> {
    const bytes = await this.tensorBytes(t);
    // A copy (Buffer.slice would be a view into the whole file): aligned and owned.
    const copy = new Uint8Array(bytes);
    if (t.dataType === DT.FLOAT) return new Float32Array(copy.buffer, 0, copy.byteLength / 4);
    if (t.dataType === DT.FLOAT16) return decodeF16(new Uint16Array(copy.buffer, 0, copy.byteLength / 2));
    throw new FormatError('expected a float or float16 tensor', { field: t.name, got: String(t.dataType) });
  }

  private async readExternal(
    name: string,
    location: string,
    offset: number,
    length: number,
  ): Promise<Uint8Array> {
    const file = path.resolve(this.dir, location);
    let h = this.handles.get(file);
    if (!h) {
      h = (async () => {
        const real = await resolveInside(this.dir, location, 'external data', {
          file: this.file,
          field: name,
        });
        // O_NOFOLLOW: the real path's last component is no symlink unless it was swapped since.
        const flags = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;
        const fh = await open(real, flags).catch((e: NodeJS.ErrnoException) => {
          throw new FileError(`cannot open external data (${e.code ?? e.message})`, { file, field: name });
        });
        const info = await fh.stat();
        if (!info.isFile()) {
          await fh.close();
          throw new FileError('external data is not a regular file', { file, field: name });
        }
        return { fh, size: info.size };
      })();
      this.handles.set(file, h);
    }
    const { fh, size } = await h;
    if (offset + length > size) {
      throw new FormatError('external tensor runs past the end of its data file', {
        file,
        field: name,
        offset,
        expected: `${offset + length} bytes`,
        got: `${size}`,
      });
    }
    const out = new Uint8Array(length);
    for (let done = 0; done < length; ) {
      const { bytesRead } = await fh.read(out, done, Math.min(length - done, 1 << 30), offset + done);
      if (bytesRead === 0) throw new FormatError('external data ended early', { file, field: name, offset });
      done += bytesRead;
    }
    return out;
  }

  /** Close the external data files. */
  async close(): Promise<void> {
    for (const h of this.handles.values()) {
      // A file that failed to open (refused, missing) has nothing to close.
      const opened = await h.catch(() => undefined);
      if (opened) await opened.fh.close();
    }
    this.handles.clear();
  }
}

function typedFieldBytes(t: TensorProto, expected: number): Uint8Array {
  const n = expected / ELEMENT_BYTES[t.dataType]!;
  const out = new Uint8Array(expected);
  const view = new DataView(out.buffer);
  const need = (len: number, field: string) => {
    if (len !== n) throw new FormatError(`${field} holds ${len} values for ${n} elements`, { field: t.name });
  };
  if (t.dataType === DT.UINT32) {
    // UINT32 values live in uint64_data (onnx.proto3).
    need(t.uint64Data.length, 'uint64_data');
    for (const [i, v] of t.uint64Data.entries()) view.setUint32(i * 4, num(v), true);
    return out;
  }
  switch (t.dataType) {
    case DT.FLOAT:
      need(t.floatData.length, 'float_data');
      for (const [i, v] of t.floatData.entries()) view.setFloat32(i * 4, v, true);
      break;
    case DT.DOUBLE:
      need(t.doubleData.length, 'double_data');
      for (const [i, v] of t.doubleData.entries()) view.setFloat64(i * 8, v, true);
      break;
    case DT.INT64:
      need(t.int64Data.length, 'int64_data');
      for (const [i, v] of t.int64Data.entries()) view.setBigInt64(i * 8, BigInt(num(v)), true);
      break;
    case DT.UINT64:
      need(t.uint64Data.length, 'uint64_data');
      for (const [i, v] of t.uint64Data.entries()) view.setBigUint64(i * 8, BigInt(num(v)), true);
      break;
    default: {
      // int32_data carries every type of 32 bits or fewer (bit patterns for FLOAT16/BFLOAT16).
      need(t.int32Data.length, 'int32_data');
      const size = ELEMENT_BYTES[t.dataType]!;
      t.int32Data.forEach((v, i) => {
        if (size === 1) view.setUint8(i, v & 0xff);
        else if (size === 2) view.setUint16(i * 2, v & 0xffff, true);
        else view.setInt32(i * 4, v, true);
      });
    }
  }
  return out;
}

/** A new initializer holding `data` inline (raw_data). */
export function makeTensor(
  name: string,
  dataType: number,
  dims: readonly number[],
  data: ArrayBufferView,
): TensorProto {
  const expected = elementCount(dims) * ELEMENT_BYTES[dataType]!;
  if (data.byteLength !== expected)
    throw new FormatError('tensor data does not match its shape', {
      field: name,
      expected: `${expected} bytes`,
      got: String(data.byteLength),
    });
  return onnx.TensorProto.create({
    name,
    dataType,
    dims: [...dims],
    rawData: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
  });
}

export interface WriteOptions {
  /** Initializers in `<file>_data`: always, never, or when the source had external data or the weights pass 1 GiB. */
  externalData?: boolean | 'auto';
  /** Tensors of at least this many bytes go to the external file (onnx's save_model default 1024). */
  threshold?: number;
  /** Largest data file; later tensors start `<file>_data_1`, ... (transformers.js' chunk naming). */
  maxChunkBytes?: number;
}

export interface WriteReport {
  file: string;
  /** .onnx bytes plus external data bytes. */
  bytes: number;
  externalFiles: string[];
}

const AUTO_EXTERNAL_BYTES = 1 << 30;
const PROTOBUF_LIMIT = 2 ** 31;
const DEFAULT_THRESHOLD = 1024;
/** Under 2 GiB, so each chunk fits one ArrayBuffer in browsers (as src/export/onnx.ts). */
const DEFAULT_MAX_CHUNK = 2 ** 31 - 2 ** 26;
const PAGE = 4096;
const SMALL_ALIGN = 64;

/** Bytes of a tensor's data without reading it. */
export function tensorByteLength(t: TensorProto): number {
  const ext = externalEntry(t);
  if (ext?.length !== undefined) return ext.length;
  const size = ELEMENT_BYTES[t.dataType];
  return size === undefined ? 0 : elementCount(dimsOf(t)) * size;
}

/**
 * Write `model` to `file`. With external data, every initializer of at least `threshold` bytes is
 * written, one at a time, into `<basename>_data` (page-aligned above 1 MiB, as onnx's save_model),
 * its TensorProto pointing there; the source model is not modified.
 */
export async function writeOnnxModel(
  model: OnnxModel,
  file: string,
  options: WriteOptions = {},
): Promise<WriteReport> {
  const graph = model.graph;
  const total = graph.initializer.reduce((n, t) => n + tensorByteLength(t), 0);
  const mode = options.externalData ?? 'auto';
  const external = mode === 'auto' ? model.sourceExternal || total > AUTO_EXTERNAL_BYTES : mode;
  if (!external && total >= PROTOBUF_LIMIT) {
    throw new UsageError(
      'the weights do not fit in one .onnx file (protobuf messages are limited to 2 GiB)',
      {
        file,
        got: `${total} bytes of weights`,
        hint: 'write with external data',
      },
    );
  }
  const threshold = options.threshold ?? DEFAULT_THRESHOLD;
  const maxChunk = options.maxChunkBytes ?? DEFAULT_MAX_CHUNK;
  const base = path.basename(file);
  const dir = path.dirname(file);
  const original = graph.initializer;
  const out: TensorProto[] = [];
  const chunks: { name: string; fh: import('node:fs/promises').FileHandle; bytes: number }[] = [];
  try {
    for (const t of original) {
      const length = tensorByteLength(t);
      if (!external || length < threshold || t.dataType === DT.STRING) {
        // Inline: materialize external source data (small tensors), keep the rest as it is.
        out.push(
          externalEntry(t)
            ? onnx.TensorProto.create({
                name: t.name,
                dataType: t.dataType,
                dims: t.dims,
                rawData: await model.tensorBytes(t),
              })
            : t,
        );
        continue;
      }
      const align = length >= 1 << 20 ? PAGE : SMALL_ALIGN;
      let chunk = chunks.at(-1);
      const offsetIn = (c: { bytes: number }) => Math.ceil(c.bytes / align) * align;
      if (!chunk || (chunk.bytes > 0 && offsetIn(chunk) + length > maxChunk)) {
        const name = chunks.length === 0 ? `${base}_data` : `${base}_data_${chunks.length}`;
        chunk = { name, fh: await open(path.join(dir, name), 'w'), bytes: 0 };
        chunks.push(chunk);
      }
      const offset = offsetIn(chunk);
      const data = await model.tensorBytes(t);
      await chunk.fh.write(data, 0, data.byteLength, offset);
      chunk.bytes = offset + length;
      out.push(
        onnx.TensorProto.create({
          name: t.name,
          dataType: t.dataType,
          dims: t.dims,
          docString: t.docString,
          dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
          externalData: [
            { key: 'location', value: chunk.name },
            { key: 'offset', value: String(offset) },
            { key: 'length', value: String(length) },
          ],
        }),
      );
    }
  } finally {
    for (const c of chunks) {
      await c.fh.truncate(c.bytes);
      await c.fh.close();
    }
  }
  graph.initializer = out;
  let bytes: Uint8Array;
  try {
    bytes = onnx.ModelProto.encode(model.proto).finish();
  } finally {
    graph.initializer = original;
  }
  await writeFile(file, bytes);
  let size = bytes.byteLength;
  for (const c of chunks) size += (await stat(path.join(dir, c.name))).size;
  return { file, bytes: size, externalFiles: chunks.map((c) => c.name) };
}
