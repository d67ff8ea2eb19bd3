/**
 * A-SINQ — the calibrated variant of SINQ (Müller et al. 2025, arXiv:2509.22944, "A-SINQ":
 * SINQ combined with AWQ's activation-aware scaling; reference huawei-csl/SINQ `sinq/awq.py`,
 * `compute_awq_scale` with `sinq_fake_quant`).
 *
 * SINQ (sinq.ts) approximates W ≈ s ⊙ (Q − z) ⊙ t with Sinkhorn-balanced column scales t. A-SINQ
 * multiplies each normalized tile W ⊘ t by an activation-aware column factor a before rounding
 * and divides it back out of the column scales:
 *
 *   Ŵ = s ⊙ RTN((W ⊘ t) ⊙ a) ⊙ (t ⊘ a)
 *
 * so the stored column scales become t / a (no op is folded into another layer, unlike AWQ), and a
 * column with large inputs (large a) gets a finer effective step. The factor is AWQ's (Lin et al.
 * 2023, arXiv:2306.00978 §3.3, Eq. 5):
 *
 *   a_c = μx_c^α,  then a ← a / √(max a · min a)
 *
 * with μx_c = mean |x_c| over the calibration inputs of the layer; α runs over {0, 1/20, ..., 19/20}
 * and the a with the smallest output error on the calibration inputs is kept, measured as
 * ‖(W − Ŵ) X‖² ∝ Σ_r ΔW_r H ΔW_rᵀ with GPTQ's H = 2/N · Σ x xᵀ (the reference measures the same
 * squared error on the activations themselves).
 *
 * Deviations, measured (test/quant/asinq.test.ts, README): the SINQ reference's `compute_awq_scale`
 * divides by μw_c^(1−α) as well (AutoAWQ's weight term, `use_weightscale`); here that term is
 * optional (`weightTerm`) and off by default: it balances raw column magnitudes, which the
 * Sinkhorn scales t have already balanced, and with it A-SINQ lost to SINQ at 3 bits on stories260K
 * (8.6121 / 0.7549 against 8.4584 / 0.7238) where without it it wins (7.9914 / 0.6695). a ≡ 1
 * (SINQ itself) is one more candidate, so on its own objective A-SINQ never does worse than SINQ;
 * SINQ's kurtosis gate is kept (a gated matrix has t = 1, the factor a still applies); the search
 * is per layer on the grid the layer is quantized to (the reference: per layer, tiles of 64).
 */

import type { IntGrid } from '../../formats/grid.js';
import { dequantize, type QuantizedTensor } from '../../formats/quantized-tensor.js';
import { linearWeightName } from '../../formats/tensor-names.js';
import type { Tensor } from '../../tensor.js';
import { ALL_AT_ONCE, type LinearStats } from '../calibrate.js';
import { hessianDiagonal, quantizeWithOutliers } from '../outliers.js';
import type { LayerResult, QuantMethod } from './method.js';
import {
  kurtosis,
  quantizeWithColumnScales,
  SINQ_DEFAULTS,
  SINQ_ITERS_OPTION,
  type SinqOptions,
  sinkhornColumnScales,
} from './sinq.js';

/** The reference's grid: α = i / 20, i < 20. */
export const ASINQ_ALPHAS = Array.from({ length: 20 }, (_, i) => i / 20);

export interface AsinqResult {
  quantized: QuantizedTensor;
  /** The chosen exponent, or null when a ≡ 1 (plain SINQ) had the smallest error. */
  alpha: number | null;
  /** Σ_r ΔW_r H ΔW_rᵀ of the chosen candidate and of plain SINQ (a ≡ 1). */
  error: number;
  sinqError: number;
}

/** Σ_r Δ_r H Δ_rᵀ for Δ = W − Ŵ ([rows, cols]) and H [cols, cols]. */
export function hessianError(w: Float32Array, wq: Float32Array, H: Float64Array, rows: number, cols: number) {
  const d = new Float64Array(cols);
  let total = 0;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) d[c] = w[r * cols + c]! - wq[r * cols + c]!;
    for (let i = 0; i < cols; i++) {
      const di = d[i]!;
      if (di === 0) continue;
      let acc = 0;
      const row = i * cols;
      for (let j = 0; j < cols; j++) acc += H[row + j]! * d[j]!;
      total += di * acc;
    }
  }
  return total;
}

