/**
 * ggml tensor types as data: one row per type with its ggml id (ggml.h `enum ggml_type`),
 * block size, bytes per block, bits per weight, the reference encoder (bit-exact with
 * ggml-quants.c `quantize_row_*_ref`, which llama-quantize uses when no importance matrix is
 * given) and the decoder (`dequantize_row_*`). Like ggml's `type_traits` table, everything
 * else (row sizes, GGUF tensor sizes, fallbacks) is computed from these rows.
 */
import { UsageError } from '../errors.js';
import * as k from './ggml-kquants.js';
import * as legacy from './ggml-legacy.js';
import { readF16 } from './ggml-math.js';
import { bf16ToF32, f32ToBf16, f32ToF16 } from './half.js';

/** Encode one block of `blockSize` float32 values at x[xo..] into `typeSize` bytes at y[yo..]. */
export type BlockEncoder = (x: Float32Array, xo: number, y: Uint8Array, yo: number) => void;
/** Decode one block of bytes at y[yo..] into `blockSize` float32 values at out[oo..]. */
export type BlockDecoder = (y: Uint8Array, yo: number, out: Float32Array, oo: number) => void;

export interface GgmlType {
  /** ggml's name, as `ggml_type_name` prints it. */
  readonly name: string;
  /** `enum ggml_type` value stored in GGUF tensor infos. */
  readonly id: number;
  /** Weights per block (1 for plain float types). */
  readonly blockSize: number;
  /** Bytes per block. */
  readonly typeSize: number;
  /** typeSize·8 / blockSize. */
  readonly bitsPerWeight: number;
  /** One-line math of a block, for help texts and docs. */
  readonly formula: string;
  readonly encode: BlockEncoder;
  readonly decode: BlockDecoder;
}

const encodeF32: BlockEncoder = (x, xo, y, yo) => {
  new DataView(y.buffer, y.byteOffset).setFloat32(yo, x[xo]!, true);
};
const decodeF32: BlockDecoder = (y, yo, out, oo) => {
  out[oo] = new DataView(y.buffer, y.byteOffset).getFloat32(yo, true);
};
const encodeHalf =
  (conv: (v: number) => number): BlockEncoder =>
  (x, xo, y, yo) => {
    const h = conv(x[xo]!);
    y[yo] = h & 0xff;
    y[yo + 1] = h >>> 8;
  };
const decodeBf16: BlockDecoder = (y, yo, out, oo) => {
  out[oo] = bf16ToF32(y[yo]! | (y[yo + 1]! << 8));
};

function row(
  name: string,
  id: number,
  blockSize: number,
  typeSize: number,
  formula: string,
  encode: BlockEncoder,
  decode: BlockDecoder,
): GgmlType {
  return Object.freeze({
    name,
    id,
    blockSize,
    typeSize,
    bitsPerWeight: (typeSize * 8) / blockSize,
    formula,
    encode,
    decode,
  });
}

/** The table. Ids from ggml.h; sizes are asserted against ggml-common.h's static_asserts in the tests. */
export const GGML_TYPES: readonly GgmlType[] = Object.freeze([
  row('F32', 0, 1, 4, 'x', encodeF32, decodeF32),
  row('F16', 1, 1, 2, 'x = f16', encodeHalf(f32ToF16), (y, yo, out, oo) => {
    out[oo] = readF16(y, yo);
  }),
  row('Q4_0', 2, 32, 18, 'x = d·(q − 8), d = max/−8', legacy.encodeQ4_0, legacy.decodeQ4_0),
  row('Q4_1', 3, 32, 20, 'x = d·q + m', legacy.encodeQ4_1, legacy.decodeQ4_1),
  row('Q5_0', 6, 32, 22, 'x = d·(q − 16), d = max/−16', legacy.encodeQ5_0, legacy.decodeQ5_0),
  row('Q5_1', 7, 32, 24, 'x = d·q + m', legacy.encodeQ5_1, legacy.decodeQ5_1),
  row('Q8_0', 8, 32, 34, 'x = d·q, d = amax/127', legacy.encodeQ8_0, legacy.decodeQ8_0),
  row('Q2_K', 10, 256, 84, 'x = d·sc·q − dmin·m (16×16, 4-bit sc/m)', k.encodeQ2_K, k.decodeQ2_K),
  row('Q3_K', 11, 256, 110, 'x = d·sc·(q − 4) (16×16, 6-bit sc)', k.encodeQ3_K, k.decodeQ3_K),
  row('Q4_K', 12, 256, 144, 'x = d·sc·q − dmin·m (8×32, 6-bit sc/m)', k.encodeQ4_K, k.decodeQ4_K),
  row('Q5_K', 13, 256, 176, 'x = d·sc·q − dmin·m (8×32, 6-bit sc/m)', k.encodeQ5_K, k.decodeQ5_K),
  row('Q6_K', 14, 256, 210, 'x = d·sc·(q − 32) (16×16, 8-bit sc)', k.encodeQ6_K, k.decodeQ6_K),
  row('BF16', 30, 1, 2, 'x = bf16', encodeHalf(f32ToBf16), decodeBf16),
  row('TQ1_0', 34, 256, 54, 'x = d·t, t ∈ {−1,0,1}, 5 trits/byte', k.encodeTQ1_0, k.decodeTQ1_0),
  row('TQ2_0', 35, 256, 66, 'x = d·t, t ∈ {−1,0,1}, 2 bits/trit', k.encodeTQ2_0, k.decodeTQ2_0),
]);

