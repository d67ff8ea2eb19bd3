/**
 * SpQR-style unstructured outliers — Dettmers, Svirschevski, Egiazarian et al., "SpQR: A
 * Sparse-Quantized Representation for Near-Lossless LLM Weight Compression", arXiv:2306.03078.
 *
 * A chosen fraction of the weights is kept in FP16 as a CSR side matrix (QuantizedTensor.outliers);
 * the rest is quantized on the method's grid, with the outliers excluded from the block statistics.
 *
 * Sensitivity (SpQR §4.1, Alg. 1 `get_leave_one_out_error`): the outlier value of a weight is how
 * much the Hessian-weighted squared error of its statistics block falls when that weight is left
 * out of the block's statistics and kept exactly,
 *   red_i = Σ_{j ∈ block} c_j (w_j − q(w_j))² − Σ_{j ≠ i} c_j (w_j − q_{−i}(w_j))²,
 * q_{−i} the grid fitted without w_i. This counts both the weight's own rounding error and the
 * range it forces on its neighbours (a group maximum has no rounding error of its own but
 * doubles everyone's step). Column weights c_j:
 *   - GPTQ: 1 / U_jj², U the upper Cholesky factor of H⁻¹ (SpQR's `H_inv_cho_diag`): the OBS
 *     saliency (w − q)² / [H⁻¹]_jj in GPTQ's sequential form;
 *   - methods without error feedback (RTN, AWQ's RTN, HQQ, SINQ) with calibration data:
 *     c_j = E[x_j²], the diagonal of the layer Hessian (the loss of a lone perturbation is
 *     δ² H_jj when nothing compensates it);
 *   - no calibration data: c_j = 1, the plain |w − q(w)|² criterion.
 *
 * SpQR keeps every weight above a threshold τ; here the user gives the fraction, so the
 * count is exactly round(fraction · rows · cols) per layer:
 *   - GPTQ (Alg. 1, inside the loop): a pre-pass scores the layer's initial weights and takes
 *     the global top-k, which fixes how many outliers each statistics group gets; then, at the
 *     first column of every group (its statistics fitted from the error-updated weights, as in
 *     Alg. 1), the group's own top-quota weights by the same score on the *updated* weights
 *     become outliers, are left out of the group's scale/zero fit (replaced by the mean of the
 *     other weights of their block, SpQR's `mean_over_non_outliers`), are kept at their updated
 *     value in FP16, and contribute no error to the feedback (their (w − fp16(w)) / U_jj ≈ 0).
 *     Per-channel and per-tensor grids have one group per row/tensor: their outliers are
 *     chosen once, before the first column, from the initial weights;
 *   - other methods: outliers are chosen before quantization from the original weights (the
 *     global top-k), replaced by their block mean in the weights the method sees (so min/max
 *     grids exclude them from the statistics exactly; HQQ's and SINQ's optimizers see a
 *     typical value instead), and the method's grid values at their positions are replaced by
 *     the FP16 originals.
 * The score uses the grid's own block rule; for min/max- and amax-scaled grids removing a
 * weight changes the block's parameters only if it is the block's minimum or maximum, so only
 * those two are re-fitted (exact); absmean-scaled formats (ternary, binary) re-fit every weight.
 *
 * Storage (honest bits, formats/quantized-tensor.ts sideBits): FP16 value + column index (I16 when
 * cols ≤ 2^15, else I32) per outlier, plus rows + 1 row pointers (I16 when nnz < 2^15, else I32).
 */
import { UsageError } from '../errors.js';
import type { Grid } from '../formats/grid.js';
import { roundToF16 } from '../formats/half.js';
import { formatInfo } from '../formats/number-formats.js';
import type { QuantizedTensor, SparseOutliers } from '../formats/quantized-tensor.js';
import { isBlockLinear } from '../formats/tensor-names.js';
import type { Tensor, TensorMap } from '../tensor.js';

