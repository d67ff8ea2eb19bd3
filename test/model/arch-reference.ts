/**
 * The independent side of the architecture tests: for each Hugging Face model_type, a tiny
 * random checkpoint in that model type's own layout (config.json keys, tensor names, shapes,
 * Conv1D [in, out] weights, fused projections) and a forward pass of it written as an ONNX
 * graph of standard operators (Gather, MatMul, LayerNormalization, Softmax, Erf, Tanh, ...)
 * straight from the checkpoint's tensors, following each modeling_<type>.py. It shares
 * nothing with src/model (no canonical names, no BlockLayout, no decoder code): onnxruntime
 * runs it and the test compares logits with ptqkit's Decoder on the same files.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { buildOnnxModelExternal, GraphAssembler } from '../../src/io/onnx-builder.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { seededRandom } from '../helpers.js';

export type HfConfig = Record<string, unknown>;
type Weights = Map<string, { shape: number[]; data: Float32Array }>;

/** A tiny model of one model_type: its config.json and a generator of its tensors. */
export interface ArchCase {
  name: string;
  config: HfConfig;
  tensors: (w: WeightMaker) => void;
  graph: (g: Ref, c: HfConfig, T: number) => string;
}

/** Random tensors under checkpoint names: N(0, std)-like uniforms, norm gains around `center`. */
export class WeightMaker {
  readonly map: Weights = new Map();
  private readonly rand: () => number;
  constructor(seed: number) {
    this.rand = seededRandom(seed);
  }
  add(name: string, shape: number[], std = 0.15, center = 0): void {
    const n = shape.reduce((a, b) => a * b, 1);
    // Uniform on [-√3σ, √3σ] has standard deviation σ.
    const data = Float32Array.from({ length: n }, () => center + (this.rand() * 2 - 1) * Math.sqrt(3) * std);
    this.map.set(name, { shape, data });
  }
  linear(name: string, out: number, inDim: number, bias: boolean): void {
    this.add(`${name}.weight`, [out, inDim], 1 / Math.sqrt(inDim));
    if (bias) this.add(`${name}.bias`, [out], 0.1);
  }
  /** GPT-2's Conv1D: weight [in, out]. */
  conv1d(name: string, inDim: number, out: number): void {
    this.add(`${name}.weight`, [inDim, out], 1 / Math.sqrt(inDim));
    this.add(`${name}.bias`, [out], 0.1);
  }
  norm(name: string, D: number, bias: boolean, center = 1): void {
    this.add(`${name}.weight`, [D], 0.1, center);
    if (bias) this.add(`${name}.bias`, [D], 0.1);
  }
}

