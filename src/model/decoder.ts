/**
 * Forward pass of a decoder-only transformer as its BlockLayout (config.ts) describes it, in
 * Hugging Face semantics: Llama (RMSNorm, rotary embeddings with rotate_half, grouped-query
 * causal attention, SwiGLU MLP) and its variants: LayerNorm with bias, (1 + w) gains, GeGLU /
 * GELU / ReLU MLPs, linear biases, per-head q/k norms, post-norms, learned or partial rotary
 * positions, RoPE scaling, sliding windows, soft-capping, parallel residual, and sparse
 * mixture-of-experts MLPs (modeling_mixtral.py MixtralSparseMoeBlock, modeling_qwen2_moe.py /
 * modeling_qwen3_moe.py Qwen{2,3}MoeSparseMoeBlock).
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
import {
  type BlockLinear,
  biasOf,
  blockPrefix,
  EMBED,
  type ExpertLinear,
  expertLinear,
  expertOf,
  FINAL_NORM,
  LM_HEAD,
  POSITION_EMBED,
  ROUTER,
  roleOf,
  SHARED_EXPERT_GATE,
  sharedExpertLinear,
} from '../formats/tensor-names.js';
import type { TensorMap } from '../tensor.js';
import { linearsInRole } from './architecture.js';
import {
  type Activation,
  type BlockLayout,
  LLAMA_LAYOUT,
  type ModelConfig,
  type MoeLayout,
} from './config.js';
import { headInputTransform, linearInputTransform } from './input-ops.js';
import type { LinearInputTransform } from './input-transform.js';

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

  /** Drop every buffer (the next get allocates again). */
  clear(): void {
    this.buffers.clear();
  }
}

const QKV = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'] as const;
const O_PROJ = ['self_attn.o_proj'] as const;
const GATE_UP = ['mlp.gate_proj', 'mlp.up_proj'] as const;
const UP = ['mlp.up_proj'] as const;
const DOWN_PROJ = ['mlp.down_proj'] as const;

/** Thrown inside `block` to end a capture-only pass early; never escapes it. */
const STOP = Symbol('stop');

export class Decoder {
  /** cos/sin of positions 0..T-1; `long`: built with LongRoPE's long factors (windows beyond the original context). */
  private readonly rope: { cos: Float32Array; sin: Float32Array; T: number; long: boolean } = {
    cos: new Float32Array(0),
    sin: new Float32Array(0),
    T: 0,
    long: false,
  };
  /** config.linearInputOps as a function (undefined: block linears read their inputs unchanged). */
  private readonly inputTransform: LinearInputTransform | undefined;
  readonly layout: BlockLayout;
  /** The linears reading the MLP input: gate and up, or up alone (of every expert in a MoE block). */
  private readonly mlpReaders: readonly BlockLinear[];
  /** The linears reading the MLP activation: down_proj (of every expert). */
  private readonly downReaders: readonly BlockLinear[];
  /** Where the parts of a sparse MoE MLP's activation buffer lie (undefined for a dense MLP). */
  private readonly moe: MoePacking | undefined;
  /**
   * Parallel residual: the block input, kept when addAttentionOutput updates the residual
   * stream x so that mlpInput(x) still normalizes the block input (keyed by the stream array,
   * which sequential calibration passes to every stage of one chunk).
   */
  private readonly blockInputs = new WeakMap<Float32Array, { layer: number; x: Float32Array }>();
  /** lm_head's input conversion (llama.cpp emulation, config.linearInputOps.ggmlWeightTypes). */
  private readonly headInput: ReturnType<typeof headInputTransform>;

