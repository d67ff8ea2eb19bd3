/**
 * Forward pass of the Llama-family decoder (RMSNorm, rotary embeddings with rotate_half,
 * grouped-query causal attention, SwiGLU MLP), in Hugging Face `modeling_llama` semantics.
 *
 * It runs a batch of B independent windows of T tokens; positions restart at 0 in each
 * window. Matrix products go through the ComputeEngine; the O(n) element-wise work
 * (norms, rotary, activations) stays in typed-array loops with float64 accumulation.
 *
 * The pass is split into embed -> block(i) for every layer -> head so that sequential
 * calibration (GPTQ, AWQ) can run and quantize one block at a time.
 */
import { getDefaultEngine, type ComputeEngine } from '../compute/index.js';
import { ConfigError } from '../errors.js';
import type { TensorMap } from '../tensor.js';
import { type BlockLinear, blockPrefix, EMBED, FINAL_NORM, LM_HEAD } from './architecture.js';
import type { ModelConfig } from './config.js';

export interface ForwardHooks {
  /** Called with the input activations [rows, cols] of every block linear, before its product. */
  onLinearInput?(layer: number, linear: BlockLinear, x: Float32Array, rows: number, cols: number): void;
  /** End the block right after this linear's input was captured (calibration needs nothing later). */
  stopAfterInputOf?: BlockLinear;
  /**
   * Reuse of the attention output (the o_proj input) across passes over the same inputs while
   * q/k/v stay fixed: `cached` is used instead of recomputing it, `store` receives a new one.
   */
  attention?: { cached?: Float32Array; store?(attn: Float32Array): void };
}

/** Thrown inside `block` to end a capture-only pass early; never escapes it. */
const STOP = Symbol('stop');

export class Decoder {
  private readonly rope: { cos: Float32Array; sin: Float32Array; T: number } = {
    cos: new Float32Array(0),
    sin: new Float32Array(0),
    T: 0,
  };

  constructor(
    readonly config: ModelConfig,
    readonly weights: TensorMap,
    readonly engine: ComputeEngine = getDefaultEngine(),
  ) {}

  weight(name: string): Float32Array {
    const t = this.weights.get(name);
    if (!t) throw new ConfigError('model is missing a tensor', { field: name });
    return t.data;
  }

  /** Token embeddings: [n, hidden]. */
  embed(tokens: Int32Array): Float32Array {
    const { hiddenSize: D, vocabSize } = this.config;
    const table = this.weight(EMBED);
    const x = new Float32Array(tokens.length * D);
    tokens.forEach((id, i) => {
      if (id < 0 || id >= vocabSize) throw new ConfigError(`token id ${id} outside the vocabulary [0, ${vocabSize})`);
      x.set(table.subarray(id * D, (id + 1) * D), i * D);
    });
    return x;
  }

  /** One decoder block on x [B*T, hidden]; returns the new residual stream (undefined if stopped early). */
  async block(layer: number, x: Float32Array, B: number, T: number, hooks?: ForwardHooks): Promise<Float32Array | undefined> {
    try {
      return await this.blockBody(layer, x, B, T, hooks);
    } catch (e) {
      if (e === STOP) return undefined;
      throw e;
    }
  }

  private async blockBody(layer: number, x: Float32Array, B: number, T: number, hooks?: ForwardHooks) {
    const c = this.config;
    const rows = B * T;
    const p = blockPrefix(layer);
    const capture = (name: BlockLinear, input: Float32Array, inDim: number) => {
      hooks?.onLinearInput?.(layer, name, input, rows, inDim);
      if (hooks?.stopAfterInputOf === name) throw STOP;
    };
    const linear = async (name: BlockLinear, input: Float32Array, inDim: number, outDim: number) => {
      capture(name, input, inDim);
      return this.engine.linear(input, this.weight(`${p}${name}.weight`), rows, inDim, outDim);
    };

    // Attention sub-block: x += o_proj(attn(rope(q), rope(k), v)) on rmsnorm(x).
    let attn = hooks?.attention?.cached;
    if (!attn) {
      const h = rmsNorm(x, this.weight(`${p}input_layernorm.weight`), c.hiddenSize, c.normEps);
      const qDim = c.numHeads * c.headDim;
      const kvDim = c.numKvHeads * c.headDim;
      const q = await linear('self_attn.q_proj', h, c.hiddenSize, qDim);
      const k = await linear('self_attn.k_proj', h, c.hiddenSize, kvDim);
      const v = await linear('self_attn.v_proj', h, c.hiddenSize, kvDim);
      this.applyRope(q, B, T, c.numHeads);
      this.applyRope(k, B, T, c.numKvHeads);
      attn = await this.attention(q, k, v, B, T);
      hooks?.attention?.store?.(attn);
    }
    const o = await linear('self_attn.o_proj', attn, c.numHeads * c.headDim, c.hiddenSize);
    const x1 = add(x, o);

    // MLP sub-block (SwiGLU): x += down(silu(gate(h)) * up(h)) on rmsnorm(x).
    const h2 = rmsNorm(x1, this.weight(`${p}post_attention_layernorm.weight`), c.hiddenSize, c.normEps);
    capture('mlp.gate_proj', h2, c.hiddenSize);
    capture('mlp.up_proj', h2, c.hiddenSize);
    const act = await this.engine.linearSwiGlu(
      h2,
      this.weight(`${p}mlp.gate_proj.weight`),
      this.weight(`${p}mlp.up_proj.weight`),
      rows,
      c.hiddenSize,
      c.intermediateSize,
    );
    const down = await linear('mlp.down_proj', act, c.intermediateSize, c.hiddenSize);
    return add(x1, down);
  }

