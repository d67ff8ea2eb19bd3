/**
 * Hadamard rotation of a Llama-family model, absorbed into its weights (QuaRot, Ashkboos et
 * al. 2024, arXiv:2404.00456 §4 "R1"/"R2" offline rotations; QuIP# incoherence processing,
 * arXiv:2402.04396). The full-precision model computes the same function afterwards, but
 * every linear layer's weights are rotated, which spreads outlier columns over all inputs
 * and makes them easier to quantize with any weight method (RTN, GPTQ, AWQ, ...).
 *
 * Computational invariance (SliceGPT, Ashkboos et al. 2024, arXiv:2401.15024, Theorem 1;
 * QuaRot §3): for an orthogonal Q and an RMSNorm with unit gain,
 *     RMSNorm(x Q) = x Q / √(‖x Q‖²/D + ε) = (x / √(‖x‖²/D + ε)) Q = RMSNorm(x) Q,
 * since ‖x Q‖ = ‖x‖. So, with x the residual stream (row vector, width D):
 *   1. Fold every RMSNorm gain γ into the linears that read its output:
 *      W ← W diag(γ) for q/k/v (input_layernorm), gate/up (post_attention_layernorm) and
 *      lm_head (model.norm); then γ ← 1. Exact: (x̂ ∘ γ) Wᵀ = x̂ (W diag γ)ᵀ.
 *   2. Rotate the residual stream to x Q: embeddings E ← E Q (each row is a token's x);
 *      readers W ← W Q, since (RMSNorm(x) Q)(W Q)ᵀ = RMSNorm(x) Wᵀ; writers (o_proj,
 *      down_proj, shape [D, in]) W ← Qᵀ W, since u (Qᵀ W)ᵀ = (u Wᵀ) Q adds their output
 *      to the residual already rotated.
 *   3. Optionally (R2) rotate every attention head's values: v_proj rows of kv head g
 *      W_g ← R2ᵀ W_g, so v_g ← v_g R2; attention is linear in V, so each head's output
 *      becomes a_h R2, and o_proj's columns of head h W_h ← W_h R2 undo it. q/k (and so RoPE
 *      and the attention scores) are untouched.
 * Tied embeddings are untied: E Q (no gain) and W_head = E diag(γ_final) Q differ.
 * rotateModel adds no operation to the forward pass, so the rotated model runs on the unchanged
 * decoder; down_proj's input (the FFN width, behind SwiGLU's nonlinearity) cannot be rotated
 * offline and is left as is. rotateOnline (below, `--rotate hadamard-online`) is QuaRot's online
 * alternative: no folding, and the forward pass rotates chosen linear inputs at run time.
 * Q = diag(s) H / √D from math/hadamard.ts, with seeded signs s.
 *
 * Step 1 is not free for quantization: a small γ_c no longer damps the errors of column c,
 * so on models without outlier features (the two real models here, weight kurtosis ≈ 3)
 * folding costs more than the rotation wins back, and RTN/GPTQ/AWQ lose a little to their
 * unrotated versions (measured in test/quant/rotate.test.ts). The rotation pays off where
 * activations have outlier channels, as in billion-parameter LLMs (QuaRot §5).
 */
import { ConfigError, ShapeError, UsageError } from '../errors.js';
import {
  BLOCK_LINEARS,
  type BlockLinear,
  blockPrefix,
  EMBED,
  FINAL_NORM,
  LM_HEAD,
  linearWeightName,
} from '../formats/tensor-names.js';
import { RandomizedHadamard } from '../math/hadamard.js';
import { refuseMoe } from '../model/architecture.js';
import type { ModelConfig } from '../model/config.js';
import {
  checkInputRotation,
  type InputRotationSpec,
  inputRotation,
  LINEAR_INPUTS,
  type LinearInput,
  linearInputOf,
} from '../model/input-rotation.js';
import { mulberry32 } from '../random.js';
import type { Tensor, TensorMap } from '../tensor.js';