/** Write config.json, model.safetensors and a word-level tokenizer.json into `dir`. */
export async function writeCheckpoint(dir: string, config: HfConfig, weights: Weights): Promise<void> {
  await writeFile(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
  await writeSafetensors(
    path.join(dir, 'model.safetensors'),
    [...weights].map(([name, t]) => ({ name, dtype: 'F32' as const, shape: t.shape, data: t.data })),
  );
  await writeFile(
    path.join(dir, 'tokenizer.json'),
    JSON.stringify(wordLevelTokenizer(config.vocab_size as number)),
  );
}

/** A tokenizer.json of `size` words w0, w1, ... (random-weight checkpoints need only a vocabulary). */
export function wordLevelTokenizer(size: number) {
  const vocab = Object.fromEntries(Array.from({ length: size }, (_, i) => [`w${i}`, i]));
  return {
    version: '1.0',
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: { type: 'Whitespace' },
    post_processor: null,
    decoder: null,
    model: { type: 'WordLevel', vocab, unk_token: 'w0' },
  };
}

/** Graph-building helpers over [B, T, ·] float tensors; weights are initializers under checkpoint names. */
export class Ref {
  readonly g = new GraphAssembler();
  constructor(
    readonly weights: Weights,
    readonly B: number,
    readonly T: number,
  ) {}

  w(name: string): string {
    const t = this.weights.get(name);
    if (!t) throw new Error(`reference: no tensor ${name}`);
    if (!this.g.initializers.some((i) => i.name === name))
      this.g.initializer(name, 'float32', t.shape, t.data);
    return name;
  }
  has(name: string): boolean {
    return this.weights.has(name);
  }
  op(op: string, inputs: string[], attributes: Record<string, number | number[] | { f: number }> = {}) {
    return this.g.op1(op, inputs, attributes);
  }
  c(values: number[], dims?: number[]): string {
    return this.g.float32(values, dims);
  }
  i64(values: number[], dims?: number[]): string {
    return this.g.int64(values, dims);
  }
  /** nn.Linear: x·Wᵀ + b with W [out, in]. */
  linear(x: string, name: string): string {
    const y = this.op('MatMul', [x, this.op('Transpose', [this.w(`${name}.weight`)], { perm: [1, 0] })]);
    return this.has(`${name}.bias`) ? this.op('Add', [y, this.w(`${name}.bias`)]) : y;
  }
  /** Conv1D: x·W + b with W [in, out]. */
  conv1d(x: string, name: string): string {
    return this.op('Add', [this.op('MatMul', [x, this.w(`${name}.weight`)]), this.w(`${name}.bias`)]);
  }
  layerNorm(x: string, name: string, eps: number): string {
    return this.op('LayerNormalization', [x, this.w(`${name}.weight`), this.w(`${name}.bias`)], {
      axis: -1,
      epsilon: { f: eps },
    });
  }
  /** x · rsqrt(mean(x²) + eps) · (w + offset), over the last axis. */
  rmsNorm(x: string, name: string, eps: number, offset = 0): string {
    const ms = this.op('ReduceMean', [this.op('Mul', [x, x])], { axes: [-1], keepdims: 1 });
    const inv = this.op('Reciprocal', [this.op('Sqrt', [this.op('Add', [ms, this.c([eps], [])])])]);
    let gain = this.w(`${name}.weight`);
    if (offset) gain = this.op('Add', [gain, this.c([offset], [])]);
    return this.op('Mul', [this.op('Mul', [x, inv]), gain]);
  }
  act(x: string, kind: string): string {
    switch (kind) {
      case 'silu':
        return this.op('Mul', [x, this.op('Sigmoid', [x])]);
      case 'relu':
        return this.op('Relu', [x]);
      case 'gelu': {
        const erf = this.op('Erf', [this.op('Div', [x, this.c([Math.SQRT2], [])])]);
        return this.op('Mul', [
          this.op('Mul', [x, this.c([0.5], [])]),
          this.op('Add', [erf, this.c([1], [])]),
        ]);
      }
      case 'gelu_new':
      case 'gelu_pytorch_tanh': {
        const cube = this.op('Mul', [this.op('Mul', [x, x]), x]);
        const inner = this.op('Mul', [
          this.op('Add', [x, this.op('Mul', [cube, this.c([0.044715], [])])]),
          this.c([Math.sqrt(2 / Math.PI)], []),
        ]);
        const t = this.op('Add', [this.op('Tanh', [inner]), this.c([1], [])]);
        return this.op('Mul', [this.op('Mul', [x, this.c([0.5], [])]), t]);
      }
    }
    throw new Error(`reference: activation ${kind}`);
  }
  split(x: string, sizes: number[], axis: number): string[] {
    return this.g.op('Split', [x, this.i64(sizes)], { axis }, { outputs: sizes.length });
  }
  /** [B, T, heads·d] -> [B, heads, T, d]. */
  heads(x: string, heads: number, d: number): string {
    return this.op('Transpose', [this.op('Reshape', [x, this.i64([this.B, this.T, heads, d])])], {
      perm: [0, 2, 1, 3],
    });
  }
  /**
   * rotate_half rotary embedding on the first r dims of x [B, h, T, d] (Hugging Face
   * apply_rotary_pos_emb; cos/sin [T, r] = cat(freqs, freqs)).
   */
  rope(x: string, d: number, r: number, invFreq: number[], attentionScaling = 1): string {
    const cos: number[] = [];
    const sin: number[] = [];
    for (let t = 0; t < this.T; t++) {
      for (let j = 0; j < r; j++) {
        const f = Math.fround(t * invFreq[j % (r / 2)]!);
        cos.push(Math.cos(f) * attentionScaling);
        sin.push(Math.sin(f) * attentionScaling);
      }
    }
    const [rot, pass] = r < d ? this.split(x, [r, d - r], 3) : [x, undefined];
    const [x1, x2] = this.split(rot!, [r / 2, r / 2], 3);
    const rotated = this.op('Concat', [this.op('Neg', [x2!]), x1!], { axis: 3 });
    const out = this.op('Add', [
      this.op('Mul', [rot!, this.c(cos, [this.T, r])]),
      this.op('Mul', [rotated, this.c(sin, [this.T, r])]),
    ]);
    return pass ? this.op('Concat', [out, pass], { axis: 3 }) : out;
  }
  /**
   * Eager attention of modeling_llama & co.: repeat_kv, scores·scale, optional soft cap, causal
   * (and sliding-window) mask, softmax, ·v; q [B, H, T, d], k/v [B, KVH, T, d] -> [B, T, H·d].
   */
  attention(
    q: string,
    k: string,
    v: string,
    o: { heads: number; kvHeads: number; d: number; scale: number; window?: number; softcap?: number },
  ): string {
    const { B, T } = this;
    const g = o.heads / o.kvHeads;
    const repeat = (x: string) =>
      g === 1
        ? x
        : this.op('Reshape', [
            this.op('Expand', [
              this.op('Reshape', [x, this.i64([B, o.kvHeads, 1, T, o.d])]),
              this.i64([B, o.kvHeads, g, T, o.d]),
            ]),
            this.i64([B, o.heads, T, o.d]),
          ]);
    let s = this.op('Mul', [
      this.op('MatMul', [q, this.op('Transpose', [repeat(k)], { perm: [0, 1, 3, 2] })]),
      this.c([o.scale], []),
    ]);
    if (o.softcap) {
      const cap = this.c([o.softcap], []);
      s = this.op('Mul', [this.op('Tanh', [this.op('Div', [s, cap])]), cap]);
    }
    const mask: number[] = [];
    for (let t = 0; t < T; t++)
      for (let j = 0; j < T; j++) mask.push(j <= t && (!o.window || t - j < o.window) ? 0 : -1e30);
    const p = this.op('Softmax', [this.op('Add', [s, this.c(mask, [T, T])])], { axis: -1 });
    const out = this.op('MatMul', [p, repeat(v)]);
    return this.op('Reshape', [
      this.op('Transpose', [out], { perm: [0, 2, 1, 3] }),
      this.i64([B, T, o.heads * o.d]),
    ]);
  }
  embed(name: string): string {
    return this.op('Gather', [this.w(name), 'input_ids'], { axis: 0 });
  }
  /** Rows offset..offset+T-1 of a learned position table, [T, D]. */
  positions(name: string, offset: number): string {
    return this.op('Gather', [this.w(name), this.i64(Array.from({ length: this.T }, (_, t) => t + offset))], {
      axis: 0,
    });
  }
  /** h·Eᵀ for a tied embedding or nn.Linear head. */
  logits(h: string, head: string): string {
    return this.op('MatMul', [h, this.op('Transpose', [this.w(head)], { perm: [1, 0] })]);
  }

  async run(logits: string, tokens: Int32Array, vocab: number): Promise<Float32Array> {
    this.g.op('Identity', [logits], {}, { outputs: ['logits'] });
    const { model } = buildOnnxModelExternal({
      name: 'reference',
      nodes: this.g.nodes,
      inputs: [{ name: 'input_ids', type: 'int64', dims: [this.B, this.T] }],
      outputs: [{ name: 'logits', type: 'float32', dims: [this.B, this.T, vocab] }],
      initializers: this.g.initializers,
      opset: 17,
    });
    const session = await ort.InferenceSession.create(model, { graphOptimizationLevel: 'disabled' });
    const ids = new ort.Tensor(
      'int64',
      BigInt64Array.from(tokens, (t) => BigInt(t)),
      [this.B, this.T],
    );
    return (await session.run({ input_ids: ids })).logits!.data as Float32Array;
  }
}

/** Hugging Face's default inverse frequencies base^(-2i/dim), and Llama 3's rescaling of them. */
export function invFrequencies(
  base: number,
  dim: number,
  scaling?: Record<string, number | string>,
): number[] {
  const inv = Array.from({ length: dim / 2 }, (_, i) => 1 / base ** ((2 * i) / dim));
  if (!scaling) return inv;
  const factor = scaling.factor as number;
  const low = scaling.low_freq_factor as number;
  const high = scaling.high_freq_factor as number;
  const old = scaling.original_max_position_embeddings as number;
  return inv.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    const scaled = wavelen > old / low ? f / factor : f;
    if (wavelen < old / high || wavelen > old / low) return scaled;
    const smooth = (old / wavelen - low) / (high - low);
    return ((1 - smooth) * scaled) / factor + smooth * scaled;
  });
}

