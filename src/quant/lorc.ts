/**
 * LoRC — low-rank compensation of the quantization error (Yao, Wu, Li, Youn, He, "ZeroQuant-V2:
 * Exploring Post-training Quantization in LLMs from Comprehensive Study to Low Rank
 * Compensation", arXiv:2303.08302 §5). With Ŵ the quantized weight and E = W − Ŵ:
 *   E = U Σ Vᵀ (SVD),   Û = U_r Σ_r^½,   V̂ = V_r Σ_r^½,   forward with Ŵ + Û V̂ᵀ.
 * The paper stores Û, V̂ in 8 bits; here in FP16 (QuantizedTensor.lowRank, values rounded to
 * FP16 before use, so what is evaluated is what is saved), r·(rows + cols)·16 bits per layer.
 * By Eckart–Young the rank-r truncation minimizes ‖E − ÛV̂ᵀ‖_F; since Û V̂ᵀ = P_r E with P_r the
 * projector on E's top-r left singular vectors, ‖(E − ÛV̂ᵀ) X‖ ≤ ‖E X‖ for every input X: the
 * correction never increases a layer's output error (before the FP16 rounding of the factors).
 *
 * The truncated SVD is the randomized range finder with subspace (power) iterations of
 * Halko, Martinsson & Tropp (arXiv:0909.4061, Alg. 4.4 + 5.1): Y = E Ω, q rounds of
 * Q = orth(E orth(Eᵀ Q)), then the SVD of the small B = Qᵀ E from the eigen-decomposition of
 * B Bᵀ (cyclic Jacobi). With k = r + p ≥ min(rows, cols) it is the exact SVD.
 */
import { roundToF16 } from '../formats/half.js';
import type { LowRankCorrection } from '../formats/quantized-tensor.js';
import { mulberry32 } from '../random.js';

export interface LorcOptions {
  /** Extra sampled directions p beyond the rank (Halko et al. recommend 5-10). */
  oversample: number;
  /** Power iterations q: each sharpens the spectrum's decay by (σ_{k+1}/σ_r)^2 per round. */
  powerIterations: number;
  /** Seed of the Gaussian test matrix Ω. */
  seed: number;
}

export const LORC_DEFAULTS: LorcOptions = { oversample: 8, powerIterations: 6, seed: 0 };

/** Truncated SVD of the row-major [rows, cols] matrix E: E ≈ U diag(s) Vᵀ with U [rows, r], V [cols, r]. */
export function truncatedSvd(
  E: Float64Array,
  rows: number,
  cols: number,
  rank: number,
  options: LorcOptions = LORC_DEFAULTS,
): { U: Float64Array; s: Float64Array; V: Float64Array } {
  const k = Math.min(rank + options.oversample, rows, cols);
  // Ω [cols, k] standard normal (Box–Muller on the seeded generator).
  const rand = mulberry32(options.seed);
  const omega = new Float64Array(cols * k);
  for (let i = 0; i < omega.length; i++)
    omega[i] = Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
  let Q = orthonormalize(multiply(E, rows, cols, omega, k, false), rows, k);
  for (let it = 0; it < options.powerIterations; it++) {
    const Z = orthonormalize(multiply(E, rows, cols, Q, k, true), cols, k);
    Q = orthonormalize(multiply(E, rows, cols, Z, k, false), rows, k);
  }
  // Bᵀ = Eᵀ Q [cols, k]; B Bᵀ = Qᵀ E Eᵀ Q [k, k].
  const Bt = multiply(E, rows, cols, Q, k, true);
  const G = new Float64Array(k * k);
  for (let a = 0; a < k; a++)
    for (let b = a; b < k; b++) {
      let s = 0;
      for (let c = 0; c < cols; c++) s += Bt[c * k + a]! * Bt[c * k + b]!;
      G[a * k + b] = s;
      G[b * k + a] = s;
    }
  const { values, vectors } = jacobiEigen(G, k);
  const order = Array.from({ length: k }, (_, i) => i).sort((a, b) => values[b]! - values[a]!);
  const r = Math.min(rank, k);
  const U = new Float64Array(rows * r);
  const V = new Float64Array(cols * r);
  const s = new Float64Array(r);
  for (let j = 0; j < r; j++) {
    const e = order[j]!;
    s[j] = Math.sqrt(Math.max(0, values[e]!));
    // Left singular vector U_j = Q w_j; right V_j = Bᵀ w_j / σ_j.
    for (let i = 0; i < rows; i++) {
      let x = 0;
      for (let a = 0; a < k; a++) x += Q[i * k + a]! * vectors[a * k + e]!;
      U[i * r + j] = x;
    }
    if (s[j]! > 0) {
      for (let c = 0; c < cols; c++) {
        let x = 0;
        for (let a = 0; a < k; a++) x += Bt[c * k + a]! * vectors[a * k + e]!;
        V[c * r + j] = x / s[j]!;
      }
    }
  }
  return { U, s, V };
}

