/**
 * SINQ — Sinkhorn-Normalized Quantization (Müller et al. 2025, "SINQ: Sinkhorn-Normalized
 * Quantization for Calibration-Free Low-Precision LLM Weights", arXiv:2509.22944; reference:
 * huawei-csl/SINQ `sinq/sinkhorn.py` `sinkhorn_log`, `sinq/dual_shift.py`). No calibration data.
 *
 * Dual scaling (paper §3): W ≈ s ⊙ (Q − z) ⊙ t, a scale per output row s and per input column t,
 * so that an outlier's cost can be moved between its row and its column. The scales are found by
 * minimizing the proxy target *matrix imbalance* (paper eq. for I(W)):
 *
 *   I(W) = max(σ_rows ∪ σ_cols) / min(σ_rows ∪ σ_cols),   σ = standard deviations of rows / columns
 *
 * with a Sinkhorn-Knopp-style iteration that divides the matrix by its row and column standard
 * deviations (paper Algorithm 1), keeping the scales of the most balanced iterate. Then the
 * normalized matrix W ⊘ (s ⊗ t) is quantized on the grid and s folds into the group scales.
 *
 * As the reference does it (1D tiling, the default): every group of G input columns (the whole
 * row for per-channel grids) is a tile of its own with its own Sinkhorn run, so t has one entry
 * per input column and s one per (row, group) — exactly a group scale. Per-row RTN inside a tile
 * is invariant to the row scale, so s only matters through its effect on t. Reference details
 * kept: 16 iterations in the log domain, updates of rows and columns from the same iterate,
 * standard deviations (Bessel-corrected, as torch.std) clamped to [1e-3, 1e3], each step's log
 * ratio σ/σ_min clamped to [log 0.7, log 2], log-scales clamped to [−0.3, 10], stop as soon as the
 * imbalance rises, and the kurtosis gate: a matrix with kurtosis > 5 is quantized without the
 * second scale (plain RTN).
 *
 * Deviations: the grid's own RTN quantizes the normalized tile (for asymmetric grids the range is
 * widened to contain 0 so zeros are codes; the reference does not widen; for symmetric grids the
 * grid's mirrored range, where the reference's `noz` variant uses levels −2^(b−1)..2^(b−1)−2), the
 * per-column scales are rounded to the scale dtype before the codes are chosen, and the group
 * scales are kept in the scale dtype (the reference's default `quantAux` stores them in 8 bits).
 */
import { UsageError } from '../../errors.js';
import type { IntGrid } from '../../formats/grid.js';
import { fromCodes, type QuantizedTensor } from '../../formats/quantized-tensor.js';
import type { Tensor } from '../../tensor.js';
import type { MethodOption, QuantMethod } from './method.js';

export interface SinqOptions {
  /** Sinkhorn iterations (the reference's `order`). */
  iters: number;
  /** Matrices with a larger (non-excess) kurtosis skip the dual scaling; null: never. */
  kurtosisThreshold: number | null;
}

export const SINQ_DEFAULTS: SinqOptions = { iters: 16, kurtosisThreshold: 5 };

const STD_MIN = 1e-3;
const STD_MAX = 1e3;
const STEP_MIN = Math.log(0.7);
const STEP_MAX = Math.log(2);
const LOG_SCALE_MIN = -0.3;
const LOG_SCALE_MAX = 10;

const clamp = (x: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, x));

/**
 * Standard deviations (n − 1 denominator) of the rows and columns of a [rows, cols] tile of the
 * row-major matrix `w` (row stride `stride`, first column `c0`), each entry divided by
 * rowScale[r] · colScale[c].
 */
export function rowColStd(
  w: ArrayLike<number>,
  stride: number,
  c0: number,
  rows: number,
  cols: number,
  rowScale: ArrayLike<number>,
  colScale: ArrayLike<number>,
): { rowStd: Float64Array; colStd: Float64Array } {
  const rowSum = new Float64Array(rows);
  const rowSq = new Float64Array(rows);
  const colSum = new Float64Array(cols);
  const colSq = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    const a = 1 / rowScale[r]!;
    for (let c = 0; c < cols; c++) {
      const x = (w[r * stride + c0 + c]! * a) / colScale[c]!;
      rowSum[r]! += x;
      rowSq[r]! += x * x;
      colSum[c]! += x;
      colSq[c]! += x * x;
    }
  }
  const std = (sum: number, sq: number, n: number) =>
    n > 1 ? Math.sqrt(Math.max(0, (sq - (sum * sum) / n) / (n - 1))) : 0;
  return {
    rowStd: rowSum.map((s, r) => std(s, rowSq[r]!, cols)),
    colStd: colSum.map((s, c) => std(s, colSq[c]!, rows)),
  };
}