const num = (c: HfConfig, key: string, fallback?: number): number =>
  (c[key] as number | undefined) ?? fallback!;

/** The dimensions of a Llama-layout config.json. */
function llamaDims(c: HfConfig) {
  const D = num(c, 'hidden_size');
  const H = num(c, 'num_attention_heads');
  const d = num(c, 'head_dim', D / H);
  return {
    type: c.model_type as string,
    D,
    H,
    KVH: num(c, 'num_key_value_heads', H),
    d,
    I: num(c, 'intermediate_size'),
  };
}

/** modeling_{llama,mistral,mixtral,qwen2,qwen2_moe,qwen3,qwen3_moe,gemma,gemma2,phi3}.py as one graph, switched on model_type. */
function llamaFamily(g: Ref, c: HfConfig, T: number): string {
  const { type, D, H, KVH, d, I } = llamaDims(c);
  const eps = num(c, 'rms_norm_eps');
  const gemma = type === 'gemma' || type === 'gemma2';
  const offset = gemma ? 1 : 0;
  const r = d * num(c, 'partial_rotary_factor', 1);
  const scaling = c.rope_scaling as Record<string, number | string | number[]> | undefined;
  let invFreq: number[];
  let attentionScaling = 1;
  if (scaling?.rope_type === 'longrope') {
    // _compute_longrope_parameters, with Phi-3's top-level original_max_position_embeddings.
    const original = num(c, 'original_max_position_embeddings');
    const factor = num(c, 'max_position_embeddings') / original;
    attentionScaling = Math.sqrt(1 + Math.log(factor) / Math.log(original));
    const ext = (T > original ? scaling.long_factor : scaling.short_factor) as number[];
    invFreq = invFrequencies(num(c, 'rope_theta', 10000), r).map((f, i) => f / ext[i]!);
  } else {
    invFreq = invFrequencies(num(c, 'rope_theta', 10000), r, scaling as Record<string, number>);
  }
  let x = g.embed('model.embed_tokens.weight');
  if (gemma) x = g.op('Mul', [x, g.c([Math.fround(Math.sqrt(D))], [])]);
  for (let l = 0; l < num(c, 'num_hidden_layers'); l++) {
    const p = `model.layers.${l}.`;
    const h = g.rmsNorm(x, `${p}input_layernorm`, eps, offset);
    let [q, k, v] =
      type === 'phi3'
        ? g.split(g.linear(h, `${p}self_attn.qkv_proj`), [H * d, KVH * d, KVH * d], 2)
        : ['q_proj', 'k_proj', 'v_proj'].map((m) => g.linear(h, `${p}self_attn.${m}`));
    q = g.heads(q!, H, d);
    k = g.heads(k!, KVH, d);
    v = g.heads(v!, KVH, d);
    if (type === 'qwen3' || type === 'qwen3_moe') {
      q = g.rmsNorm(q, `${p}self_attn.q_norm`, eps);
      k = g.rmsNorm(k, `${p}self_attn.k_norm`, eps);
    }
    q = g.rope(q, d, r, invFreq, attentionScaling);
    k = g.rope(k, d, r, invFreq, attentionScaling);
    let window: number | undefined;
    if (type === 'mistral' || type === 'phi3') window = c.sliding_window as number;
    if (type === 'gemma2' && l % 2 === 0) window = c.sliding_window as number;
    const scale = type === 'gemma2' ? num(c, 'query_pre_attn_scalar') ** -0.5 : d ** -0.5;
    const softcap = type === 'gemma2' ? (c.attn_logit_softcapping as number) : undefined;
    const a = g.attention(q, k, v, { heads: H, kvHeads: KVH, d, scale, window, softcap });
    let o = g.linear(a, `${p}self_attn.o_proj`);
    if (type === 'gemma2') o = g.rmsNorm(o, `${p}post_attention_layernorm`, eps, 1);
    x = g.op('Add', [x, o]);
    const mlpNorm = type === 'gemma2' ? 'pre_feedforward_layernorm' : 'post_attention_layernorm';
    const h2 = g.rmsNorm(x, `${p}${mlpNorm}`, eps, offset);
    const [gate, up] =
      type === 'phi3'
        ? g.split(g.linear(h2, `${p}mlp.gate_up_proj`), [I, I], 2)
        : MOE_TYPES.includes(type)
          ? []
          : [g.linear(h2, `${p}mlp.gate_proj`), g.linear(h2, `${p}mlp.up_proj`)];
    const act = (gemma ? c.hidden_activation : c.hidden_act) as string;
    if (MOE_TYPES.includes(type)) {
      x = g.op('Add', [x, sparseMoe(g, c, p, h2)]);
      continue;
    }
    let m = g.linear(g.op('Mul', [g.act(gate!, act), up!]), `${p}mlp.down_proj`);
    if (type === 'gemma2') m = g.rmsNorm(m, `${p}post_feedforward_layernorm`, eps, 1);
    x = g.op('Add', [x, m]);
  }
  x = g.rmsNorm(x, 'model.norm', eps, offset);
  let logits = g.logits(x, c.tie_word_embeddings ? 'model.embed_tokens.weight' : 'lm_head.weight');
  if (type === 'gemma2') {
    const cap = g.c([num(c, 'final_logit_softcapping')], []);
    logits = g.op('Mul', [g.op('Tanh', [g.op('Div', [logits, cap])]), cap]);
  }
  return logits;
}

