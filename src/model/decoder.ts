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
import { type ComputeEngine, getDefaultEngine } from '../compute/index.js';
import { ConfigError } from '../errors.js';
import type { TensorMap } from '../tensor.js';
import { type BlockLinear, blockPrefix, EMBED, FINAL_NORM, LM_HEAD } from './architecture.js';
import type { ModelConfig } from './config.js';
import { type LinearInputTransform, linearInputTransform } from './input-ops.js';

export interface ForwardHooks {
  /** Called with the input activations [rows, cols] of every block linear, before its product. */
  onLinearInput?(layer: number, linear: BlockLinear, x: Float32Array, rows: number, cols: number): void;
  /** End the block right after this linear's input was captured (calibration needs nothing later). */
  stopAfterInputOf?: BlockLinear;
}

/** Reusable temporaries by name (grown on demand); for one sequential user at a time. */
export class Scratch {
  private readonly buffers = new Map<string, Float32Array>();

  /** A buffer of exactly `length` floats, the same memory on every call with this name. */
  get(name: string, length: number): Float32Array {
    let b = this.buffers.get(name);
    if (!b || b.length < length) {
      b = new Float32Array(length);
      this.buffers.set(name, b);
    }
    return b.subarray(0, length);
  }
}

const QKV = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'] as const;
const O_PROJ = ['self_attn.o_proj'] as const;
const GATE_UP = ['mlp.gate_proj', 'mlp.up_proj'] as const;
const DOWN_PROJ = ['mlp.down_proj'] as const;

/** Thrown inside `block` to end a capture-only pass early; never escapes it. */
const STOP = Symbol('stop');

export class Decoder {
  private readonly rope: { cos: Float32Array; sin: Float32Array; T: number } = {
    cos: new Float32Array(0),
    sin: new Float32Array(0),
    T: 0,
  };
  /** config.linearInputOps as a function (undefined: block linears read their inputs unchanged). */
  private readonly inputTransform: LinearInputTransform | undefined;

  constructor(
    readonly config: ModelConfig,
    readonly weights: TensorMap,
    readonly engine: ComputeEngine = getDefaultEngine(),
  ) {
    this.inputTransform = linearInputTransform(config.linearInputOps);
  }

