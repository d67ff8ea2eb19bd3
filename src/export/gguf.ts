/**
 * Export a loaded Llama-family model to GGUF for llama.cpp, as convert_hf_to_gguf.py + a
 * "pure" llama-quantize would write it:
 *
 *  - architecture (formats/gguf-names.ts GGUF_ARCHITECTURES): llama (Llama, and Mixtral as
 *    convert_hf_to_gguf writes it: "llama" with experts), qwen2moe, qwen3moe.
 *  - metadata: general.architecture, general.name, general.file_type (llama_ftype),
 *    general.quantized_by "ptqkit" (what lets a later export replace the file),
 *    general.quantization_version 2, general.alignment 32, llama.context_length,
 *    embedding_length, block_count, feed_forward_length, rope.dimension_count, rope.freq_base,
 *    attention.head_count(_kv), attention.layer_norm_rms_epsilon, vocab_size (keys prefixed by
 *    the architecture); MoE: expert_count, expert_used_count, and for Qwen-MoE
 *    expert_feed_forward_length (expert_shared_feed_forward_length for Qwen2-MoE's shared
 *    expert); tokenizer.ggml.* (gguf-vocab.ts).
 *  - tensors (formats/gguf-names.ts): token_embd, blk.N.attn_q/k/v/output, ffn_gate/up/down, attn_norm,
 *    ffn_norm, output_norm, output (absent when tied: llama.cpp then reuses token_embd).
 *    ne = [in, out] (HF [out, in] reversed), data row-major as stored. MoE: each layer's experts
 *    stacked per projection, blk.N.ffn_{gate,up,down}_exps with ne = [in, out, experts] (expert
 *    e's [out, in] rows e-th, as convert_hf_to_gguf's torch.stack(dim=0)), the router
 *    ffn_gate_inp F32 (llama-quantize never quantizes it). A ggml block never spans two rows, so a
 *    stacked tensor's bytes are its experts' bytes one after another, whatever the type.
 *  - llama.cpp's MoE FFN renormalizes the top-k weights or not per architecture, not per file:
 *    a checkpoint whose routing differs (Qwen3-MoE without norm_topk_prob, Qwen2-MoE with it)
 *    is refused, as are sliding windows and rope scaling on the MoE architectures (llama.cpp
 *    would run a different model).
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
import {
  GGUF_ARCHITECTURES,
  type GgufArchitecture,
  ggufExpertSlot,
  ggufTensorName,
  qkRowOrder,
  staysFloat,
} from '../formats/gguf-names.js';
import type { QuantizedTensor } from '../formats/quantized-tensor.js';
import type { ExpertProjection } from '../formats/tensor-names.js';
import { EMBED, expertLinear, LM_HEAD, linearWeightName } from '../formats/tensor-names.js';
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
  // The architectures llama.cpp runs and whose tensor names and keys are written below.
  writes: (arch: Architecture) => GGUF_ARCHITECTURES[arch.modelType] !== undefined,
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
  if (!GGUF_EXPORTER.writes(model.arch)) {
    throw new ConfigError('GGUF export supports Llama-family models', {
      got: config.modelType,
      expected: Object.keys(GGUF_ARCHITECTURES).join(', '),
    });
  }
  const ggufArch = GGUF_ARCHITECTURES[config.modelType]!;
  const experts = checkMoe(model, ggufArch);
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
    const slot = ggufExpertSlot(hfName);
    // An expert's tensor is written once, with its layer's other experts, where expert 0 comes.
    if (slot && slot.expert !== 0) continue;
    const name = slot?.name ?? ggufTensorName(hfName);
    const parts = slot ? expertsOf(model, slot.layer, slot.projection, experts) : [hfName];
    const matrices = parts.map((n) => model.weights.get(n)!);
    const codes = parts.map((n) => model.quantization?.tensors.get(n));
    // Experts stacked: [experts, out, in] reversed; a vector such as Qwen2-MoE's [1, hidden]
    // shared-expert gate is the [hidden] vector llama.cpp reads.
    const squeezed = t.shape.length === 2 && t.shape[0] === 1 && staysVector(name);
    const dims = slot
      ? [t.shape[1]!, t.shape[0]!, parts.length]
      : squeezed
        ? [t.shape[1]!]
        : [...t.shape].reverse();
    const rowOrder = ggufArch.permuteQK ? qkRowOrder(hfName, config) : undefined;
    // A ptqkit checkpoint's unquantized tensors (embeddings) stay as it stores them, float32:
    // the GGUF then holds exactly the weights `ptq eval` measured.
    const isMatrix =
      dims.length >= 2 && !staysFloat(name) && (!model.quantization || codes.every((q) => q !== undefined));
    const chosen = mix ? mixTensorType(mix, hfName, t.shape[1]!, { ...config, experts }) : target;
    let type = isMatrix ? typeForRow(chosen, t.shape[1]!) : ggmlType('F32');
    if (type !== chosen && isMatrix) {
      warn(
        `${name}: rows of ${t.shape[1]} are not whole ${chosen.name} blocks of ${chosen.blockSize}; stored as ${type.name} (llama-quantize's fallback)`,
      );
    }
    const values = () => concat(matrices.map((m) => permuteRows(m.data, m.shape, rowOrder)));
    let source: ExportedTensor['source'] = 'float';
    let data: GgufTensorToWrite['data'] = () => encodeInterruptibly(type, values());
    if (isMatrix && codes[0]) {
      ({ source, data, type } = fromCodes(name, codes as QuantizedTensor[], type, rowOrder, values, warn));
    }
    const count = matrices.reduce((s, m) => s + m.data.length, 0);
    tensors.push({ name, dims, type, data });
    exported.push({ name, type: type.name, dims, bytes: rowBytes(type, count), source });
  }

  const a = ggufArch.arch;
  const moe = config.layout?.moe;
  const metadata: GgufKv[] = [
    kv.str('general.architecture', a),
    kv.str('general.name', path.basename(model.path).replace(/\.(bin|gguf)$/, '')),
    kv.u32('general.file_type', GGUF_MIXES[typeName]?.ftype ?? FILE_TYPE[target.name]!),
    kv.u32('general.quantization_version', 2),
    kv.str('general.quantized_by', QUANTIZED_BY),
    kv.u32(`${a}.context_length`, config.maxPositions),
    kv.u32(`${a}.embedding_length`, config.hiddenSize),
    kv.u32(`${a}.block_count`, config.numLayers),
    // llama's experts are feed_forward_length wide (Mixtral's intermediate_size is each expert's).
    kv.u32(`${a}.feed_forward_length`, config.intermediateSize),
    kv.u32(`${a}.rope.dimension_count`, config.headDim),
    kv.f32(`${a}.rope.freq_base`, config.ropeTheta),
    kv.u32(`${a}.attention.head_count`, config.numHeads),
    kv.u32(`${a}.attention.head_count_kv`, config.numKvHeads),
    kv.f32(`${a}.attention.layer_norm_rms_epsilon`, config.normEps),
    kv.u32(`${a}.vocab_size`, config.vocabSize),
    ...(config.headDim * config.numHeads !== config.hiddenSize
      ? [
          kv.u32(`${a}.attention.key_length`, config.headDim),
          kv.u32(`${a}.attention.value_length`, config.headDim),
        ]
      : []),
    ...(moe
      ? [
          kv.u32(`${a}.expert_count`, moe.experts),
          kv.u32(`${a}.expert_used_count`, moe.topK),
          ...(ggufArch.expertWidthKey
            ? [kv.u32(`${a}.expert_feed_forward_length`, moe.expertIntermediate)]
            : []),
          ...(moe.sharedIntermediate
            ? [kv.u32(`${a}.expert_shared_feed_forward_length`, moe.sharedIntermediate)]
            : []),
        ]
      : []),
    ...vocabMetadata(vocab),
  ];
  const { bytes } = await writeGguf(out, metadata, tensors);
  const matrices = exported.filter((e) => e.dims.length >= 2);
  const bits = matrices.reduce((s, e) => s + e.bytes * 8, 0);
  const count = matrices.reduce((s, e) => s + e.dims.reduce((p, d) => p * d, 1), 0);
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

/**
 * A checkpoint's codes as `type`'s blocks: of each expert in turn for a stacked tensor (rows
 * never share a block, so the stacked bytes are the experts' bytes concatenated), or
 * re-quantized from the dequantized `values` when any expert's grid does not fit the type.
 */
