/**
 * HQQ — Half-Quadratic Quantization (Badri & Shaji 2023, "Half-Quadratic Quantization of Large
 * Machine Learning Models", mobiusml.github.io/hqq_blog; reference: mobiusml/hqq
 * `hqq/core/optimize.py`, `optimize_weights_proximal_legacy`). No calibration data.
 *
 * Objective, per block of the grid (scale s fixed from the block's min/max, zero z free):
 *
 *   argmin_z  φ(W − s·(Q_z(W) − z)),   φ(x) = ‖x‖_p^p,  p < 1,   Q_z(W) = clamp(round(W/s + z), 0, 2^b − 1)
 *
 * Half-quadratic splitting adds the extra variable W_e ≈ W − Ŵ and solves
 *   argmin_{z, W_e} φ(W_e) + β/2 ‖W_e − (W − Ŵ_z)‖²
 * by alternating (blog eqs. for the sub-problems):
 *   (1) W_e ← shrink_lp(W − Ŵ_z, β)   generalized soft-thresholding:
 *           shrink_lp(x, β) = sign(x) · max(|x| − |x|^(p−1)/β, 0)
 *   (2) z   ← mean over the block of (Q_z(W) − (W − W_e)/s)
 *   (3) β   ← κ·β
 * Defaults as the reference: p = 0.7, β = 10, κ = 1.01, 20 iterations, stop as soon as the mean
 * |W − Ŵ| over the whole tensor stops decreasing.
 *
 * Conventions: the reference works with the inverse scale (Q = round(W·s⁻¹ + z)); here s is the
 * stored scale and W/s replaces W·s⁻¹, which is the same update. Its `axis=1` groups run along
 * the input columns of a row, as ptqkit's groups do. Zero points are real numbers ('float' zero
 * point grid), stored in the scale dtype as HQQ stores them in fp16.
 *
 * Where this differs from the reference (on purpose):
 *   - the scale is rounded to its storage dtype before the zeros are optimized, and the zeros are
 *     rounded before the codes are chosen, so the stored tensor dequantizes to what was evaluated;
 *   - the zeros kept are the best ones evaluated (the reference's legacy solver returns the zeros
 *     of the step after the last improvement, and its current revision no longer grows β — the
 *     paper's schedule and the reference before May 2025 do, as here).
 */
import { UsageError } from '../../errors.js';
import { type GridSpec, IntGrid, roundHalfEven } from '../../formats/grid.js';
import { fromCodes, type QuantizedTensor } from '../../formats/quantized-tensor.js';
import type { Tensor } from '../../tensor.js';
import type { QuantMethod } from './method.js';

export interface HqqOptions {
  /** p of the ‖·‖_p^p error (reference `lp_norm`). */
  lpNorm: number;
  /** Initial half-quadratic penalty β. */
  beta: number;
  /** β ← κβ after every iteration. */
  kappa: number;
  /** Maximum number of iterations. */
  iters: number;
  /** Stop when the mean |W − Ŵ| of the tensor stops decreasing. */
  earlyStop: boolean;
  /** Round the initial min/max zeros to integers; 'auto': at 4 bits only, as the reference's default config. */
  roundInitialZero: boolean | 'auto';
  /** Also compute mean |W − Ŵ|^p at every iteration, for the trace (costs one power per weight). */
  traceLp: boolean;
}

export const HQQ_DEFAULTS: HqqOptions = {
  lpNorm: 0.7,
  beta: 10,
  kappa: 1.01,
  iters: 20,
  earlyStop: true,
  roundInitialZero: 'auto',
  traceLp: false,
};

/** The reference's own checks (optimize_weights_proximal_v2): p ≤ 1, β > 0, κ > 1, at least one iteration. */
export function validateHqqOptions(o: HqqOptions): HqqOptions {
  const bad = (field: string, expected: string, got: number) => {
    throw new UsageError('invalid hqq option', { field, expected, got: String(got) });
  };
  if (!(o.lpNorm > 0 && o.lpNorm <= 1)) bad('lp-norm', '0 < p <= 1', o.lpNorm);
  if (!(o.beta > 0)) bad('beta', '> 0', o.beta);
  if (!(o.kappa > 1)) bad('kappa', '> 1', o.kappa);
  if (!(Number.isInteger(o.iters) && o.iters >= 1)) bad('hqq-iters', 'an integer >= 1', o.iters);
  return o;
}