/** Matrix imbalance max σ / min σ over all row and column standard deviations. */
export function imbalance(rowStd: Float64Array, colStd: Float64Array): number {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of [rowStd, colStd]) {
    for (const s of v) {
      if (s < lo) lo = s;
      if (s > hi) hi = s;
    }
  }
  return hi / Math.max(lo, 1e-12);
}

export interface SinkhornResult {
  /** Per-row scale s (divide row r by it). */
  rowScale: Float64Array;
  /** Per-column scale t (divide column c by it). */
  colScale: Float64Array;
  /** Imbalance of each iterate evaluated (index 0: the unscaled tile). */
  trace: number[];
}

/**
 * Algorithm 1 of the paper as the reference runs it (`sinkhorn_log`): log-domain scales updated
 * by the clamped log ratio of each row's / column's standard deviation to the smallest one of
 * the unscaled tile; the scales of the least imbalanced iterate are returned.
 */
export function sinkhorn(
  w: ArrayLike<number>,
  stride: number,
  c0: number,
  rows: number,
  cols: number,
  iters: number,
): SinkhornResult {
  let rowScale = new Float64Array(rows).fill(1);
  let colScale = new Float64Array(cols).fill(1);
  const logRow = new Float64Array(rows);
  const logCol = new Float64Array(cols);
  let best = { rowScale, colScale, imbalance: Infinity };
  const trace: number[] = [];
  let target = 0;
  for (let k = 0; k < iters; k++) {
    const { rowStd, colStd } = rowColStd(w, stride, c0, rows, cols, rowScale, colScale);
    const ib = imbalance(rowStd, colStd);
    trace.push(ib);
    if (k === 0) {
      // σ_min of the unscaled tile: every row and column is driven towards it.
      const minClamped = (v: Float64Array) =>
        v.reduce((m, s) => Math.min(m, clamp(s, STD_MIN, STD_MAX)), Infinity);
      target = Math.min(minClamped(rowStd), minClamped(colStd)) + 1e-6;
    }
    if (ib <= best.imbalance) best = { rowScale, colScale, imbalance: ib };
    else break; // the imbalance rose: the reference freezes the scales from here on
    for (let r = 0; r < rows; r++) {
      const step = clamp(Math.log(clamp(rowStd[r]!, STD_MIN, STD_MAX) / target), STEP_MIN, STEP_MAX);
      logRow[r] = clamp(logRow[r]! + step, LOG_SCALE_MIN, LOG_SCALE_MAX);
    }
    for (let c = 0; c < cols; c++) {
      const step = clamp(Math.log(clamp(colStd[c]!, STD_MIN, STD_MAX) / target), STEP_MIN, STEP_MAX);
      logCol[c] = clamp(logCol[c]! + step, LOG_SCALE_MIN, LOG_SCALE_MAX);
    }
    rowScale = logRow.map(Math.exp);
    colScale = logCol.map(Math.exp);
  }
  return { rowScale: best.rowScale, colScale: best.colScale, trace };
}

/** Kurtosis E[(x − μ)^4] / E[(x − μ)^2]^2 (3 for a Gaussian), the reference's gate statistic. */
export function kurtosis(x: ArrayLike<number>): number {
  let mean = 0;
  for (let i = 0; i < x.length; i++) mean += x[i]!;
  mean /= x.length;
  let m2 = 0;
  let m4 = 0;
  for (let i = 0; i < x.length; i++) {
    const d = (x[i]! - mean) ** 2;
    m2 += d;
    m4 += d * d;
  }
  m2 /= x.length;
  m4 /= x.length;
  return m4 / Math.max(m2 * m2, 1e-12);
}

export interface SinqResult {
  quantized: QuantizedTensor;
  /** Imbalance traces of each tile's Sinkhorn run (empty when the kurtosis gate skipped it). */
  tiles: number[][];
  kurtosis: number;
  /** True when the kurtosis gate sent the matrix to plain RTN (no column scales). */
  gated: boolean;
}

