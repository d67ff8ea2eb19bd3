/**
 * Synthetic Llama-shaped models with random weights (for timing and memory only: their
 * outputs mean nothing). Weights ~ N(0, 0.02²), norms = 1, as a freshly initialized model.
 */

import os from 'node:os';
import path from 'node:path';
import { LLAMA } from '../src/model/architecture.js';
import type { ModelConfig } from '../src/model/config.js';
import { mulberry32 } from '../src/random.js';
import type { TensorMap } from '../src/tensor.js';

/** Where bench files (safetensors, GGUF, tokens) are kept between runs: never committed (GBs). */
export const CACHE = process.env.PTQ_BENCH_CACHE ?? path.join(os.tmpdir(), 'ptqkit-bench');

export const SHAPES = {
  '100M': {
    hidden_size: 768,
    intermediate_size: 2048,
    num_hidden_layers: 12,
    num_attention_heads: 12,
    num_key_value_heads: 4,
    vocab_size: 32000,
  },
  // 551M: hidden 1536, 18 layers, 12/4 heads of 128, FFN 4096.
  '500M': {
    hidden_size: 1536,
    intermediate_size: 4096,
    num_hidden_layers: 18,
    num_attention_heads: 12,
    num_key_value_heads: 4,
    vocab_size: 32000,
  },
  // TinyLlama-1.1B's shape: 1.10B parameters.
  '1B': {
    hidden_size: 2048,
    intermediate_size: 5632,
    num_hidden_layers: 22,
    num_attention_heads: 32,
    num_key_value_heads: 4,
    vocab_size: 32000,
  },
} as const;

export type ShapeName = keyof typeof SHAPES;

export function syntheticConfig(shape: ShapeName): ModelConfig {
  return LLAMA.parseConfig(
    { model_type: 'llama', max_position_embeddings: 2048, tie_word_embeddings: false, ...SHAPES[shape] },
    `synthetic ${shape}`,
  );
}

export function syntheticWeights(config: ModelConfig, seed = 1): TensorMap {
  const rand = mulberry32(seed);
  const weights: TensorMap = new Map();
  for (const [name, shape] of LLAMA.expectedShapes(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    if (shape.length === 1) data.fill(1);
    else for (let i = 0; i < n; i++) data[i] = (rand() + rand() + rand() - 1.5) * 0.04; // ≈ N(0, 0.02²)
    weights.set(name, { shape, data });
  }
  return weights;
}
