/**
 * AWQ — Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and
 * Acceleration", arXiv:2306.00978.
 *
 * Salient input channels (large mean |x|) lose less when their weights are scaled up before
 * quantization and the inputs scaled down by the same factor (§3.2): Q(W·diag(s))·diag(s)⁻¹X.
 * The per-channel scale is s = s_X^α with s_X the mean |x| of each input channel, and α is
 * found by grid search on [0, 1) (Eq. 5):
 *   α* = argmin_α ‖Q(W·diag(s)) (diag(s)⁻¹ X) − W X‖.
 * diag(s)⁻¹ is folded into the operation that produces X, so the full-precision model is
 * unchanged: the RMSNorm weight before q/k/v and before gate/up, the rows of up_proj before
 * down_proj, the rows of v_proj before o_proj (only without GQA, as the reference does).
 * Scales are normalized by sqrt(max(s)·min(s)) as in the reference `auto_scale`.
 *
 * Difference from the reference: the loss is the summed output error of the group's linear
 * layers on the captured inputs, not of the whole attention/MLP module.
 * Then each layer is quantized with RTN on the same grid (the paper's setting).
 */
import type { ComputeEngine } from '../../compute/engine.js';
import { UsageError } from '../../errors.js';
import type { Grid } from '../../formats/grid.js';
import { dequantize } from '../../formats/quantized-tensor.js';
import { type BlockLinear, blockPrefix, linearWeightName } from '../../formats/tensor-names.js';
import { LLAMA_LAYOUT, type ModelConfig } from '../../model/config.js';
import type { Tensor, TensorMap } from '../../tensor.js';
import { ALL_AT_ONCE, type LinearStats } from '../calibrate.js';
import { hessianDiagonal, quantizeWithOutliers } from '../outliers.js';
import type { LayerResult, QuantMethod } from './method.js';
import { quantizeRtn } from './rtn.js';

export interface AwqOptions {
  /** Number of α values tried: α = i / gridPoints, i = 0..gridPoints-1 (reference: 20). */
  gridPoints: number;
  /** Search a clipping range per group after scaling (reference `auto_clip`, on by default). */
  clip: boolean;
}

export const AWQ_DEFAULTS: AwqOptions = { gridPoints: 20, clip: true };

/** Clipping search as the reference: shrink max|w| by i/20 for i < 10, on 512 input rows. */
const CLIP_STEPS = 10;
const CLIP_GRID = 20;
const CLIP_TOKENS = 512;
/** q/k are not clipped: their outputs meet in the attention softmax (reference excludes them). */
const NO_CLIP: BlockLinear[] = ['self_attn.q_proj', 'self_attn.k_proj'];

/** A group of linears sharing one input, and the operation whose output scale absorbs 1/s. */
interface ScaleGroup {
  linears: BlockLinear[];
  /** A norm weight vector, or a linear whose output rows produce the group's input. */
  previous: { kind: 'norm' | 'linear'; name: string };
}

/**
 * Whether AWQ's scales fold exactly into this model: diag(s)⁻¹ goes into an RMSNorm gain w (not
 * Gemma's 1 + w, not a LayerNorm's bias, not past Gemma-2's post-norm) and into bias-free up/v
 * rows across an elementwise product (SwiGLU), not across a GELU of a plain MLP.
 */
export function awqFoldable(config: ModelConfig): boolean {
  const L = config.layout ?? LLAMA_LAYOUT;
  const vFold = config.numHeads === config.numKvHeads;
  return (
    L.norm === 'rms' &&
    L.normOffset === 0 &&
    !L.postNorms &&
    L.gatedMlp &&
    !L.mlpBias &&
    !(vFold && L.qkvBias) &&
    // MoE: the experts' gate/up share the post-attention norm with the float router, whose input
    // columns would have to take the scales too; not implemented, so refused rather than wrong.
    !L.moe
  );
}

