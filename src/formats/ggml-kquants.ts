/**
 * ggml's 256-weight super-block formats (K-quants, Kawrakow 2023, llama.cpp PR #1684) and the
 * ternary TQ1_0/TQ2_0 (llama.cpp PR #8151), as laid out in ggml-common.h, with the scalar
 * reference quantizers of ggml-quants.c re-derived step by step in float32 arithmetic
 * (see ggml-math.ts) so that the bytes equal `quantize_row_*_ref`'s.
 *
 *   Q2_K  84 B  {u8 scales[16] (4-bit scale | 4-bit min << 4), u8 qs[64], f16 d, f16 dmin}
 *               16 sub-blocks of 16: x = d·sc·q − dmin·m, q ∈ 0..3            (2.625 bpw)
 *   Q3_K 110 B  {u8 hmask[32], u8 qs[64], u8 scales[12] (6-bit), f16 d}
 *               16 sub-blocks of 16: x = d·(sc − 32)·(q − 4), q ∈ 0..7          (3.4375 bpw)
 *   Q4_K 144 B  {f16 d, f16 dmin, u8 scales[12] (6-bit scale/min pairs), u8 qs[128]}
 *               8 sub-blocks of 32: x = d·sc·q − dmin·m, q ∈ 0..15              (4.5 bpw)
 *   Q5_K 176 B  {f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]}   q ∈ 0..31  (5.5 bpw)
 *   Q6_K 210 B  {u8 ql[128], u8 qh[64], i8 scales[16], f16 d}
 *               16 sub-blocks of 16: x = d·sc·(q − 32), q ∈ 0..63               (6.5625 bpw)
 *   TQ1_0 54 B  {u8 qs[48] (5 trits/byte), u8 qh[4] (4 trits/byte), f16 d}  x = d·t, t ∈ {−1,0,1}
 *   TQ2_0 66 B  {u8 qs[64] (2 bits/trit), f16 d}
 *
 * Sub-block scales are fitted by the reference's searches: make_qkx2_quants (scale and min,
 * weighted least squares over a grid of 1/scale candidates) for Q2_K/Q4_K/Q5_K,
 * make_q3_quants (coordinate descent) for Q3_K, make_qx_quants (rmse_type 1) for Q6_K; the
 * scales themselves are then quantized against the super-block scale d (and dmin).
 */
import { f, nearestInt, readF16, roundHalfAway, writeF16 } from './ggml-math.js';

export const QK_K = 256;
const GROUP_MAX_EPS = 1e-15;

/**
 * One rounding pass of make_qx_quants / make_q3_quants at 1/scale = iscale: codes
 * l = clamp(round(iscale·x), −nmax, nmax − 1) and the x²-weighted sums Σ w·x·l, Σ w·l².
 * When `L` is given, it receives l + `offset`.
 */
function roundPass(
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  iscale: number,
  L?: Int8Array,
  lo = 0,
  offset = 0,
): { sumlx: number; suml2: number } {
  let sumlx = 0;
  let suml2 = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i]!;
    const l = Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(iscale * xi))));
    if (L) L[lo + i] = l + offset;
    const w = f(xi * xi);
    sumlx = f(sumlx + f(f(w * xi) * l));
    suml2 = f(suml2 + f(f(w * l) * l));
  }
  return { sumlx, suml2 };
}

/**
 * The value of largest magnitude (first wins, as the C loops' strict '>'); for an all-zero group
 * (max |x| < GROUP_MAX_EPS) 0, with its codes L[lo, lo + n) cleared, as make_qx_quants and
 * make_q3_quants both do before returning scale 0.
 */
function signedMaxOrClear(n: number, x: Float32Array, xo: number, L: Int8Array, lo: number): number {
  let max = 0;
  let amax = 0;
  for (let i = 0; i < n; i++) {
    const ax = Math.abs(x[xo + i]!);
    if (ax > amax) {
      amax = ax;
      max = x[xo + i]!;
    }
  }
  if (amax >= GROUP_MAX_EPS) return max;
  L.fill(0, lo, lo + n);
  return 0;
}

/**
 * make_qx_quants(n, nmax, x, L, rmse_type, qw = NULL): symmetric codes L ∈ [0, 2·nmax) and
 * scale, searching 1/scale = −(nmax + 0.1·is)/max for is ∈ [−9, 9] and keeping the
 * weighted-least-squares optimum (weights x² for rmse_type 1). Only rmse_type 1 is used (Q6_K).
 */
