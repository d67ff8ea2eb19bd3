/**
 * SmoothQuant — Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization
 * for Large Language Models", arXiv:2211.10438.
 *
 * Activations have a few outlier input channels, weights have none, so a W8A8 linear loses
 * most of its accuracy in the activations (§3). SmoothQuant migrates the difficulty offline
 * with a per-input-channel scale s (§4, Eq. 3):
 *     Y = (X diag(s)⁻¹) · (diag(s) Wᵀ) = X̂ Ŵᵀ,
 * chosen to balance the two maxima of each channel j (Eq. 4, migration strength α):
 *     s_j = max|X_j|^α / max|W_j|^(1−α),
 * with max|X_j| over calibration tokens and max|W_j| over the rows of every linear reading X
 * (q/k/v share one s, as do gate/up: the reference `smooth_ln_fcs` takes the max over the
 * concatenated weights). diag(s)⁻¹ is folded into the operation that produces X, so the
 * full-precision model computes the same function and no runtime op is added:
 *   - the RMSNorm gain before q/k/v (input_layernorm) and before gate/up
 *     (post_attention_layernorm): γ ← γ / s, W ← W diag(s) (the paper's Llama setting,
 *     reference `smooth_lm`);
 *   - optionally (`groups: 'all'`, not in the paper) two more exact folds: o_proj's input is
 *     softmax(·)·V, linear in each value channel, so v_proj's output row c ← row / s_c and
 *     o_proj's columns reading channel c ← column · s_c (with GQA, the query heads sharing a
 *     kv head share its s: max|X| and max|W| taken over their channels); down_proj's input is
 *     silu(gate) ⊙ up, linear in up, so up_proj's row j ← row / s_j and down_proj's column
 *     j ← column · s_j (AWQ folds the same two places, arXiv:2306.00978).
 * Then weights are quantized per output channel and activations per token or per tensor
 * (model/input-ops.ts) — the W8A8 of §5 (O1: per-token dynamic, O3: per-tensor static).
 */
import type { ComputeEngine } from '../compute/engine.js';
import { ConfigError, UsageError } from '../errors.js';
import { type BlockLinear, biasOf, blockPrefix, linearWeightName } from '../formats/tensor-names.js';
import { refuseMoe } from '../model/architecture.js';
import { LLAMA_LAYOUT, type ModelConfig } from '../model/config.js';
import { Decoder } from '../model/decoder.js';
import type { ActivationQuantSpec } from '../model/input-ops.js';
import type { TensorMap } from '../tensor.js';

export interface SmoothQuantOptions {
  /** Migration strength α in [0, 1] (Eq. 4; the paper's 0.5 for most models, 0.75–0.85 for GLM/BLOOM). */
  alpha: number;
  /**
   * 'norms': q/k/v and gate/up, folded into the RMSNorm gains (the paper's Llama setting);
   * 'all': also o_proj (folded into v_proj) and down_proj (folded into up_proj).
   */
  groups: 'norms' | 'all';
}

export const SMOOTHQUANT_DEFAULTS: SmoothQuantOptions = { alpha: 0.5, groups: 'norms' };

/** Calibration rows per forward pass when gathering activation maxima (bounds attention memory). */
const ROWS_PER_PASS = 4096;

/** max|x_j| per input channel of every block linear, keyed by weight name. */
export type ActivationAbsMax = Map<string, Float32Array>;

/**
 * max|X_j| per input channel of every block linear over the calibration windows (the
 * reference `get_act_scales`: a forward hook keeping the running channel maximum), from the
 * model `decoder` runs; windows are row-major [n, seqlen].
 */
export async function activationAbsMax(
  decoder: Decoder,
  windows: Int32Array,
  seqlen: number,
): Promise<ActivationAbsMax> {
  const maxima: ActivationAbsMax = new Map();
  const n = windows.length / seqlen;
  const perPass = Math.max(1, Math.floor(ROWS_PER_PASS / seqlen));
  for (let w0 = 0; w0 < n; w0 += perPass) {
    const B = Math.min(perPass, n - w0);
    await decoder.forward(windows.subarray(w0 * seqlen, (w0 + B) * seqlen), B, seqlen, {
      onLinearInput(layer, linear, x, rows, cols) {
        const name = linearWeightName(layer, linear);
        let m = maxima.get(name);
        if (!m) {
          m = new Float32Array(cols);
          maxima.set(name, m);
        }
        for (let r = 0; r < rows; r++) {
          for (let c = 0; c < cols; c++) {
            const a = Math.abs(x[r * cols + c]!);
            if (a > m[c]!) m[c] = a;
          }
        }
      },
    });
  }
  return maxima;
}

/** A group of linears reading one input, and what produces that input (where 1/s is folded). */
interface SmoothGroup {
  readers: BlockLinear[];
  producer: { kind: 'norm'; name: string } | { kind: 'rows'; linear: 'self_attn.v_proj' | 'mlp.up_proj' };
}