  constructor(
    readonly config: ModelConfig,
    readonly weights: TensorMap,
    readonly engine: ComputeEngine = getDefaultEngine(),
  ) {
    this.inputTransform = linearInputTransform(config.linearInputOps);
    this.layout = config.layout ?? LLAMA_LAYOUT;
    this.mlpReaders = this.layout.moe
      ? [...linearsInRole(config, 'mlp.gate_proj'), ...linearsInRole(config, 'mlp.up_proj')]
      : this.layout.gatedMlp
        ? GATE_UP
        : UP;
    this.downReaders = this.layout.moe ? linearsInRole(config, 'mlp.down_proj') : DOWN_PROJ;
    this.moe = this.layout.moe && new MoePacking(this.layout.moe);
    this.headInput = headInputTransform(config.linearInputOps, config.tiedEmbeddings);
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

  /** Every id indexes the embedding matrix. */
  checkTokens(tokens: Int32Array): void {
    const { vocabSize } = this.config;
    for (const id of tokens)
      if (id < 0 || id >= vocabSize)
        throw new ConfigError(`token id ${id} outside the vocabulary [0, ${vocabSize})`);
  }

  /**
   * Token embeddings [n, hidden] of windows of T tokens (positions restart at 0 every T),
   * × embedScale (Gemma), + the learned position rows (GPT-2, OPT: row t + positionOffset).
   * `rows`: the embedding rows of `tokens` as the caller read them ([n, hidden], updated in place
   * and returned; a block-streamed model reads only those rows), else they come from the table.
   */
  embed(tokens: Int32Array, T = tokens.length, rows?: Float32Array): Float32Array {
    const { hiddenSize: D } = this.config;
    const { embedScale, positions, positionOffset } = this.layout;
    const table = rows ? undefined : this.weight(EMBED);
    const pos = positions === 'learned' ? this.weight(POSITION_EMBED) : undefined;
    if (pos && T + positionOffset > pos.length / D) {
      throw new ConfigError(
        `windows of ${T} tokens exceed the model's ${pos.length / D - positionOffset} positions`,
        {
          field: POSITION_EMBED,
        },
      );
    }
    if (rows && rows.length !== tokens.length * D)
      throw new ConfigError(`${rows.length / D} embedding rows for ${tokens.length} tokens`);
    const x = rows ?? new Float32Array(tokens.length * D);
    this.checkTokens(tokens);
    tokens.forEach((id, i) => {
      if (table) x.set(table.subarray(id * D, (id + 1) * D), i * D);
      if (embedScale !== 1) for (let j = i * D; j < (i + 1) * D; j++) x[j]! *= embedScale;
      if (pos) {
        const row = ((i % T) + positionOffset) * D;
        for (let j = 0; j < D; j++) x[i * D + j]! += pos[row + j]!;
      }
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
    // Attention sub-block: x += o_proj(attn(rope(q), rope(k), v)) on norm(x).
    const h = this.attentionInput(layer, x);
    capture(h, c.hiddenSize, ...QKV);
    const attn = await this.selfAttention(layer, h, B, T);
    capture(attn, c.numHeads * c.headDim, ...O_PROJ);
    const x1 = x.slice();
    await this.addAttentionOutput(layer, attn, x1);
    // MLP sub-block: x += down(act(gate(h)) * up(h)) (or down(act(up(h)))) on norm(x), where x
    // is the block input under a parallel residual (GPT-NeoX) and includes the attention otherwise.
    const h2 = this.mlpInput(layer, x1);
    capture(h2, c.hiddenSize, ...this.mlpReaders);
    // Experts run on every token only when their inputs are captured (calibration statistics).
    const act = await this.mlpActivation(layer, h2, rows, undefined, hooks?.onLinearInput !== undefined);
    for (const linear of this.downReaders) {
      const { x: input, cols } = this.linearInputView(linear, act, rows);
      capture(input, cols, linear);
    }
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

  /** x [rows, cols] through the norm whose gain is `name` (RMSNorm or LayerNorm, as the layout says). */
  private norm(x: Float32Array, name: string, cols: number, out?: Float32Array): Float32Array {
    const { norm, normOffset } = this.layout;
    let w = this.weight(name);
    // Gemma's gain is (1 + w), formed in float32 like Hugging Face's `1.0 + self.weight.float()`.
    if (normOffset !== 0) w = w.map((v) => v + normOffset);
    if (norm === 'layer') return layerNorm(x, w, this.weight(biasOf(name)), cols, this.config.normEps, out);
    return rmsNorm(x, w, cols, this.config.normEps, out);
  }

  /** y = x·Wᵀ (+ b) for the linear `name` of `layer`. */
  private async project(
    layer: number,
    name: BlockLinear,
    x: Float32Array,
    rows: number,
    inDim: number,
    outDim: number,
    bias: boolean,
    out?: Float32Array,
  ): Promise<Float32Array> {
    const w = `${blockPrefix(layer)}${name}.weight`;
    const y = await this.engine.linear(x, this.weight(w), rows, inDim, outDim, out);
    if (bias) addRowVector(y, this.weight(biasOf(w)));
    return y;
  }

  /** The block's input norm of x: the input of q/k/v. */
  attentionInput(layer: number, x: Float32Array, out?: Float32Array): Float32Array {
    const c = this.config;
    const h = this.norm(x, `${blockPrefix(layer)}input_layernorm.weight`, c.hiddenSize, out);
    return this.linearInput(layer, QKV, h, c.hiddenSize);
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
    const L = this.layout;
    const p = blockPrefix(layer);
    const rows = B * T;
    const qDim = c.numHeads * c.headDim;
    const kvDim = c.numKvHeads * c.headDim;
    const project = (name: BlockLinear, dim: number) =>
      this.project(layer, name, h, rows, c.hiddenSize, dim, L.qkvBias, scratch?.get(name, rows * dim));
    const q = await project('self_attn.q_proj', qDim);
    const k = await project('self_attn.k_proj', kvDim);
    const v = await project('self_attn.v_proj', kvDim);
    if (L.qkNorm) {
      // Qwen3: RMSNorm over each head's head_dim values of q and k, before the rotation.
      rmsNorm(q, this.weight(`${p}self_attn.q_norm.weight`), c.headDim, c.normEps, q);
      rmsNorm(k, this.weight(`${p}self_attn.k_norm.weight`), c.headDim, c.normEps, k);
    }
    if (L.positions === 'rope') {
      this.applyRope(q, B, T, c.numHeads);
      this.applyRope(k, B, T, c.numKvHeads);
    }
    return this.linearInput(layer, O_PROJ, await this.attention(layer, q, k, v, B, T, out), qDim);
  }

  /** x += o_proj(attn). */
  async addAttentionOutput(
    layer: number,
    attn: Float32Array,
    x: Float32Array,
    scratch?: Scratch,
  ): Promise<void> {
    const c = this.config;
    const L = this.layout;
    const rows = x.length / c.hiddenSize;
    const qDim = c.numHeads * c.headDim;
    const out = scratch?.get('output', x.length);
    let o = await this.project(layer, 'self_attn.o_proj', attn, rows, qDim, c.hiddenSize, L.oBias, out);
    // Gemma-2 normalizes the attention output before the residual add.
    if (L.postNorms)
      o = this.norm(o, `${blockPrefix(layer)}post_attention_layernorm.weight`, c.hiddenSize, o);
    if (L.parallelResidual) this.blockInputs.set(x, { layer, x: x.slice() });
    addInPlace(x, o);
  }

  /**
   * The MLP's input norm (post_attention_layernorm; Gemma-2: pre_feedforward_layernorm) of x,
   * or of the block input when the residual is parallel: the input of gate/up.
   */
  mlpInput(layer: number, x: Float32Array, out?: Float32Array): Float32Array {
    const c = this.config;
    const L = this.layout;
    const kept = L.parallelResidual ? this.blockInputs.get(x) : undefined;
    const input = kept?.layer === layer ? kept.x : x;
    const name = L.postNorms ? 'pre_feedforward_layernorm' : 'post_attention_layernorm';
    const h = this.norm(input, `${blockPrefix(layer)}${name}.weight`, c.hiddenSize, out);
    return this.linearInput(layer, this.mlpReaders, h, c.hiddenSize);
  }

  /** Floats per token of mlpActivation's result (the stage input sequential calibration keeps). */
  mlpActivationWidth(): number {
    return this.moe ? this.moe.width : this.config.intermediateSize;
  }

  /** Floats per token of the largest stage input of a block (residual, attention output, activation). */
  stageWidth(): number {
    const c = this.config;
    return Math.max(c.hiddenSize, c.numHeads * c.headDim, this.mlpActivationWidth());
  }

  /**
   * The input [rows, cols] a down projection reads in mlpActivation's result `act`: all of it
   * for a dense MLP, the expert's activations of every token for an expert's down_proj.
   */
  linearInputView(linear: BlockLinear, act: Float32Array, rows: number): { x: Float32Array; cols: number } {
    const expert = expertOf(linear);
    if (!this.moe || expert === undefined || roleOf(linear) !== 'mlp.down_proj')
      return { x: act, cols: act.length / rows };
    return this.moe.activation(act, rows, expert);
  }

  /** Tokens the router picked each expert for, from mlpActivation's result of a MoE block (else undefined). */
  routedTokens(act: Float32Array, rows: number): Int32Array | undefined {
    if (!this.moe) return undefined;
    const counts = new Int32Array(this.moe.layout.experts);
    const { experts } = this.moe.routing(act, rows);
    for (const e of experts) counts[e]!++;
    return counts;
  }

  /**
   * act(h·gateᵀ) ⊙ (h·upᵀ) for a gated MLP, act(h·upᵀ) otherwise (biases added): the input of
   * down_proj. A sparse MoE block returns its routing and every expert's activation in one
   * buffer (MoePacking); `allTokens` runs each expert on every token, as calibration statistics
   * need (GPTQModel, llm-compressor), otherwise only on the tokens routed to it.
   */
  async mlpActivation(
    layer: number,
    h: Float32Array,
    rows: number,
    out?: Float32Array,
    allTokens = true,
  ): Promise<Float32Array> {
    if (this.moe) return this.moeActivation(this.moe, layer, h, rows, out, allTokens);
    const c = this.config;
    const L = this.layout;
    const p = blockPrefix(layer);
    const [D, F] = [c.hiddenSize, c.intermediateSize];
    let act: Float32Array;
    if (L.gatedMlp && L.activation === 'silu' && !L.mlpBias) {
      // SwiGLU fused on the engine (Llama's path).
      const gate = this.weight(`${p}mlp.gate_proj.weight`);
      const up = this.weight(`${p}mlp.up_proj.weight`);
      act = await this.engine.linearSwiGlu(h, gate, up, rows, D, F, out);
    } else if (L.gatedMlp) {
      // GeGLU and biased gated MLPs: act(gate) ⊙ up element-wise.
      act = await this.project(layer, 'mlp.gate_proj', h, rows, D, F, L.mlpBias, out);
      const up = await this.project(layer, 'mlp.up_proj', h, rows, D, F, L.mlpBias);
      applyActivation(act, L.activation);
      for (let i = 0; i < act.length; i++) act[i]! *= up[i]!;
    } else {
      act = applyActivation(
        await this.project(layer, 'mlp.up_proj', h, rows, D, F, L.mlpBias, out),
        L.activation,
      );
    }
    return this.linearInput(layer, DOWN_PROJ, act, F);
  }

  /**
   * The MoE activation (MoePacking): router softmax and top-k per token, then each expert's
   * act(gate(h)) ⊙ up(h) on every token (allTokens) or on its routed tokens only, and the
   * shared expert's with its sigmoid gate.
   */
  private async moeActivation(
    moe: MoePacking,
    layer: number,
    h: Float32Array,
    rows: number,
    out: Float32Array | undefined,
    allTokens: boolean,
  ): Promise<Float32Array> {
    const D = this.config.hiddenSize;
    const p = blockPrefix(layer);
    const packed = out ?? new Float32Array(rows * moe.width);
    const logits = await this.engine.linear(h, this.weight(`${p}${ROUTER}`), rows, D, moe.layout.experts);
    moe.route(logits, rows, packed);
    const { experts } = moe.routing(packed, rows);
    const swiGlu = (
      linear: (proj: 'gate_proj' | 'up_proj') => ExpertLinear,
      x: Float32Array,
      n: number,
      F: number,
      into?: Float32Array,
    ) =>
      this.engine.linearSwiGlu(
        x,
        this.weight(`${p}${linear('gate_proj')}.weight`),
        this.weight(`${p}${linear('up_proj')}.weight`),
        n,
        D,
        F,
        into,
      );
    const Fe = moe.layout.expertIntermediate;
    for (let e = 0; e < moe.layout.experts; e++) {
      const slot = moe.activation(packed, rows, e).x;
      const of = (proj: 'gate_proj' | 'up_proj') => expertLinear(e, proj);
      if (allTokens) {
        await swiGlu(of, h, rows, Fe, slot);
        continue;
      }
      const picked = rowsOf(experts, moe.layout.topK, e);
      if (picked.length === 0) continue;
      const act = await swiGlu(of, gatherRows(h, picked, D), picked.length, Fe);
      for (const [j, r] of picked.entries()) slot.set(act.subarray(j * Fe, (j + 1) * Fe), r * Fe);
    }
    const Fs = moe.layout.sharedIntermediate;
    if (Fs) {
      await swiGlu(sharedExpertLinear, h, rows, Fs, moe.activation(packed, rows, 'shared').x);
      const g = await this.engine.linear(h, this.weight(`${p}${SHARED_EXPERT_GATE}`), rows, D, 1);
      const gate = moe.sharedGate(packed, rows);
      for (let r = 0; r < rows; r++) gate[r] = 1 / (1 + Math.exp(-g[r]!));
    }
    return packed;
  }

  /**
   * x += Σ_e w_e · down_e(act_e) over each token's routed experts (+ the gated shared expert), as
   * the Hugging Face blocks sum it: expert by expert in index order, then the shared expert.
   */
  private async addMoeOutput(moe: MoePacking, layer: number, act: Float32Array, x: Float32Array) {
    const D = this.config.hiddenSize;
    const rows = x.length / D;
    const p = blockPrefix(layer);
    const y = new Float32Array(x.length);
    const { experts, weights } = moe.routing(act, rows);
    const k = moe.layout.topK;
    for (let e = 0; e < moe.layout.experts; e++) {
      const picked = rowsOf(experts, k, e);
      if (picked.length === 0) continue;
      const down = expertLinear(e, 'down_proj');
      const { x: slot, cols: F } = moe.activation(act, rows, e);
      const input = this.linearInput(layer, [down], gatherRows(slot, picked, F), F);
      const d = await this.engine.linear(input, this.weight(`${p}${down}.weight`), picked.length, F, D);
      picked.forEach((r, j) => {
        // The token's weight for e: its slot among the token's top-k.
        let w = 0;
        for (let i = 0; i < k; i++) if (experts[r * k + i] === e) w = weights[r * k + i]!;
        for (let c = 0; c < D; c++) y[r * D + c]! += Math.fround(d[j * D + c]! * w);
      });
    }
    if (moe.layout.sharedIntermediate) {
      const down = sharedExpertLinear('down_proj');
      const { x: slot, cols: F } = moe.activation(act, rows, 'shared');
      const d = await this.engine.linear(
        this.linearInput(layer, [down], slot, F),
        this.weight(`${p}${down}.weight`),
        rows,
        F,
        D,
      );
      const gate = moe.sharedGate(act, rows);
      for (let r = 0; r < rows; r++)
        for (let c = 0; c < D; c++) y[r * D + c]! += Math.fround(d[r * D + c]! * gate[r]!);
    }
    return y;
  }

  /** x += down_proj(act) (Gemma-2: normalized first). */
  async addMlpOutput(layer: number, act: Float32Array, x: Float32Array, scratch?: Scratch): Promise<void> {
    const c = this.config;
    const L = this.layout;
    if (this.moe) {
      addInPlace(x, await this.addMoeOutput(this.moe, layer, act, x));
      return;
    }
    const rows = x.length / c.hiddenSize;
    const out = scratch?.get('output', x.length);
    let d = await this.project(
      layer,
      'mlp.down_proj',
      act,
      rows,
      c.intermediateSize,
      c.hiddenSize,
      L.mlpBias,
      out,
    );
    if (L.postNorms)
      d = this.norm(d, `${blockPrefix(layer)}post_feedforward_layernorm.weight`, c.hiddenSize, d);
    this.blockInputs.delete(x);
    addInPlace(x, d);
  }

  /** Final norm and language-model head: logits [rows, vocab]. */
  async head(x: Float32Array, rows: number): Promise<Float32Array> {
    const c = this.config;
    const h = this.norm(x, FINAL_NORM, c.hiddenSize);
    const lmHead = this.weight(c.tiedEmbeddings ? EMBED : LM_HEAD);
    const input = this.headInput ? this.headInput(h, rows, c.hiddenSize) : h;
    const logits = await this.engine.linear(input, lmHead, rows, c.hiddenSize, c.vocabSize);
    const cap = this.layout.finalSoftcap;
    if (cap) for (let i = 0; i < logits.length; i++) logits[i] = cap * Math.tanh(logits[i]! / cap);
    return logits;
  }

  /** Logits [B*T, vocab] for B windows of T tokens each (tokens row-major [B, T]). */
  async forward(tokens: Int32Array, B: number, T: number, hooks?: ForwardHooks): Promise<Float32Array> {
    let x = this.embed(tokens, T);
    for (let layer = 0; layer < this.config.numLayers; layer++)
      x = (await this.blockBody(layer, x, B, T, hooks))!;
    return this.head(x, B * T);
  }

  private attention(
    layer: number,
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    B: number,
    T: number,
    out?: Float32Array,
  ) {
    const { numHeads: heads, numKvHeads: kvHeads, headDim } = this.config;
    const { attentionScale, attentionSoftcap, windows } = this.layout;
    const shape = {
      batch: B,
      seqLen: T,
      heads,
      kvHeads,
      headDim,
      scale: attentionScale ?? 1 / Math.sqrt(headDim),
      window: windows?.[layer] || undefined,
      softcap: attentionSoftcap,
    };
    return this.engine.causalAttention(q, k, v, shape, out);
  }

  /**
   * Rotary embedding, rotate_half convention over the first r = rotaryDim dimensions of each
   * head (all of them unless partial): pairs (i, i + r/2) rotate by pos·θ_i; the rest pass.
   */
  private applyRope(x: Float32Array, B: number, T: number, heads: number): void {
    const d = this.config.headDim;
    const half = (this.layout.rotaryDim ?? d) / 2;
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
    const r = this.layout.ropeScaling;
    const long = r?.type === 'longrope' && T > r.originalMaxPositions;
    if (this.rope.T < T || this.rope.long !== long) {
      const d = this.layout.rotaryDim ?? this.config.headDim;
      const half = d / 2;
      const cos = new Float32Array(T * half);
      const sin = new Float32Array(T * half);
      // LongRoPE scales cos and sin (hence q·k by its square); other schemes leave them unit.
      const m = r?.type === 'longrope' ? r.attentionFactor : 1;
      for (let i = 0; i < half; i++) {
        const invFreq = this.scaledFrequency(1 / this.config.ropeTheta ** ((2 * i) / d), i, long);
        for (let t = 0; t < T; t++) {
          cos[t * half + i] = m * Math.cos(t * invFreq);
          sin[t * half + i] = m * Math.sin(t * invFreq);
        }
      }
      Object.assign(this.rope, { cos, sin, T, long });
    }
    return this.rope;
  }

  /**
   * θ_i under rope_scaling ('longrope': θ_i / factor_i, config.ts). 'llama3' (Llama 3.1's _compute_llama3_parameters): wavelengths
   * 2π/θ above original/low_freq_factor are divided by `factor`, those below
   * original/high_freq_factor kept, and in between interpolated with
   * s = (original/λ − low) / (high − low): θ' = (1 − s)·θ/factor + s·θ.
   */
  private scaledFrequency(invFreq: number, i: number, long: boolean): number {
    const r = this.layout.ropeScaling;
    if (!r) return invFreq;
    if (r.type === 'linear') return invFreq / r.factor;
    if (r.type === 'longrope') return invFreq / (long ? r.longFactor : r.shortFactor)[i]!;
    const wavelen = (2 * Math.PI) / invFreq;
    if (wavelen < r.originalMaxPositions / r.highFreqFactor) return invFreq;
    if (wavelen > r.originalMaxPositions / r.lowFreqFactor) return invFreq / r.factor;
    const s = (r.originalMaxPositions / wavelen - r.lowFreqFactor) / (r.highFreqFactor - r.lowFreqFactor);
    return ((1 - s) * invFreq) / r.factor + s * invFreq;
  }
}

/**
 * The activation buffer of a sparse MoE MLP for `rows` tokens, one Float32Array so that
 * sequential calibration keeps it like a dense MLP's activation: every expert's activations
 * [rows, expertIntermediate] in expert order, the shared expert's [rows, sharedIntermediate],
 * then each token's top-k expert indices (as floats, exact below 2^24) and weights [rows, k],
 * then the shared expert's sigmoid gate [rows].
 */
class MoePacking {
  /** Floats per token. */
  readonly width: number;

  constructor(readonly layout: MoeLayout) {
    const { experts, expertIntermediate, sharedIntermediate = 0, topK } = layout;
    this.width = experts * expertIntermediate + sharedIntermediate + 2 * topK + (sharedIntermediate ? 1 : 0);
  }

  /** An expert's (or the shared expert's) activations [rows, F] inside the buffer. */
  activation(
    packed: Float32Array,
    rows: number,
    expert: number | 'shared',
  ): { x: Float32Array; cols: number } {
    const { experts, expertIntermediate: Fe, sharedIntermediate: Fs = 0 } = this.layout;
    if (expert === 'shared')
      return { x: packed.subarray(experts * rows * Fe, experts * rows * Fe + rows * Fs), cols: Fs };
    return { x: packed.subarray(expert * rows * Fe, (expert + 1) * rows * Fe), cols: Fe };
  }

  private get routingStart() {
    const { experts, expertIntermediate: Fe, sharedIntermediate: Fs = 0 } = this.layout;
    return experts * Fe + Fs;
  }

  routing(packed: Float32Array, rows: number): { experts: Float32Array; weights: Float32Array } {
    const at = this.routingStart * rows;
    const n = rows * this.layout.topK;
    return { experts: packed.subarray(at, at + n), weights: packed.subarray(at + n, at + 2 * n) };
  }

  sharedGate(packed: Float32Array, rows: number): Float32Array {
    const at = (this.routingStart + 2 * this.layout.topK) * rows;
    return packed.subarray(at, at + rows);
  }

  /**
   * Top-k routing of router logits [rows, experts] into the buffer: softmax in float64 rounded to
   * float32 (HF: softmax(dtype=float)), the k largest probabilities in descending order (torch.topk;
   * an exact tie keeps the lower index), divided by their sum when normTopK.
   */
  route(logits: Float32Array, rows: number, packed: Float32Array): void {
    const { experts: E, topK: k, normTopK } = this.layout;
    const { experts, weights } = this.routing(packed, rows);
    const p = new Float32Array(E);
    for (let r = 0; r < rows; r++) {
      let max = -Infinity;
      for (let e = 0; e < E; e++) max = Math.max(max, logits[r * E + e]!);
      let sum = 0;
      for (let e = 0; e < E; e++) sum += Math.exp(logits[r * E + e]! - max);
      for (let e = 0; e < E; e++) p[e] = Math.exp(logits[r * E + e]! - max) / sum;
      let total = 0;
      for (let i = 0; i < k; i++) {
        let best = -1;
        for (let e = 0; e < E; e++) {
          if (best >= 0 && p[e]! <= p[best]!) continue;
          let taken = false;
          for (let j = 0; j < i; j++) if (experts[r * k + j] === e) taken = true;
          if (!taken) best = e;
        }
        experts[r * k + i] = best;
        weights[r * k + i] = p[best]!;
        total += p[best]!;
      }
      if (normTopK) for (let i = 0; i < k; i++) weights[r * k + i] = weights[r * k + i]! / Math.fround(total);
    }
  }
}

/** The tokens (rows) whose top-k `experts` [rows, k] include expert e, in order. */
function rowsOf(experts: Float32Array, k: number, e: number): number[] {
  const rows: number[] = [];
  for (let i = 0; i < experts.length; i++) if (experts[i] === e) rows.push(Math.floor(i / k));
  return rows;
}

/** Rows `picked` of a row-major [*, cols] matrix, as one [picked.length, cols] matrix. */
function gatherRows(x: Float32Array, picked: readonly number[], cols: number): Float32Array {
  const out = new Float32Array(picked.length * cols);
  for (const [j, r] of picked.entries()) out.set(x.subarray(r * cols, (r + 1) * cols), j * cols);
  return out;
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

/** LayerNorm (Ba et al. 2016): (x − mean) / sqrt(var + eps) · w + b per row of width D (biased variance). */
export function layerNorm(
  x: Float32Array,
  w: Float32Array,
  b: Float32Array,
  D: number,
  eps: number,
  result?: Float32Array,
): Float32Array {
  const out = result ?? new Float32Array(x.length);
  for (let r = 0; r < x.length; r += D) {
    let sum = 0;
    for (let i = 0; i < D; i++) sum += x[r + i]!;
    const mean = sum / D;
    let ss = 0;
    for (let i = 0; i < D; i++) ss += (x[r + i]! - mean) ** 2;
    const inv = 1 / Math.sqrt(ss / D + eps);
    for (let i = 0; i < D; i++) out[r + i] = (x[r + i]! - mean) * inv * w[i]! + b[i]!;
  }
  return out;
}

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

/** erf through Numerical Recipes' Chebyshev fit of erfc (fractional error < 1.2e-7: float32-exact). */
function erf(x: number): number {
  const z = Math.abs(x);
  const t = 1 / (1 + 0.5 * z);
  const r =
    t *
    Math.exp(
      -z * z -
        1.26551223 +
        t *
          (1.00002368 +
            t *
              (0.37409196 +
                t *
                  (0.09678418 +
                    t *
                      (-0.18628806 +
                        t *
                          (0.27886807 +
                            t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))),
    );
  return x >= 0 ? 1 - r : r - 1;
}

/** The MLP activation in place (Hugging Face ACT2FN semantics). */
function applyActivation(x: Float32Array, act: Activation): Float32Array {
  switch (act) {
    case 'silu':
      for (let i = 0; i < x.length; i++) x[i] = x[i]! / (1 + Math.exp(-x[i]!));
      break;
    case 'gelu': // exact: x·Φ(x) (Hendrycks & Gimpel 2016)
      for (let i = 0; i < x.length; i++) x[i] = 0.5 * x[i]! * (1 + erf(x[i]! / Math.SQRT2));
      break;
    case 'gelu_tanh': // GPT-2's gelu_new = torch gelu(approximate='tanh')
      for (let i = 0; i < x.length; i++) {
        const v = x[i]!;
        x[i] = 0.5 * v * (1 + Math.tanh(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)));
      }
      break;
    case 'relu':
      for (let i = 0; i < x.length; i++) x[i] = Math.max(0, x[i]!);
      break;
  }
  return x;
}

function addInPlace(a: Float32Array, b: Float32Array): void {
  for (let i = 0; i < a.length; i++) a[i]! += b[i]!;
}

/** y[r, :] += b for every row r. */
function addRowVector(y: Float32Array, b: Float32Array): void {
  for (let r = 0; r < y.length; r += b.length) for (let i = 0; i < b.length; i++) y[r + i]! += b[i]!;
}
