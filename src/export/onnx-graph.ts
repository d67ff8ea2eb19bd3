/**
 * The Llama-family decoder as one ONNX graph with a KV cache, in the input/output naming
 * that Hugging Face Optimum exports and transformers.js feeds (`decoder_forward` in
 * transformers.js models/modeling_utils.js, cache names from configs.js `getKeyValueNames`):
 *
 *   inputs   input_ids                 int64 [batch_size, sequence_length]
 *            attention_mask            int64 [batch_size, total_sequence_length]  (1 = token, 0 = padding)
 *            position_ids              int64 [batch_size, sequence_length]
 *            past_key_values.{i}.key   float [batch_size, kv_heads, past_sequence_length, head_dim]
 *            past_key_values.{i}.value float (same)
 *   outputs  logits                    float [batch_size, sequence_length, vocab]
 *            present.{i}.key / .value  float [batch_size, kv_heads, total_sequence_length, head_dim]
 *
 * transformers.js starts generation with past tensors of length 0 (symbolic dims it cannot
 * resolve become 0), so every op here accepts an empty past.
 *
 * Per block (Hugging Face modeling_llama semantics, as src/model/decoder.ts computes them):
 *   h = RMSNorm(x)                         SimplifiedLayerNormalization (x / √(mean x² + ε) · w)
 *   q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ          MatMul on a float [in, out] weight, or com.microsoft MatMulNBits
 *   q, k = RoPE(q, k; position_ids)        com.microsoft RotaryEmbedding, rotate_half layout, cos/sin of the
 *                                          call's positions computed in the graph (float64 angles)
 *   K, V = concat(past, k), concat(past, v)  → present
 *   attn = softmax(q·Kᵀ/√d + mask) · V     plain ops; query head h reads KV head ⌊h / (heads/kv_heads)⌋ by
 *                                          viewing q as [B, kv_heads, group, S, d] against K as [B, kv_heads, 1, T, d]
 *   mask[b, s, t] = 0 if t ≤ past + s and attention_mask[b, t] = 1, else the float32 minimum
 *   x += attn·Woᵀ;  x += down(silu(gate(RMSNorm(x))) ⊙ up(RMSNorm(x)))
 * Attention is written in plain ops (not GroupQueryAttention) because GroupQueryAttention assumes
 * right padding, while transformers.js pads batches on the left for Llama tokenizers.
 */

import { type BlockLinear, blockPrefix, EMBED, FINAL_NORM, LM_HEAD } from '../formats/tensor-names.js';
import type { GraphAssembler } from '../io/onnx-builder.js';
import type { ModelConfig, RopeScaling } from '../model/config.js';
import type { MatMulNBitsWeight } from '../onnx/matmul-nbits.js';
import type { TensorMap } from '../tensor.js';

/** How one linear layer is stored in the graph. */
export type LinearWeight =
  | { kind: 'float'; weight: Float32Array; rows: number; cols: number }
  | { kind: 'nbits'; weight: MatMulNBitsWeight };

export interface DecoderGraphInput {
  config: ModelConfig;
  /** Float weights under Hugging Face names (norms, embeddings, and every linear kept in float). */
  weights: TensorMap;
  /** The storage of each linear layer (`model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`). */
  linear(name: string): LinearWeight;
}

export const INPUT_IDS = 'input_ids';
export const ATTENTION_MASK = 'attention_mask';
export const POSITION_IDS = 'position_ids';
export const LOGITS = 'logits';
export const pastName = (layer: number, kv: 'key' | 'value') => `past_key_values.${layer}.${kv}`;
export const presentName = (layer: number, kv: 'key' | 'value') => `present.${layer}.${kv}`;

const FLOAT32_MIN = -3.4028234663852886e38;
const MS = 'com.microsoft';