function smoothGroups(
  config: ModelConfig,
  layer: number,
  groups: SmoothQuantOptions['groups'],
): SmoothGroup[] {
  const p = blockPrefix(layer);
  const gated = (config.layout ?? LLAMA_LAYOUT).gatedMlp;
  const out: SmoothGroup[] = [
    {
      readers: ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'],
      producer: { kind: 'norm', name: `${p}input_layernorm.weight` },
    },
    {
      readers: gated ? ['mlp.gate_proj', 'mlp.up_proj'] : ['mlp.up_proj'],
      producer: { kind: 'norm', name: `${p}post_attention_layernorm.weight` },
    },
  ];
  if (groups === 'all') {
    // act(up(h)) is not linear in up's output: only a gated MLP's act(gate) ⊙ up lets 1/s pass.
    if (!gated)
      throw new ConfigError('SmoothQuant cannot fold into up_proj without a gated MLP', {
        field: 'smoothquant-groups',
        hint: 'use groups "norms"',
      });
    out.push(
      { readers: ['self_attn.o_proj'], producer: { kind: 'rows', linear: 'self_attn.v_proj' } },
      { readers: ['mlp.down_proj'], producer: { kind: 'rows', linear: 'mlp.up_proj' } },
    );
  }
  return out;
}

export interface SmoothedModel {
  weights: TensorMap;
  /** The smoothing factors s per group, keyed by the group's first reader's weight name. */
  scales: Map<string, Float64Array>;
  /** Recorded in quantization_config.smoothquant. */
  description: Record<string, unknown>;
}

export function checkSmoothQuantOptions(o: SmoothQuantOptions): void {
  if (!(Number.isFinite(o.alpha) && o.alpha >= 0 && o.alpha <= 1)) {
    throw new UsageError('SmoothQuant migration strength out of range', {
      field: 'smoothquant',
      expected: 'alpha in [0, 1]',
      got: String(o.alpha),
    });
  }
  if (o.groups !== 'norms' && o.groups !== 'all') {
    throw new UsageError('unknown SmoothQuant groups', {
      field: 'smoothquant-groups',
      expected: 'norms or all',
      got: String(o.groups),
    });
  }
}

/**
 * Fold the smoothing factors of Eq. 4 into a copy of `weights` (the originals untouched);
 * `absMax` from activationAbsMax on the same model.
 */
export function smoothModel(
  config: ModelConfig,
  weights: TensorMap,
  absMax: ActivationAbsMax,
  options: Partial<SmoothQuantOptions> = {},
): SmoothedModel {
  const opts: SmoothQuantOptions = { ...SMOOTHQUANT_DEFAULTS, ...options };
  checkSmoothQuantOptions(opts);
  const out: TensorMap = new Map(weights);
  const scales = new Map<string, Float64Array>();
  const { numHeads, numKvHeads, headDim } = config;
  const get = (name: string) => {
    const t = out.get(name);
    if (!t) throw new UsageError('cannot smooth: tensor missing', { field: name });
    return t;
  };
  for (let layer = 0; layer < config.numLayers; layer++) {
    for (const group of smoothGroups(config, layer, opts.groups)) {
      const names = group.readers.map((l) => linearWeightName(layer, l));
      const Ws = names.map(get);
      const cols = Ws[0]!.shape[1]!;
      const xMax = absMax.get(names[0]!);
      if (!xMax || xMax.length !== cols)
        throw new UsageError('no activation maxima for this linear', {
          field: names[0],
          expected: `${cols} channels`,
          got: xMax ? `${xMax.length}` : 'none',
        });
      // max|W_j| over the rows of every reader (the reference concatenates the group's weights).
      const wMax = new Float64Array(cols);
      for (const w of Ws) {
        const rows = w.shape[0]!;
        for (let r = 0; r < rows; r++)
          for (let c = 0; c < cols; c++) wMax[c] = Math.max(wMax[c]!, Math.abs(w.data[r * cols + c]!));
      }
      // o_proj after GQA: channel (h, d) reads kv channel (h / (numHeads/numKvHeads), d), so the
      // heads of one kv group must share s: reduce both maxima over them first.
      const channel =
        group.producer.kind === 'rows' && group.producer.linear === 'self_attn.v_proj'
          ? (c: number) => Math.floor(c / headDim / (numHeads / numKvHeads)) * headDim + (c % headDim)
          : (c: number) => c;
      const sharedCols =
        group.producer.kind === 'rows' && group.producer.linear === 'self_attn.v_proj'
          ? numKvHeads * headDim
          : cols;
      const xShared = new Float64Array(sharedCols);
      const wShared = new Float64Array(sharedCols);
      for (let c = 0; c < cols; c++) {
        const k = channel(c);
        xShared[k] = Math.max(xShared[k]!, xMax[c]!);
        wShared[k] = Math.max(wShared[k]!, wMax[c]!);
      }
      // Eq. 4; a dead channel (no activation or no weight) keeps s = 1: nothing to migrate.
      const s = new Float64Array(sharedCols);
      for (let k = 0; k < sharedCols; k++) {
        const x = xShared[k]!;
        const w = wShared[k]!;
        s[k] = x > 0 && w > 0 ? x ** opts.alpha / w ** (1 - opts.alpha) : 1;
      }
      scales.set(names[0]!, s);
      // Readers: W ← W diag(s) (each column j times s_j).
      for (const [i, w] of Ws.entries()) {
        const rows = w.shape[0]!;
        const data = new Float32Array(w.data.length);
        for (let r = 0; r < rows; r++)
          for (let c = 0; c < cols; c++) data[r * cols + c] = w.data[r * cols + c]! * s[channel(c)]!;
        out.set(names[i]!, { shape: [...w.shape], data });
      }
      // Producer: its output channel j divided by s_j, bias included (LayerNorm's β, a linear's b).
      const divideBias = (weightName: string) => {
        const b = out.get(biasOf(weightName));
        if (b) out.set(biasOf(weightName), { shape: [...b.shape], data: b.data.map((v, j) => v / s[j]!) });
      };
      if (group.producer.kind === 'norm') {
        // A gain stored as w with the norm scaling by (offset + w) (Gemma): (offset + w)/s − offset.
        const offset = (config.layout ?? LLAMA_LAYOUT).normOffset;
        const g = get(group.producer.name);
        const data = g.data.map((v, j) => (v + offset) / s[j]! - offset);
        out.set(group.producer.name, { shape: [...g.shape], data });
        divideBias(group.producer.name);
      } else {
        const name = linearWeightName(layer, group.producer.linear);
        const w = get(name);
        const [rows, inDim] = w.shape as [number, number];
        const data = new Float32Array(w.data.length);
        for (let r = 0; r < rows; r++)
          for (let c = 0; c < inDim; c++) data[r * inDim + c] = w.data[r * inDim + c]! / s[r]!;
        out.set(name, { shape: [...w.shape], data });
        divideBias(name);
      }
    }
  }
  return {
    weights: out,
    scales,
    description: { alpha: opts.alpha, groups: opts.groups },
  };
}

