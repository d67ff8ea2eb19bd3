/**
 * ggml's 32-weight block formats ("legacy quants"), byte layouts of ggml-common.h and the
 * scalar reference quantizers `quantize_row_*_ref` / `dequantize_row_*` of ggml-quants.c,
 * re-derived step by step (float32 arithmetic: see ggml-math.ts). Within a block, weight j
 * and weight j + 16 share byte j: low nibble = j, high nibble = j + 16.
 *
 *   Q4_0  18 B  {f16 d, u8 qs[16]}            x = d·(q − 8),  d = max / −8 (max: signed value of largest |x|)
 *   Q4_1  20 B  {f16 d, f16 m, u8 qs[16]}     x = d·q + m,    d = (max − min)/15, m = min
 *   Q5_0  22 B  {f16 d, u8 qh[4], u8 qs[16]}  x = d·(q − 16), d = max / −16; bit 4 of q_j in qh bit j
 *   Q5_1  24 B  {f16 d, f16 m, u8 qh[4], qs}  x = d·q + m,    d = (max − min)/31
 *   Q8_0  34 B  {f16 d, i8 qs[32]}            x = d·q,        d = amax/127, q = roundf(x/d)
 */
import { f, readF16, roundHalfAway, truncInt, writeF16 } from './ggml-math.js';

export const QK = 32;

/** Largest |x| of the block and its signed value (first occurrence wins, as the C loop's strict '<'). */
function signedAbsMax(x: Float32Array, o: number, n: number): number {
  let amax = 0;
  let max = 0;
  for (let j = 0; j < n; j++) {
    const v = x[o + j]!;
    if (amax < Math.abs(v)) {
      amax = Math.abs(v);
      max = v;
    }
  }
  return max;
}