/** Adds the decoder to `g`; returns the graph's inputs and outputs. */
export function buildDecoderGraph(g: GraphAssembler, m: DecoderGraphInput) {
  const c = m.config;
  const { numHeads: H, numKvHeads: KVH, headDim: d, hiddenSize: D } = c;
  const group = H / KVH;
  const weight = (name: string) => m.weights.get(name)!.data;

  // ---- attention bias shared by all layers: [B, 1, 1, S, T] ----
  g.scope = '/model/attn_mask';
  const S = g.op1('Shape', [INPUT_IDS], { start: 1, end: 2 });
  const T = g.op1('Shape', [ATTENTION_MASK], { start: 1, end: 2 });
  const scalar = (x: string) => g.op1('Squeeze', [x, g.int64([0])]);
  const Ts = scalar(T);
  const past = scalar(g.op1('Sub', [T, S]));
  const keyPos = g.op1('Range', [g.int64([0], []), Ts, g.int64([1], [])]); // [T]
  const queryPos = g.op1('Unsqueeze', [g.op1('Range', [past, Ts, g.int64([1], [])]), g.int64([1])]); // [S, 1]
  const causal = g.op1('LessOrEqual', [keyPos, queryPos]); // [S, T]: key t visible from query s
  const notPadding = g.op1('Unsqueeze', [
    g.op1('Cast', [ATTENTION_MASK], { to: 9 /* BOOL */ }),
    g.int64([1, 2, 3]),
  ]);
  const visible = g.op1('And', [causal, notPadding]); // [B, 1, 1, S, T]
  const attnBias = g.op1('Where', [visible, g.float32([0], []), g.float32([FLOAT32_MIN], [])]);

  // ---- rotary angles, computed in the graph from position_ids: no table of max_position_embeddings rows ----
  // (a [max_positions, d/2] cache initializer is what optimum writes, but a config may ask for 2^27 positions).
  // Angles pos · θ_i in float64, then cos/sin rounded to float32: the values the float64 table held, exact for
  // any position. RotaryEmbedding reads row position_ids[b, s] of its caches; this call's caches hold one row per
  // (b, s), so it gets the row index b·S + s.
  g.scope = '/model/rotary';
  const half = d / 2;
  const invFreq = Float64Array.from({ length: half }, (_, i) =>
    scaledFrequency(1 / c.ropeTheta ** ((2 * i) / d), c.layout?.ropeScaling),
  );
  const positions = g.op1('Reshape', [
    g.op1('Cast', [POSITION_IDS], { to: 11 /* DOUBLE */ }),
    g.int64([-1, 1]),
  ]);
  const angles = g.op1('Mul', [
    positions,
    g.initializer('/model/rotary/inv_freq', 'float64', [half], invFreq),
  ]); // [B·S, d/2]
  const cosCache = g.op1('Cast', [g.op1('Cos', [angles])], { to: 1 /* FLOAT */ });
  const sinCache = g.op1('Cast', [g.op1('Sin', [angles])], { to: 1 /* FLOAT */ });
  const rows = g.op1('Range', [g.int64([0], []), g.op1('Size', [POSITION_IDS]), g.int64([1], [])]);
  const rotaryRows = g.op1('Reshape', [rows, g.op1('Shape', [POSITION_IDS])]); // [B, S]: b·S + s

  const rmsNorm = (x: string, name: string) =>
    g.op1('SimplifiedLayerNormalization', [x, g.initializer(name, 'float32', [D], weight(name))], {
      axis: -1,
      epsilon: { f: c.normEps },
      stash_type: 1,
    });
  const linear = (x: string, name: string) => applyLinear(g, x, name, m.linear(name));

  g.scope = '/model/embed_tokens';
  const table = g.initializer(EMBED, 'float32', [c.vocabSize, D], weight(EMBED));
  let x = g.op1('Gather', [table, INPUT_IDS]);

  const outputs: { name: string; dims: (number | string)[] }[] = [];
  const inputs: { name: string; dims: (number | string)[] }[] = [];
  for (let layer = 0; layer < c.numLayers; layer++) {
    const p = blockPrefix(layer);
    const w = (l: BlockLinear) => `${p}${l}.weight`;
    g.scope = `/model/layers.${layer}/attn`;
    const h = rmsNorm(x, `${p}input_layernorm.weight`);
    const rope = (t: string) =>
      g.op1('RotaryEmbedding', [t, rotaryRows, cosCache, sinCache], { interleaved: 0 }, MS);
    const q = rope(linear(h, w('self_attn.q_proj')));
    const k = rope(linear(h, w('self_attn.k_proj')));
    const v = linear(h, w('self_attn.v_proj'));
    const heads = (t: string) =>
      g.op1('Transpose', [g.op1('Reshape', [t, g.int64([0, 0, KVH, d])])], { perm: [0, 2, 1, 3] });
    // present = concat(past, new) along the sequence axis; the graph's cache inputs and outputs.
    const cache = (kv: 'key' | 'value', t: string) => {
      inputs.push({ name: pastName(layer, kv), dims: ['batch_size', KVH, 'past_sequence_length', d] });
      outputs.push({ name: presentName(layer, kv), dims: ['batch_size', KVH, 'total_sequence_length', d] });
      return g.op(
        'Concat',
        [pastName(layer, kv), heads(t)],
        { axis: 2 },
        { outputs: [presentName(layer, kv)] },
      )[0]!;
    };
    const keys = cache('key', k);
    const values = cache('value', v);
    // q [B, S, H·d] -> [B, KVH, group, S, d]; head h = kv·group + j, as Hugging Face's repeat_kv orders them.
    const q5 = g.op1('Transpose', [g.op1('Reshape', [q, g.int64([0, 0, KVH, group, d])])], {
      perm: [0, 2, 3, 1, 4],
    });
    const kT = g.op1('Unsqueeze', [g.op1('Transpose', [keys], { perm: [0, 1, 3, 2] }), g.int64([2])]); // [B, KVH, 1, d, T]
    const scores = g.op1('Mul', [g.op1('MatMul', [q5, kT]), g.float32([1 / Math.sqrt(d)], [])]);
    const probs = g.op1('Softmax', [g.op1('Add', [scores, attnBias])], { axis: -1 });
    const ctx = g.op1('MatMul', [probs, g.op1('Unsqueeze', [values, g.int64([2])])]); // [B, KVH, group, S, d]
    const merged = g.op1('Reshape', [
      g.op1('Transpose', [ctx], { perm: [0, 3, 1, 2, 4] }),
      g.int64([0, 0, H * d]),
    ]);
    x = g.op1('Add', [x, linear(merged, w('self_attn.o_proj'))]);

    g.scope = `/model/layers.${layer}/mlp`;
    const h2 = rmsNorm(x, `${p}post_attention_layernorm.weight`);
    const gate = linear(h2, w('mlp.gate_proj'));
    const act = g.op1('Mul', [g.op1('Mul', [gate, g.op1('Sigmoid', [gate])]), linear(h2, w('mlp.up_proj'))]);
    x = g.op1('Add', [x, linear(act, w('mlp.down_proj'))]);
  }

  g.scope = '/model/norm';
  const hidden = rmsNorm(x, FINAL_NORM);
  g.scope = '/lm_head';
  if (c.tiedEmbeddings) {
    // Tied head: reuse the embedding table through Gemm(transB) on the flattened rows instead of a transposed copy.
    const rows = g.op1('Reshape', [hidden, g.int64([-1, D])]);
    const flat = g.op1('Gemm', [rows, table], { transB: 1 });
    const shape = g.op1('Concat', [g.op1('Shape', [INPUT_IDS]), g.int64([c.vocabSize])], { axis: 0 });
    g.op('Reshape', [flat, shape], {}, { outputs: [LOGITS] });
  } else {
    g.op('Identity', [linear(hidden, LM_HEAD)], {}, { outputs: [LOGITS] });
  }

  return {
    inputs: [
      { name: INPUT_IDS, type: 'int64' as const, dims: ['batch_size', 'sequence_length'] },
      { name: ATTENTION_MASK, type: 'int64' as const, dims: ['batch_size', 'total_sequence_length'] },
      { name: POSITION_IDS, type: 'int64' as const, dims: ['batch_size', 'sequence_length'] },
      ...inputs.map((i) => ({ ...i, type: 'float32' as const })),
    ],
    outputs: [
      { name: LOGITS, type: 'float32' as const, dims: ['batch_size', 'sequence_length', c.vocabSize] },
      ...outputs.map((o) => ({ ...o, type: 'float32' as const })),
    ],
  };
}

