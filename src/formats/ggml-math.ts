/**
 * The scalar arithmetic of ggml's reference quantizers (ggml/src/ggml-quants.c), reproduced
 * bit for bit in JavaScript. The C code computes in IEEE float32: every product, sum and
 * quotient is rounded to float32 before the next operation. JavaScript computes in float64,
 * so each step below is wrapped in `f` (Math.fround). For + − × ÷ and sqrt of float32
 * operands, rounding the float64 result to float32 equals the float32 operation (53 ≥ 2·24 + 2,
 * double rounding is innocuous), so `f(a * b)` is exactly C's `a * b` on floats.
 */
import { f16ToF32, f32ToF16 } from './half.js';

/** Round to float32: C's `float` result of one operation. */
export const f = Math.fround;

const scratchF32 = new Float32Array(1);
const scratchI32 = new Int32Array(scratchF32.buffer);

/**
 * ggml's `nearest_int`: add 1.5·2^23 in float32 so the FPU rounds to the nearest integer
 * (ties to even), then read the integer from the mantissa bits. Valid for |v| ≤ 4194303;
 * outside that range the C code's bit pattern result is reproduced as is.
 */
export function nearestInt(v: number): number {
  scratchF32[0] = f(v) + 12582912;
  return (scratchI32[0]! & 0x007fffff) - 0x00400000;
}

/** C's `roundf`/`lroundf`: nearest integer, halves away from zero. */
export function roundHalfAway(v: number): number {
  return v < 0 ? -Math.floor(-v + 0.5) : Math.floor(v + 0.5);
}

/** C's float -> int8_t/uint8_t conversion of an in-range value: truncation toward zero. */
export const truncInt = (v: number): number => Math.trunc(v) | 0;

/** Little-endian f16 read/write inside a block (GGML_FP16_TO_FP32 / GGML_FP32_TO_FP16). */
export function readF16(y: Uint8Array, o: number): number {
  return f16ToF32(y[o]! | (y[o + 1]! << 8));
}

export function writeF16(y: Uint8Array, o: number, v: number): void {
  const h = f32ToF16(v);
  y[o] = h & 0xff;
  y[o + 1] = h >>> 8;
}

/** The value a float32 takes after storage as f16 (what the decoder will see). */
export const viaF16 = (v: number): number => f16ToF32(f32ToF16(v));
