/**
 * Export a loaded Llama-family model to GGUF for llama.cpp, as convert_hf_to_gguf.py + a
 * "pure" llama-quantize would write it:
 *
 *  - metadata: general.architecture "llama", general.name, general.file_type (llama_ftype),
 *    general.quantized_by "ptqkit" (what lets a later export replace the file),
 *    general.quantization_version 2, general.alignment 32, llama.context_length,
 *    embedding_length, block_count, feed_forward_length, rope.dimension_count, rope.freq_base,
 *    attention.head_count(_kv), attention.layer_norm_rms_epsilon, vocab_size; tokenizer.ggml.*
 *    (gguf-vocab.ts).
 *  - tensors (formats/gguf-names.ts): token_embd, blk.N.attn_q/k/v/output, ffn_gate/up/down, attn_norm,
 *    ffn_norm, output_norm, output (absent when tied: llama.cpp then reuses token_embd).
 *    ne = [in, out] (HF [out, in] reversed), data row-major as stored.
 *  - Q/K rows: ptqkit holds Hugging Face's rotate_half order (llama2.c checkpoints are
 *    converted on load); llama.cpp's LLAMA rope pairs (2i, 2i+1), so each head's rows are
 *    interleaved back, convert_hf_to_gguf's LlamaModel.permute: reshape(h, 2, d/2, in)
 *    .swapaxes(1, 2). For llama2.c checkpoints this restores the file's original order
 *    (llama2.c's own export applies the same permute to HF models).
 *  - types: 1-D tensors stay F32 (as llama-quantize keeps them); every matrix gets the chosen
 *    type, or its type in a llama-quantize mix (formats/gguf-mix.ts), or llama-quantize's fallback when
 *    its rows are not whole blocks (warned). Matrices a
 *    ptqkit checkpoint did not quantize (the embedding) stay F32, as the checkpoint holds them.
 *  - a ptqkit checkpoint keeps its codes and scales when the grid fits the type's blocks
 *    (gguf-blocks.ts); otherwise its dequantized weights are re-quantized, with a warning.
 */
import path from 'node:path';
import { ConfigError, UsageError } from '../errors.js';
import { encodeValues, type GgmlType, ggmlType, rowBytes, typeForRow } from '../formats/ggml.js';
import { GGUF_MIXES, mixTensorType } from '../formats/gguf-mix.js';
import { ggufTensorName, qkRowOrder } from '../formats/gguf-names.js';
import type { QuantizedTensor } from '../formats/quantized-tensor.js';
import { EMBED, LM_HEAD } from '../formats/tensor-names.js';
import { checkOutput, type OutputOptions, yieldToSignals } from '../io/atomic.js';
import { faultSignal } from '../io/fault-injection.js';
import { GgufFile, type GgufKv, type GgufTensorToWrite, kv, writeGguf } from '../io/gguf.js';
import type { Architecture } from '../model/architecture.js';
import type { LoadedModel } from '../model/load.js';
import type { Exporter } from './exporter.js';
import { codesToBlocks, typesHoldingCodes } from './gguf-blocks.js';
import {
  type GgufVocab,
  vocabFromGguf,
  vocabFromLlama2c,
  vocabFromTokenizerJson,
  vocabMetadata,
} from './gguf-vocab.js';
import { assertWeightOnly } from './weight-only.js';

/** `--type` choices: the types llama-quantize offers for a pure model, by their lower-case names. */
export const GGUF_EXPORT_TYPES = [
  'f32',
  'f16',
  'bf16',
  'q8_0',
  'q4_0',
  'q4_1',
  'q5_0',
  'q5_1',
  'q2_k',
  'q3_k',
  'q4_k',
  'q5_k',
  'q6_k',
  'tq1_0',
  'tq2_0',
  // llama-quantize's K-quant mixes (formats/gguf-mix.ts); q2_k and q6_k above are its Q2_K / Q6_K too.
  'q2_k_s',
  'q3_k_s',
  'q3_k_m',
  'q3_k_l',
  'q4_k_s',
  'q4_k_m',
  'q5_k_s',
  'q5_k_m',
] as const;

