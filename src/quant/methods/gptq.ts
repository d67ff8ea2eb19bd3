/**
 * GPTQ — Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization
 * for Generative Pre-trained Transformers", arXiv:2210.17323.
 *
 * Objective (per linear layer, Eq. 1): argmin_Q ‖W X − Q X‖²₂ with H = 2 X Xᵀ.
 * Columns are quantized one at a time (OBQ, Eq. 2-3); the error of column i is spread over
 * the not-yet-quantized columns through the inverse Hessian:
 *   δ_F = −(w_i − quant(w_i)) / [H⁻¹]_ii · (H⁻¹)_{:,i}.
 * Step 3 of the paper: with the upper Cholesky factor U of H⁻¹ (H⁻¹ = Uᵀ U) the updates of
 * later columns use row i of U, so H⁻¹ never needs re-inversion (Algorithm 1).
 * Step 2, lazy batch updates: inside a block of B columns updates are applied at once for the
 * block; the rest of W receives them as one matrix product Err · U[block, rest] per block.
 *
 * Details as in the reference implementation (IST-DASLab/gptq, gptq.py `fasterquant`):
 *  - dead inputs (H_ii = 0, never activated): H_ii := 1 and W[:, i] := 0;
 *  - dampening λ = damp · mean(diag H) added to the diagonal;
 *  - act-order ("desc_act"): columns in order of decreasing H_ii; groups are formed in that
 *    order, and g_idx[c] records the group of original column c;
 *  - per-channel / per-tensor grids take their parameters from W before any update; group
 *    grids at the first column of each group.
 * One deliberate difference: the reference takes a group's parameters from W, which inside a
 * lazy block still lacks the block's own updates; here the block size is a multiple of the
 * group size and parameters come from the fully updated columns, so the lazy algorithm equals
 * the unblocked Algorithm 1 exactly.
 */
import type { ComputeEngine } from '../../compute/engine.js';
import { profiled } from '../../compute/profile.js';
import { NumericError } from '../../errors.js';
import type { Grid } from '../../formats/grid.js';
import { roundToF16 } from '../../formats/half.js';
import { fromCodes, type QuantizedTensor } from '../../formats/quantized-tensor.js';
import { linearWeightName } from '../../formats/tensor-names.js';
import type { Tensor } from '../../tensor.js';
import { ALL_AT_ONCE, TRUE_SEQUENTIAL } from '../calibrate.js';
import { inverseCholeskyUpperInPlace, NotPositiveDefiniteError } from '../linalg.js';
import { GptqOutlierSelector, type GptqOutliers } from '../outliers.js';
import type { LayerResult, QuantMethod } from './method.js';

export interface GptqOptions {
  /** Columns per lazy batch (paper: B = 128). */
  blockSize: number;
  /** Dampening as a fraction of the mean diagonal of H (paper: 1%). */
  damp: number;
  /** Quantize columns in order of decreasing H_ii. */
  actOrder: boolean;
}

export const GPTQ_DEFAULTS: GptqOptions = { blockSize: 128, damp: 0.01, actOrder: false };

/** What GPTQ derives from a layer's Hessian alone; layers fed by the same inputs share it. */
export interface PreparedHessian {
  cols: number;
  /** Inputs never activated (H_ii = 0): their weights are zeroed. */
  dead: Uint8Array;
  /** Act-order column order (decreasing H_ii), or undefined for the natural order. */
  perm?: Int32Array;
  /** Upper Cholesky factor of the dampened, permuted H⁻¹. */
  U: Float64Array;
  /** The dampening actually used: options.damp, or more when H + λI was not positive definite. */
  damp: number;
}

/**
 * Largest dampening tried before giving up. GPTQModel raises damp_percent additively by
 * damp_auto_increment (0.0025) while it stays below 1; here it grows ×10 per retry (at most
 * three factorizations from the default 0.01) up to λ = mean(diag H).
 */
const MAX_DAMP = 1;

/**
 * Dead-input handling, act-order permutation, dampening and H⁻¹ = Uᵀ U (Algorithm 1, line 2).
 * `hessian` is left as it is (the layer error reads it); U is the only n×n array allocated, and
 * every step writes into it (the reference's in-place torch ops), so a layer's Hessian costs
 * two n×n float64 arrays at most: 508 MB for TinyLlama's down_proj instead of six.
 */