/**
 * LoRC factors of E = target − quantized (both row-major [rows, cols]): Û = U_r Σ^½, V̂ = V_r Σ^½,
 * rounded to FP16 (splitting Σ evenly keeps both factors in FP16's range).
 */
export function lowRankCorrection(
  target: Float32Array,
  quantized: Float32Array,
  rows: number,
  cols: number,
  rank: number,
  options: LorcOptions = LORC_DEFAULTS,
): LowRankCorrection {
  const E = new Float64Array(rows * cols);
  for (let i = 0; i < E.length; i++) E[i] = target[i]! - quantized[i]!;
  const { U, s, V } = truncatedSvd(E, rows, cols, rank, options);
  const r = s.length;
  const u = new Float32Array(rows * rank);
  const v = new Float32Array(cols * rank);
  for (let j = 0; j < r; j++) {
    const h = Math.sqrt(s[j]!);
    for (let i = 0; i < rows; i++) u[i * rank + j] = roundToF16(U[i * r + j]! * h);
    for (let c = 0; c < cols; c++) v[c * rank + j] = roundToF16(V[c * r + j]! * h);
  }
  return { rank, u, v };
}

/** E X ([rows, k]) or Eᵀ X ([cols, k]) for row-major E [rows, cols] and X [cols or rows, k]. */
function multiply(
  E: Float64Array,
  rows: number,
  cols: number,
  X: Float64Array,
  k: number,
  transposed: boolean,
): Float64Array {
  const out = new Float64Array((transposed ? cols : rows) * k);
  for (let i = 0; i < rows; i++) {
    for (let c = 0; c < cols; c++) {
      const e = E[i * cols + c]!;
      if (e === 0) continue;
      // E X: out[i] += e · X[c];  Eᵀ X: out[c] += e · X[i].
      const dst = (transposed ? c : i) * k;
      const src = (transposed ? i : c) * k;
      for (let a = 0; a < k; a++) out[dst + a]! += e * X[src + a]!;
    }
  }
  return out;
}

/**
 * Orthonormal columns of M [n, k] in place by modified Gram–Schmidt, run twice ("twice is
 * enough", Giraud et al. 2005) for orthogonality at machine precision; a column that vanishes
 * (rank-deficient E) restarts from a random vector, orthogonalized like the others.
 */
export function orthonormalize(M: Float64Array, n: number, k: number): Float64Array {
  const refill = mulberry32(k);
  for (let pass = 0; pass < 2; pass++) {
    for (let j = 0; j < k; j++) {
      for (let p = 0; p < j; p++) {
        let dot = 0;
        for (let i = 0; i < n; i++) dot += M[i * k + p]! * M[i * k + j]!;
        for (let i = 0; i < n; i++) M[i * k + j]! -= dot * M[i * k + p]!;
      }
      let norm = 0;
      for (let i = 0; i < n; i++) norm += M[i * k + j]! ** 2;
      norm = Math.sqrt(norm);
      if (norm > 1e-300) {
        for (let i = 0; i < n; i++) M[i * k + j]! /= norm;
      } else {
        // A vanished column (rank-deficient E): restart it from a random vector and redo it.
        for (let i = 0; i < n; i++) M[i * k + j] = refill() - 0.5;
        j--;
      }
    }
  }
  return M;
}

/** Eigen-decomposition of the symmetric k×k A by cyclic Jacobi rotations: A = W diag(λ) Wᵀ (columns of W). */
export function jacobiEigen(A0: Float64Array, k: number): { values: Float64Array; vectors: Float64Array } {
  const A = A0.slice();
  const W = new Float64Array(k * k);
  for (let i = 0; i < k; i++) W[i * k + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    let diag = 0;
    for (let p = 0; p < k; p++) {
      diag += A[p * k + p]! ** 2;
      for (let q = p + 1; q < k; q++) off += A[p * k + q]! ** 2;
    }
    if (off <= 1e-30 * diag || off === 0) break;
    for (let p = 0; p < k; p++) {
      for (let q = p + 1; q < k; q++) {
        const apq = A[p * k + q]!;
        if (apq === 0) continue;
        // Rotation zeroing A[p][q] (Golub & Van Loan Alg. 8.5.1).
        const theta = (A[q * k + q]! - A[p * k + p]!) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let i = 0; i < k; i++) {
          const aip = A[i * k + p]!;
          const aiq = A[i * k + q]!;
          A[i * k + p] = c * aip - s * aiq;
          A[i * k + q] = s * aip + c * aiq;
        }
        for (let i = 0; i < k; i++) {
          const api = A[p * k + i]!;
          const aqi = A[q * k + i]!;
          A[p * k + i] = c * api - s * aqi;
          A[q * k + i] = s * api + c * aqi;
        }
        for (let i = 0; i < k; i++) {
          const wip = W[i * k + p]!;
          const wiq = W[i * k + q]!;
          W[i * k + p] = c * wip - s * wiq;
          W[i * k + q] = s * wip + c * wiq;
        }
      }
    }
  }
  const values = new Float64Array(k);
  for (let i = 0; i < k; i++) values[i] = A[i * k + i]!;
  return { values, vectors: W };
}