/**
 * θ_i under Llama's rope_scaling, as src/model/decoder.ts computes it: 'linear' divides every
 * frequency by `factor`; 'llama3' (Llama 3.1's _compute_llama3_parameters) divides wavelengths
 * 2π/θ above original/low_freq_factor by `factor`, keeps those below original/high_freq_factor and
 * interpolates in between with s = (original/λ − low) / (high − low): θ' = (1 − s)·θ/factor + s·θ.
 * 'longrope' switches its factors with the window length: the exporter refuses it (onnx.ts).
 */
export function scaledFrequency(invFreq: number, r: RopeScaling | undefined): number {
  if (!r) return invFreq;
  if (r.type === 'linear') return invFreq / r.factor;
  if (r.type !== 'llama3') throw new Error(`rope_scaling ${r.type} is not exported`);
  const wavelen = (2 * Math.PI) / invFreq;
  if (wavelen < r.originalMaxPositions / r.highFreqFactor) return invFreq;
  if (wavelen > r.originalMaxPositions / r.lowFreqFactor) return invFreq / r.factor;
  const s = (r.originalMaxPositions / wavelen - r.lowFreqFactor) / (r.highFreqFactor - r.lowFreqFactor);
  return ((1 - s) * invFreq) / r.factor + s * invFreq;
}

