/**
 * An architecture is a description, not code: how its config.json maps to ModelConfig,
 * what its tensors are called and which shapes they must have, and which linear layers
 * a weight quantizer may touch. The forward pass (decoder.ts) reads only this description.
 */
import { ConfigError } from '../errors.js';
import type { ModelConfig } from './config.js';

/** The linear layers of one decoder block, in execution order (the order of sequential calibration). */
export const BLOCK_LINEARS = [
  'self_attn.q_proj',
  'self_attn.k_proj',
  'self_attn.v_proj',
  'self_attn.o_proj',
  'mlp.gate_proj',
  'mlp.up_proj',
  'mlp.down_proj',
] as const;
export type BlockLinear = (typeof BLOCK_LINEARS)[number];

export interface Architecture {
  readonly modelType: string;
  /** Normalize a Hugging Face config.json; `file` names it in errors. */
  parseConfig(json: Record<string, unknown>, file: string): ModelConfig;
  /** Every tensor the model needs, with its [out,in] / [n] shape. */
  expectedShapes(config: ModelConfig): Map<string, number[]>;
}

export const blockPrefix = (layer: number): string => `model.layers.${layer}.`;
export const linearWeightName = (layer: number, linear: BlockLinear): string =>
  `${blockPrefix(layer)}${linear}.weight`;

export const EMBED = 'model.embed_tokens.weight';
export const FINAL_NORM = 'model.norm.weight';
export const LM_HEAD = 'lm_head.weight';

/**
 * Upper bounds on hyper-parameters: generous (10-100x the largest published models) yet far
 * below what would make loops or allocations driven by config.json run away (1e12 layers).
 */
export const CONFIG_LIMITS = {
  vocab_size: 2 ** 24,
  hidden_size: 2 ** 17,
  intermediate_size: 2 ** 20,
  num_hidden_layers: 2 ** 12,
  num_attention_heads: 2 ** 12,
  num_key_value_heads: 2 ** 12,
  head_dim: 2 ** 12,
  max_position_embeddings: 2 ** 27,
} as const;

function integer(
  json: Record<string, unknown>,
  key: keyof typeof CONFIG_LIMITS,
  file: string,
  fallback?: number,
): number {
  const v = json[key] ?? fallback;
  const max = CONFIG_LIMITS[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0 || v > max) {
    throw new ConfigError(v === undefined ? 'missing hyper-parameter' : 'invalid hyper-parameter', {
      file,
      field: key,
      expected: `a positive integer <= ${max}`,
      got: JSON.stringify(v),
    });
  }
  return v;
}

function positiveNumber(
  json: Record<string, unknown>,
  key: string,
  file: string,
  fallback: number,
  below = Infinity,
): number {
  const v = json[key] ?? fallback;
  if (typeof v !== 'number' || !(v > 0) || !(v < below)) {
    throw new ConfigError('invalid hyper-parameter', {
      file,
      field: key,
      expected: below === Infinity ? 'a finite positive number' : `a number in (0, ${below})`,
      got: JSON.stringify(v),
    });
  }
  return v;
}

/** A special token id: absent, a list (several EOS ids; not used here), or an id of the vocabulary. */
function tokenId(
  json: Record<string, unknown>,
  key: string,
  file: string,
  vocabSize: number,
): number | undefined {
  const v = json[key];
  if (typeof v !== 'number') return undefined;
  if (!Number.isInteger(v) || v < 0 || v >= vocabSize) {
    throw new ConfigError('invalid token id', {
      file,
      field: key,
      expected: `an integer in [0, ${vocabSize})`,
      got: JSON.stringify(v),
    });
  }
  return v;
}