export interface RotateOptions {
  /** Seed of the random signs (and of any random-orthogonal factor). */
  seed: number;
  /** Rotate the residual stream (R1; folds the norms and unties the embeddings). */
  residual: boolean;
  /** Rotate each head's values / o_proj inputs by a head_dim transform (QuaRot/SpinQuant R2). */
  heads: boolean;
}

/**
 * 'hadamard': absorbed into the weights (rotateModel); 'hadamard-online': weights W·Q with the
 * forward pass rotating o_proj's and down_proj's inputs (rotateOnline).
 */
export const ROTATIONS = ['hadamard', 'hadamard-online'] as const;
export type RotationKind = (typeof ROTATIONS)[number];

export const ROTATE_DEFAULTS: RotateOptions = { seed: 0, residual: true, heads: true };

export interface RotatedModel {
  /** The config of the returned weights: embeddings untied when the norms were folded. */
  config: ModelConfig;
  weights: TensorMap;
  /** Recorded in quantization_config.rotation. */
  description: Record<string, unknown>;
}

/** Rows per chunk of float64 work on reader-side matrices (bounds memory on large embeddings). */
const CHUNK_ROWS = 256;

const READERS: Record<'input_layernorm' | 'post_attention_layernorm', BlockLinear[]> = {
  input_layernorm: ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'],
  post_attention_layernorm: ['mlp.gate_proj', 'mlp.up_proj'],
};

/** Why rotations refuse MoE models. */
const ROTATE_MOE =
  "rotations cover the dense block's linears; every expert's and the router's inputs would have to be rotated too (not implemented)";

export function rotateModel(
  config: ModelConfig,
  weights: TensorMap,
  options: Partial<RotateOptions> = {},
): RotatedModel {
  const opts: RotateOptions = {
    seed: options.seed ?? ROTATE_DEFAULTS.seed,
    residual: options.residual ?? ROTATE_DEFAULTS.residual,
    heads: options.heads ?? ROTATE_DEFAULTS.heads,
  };
  refuseMoe(config, '--rotate', ROTATE_MOE);
  if (!Number.isInteger(opts.seed))
    throw new UsageError('rotation seed must be an integer', {
      field: 'rotate-seed',
      got: String(opts.seed),
    });
  const random = mulberry32(opts.seed);
  // One stream: R1's signs first, then each layer's R2 in order.
  const R1 = opts.residual ? new RandomizedHadamard(config.hiddenSize, random) : undefined;
  const R2 = opts.heads
    ? Array.from({ length: config.numLayers }, () => new RandomizedHadamard(config.headDim, random))
    : undefined;
  const { config: c, weights: w } = absorb(config, weights, { fold: opts.residual, R1, R2 });
  return {
    config: c,
    weights: w,
    description: {
      method: 'hadamard',
      seed: opts.seed,
      ...(R1 && { residual: R1.describe() }),
      ...(R2 && { heads: R2[0]!.describe() }),
    },
  };
}

/**
 * Step 1 alone: every RMSNorm gain folded into the linears reading it, gains set to 1,
 * embeddings untied. The same function as before; the baseline a rotation is compared to.
 */
export function foldNorms(
  config: ModelConfig,
  weights: TensorMap,
): { config: ModelConfig; weights: TensorMap } {
  return absorb(config, weights, { fold: true });
}

interface Absorb {
  fold: boolean;
  R1?: RandomizedHadamard;
  /** One head_dim rotation per layer. */
  R2?: RandomizedHadamard[];
}