/** y = x·Wᵀ for a weight stored as float [in, out] (MatMul) or as MatMulNBits codes. */
export function applyLinear(g: GraphAssembler, x: string, name: string, w: LinearWeight): string {
  const base = name.replace(/\.weight$/, '');
  if (w.kind === 'float') {
    // MatMul wants B as [in, out]: the transpose of Hugging Face's [out, in].
    const { rows: N, cols: K } = w;
    const t = new Float32Array(K * N);
    for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) t[k * N + n] = w.weight[n * K + k]!;
    return g.op1('MatMul', [x, g.initializer(`${base}.weight_T`, 'float32', [K, N], t)]);
  }
  const q = w.weight;
  let input = x;
  if (q.inputPermutation) {
    const perm = g.initializer(
      `${base}.input_order`,
      'int64',
      [q.K],
      BigInt64Array.from(q.inputPermutation, BigInt),
    );
    input = g.op1('Gather', [input, perm], { axis: -1 });
  }
  if (q.inputScales)
    input = g.op1('Mul', [input, g.initializer(`${base}.input_scales`, 'float32', [q.K], q.inputScales)]);
  const inputs = [
    input,
    g.initializer(`${base}.weight_Q${q.bits}`, 'uint8', [q.N, q.kBlocks, (q.blockSize * q.bits) / 8], q.B),
    g.initializer(`${base}.weight_scales`, 'float32', [q.N * q.kBlocks], q.scales),
  ];
  if (q.zeroPoints) {
    const zp = q.zeroPoints;
    inputs.push(
      g.initializer(`${base}.weight_zp`, zp instanceof Uint8Array ? 'uint8' : 'float32', [zp.length], zp),
    );
  }
  return g.op1('MatMulNBits', inputs, { K: q.K, N: q.N, bits: q.bits, block_size: q.blockSize }, MS);
}