/** llama.h `enum llama_ftype` of a pure model of each type (K-quants: the _S / _M variant llama-quantize names). */
const FILE_TYPE: Record<string, number> = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q8_0: 7,
  Q5_0: 8,
  Q5_1: 9,
  Q2_K: 10,
  Q3_K: 12,
  Q4_K: 15,
  Q5_K: 17,
  Q6_K: 18,
  BF16: 32,
  TQ1_0: 36,
  TQ2_0: 37,
};

export interface GgufExportOptions extends OutputOptions {
  /**
   * A ggml type name, a llama-quantize mix (q4_k_m...; q2_k and q6_k are mixes too), or 'auto':
   * the type holding a ptqkit checkpoint's codes exactly, else F32.
   */
  type: string;
  /** As llama-quantize --pure: a mix's base type for every matrix. */
  pure?: boolean;
  /** Called with each warning (fallbacks, re-quantization, inexact mappings). */
  onWarning?(message: string): void;
}

export interface ExportedTensor {
  name: string;
  type: string;
  dims: number[];
  bytes: number;
  /** float: from float weights; codes: the method's codes kept; requantized: from dequantized codes. */
  source: 'float' | 'codes' | 'requantized';
}

export interface GgufExportReport {
  file: string;
  type: string;
  bytes: number;
  tensors: ExportedTensor[];
  /** Bits per weight of the 2-D tensors as stored. */
  bitsPerWeight: number;
  warnings: string[];
}

/** `ptq export --format gguf` (registry.ts): one .gguf file. */
export const GGUF_EXPORTER: Exporter<{ type?: string; pure?: boolean }, GgufExportReport> = {
  name: 'gguf',
  description: 'GGUF v3 for llama.cpp',
  output: 'file',
  extension: '.gguf',
  replaceable: isPtqGguf,
  options: [
    {
      flag: '--type <name>',
      key: 'type',
      help: `${GGUF_EXPORT_TYPES.join('|')} (q2_k, q6_k and the _s/_m/_l names: llama-quantize's mixes), or auto (a checkpoint's exact block type, else f32)`,
      default: 'auto',
    },
    { flag: '--pure', key: 'pure', help: "a mix's base type for every matrix (as llama-quantize --pure)" },
  ],
  weightOnly: true,
  // general.architecture "llama": the tensor names and hyperparameter keys written below.
  writes: (arch: Architecture) => arch.modelType === 'llama',
  run: (model, output, { type, ...options }) =>
    exportGguf(model, output, { ...options, type: type ?? 'auto' }),
  summarize: (r, model, text) => [
    text.counts(
      'tensors',
      r.tensors.map((t) => `${t.type} from ${t.source}`),
    ),
    `exported ${model} as GGUF ${r.type}: ${r.bitsPerWeight.toFixed(3)} bits/weight (matrices), ` +
      `${text.bytes(r.bytes)} -> ${r.file}`,
  ],
};