/** Llama and the models that share its layout (RMSNorm, RoPE, GQA, SwiGLU). */
export const LLAMA: Architecture = {
  modelType: 'llama',
  parseConfig(json, file) {
    const hiddenSize = integer(json, 'hidden_size', file);
    const numHeads = integer(json, 'num_attention_heads', file);
    const numKvHeads = integer(json, 'num_key_value_heads', file, numHeads);
    if (json.rope_scaling != null) {
      throw new ConfigError('rope_scaling is not supported yet', {
        file,
        field: 'rope_scaling',
        expected: 'null',
      });
    }
    if (hiddenSize % numHeads !== 0 || numHeads % numKvHeads !== 0) {
      throw new ConfigError('inconsistent attention heads', {
        file,
        expected: 'hidden_size divisible by num_attention_heads, divisible by num_key_value_heads',
        got: `${hiddenSize}/${numHeads}/${numKvHeads}`,
      });
    }
    const vocabSize = integer(json, 'vocab_size', file);
    const headDim = integer(json, 'head_dim', file, hiddenSize / numHeads);
    // rotate_half pairs column i with i + d/2 of each head.
    if (headDim % 2 !== 0) {
      throw new ConfigError('head dimension must be even for rotary embeddings', {
        file,
        field: 'head_dim',
        expected: 'an even integer',
        got: String(headDim),
      });
    }
    return {
      modelType: 'llama',
      vocabSize,
      hiddenSize,
      intermediateSize: integer(json, 'intermediate_size', file),
      numLayers: integer(json, 'num_hidden_layers', file),
      numHeads,
      numKvHeads,
      headDim,
      maxPositions: integer(json, 'max_position_embeddings', file, 2048),
      ropeTheta: positiveNumber(json, 'rope_theta', file, 10000),
      normEps: positiveNumber(json, 'rms_norm_eps', file, 1e-6, 1),
      tiedEmbeddings: json.tie_word_embeddings !== false,
      bosTokenId: tokenId(json, 'bos_token_id', file, vocabSize),
      eosTokenId: tokenId(json, 'eos_token_id', file, vocabSize),
    };
  },
  expectedShapes(c) {
    const shapes = new Map<string, number[]>();
    const qDim = c.numHeads * c.headDim;
    const kvDim = c.numKvHeads * c.headDim;
    shapes.set(EMBED, [c.vocabSize, c.hiddenSize]);
    for (let i = 0; i < c.numLayers; i++) {
      const p = blockPrefix(i);
      shapes.set(`${p}input_layernorm.weight`, [c.hiddenSize]);
      shapes.set(`${p}post_attention_layernorm.weight`, [c.hiddenSize]);
      shapes.set(`${p}self_attn.q_proj.weight`, [qDim, c.hiddenSize]);
      shapes.set(`${p}self_attn.k_proj.weight`, [kvDim, c.hiddenSize]);
      shapes.set(`${p}self_attn.v_proj.weight`, [kvDim, c.hiddenSize]);
      shapes.set(`${p}self_attn.o_proj.weight`, [c.hiddenSize, qDim]);
      shapes.set(`${p}mlp.gate_proj.weight`, [c.intermediateSize, c.hiddenSize]);
      shapes.set(`${p}mlp.up_proj.weight`, [c.intermediateSize, c.hiddenSize]);
      shapes.set(`${p}mlp.down_proj.weight`, [c.hiddenSize, c.intermediateSize]);
    }
    shapes.set(FINAL_NORM, [c.hiddenSize]);
    if (!c.tiedEmbeddings) shapes.set(LM_HEAD, [c.vocabSize, c.hiddenSize]);
    return shapes;
  },
};

const REGISTRY = new Map<string, Architecture>([['llama', LLAMA]]);

export function architectureFor(modelType: unknown, file: string): Architecture {
  const arch = typeof modelType === 'string' ? REGISTRY.get(modelType) : undefined;
  if (!arch) {
    throw new ConfigError('unknown architecture', {
      file,
      field: 'model_type',
      expected: `one of ${[...REGISTRY.keys()].join(', ')}`,
      got: JSON.stringify(modelType),
    });
  }
  return arch;
}