  /** Final norm and language-model head: logits [rows, vocab]. */
  async head(x: Float32Array, rows: number): Promise<Float32Array> {
    const c = this.config;
    const h = rmsNorm(x, this.weight(FINAL_NORM), c.hiddenSize, c.normEps);
    const lmHead = this.weight(c.tiedEmbeddings ? EMBED : LM_HEAD);
    return this.engine.linear(h, lmHead, rows, c.hiddenSize, c.vocabSize);
  }

  /** Logits [B*T, vocab] for B windows of T tokens each (tokens row-major [B, T]). */
  async forward(tokens: Int32Array, B: number, T: number, hooks?: ForwardHooks): Promise<Float32Array> {
    let x = this.embed(tokens);
    for (let layer = 0; layer < this.config.numLayers; layer++) x = (await this.blockBody(layer, x, B, T, hooks))!;
    return this.head(x, B * T);
  }

  private attention(q: Float32Array, k: Float32Array, v: Float32Array, B: number, T: number) {
    const { numHeads: heads, numKvHeads: kvHeads, headDim } = this.config;
    return this.engine.causalAttention(q, k, v, { batch: B, seqLen: T, heads, kvHeads, headDim, scale: 1 / Math.sqrt(headDim) });
  }

  /** Rotary embedding, rotate_half convention: pairs (i, i + d/2) of each head rotate by pos·θ^(-2i/d). */
  private applyRope(x: Float32Array, B: number, T: number, heads: number): void {
    const d = this.config.headDim;
    const half = d / 2;
    const { cos, sin } = this.ropeTables(T);
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) {
        const row = (b * T + t) * heads * d;
        for (let h = 0; h < heads; h++) {
          const base = row + h * d;
          for (let i = 0; i < half; i++) {
            const c = cos[t * half + i]!;
            const s = sin[t * half + i]!;
            const x1 = x[base + i]!;
            const x2 = x[base + i + half]!;
            x[base + i] = x1 * c - x2 * s;
            x[base + i + half] = x2 * c + x1 * s;
          }
        }
      }
    }
  }

  private ropeTables(T: number) {
    if (this.rope.T < T) {
      const d = this.config.headDim;
      const half = d / 2;
      const cos = new Float32Array(T * half);
      const sin = new Float32Array(T * half);
      for (let i = 0; i < half; i++) {
        const invFreq = 1 / this.config.ropeTheta ** ((2 * i) / d);
        for (let t = 0; t < T; t++) {
          cos[t * half + i] = Math.cos(t * invFreq);
          sin[t * half + i] = Math.sin(t * invFreq);
        }
      }
      Object.assign(this.rope, { cos, sin, T });
    }
    return this.rope;
  }
}

/** RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x²) + eps) · w, per row of width D. */
export function rmsNorm(x: Float32Array, w: Float32Array, D: number, eps: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < x.length; r += D) {
    let ss = 0;
    for (let i = 0; i < D; i++) ss += x[r + i]! * x[r + i]!;
    const inv = 1 / Math.sqrt(ss / D + eps);
    for (let i = 0; i < D; i++) out[r + i] = x[r + i]! * inv * w[i]!;
  }
  return out;
}

function add(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! + b[i]!;
  return out;
}