export async function exportGguf(
  model: LoadedModel,
  out: string,
  options: GgufExportOptions,
): Promise<GgufExportReport> {
  const { config } = model;
  assertWeightOnly(model, 'gguf');
  await checkOutput(out, {
    kind: 'file',
    inputs: [model.path, ...model.tokenizerFiles, ...(options.inputs ?? [])],
    overwrite: options.overwrite,
    replaceable: isPtqGguf,
  });
  if (!GGUF_EXPORTER.writes(model.arch))
    throw new ConfigError('GGUF export supports Llama-family models', { got: config.modelType });
  const warnings: string[] = [];
  const warn = (m: string) => {
    warnings.push(m);
    options.onWarning?.(m);
  };
  const target = resolveType(model, options.type);
  const typeName = options.type.toLowerCase();
  const mix = !options.pure && GGUF_MIXES[typeName] ? typeName : undefined;
  const vocab = await vocabOf(model);

  const tensors: GgufTensorToWrite[] = [];
  const exported: ExportedTensor[] = [];
  for (const [hfName, t] of orderedWeights(model)) {
    const name = ggufTensorName(hfName);
    const dims = [...t.shape].reverse();
    const rowOrder = qkRowOrder(hfName, config);
    const q = model.quantization?.tensors.get(hfName);
    // A ptqkit checkpoint's unquantized tensors (embeddings) stay as it stores them, float32:
    // the GGUF then holds exactly the weights `ptq eval` measured.
    const isMatrix = t.shape.length === 2 && (!model.quantization || q !== undefined);
    const chosen = mix ? mixTensorType(mix, hfName, t.shape[1]!, config) : target;
    let type = isMatrix ? typeForRow(chosen, t.shape[1]!) : ggmlType('F32');
    if (type !== chosen && isMatrix) {
      warn(
        `${name}: rows of ${t.shape[1]} are not whole ${chosen.name} blocks of ${chosen.blockSize}; stored as ${type.name} (llama-quantize's fallback)`,
      );
    }
    let source: ExportedTensor['source'] = 'float';
    let data: GgufTensorToWrite['data'] = () =>
      encodeInterruptibly(type, permuteRows(t.data, t.shape, rowOrder));
    if (q && isMatrix) {
      ({ source, data, type } = fromCodes(name, q, type, rowOrder, t.data, t.shape, warn));
    }
    tensors.push({ name, dims, type, data });
    exported.push({ name, type: type.name, dims, bytes: rowBytes(type, t.data.length), source });
  }

  const metadata: GgufKv[] = [
    kv.str('general.architecture', 'llama'),
    kv.str('general.name', path.basename(model.path).replace(/\.(bin|gguf)$/, '')),
    kv.u32('general.file_type', GGUF_MIXES[typeName]?.ftype ?? FILE_TYPE[target.name]!),
    kv.u32('general.quantization_version', 2),
    kv.str('general.quantized_by', QUANTIZED_BY),
    kv.u32('llama.context_length', config.maxPositions),
    kv.u32('llama.embedding_length', config.hiddenSize),
    kv.u32('llama.block_count', config.numLayers),
    kv.u32('llama.feed_forward_length', config.intermediateSize),
    kv.u32('llama.rope.dimension_count', config.headDim),
    kv.f32('llama.rope.freq_base', config.ropeTheta),
    kv.u32('llama.attention.head_count', config.numHeads),
    kv.u32('llama.attention.head_count_kv', config.numKvHeads),
    kv.f32('llama.attention.layer_norm_rms_epsilon', config.normEps),
    kv.u32('llama.vocab_size', config.vocabSize),
    ...(config.headDim * config.numHeads !== config.hiddenSize
      ? [
          kv.u32('llama.attention.key_length', config.headDim),
          kv.u32('llama.attention.value_length', config.headDim),
        ]
      : []),
    ...vocabMetadata(vocab),
  ];
  const { bytes } = await writeGguf(out, metadata, tensors);
  const matrices = exported.filter((e) => e.dims.length === 2);
  const bits = matrices.reduce((s, e) => s + e.bytes * 8, 0);
  const count = matrices.reduce((s, e) => s + e.dims[0]! * e.dims[1]!, 0);
  return {
    file: path.resolve(out),
    type: mix ? mix.toUpperCase() : target.name,
    bytes,
    tensors: exported,
    bitsPerWeight: bits / count,
    warnings,
  };
}

function resolveType(model: LoadedModel, name: string): GgmlType {
  if (name !== 'auto') {
    if (!(GGUF_EXPORT_TYPES as readonly string[]).includes(name.toLowerCase())) {
      throw new UsageError('unsupported GGUF type', {
        field: 'type',
        expected: GGUF_EXPORT_TYPES.join(', '),
        got: name,
      });
    }
    return ggmlType(GGUF_MIXES[name.toLowerCase()]?.base ?? name);
  }
  const quantized = [...(model.quantization?.tensors.values() ?? [])];
  if (quantized.length === 0) return ggmlType('F32');
  const common = ['Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q8_0'].find((t) =>
    quantized.every((q) => typesHoldingCodes(q).includes(t)),
  );
  if (!common) {
    throw new UsageError("no ggml type holds this checkpoint's codes exactly", {
      field: 'type',
      hint: 'pass --type (e.g. q4_k) to re-quantize from the dequantized weights',
    });
  }
  return ggmlType(common);
}