const BY_ID = new Map(GGML_TYPES.map((t) => [t.id, t]));
const BY_NAME = new Map(GGML_TYPES.map((t) => [t.name.toLowerCase(), t]));

export function ggmlTypeById(id: number): GgmlType | undefined {
  return BY_ID.get(id);
}

export function ggmlType(name: string): GgmlType {
  const t = BY_NAME.get(name.toLowerCase());
  if (!t) {
    throw new UsageError('unknown ggml type', {
      field: 'type',
      expected: GGML_TYPES.map((x) => x.name.toLowerCase()).join(', '),
      got: name,
    });
  }
  return t;
}

/** Bytes of `n` consecutive values (a multiple of the block size), as `ggml_row_size`. */
export function rowBytes(type: GgmlType, n: number): number {
  return (n / type.blockSize) * type.typeSize;
}

/** Encode values (length a multiple of the block size) block by block with the reference encoder. */
export function encodeValues(type: GgmlType, x: Float32Array): Uint8Array {
  if (x.length % type.blockSize !== 0) {
    throw new UsageError(`${type.name} needs a multiple of ${type.blockSize} values`, {
      got: String(x.length),
    });
  }
  const nb = x.length / type.blockSize;
  const y = new Uint8Array(nb * type.typeSize);
  if (type.id === 0) {
    new Uint8Array(y.buffer).set(new Uint8Array(x.buffer, x.byteOffset, x.byteLength));
    return y;
  }
  for (let b = 0; b < nb; b++) type.encode(x, b * type.blockSize, y, b * type.typeSize);
  return y;
}

/** Decode `count` values (a multiple of the block size) from their bytes. */
export function decodeValues(type: GgmlType, bytes: Uint8Array, count: number): Float32Array {
  const out = new Float32Array(count);
  const nb = count / type.blockSize;
  if (type.id === 0) {
    new Uint8Array(out.buffer).set(bytes.subarray(0, count * 4));
    return out;
  }
  for (let b = 0; b < nb; b++) type.decode(bytes, b * type.typeSize, out, b * type.blockSize);
  return out;
}

/**
 * llama-quantize's fallback when a row length is not a multiple of the block size
 * (llama-quant.cpp `tensor_type_fallback`): 256-blocks go to a 32-block type, and a
 * 32-block type that still does not fit becomes F16.
 */
const FALLBACK: Record<string, string> = {
  Q2_K: 'Q4_0',
  Q3_K: 'Q4_0',
  TQ1_0: 'Q4_0',
  TQ2_0: 'Q4_0',
  Q4_K: 'Q5_0',
  Q5_K: 'Q5_1',
  Q6_K: 'Q8_0',
};

export function typeForRow(target: GgmlType, rowLength: number): GgmlType {
  if (rowLength % target.blockSize === 0) return target;
  const next = FALLBACK[target.name] ? ggmlType(FALLBACK[target.name]!) : target;
  return rowLength % next.blockSize === 0 ? next : ggmlType('F16');
}
