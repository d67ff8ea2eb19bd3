/**
 * Synthetic Llama-shaped models with random weights (for timing and memory only: their
 * outputs mean nothing). Weights ~ N(0, 0.02²), norms = 1, as a freshly initialized model.
 */

import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { linearWeightName } from '../src/formats/tensor-names.js';
import { SafetensorsWriter, type TensorHeader } from '../src/io/safetensors.js';
import { blockLinears, LLAMA } from '../src/model/architecture.js';
import type { ModelConfig } from '../src/model/config.js';
import { mulberry32 } from '../src/random.js';
import type { TensorMap } from '../src/tensor.js';
import { wordLevelTokenizer } from '../test/model/arch-reference.js';

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

/** Llama-3-8B's shape (8.03B parameters), for the streamed cases that never hold it in memory. */
export const LLAMA3_8B_SHAPE = {
  hidden_size: 4096,
  intermediate_size: 14336,
  // BENCH_8B_LAYERS: fewer blocks for a quick run of the same shapes (default Llama-3-8B's 32).
  num_hidden_layers: Number(process.env.BENCH_8B_LAYERS ?? 32),
  num_attention_heads: 32,
  num_key_value_heads: 8,
  vocab_size: 128256,
} as const;

/** config.json of a synthetic FP16 Llama checkpoint of the given shape, as writeSyntheticFp16Model writes it. */
export function syntheticFp16HfConfig(shape: ShapeName | '8B') {
  const eightB = shape === '8B';
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    ...(eightB ? LLAMA3_8B_SHAPE : SHAPES[shape]),
    max_position_embeddings: eightB ? 8192 : 2048,
    rope_theta: eightB ? 500000 : 10000,
    rms_norm_eps: 1e-5,
    tie_word_embeddings: false,
    hidden_act: 'silu',
    ...(eightB ? { bos_token_id: 128000, eos_token_id: 128001 } : {}),
    torch_dtype: 'float16',
  };
}

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

const SHARD_BYTES = 5e9;
const PIECE_BYTES = 64 * 1024 * 1024;
const GiB = 2 ** 30;

/** xorshift32 bits as FP16: random sign and 10-bit mantissa, exponent 8..11 (|w| in [2^-7, 2^-3)). */
function fillRandomHalf(out: Uint32Array, state: { s: number }): void {
  let s = state.s;
  for (let i = 0; i < out.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    // Two halves per word: keep sign and mantissa bits, set exponent 8 + (2 random bits).
    out[i] = (s & 0x83ff83ff) | ((((s >>> 10) & 0x00030003) + 0x00080008) << 10);
  }
  state.s = s;
}

/**
 * A Llama-shaped Hugging Face model on disk from its config.json (`hfConfig`): deterministic random
 * FP16 weights (fillRandomHalf; norms 1.0) written piece by piece in shards of at most 5 GB with
 * model.safetensors.index.json, as Hugging Face shards them, and a word-level tokenizer of 1000
 * words w0..w999 (the vocabulary only has to fit the embeddings).
 */
export async function writeSyntheticFp16Model(dir: string, hfConfig: Record<string, unknown>) {
  const config = LLAMA.parseConfig(hfConfig, 'bench');
  const shapes = [...LLAMA.expectedShapes(config)];
  let quantizedParameters = 0;
  for (let l = 0; l < config.numLayers; l++)
    for (const linear of blockLinears(config))
      quantizedParameters += shapes
        .find(([n]) => n === linearWeightName(l, linear))![1]
        .reduce((a, b) => a * b, 1);
  // Shards of at most SHARD_BYTES, in the order of the canonical names.
  const groups: TensorHeader[][] = [[]];
  let inShard = 0;
  let parameters = 0;
  for (const [name, shape] of shapes) {
    const bytes = shape.reduce((a, b) => a * b, 1) * 2;
    parameters += bytes / 2;
    if (inShard + bytes > SHARD_BYTES && groups.at(-1)!.length) {
      groups.push([]);
      inShard = 0;
    }
    groups.at(-1)!.push({ name, dtype: 'F16', shape });
    inShard += bytes;
  }
  const weightMap: Record<string, string> = {};
  const shards: { file: string; bytes: number }[] = [];
  const buf = new Uint32Array(PIECE_BYTES / 4);
  let seed = 1;
  for (const [i, group] of groups.entries()) {
    const file = `model-${String(i + 1).padStart(5, '0')}-of-${String(groups.length).padStart(5, '0')}.safetensors`;
    const w = await SafetensorsWriter.create(path.join(dir, file), group, { format: 'pt' });
    let bytes = 0;
    for (const t of group) {
      weightMap[t.name] = file;
      const total = t.shape.reduce((a, b) => a * b, 1) * 2;
      const state = { s: 0x9e3779b9 ^ seed++ };
      const norm = t.shape.length === 1;
      for (let at = 0; at < total; at += PIECE_BYTES) {
        const n = Math.min(PIECE_BYTES, total - at);
        if (norm)
          buf.fill(0x3c003c00); // RMSNorm gains of 1.0
        else fillRandomHalf(buf, state);
        await w.write(t.name, new Uint8Array(buf.buffer, 0, n));
      }
      bytes += total;
    }
    await w.finish();
    shards.push({ file: path.join(dir, file), bytes });
    process.stderr.write(`  wrote ${file} (${(bytes / GiB).toFixed(2)} GiB)\n`);
  }
  writeFileSync(
    path.join(dir, 'model.safetensors.index.json'),
    JSON.stringify({
      metadata: { total_size: shards.reduce((s, x) => s + x.bytes, 0) },
      weight_map: weightMap,
    }),
  );
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify(hfConfig, null, 2));
  writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(wordLevelTokenizer(1000)));
  return { parameters, quantizedParameters, shards };
}