function makeQxQuants(
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  L: Int8Array,
  lo: number,
): number {
  const max = signedMaxOrClear(n, x, xo, L, lo);
  if (max === 0) return 0;
  const first = roundPass(n, nmax, x, xo, f(-nmax / max), L, lo, nmax);
  let scale = first.suml2 ? f(first.sumlx / first.suml2) : 0;
  let best = f(scale * first.sumlx);
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue;
    const iscale = f(-f(nmax + f(f(0.1) * is)) / max);
    const { sumlx, suml2 } = roundPass(n, nmax, x, xo, iscale);
    if (suml2 > 0 && f(sumlx * sumlx) > f(best * suml2)) {
      roundPass(n, nmax, x, xo, iscale, L, lo, nmax);
      scale = f(sumlx / suml2);
      best = f(scale * sumlx);
    }
  }
  return scale;
}

/**
 * make_q3_quants(n, nmax, x, L, do_rmse = true): start from round(−nmax·x/max), then up to 5
 * passes of coordinate descent, each code moved to x_i·Σ(w l²)/Σ(w x l) (w = x²) when that
 * raises (Σ w x l)²/Σ w l². Returns the least-squares scale; L holds codes + nmax.
 */
function makeQ3Quants(
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  L: Int8Array,
  lo: number,
): number {
  const max = signedMaxOrClear(n, x, xo, L, lo);
  if (max === 0) return 0;
  let { sumlx, suml2 } = roundPass(n, nmax, x, xo, f(-nmax / max), L, lo, 0);
  for (let itry = 0; itry < 5; itry++) {
    let changed = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i]!;
      const w = f(xi * xi);
      const li = L[lo + i]!;
      let slx = f(sumlx - f(f(w * xi) * li));
      if (slx > 0) {
        let sl2 = f(suml2 - f(f(w * li) * li));
        let newL = nearestInt(f(f(xi * sl2) / slx));
        newL = Math.max(-nmax, Math.min(nmax - 1, newL));
        if (newL !== li) {
          slx = f(slx + f(f(w * xi) * newL));
          sl2 = f(sl2 + f(f(w * newL) * newL));
          if (sl2 > 0 && f(f(slx * slx) * suml2) > f(f(sumlx * sumlx) * sl2)) {
            L[lo + i] = newL;
            sumlx = slx;
            suml2 = sl2;
            changed++;
          }
        }
      }
    }
    if (!changed) break;
  }
  for (let i = 0; i < n; i++) L[lo + i] = L[lo + i]! + nmax;
  return suml2 > 0 ? f(sumlx / suml2) : 0;
}

/**
 * make_qkx2_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, use_mad):
 * asymmetric codes L ∈ [0, nmax] with x ≈ scale·L − the_min. For each candidate
 * 1/scale = (rmin + rdelta·is + nmax)/(max − min), is = 0..nstep, the codes are rounded and
 * (scale, min) solved by weighted least squares (min clamped ≤ 0); the candidate with the
 * smallest weighted error (|·| if use_mad, else squared) wins.
 */