/** HQQ always has zero points, and they are real numbers. */
export function hqqGridSpec(spec: GridSpec): GridSpec {
  return { ...spec, symmetric: false, zeroPoint: 'float' };
}

/** The generalized soft-thresholding operator for ‖·‖_p^p (p = 1: ordinary soft-thresholding). */
export function shrinkLp(x: number, beta: number, p: number): number {
  const a = Math.abs(x);
  // |x|^(p−1) is infinite at 0, so the result is 0 there, as in the reference.
  const y = p === 1 ? a - 1 / beta : a === 0 ? 0 : a - a ** (p - 1) / beta;
  return y > 0 ? Math.sign(x) * y : 0;
}

/** Row-major [rows, cols] weight cut into blocks of [blockRows, blockCols], one (s, z) each. */
export interface BlockLayout {
  rows: number;
  cols: number;
  blockRows: number;
  blockCols: number;
}

const numGroups = (l: BlockLayout) => l.cols / l.blockCols;
const numBlocks = (l: BlockLayout) => (l.rows / l.blockRows) * numGroups(l);

/** Errors of Ŵ = s·(Q_z(W) − z) against W, averaged over all weights. */
export interface HqqErrors {
  /** mean |W − Ŵ| (the reference's stopping criterion). */
  l1: number;
  /** mean |W − Ŵ|^p (the objective). */
  lp: number;
}

/**
 * One half-quadratic iteration (steps 1–2 above) for every block at once: the errors of the
 * current zeros and the updated zeros (the reference's `optimize_weights_proximal_legacy_step`).
 * `lp` is only computed when asked for (one power per weight).
 */
export function hqqStep(
  w: Float32Array,
  layout: BlockLayout,
  scales: Float32Array,
  zeros: Float64Array,
  maxq: number,
  beta: number,
  p: number,
  withLp = false,
): HqqErrors & { zeros: Float64Array } {
  const { rows, cols, blockRows, blockCols } = layout;
  const groups = numGroups(layout);
  const next = new Float64Array(zeros.length);
  // shrink_lp(e) = 0 whenever |e|^(2−p) ≤ 1/β: most residuals, and no power is needed for them.
  const threshold = p === 1 ? 1 / beta : beta ** (-1 / (2 - p));
  let l1 = 0;
  let lp = 0;
  for (let r = 0; r < rows; r++) {
    const pr = Math.floor(r / blockRows) * groups;
    for (let g = 0; g < groups; g++) {
      const i = pr + g;
      const s = scales[i]!;
      const z = zeros[i]!;
      let sumQ = 0;
      let sumTarget = 0;
      for (let c = r * cols + g * blockCols, end = c + blockCols; c < end; c++) {
        const x = w[c]!;
        let q = roundHalfEven(x / s + z);
        q = q < 0 ? 0 : Math.min(q, maxq);
        const e = x - s * (q - z);
        const a = e < 0 ? -e : e;
        l1 += a;
        if (withLp) lp += a ** p;
        // (1) W_e = shrink_lp(W − Ŵ, β); (2) accumulate Q and W − W_e for the block mean of Q − (W − W_e)/s.
        sumQ += q;
        sumTarget += a <= threshold ? x : x - shrinkLp(e, beta, p);
      }
      next[i] = next[i]! + sumQ - sumTarget / s;
    }
  }
  const perBlock = blockRows * blockCols;
  for (let i = 0; i < next.length; i++) next[i] = next[i]! / perBlock;
  return { zeros: next, l1: l1 / w.length, lp: withLp ? lp / w.length : Number.NaN };
}

export interface HqqResult {
  quantized: QuantizedTensor;
  /** Errors of the zeros evaluated at each iteration (index 0: the min/max zeros). */
  trace: HqqErrors[];
  /** Index into `trace` of the zeros that were kept. */
  best: number;
}

/**
 * Min/max scale and zero of each block, as the reference initializes them: the range is not
 * widened to contain 0 (every block keeps its full resolution); a range ≤ 1e-4 gets s⁻¹ = 1 and
 * s⁻¹ is capped at 2e4.
 */