function scaleGroups(config: ModelConfig, layer: number): ScaleGroup[] {
  if (!awqFoldable(config)) {
    throw new UsageError('awq cannot fold its scales into this architecture', {
      field: 'method',
      got: config.modelType,
      hint: 'awq needs RMSNorm gains and a bias-free dense gated MLP (Llama, Mistral, Qwen, Phi-3); use gptq, rtn, hqq or sinq',
    });
  }
  const p = blockPrefix(layer);
  const groups: ScaleGroup[] = [
    {
      linears: ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'],
      previous: { kind: 'norm', name: `${p}input_layernorm.weight` },
    },
    {
      linears: ['mlp.gate_proj', 'mlp.up_proj'],
      previous: { kind: 'norm', name: `${p}post_attention_layernorm.weight` },
    },
    { linears: ['mlp.down_proj'], previous: { kind: 'linear', name: `${p}mlp.up_proj.weight` } },
  ];
  if (config.numHeads === config.numKvHeads) {
    groups.splice(1, 0, {
      linears: ['self_attn.o_proj'],
      previous: { kind: 'linear', name: `${p}self_attn.v_proj.weight` },
    });
  }
  return groups;
}

export interface AwqReport {
  linears: BlockLinear[];
  alpha: number;
  /** The per-input-channel scales folded into the weights. */
  scales: Float64Array;
  /** Summed output error at α = 0 (plain RTN) and at the chosen α. */
  errorRtn: number;
  errorBest: number;
}

/** Search and fold AWQ scales for one block, in place in `weights`. */
export async function applyAwqScales(
  config: ModelConfig,
  weights: TensorMap,
  layer: number,
  stats: Map<BlockLinear, LinearStats>,
  grid: Grid,
  options: AwqOptions,
  engine: ComputeEngine,
): Promise<AwqReport[]> {
  const reports: AwqReport[] = [];
  for (const group of scaleGroups(config, layer)) {
    const st = stats.get(group.linears[0]!)!;
    const names = group.linears.map((l) => `${blockPrefix(layer)}${l}.weight`);
    const Ws = names.map((n) => weights.get(n)!);
    const X = st.sample;
    const m = st.sampleRows;
    const cols = st.cols;
    const reference = await Promise.all(Ws.map((w) => engine.linear(X, w.data, m, cols, w.shape[0]!)));

    let best: { alpha: number; error: number; s: Float64Array } = {
      alpha: 0,
      error: Infinity,
      s: new Float64Array(cols).fill(1),
    };
    let errorRtn = Infinity;
    for (let i = 0; i < options.gridPoints; i++) {
      const alpha = i / options.gridPoints;
      const s = awqScales(st.absMean, alpha);
      let error = 0;
      for (const [k, w] of Ws.entries()) {
        const rows = w.shape[0]!;
        const effective = dequantize(
          quantizeRtn({ shape: w.shape, data: scaleColumns(w.data, rows, cols, s, 1) }, grid),
        );
        const out = await engine.linear(X, scaleColumns(effective, rows, cols, s, -1), m, cols, rows);
        const ref = reference[k]!;
        for (let j = 0; j < out.length; j++) error += (out[j]! - ref[j]!) ** 2;
      }
      if (i === 0) errorRtn = error;
      if (error < best.error) best = { alpha, error, s };
    }

    // Fold: W ← W·diag(s) for the group, previous output ← previous output / s.
    for (const [k, w] of Ws.entries()) {
      weights.set(names[k]!, { shape: w.shape, data: scaleColumns(w.data, w.shape[0]!, cols, best.s, 1) });
    }
    const prev = weights.get(group.previous.name)!;
    const folded = prev.data.slice();
    const width = group.previous.kind === 'norm' ? 1 : prev.shape[1]!;
    for (let r = 0; r < cols; r++) for (let c = 0; c < width; c++) folded[r * width + c]! /= best.s[r]!;
    weights.set(group.previous.name, { shape: prev.shape, data: folded });
    reports.push({
      linears: group.linears,
      alpha: best.alpha,
      scales: best.s,
      errorRtn,
      errorBest: best.error,
    });
  }
  return reports;
}