/** Tensors in the order convert_hf_to_gguf writes a Llama: embedding, blocks, final norm, head. */
function orderedWeights(model: LoadedModel): [string, { shape: number[]; data: Float32Array }][] {
  const rank = (n: string): number => {
    if (n === EMBED) return -1;
    const m = /^model\.layers\.(\d+)\./.exec(n);
    if (m) return Number(m[1]);
    return n === LM_HEAD ? 1e9 + 1 : 1e9;
  };
  return [...model.weights].sort((a, b) => rank(a[0]) - rank(b[0]));
}

/** Rows of a [rows, cols] matrix in `order` (new row r = old row order[r]). */
function permuteRows(data: Float32Array, shape: number[], order?: Int32Array): Float32Array {
  if (!order) return data;
  const cols = shape[1]!;
  const out = new Float32Array(data.length);
  for (let r = 0; r < order.length; r++)
    out.set(data.subarray(order[r]! * cols, (order[r]! + 1) * cols), r * cols);
  return out;
}

/** Values encoded per piece (whole blocks): a pending Ctrl-C is handled between pieces. */
const PIECE_VALUES = 1 << 18;

/** `encodeValues` in pieces of whole blocks (blocks are independent: the bytes are identical). */
async function encodeInterruptibly(type: GgmlType, x: Float32Array): Promise<Uint8Array> {
  if (x.length % type.blockSize !== 0 || x.length <= PIECE_VALUES) return encodeValues(type, x);
  const blocks = x.length / type.blockSize;
  const blocksPerPiece = Math.max(1, Math.floor(PIECE_VALUES / type.blockSize));
  const out = new Uint8Array(blocks * type.typeSize);
  for (let b = 0; b < blocks; b += blocksPerPiece) {
    const end = Math.min(blocks, b + blocksPerPiece);
    out.set(encodeValues(type, x.subarray(b * type.blockSize, end * type.blockSize)), b * type.typeSize);
    faultSignal('gguf:piece-encoded');
    await yieldToSignals();
  }
  return out;
}

/** `general.quantized_by` of the files ptq writes: how a later export knows it may replace one. */
const QUANTIZED_BY = 'ptqkit';

/** Whether `file` is a GGUF file ptq wrote (so `ptq export -o file` may replace it). */
export async function isPtqGguf(file: string): Promise<boolean> {
  const gguf = await GgufFile.open(file).catch(() => undefined);
  if (!gguf) return false;
  await gguf.close();
  return gguf.get('general.quantized_by') === QUANTIZED_BY;
}

function fromCodes(
  name: string,
  q: QuantizedTensor,
  type: GgmlType,
  rowOrder: Int32Array | undefined,
  dequantized: Float32Array,
  shape: number[],
  warn: (m: string) => void,
): { source: ExportedTensor['source']; data: GgufTensorToWrite['data']; type: GgmlType } {
  const mapped = codesToBlocks(q, type, rowOrder);
  if (mapped.ok) {
    if (mapped.inexactBlocks > 0) {
      warn(
        `${name}: ${mapped.inexactBlocks} of ${mapped.blocks} ${type.name} blocks round m = −d·z to f16 ` +
          `(weights shift by up to ${mapped.maxShift.toExponential(2)}); the codes and d are kept exactly`,
      );
    }
    return { source: 'codes', data: () => mapped.bytes, type };
  }
  warn(`${name}: ${mapped.reason}; re-quantized to ${type.name} from the dequantized weights`);
  return {
    source: 'requantized',
    data: () => encodeInterruptibly(type, permuteRows(dequantized, shape, rowOrder)),
    type,
  };
}

async function vocabOf(model: LoadedModel): Promise<GgufVocab> {
  const files = model.tokenizerFiles;
  const bin = files.find((f) => f.endsWith('.bin'));
  if (bin) return vocabFromLlama2c(bin, model.config.vocabSize);
  const json = files.find((f) => path.basename(f) === 'tokenizer.json');
  if (json) return vocabFromTokenizerJson(path.dirname(json), model.config);
  const gguf = files.find((f) => f.endsWith('.gguf'));
  if (gguf) return vocabFromGguf(gguf);
  throw new ConfigError('no tokenizer to export', {
    file: model.path,
    expected: 'tokenizer.json or a llama2.c tokenizer.bin',
  });
}