/** Largest fraction `--outliers` accepts (SpQR keeps ≈ 1%; beyond 10% a sparse side matrix stops paying). */
/**
 * SpQR outliers inside the loop (arXiv:2306.03078 Alg. 1; outliers.ts GptqOutlierSelector), in
 * GPTQ's column order: `begin` sees the initial weights, `group` chooses a statistics group's
 * outliers when its parameters are fitted and returns the weights to fit them on (outliers
 * left out); flagged weights are kept at their FP16 value in `values` and feed back no error.
 */
export interface GptqOutliers {
  begin(W: Float32Array, rows: number, cols: number, grid: Grid, blockRows: number, groupCols: number): void;
  group(M: Float32Array, width: number, c0: number, c1: number, col: number): Float32Array;
  readonly mask: Uint8Array;
  readonly values: Float32Array;
}

export const MAX_OUTLIER_FRACTION = 0.1;

/** Number of outliers of a [rows, cols] weight at `fraction`. */
export function outlierCount(rows: number, cols: number, fraction: number): number {
  return Math.round(fraction * rows * cols);
}

/** Whether a block's parameters depend only on its extreme values (min/max, amax scaling). */
function extremesOnly(grid: Grid): boolean {
  return formatInfo(grid.spec.format ?? 'int').scaling !== 'absmean';
}

/**
 * Leave-one-out error reductions (SpQR `get_leave_one_out_error`) of columns [c0, c1) of the
 * row-major matrix M (`width` columns wide, `rows` rows), statistics blocks of `blockRows` rows
 * × the whole column range; column c weighted by colWeight[c − c0]. Written to scores at
 * [r · (c1 − c0) + (c − c0)].
 */
export function looReductions(
  grid: Grid,
  M: Float32Array,
  width: number,
  rows: number,
  c0: number,
  c1: number,
  blockRows: number,
  colWeight: Float64Array,
  scores: Float64Array,
): void {
  const n = c1 - c0;
  const fast = extremesOnly(grid);
  const own = new Float64Array(blockRows * n);
  for (let r0 = 0; r0 < rows; r0 += blockRows) {
    const r1 = r0 + blockRows;
    const base = grid.blockParams(M, width, r0, r1, c0, c1);
    // Element i of the block is M[idx(i)]: row r0 + ⌊i / n⌋, column c0 + i mod n.
    const idx = (i: number) => (r0 + Math.floor(i / n)) * width + c0 + (i % n);
    let total = 0;
    let sum = 0;
    let iMin = 0;
    let iMax = 0;
    for (let i = 0; i < blockRows * n; i++) {
      const w = M[idx(i)]!;
      const e = w - grid.decode(grid.encode(w, base.scale, base.zero), base.scale, base.zero);
      own[i] = colWeight[i % n]! * e * e;
      total += own[i]!;
      sum += w;
      if (w < M[idx(iMin)]!) iMin = i;
      if (w > M[idx(iMax)]!) iMax = i;
    }
    const count = blockRows * n;
    for (let i = 0; i < count; i++) {
      // Removing a weight that does not set the block's parameters only removes its own error.
      let reduction = own[i]!;
      if (count > 1 && (!fast || i === iMin || i === iMax)) {
        const k = idx(i);
        const w = M[k]!;
        // Fit without w: the mean of the others lies inside their range, so it moves no extreme.
        M[k] = Math.fround((sum - w) / (count - 1));
        const p = grid.blockParams(M, width, r0, r1, c0, c1);
        M[k] = w;
        if (p.scale !== base.scale || p.zero !== base.zero) {
          let loo = 0;
          for (let j = 0; j < count; j++) {
            if (j === i) continue;
            const x = M[idx(j)]!;
            const e = x - grid.decode(grid.encode(x, p.scale, p.zero), p.scale, p.zero);
            loo += colWeight[j % n]! * e * e;
          }
          reduction = total - loo;
        }
      }
      scores[(r0 + Math.floor(i / n)) * n + (i % n)] = reduction;
    }
  }
}

