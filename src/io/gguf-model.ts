/**
 * A Llama GGUF file as a ptqkit model: hyper-parameters from the llama.* metadata, tensors
 * dequantized to float32 (ggml's dequantize_row_*) under Hugging Face names, Q/K rows put back
 * into rotate_half order (the inverse of the exporter's permute), and the file's own vocabulary.
 * GGUF v1 files written from llama2.c checkpoints ("Meta AI original pth" layout) are in
 * llama.cpp's row order too, so the same inverse applies.
 */
import { ConfigError } from '../errors.js';
import { hfTensorName, inverseOrder, qkRowOrder } from '../export/gguf-names.js';
import type { ModelConfig } from '../model/config.js';
import type { TensorMap } from '../tensor.js';
import { GgufFile } from './gguf.js';
import { GgufTokenizer } from './gguf-tokenizer.js';

export async function readGgufModel(
  file: string,
): Promise<{ config: ModelConfig; weights: TensorMap; tokenizer: GgufTokenizer }> {
  const g = await GgufFile.open(file);
  try {
    const arch = g.get('general.architecture');
    if (arch !== 'llama') {
      throw new ConfigError('unsupported GGUF architecture', {
        file,
        field: 'general.architecture',
        expected: '"llama"',
        got: JSON.stringify(arch),
      });
    }
    const int = (key: string, fallback?: number): number => {
      const v = g.get(key) ?? fallback;
      const n = typeof v === 'bigint' ? Number(v) : v;
      if (typeof n !== 'number' || !Number.isInteger(n) || n <= 0) {
        throw new ConfigError('missing or invalid hyper-parameter', {
          file,
          field: key,
          expected: 'a positive integer',
          got: String(v),
        });
      }
      return n;
    };
    const tokenizer = GgufTokenizer.fromGguf(g);
    const hidden = int('llama.embedding_length');
    const heads = int('llama.attention.head_count');
    const embd = g.tensor('token_embd.weight');
    const eps = g.get('llama.attention.layer_norm_rms_epsilon');
    const theta = g.get('llama.rope.freq_base');
    const config: ModelConfig = {
      modelType: 'llama',
      vocabSize: int('llama.vocab_size', embd.dims[1]),
      hiddenSize: hidden,
      intermediateSize: int('llama.feed_forward_length'),
      numLayers: int('llama.block_count'),
      numHeads: heads,
      numKvHeads: int('llama.attention.head_count_kv', heads),
      headDim: int('llama.attention.key_length', hidden / heads),
      maxPositions: int('llama.context_length'),
      ropeTheta: typeof theta === 'number' ? theta : 10000,
      normEps: typeof eps === 'number' ? eps : 1e-5,
      tiedEmbeddings: !g.has('output.weight'),
      bosTokenId: tokenizer.bosId,
      eosTokenId: (() => {
        const v = g.get('tokenizer.ggml.eos_token_id');
        return typeof v === 'number' ? v : undefined;
      })(),
    };
    const weights: TensorMap = new Map();
    for (const t of g.tensors) {
      const name = hfTensorName(t.name, file);
      const shape = [...t.dims].reverse();
      let data = await g.readFloat32(t.name);
      const order = qkRowOrder(name, config);
      if (order) {
        const back = inverseOrder(order);
        const cols = shape[1]!;
        const out = new Float32Array(data.length);
        for (let r = 0; r < back.length; r++)
          out.set(data.subarray(back[r]! * cols, (back[r]! + 1) * cols), r * cols);
        data = out;
      }
      weights.set(name, { shape, data });
    }
    return { config, weights, tokenizer };
  } finally {
    await g.close();
  }
}