function initialParams(w: Float32Array, layout: BlockLayout, grid: IntGrid, roundZero: boolean) {
  const { rows, cols, blockRows, blockCols } = layout;
  const groups = numGroups(layout);
  const min = new Float64Array(numBlocks(layout)).fill(Infinity);
  const max = new Float64Array(min.length).fill(-Infinity);
  for (let r = 0; r < rows; r++) {
    const pr = Math.floor(r / blockRows) * groups;
    for (let c = 0; c < cols; c++) {
      const i = pr + Math.floor(c / blockCols);
      const x = w[r * cols + c]!;
      if (x < min[i]!) min[i] = x;
      if (x > max[i]!) max[i] = x;
    }
  }
  const scales = new Float32Array(min.length);
  const zeros = new Float64Array(min.length);
  for (let i = 0; i < min.length; i++) {
    const range = max[i]! - min[i]!;
    const inverse = range <= 1e-4 ? 1 : Math.min(grid.maxq / range, 2e4);
    scales[i] = grid.roundParam(1 / inverse);
    zeros[i] = -min[i]! / scales[i]!;
    if (roundZero) zeros[i] = roundHalfEven(zeros[i]!);
  }
  return { scales, zeros };
}

/** HQQ on `grid`'s bits, granularity and scale dtype (always asymmetric, with float zeros). */
export function quantizeHqq(
  weight: Tensor,
  grid: IntGrid,
  options: Partial<HqqOptions> = {},
  tensorName?: string,
): HqqResult {
  const o = validateHqqOptions({ ...HQQ_DEFAULTS, ...options });
  grid = new IntGrid(hqqGridSpec(grid.spec));
  const [rows, cols] = weight.shape as [number, number];
  const [blockRows, blockCols] = grid.blockShape(rows, cols, tensorName);
  const layout: BlockLayout = { rows, cols, blockRows, blockCols };
  const w = weight.data;
  const roundZero = o.roundInitialZero === 'auto' ? grid.spec.bits === 4 : o.roundInitialZero;
  const { scales, zeros: z0 } = initialParams(w, layout, grid, roundZero);

  let zeros: Float64Array = z0;
  let best = 0;
  let bestZeros = zeros;
  const trace: HqqErrors[] = [];
  let beta = o.beta;
  // Evaluate z_0..z_iters; z_{i+1} comes from the step that evaluates z_i.
  for (let i = 0; i <= o.iters; i++) {
    const step = hqqStep(w, layout, scales, zeros, grid.maxq, beta, o.lpNorm, o.traceLp);
    trace.push({ l1: step.l1, lp: step.lp });
    if (step.l1 < trace[best]!.l1 || i === 0) {
      best = i;
      bestZeros = zeros;
    } else if (o.earlyStop) {
      break;
    }
    zeros = step.zeros;
    beta *= o.kappa;
  }

  // Round the zeros to their storage dtype, then choose the codes with the stored (s, z).
  const storedZeros = Float32Array.from(bestZeros, (z) => grid.roundParam(z));
  const codes = new Uint8Array(rows * cols);
  const groups = numGroups(layout);
  for (let r = 0; r < rows; r++) {
    const pr = Math.floor(r / blockRows) * groups;
    for (let c = 0; c < cols; c++) {
      const i = pr + Math.floor(c / blockCols);
      codes[r * cols + c] = grid.encode(w[r * cols + c]!, scales[i]!, storedZeros[i]!);
    }
  }
  return { quantized: fromCodes(rows, cols, grid.spec, codes, scales, storedZeros), trace, best };
}

export const hqq: QuantMethod<HqqOptions> = {
  name: 'hqq',
  description:
    'HQQ: half-quadratic lp-error optimization of float zero points, always asymmetric (no data; Badri & Shaji 2023)',
  defaults: HQQ_DEFAULTS,
  options: [
    {
      flag: '--hqq-iters <n>',
      key: 'iters',
      cliKey: 'hqqIters',
      help: 'hqq: maximum half-quadratic iterations (stops earlier when the error stops falling)',
      parse: 'integer',
    },
    {
      flag: '--lp-norm <p>',
      key: 'lpNorm',
      cliKey: 'lpNorm',
      help: 'hqq: p of the error ‖W − Ŵ‖_p^p it minimizes, 0 < p ≤ 1',
      parse: 'number',
    },
  ],
  integerOnly: true,
  gridSpec: hqqGridSpec,
  settings: (o) => ({ hqq: o }),
  outlierSelection: 'before quantization, leave-one-out error weighted by E[x_j^2] (1 without calibration)',
  quantizeWeight: (weight, grid, o, name) => quantizeHqq(weight, grid as IntGrid, o, name).quantized,
};