/** After the scales are folded: AWQ's clipping search on every linear but q/k, in place in `weights`. */
export async function applyAwqClip(
  weights: TensorMap,
  layer: number,
  stats: Map<BlockLinear, LinearStats>,
  scaled: AwqReport[],
  grid: Grid,
  engine: ComputeEngine,
): Promise<void> {
  if (grid.spec.granularity === 'tensor') return;
  for (const group of scaled) {
    const st = stats.get(group.linears[0]!)!;
    // 512 rows spread over the whole calibration set, as inputs of the scaled layer (X / s).
    const tokens = Math.min(st.sampleRows, CLIP_TOKENS);
    const stride = Math.floor(st.sampleRows / tokens);
    const picked = new Float32Array(tokens * st.cols);
    for (let t = 0; t < tokens; t++)
      picked.set(st.sample.subarray(t * stride * st.cols, (t * stride + 1) * st.cols), t * st.cols);
    const X = scaleColumns(picked, tokens, st.cols, group.scales, -1);
    for (const linear of group.linears) {
      if (NO_CLIP.includes(linear)) continue;
      const name = `${blockPrefix(layer)}${linear}.weight`;
      weights.set(name, await clipWeights(weights.get(name)!, X, grid, engine));
    }
  }
}

/**
 * AWQ's clipping search (reference `auto_clip_layer`): for every row and group, the clip value
 * max|w| · (1 − i/20), i < 10, minimizing the mean squared partial output Σ_{j∈group} x_j w_j
 * over the sample tokens after quantization. Weights are then clamped to ±clip.
 */
async function clipWeights(w: Tensor, X: Float32Array, grid: Grid, engine: ComputeEngine): Promise<Tensor> {
  const [rows, cols] = w.shape as [number, number];
  const G = grid.spec.granularity === 'group' ? grid.spec.groupSize : cols;
  const tokens = X.length / cols;
  const groups = cols / G;
  const orgMax = new Float32Array(rows * groups);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) {
      const g = r * groups + Math.floor(c / G);
      orgMax[g] = Math.max(orgMax[g]!, Math.abs(w.data[r * cols + c]!));
    }
  const bestErr = new Float64Array(rows * groups).fill(Infinity);
  const bestMax = orgMax.slice();
  const Xg = new Float32Array(tokens * G);
  for (let g = 0; g < groups; g++) {
    for (let t = 0; t < tokens; t++) Xg.set(X.subarray(t * cols + g * G, t * cols + (g + 1) * G), t * G);
    const Wg = new Float32Array(rows * G);
    for (let r = 0; r < rows; r++) Wg.set(w.data.subarray(r * cols + g * G, r * cols + (g + 1) * G), r * G);
    const reference = await engine.linear(Xg, Wg, tokens, G, rows);
    for (let i = 0; i < CLIP_STEPS; i++) {
      const clipped = new Float32Array(rows * G);
      for (let r = 0; r < rows; r++) {
        const maxv = orgMax[r * groups + g]! * (1 - i / CLIP_GRID);
        for (let c = 0; c < G; c++) clipped[r * G + c] = Math.min(maxv, Math.max(-maxv, Wg[r * G + c]!));
      }
      const q = dequantize(quantizeRtn({ shape: [rows, G], data: clipped }, grid.withGroupSize(G)));
      const out = await engine.linear(Xg, q, tokens, G, rows);
      for (let r = 0; r < rows; r++) {
        let err = 0;
        for (let t = 0; t < tokens; t++) err += (out[t * rows + r]! - reference[t * rows + r]!) ** 2;
        if (err < bestErr[r * groups + g]!) {
          bestErr[r * groups + g] = err;
          bestMax[r * groups + g] = orgMax[r * groups + g]! * (1 - i / CLIP_GRID);
        }
      }
    }
  }
  const data = w.data.slice();
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) {
      const maxv = bestMax[r * groups + Math.floor(c / G)]!;
      data[r * cols + c] = Math.min(maxv, Math.max(-maxv, data[r * cols + c]!));
    }
  return { shape: w.shape, data };
}