export function quantizeSinq(
  weight: Tensor,
  grid: IntGrid,
  options: Partial<SinqOptions> = {},
  tensorName?: string,
): SinqResult {
  const o = { ...SINQ_DEFAULTS, ...options };
  if (!(Number.isInteger(o.iters) && o.iters >= 1)) {
    throw new UsageError('invalid sinq option', {
      field: 'sinq-iters',
      expected: 'an integer >= 1',
      got: String(o.iters),
    });
  }
  if (grid.spec.granularity === 'tensor') {
    throw new UsageError('sinq folds its row scales into per-row scales', {
      field: tensorName,
      expected: 'a per-channel or per-group grid',
      got: 'per-tensor',
    });
  }
  const [rows, cols] = weight.shape as [number, number];
  const [, blockCols] = grid.blockShape(rows, cols, tensorName);
  const w = weight.data;
  const k = kurtosis(w);
  const gated = o.kurtosisThreshold !== null && k > o.kurtosisThreshold;
  const { colScale, tiles } = gated
    ? { colScale: undefined, tiles: [] }
    : sinkhornColumnScales(w, rows, cols, blockCols, o.iters);
  const quantized = quantizeWithColumnScales(weight, grid, colScale, tensorName);
  return { quantized, tiles, kurtosis: k, gated };
}

/**
 * One Sinkhorn run per tile of `blockCols` columns (the reference's 1D tiling): the column
 * scales t of every input column, and each tile's imbalance trace.
 */
export function sinkhornColumnScales(
  w: Float32Array,
  rows: number,
  cols: number,
  blockCols: number,
  iters: number,
): { colScale: Float64Array; tiles: number[][] } {
  const colScale = new Float64Array(cols);
  const tiles: number[][] = [];
  for (let c0 = 0; c0 < cols; c0 += blockCols) {
    const r = sinkhorn(w, cols, c0, rows, blockCols, iters);
    tiles.push(r.trace);
    colScale.set(r.colScale, c0);
  }
  return { colScale, tiles };
}

/**
 * RTN of W ⊘ t per (row, group) on the grid, t rounded to the scale dtype first so that codes are
 * chosen against the stored values (the row scale s is absorbed by each block's own scale);
 * t stored as the tensor's column scales. Without t: plain RTN of W.
 */
export function quantizeWithColumnScales(
  weight: Tensor,
  grid: IntGrid,
  colScale: ArrayLike<number> | undefined,
  tensorName?: string,
): QuantizedTensor {
  const [rows, cols] = weight.shape as [number, number];
  const [, blockCols] = grid.blockShape(rows, cols, tensorName);
  const groups = cols / blockCols;
  const w = weight.data;
  const t = new Float32Array(cols).fill(1);
  if (colScale) for (let c = 0; c < cols; c++) t[c] = grid.roundParam(colScale[c]!);
  const scales = new Float32Array(rows * groups);
  const zeros = new Float32Array(rows * groups);
  const codes = new Uint8Array(rows * cols);
  const x = new Float64Array(blockCols);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) {
      const c0 = g * blockCols;
      let min = Infinity;
      let max = -Infinity;
      for (let c = 0; c < blockCols; c++) {
        const v = w[r * cols + c0 + c]! / t[c0 + c]!;
        x[c] = v;
        if (v < min) min = v;
        if (v > max) max = v;
      }
      const { scale, zero } = grid.params(min, max);
      scales[r * groups + g] = scale;
      zeros[r * groups + g] = zero;
      for (let c = 0; c < blockCols; c++) codes[r * cols + c0 + c] = grid.encode(x[c]!, scale, zero);
    }
  }
  const quantized = fromCodes(rows, cols, grid.spec, codes, scales, zeros);
  if (colScale) quantized.columnScales = t;
  return quantized;
}

/** `--sinq-iters`, shared by SINQ and A-SINQ. */
export const SINQ_ITERS_OPTION: MethodOption = {
  flag: '--sinq-iters <n>',
  key: 'iters',
  cliKey: 'sinqIters',
  help: 'sinq: Sinkhorn iterations balancing row and column standard deviations',
  parse: 'integer',
};

/** Whether SINQ keeps column scales for this weight: the kurtosis gate sends outliers to plain RTN. */
export function keepsColumnScales(w: ArrayLike<number>, o: SinqOptions): boolean {
  return o.kurtosisThreshold === null || !(kurtosis(w) > o.kurtosisThreshold);
}

export const sinq: QuantMethod<SinqOptions> = {
  name: 'sinq',
  description: 'SINQ: Sinkhorn-balanced per-row and per-column scales, then RTN (no data; arXiv:2509.22944)',
  defaults: SINQ_DEFAULTS,
  options: [SINQ_ITERS_OPTION],
  integerOnly: true,
  settings: (o) => ({ sinq: o }),
  outlierSelection: 'before quantization, leave-one-out error weighted by E[x_j^2] (1 without calibration)',
  quantizeWeight: (weight, grid, o, name) => quantizeSinq(weight, grid as IntGrid, o, name).quantized,
  storesColumnScales: keepsColumnScales,
};