/**
 * Indices of the k largest scores (ties to the lower index), as a 0/1 mask over `scores`.
 * Scores are non-negative almost always; a weight whose removal raises the error ranks last.
 */
export function topK(scores: Float64Array, k: number): Uint8Array {
  const mask = new Uint8Array(scores.length);
  if (k <= 0) return mask;
  if (k >= scores.length) return mask.fill(1);
  const sorted = scores.slice().sort();
  const threshold = sorted[scores.length - k]!;
  let above = 0;
  for (let i = 0; i < scores.length; i++) if (scores[i]! > threshold) above++;
  let ties = k - above;
  for (let i = 0; i < scores.length; i++) {
    if (scores[i]! > threshold) mask[i] = 1;
    else if (scores[i] === threshold && ties > 0) {
      mask[i] = 1;
      ties--;
    }
  }
  return mask;
}

/**
 * Columns [c0, c1) of M with every outlier (mask over the range, [rows, c1 − c0]) replaced by
 * the mean of the non-outliers of its statistics block (SpQR's `mean_over_non_outliers`),
 * written into `dst` at the same positions.
 */
export function substituteOutliers(
  M: Float32Array,
  width: number,
  rows: number,
  c0: number,
  c1: number,
  blockRows: number,
  mask: Uint8Array,
  dst: Float32Array,
): void {
  const n = c1 - c0;
  for (let r0 = 0; r0 < rows; r0 += blockRows) {
    let sum = 0;
    let kept = 0;
    for (let r = r0; r < r0 + blockRows; r++) {
      for (let c = c0; c < c1; c++) {
        const w = M[r * width + c]!;
        dst[r * width + c] = w;
        if (!mask[r * n + c - c0]) {
          sum += w;
          kept++;
        }
      }
    }
    const mean = kept ? Math.fround(sum / kept) : 0;
    for (let r = r0; r < r0 + blockRows; r++)
      for (let c = c0; c < c1; c++) if (mask[r * n + c - c0]) dst[r * width + c] = mean;
  }
}

/** CSR of the flagged entries of a [rows, cols] matrix; `perm[c]` = original column of column c. */
export function toCsr(
  mask: Uint8Array,
  values: Float32Array,
  rows: number,
  cols: number,
  perm?: Int32Array,
): SparseOutliers {
  const rowPtr = new Int32Array(rows + 1);
  for (let r = 0; r < rows; r++) {
    let n = 0;
    for (let c = 0; c < cols; c++) n += mask[r * cols + c]!;
    rowPtr[r + 1] = rowPtr[r]! + n;
  }
  const nnz = rowPtr[rows]!;
  const colIndex = new Int32Array(nnz);
  const vals = new Float32Array(nnz);
  const entries: [number, number][] = [];
  for (let r = 0; r < rows; r++) {
    entries.length = 0;
    for (let c = 0; c < cols; c++)
      if (mask[r * cols + c]) entries.push([perm ? perm[c]! : c, values[r * cols + c]!]);
    entries.sort((a, b) => a[0] - b[0]);
    entries.forEach(([c, v], i) => {
      colIndex[rowPtr[r]! + i] = c;
      vals[rowPtr[r]! + i] = v;
    });
  }
  return { rowPtr, colIndex, values: vals };
}

/** looReductions of every group of `groupCols` columns of W [rows, cols], as one [rows, cols] array. */
function scoreGroups(
  grid: Grid,
  W: Float32Array,
  rows: number,
  cols: number,
  blockRows: number,
  groupCols: number,
  colWeight: (c0: number) => Float64Array,
): Float64Array {
  const scores = new Float64Array(rows * cols);
  const part = new Float64Array(rows * groupCols);
  for (let c0 = 0; c0 < cols; c0 += groupCols) {
    looReductions(grid, W, cols, rows, c0, c0 + groupCols, blockRows, colWeight(c0), part);
    for (let r = 0; r < rows; r++)
      for (let j = 0; j < groupCols; j++) scores[r * cols + c0 + j] = part[r * groupCols + j]!;
  }
  return scores;
}