const MOE_TYPES = ['mixtral', 'qwen2_moe', 'qwen3_moe'];

/** Checkpoint names of a sparse MoE block's router and expert e's gate/up/down (Mixtral: w1/w3/w2). */
function moeNames(type: string, p: string) {
  if (type === 'mixtral') {
    const e = (i: number) => `${p}block_sparse_moe.experts.${i}.`;
    return {
      router: `${p}block_sparse_moe.gate`,
      gate: (i: number) => `${e(i)}w1`,
      up: (i: number) => `${e(i)}w3`,
      down: (i: number) => `${e(i)}w2`,
    };
  }
  const e = (i: number) => `${p}mlp.experts.${i}.`;
  return {
    router: `${p}mlp.gate`,
    gate: (i: number) => `${e(i)}gate_proj`,
    up: (i: number) => `${e(i)}up_proj`,
    down: (i: number) => `${e(i)}down_proj`,
  };
}

/**
 * MixtralSparseMoeBlock / Qwen2MoeSparseMoeBlock / Qwen3MoeSparseMoeBlock as a dense graph: every
 * expert runs on every token and is weighted by a [B, T, E] matrix that is zero outside the
 * token's top-k: softmax(router logits) -> TopK -> (renormalized: Mixtral always, Qwen iff
 * norm_topk_prob) -> ScatterElements into zeros. Qwen2-MoE adds sigmoid(shared_expert_gate(h))
 * · shared_expert(h).
 */