function makeQkx2Quants(
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  weights: Float32Array,
  L: Uint8Array,
  lo: number,
  Laux: Uint8Array,
  rmin: number,
  rdelta: number,
  nstep: number,
  useMad: boolean,
): { scale: number; min: number } {
  let min = x[xo]!;
  let max = x[xo]!;
  let sumW = weights[0]!;
  let sumX = f(sumW * x[xo]!);
  for (let i = 1; i < n; i++) {
    const xi = x[xo + i]!;
    if (xi < min) min = xi;
    if (xi > max) max = xi;
    const w = weights[i]!;
    sumW = f(sumW + w);
    sumX = f(sumX + f(w * xi));
  }
  if (min > 0) min = 0;
  if (max === min) {
    L.fill(0, lo, lo + n);
    return { scale: 0, min: -min };
  }
  let iscale = f(nmax / f(max - min));
  let scale = f(1 / iscale);
  const err = (d: number): number => (useMad ? Math.abs(d) : f(d * d));
  let bestError = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i]!;
    const l = Math.max(0, Math.min(nmax, nearestInt(f(iscale * f(xi - min)))));
    L[lo + i] = l;
    const diff = f(f(f(scale * l) + min) - xi);
    bestError = f(bestError + f(weights[i]! * err(diff)));
  }
  if (nstep < 1) return { scale, min: -min };
  for (let is = 0; is <= nstep; is++) {
    // max − min uses the current best min, which an earlier candidate may have replaced.
    iscale = f(f(f(rmin + f(rdelta * is)) + nmax) / f(max - min));
    let sumL = 0;
    let sumL2 = 0;
    let sumXL = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i]!;
      const l = Math.max(0, Math.min(nmax, nearestInt(f(iscale * f(xi - min)))));
      Laux[i] = l;
      const w = weights[i]!;
      sumL = f(sumL + f(w * l));
      sumL2 = f(sumL2 + f(f(w * l) * l));
      sumXL = f(sumXL + f(f(w * l) * xi));
    }
    const D = f(f(sumW * sumL2) - f(sumL * sumL));
    if (D > 0) {
      let thisScale = f(f(f(sumW * sumXL) - f(sumX * sumL)) / D);
      let thisMin = f(f(f(sumL2 * sumX) - f(sumL * sumXL)) / D);
      if (thisMin > 0) {
        thisMin = 0;
        thisScale = f(sumXL / sumL2);
      }
      let curError = 0;
      for (let i = 0; i < n; i++) {
        const diff = f(f(f(thisScale * Laux[i]!) + thisMin) - x[xo + i]!);
        curError = f(curError + f(weights[i]! * err(diff)));
      }
      if (curError < bestError) {
        L.set(Laux.subarray(0, n), lo);
        bestError = curError;
        scale = thisScale;
        min = thisMin;
      }
    }
  }
  return { scale, min: -min };
}

/** get_scale_min_k4: the j-th 6-bit (scale, min) pair of the 12-byte packing of Q4_K/Q5_K. */
function scaleMinK4(j: number, q: Uint8Array, o: number): [number, number] {
  if (j < 4) return [q[o + j]! & 63, q[o + j + 4]! & 63];
  return [
    (q[o + j + 4]! & 0xf) | ((q[o + j - 4]! >> 6) << 4),
    (q[o + j + 4]! >> 4) | ((q[o + j]! >> 6) << 4),
  ];
}

/** The inverse packing: scales 0..3 and mins 0..3 in the low 6 bits of bytes 0..7; 4..7 split. */
function packScaleMinK4(ls: Uint8Array, lm: Uint8Array, q: Uint8Array, o: number): void {
  for (let j = 0; j < 8; j++) {
    if (j < 4) {
      q[o + j] = ls[j]!;
      q[o + j + 4] = lm[j]!;
    } else {
      q[o + j + 4] = (ls[j]! & 0xf) | ((lm[j]! & 0xf) << 4);
      q[o + j - 4] |= (ls[j]! >> 4) << 6;
      q[o + j] |= (lm[j]! >> 4) << 6;
    }
  }
}

// Scratch buffers (single-threaded): codes of one super-block and per-sub-block fits.
const Lu = new Uint8Array(QK_K);
const Li = new Int8Array(QK_K);
const Laux = new Uint8Array(32);
const weights = new Float32Array(32);
const subScales = new Float32Array(16);
const subMins = new Float32Array(16);
const ls8 = new Uint8Array(8);
const lm8 = new Uint8Array(8);

/** Pack 2-bit codes: byte l of each 32-byte group holds codes l, l+32, l+64, l+96 (of a 128 half). */
function pack2bit(codes: ArrayLike<number>, y: Uint8Array, o: number): void {
  for (let j = 0; j < QK_K; j += 128) {
    for (let l = 0; l < 32; l++) {
      y[o + j / 4 + l] =
        codes[j + l]! | (codes[j + l + 32]! << 2) | (codes[j + l + 64]! << 4) | (codes[j + l + 96]! << 6);
    }
  }
}

/** Weight i of a 2-bit packed super-block (inverse of pack2bit). */
function unpack2bit(y: Uint8Array, o: number, i: number): number {
  const half = i >> 7;
  const r = i & 127;
  return (y[o + half * 32 + (r & 31)]! >> (2 * (r >> 5))) & 3;
}