function fromCodes(
  name: string,
  qs: QuantizedTensor[],
  type: GgmlType,
  rowOrder: Int32Array | undefined,
  values: () => Float32Array,
  warn: (m: string) => void,
): { source: ExportedTensor['source']; data: GgufTensorToWrite['data']; type: GgmlType } {
  const mapped = qs.map((q) => codesToBlocks(q, type, rowOrder));
  const failed = mapped.find((m) => !m.ok);
  if (failed && !failed.ok) {
    warn(`${name}: ${failed.reason}; re-quantized to ${type.name} from the dequantized weights`);
    return { source: 'requantized', data: () => encodeInterruptibly(type, values()), type };
  }
  const ok = mapped.filter((m) => m.ok);
  const inexact = ok.reduce((s, m) => s + m.inexactBlocks, 0);
  if (inexact > 0) {
    const blocks = ok.reduce((s, m) => s + m.blocks, 0);
    const maxShift = Math.max(...ok.map((m) => m.maxShift));
    warn(
      `${name}: ${inexact} of ${blocks} ${type.name} blocks round m = −d·z to f16 ` +
        `(weights shift by up to ${maxShift.toExponential(2)}); the codes and d are kept exactly`,
    );
  }
  return { source: 'codes', data: () => concat(ok.map((m) => m.bytes)), type };
}