function sparseMoe(g: Ref, c: HfConfig, p: string, h: string): string {
  const type = c.model_type as string;
  const E = num(c, type === 'mixtral' ? 'num_local_experts' : 'num_experts');
  const k = num(c, 'num_experts_per_tok');
  const names = moeNames(type, p);
  const probs = g.op('Softmax', [g.linear(h, names.router)], { axis: -1 });
  let [top, idx] = g.g.op('TopK', [probs, g.i64([k])], { axis: -1, largest: 1, sorted: 1 }, { outputs: 2 });
  if (type === 'mixtral' || c.norm_topk_prob === true)
    top = g.op('Div', [top!, g.op('ReduceSum', [top!, g.i64([-1])], { keepdims: 1 })]);
  const dense = g.op('ScatterElements', [g.c(new Array(g.B * g.T * E).fill(0), [g.B, g.T, E]), idx!, top!], {
    axis: 2,
  });
  const expert = (gate: string, up: string, down: string) =>
    g.linear(g.op('Mul', [g.act(g.linear(h, gate), 'silu'), g.linear(h, up)]), down);
  let out: string | undefined;
  for (let e = 0; e < E; e++) {
    const weight = g.op('Gather', [dense, g.i64([e])], { axis: 2 });
    const y = g.op('Mul', [expert(names.gate(e), names.up(e), names.down(e)), weight]);
    out = out ? g.op('Add', [out, y]) : y;
  }
  if (type === 'qwen2_moe') {
    const s = `${p}mlp.shared_expert.`;
    const shared = expert(`${s}gate_proj`, `${s}up_proj`, `${s}down_proj`);
    const gate = g.op('Sigmoid', [g.linear(h, `${p}mlp.shared_expert_gate`)]);
    out = g.op('Add', [out!, g.op('Mul', [shared, gate])]);
  }
  return out!;
}

/** modeling_gpt2.py: learned positions, Conv1D, fused c_attn, gelu_new, tied head. */
function gpt2(g: Ref, c: HfConfig): string {
  const D = num(c, 'n_embd');
  const H = num(c, 'n_head');
  const d = D / H;
  const eps = num(c, 'layer_norm_epsilon');
  let x = g.op('Add', [g.embed('wte.weight'), g.positions('wpe.weight', 0)]);
  for (let l = 0; l < num(c, 'n_layer'); l++) {
    const p = `h.${l}.`;
    const [q, k, v] = g.split(g.conv1d(g.layerNorm(x, `${p}ln_1`, eps), `${p}attn.c_attn`), [D, D, D], 2);
    const a = g.attention(g.heads(q!, H, d), g.heads(k!, H, d), g.heads(v!, H, d), {
      heads: H,
      kvHeads: H,
      d,
      scale: d ** -0.5,
    });
    x = g.op('Add', [x, g.conv1d(a, `${p}attn.c_proj`)]);
    const m = g.conv1d(
      g.act(g.conv1d(g.layerNorm(x, `${p}ln_2`, eps), `${p}mlp.c_fc`), 'gelu_new'),
      `${p}mlp.c_proj`,
    );
    x = g.op('Add', [x, m]);
  }
  return g.logits(g.layerNorm(x, 'ln_f', eps), 'wte.weight');
}

/** modeling_opt.py (do_layer_norm_before): positions offset by 2, q scaled before q·k, ReLU. */
function opt(g: Ref, c: HfConfig): string {
  const D = num(c, 'hidden_size');
  const H = num(c, 'num_attention_heads');
  const d = D / H;
  let x = g.op('Add', [
    g.embed('model.decoder.embed_tokens.weight'),
    g.positions('model.decoder.embed_positions.weight', 2),
  ]);
  for (let l = 0; l < num(c, 'num_hidden_layers'); l++) {
    const p = `model.decoder.layers.${l}.`;
    const h = g.layerNorm(x, `${p}self_attn_layer_norm`, 1e-5);
    const q = g.op('Mul', [g.linear(h, `${p}self_attn.q_proj`), g.c([d ** -0.5], [])]);
    const [k, v] = ['k_proj', 'v_proj'].map((m) => g.heads(g.linear(h, `${p}self_attn.${m}`), H, d));
    const a = g.attention(g.heads(q, H, d), k!, v!, { heads: H, kvHeads: H, d, scale: 1 });
    x = g.op('Add', [x, g.linear(a, `${p}self_attn.out_proj`)]);
    const h2 = g.layerNorm(x, `${p}final_layer_norm`, 1e-5);
    x = g.op('Add', [x, g.linear(g.act(g.linear(h2, `${p}fc1`), 'relu'), `${p}fc2`)]);
  }
  return g.logits(
    g.layerNorm(x, 'model.decoder.final_layer_norm', 1e-5),
    'model.decoder.embed_tokens.weight',
  );
}