// ---------- Q2_K ----------
export function encodeQ2_K(x: Float32Array, xo: number, y: Uint8Array, yo: number): void {
  const q4scale = 15;
  let maxScale = 0;
  let maxMin = 0;
  for (let j = 0; j < 16; j++) {
    for (let l = 0; l < 16; l++) weights[l] = Math.abs(x[xo + 16 * j + l]!);
    const r = makeQkx2Quants(16, 3, x, xo + 16 * j, weights, Lu, 16 * j, Laux, -0.5, f(0.1), 15, true);
    subScales[j] = r.scale;
    subMins[j] = r.min;
    if (r.scale > maxScale) maxScale = r.scale;
    if (subMins[j]! > maxMin) maxMin = subMins[j]!;
  }
  const sc = yo; // scales[16]
  const qs = yo + 16; // qs[64]
  if (maxScale > 0) {
    const iscale = f(q4scale / maxScale);
    for (let j = 0; j < 16; j++) y[sc + j] = nearestInt(f(iscale * subScales[j]!)) & 0xff;
    writeF16(y, yo + 80, f(maxScale / q4scale));
  } else {
    y.fill(0, sc, sc + 16);
    writeF16(y, yo + 80, 0);
  }
  if (maxMin > 0) {
    const iscale = f(q4scale / maxMin);
    for (let j = 0; j < 16; j++) y[sc + j] |= nearestInt(f(iscale * subMins[j]!)) << 4;
    writeF16(y, yo + 82, f(maxMin / q4scale));
  } else {
    writeF16(y, yo + 82, 0);
  }
  const d = readF16(y, yo + 80);
  const dmin = readF16(y, yo + 82);
  for (let j = 0; j < 16; j++) {
    const dl = f(d * (y[sc + j]! & 0xf));
    if (!dl) continue;
    const ml = f(dmin * (y[sc + j]! >> 4));
    for (let ii = 0; ii < 16; ii++) {
      const l = nearestInt(f(f(x[xo + 16 * j + ii]! + ml) / dl));
      Lu[16 * j + ii] = Math.max(0, Math.min(3, l));
    }
  }
  pack2bit(Lu, y, qs);
}

export function decodeQ2_K(y: Uint8Array, yo: number, out: Float32Array, oo: number): void {
  const d = readF16(y, yo + 80);
  const dmin = readF16(y, yo + 82);
  for (let i = 0; i < QK_K; i++) {
    const s = y[yo + (i >> 4)]!;
    const dl = f(d * (s & 0xf));
    const ml = f(dmin * (s >> 4));
    out[oo + i] = f(f(dl * unpack2bit(y, yo + 16, i)) - ml);
  }
}

// ---------- Q3_K ----------
/** The j-th 6-bit scale of Q3_K's 12-byte packing: low 4 bits in bytes 0..7, high 2 bits in bytes 8..11. */
function scaleQ3(y: Uint8Array, o: number, j: number): number {
  const low = j < 8 ? y[o + j]! & 0xf : y[o + j - 8]! >> 4;
  return (low | (((y[o + 8 + (j % 4)]! >> (2 * (j >> 2))) & 3) << 4)) - 32;
}

export function encodeQ3_K(x: Float32Array, xo: number, y: Uint8Array, yo: number): void {
  const hm = yo; // hmask[32]
  const qs = yo + 32; // qs[64]
  const sc = yo + 96; // scales[12]
  let maxScale = 0;
  let amax = 0;
  for (let j = 0; j < 16; j++) {
    subScales[j] = makeQ3Quants(16, 4, x, xo + 16 * j, Li, 16 * j);
    const s = Math.abs(subScales[j]!);
    if (s > amax) {
      amax = s;
      maxScale = subScales[j]!;
    }
  }
  y.fill(0, sc, sc + 12);
  if (maxScale) {
    const iscale = f(-32 / maxScale);
    for (let j = 0; j < 16; j++) {
      // int8_t l = nearest_int(...): the conversion wraps to int8 before the clamp.
      let l = (nearestInt(f(iscale * subScales[j]!)) << 24) >> 24;
      l = Math.max(-32, Math.min(31, l)) + 32;
      if (j < 8) y[sc + j] = l & 0xf;
      else y[sc + j - 8] |= (l & 0xf) << 4;
      l >>= 4;
      y[sc + (j % 4) + 8] |= l << (2 * (j >> 2));
    }
    writeF16(y, yo + 108, f(1 / iscale));
  } else {
    writeF16(y, yo + 108, 0);
  }
  const dAll = readF16(y, yo + 108);
  for (let j = 0; j < 16; j++) {
    const d = f(dAll * scaleQ3(y, sc, j));
    if (!d) continue;
    for (let ii = 0; ii < 16; ii++) {
      const l = nearestInt(f(x[xo + 16 * j + ii]! / d));
      Li[16 * j + ii] = Math.max(-4, Math.min(3, l)) + 4;
    }
  }
  // High bit of code i goes to hmask[i % 32], bit i / 32.
  y.fill(0, hm, hm + 32);
  for (let j = 0; j < QK_K; j++) {
    if (Li[j]! > 3) {
      y[hm + (j & 31)] |= 1 << (j >> 5);
      Li[j] = Li[j]! - 4;
    }
  }
  pack2bit(Li, y, qs);
}