/** s = s_X^α, normalized so that max(s)·min(s) = 1 (reference auto_scale). */
function awqScales(absMean: Float64Array, alpha: number): Float64Array {
  const s = new Float64Array(absMean.length);
  let max = 0;
  let min = Infinity;
  for (let j = 0; j < s.length; j++) {
    s[j] = Math.max(absMean[j]!, 1e-4) ** alpha;
    max = Math.max(max, s[j]!);
    min = Math.min(min, s[j]!);
  }
  const norm = Math.sqrt(max * min);
  for (let j = 0; j < s.length; j++) s[j]! /= norm;
  return s;
}

/** W·diag(s)^power for a row-major [rows, cols] matrix. */
export function scaleColumns(
  W: Float32Array,
  rows: number,
  cols: number,
  s: Float64Array,
  power: 1 | -1,
): Float32Array {
  const out = new Float32Array(W.length);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++)
      out[r * cols + c] = power === 1 ? W[r * cols + c]! * s[c]! : W[r * cols + c]! / s[c]!;
  }
  return out;
}

/** S⁻¹HS⁻¹: the Hessian of inputs scaled by 1/s per channel. */
function unscaleHessian(H: Float64Array, s: Float64Array): Float64Array {
  const n = s.length;
  const out = new Float64Array(H.length);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) out[i * n + j] = H[i * n + j]! / (s[i]! * s[j]!);
  return out;
}

export const awq: QuantMethod<AwqOptions> = {
  name: 'awq',
  description: 'AWQ: activation-aware channel scaling, then RTN (arXiv:2306.00978)',
  defaults: AWQ_DEFAULTS,
  options: [
    {
      flag: '--no-awq-clip',
      key: 'clip',
      cliKey: 'awqClip',
      help: 'awq: skip the clipping search after scaling',
    },
  ],
  integerOnly: false,
  settings: (o) => ({ awq: o }),
  outlierSelection: 'before quantization, leave-one-out error weighted by E[x_j^2] (1 without calibration)',
  unsupported({ config, rotate }) {
    // AWQ folds 1/s into the op before each input (v_proj, up_proj): wrong once that input is rotated.
    if (rotate === 'hadamard-online') return 'awq cannot fold its scales across an online rotation';
    if (config && !awqFoldable(config)) return `awq cannot fold its scales into ${config.modelType}`;
    return undefined;
  },
  calibration: {
    // AWQ measures block outputs on sampled input rows.
    sampleRows: 4096,
    groups: () => ALL_AT_ONCE,
    start: (o, engine) => async (job) => {
      const reports = await applyAwqScales(
        job.config,
        job.weights,
        job.layer,
        job.stats,
        job.grid,
        o,
        engine,
      );
      const scalesOf = new Map<string, AwqReport>();
      for (const r of reports) for (const l of r.linears) scalesOf.set(l, r);
      // The layer each quantized weight replaces, for its error: the scaled weights before clipping.
      const replaced = new Map(
        job.linears.map((l) => [l, job.weights.get(linearWeightName(job.layer, l))!.data] as const),
      );
      if (o.clip) await applyAwqClip(job.weights, job.layer, job.stats, reports, job.grid, engine);
      const results: LayerResult[] = [];
      for (const linear of job.linears) {
        const name = linearWeightName(job.layer, linear);
        const w = job.weights.get(name)!;
        const scaled = scalesOf.get(linear);
        // AWQ scaled W's columns by s and so the layer's inputs by 1/s.
        const st = job.stats.get(linear)!;
        const hessian = scaled ? unscaleHessian(st.hessian, scaled.scales) : st.hessian;
        const target = replaced.get(linear)!;
        const grid = job.gridOf(name);
        // AWQ quantizes with RTN (no error feedback): outlier scores weighted by H_jj = E[x_j²].
        const quantized = job.outliers
          ? quantizeWithOutliers(
              w,
              grid,
              job.outliers,
              hessianDiagonal(hessian, w.shape[1]!),
              (t) => quantizeRtn(t, grid, name),
              name,
              target,
            )
          : quantizeRtn(w, grid, name);
        results.push({ name, quantized, target, hessian, ...(scaled && { alpha: scaled.alpha }) });
      }
      return results;
    },
  },
};