/** modeling_gpt_neox.py: per-head fused qkv, partial rotary, parallel (or sequential) residual. */
function gptNeox(g: Ref, c: HfConfig): string {
  const D = num(c, 'hidden_size');
  const H = num(c, 'num_attention_heads');
  const d = D / H;
  const eps = num(c, 'layer_norm_eps');
  const r = Math.floor(d * num(c, 'rotary_pct'));
  const invFreq = invFrequencies(num(c, 'rotary_emb_base'), r);
  let x = g.embed('gpt_neox.embed_in.weight');
  for (let l = 0; l < num(c, 'num_hidden_layers'); l++) {
    const p = `gpt_neox.layers.${l}.`;
    const qkv = g.op('Reshape', [
      g.linear(g.layerNorm(x, `${p}input_layernorm`, eps), `${p}attention.query_key_value`),
      g.i64([g.B, g.T, H, 3 * d]),
    ]);
    const [q, k, v] = g.split(qkv, [d, d, d], 3).map((t) => g.op('Transpose', [t], { perm: [0, 2, 1, 3] }));
    const a = g.attention(g.rope(q!, d, r, invFreq), g.rope(k!, d, r, invFreq), v!, {
      heads: H,
      kvHeads: H,
      d,
      scale: d ** -0.5,
    });
    const attnOut = g.linear(a, `${p}attention.dense`);
    const mlp = (y: string) =>
      g.linear(
        g.act(g.linear(g.layerNorm(y, `${p}post_attention_layernorm`, eps), `${p}mlp.dense_h_to_4h`), 'gelu'),
        `${p}mlp.dense_4h_to_h`,
      );
    if (c.use_parallel_residual) {
      x = g.op('Add', [g.op('Add', [mlp(x), attnOut]), x]);
    } else {
      x = g.op('Add', [attnOut, x]);
      x = g.op('Add', [mlp(x), x]);
    }
  }
  return g.logits(g.layerNorm(x, 'gpt_neox.final_layer_norm', eps), 'embed_out.weight');
}

const V = 96;

/** Llama-layout tensors (names of modeling_llama and the models that copy it), for c's vocab_size. */
export function llamaTensors(c: HfConfig, w: WeightMaker): void {
  const { type, D, H, KVH, d, I } = llamaDims(c);
  const V = num(c, 'vocab_size');
  const center = type.startsWith('gemma') ? 0 : 1;
  const bias = type === 'qwen2' || type === 'qwen2_moe';
  w.add('model.embed_tokens.weight', [V, D], 0.5);
  for (let l = 0; l < num(c, 'num_hidden_layers'); l++) {
    const p = `model.layers.${l}.`;
    w.norm(`${p}input_layernorm`, D, false, center);
    w.norm(`${p}post_attention_layernorm`, D, false, center);
    if (type === 'gemma2') {
      w.norm(`${p}pre_feedforward_layernorm`, D, false, center);
      w.norm(`${p}post_feedforward_layernorm`, D, false, center);
    }
    if (type === 'phi3') {
      w.linear(`${p}self_attn.qkv_proj`, (H + 2 * KVH) * d, D, false);
      w.linear(`${p}mlp.gate_up_proj`, 2 * I, D, false);
    } else {
      w.linear(`${p}self_attn.q_proj`, H * d, D, bias);
      w.linear(`${p}self_attn.k_proj`, KVH * d, D, bias);
      w.linear(`${p}self_attn.v_proj`, KVH * d, D, bias);
      if (!MOE_TYPES.includes(type)) {
        w.linear(`${p}mlp.gate_proj`, I, D, false);
        w.linear(`${p}mlp.up_proj`, I, D, false);
      }
    }
    w.linear(`${p}self_attn.o_proj`, D, H * d, false);
    if (MOE_TYPES.includes(type)) moeTensors(c, w, p, D);
    else w.linear(`${p}mlp.down_proj`, D, I, false);
    if (type === 'qwen3' || type === 'qwen3_moe') {
      w.norm(`${p}self_attn.q_norm`, d, false);
      w.norm(`${p}self_attn.k_norm`, d, false);
    }
  }
  w.norm('model.norm', D, false, center);
  if (!c.tie_word_embeddings) w.linear('lm_head', V, D, false);
}

/** A sparse MoE block's router, experts (and Qwen2-MoE's shared expert and its gate). */
function moeTensors(c: HfConfig, w: WeightMaker, p: string, D: number): void {
  const type = c.model_type as string;
  const names = moeNames(type, p);
  const E = num(c, type === 'mixtral' ? 'num_local_experts' : 'num_experts');
  const F = num(c, type === 'mixtral' ? 'intermediate_size' : 'moe_intermediate_size');
  // Router rows of std 1: logits spread enough that every expert wins some tokens.
  w.add(`${names.router}.weight`, [E, D], 1);
  for (let e = 0; e < E; e++) {
    w.linear(names.gate(e), F, D, false);
    w.linear(names.up(e), F, D, false);
    w.linear(names.down(e), D, F, false);
  }
  if (type === 'qwen2_moe') {
    const Fs = num(c, 'shared_expert_intermediate_size');
    w.linear(`${p}mlp.shared_expert.gate_proj`, Fs, D, false);
    w.linear(`${p}mlp.shared_expert.up_proj`, Fs, D, false);
    w.linear(`${p}mlp.shared_expert.down_proj`, D, Fs, false);
    w.linear(`${p}mlp.shared_expert_gate`, 1, D, false);
  }
}

const llamaCase = (name: string, config: HfConfig): ArchCase => ({
  name,
  config,
  tensors: (w) => llamaTensors(config, w),
  graph: (g, c, T) => llamaFamily(g, c, T),
});

const common = { vocab_size: V, num_hidden_layers: 2, max_position_embeddings: 64, torch_dtype: 'float32' };

