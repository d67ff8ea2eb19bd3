/**
 * The normalized hyper-parameters of a decoder-only transformer, independent of the
 * file it came from (Hugging Face config.json, llama2.c header, GGUF metadata).
 */
import type { LinearInputOps } from './input-ops.js';

export interface ModelConfig {
  /** Architecture key, e.g. 'llama' (Hugging Face `model_type`). */
  modelType: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Largest context the model was trained for. */
  maxPositions: number;
  ropeTheta: number;
  normEps: number;
  /** lm_head shares the token embedding matrix. */
  tiedEmbeddings: boolean;
  bosTokenId?: number;
  eosTokenId?: number;
  /** Inference-time operations on the inputs of block linears (activation quantization...). */
  linearInputOps?: LinearInputOps;
  /** How a block computes (norms, activation, biases, positions, residual); absent: LLAMA_LAYOUT. */
  layout?: BlockLayout;
}

/** Element-wise MLP activations, under their Hugging Face `hidden_act` semantics. */
export type Activation = 'silu' | 'gelu' | 'gelu_tanh' | 'relu';

/**
 * RoPE frequency rescaling for contexts beyond training (Hugging Face `rope_scaling`):
 * 'linear' divides every frequency by `factor` (position interpolation, arXiv:2306.15595);
 * 'llama3' divides only the low frequencies, with a smooth ramp between the two wavelength
 * thresholds (Llama 3.1's `_compute_llama3_parameters`); 'longrope' (Phi-3 128k, Phi-3.5,
 * Phi-4-mini; LongRoPE arXiv:2402.13753) divides frequency i by short_factor[i], or by
 * long_factor[i] for windows longer than the original context, and scales cos/sin by
 * `attentionFactor` (Hugging Face's `_compute_longrope_parameters`).
 */
export type RopeScaling =
  | { type: 'linear'; factor: number }
  | {
      type: 'llama3';
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositions: number;
    }
  | {
      type: 'longrope';
      shortFactor: number[];
      longFactor: number[];
      originalMaxPositions: number;
      attentionFactor: number;
    };

/**
 * Everything in which a decoder block departs from Llama's, resolved from config.json by the
 * architecture (architecture.ts); the forward pass (decoder.ts) reads nothing else.
 */
export interface BlockLayout {
  /** 'rms': RMSNorm; 'layer': LayerNorm with bias (GPT-2, OPT, NeoX). */
  norm: 'rms' | 'layer';
  /** Added to every norm gain: Gemma stores w and scales by (1 + w). */
  normOffset: number;
  activation: Activation;
  /** act(gate(h)) ⊙ up(h) (SwiGLU/GeGLU) rather than act(up(h)). */
  gatedMlp: boolean;
  qkvBias: boolean;
  oBias: boolean;
  mlpBias: boolean;
  /** Qwen3: RMSNorm over each head of q and of k before the rotary embedding. */
  qkNorm: boolean;
  /** Gemma-2: norms on the attention and MLP outputs before their residual adds. */
  postNorms: boolean;
  /** GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x)) instead of two sequential residual adds. */
  parallelResidual: boolean;
  /** 'rope': rotary q/k; 'learned': a position embedding table added to the token embeddings. */
  positions: 'rope' | 'learned';
  /** Row of position 0 in the learned table (OPT reserves 2). */
  positionOffset: number;
  /** Leading dimensions of each head that rotate (partial rotary: NeoX rotary_pct); the rest pass. */
  rotaryDim?: number;
  ropeScaling?: RopeScaling;
  /** Token embeddings are multiplied by this (Gemma: sqrt(hidden)). */
  embedScale: number;
  /** Softmax scale of q·k (default 1/sqrt(head_dim); Gemma-2: query_pre_attn_scalar^-1/2). */
  attentionScale?: number;
  /** cap·tanh(s/cap) on attention scores (Gemma-2 attn_logit_softcapping). */
  attentionSoftcap?: number;
  /** cap·tanh(z/cap) on the output logits (Gemma-2 final_logit_softcapping). */
  finalSoftcap?: number;
  /** Sliding attention window per layer (key s visible from t iff t − s < window); 0 = full causal. */
  windows?: number[];
  /** A sparse mixture-of-experts MLP in every block instead of the dense one (Mixtral, Qwen-MoE). */
  moe?: MoeLayout;
}

/**
 * A sparse MoE MLP (Mixtral: MixtralSparseMoeBlock, Qwen: Qwen{2,3}MoeSparseMoeBlock): router
 * logits h·Gᵀ, softmax over all experts (float32), the top-k experts of each token, their
 * weights optionally renormalized to sum 1; the output is Σ w_e · down_e(act(gate_e(h)) ⊙ up_e(h))
 * over the token's top-k, plus (Qwen2-MoE) sigmoid(h·g_sᵀ) · shared_expert(h).
 */
export interface MoeLayout {
  experts: number;
  topK: number;
  /** Divide the top-k weights by their sum (Mixtral always; Qwen-MoE iff norm_topk_prob). */
  normTopK: boolean;
  /** Intermediate width of each expert (Mixtral: intermediate_size; Qwen: moe_intermediate_size). */
  expertIntermediate: number;
  /** Qwen2-MoE: the shared expert's intermediate width (shared_expert_intermediate_size). */
  sharedIntermediate?: number;
}

/** The Llama block: RMSNorm, SwiGLU, no biases, full rotary, sequential residual. */
export const LLAMA_LAYOUT: BlockLayout = {
  norm: 'rms',
  normOffset: 0,
  activation: 'silu',
  gatedMlp: true,
  qkvBias: false,
  oBias: false,
  mlpBias: false,
  qkNorm: false,
  postNorms: false,
  parallelResidual: false,
  positions: 'rope',
  positionOffset: 0,
  embedScale: 1,
};