/** Statistics blocks of a grid over a [rows, cols] weight: [blockRows, columns per group]. */
function blocksOf(grid: Grid, rows: number, cols: number, name?: string): [number, number] {
  return grid.blockShape(rows, cols, name);
}

/**
 * Outliers for methods without error feedback (RTN, AWQ's RTN, HQQ, SINQ): choose the global
 * top-k by leave-one-out reduction on `weight`, quantize the weight with them replaced by their
 * block mean, then keep them: the FP16 values of `keep` (default `weight`) at their positions.
 * `colWeight` [cols]: E[x_j²] when calibration data exists, else all ones.
 */
export function quantizeWithOutliers(
  weight: Tensor,
  grid: Grid,
  fraction: number,
  colWeight: Float64Array | undefined,
  quantize: (w: Tensor) => QuantizedTensor,
  name?: string,
  keep: Float32Array = weight.data,
): QuantizedTensor {
  const [rows, cols] = weight.shape as [number, number];
  const g = grid.forTensor(weight.data);
  const [blockRows, groupCols] = blocksOf(g, rows, cols, name);
  const c = colWeight ?? new Float64Array(cols).fill(1);
  const scores = scoreGroups(g, weight.data, rows, cols, blockRows, groupCols, (c0) => c.subarray(c0));
  const mask = topK(scores, outlierCount(rows, cols, fraction));
  const substituted = new Float32Array(rows * cols);
  const groupMask = new Uint8Array(rows * groupCols);
  for (let c0 = 0; c0 < cols; c0 += groupCols) {
    for (let r = 0; r < rows; r++)
      for (let j = 0; j < groupCols; j++) groupMask[r * groupCols + j] = mask[r * cols + c0 + j]!;
    substituteOutliers(weight.data, cols, rows, c0, c0 + groupCols, blockRows, groupMask, substituted);
  }
  const q = quantize({ shape: weight.shape, data: substituted });
  const values = Float32Array.from(keep, roundToF16);
  return { ...q, outliers: toCsr(mask, values, rows, cols) };
}

/**
 * SpQR Alg. 1 inside GPTQ (gptq.ts calls `begin` once, `group` at the first column of each
 * statistics group, and records the kept values in `values` where `mask` is set). Works in
 * GPTQ's column order; `finish` maps back through act-order's permutation.
 */
export class GptqOutlierSelector implements GptqOutliers {
  mask = new Uint8Array(0);
  values = new Float32Array(0);
  private quota = new Int32Array(0);
  private rows = 0;
  private cols = 0;
  private grid?: Grid;
  private blockRows = 1;
  private groupCols = 1;
  private scratch = new Float32Array(0);

  /** `U`: upper Cholesky factor of the permuted, dampened H⁻¹ (PreparedHessian.U). */
  constructor(
    private readonly fraction: number,
    private readonly U: Float64Array,
  ) {}

  private colWeights(col: number, n: number): Float64Array {
    const c = new Float64Array(n);
    for (let j = 0; j < n; j++) {
      const d = this.U[(col + j) * this.cols + col + j]!;
      c[j] = 1 / (d * d);
    }
    return c;
  }

  /** Pre-pass on the initial weights W [rows, cols]: the global top-k fixes each group's quota. */
  begin(W: Float32Array, rows: number, cols: number, grid: Grid, blockRows: number, groupCols: number): void {
    Object.assign(this, { rows, cols, grid, blockRows, groupCols });
    this.mask = new Uint8Array(rows * cols);
    this.values = new Float32Array(rows * cols);
    const numGroups = cols / groupCols;
    const scores = scoreGroups(grid, W, rows, cols, blockRows, groupCols, (c0) =>
      this.colWeights(c0, groupCols),
    );
    const chosen = topK(scores, outlierCount(rows, cols, this.fraction));
    this.quota = new Int32Array(numGroups);
    for (let i = 0; i < chosen.length; i++) if (chosen[i]) this.quota[Math.floor((i % cols) / groupCols)]!++;
  }