export const CASES: ArchCase[] = [
  llamaCase('llama (Llama-3 rope scaling, GQA)', {
    ...common,
    model_type: 'llama',
    architectures: ['LlamaForCausalLM'],
    hidden_size: 64,
    intermediate_size: 96,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    rms_norm_eps: 1e-5,
    rope_theta: 500000,
    rope_scaling: {
      rope_type: 'llama3',
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 64,
    },
    hidden_act: 'silu',
    tie_word_embeddings: false,
  }),
  llamaCase('mistral (sliding window 5)', {
    ...common,
    model_type: 'mistral',
    hidden_size: 32,
    intermediate_size: 80,
    num_attention_heads: 4,
    num_key_value_heads: 1,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    sliding_window: 5,
    hidden_act: 'silu',
    tie_word_embeddings: false,
  }),
  llamaCase('qwen2 (q/k/v bias, tied)', {
    ...common,
    model_type: 'qwen2',
    hidden_size: 48,
    intermediate_size: 64,
    num_attention_heads: 6,
    num_key_value_heads: 2,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    use_sliding_window: false,
    sliding_window: 4,
    max_window_layers: 1,
    hidden_act: 'silu',
    tie_word_embeddings: true,
  }),
  llamaCase('qwen3 (q/k norm, head_dim != hidden/heads)', {
    ...common,
    model_type: 'qwen3',
    hidden_size: 32,
    intermediate_size: 64,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 16,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    attention_bias: false,
    hidden_act: 'silu',
    tie_word_embeddings: true,
  }),
  llamaCase('mixtral (sparse MoE: 4 experts, top-2 renormalized)', {
    ...common,
    model_type: 'mixtral',
    architectures: ['MixtralForCausalLM'],
    hidden_size: 32,
    intermediate_size: 48,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    num_local_experts: 4,
    num_experts_per_tok: 2,
    rms_norm_eps: 1e-5,
    rope_theta: 1000000,
    sliding_window: null,
    router_jitter_noise: 0,
    hidden_act: 'silu',
    tie_word_embeddings: false,
  }),
  llamaCase('qwen3_moe (q/k norm, 6 experts, top-2, norm_topk_prob)', {
    ...common,
    model_type: 'qwen3_moe',
    architectures: ['Qwen3MoeForCausalLM'],
    hidden_size: 32,
    intermediate_size: 64,
    moe_intermediate_size: 24,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 16,
    num_experts: 6,
    num_experts_per_tok: 2,
    norm_topk_prob: true,
    decoder_sparse_step: 1,
    mlp_only_layers: [],
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    attention_bias: false,
    hidden_act: 'silu',
    // As Qwen3-30B-A3B.
    tie_word_embeddings: false,
  }),
  llamaCase('qwen2_moe (q/k/v bias, 4 experts, top-3 not renormalized, gated shared expert)', {
    ...common,
    model_type: 'qwen2_moe',
    architectures: ['Qwen2MoeForCausalLM'],
    hidden_size: 32,
    intermediate_size: 64,
    moe_intermediate_size: 16,
    shared_expert_intermediate_size: 40,
    num_attention_heads: 4,
    num_key_value_heads: 4,
    num_experts: 4,
    num_experts_per_tok: 3,
    norm_topk_prob: false,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    use_sliding_window: false,
    hidden_act: 'silu',
    tie_word_embeddings: false,
  }),
  llamaCase('gemma ((1+w) norm, GeGLU, scaled embeddings)', {
    ...common,
    model_type: 'gemma',
    hidden_size: 32,
    intermediate_size: 64,
    num_attention_heads: 4,
    num_key_value_heads: 1,
    head_dim: 16,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    // As gemma-2b's config.json: hidden_act says exact GELU, the model uses hidden_activation.
    hidden_act: 'gelu',
    hidden_activation: 'gelu_pytorch_tanh',
    tie_word_embeddings: true,
  }),
  llamaCase('gemma2 (post-norms, soft-capping, query_pre_attn_scalar, local/global layers)', {
    ...common,
    model_type: 'gemma2',
    hidden_size: 32,
    intermediate_size: 64,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 16,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    query_pre_attn_scalar: 24,
    attn_logit_softcapping: 2,
    final_logit_softcapping: 8,
    sliding_window: 5,
    hidden_act: 'gelu_pytorch_tanh',
    hidden_activation: 'gelu_pytorch_tanh',
    tie_word_embeddings: true,
  }),
  llamaCase('phi3 (fused qkv_proj / gate_up_proj, partial rotary, sliding window)', {
    ...common,
    model_type: 'phi3',
    hidden_size: 64,
    intermediate_size: 64,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    // Phi-4-mini's fraction; onnxruntime's attention wants head_dim a multiple of 8.
    partial_rotary_factor: 0.75,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    sliding_window: 7,
    hidden_act: 'silu',
    tie_word_embeddings: false,
  }),
  // Phi-3.5 / Phi-4-mini style LongRoPE; windows of 12 tokens use the long factors past an
  // original context of 8 and the short ones within 16.
  ...[8, 16].map((original) =>
    llamaCase(`phi3 (LongRoPE, ${original < 12 ? 'long' : 'short'} factors)`, {
      ...common,
      model_type: 'phi3',
      hidden_size: 64,
      intermediate_size: 64,
      num_attention_heads: 4,
      num_key_value_heads: 4,
      partial_rotary_factor: 0.75,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      max_position_embeddings: 256,
      original_max_position_embeddings: original,
      rope_scaling: {
        type: 'longrope',
        rope_type: 'longrope',
        short_factor: [1, 1.1, 1.3, 2, 3.5, 6],
        long_factor: [1.2, 1.8, 3, 6, 12, 30],
      },
      hidden_act: 'silu',
      tie_word_embeddings: false,
    }),
  ),
  {
    name: 'gpt2 (Conv1D, fused c_attn, learned positions, gelu_new)',
    config: {
      model_type: 'gpt2',
      architectures: ['GPT2LMHeadModel'],
      vocab_size: V,
      n_embd: 32,
      n_head: 4,
      n_layer: 2,
      n_positions: 32,
      n_inner: null,
      activation_function: 'gelu_new',
      layer_norm_epsilon: 1e-5,
    },
    // Names as openai-community/gpt2's model.safetensors (saved from GPT2Model: no `transformer.`).
    tensors(w) {
      w.add('wte.weight', [V, 32], 0.5);
      w.add('wpe.weight', [32, 32], 0.3);
      for (let l = 0; l < 2; l++) {
        const p = `h.${l}.`;
        w.norm(`${p}ln_1`, 32, true);
        w.norm(`${p}ln_2`, 32, true);
        w.conv1d(`${p}attn.c_attn`, 32, 96);
        w.conv1d(`${p}attn.c_proj`, 32, 32);
        w.conv1d(`${p}mlp.c_fc`, 32, 128);
        w.conv1d(`${p}mlp.c_proj`, 128, 32);
        // The causal-mask buffer old GPT-2 checkpoints carry: not a weight.
        w.map.set(`${p}attn.bias`, { shape: [1, 1, 32, 32], data: new Float32Array(32 * 32).fill(1) });
      }
      w.norm('ln_f', 32, true);
    },
    graph: gpt2,
  },
  {
    name: 'opt (positions offset 2, ReLU, biases)',
    config: {
      model_type: 'opt',
      architectures: ['OPTForCausalLM'],
      vocab_size: V,
      hidden_size: 32,
      word_embed_proj_dim: 32,
      ffn_dim: 64,
      num_attention_heads: 4,
      num_hidden_layers: 2,
      max_position_embeddings: 32,
      activation_function: 'relu',
      do_layer_norm_before: true,
      enable_bias: true,
    },
    tensors(w) {
      w.add('model.decoder.embed_tokens.weight', [V, 32], 0.5);
      w.add('model.decoder.embed_positions.weight', [34, 32], 0.3);
      for (let l = 0; l < 2; l++) {
        const p = `model.decoder.layers.${l}.`;
        for (const m of ['q_proj', 'k_proj', 'v_proj', 'out_proj'])
          w.linear(`${p}self_attn.${m}`, 32, 32, true);
        w.norm(`${p}self_attn_layer_norm`, 32, true);
        w.norm(`${p}final_layer_norm`, 32, true);
        w.linear(`${p}fc1`, 64, 32, true);
        w.linear(`${p}fc2`, 32, 64, true);
      }
      w.norm('model.decoder.final_layer_norm', 32, true);
    },
    graph: opt,
  },
  ...[true, false].map(
    (parallel): ArchCase => ({
      name: `gpt_neox (${parallel ? 'parallel' : 'sequential'} residual, rotary_pct 0.25, per-head fused qkv)`,
      config: {
        model_type: 'gpt_neox',
        architectures: ['GPTNeoXForCausalLM'],
        vocab_size: V,
        hidden_size: 32,
        intermediate_size: 64,
        num_attention_heads: 2,
        num_hidden_layers: 2,
        max_position_embeddings: 64,
        rotary_pct: 0.25,
        rotary_emb_base: 10000,
        layer_norm_eps: 1e-5,
        hidden_act: 'gelu',
        use_parallel_residual: parallel,
        tie_word_embeddings: false,
      },
      tensors(w) {
        w.add('gpt_neox.embed_in.weight', [V, 32], 0.5);
        for (let l = 0; l < 2; l++) {
          const p = `gpt_neox.layers.${l}.`;
          w.norm(`${p}input_layernorm`, 32, true);
          w.norm(`${p}post_attention_layernorm`, 32, true);
          w.linear(`${p}attention.query_key_value`, 96, 32, true);
          w.linear(`${p}attention.dense`, 32, 32, true);
          w.linear(`${p}mlp.dense_h_to_4h`, 64, 32, true);
          w.linear(`${p}mlp.dense_4h_to_h`, 32, 64, true);
          w.map.set(`${p}attention.rotary_emb.inv_freq`, { shape: [2], data: Float32Array.of(1, 0.01) });
        }
        w.norm('gpt_neox.final_layer_norm', 32, true);
        w.linear('embed_out', V, 32, false);
      },
      graph: gptNeox,
    }),
  ),
];