/**
 * AWQ's activation-aware column factor μx^α for exponent α (with the reference's weight term
 * 1 / (μw^(1−α) + 1e-4) when absMeanW is given), normalized to √(max · min) = 1.
 */
export function awqColumnFactor(absMeanX: ArrayLike<number>, alpha: number, absMeanW?: ArrayLike<number>) {
  const n = absMeanX.length;
  const a = new Float64Array(n);
  let max = 0;
  let min = Infinity;
  for (let c = 0; c < n; c++) {
    const x = Math.max(1e-4, absMeanX[c]! ** alpha);
    a[c] = absMeanW ? Math.max(1e-4, x / (absMeanW[c]! ** (1 - alpha) + 1e-4)) : x;
    max = Math.max(max, a[c]!);
    min = Math.min(min, a[c]!);
  }
  const norm = Math.sqrt(max * min);
  for (let c = 0; c < n; c++) a[c]! /= norm;
  return a;
}

export interface AsinqOptions extends SinqOptions {
  /** Divide the factor by μw^(1−α) as the SINQ reference's `use_weightscale` does (off: AWQ Eq. 5). */
  weightTerm: boolean;
}

export function quantizeAsinq(
  weight: Tensor,
  grid: IntGrid,
  stats: Pick<LinearStats, 'hessian' | 'absMean'>,
  options: Partial<AsinqOptions> = {},
  tensorName?: string,
): AsinqResult {
  const o = { ...SINQ_DEFAULTS, weightTerm: false, ...options };
  const [rows, cols] = weight.shape as [number, number];
  const [, blockCols] = grid.blockShape(rows, cols, tensorName);
  const w = weight.data;
  const gated = o.kurtosisThreshold !== null && kurtosis(w) > o.kurtosisThreshold;
  const t = gated
    ? new Float64Array(cols).fill(1)
    : sinkhornColumnScales(w, rows, cols, blockCols, o.iters).colScale;
  const absMeanW = new Float64Array(cols);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) absMeanW[c]! += Math.abs(w[r * cols + c]!) / rows;

  const errorOf = (q: QuantizedTensor) => hessianError(w, dequantize(q), stats.hessian, rows, cols);
  // a ≡ 1: SINQ exactly (no column scales at all when gated).
  const sinq = quantizeWithColumnScales(weight, grid, gated ? undefined : t, tensorName);
  const sinqError = errorOf(sinq);
  let best: AsinqResult = { quantized: sinq, alpha: null, error: sinqError, sinqError };
  for (const alpha of ASINQ_ALPHAS) {
    const a = awqColumnFactor(stats.absMean, alpha, o.weightTerm ? absMeanW : undefined);
    const q = quantizeWithColumnScales(
      weight,
      grid,
      t.map((v, c) => v / a[c]!),
      tensorName,
    );
    const error = errorOf(q);
    if (error < best.error) best = { quantized: q, alpha, error, sinqError };
  }
  return best;
}

export const asinq: QuantMethod<SinqOptions> = {
  name: 'asinq',
  description:
    'A-SINQ: SINQ with activation-aware (AWQ) column factors searched on calibration data (arXiv:2509.22944)',
  defaults: SINQ_DEFAULTS,
  options: [SINQ_ITERS_OPTION],
  integerOnly: true,
  settings: (o) => ({ sinq: o }),
  outlierSelection: 'before quantization, leave-one-out error weighted by E[x_j^2] (1 without calibration)',
  calibration: {
    // The column factors are searched on the layer's sampled inputs (|x| means).
    sampleRows: 4096,
    groups: () => ALL_AT_ONCE,
    start: (o) => async (job) => {
      const results: LayerResult[] = [];
      for (const linear of job.linears) {
        const name = linearWeightName(job.layer, linear);
        const w = job.weights.get(name)!;
        const st = job.stats.get(linear)!;
        const grid = job.gridOf(name) as IntGrid;
        const quantizeOne = (t: Tensor) => quantizeAsinq(t, grid, st, o, name).quantized;
        const quantized = job.outliers
          ? quantizeWithOutliers(
              w,
              grid,
              job.outliers,
              hessianDiagonal(st.hessian, w.shape[1]!),
              quantizeOne,
              name,
              w.data,
            )
          : quantizeOne(w);
        results.push({ name, quantized, target: w.data, hessian: st.hessian });
      }
      return results;
    },
  },
};