/** Fold the norms and/or apply R1 and R2 (steps 1–3 above), in float64, rounded to float32 per step. */
function absorb(config: ModelConfig, weights: TensorMap, { fold, R1, R2 }: Absorb) {
  if (config.modelType !== 'llama') {
    throw new ConfigError('Hadamard rotation supports Llama-family models only', {
      field: 'model_type',
      got: config.modelType,
    });
  }
  if (R1 && !fold) throw new ConfigError('a residual rotation needs the norms folded (unit RMSNorm gains)');
  const D = config.hiddenSize;
  const hd = config.headDim;
  const get = (name: string, shape: number[]): Tensor => {
    const t = weights.get(name);
    if (!t || t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new ShapeError('cannot rotate: missing or misshapen tensor', {
        field: name,
        expected: `[${shape}]`,
        got: t && `[${t.shape}]`,
      });
    }
    return t;
  };
  const out: TensorMap = new Map(weights);
  const ones = () => new Float32Array(D).fill(1);
  const qDim = config.numHeads * hd;
  const kvDim = config.numKvHeads * hd;
  const F = config.intermediateSize;

  if (fold) {
    // Embeddings E ← E Q; the LM head reads model.norm: W ← W diag(γ) Q (untied from E).
    const E = get(EMBED, [config.vocabSize, D]);
    const head = config.tiedEmbeddings ? E : get(LM_HEAD, [config.vocabSize, D]);
    if (R1) out.set(EMBED, { shape: E.shape, data: rotateReader(E.data, E.shape[0]!, D, R1) });
    out.set(LM_HEAD, {
      shape: [...head.shape],
      data: rotateReader(head.data, head.shape[0]!, D, R1, get(FINAL_NORM, [D]).data),
    });
    out.set(FINAL_NORM, { shape: [D], data: ones() });
  }

  for (let layer = 0; layer < config.numLayers; layer++) {
    const p = blockPrefix(layer);
    const r2 = R2?.[layer];
    if (fold) {
      for (const [norm, linears] of Object.entries(READERS)) {
        const gamma = get(`${p}${norm}.weight`, [D]).data;
        for (const linear of linears) {
          const name = linearWeightName(layer, linear);
          const w = get(name, [
            linear === 'self_attn.q_proj' ? qDim : linear.startsWith('self_attn') ? kvDim : F,
            D,
          ]);
          out.set(name, { shape: [...w.shape], data: rotateReader(w.data, w.shape[0]!, D, R1, gamma) });
        }
        out.set(`${p}${norm}.weight`, { shape: [D], data: ones() });
      }
    }

    // o_proj [D, qDim]: Qᵀ W on its outputs, then W_h R2 on each head's columns.
    if (R1 || r2) {
      const oName = linearWeightName(layer, 'self_attn.o_proj');
      const o = transposed(get(oName, [D, qDim]).data, D, qDim); // [qDim, D]
      R1?.applyRows(o, qDim);
      const oRot = transposed(o, qDim, D); // [D, qDim] = [D · numHeads, hd]
      r2?.applyRows(oRot, D * config.numHeads);
      out.set(oName, { shape: [D, qDim], data: Float32Array.from(oRot) });
    }

    // down_proj [D, F]: Qᵀ W.
    if (R1) {
      const dName = linearWeightName(layer, 'mlp.down_proj');
      const d = transposed(get(dName, [D, F]).data, D, F); // [F, D]
      R1.applyRows(d, F);
      out.set(dName, { shape: [D, F], data: Float32Array.from(transposed(d, F, D)) });
    }

    // v_proj [kvDim, D] (its inputs already folded/rotated above): R2ᵀ W_g per kv head g.
    if (r2) {
      const vName = linearWeightName(layer, 'self_attn.v_proj');
      const v = transposed(out.get(vName)!.data, kvDim, D); // [D, kvDim] = [D · kvHeads, hd]
      r2.applyRows(v, D * config.numKvHeads);
      out.set(vName, { shape: [kvDim, D], data: Float32Array.from(transposed(v, D, kvDim)) });
    }
  }
  return { config: fold ? { ...config, tiedEmbeddings: false } : config, weights: out };
}

/**
 * The config.json to save next to rotated weights: lm_head is a tensor of its own, and a
 * loader that still believed the embeddings tied would drop it (load.ts).
 */
export function untiedHfConfig(hfConfig: Record<string, unknown>): Record<string, unknown> {
  return { ...hfConfig, tie_word_embeddings: false };
}