export async function prepareHessian(
  hessian: Float64Array,
  cols: number,
  options: GptqOptions,
  engine: ComputeEngine,
  /** Names the layer(s) in warnings and errors. */
  label?: string,
): Promise<PreparedHessian> {
  // NaN/Inf activations (a model overflowing on the calibration text) reach H; no dampening helps.
  const bad = hessian.findIndex((x) => !Number.isFinite(x));
  if (bad >= 0) {
    throw new NumericError('Hessian of the calibration inputs is not finite', {
      field: label,
      got: `${hessian[bad]} at [${Math.floor(bad / cols)}, ${bad % cols}]`,
      hint: 'the forward pass overflows on the calibration text: check the model in fp32 with ptq eval',
    });
  }
  // The diagonal with dead inputs (H_ii = 0) set to 1: all the rest reads of H before the copy.
  const dead = new Uint8Array(cols);
  const diagonal = new Float64Array(cols);
  for (let c = 0; c < cols; c++) {
    const d = hessian[c * cols + c]!;
    dead[c] = d === 0 ? 1 : 0;
    diagonal[c] = d === 0 ? 1 : d;
  }
  const perm = options.actOrder ? orderByDecreasingDiagonal(diagonal) : undefined;
  let meanDiag = 0;
  for (let c = 0; c < cols; c++) meanDiag += diagonal[perm ? perm[c]! : c]!;
  meanDiag /= cols;
  const A = new Float64Array(cols * cols);
  // Degenerate Hessians (rank-deficient inputs, float32 Gram rounding making H slightly
  // indefinite) fail the Cholesky factorization: escalate λ = damp · mean(diag H) with a warning.
  for (let damp = options.damp; ; damp *= 10) {
    // A = P H P + λI (dead diagonal entries 1), rebuilt from `hessian` on each try.
    permuteSymmetricInto(A, hessian, cols, perm);
    for (let c = 0; c < cols; c++) A[c * cols + c] = diagonal[perm ? perm[c]! : c]! + damp * meanDiag;
    try {
      const U = await inverseCholeskyUpperInPlace(A, cols, engine);
      if (damp !== options.damp) {
        process.emitWarning(
          `${label ?? 'GPTQ'}: Hessian not positive definite with damp ${options.damp}; used damp ${damp}`,
          {
            type: 'PtqWarning',
            code: 'PTQ_GPTQ_DAMPING',
          },
        );
      }
      return { cols, dead, perm, U, damp };
    } catch (e) {
      if (!(e instanceof NotPositiveDefiniteError)) throw e;
      if (damp * 10 > MAX_DAMP * (1 + 1e-9)) {
        throw new NumericError('Hessian not positive definite at any dampening', {
          field: label,
          expected: `a positive definite H + λI for damp up to ${MAX_DAMP}`,
          got: e.message,
          hint: 'the calibration inputs are degenerate: use more or more varied calibration text',
        });
      }
    }
  }
}

/**
 * Quantize `weight` [rows, cols] given its prepared Hessian (H = 2/N · Σ x xᵀ over the
 * calibration inputs of this layer).
 */
export const gptqQuantize = profiled('gptq', quantizeColumns);

