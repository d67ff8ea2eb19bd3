/**
 * IEEE 754 binary16 (f16) and bfloat16 (bf16) <-> float32, round-to-nearest-even,
 * with subnormals, infinities and NaN. Scalar functions use one shared scratch word for
 * bit reinterpretation; array versions loop over them without allocation.
 */
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

function f32Bits(x: number): number {
  scratchF32[0] = x;
  return scratchU32[0]!;
}

function bitsToF32(bits: number): number {
  scratchU32[0] = bits >>> 0;
  return scratchF32[0]!;
}

export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? Number.NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** float32 value -> f16 bits, rounding to nearest even; overflow to ±Inf. */
export function f32ToF16(x: number): number {
  const bits = f32Bits(x);
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal f16 (or zero): shift the full 24-bit significand into place.
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - e;
    const half = m >>> shift;
    const rest = m & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    return sign | (half + (rest > halfway || (rest === halfway && half & 1) ? 1 : 0));
  }
  const half = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent (up to Inf).
  return sign | (half + (rest > 0x1000 || (rest === 0x1000 && half & 1) ? 1 : 0));
}

export function bf16ToF32(b: number): number {
  return bitsToF32((b & 0xffff) << 16);
}

/** float32 value -> bf16 bits, rounding to nearest even; NaN stays NaN. */
export function f32ToBf16(x: number): number {
  const bits = f32Bits(x);
  if ((bits & 0x7f800000) === 0x7f800000 && bits & 0x7fffff) return ((bits >>> 16) | 0x40) & 0xffff;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

export const roundToF16 = (x: number): number => f16ToF32(f32ToF16(x));
export const roundToBf16 = (x: number): number => bf16ToF32(f32ToBf16(x));

/** Every FP16 value as float32 (256 KiB, built on first use from f16ToF32): one load per element. */
let f16Table: Float32Array | undefined;

export function decodeF16(src: Uint16Array, dst = new Float32Array(src.length)): Float32Array {
  // A table lookup instead of f16ToF32 per element: ~20x faster on the multi-GB FP16 checkpoints
  // that stream-quantize.ts reads, and exact by construction (NaN payloads included).
  if (src.length < 65536) {
    for (let i = 0; i < src.length; i++) dst[i] = f16ToF32(src[i]!);
    return dst;
  }
  const table = f16DecodeTable();
  for (let i = 0; i < src.length; i++) dst[i] = table[src[i]!]!;
  return dst;
}

/**
 * The decode table itself, for loops that decode FP16 rows straight into their own buffer
 * (stream-quantize.ts decodes one weight row at a time into the row RTN quantizes).
 */
export function f16DecodeTable(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16ToF32(h);
  }
  return f16Table;
}

export function encodeF16(src: Float32Array, dst = new Uint16Array(src.length)): Uint16Array {
  for (let i = 0; i < src.length; i++) dst[i] = f32ToF16(src[i]!);
  return dst;
}

export function decodeBf16(src: Uint16Array, dst = new Float32Array(src.length)): Float32Array {
  for (let i = 0; i < src.length; i++) dst[i] = bf16ToF32(src[i]!);
  return dst;
}

export function encodeBf16(src: Float32Array, dst = new Uint16Array(src.length)): Uint16Array {
  for (let i = 0; i < src.length; i++) dst[i] = f32ToBf16(src[i]!);
  return dst;
}

/**
 * dst.length FP16 values from src[begin..] decoded into dst (by table), with the finiteness
 * check in the same pass: returns false when one of them is NaN or ±Inf. An all-ones exponent
 * field (0x7c00) plus one exponent step (0x0400) carries into bit 15; any other field does not.
 */
export function decodeF16Checked(src: Uint16Array, begin: number, dst: Float32Array): boolean {
  const table = f16DecodeTable();
  let bad = 0;
  for (let i = 0, j = begin; i < dst.length; i++, j++) {
    const h = src[j]!;
    dst[i] = table[h]!;
    bad |= (h & 0x7c00) + 0x0400;
  }
  return (bad & 0x8000) === 0;
}

/** decodeF16Checked for BF16 (bf16ToF32 is a 16-bit shift; exponent field 0x7f80, step 0x0080). */
export function decodeBf16Checked(src: Uint16Array, begin: number, dst: Float32Array): boolean {
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  let bad = 0;
  for (let i = 0, j = begin; i < dst.length; i++, j++) {
    const h = src[j]!;
    bits[i] = h << 16;
    bad |= (h & 0x7f80) + 0x0080;
  }
  return (bad & 0x8000) === 0;
}