function minMax(x: Float32Array, o: number, n: number): [number, number] {
  let min = Number.MAX_VALUE;
  let max = -Number.MAX_VALUE;
  for (let j = 0; j < n; j++) {
    const v = x[o + j]!;
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return [min, max];
}

// ---------- Q4_0 ----------
export function encodeQ4_0(x: Float32Array, xo: number, y: Uint8Array, yo: number): void {
  const max = signedAbsMax(x, xo, QK);
  const d = f(max / -8);
  const id = d ? f(1 / d) : 0;
  writeF16(y, yo, d);
  for (let j = 0; j < 16; j++) {
    // (int8_t)(x*id + 8.5f): float32 sum, then truncation; MIN(15, ·) for the +8 edge.
    const q0 = Math.min(15, truncInt(f(f(x[xo + j]! * id) + 8.5)));
    const q1 = Math.min(15, truncInt(f(f(x[xo + 16 + j]! * id) + 8.5)));
    y[yo + 2 + j] = q0 | (q1 << 4);
  }
}

export function decodeQ4_0(y: Uint8Array, yo: number, out: Float32Array, oo: number): void {
  const d = readF16(y, yo);
  for (let j = 0; j < 16; j++) {
    out[oo + j] = ((y[yo + 2 + j]! & 0x0f) - 8) * d;
    out[oo + 16 + j] = ((y[yo + 2 + j]! >> 4) - 8) * d;
  }
}

// ---------- Q4_1 ----------
export function encodeQ4_1(x: Float32Array, xo: number, y: Uint8Array, yo: number): void {
  const [min, max] = minMax(x, xo, QK);
  const d = f(f(max - min) / 15);
  const id = d ? f(1 / d) : 0;
  writeF16(y, yo, d);
  writeF16(y, yo + 2, min);
  for (let j = 0; j < 16; j++) {
    const q0 = Math.min(15, truncInt(f(f(f(x[xo + j]! - min) * id) + 0.5)));
    const q1 = Math.min(15, truncInt(f(f(f(x[xo + 16 + j]! - min) * id) + 0.5)));
    y[yo + 4 + j] = q0 | (q1 << 4);
  }
}

export function decodeQ4_1(y: Uint8Array, yo: number, out: Float32Array, oo: number): void {
  const d = readF16(y, yo);
  const m = readF16(y, yo + 2);
  for (let j = 0; j < 16; j++) {
    out[oo + j] = f(f((y[yo + 4 + j]! & 0x0f) * d) + m);
    out[oo + 16 + j] = f(f((y[yo + 4 + j]! >> 4) * d) + m);
  }
}

// ---------- Q5_0 / Q5_1: 4 low bits in qs like Q4, the 5th bit of weight j in bit j of qh (u32 LE) ----------
function storeQ5(y: Uint8Array, qhOffset: number, codes: Uint8Array): void {
  let qh = 0;
  for (let j = 0; j < 16; j++) {
    const q0 = codes[j]!;
    const q1 = codes[16 + j]!;
    y[qhOffset + 4 + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
    qh |= ((q0 & 0x10) >>> 4) << j;
    qh |= ((q1 & 0x10) >>> 4) << (j + 16);
  }
  y[qhOffset] = qh & 0xff;
  y[qhOffset + 1] = (qh >>> 8) & 0xff;
  y[qhOffset + 2] = (qh >>> 16) & 0xff;
  y[qhOffset + 3] = (qh >>> 24) & 0xff;
}

function loadQ5(y: Uint8Array, qhOffset: number, j: number): number {
  const qh =
    (y[qhOffset]! | (y[qhOffset + 1]! << 8) | (y[qhOffset + 2]! << 16) | (y[qhOffset + 3]! << 24)) >>> 0;
  const byte = y[qhOffset + 4 + (j & 15)]!;
  const low = j < 16 ? byte & 0x0f : byte >> 4;
  return low | (((qh >>> j) & 1) << 4);
}

const codes32 = new Uint8Array(QK);

export function encodeQ5_0(x: Float32Array, xo: number, y: Uint8Array, yo: number): void {
  const max = signedAbsMax(x, xo, QK);
  const d = f(max / -16);
  const id = d ? f(1 / d) : 0;
  writeF16(y, yo, d);
  for (let j = 0; j < QK; j++) codes32[j] = Math.min(31, truncInt(f(f(x[xo + j]! * id) + 16.5)));
  storeQ5(y, yo + 2, codes32);
}

export function decodeQ5_0(y: Uint8Array, yo: number, out: Float32Array, oo: number): void {
  const d = readF16(y, yo);
  for (let j = 0; j < QK; j++) out[oo + j] = (loadQ5(y, yo + 2, j) - 16) * d;
}

export function encodeQ5_1(x: Float32Array, xo: number, y: Uint8Array, yo: number): void {
  const [min, max] = minMax(x, xo, QK);
  const d = f(f(max - min) / 31);
  const id = d ? f(1 / d) : 0;
  writeF16(y, yo, d);
  writeF16(y, yo + 2, min);
  // (uint8_t)(x0 + 0.5f): no clamp in the reference (x0 ≤ 31 by construction).
  for (let j = 0; j < QK; j++) codes32[j] = truncInt(f(f(f(x[xo + j]! - min) * id) + 0.5)) & 0xff;
  storeQ5(y, yo + 4, codes32);
}

export function decodeQ5_1(y: Uint8Array, yo: number, out: Float32Array, oo: number): void {
  const d = readF16(y, yo);
  const m = readF16(y, yo + 2);
  for (let j = 0; j < QK; j++) out[oo + j] = f(f(loadQ5(y, yo + 4, j) * d) + m);
}

// ---------- Q8_0 ----------
export function encodeQ8_0(x: Float32Array, xo: number, y: Uint8Array, yo: number): void {
  let amax = 0;
  for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(x[xo + j]!));
  const d = f(amax / 127);
  const id = d ? f(1 / d) : 0;
  writeF16(y, yo, d);
  for (let j = 0; j < QK; j++) y[yo + 2 + j] = roundHalfAway(f(x[xo + j]! * id)) & 0xff;
}

export function decodeQ8_0(y: Uint8Array, yo: number, out: Float32Array, oo: number): void {
  const d = readF16(y, yo);
  for (let j = 0; j < QK; j++) out[oo + j] = ((y[yo + 2 + j]! << 24) >> 24) * d;
}