async function quantizeColumns(
  weight: Tensor,
  prepared: PreparedHessian,
  grid: Grid,
  options: GptqOptions,
  engine: ComputeEngine,
  tensorName?: string,
  outliers?: GptqOutliers,
): Promise<QuantizedTensor> {
  const [rows, cols] = weight.shape as [number, number];
  // Per-tensor parameters (NVFP4's global scale) come from the weight before any update.
  grid = grid.forTensor(weight.data);
  const [blockRows, groupCols] = grid.blockShape(rows, cols, tensorName);
  const numGroups = cols / groupCols;
  const grouped = grid.spec.granularity === 'group';
  const { perm, U, dead } = prepared;

  const Wp = initialWeights(weight.data, rows, cols, dead, perm);

  const codes = new Uint8Array(rows * cols);
  const scales = new Float32Array((rows / blockRows) * numGroups);
  const zeros = new Float32Array(scales.length);
  outliers?.begin(Wp, rows, cols, grid, blockRows, grouped ? groupCols : cols);
  if (!grouped) {
    const fitOn = outliers ? outliers.group(Wp, cols, 0, cols, 0) : Wp;
    setParams(grid, fitOn, rows, cols, 0, cols, blockRows, scales, zeros, 1, 0);
  }

  const B = grouped
    ? Math.max(groupCols, Math.floor(options.blockSize / groupCols) * groupCols)
    : options.blockSize;
  const W1 = new Float32Array(rows * Math.min(B, cols));
  const Err1 = new Float32Array(W1.length);
  for (let i1 = 0; i1 < cols; i1 += B) {
    const i2 = Math.min(i1 + B, cols);
    const count = i2 - i1;
    const block: LazyBlock = {
      Wp,
      W1,
      Err1,
      rows,
      count,
      i1,
      cols,
      U,
      codes,
      scales,
      zeros,
      blockRows,
      numGroups,
      groupCols: grouped ? groupCols : 0,
      outliers,
    };
    quantizeLazyBlock(grid, block);

    if (i2 < cols) {
      // Lazy batch update: W[:, i2:] -= Err1 · U[i1:i2, i2:], as one product on the engine.
      const rest = cols - i2;
      const Ut = transposedRows(U, cols, i1, i2);
      const delta = await engine.linear(
        count === W1.length / rows ? Err1 : Err1.subarray(0, rows * count),
        Ut,
        rows,
        count,
        rest,
      );
      subtractColumns(Wp, rows, cols, i2, delta);
    }
  }

  if (!perm) return fromCodes(rows, cols, grid.spec, codes, scales, zeros);
  // Back to the original column order; with groups, g_idx remembers each column's group.
  const groupIndex = grouped ? new Int32Array(cols) : undefined;
  if (groupIndex) for (let c = 0; c < cols; c++) groupIndex[perm[c]!] = Math.floor(c / groupCols);
  return fromCodes(
    rows,
    cols,
    grid.spec,
    unpermuteColumns(codes, rows, cols, perm),
    scales,
    zeros,
    groupIndex,
  );
}

// Loops live in synchronous functions: in an async function V8 drops the loop's optimized
// (on-stack-replaced) code at the next await; measured 1.4-1.6x slower here.

/** W with dead inputs' columns zeroed, in act-order column order when permuted. */
function initialWeights(W0: Float32Array, rows: number, cols: number, dead: Uint8Array, perm?: Int32Array) {
  const W = W0.slice();
  for (let c = 0; c < cols; c++) if (dead[c]) for (let r = 0; r < rows; r++) W[r * cols + c] = 0;
  return perm ? permuteColumns(W, rows, cols, perm) : W;
}

/** U[i1:i2, i2:]ᵀ as float32, [cols − i2, i2 − i1]: the lazy update's weight for engine.linear. */
function transposedRows(U: Float64Array, cols: number, i1: number, i2: number): Float32Array {
  const count = i2 - i1;
  const rest = cols - i2;
  const Ut = new Float32Array(rest * count);
  for (let k = 0; k < count; k++) {
    const uRow = (i1 + k) * cols + i2;
    for (let j = 0; j < rest; j++) Ut[j * count + k] = U[uRow + j]!;
  }
  return Ut;
}

/** W[:, i2:] −= delta ([rows, cols − i2]). */
function subtractColumns(W: Float32Array, rows: number, cols: number, i2: number, delta: Float32Array): void {
  const rest = cols - i2;
  for (let r = 0; r < rows; r++) {
    const row = r * cols + i2;
    const d = r * rest;
    for (let j = 0; j < rest; j++) W[row + j]! -= delta[d + j]!;
  }
}

function unpermuteColumns(codes: Uint8Array, rows: number, cols: number, perm: Int32Array): Uint8Array {
  const original = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) original[r * cols + perm[c]!] = codes[r * cols + c]!;
  return original;
}

/** One lazy batch of columns [i1, i1 + count) of W [rows, cols], copied to W1 [rows, count]. */
interface LazyBlock {
  Wp: Float32Array;
  W1: Float32Array;
  /** Scaled errors (w − q) / U_ii of the block's columns, [rows, count]. */
  Err1: Float32Array;
  rows: number;
  count: number;
  i1: number;
  cols: number;
  U: Float64Array;
  codes: Uint8Array;
  scales: Float32Array;
  zeros: Float32Array;
  blockRows: number;
  numGroups: number;
  /** Columns per group, 0 when the grid's parameters were fixed before the first column. */
  groupCols: number;
  outliers?: GptqOutliers;
}