  /**
   * Columns [c0, c1) of M (`width` wide; c0 is GPTQ column `col`, the first of a group): choose
   * the group's outliers on the current weights, flag them, and return M's copy with them
   * replaced by their block mean, for the group's scale/zero fit.
   */
  group(M: Float32Array, width: number, c0: number, c1: number, col: number): Float32Array {
    const n = c1 - c0;
    const scores = new Float64Array(this.rows * n);
    looReductions(this.grid!, M, width, this.rows, c0, c1, this.blockRows, this.colWeights(col, n), scores);
    const chosen = topK(scores, this.quota[Math.floor(col / this.groupCols)]!);
    for (let r = 0; r < this.rows; r++)
      for (let j = 0; j < n; j++) if (chosen[r * n + j]) this.mask[r * this.cols + col + j] = 1;
    if (this.scratch.length < M.length) this.scratch = new Float32Array(M.length);
    substituteOutliers(M, width, this.rows, c0, c1, this.blockRows, chosen, this.scratch);
    return this.scratch;
  }

  /** The CSR side matrix in original column order. */
  finish(perm?: Int32Array): SparseOutliers {
    return toCsr(this.mask, this.values, this.rows, this.cols, perm);
  }
}

/** The diagonal of the n×n H: E[x_j²], the column weights of outlier scores (quantizeWithOutliers). */
export function hessianDiagonal(H: Float64Array, n: number): Float64Array {
  return Float64Array.from({ length: n }, (_, i) => H[i * n + i]!);
}

/**
 * Validate `outliers` (a fraction in [0, MAX_OUTLIER_FRACTION]) and `lorcRank` (a positive
 * integer below min(out, in) of every block linear) and describe them for quantization_config,
 * with the method's way of selecting outliers.
 */
export function validateSideOptions(
  options: { outliers?: number; lorcRank?: number },
  weights: TensorMap,
  outlierSelection: string,
): Record<string, unknown> {
  const settings: Record<string, unknown> = {};
  const { outliers, lorcRank } = options;
  if (outliers !== undefined) {
    if (!(Number.isFinite(outliers) && outliers >= 0 && outliers <= MAX_OUTLIER_FRACTION)) {
      throw new UsageError('outlier fraction out of range', {
        field: 'outliers',
        expected: `a fraction in [0, ${MAX_OUTLIER_FRACTION}]`,
        got: String(outliers),
      });
    }
    if (outliers > 0) {
      settings.outliers = {
        fraction: outliers,
        selection: outlierSelection,
        storage: 'CSR: FP16 values, I16/I32 column indices, I16/I32 row pointers',
      };
    }
  }
  if (lorcRank !== undefined) {
    let limit = Infinity;
    let limiting = '';
    // Every block linear of layer 0, experts' included (a MoE block has no dense MLP linears).
    for (const [name, w] of weights) {
      const module = /^model\.layers\.0\.(.+)\.weight$/.exec(name)?.[1];
      if (!module || !isBlockLinear(module)) continue;
      if (Math.min(w.shape[0]!, w.shape[1]!) < limit) {
        limit = Math.min(w.shape[0]!, w.shape[1]!);
        limiting = name;
      }
    }
    if (!(Number.isInteger(lorcRank) && lorcRank > 0 && lorcRank < limit)) {
      throw new UsageError('LoRC rank out of range', {
        field: 'lorc-rank',
        expected: `an integer from 1 to ${limit - 1} (below min(out, in) = ${limit} of ${limiting})`,
        got: String(lorcRank),
      });
    }
    settings.lorc = { rank: lorcRank, factors: 'FP16 U [out, r], V [in, r]' };
  }
  return settings;
}