/** Arrays one after another (one array: itself, not a copy). */
function concat<T extends Float32Array | Uint8Array>(parts: T[]): T {
  if (parts.length === 1) return parts[0]!;
  const out = new (parts[0]!.constructor as new (n: number) => T)(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** GGUF tensors llama.cpp reads as a vector though Hugging Face stores a [1, hidden] matrix. */
const staysVector = (ggufName: string): boolean => ggufName.endsWith('.ffn_gate_inp_shexp.weight');

/** Weight names of every expert's `projection` in `layer`, in expert order; all must be present. */
function expertsOf(
  model: LoadedModel,
  layer: number,
  projection: ExpertProjection,
  experts: number,
): string[] {
  return Array.from({ length: experts }, (_, e) => {
    const name = linearWeightName(layer, expertLinear(e, projection));
    if (!model.weights.has(name)) {
      throw new ConfigError('missing expert weight', {
        file: model.path,
        field: name,
        expected: `${experts} experts`,
      });
    }
    return name;
  });
}

/**
 * The expert count of a sparse MoE model (0 for a dense one), after refusing what llama.cpp's
 * architecture would compute differently: its top-k renormalization is fixed per architecture,
 * and its llama/qwen2moe/qwen3moe graphs have no sliding window and read no rope scaling here.
 */
function checkMoe(model: LoadedModel, g: GgufArchitecture): number {
  const { config } = model;
  const moe = config.layout?.moe;
  if (!moe) return 0;
  const refuse = (field: string, expected: string, got: string) => {
    throw new ConfigError(`llama.cpp's ${g.arch} would run another model`, {
      file: model.path,
      field,
      expected,
      got,
    });
  };
  if (moe.normTopK !== g.normTopK) {
    refuse(
      'norm_topk_prob',
      `${g.normTopK} (llama.cpp's ${g.arch} ${g.normTopK ? 'always renormalizes' : 'never renormalizes'} the top-k weights)`,
      String(moe.normTopK),
    );
  }
  if (config.layout?.windows?.some((w) => w > 0))
    refuse('sliding_window', 'none (full attention)', String(config.layout.windows));
  const scaling = config.layout?.ropeScaling;
  if (scaling) refuse('rope_scaling', 'none', scaling.type);
  return moe.experts;
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