/**
 * SmoothQuant before weight quantization (quantize-model.ts): activation maxima of the model
 * as given (rotated first, if it was) on the calibration windows, then the folds of smoothModel.
 */
export async function smoothQuant(
  config: ModelConfig,
  weights: TensorMap,
  calibration: { windows: Int32Array; seqlen: number } | undefined,
  options: Partial<SmoothQuantOptions>,
  engine: ComputeEngine,
): Promise<SmoothedModel> {
  checkSmoothQuantOptions({ ...SMOOTHQUANT_DEFAULTS, ...options });
  refuseMoe(
    config,
    '--smoothquant',
    "its groups are the dense MLP's; the experts' input norm also feeds the float router, which would have to absorb the scales (not implemented)",
  );
  const absMax = await calibratedAbsMax(config, weights, calibration, engine, {
    what: 'SmoothQuant measures activation maxima',
    hint: 'pass --calib <text file>',
  });
  return smoothModel(config, weights, absMax, options);
}

/** activationAbsMax of the model `weights` on the calibration windows, which must be given. */
async function calibratedAbsMax(
  config: ModelConfig,
  weights: TensorMap,
  calibration: { windows: Int32Array; seqlen: number } | undefined,
  engine: ComputeEngine,
  missing: { what: string; hint: string },
): Promise<ActivationAbsMax> {
  if (!calibration)
    throw new UsageError(`${missing.what} on calibration text`, { field: 'calib', hint: missing.hint });
  return activationAbsMax(new Decoder(config, weights, engine), calibration.windows, calibration.seqlen);
}

/**
 * `spec` with its static scales filled in: for per-tensor-static, max|X| of every block linear's
 * input over the calibration windows (SmoothQuant O3; the reference's static `input_scale` is
 * this max / 127). Other granularities are dynamic and returned unchanged.
 */
export async function calibrateActivations(
  config: ModelConfig,
  weights: TensorMap,
  spec: ActivationQuantSpec,
  calibration: { windows: Int32Array; seqlen: number } | undefined,
  engine: ComputeEngine,
): Promise<ActivationQuantSpec> {
  if (spec.granularity !== 'per-tensor-static' || spec.absMax) return spec;
  const maxima = await calibratedAbsMax(config, weights, calibration, engine, {
    what: 'static activation scales are measured',
    hint: 'pass --calib <text file>, or use a dynamic --act-granularity',
  });
  const absMax: Record<string, number> = {};
  for (const [name, m] of maxima) absMax[name] = m.reduce((a, v) => Math.max(a, v), 0);
  return { ...spec, absMax };
}
