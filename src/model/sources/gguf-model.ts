/**
 * A Llama GGUF file as a ptqkit model: hyper-parameters from the llama.* metadata, tensors
 * dequantized to float32 (ggml's dequantize_row_*) under Hugging Face names, Q/K rows put back
 * into rotate_half order (the inverse of the exporter's permute), and the file's own vocabulary.
 * GGUF v1 files written from llama2.c checkpoints ("Meta AI original pth" layout) are in
 * llama.cpp's row order too, so the same inverse applies.
 */
import { ConfigError, FormatError, UsageError } from '../../errors.js';
import { hfTensorName, inverseOrder, qkRowOrder } from '../../formats/gguf-names.js';
import { GgufFile } from '../../io/gguf.js';
import { GgufTokenizer } from '../../io/gguf-tokenizer.js';
import { brief } from '../../io/json.js';
import type { TensorMap } from '../../tensor.js';
import type { ModelConfig } from '../config.js';
import type { LinearInputOps } from '../input-ops.js';
import type { RawTensors } from '../weight-source.js';
import {
  amxMultipliesInFloat,
  type GgmlQuantizer,
  hostGgmlQuantizer,
  hostHasAmx,
} from './gguf-activations.js';

export async function readGgufModel(
  file: string,
): Promise<{ config: ModelConfig; weights: TensorMap; tokenizer: GgufTokenizer }> {
  const { config, tokenizer, raw } = await openGgufModel(file);
  try {
    const weights: TensorMap = new Map();
    for (const name of raw.names())
      weights.set(name, { shape: [...raw.shape(name)], data: await raw.readFloat32(name) });
    return { config, weights, tokenizer };
  } finally {
    await raw.close();
  }
}

/**
 * The file's hyper-parameters and vocabulary, and its tensors located under Hugging Face names
 * without reading them: `raw` dequantizes one at a time, in file order. The caller closes it.
 */
export async function openGgufModel(
  file: string,
): Promise<{ config: ModelConfig; tokenizer: GgufTokenizer; raw: RawTensors }> {
  const g = await GgufFile.open(file);
  try {
    const arch = g.get('general.architecture');
    if (arch !== 'llama') {
      throw new ConfigError('unsupported GGUF architecture', {
        file,
        field: 'general.architecture',
        expected: '"llama"',
        got: brief(arch),
      });
    }
    // A Mixtral GGUF is "llama" too; its stacked expert tensors have no reader here yet.
    if (g.get('llama.expert_count') !== undefined) {
      throw new ConfigError('GGUF MoE models cannot be read yet', {
        file,
        field: 'llama.expert_count',
        expected: 'a dense Llama GGUF (read the Hugging Face checkpoint instead)',
        got: brief(g.get('llama.expert_count')),
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
          got: typeof v === 'bigint' ? String(v) : brief(v),
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
    const ggufNames = new Map(g.tensors.map((t) => [hfTensorName(t.name, file), t]));
    const at = (name: string) => {
      const t = ggufNames.get(name);
      if (!t) throw new FormatError('no such tensor', { file, field: name });
      return t;
    };
    const raw: RawTensors = {
      names: () => [...ggufNames.keys()],
      shape: (name) => [...at(name).dims].reverse(),
      async readFloat32(name) {
        const t = at(name);
        const data = await g.readFloat32(t.name);
        const order = qkRowOrder(name, config);
        if (!order) return data;
        const back = inverseOrder(order);
        const cols = t.dims.length === 1 ? 1 : t.dims[0]!; // a bias: one value per row
        const out = new Float32Array(data.length);
        for (let r = 0; r < back.length; r++)
          out.set(data.subarray(back[r]! * cols, (back[r]! + 1) * cols), r * cols);
        return out;
      },
      close: () => g.close(),
    };
    return { config, tokenizer, raw };
  } catch (e) {
    await g.close();
    throw e;
  }
}

export interface GgufStorage {
  /** ggml type name of every tensor, by Hugging Face name. */
  types: Record<string, string>;
  /** GGUF dims (ne: innermost first, [in, out] for a matrix) of every tensor, by Hugging Face name. */
  dims: Record<string, number[]>;
  /** Bits per weight of the 2-D tensors as the file stores them (what the export reports). */
  bitsPerWeight: number;
  /** Bytes of tensor data. */
  totalBytes: number;
}

/** How a GGUF stores its tensors (header only; no tensor data is read). */
export async function ggufStorage(file: string): Promise<GgufStorage> {
  const g = await GgufFile.open(file);
  try {
    const types: Record<string, string> = {};
    const dims: Record<string, number[]> = {};
    let matrixBits = 0;
    let matrixWeights = 0;
    let totalBytes = 0;
    for (const t of g.tensors) {
      const name = hfTensorName(t.name, file);
      types[name] = t.type.name;
      dims[name] = t.dims;
      totalBytes += t.byteLength;
      if (t.dims.length === 2) {
        matrixBits += t.byteLength * 8;
        matrixWeights += t.dims.reduce((a, b) => a * b, 1);
      }
    }
    return { types, dims, bitsPerWeight: matrixWeights ? matrixBits / matrixWeights : 0, totalBytes };
  } finally {
    await g.close();
  }
}

/**
 * The LinearInputOps under which ptqkit's forward of this GGUF computes what llama.cpp's CPU
 * backend computes: every matmul input converted for its weight's type (gguf-activations.ts).
 * The map gives each weight the type llama.cpp multiplies it as: its stored type, except F16
 * matrices the AMX buffer takes (`amx`, default: the host has AMX), which it multiplies in float32.
 */
export async function llamaCppInputOps(
  file: string,
  options: { quantizer?: GgmlQuantizer; amx?: boolean } = {},
): Promise<LinearInputOps> {
  const { types, dims } = await ggufStorage(file);
  const amx = options.amx ?? hostHasAmx();
  const ggmlWeightTypes = Object.fromEntries(
    Object.entries(types).map(([name, type]) => {
      const d = dims[name]!;
      return [name, amx && d.length === 2 && amxMultipliesInFloat(type, d[0]!, d[1]!) ? 'F32' : type];
    }),
  );
  return { ggmlWeightTypes, ggmlQuantizer: options.quantizer ?? hostGgmlQuantizer() };
}

/**
 * `ptq eval file.gguf --emulate-llama-cpp`: the model's forward then converts every matmul input
 * as llama.cpp's CPU backend does for the file's tensor types (llamaCppInputOps). `model` is a
 * LoadedModel (model/load.ts, which reads GGUF files through this one).
 */
export async function emulateLlamaCpp(model: {
  source: string;
  path: string;
  config: ModelConfig;
}): Promise<void> {
  if (model.source !== 'gguf') {
    throw new UsageError('llama.cpp emulation needs a GGUF model', {
      file: model.path,
      hint: 'export it first: ptq export <model> --format gguf',
    });
  }
  const ops = await llamaCppInputOps(model.path);
  model.config = { ...model.config, linearInputOps: { ...model.config.linearInputOps, ...ops } };
}