export function decodeQ3_K(y: Uint8Array, yo: number, out: Float32Array, oo: number): void {
  const dAll = readF16(y, yo + 108);
  for (let i = 0; i < QK_K; i++) {
    const dl = f(dAll * scaleQ3(y, yo + 96, i >> 4));
    const high = (y[yo + (i & 31)]! >> (i >> 5)) & 1;
    out[oo + i] = f(dl * (unpack2bit(y, yo + 32, i) - (high ? 0 : 4)));
  }
}

// ---------- Q4_K / Q5_K: 8 sub-blocks of 32, weights av_x + |x| (av_x = rms of the sub-block) ----------
function fitSubBlocks32(
  x: Float32Array,
  xo: number,
  nmax: number,
  rmin: number,
  nstep: number,
  y: Uint8Array,
  yo: number,
): void {
  let maxScale = 0;
  let maxMin = 0;
  for (let j = 0; j < 8; j++) {
    let sumX2 = 0;
    for (let l = 0; l < 32; l++) sumX2 = f(sumX2 + f(x[xo + 32 * j + l]! * x[xo + 32 * j + l]!));
    const avX = f(Math.sqrt(f(sumX2 / 32)));
    for (let l = 0; l < 32; l++) weights[l] = f(avX + Math.abs(x[xo + 32 * j + l]!));
    const r = makeQkx2Quants(32, nmax, x, xo + 32 * j, weights, Lu, 32 * j, Laux, rmin, f(0.1), nstep, false);
    subScales[j] = r.scale;
    subMins[j] = r.min;
    if (r.scale > maxScale) maxScale = r.scale;
    if (subMins[j]! > maxMin) maxMin = subMins[j]!;
  }
  const invScale = maxScale > 0 ? f(63 / maxScale) : 0;
  const invMin = maxMin > 0 ? f(63 / maxMin) : 0;
  for (let j = 0; j < 8; j++) {
    ls8[j] = Math.min(63, nearestInt(f(invScale * subScales[j]!)) & 0xff);
    lm8[j] = Math.min(63, nearestInt(f(invMin * subMins[j]!)) & 0xff);
  }
  packScaleMinK4(ls8, lm8, y, yo + 4);
  writeF16(y, yo, f(maxScale / 63));
  writeF16(y, yo + 2, f(maxMin / 63));
  const d = readF16(y, yo);
  const dmin = readF16(y, yo + 2);
  for (let j = 0; j < 8; j++) {
    const [s, m] = scaleMinK4(j, y, yo + 4);
    const dl = f(d * s);
    if (!dl) continue;
    const dm = f(dmin * m);
    for (let ii = 0; ii < 32; ii++) {
      const l = nearestInt(f(f(x[xo + 32 * j + ii]! + dm) / dl));
      Lu[32 * j + ii] = Math.max(0, Math.min(nmax, l));
    }
  }
}

export function encodeQ4_K(x: Float32Array, xo: number, y: Uint8Array, yo: number): void {
  fitSubBlocks32(x, xo, 15, -1, 20, y, yo);
  // 64 weights per 32 bytes: low nibbles weights j..j+31, high nibbles j+32..j+63.
  for (let j = 0, q = yo + 16; j < QK_K; j += 64, q += 32) {
    for (let l = 0; l < 32; l++) y[q + l] = Lu[j + l]! | (Lu[j + l + 32]! << 4);
  }
}