/** W [rows, D] ← W diag(γ) Q (Q = I when absent), in float64 by chunks of rows, rounded to float32. */
function rotateReader(
  w: Float32Array,
  rows: number,
  D: number,
  Q?: RandomizedHadamard,
  gamma?: Float32Array,
): Float32Array {
  const out = new Float32Array(rows * D);
  const chunk = new Float64Array(Math.min(rows, CHUNK_ROWS) * D);
  for (let r0 = 0; r0 < rows; r0 += CHUNK_ROWS) {
    const n = Math.min(CHUNK_ROWS, rows - r0);
    for (let i = 0; i < n * D; i++) chunk[i] = w[r0 * D + i]! * (gamma ? gamma[i % D]! : 1);
    Q?.applyRows(chunk, n);
    for (let i = 0; i < n * D; i++) out[r0 * D + i] = chunk[i]!;
  }
  return out;
}

/** Aᵀ of a row-major [rows, cols] matrix, in float64. */
function transposed(a: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const t = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = a[r * cols + c]!;
  return t;
}

/**
 * The inputs `--rotate hadamard-online` rotates: o_proj's (the attention output) and down_proj's
 * (the SwiGLU product), QuaRot's online pair (its R2 acts on o_proj's input per head, R4 is the
 * online Hadamard before down_proj, arXiv:2404.00456 §4). These inputs come out of products
 * (softmax·V, silu(g)·u), not out of an RMSNorm, and carry the activation outliers. Rotating the
 * RMSNorm-fed inputs of q/k/v and gate/up as well costs quality on both real models
 * (test/quant/rotate-online.test.ts measures every variant).
 */
export const ONLINE_INPUTS: readonly LinearInput[] = ['o_proj', 'down_proj'];

export interface OnlineRotateOptions {
  seed: number;
  inputs: readonly LinearInput[];
}

/**
 * Online rotation (input-rotation.ts): every block linear W reading a rotated input becomes
 * W Q (Q = the randomized Hadamard of that layer and input, rebuilt from the seed), and the
 * returned config's linearInputOps.rotation makes the forward pass rotate the input x ← x Q,
 * so x Wᵀ = (x Q)(W Q)ᵀ. Nothing is folded or untied; each product is computed in float64 and
 * rounded once to float32.
 */
export function rotateOnline(
  config: ModelConfig,
  weights: TensorMap,
  options: Partial<OnlineRotateOptions> = {},
): RotatedModel {
  const spec: InputRotationSpec = {
    kind: 'hadamard',
    seed: options.seed ?? ROTATE_DEFAULTS.seed,
    inputs: LINEAR_INPUTS.filter((i) => (options.inputs ?? ONLINE_INPUTS).includes(i)),
  };
  checkInputRotation(spec);
  refuseMoe(config, '--rotate', ROTATE_MOE);
  if (config.linearInputOps?.rotation)
    throw new ConfigError('the model already rotates its linear inputs online', {
      got: JSON.stringify(config.linearInputOps.rotation),
    });
  const out: TensorMap = new Map(weights);
  for (let layer = 0; layer < config.numLayers; layer++) {
    for (const linear of BLOCK_LINEARS) {
      const input = linearInputOf(linear);
      if (!spec.inputs.includes(input)) continue;
      const name = linearWeightName(layer, linear);
      const w = weights.get(name);
      if (w?.shape.length !== 2)
        throw new ShapeError('cannot rotate: missing or misshapen tensor', {
          field: name,
          got: w && `[${w.shape}]`,
        });
      const [rows, cols] = w.shape as [number, number];
      const Q = inputRotation(spec.seed, layer, input, cols);
      out.set(name, { shape: [rows, cols], data: rotateReader(w.data, rows, cols, Q) });
    }
  }
  return {
    config: { ...config, linearInputOps: { ...config.linearInputOps, rotation: spec } },
    weights: out,
    description: { method: 'hadamard-online', seed: spec.seed, inputs: spec.inputs },
  };
}