/**
 * Algorithm 1, lines 4-9, inside one lazy batch: quantize column i, record its scaled error,
 * and update the block's later columns W1[:, i+1:] −= err · U[i, i+1:]. Kept synchronous and
 * free of allocation: it is GPTQ's innermost loop (rows · B²/2 multiply-adds per batch).
 */
function quantizeLazyBlock(grid: Grid, b: LazyBlock): void {
  const { Wp, W1, Err1, rows, count, i1, cols, U, codes, scales, zeros, blockRows, numGroups, groupCols } = b;
  const mask = b.outliers?.mask;
  for (let r = 0; r < rows; r++) W1.set(Wp.subarray(r * cols + i1, r * cols + i1 + count), r * count);
  // This column's errors at full precision (Err1 keeps them as float32 for the engine).
  const E = new Float64Array(rows);
  for (let i = 0; i < count; i++) {
    const col = i1 + i;
    if (groupCols && col % groupCols === 0) {
      const fitOn = b.outliers ? b.outliers.group(W1, count, i, i + groupCols, col) : W1;
      setParams(grid, fitOn, rows, count, i, i + groupCols, 1, scales, zeros, numGroups, col / groupCols);
    }
    const g = groupCols ? (col / groupCols) | 0 : 0;
    const uRow = col * cols + i1;
    const d = U[uRow + i]!;
    for (let r = 0; r < rows; r++) {
      const p = ((r / blockRows) | 0) * numGroups + g;
      const wRow = r * count;
      const w = W1[wRow + i]!;
      const scale = scales[p]!;
      const zero = zeros[p]!;
      const q = grid.encode(w, scale, zero);
      codes[r * cols + col] = q;
      // An outlier keeps its current value in FP16 and feeds back only that rounding (SpQR Alg. 1).
      const kept = mask?.[r * cols + col] ? roundToF16(w) : undefined;
      if (kept !== undefined) b.outliers!.values[r * cols + col] = kept;
      const err = (w - (kept ?? grid.decode(q, scale, zero))) / d;
      Err1[wRow + i] = err;
      E[r] = err;
    }
    // W1[r, i+1:] −= err_r · U[col, i+1:]: rows are independent, so four at a time share each
    // load of U (the same operations per element, 1.8x faster measured).
    let r = 0;
    for (; r + 4 <= rows; r += 4) {
      const w0 = r * count;
      const w1 = w0 + count;
      const w2 = w1 + count;
      const w3 = w2 + count;
      const e0 = E[r]!;
      const e1 = E[r + 1]!;
      const e2 = E[r + 2]!;
      const e3 = E[r + 3]!;
      for (let j = i + 1; j < count; j++) {
        const u = U[uRow + j]!;
        W1[w0 + j]! -= e0 * u;
        W1[w1 + j]! -= e1 * u;
        W1[w2 + j]! -= e2 * u;
        W1[w3 + j]! -= e3 * u;
      }
    }
    for (; r < rows; r++) {
      const wRow = r * count;
      const err = E[r]!;
      for (let j = i + 1; j < count; j++) W1[wRow + j]! -= err * U[uRow + j]!;
    }
  }
}

/**
 * Grid parameters from the values of columns [c0, c1) of a row-major [rows, width] matrix,
 * one pair per `blockRows` rows, written at scales[(r / blockRows) * stride + group].
 */
function setParams(
  grid: Grid,
  M: Float32Array,
  rows: number,
  width: number,
  c0: number,
  c1: number,
  blockRows: number,
  scales: Float32Array,
  zeros: Float32Array,
  stride: number,
  group: number,
): void {
  for (let r0 = 0; r0 < rows; r0 += blockRows) {
    const { scale, zero } = grid.blockParams(M, width, r0, r0 + blockRows, c0, c1);
    scales[(r0 / blockRows) * stride + group] = scale;
    zeros[(r0 / blockRows) * stride + group] = zero;
  }
}

/** Column order by decreasing H_ii (stable, like torch.argsort(descending=True) on distinct values). */
function orderByDecreasingDiagonal(diagonal: Float64Array): Int32Array {
  const idx = Array.from({ length: diagonal.length }, (_, i) => i);
  idx.sort((a, b) => diagonal[b]! - diagonal[a]! || a - b);
  return Int32Array.from(idx);
}