export function decodeQ4_K(y: Uint8Array, yo: number, out: Float32Array, oo: number): void {
  const d = readF16(y, yo);
  const dmin = readF16(y, yo + 2);
  for (let i = 0; i < QK_K; i++) {
    const [s, m] = scaleMinK4(i >> 5, y, yo + 4);
    const byte = y[yo + 16 + 32 * (i >> 6) + (i & 31)]!;
    const q = (i >> 5) & 1 ? byte >> 4 : byte & 0xf;
    out[oo + i] = f(f(f(d * s) * q) - f(dmin * m));
  }
}

export function encodeQ5_K(x: Float32Array, xo: number, y: Uint8Array, yo: number): void {
  fitSubBlocks32(x, xo, 31, -0.5, 15, y, yo);
  const qh = yo + 16;
  const ql = yo + 48;
  y.fill(0, qh, qh + 32);
  // Pair p of sub-blocks (weights 64p..64p+63): low nibbles in ql[32p..], 5th bits in qh bits 2p, 2p+1.
  for (let n = 0, p = 0; n < QK_K; n += 64, p++) {
    for (let j = 0; j < 32; j++) {
      let l1 = Lu[n + j]!;
      let l2 = Lu[n + j + 32]!;
      if (l1 > 15) {
        l1 -= 16;
        y[qh + j] |= 1 << (2 * p);
      }
      if (l2 > 15) {
        l2 -= 16;
        y[qh + j] |= 2 << (2 * p);
      }
      y[ql + 32 * p + j] = l1 | (l2 << 4);
    }
  }
}

export function decodeQ5_K(y: Uint8Array, yo: number, out: Float32Array, oo: number): void {
  const d = readF16(y, yo);
  const dmin = readF16(y, yo + 2);
  for (let i = 0; i < QK_K; i++) {
    const sub = i >> 5;
    const [s, m] = scaleMinK4(sub, y, yo + 4);
    const byte = y[yo + 48 + 32 * (i >> 6) + (i & 31)]!;
    const low = sub & 1 ? byte >> 4 : byte & 0xf;
    const high = (y[yo + 16 + (i & 31)]! >> sub) & 1;
    out[oo + i] = f(f(f(d * s) * (low + 16 * high)) - f(dmin * m));
  }
}

// ---------- Q6_K ----------
export function encodeQ6_K(x: Float32Array, xo: number, y: Uint8Array, yo: number): void {
  let maxScale = 0;
  let maxAbsScale = 0;
  for (let ib = 0; ib < 16; ib++) {
    const s = makeQxQuants(16, 32, x, xo + 16 * ib, Li, 16 * ib);
    subScales[ib] = s;
    if (Math.abs(s) > maxAbsScale) {
      maxAbsScale = Math.abs(s);
      maxScale = s;
    }
  }
  if (maxAbsScale < GROUP_MAX_EPS) {
    y.fill(0, yo, yo + 210);
    return;
  }
  const ql = yo;
  const qh = yo + 128;
  const sc = yo + 192;
  const iscale = f(-128 / maxScale);
  writeF16(y, yo + 208, f(1 / iscale));
  for (let ib = 0; ib < 16; ib++) y[sc + ib] = Math.min(127, nearestInt(f(iscale * subScales[ib]!))) & 0xff;
  const d = readF16(y, yo + 208);
  for (let j = 0; j < 16; j++) {
    const dl = f(d * ((y[sc + j]! << 24) >> 24));
    if (!dl) continue;
    for (let ii = 0; ii < 16; ii++) {
      const l = nearestInt(f(x[xo + 16 * j + ii]! / dl));
      Li[16 * j + ii] = Math.max(-32, Math.min(31, l)) + 32;
    }
  }
  for (let j = 0, h = 0; j < QK_K; j += 128, h++) {
    for (let l = 0; l < 32; l++) {
      const c = (k: number) => Li[j + l + k]!;
      y[ql + 64 * h + l] = (c(0) & 0xf) | ((c(64) & 0xf) << 4);
      y[ql + 64 * h + l + 32] = (c(32) & 0xf) | ((c(96) & 0xf) << 4);
      y[qh + 32 * h + l] = (c(0) >> 4) | ((c(32) >> 4) << 2) | ((c(64) >> 4) << 4) | ((c(96) >> 4) << 6);
    }
  }
}