  /** A stage output x [rows, cols] as the block linears `readers` see it (config.linearInputOps applied). */
  private linearInput(layer: number, readers: readonly BlockLinear[], x: Float32Array, cols: number) {
    return this.inputTransform ? this.inputTransform(layer, readers, x, x.length / cols, cols) : x;
  }

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
      if (id < 0 || id >= vocabSize)
        throw new ConfigError(`token id ${id} outside the vocabulary [0, ${vocabSize})`);
      x.set(table.subarray(id * D, (id + 1) * D), i * D);
    });
    return x;
  }

  /** One decoder block on x [B*T, hidden]; returns the new residual stream (undefined if stopped early). */
  async block(
    layer: number,
    x: Float32Array,
    B: number,
    T: number,
    hooks?: ForwardHooks,
  ): Promise<Float32Array | undefined> {
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
    const capture = (input: Float32Array, inDim: number, ...names: BlockLinear[]) => {
      for (const name of names) {
        hooks?.onLinearInput?.(layer, name, input, rows, inDim);
        if (hooks?.stopAfterInputOf === name) throw STOP;
      }
    };
    // Attention sub-block: x += o_proj(attn(rope(q), rope(k), v)) on rmsnorm(x).
    const h = this.attentionInput(layer, x);
    capture(h, c.hiddenSize, ...QKV);
    const attn = await this.selfAttention(layer, h, B, T);
    capture(attn, c.numHeads * c.headDim, ...O_PROJ);
    const x1 = x.slice();
    await this.addAttentionOutput(layer, attn, x1);
    // MLP sub-block (SwiGLU): x += down(silu(gate(h)) * up(h)) on rmsnorm(x).
    const h2 = this.mlpInput(layer, x1);
    capture(h2, c.hiddenSize, ...GATE_UP);
    const act = await this.mlpActivation(layer, h2, rows);
    capture(act, c.intermediateSize, ...DOWN_PROJ);
    await this.addMlpOutput(layer, act, x1);
    return x1;
  }

  /*
   * The block in stages, each the input of the linears that read it (sequential calibration
   * runs them one at a time and keeps what later stages need). x is the residual stream
   * [B*T, hidden]; the add* stages update it in place. `out` receives a stage's result and
   * `scratch` holds its temporaries, so that a caller running thousands of stages reuses
   * memory instead of allocating it.
   */

  /** RMSNorm(x) with the block's input norm: the input of q/k/v. */
  attentionInput(layer: number, x: Float32Array, out?: Float32Array): Float32Array {
    const c = this.config;
    const w = this.weight(`${blockPrefix(layer)}input_layernorm.weight`);
    return this.linearInput(layer, QKV, rmsNorm(x, w, c.hiddenSize, c.normEps, out), c.hiddenSize);
  }

  /** q/k/v projections, rotary embedding and causal attention of h: the input of o_proj. */
  async selfAttention(
    layer: number,
    h: Float32Array,
    B: number,
    T: number,
    out?: Float32Array,
    scratch?: Scratch,
  ): Promise<Float32Array> {
    const c = this.config;
    const p = blockPrefix(layer);
    const rows = B * T;
    const qDim = c.numHeads * c.headDim;
    const kvDim = c.numKvHeads * c.headDim;
    const project = (name: BlockLinear, dim: number) =>
      this.engine.linear(
        h,
        this.weight(`${p}${name}.weight`),
        rows,
        c.hiddenSize,
        dim,
        scratch?.get(name, rows * dim),
      );
    const q = await project('self_attn.q_proj', qDim);
    const k = await project('self_attn.k_proj', kvDim);
    const v = await project('self_attn.v_proj', kvDim);
    this.applyRope(q, B, T, c.numHeads);
    this.applyRope(k, B, T, c.numKvHeads);
    return this.linearInput(layer, O_PROJ, await this.attention(q, k, v, B, T, out), qDim);
  }

  /** x += o_proj(attn). */
  async addAttentionOutput(
    layer: number,
    attn: Float32Array,
    x: Float32Array,
    scratch?: Scratch,
  ): Promise<void> {
    const c = this.config;
    const rows = x.length / c.hiddenSize;
    const w = this.weight(`${blockPrefix(layer)}self_attn.o_proj.weight`);
    const qDim = c.numHeads * c.headDim;
    addInPlace(
      x,
      await this.engine.linear(attn, w, rows, qDim, c.hiddenSize, scratch?.get('output', x.length)),
    );
  }

  /** RMSNorm(x) with the block's post-attention norm: the input of gate/up. */
  mlpInput(layer: number, x: Float32Array, out?: Float32Array): Float32Array {
    const c = this.config;
    const w = this.weight(`${blockPrefix(layer)}post_attention_layernorm.weight`);
    return this.linearInput(layer, GATE_UP, rmsNorm(x, w, c.hiddenSize, c.normEps, out), c.hiddenSize);
  }

  /** silu(h·gateᵀ) ⊙ (h·upᵀ): the input of down_proj. */
  async mlpActivation(
    layer: number,
    h: Float32Array,
    rows: number,
    out?: Float32Array,
  ): Promise<Float32Array> {
    const c = this.config;
    const p = blockPrefix(layer);
    const gate = this.weight(`${p}mlp.gate_proj.weight`);
    const up = this.weight(`${p}mlp.up_proj.weight`);
    const act = await this.engine.linearSwiGlu(h, gate, up, rows, c.hiddenSize, c.intermediateSize, out);
    return this.linearInput(layer, DOWN_PROJ, act, c.intermediateSize);
  }

  /** x += down_proj(act). */
  async addMlpOutput(layer: number, act: Float32Array, x: Float32Array, scratch?: Scratch): Promise<void> {
    const c = this.config;
    const rows = x.length / c.hiddenSize;
    const w = this.weight(`${blockPrefix(layer)}mlp.down_proj.weight`);
    const out = scratch?.get('output', x.length);
    addInPlace(x, await this.engine.linear(act, w, rows, c.intermediateSize, c.hiddenSize, out));
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
    for (let layer = 0; layer < this.config.numLayers; layer++)
      x = (await this.blockBody(layer, x, B, T, hooks))!;
    return this.head(x, B * T);
  }

  private attention(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    B: number,
    T: number,
    out?: Float32Array,
  ) {
    const { numHeads: heads, numKvHeads: kvHeads, headDim } = this.config;
    const shape = { batch: B, seqLen: T, heads, kvHeads, headDim, scale: 1 / Math.sqrt(headDim) };
    return this.engine.causalAttention(q, k, v, shape, out);
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
export function rmsNorm(
  x: Float32Array,
  w: Float32Array,
  D: number,
  eps: number,
  result?: Float32Array,
): Float32Array {
  const out = result ?? new Float32Array(x.length);
  for (let r = 0; r < x.length; r += D) {
    let ss = 0;
    for (let i = 0; i < D; i++) ss += x[r + i]! * x[r + i]!;
    const inv = 1 / Math.sqrt(ss / D + eps);
    for (let i = 0; i < D; i++) out[r + i] = x[r + i]! * inv * w[i]!;
  }
  return out;
}

function addInPlace(a: Float32Array, b: Float32Array): void {
  for (let i = 0; i < a.length; i++) a[i]! += b[i]!;
}