function permuteColumns(W: Float32Array, rows: number, cols: number, perm: Int32Array): Float32Array {
  const out = new Float32Array(W.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[r * cols + c] = W[r * cols + perm[c]!]!;
  return out;
}

/** out = P H P (out[i, j] = H[perm[i], perm[j]]), or a copy of H without a permutation. */
function permuteSymmetricInto(out: Float64Array, H: Float64Array, n: number, perm?: Int32Array): void {
  if (!perm) {
    out.set(H);
    return;
  }
  for (let i = 0; i < n; i++) {
    const row = perm[i]! * n;
    for (let j = 0; j < n; j++) out[i * n + j] = H[row + perm[j]!]!;
  }
}

/** GPTQ's options with the order of its groups: q/k/v, o, gate/up, down one after another (true sequential). */
export interface GptqMethodOptions extends GptqOptions {
  trueSequential: boolean;
}

export const gptq: QuantMethod<GptqMethodOptions> = {
  name: 'gptq',
  description: 'GPTQ: Hessian-aware column-wise rounding with error feedback (arXiv:2210.17323)',
  defaults: { ...GPTQ_DEFAULTS, trueSequential: true },
  options: [
    {
      flag: '--act-order',
      key: 'actOrder',
      cliKey: 'actOrder',
      help: 'gptq: quantize columns by decreasing Hessian diagonal (stores g_idx)',
    },
    {
      flag: '--damp <x>',
      key: 'damp',
      cliKey: 'damp',
      help: 'gptq: dampening, fraction of the mean Hessian diagonal',
      parse: 'number',
    },
    {
      flag: '--gptq-block-size <n>',
      key: 'blockSize',
      cliKey: 'gptqBlockSize',
      help: 'gptq: columns per lazy batch',
      parse: 'integer',
    },
    {
      flag: '--no-true-sequential',
      key: 'trueSequential',
      cliKey: 'trueSequential',
      help: 'gptq: quantize all linears of a block from the same inputs',
    },
  ],
  integerOnly: false,
  settings: ({ trueSequential, ...o }) => ({ gptq: o, true_sequential: trueSequential }),
  outlierSelection: 'inside GPTQ per statistics group (SpQR Alg. 1), leave-one-out error / U_jj^2',
  calibration: {
    sampleRows: 0,
    groups: (o) => (o.trueSequential ? TRUE_SEQUENTIAL : ALL_AT_ONCE),
    start(o, engine) {
      const { trueSequential: _, ...options } = o;
      return async (job) => {
        // q/k/v (and gate/up) share their inputs, hence one Hessian and one factorization. Only
        // the last one is kept, and only during this job: linears sharing a Hessian come one after
        // another, and a factor (intermediate² × 8 bytes for down_proj) must not outlive its
        // group into the layer errors or the next group (a repeat would refactor, same result).
        let last: { H: Float64Array; prepared: Promise<PreparedHessian> } | undefined;
        const prepare = (H: Float64Array, cols: number, label: string) => {
          if (last?.H !== H) last = { H, prepared: prepareHessian(H, cols, options, engine, label) };
          return last.prepared;
        };
        const results: LayerResult[] = [];
        for (const linear of job.linears) {
          const name = linearWeightName(job.layer, linear);
          const w = job.weights.get(name)!;
          const st = job.stats.get(linear)!;
          const prep = await prepare(st.hessian, st.cols, name);
          // SpQR Alg. 1: outliers chosen inside GPTQ's loop, weighted by 1/U_jj² of H⁻¹.
          const selector = job.outliers ? new GptqOutlierSelector(job.outliers, prep.U) : undefined;
          let q = await gptqQuantize(w, prep, job.gridOf(name), options, engine, name, selector);
          if (selector) q = { ...q, outliers: selector.finish(prep.perm) };
          results.push({ name, quantized: q, target: w.data, hessian: st.hessian });
        }
        return results;
      };
    },
  },
  async quantizeWithHessian(weight, grid, hessian, o, engine, name, paddedColumns) {
    const { trueSequential: _, ...options } = o;
    // Act-order permutes A's columns by a Gather: padded columns would index past the input.
    if (paddedColumns) options.actOrder = false;
    const prepared = await prepareHessian(hessian, weight.shape[1]!, options, engine, name);
    return gptqQuantize(weight, prepared, grid, options, engine, name);
  },
};