export function decodeQ6_K(y: Uint8Array, yo: number, out: Float32Array, oo: number): void {
  const d = readF16(y, yo + 208);
  for (let i = 0; i < QK_K; i++) {
    const h = i >> 7;
    const r = i & 127;
    const quarter = r >> 5; // 0..3: which of the four codes sharing byte position l
    const l = r & 31;
    const qlByte = y[yo + 64 * h + l + (quarter & 1) * 32]!;
    const low = quarter < 2 ? qlByte & 0xf : qlByte >> 4;
    const high = (y[yo + 128 + 32 * h + l]! >> (2 * quarter)) & 3;
    const sc = (y[yo + 192 + (i >> 4)]! << 24) >> 24;
    out[oo + i] = f(f(d * sc) * ((low | (high << 4)) - 32));
  }
}

// ---------- TQ1_0 / TQ2_0 (ternary, d = amax) ----------
function ternaryScale(x: Float32Array, xo: number, y: Uint8Array, dOffset: number): number {
  let amax = 0;
  for (let j = 0; j < QK_K; j++) amax = Math.max(amax, Math.abs(x[xo + j]!));
  writeF16(y, dOffset, amax);
  return amax ? f(1 / amax) : 0;
}

const trit = (v: number, id: number): number => roundHalfAway(f(v * id)) + 1; // −1, 0, 1 -> 0, 1, 2

/** Five (or four, then ×3) base-3 digits in a byte, stored as ceil(value·256/243) so digit k is ((q·3^k)·3) >> 8. */
const packTrits = (q: number): number => Math.floor(((q & 0xff) * 256 + 242) / 243);

export function encodeTQ1_0(x: Float32Array, xo: number, y: Uint8Array, yo: number): void {
  const id = ternaryScale(x, xo, y, yo + 52);
  let p = xo;
  // qs[0..31]: 5 trits each from weights m + 32n; qs[32..47]: from m + 16n; qh[0..3]: 4 trits.
  for (let m = 0; m < 32; m++) {
    let q = 0;
    for (let n = 0; n < 5; n++) q = q * 3 + trit(x[p + m + n * 32]!, id);
    y[yo + m] = packTrits(q);
  }
  p += 160;
  for (let m = 0; m < 16; m++) {
    let q = 0;
    for (let n = 0; n < 5; n++) q = q * 3 + trit(x[p + m + n * 16]!, id);
    y[yo + 32 + m] = packTrits(q);
  }
  p += 80;
  for (let j = 0; j < 4; j++) {
    let q = 0;
    for (let m = 0; m < 4; m++) q = q * 3 + trit(x[p + j + m * 4]!, id);
    y[yo + 48 + j] = packTrits(q * 3);
  }
}

function tritAt(byte: number, k: number): number {
  const q = (byte * 3 ** k) & 0xff;
  return ((q * 3) >> 8) - 1;
}

export function decodeTQ1_0(y: Uint8Array, yo: number, out: Float32Array, oo: number): void {
  const d = readF16(y, yo + 52);
  let o = oo;
  for (let n = 0; n < 5; n++) for (let m = 0; m < 32; m++) out[o++] = tritAt(y[yo + m]!, n) * d;
  for (let n = 0; n < 5; n++) for (let m = 0; m < 16; m++) out[o++] = tritAt(y[yo + 32 + m]!, n) * d;
  for (let n = 0; n < 4; n++) for (let j = 0; j < 4; j++) out[o++] = tritAt(y[yo + 48 + j]!, n) * d;
}

export function encodeTQ2_0(x: Float32Array, xo: number, y: Uint8Array, yo: number): void {
  const id = ternaryScale(x, xo, y, yo + 64);
  for (let j = 0; j < 64; j += 32) {
    for (let m = 0; m < 32; m++) {
      let q = 0;
      for (let n = 0; n < 4; n++) q += (trit(x[xo + 4 * j + m + n * 32]!, id) & 3) << (2 * n);
      y[yo + j + m] = q;
    }
  }
}

export function decodeTQ2_0(y: Uint8Array, yo: number, out: Float32Array, oo: number): void {
  const d = readF16(y, yo + 64);
  for (let j = 0; j < 64; j += 32) {
    for (let l = 0; l < 4; l++) {
      for (let m = 0; m < 32; m++) out[oo + 4 * j + 32 * l + m] = (((y[yo + j + m]! >> (2 * l)) & 3) - 1) * d;
    }
  }
}
