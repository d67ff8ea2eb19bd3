/**
 * `ptq export --format onnx`: a Llama-family model as the ONNX model directory that
 * transformers.js (`AutoModelForCausalLM.from_pretrained(dir, { dtype })`,
 * `pipeline('text-generation', dir)`) and onnxruntime load:
 *
 *   config.json              the model's config (model_type llama) + "transformers.js_config"
 *                            {dtype: the first exported dtype, use_external_data_format}
 *   generation_config.json   bos/eos ids (copied from the source when it has one)
 *   tokenizer.json, tokenizer_config.json, special_tokens_map.json   copied, or converted from a
 *                            llama2.c tokenizer.bin (tokenizer-json.ts)
 *   onnx/model.onnx          fp32 (dtype 'fp32')
 *   onnx/model_quantized.onnx  8-bit MatMulNBits ('q8'), onnx/model_q4.onnx ('q4'), onnx/model_q2.onnx ('q2'),
 *                            onnx/model_fp16.onnx ('fp16'), onnx/model_q4f16.onnx ('q4f16': q4, then float16)
 *   onnx/<file>.onnx_data[_1..]  external initializers (transformers.js' naming,
 *                            models/session.js + utils/model-loader.js)
 *
 * File suffix per dtype is transformers.js' DEFAULT_DTYPE_SUFFIX_MAPPING (utils/dtypes.js).
 * Which layers become MatMulNBits, and from what (table per variant in the report):
 *  - a ptq checkpoint's quantized layers keep their own codes, scales and zeros exactly
 *    (onnx/matmul-nbits.ts maps every integer grid whose group structure a block size can tile);
 *    codes wider than the dtype's container are re-quantized with RTN (announced);
 *    grids MatMulNBits cannot express stay float (dequantized, exact; announced);
 *  - a float model's block linears are quantized with RTN on the dtype's grid, symmetric with
 *    groups of 32 (transformers.js' q4 convention: MatMulNBits, block 32, symmetric), or per
 *    channel when 32 does not divide the input width;
 *  - embeddings, norms and the LM head stay float, as in `ptq quantize`.
 */
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, open, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, UsageError } from '../errors.js';
import { type GridSpec, gridName, IntGrid } from '../formats/grid.js';
import type { QuantizedTensor } from '../formats/quantized-tensor.js';
import { BLOCK_LINEARS, linearWeightName } from '../formats/tensor-names.js';
import { type OutputOptions, writeDirectoryAtomically } from '../io/atomic.js';
import { isInside } from '../io/confined-path.js';
import { Llama2cTokenizer } from '../io/llama2c-tokenizer.js';
import { buildOnnxModelExternal, type ExternalChunk, GraphAssembler } from '../io/onnx-builder.js';
import type { Architecture } from '../model/architecture.js';
import type { LoadedModel } from '../model/load.js';
import { convertToFloat16 } from '../onnx/fp16.js';
import {
  encodeMatMulNBits,
  type MatMulNBitsPlan,
  matMulNBitsBytes,
  planMatMulNBits,
} from '../onnx/matmul-nbits.js';
import { OnnxModel, resolveInside, writeOnnxModel } from '../onnx/model-file.js';
import { quantizeRtn } from '../quant/methods/rtn.js';
import type { Exporter } from './exporter.js';
import { buildDecoderGraph, type LinearWeight } from './onnx-graph.js';
import { llama2cTokenizerJson } from './tokenizer-json.js';
import { assertWeightOnly } from './weight-only.js';

/** The dtypes transformers.js selects by file suffix, and the MatMulNBits width each uses here. */
export const ONNX_DTYPES = {
  fp32: { suffix: '', bits: 0, description: 'float32 weights (quantized layers dequantized exactly)' },
  q8: {
    suffix: '_quantized',
    bits: 8,
    description: '8-bit MatMulNBits (codes of <= 8-bit checkpoints kept)',
  },
  q4: { suffix: '_q4', bits: 4, description: '4-bit MatMulNBits (codes of <= 4-bit checkpoints kept)' },
  q2: { suffix: '_q2', bits: 2, description: '2-bit MatMulNBits (codes of 2-bit checkpoints kept)' },
  // The q4 / fp32 graph, then converted to float16 by the ONNX quantizer's pass (src/onnx/fp16.ts).
  fp16: { suffix: '_fp16', bits: 0, description: 'float16 graph (inputs and outputs float32)' },
  q4f16: { suffix: '_q4f16', bits: 4, description: 'q4 with a float16 graph (inputs and outputs float32)' },
} as const;
const FLOAT16_DTYPES: ReadonlySet<string> = new Set(['fp16', 'q4f16']);
export type OnnxDtype = keyof typeof ONNX_DTYPES;

export const onnxFileName = (dtype: OnnxDtype) => `model${ONNX_DTYPES[dtype].suffix}.onnx`;

/** Group size of the RTN grid used when a float layer must become MatMulNBits. */
export const EXPORT_RTN_GROUP_SIZE = 32;
/** With externalData 'auto', initializers go to .onnx_data once they exceed this (protobuf's limit is 2 GiB). */
const AUTO_EXTERNAL_BYTES = 1 << 30;
/** protobuf's hard limit on one message, hence on an .onnx file with inline weights. */
const PROTOBUF_LIMIT = 2 ** 31;
/** Tensors of at least this many bytes go to the external file (onnx's save_model default). */
const EXTERNAL_THRESHOLD = 1024;
/** Largest .onnx_data chunk: under 2 GiB, so each chunk fits one ArrayBuffer in browsers too. */
const MAX_CHUNK_BYTES = 2 ** 31 - 2 ** 26;

export interface OnnxExportOptions extends OutputOptions {
  /** Variants to write; default: the checkpoint's own width (q2/q4/q8), or fp32 for float models. */
  dtypes?: OnnxDtype[];
  /** Store weights in `<file>.onnx_data` files: always, never, or above 1 GiB of weights (default). */
  externalData?: boolean | 'auto';
  /** Called once per announced re-quantization or float fallback. */
  onWarning?: (message: string) => void;
}

export type LinearSource = 'codes' | 'rtn' | 'float';

export interface LinearReport {
  name: string;
  source: LinearSource;
  /** 'matmulnbits' with bits and block size, or 'float'. */
  storage: string;
  note?: string;
}

export interface OnnxVariantReport {
  dtype: OnnxDtype;
  file: string;
  /** Bytes of the .onnx file plus its external data. */
  bytes: number;
  externalFiles: string[];
  linears: LinearReport[];
  /** Stored bits per weight of the MatMulNBits layers (B, fp32 scales, zero points, permutations). */
  quantizedBitsPerWeight?: number;
  quantizedWeights: number;
}

export interface OnnxExportReport {
  output: string;
  variants: OnnxVariantReport[];
  files: { path: string; bytes: number }[];
  /** The source's tokenizer.json & co. copied, or written from a llama2.c tokenizer.bin (tokenizer-json.ts). */
  tokenizer: 'copied' | 'converted from tokenizer.bin';
  warnings: string[];
}

/** The default dtype of a model: the narrowest container holding its codes, or fp32. */
export function defaultOnnxDtype(model: Pick<LoadedModel, 'quantization'>): OnnxDtype {
  const tensors = [...(model.quantization?.tensors.values() ?? [])];
  if (tensors.length === 0) return 'fp32';
  const bits = Math.max(...tensors.map((t) => t.spec.bits));
  return bits <= 2 ? 'q2' : bits <= 4 ? 'q4' : 'q8';
}

/** `--dtype fp32,q4`: the listed dtypes, each checked (undefined: exportOnnx's default). */
export function parseOnnxDtypes(list: string | undefined): OnnxDtype[] | undefined {
  const dtypes = list?.split(',').map((d) => d.trim()) as OnnxDtype[] | undefined;
  for (const d of dtypes ?? []) {
    if (!(d in ONNX_DTYPES))
      throw new UsageError('unknown ONNX dtype', {
        field: 'dtype',
        expected: Object.keys(ONNX_DTYPES).join(', '),
        got: d,
      });
  }
  return dtypes;
}

/** `ptq export --dtype` and `--[no-]external-data`, as the command line gives them. */
interface OnnxExportFlags {
  dtype?: string;
  externalData?: boolean | 'auto';
}

/** `ptq export --format onnx` (registry.ts): a transformers.js model directory. */
export const ONNX_EXPORTER: Exporter<OnnxExportFlags, OnnxExportReport> = {
  name: 'onnx',
  description: `ONNX decoder directory for onnxruntime and transformers.js (--dtype ${Object.keys(ONNX_DTYPES).join('|')}, comma-separated)`,
  output: 'directory',
  options: [
    {
      flag: '--dtype <list>',
      key: 'dtype',
      help: "variants to write, e.g. fp32,q4 (default: the checkpoint's width, or fp32)",
    },
    {
      flag: '--external-data',
      key: 'externalData',
      help: 'store weights in .onnx_data files (default: only above 1 GiB)',
    },
    { flag: '--no-external-data', key: 'externalData', help: 'keep every weight inside the .onnx file' },
  ],
  weightOnly: true,
  // The graph (onnx-graph.ts) is Llama's; assertLlamaGraph refuses the variants it does not compute.
  writes: (arch: Architecture) => arch.modelType === 'llama',
  check: ({ dtype }) => void parseOnnxDtypes(dtype),
  run: (model, output, { dtype, externalData, ...options }) =>
    exportOnnx(model, output, {
      ...options,
      dtypes: parseOnnxDtypes(dtype),
      externalData: externalData ?? 'auto',
    }),
  summarize: (r, model, text) => [
    ...r.variants.flatMap((v) => {
      const external = v.externalFiles.length ? ` (+ ${v.externalFiles.join(', ')})` : '';
      const bpw =
        v.quantizedBitsPerWeight === undefined
          ? ''
          : `, quantized linears ${v.quantizedBitsPerWeight.toFixed(3)} bits/weight`;
      return [
        `${v.dtype}: onnx/${v.file} ${text.bytes(v.bytes)}${external}${bpw}`,
        text.counts(
          'linears',
          v.linears.map((l) => `${l.storage} from ${l.source}`),
        ),
      ];
    }),
    `exported ${model} as ONNX (tokenizer ${r.tokenizer}) -> ${r.output}`,
  ],
};

export async function exportOnnx(
  model: LoadedModel,
  outDir: string,
  options: OnnxExportOptions = {},
): Promise<OnnxExportReport> {
  if (!ONNX_EXPORTER.writes(model.arch)) {
    throw new ConfigError('the ONNX exporter writes Llama-family decoders only', {
      field: 'model_type',
      got: model.config.modelType,
    });
  }
  assertLlamaGraph(model);
  assertWeightOnly(model, 'onnx');
  const dtypes = [...new Set(options.dtypes ?? [defaultOnnxDtype(model)])];
  for (const d of dtypes) {
    if (!(d in ONNX_DTYPES))
      throw new UsageError('unknown ONNX dtype', {
        field: 'dtype',
        expected: Object.keys(ONNX_DTYPES).join(', '),
        got: d,
      });
  }
  const warnings: string[] = [];
  const warn = (m: string) => {
    warnings.push(m);
    options.onWarning?.(m);
  };

  const variants: OnnxVariantReport[] = [];
  const files: { path: string; bytes: number }[] = [];
  let tokenizer: OnnxExportReport['tokenizer'] = 'copied';
  await writeDirectoryAtomically(
    outDir,
    async (tmp) => {
      await mkdir(path.join(tmp, 'onnx'));
      for (const dtype of dtypes)
        variants.push(
          await writeVariant(model, dtype, path.join(tmp, 'onnx'), options.externalData ?? 'auto', warn),
        );
      const external = Object.fromEntries(
        variants.filter((v) => v.externalFiles.length).map((v) => [v.file, v.externalFiles.length]),
      );
      await writeJson(path.join(tmp, 'config.json'), transformersConfig(model, dtypes[0]!, external));
      const sourceGeneration = path.join(model.path, 'generation_config.json');
      if (model.source !== 'llama2c' && existsSync(sourceGeneration))
        await copyFile(await sourceFile(model, sourceGeneration), path.join(tmp, 'generation_config.json'));
      else await writeJson(path.join(tmp, 'generation_config.json'), generationConfig(model));
      if (model.tokenizer instanceof Llama2cTokenizer) {
        // llama2.c ships tokenizer.bin only: write the equivalent Hugging Face tokenizer files.
        const converted = llama2cTokenizerJson(model.tokenizer.vocabulary(), model.config);
        for (const [name, json] of Object.entries(converted)) await writeJson(path.join(tmp, name), json);
        tokenizer = 'converted from tokenizer.bin';
      } else {
        for (const file of model.tokenizerFiles)
          await copyFile(await sourceFile(model, file), path.join(tmp, path.basename(file)));
      }
    },
    { overwrite: options.overwrite, inputs: [model.path, ...(options.inputs ?? [])] },
  );
  for (const name of await readdir(outDir, { recursive: true })) {
    const info = await stat(path.join(outDir, name));
    if (info.isFile()) files.push({ path: name, bytes: info.size });
  }
  files.sort((a, b) => (a.path < b.path ? -1 : 1));
  return { output: path.resolve(outDir), variants, files, tokenizer, warnings };
}

/**
 * A file of the model directory to copy into the output, by its real path: a symlink out of the
 * directory is refused (its target would be copied out). Files outside it (named by the user) as given.
 */
async function sourceFile(model: LoadedModel, file: string): Promise<string> {
  if (!isInside(file, model.path)) return file;
  return resolveInside(model.path, path.relative(model.path, file), 'model file', { file });
}

/**
 * The graph (onnx-graph.ts) computes the Llama block: no biases, SwiGLU, full rotary with plain,
 * linear or llama3 frequencies, full causal attention. A llama config.json may ask for more
 * (attention_bias, mlp_bias, hidden_act, rope_scaling longrope): refused rather than dropped.
 */
function assertLlamaGraph(model: LoadedModel): void {
  const L = model.config.layout;
  if (!L) return;
  const file =
    model.source === 'huggingface' || model.source === 'ptqkit'
      ? path.join(model.path, 'config.json')
      : model.path;
  const refuse = (field: string, got: string, expected: string) => {
    throw new ConfigError('the ONNX exporter does not write this Llama variant', {
      file,
      field,
      expected,
      got,
    });
  };
  if (L.qkvBias || L.oBias) refuse('attention_bias', 'true', 'false (no attention biases in the graph)');
  if (L.mlpBias) refuse('mlp_bias', 'true', 'false (no MLP biases in the graph)');
  if (L.activation !== 'silu' || !L.gatedMlp) refuse('hidden_act', L.activation, 'silu (SwiGLU)');
  if (L.ropeScaling && L.ropeScaling.type !== 'linear' && L.ropeScaling.type !== 'llama3')
    refuse('rope_scaling', L.ropeScaling.type, 'null, linear or llama3');
  if (L.rotaryDim !== undefined && L.rotaryDim !== model.config.headDim)
    refuse('partial_rotary_factor', String(L.rotaryDim / model.config.headDim), '1 (full rotary)');
  if (L.windows?.some((w) => w > 0)) refuse('sliding_window', String(Math.max(...L.windows)), 'none');
}

/** Build one variant's graph and write its .onnx (+ .onnx_data) into `onnxDir`. */
async function writeVariant(
  model: LoadedModel,
  dtype: OnnxDtype,
  onnxDir: string,
  externalData: boolean | 'auto',
  warn: (m: string) => void,
): Promise<OnnxVariantReport> {
  const containerBits = ONNX_DTYPES[dtype].bits;
  const linears: LinearReport[] = [];
  let quantizedBytes = 0;
  let quantizedWeights = 0;
  const linearNames = new Set<string>();
  for (let layer = 0; layer < model.config.numLayers; layer++)
    for (const l of BLOCK_LINEARS) linearNames.add(linearWeightName(layer, l));

  const storage = (name: string): LinearWeight => {
    const t = model.weights.get(name)!;
    const [rows, cols] = t.shape as [number, number];
    const float = (source: LinearSource, note?: string): LinearWeight => {
      linears.push({ name, source, storage: 'float', note });
      return { kind: 'float', weight: t.data, rows, cols };
    };
    const nbits = (
      q: QuantizedTensor,
      plan: MatMulNBitsPlan & { ok: true },
      source: LinearSource,
      note?: string,
    ): LinearWeight => {
      const w = encodeMatMulNBits(q, plan);
      quantizedBytes += matMulNBitsBytes(w);
      quantizedWeights += rows * cols;
      const extras = [plan.permutation && 'act-order permutation', q.columnScales && 'column scales'].filter(
        Boolean,
      );
      const widened = plan.bits !== q.spec.bits && `${q.spec.bits}-bit codes in a ${plan.bits}-bit container`;
      linears.push({
        name,
        source,
        storage: `matmulnbits b${w.bits} bs${w.blockSize}${w.zeroPoints ? ' zp' : ''}${extras.length ? ` +${extras.join(', ')}` : ''}`,
        note: [note, widened].filter(Boolean).join('; ') || undefined,
      });
      return { kind: 'nbits', weight: w };
    };
    // RTN on the dtype's grid: always expressible (groups of 32, or one padded block per row).
    const rtn = (note: string) => {
      const q = quantizeRtn(t, rtnGrid(containerBits, cols), name);
      const plan = planMatMulNBits(q, containerBits);
      if (!plan.ok)
        throw new ConfigError(`cannot store the RTN grid as MatMulNBits: ${plan.reason}`, { field: name });
      return nbits(q, plan, 'rtn', note);
    };

    if (containerBits === 0) return float(model.quantization?.tensors.has(name) ? 'codes' : 'float');
    const q = model.quantization?.tensors.get(name);
    if (q) {
      const plan = planMatMulNBits(q, containerBits);
      if (plan.ok) return nbits(q, plan, 'codes');
      if (q.spec.bits > containerBits && (q.spec.format ?? 'int') === 'int') {
        const note = `${gridName(q.spec)} does not fit ${dtype}: re-quantized with RTN`;
        warn(`${name}: ${note}`);
        return rtn(note);
      }
      const note = `${gridName(q.spec)}: ${plan.reason}; kept as float (dequantized, exact)`;
      warn(`${name}: ${note}`);
      return float('codes', note);
    }
    if (model.quantization || !linearNames.has(name)) return float('float');
    return rtn(gridName(rtnGrid(containerBits, cols).spec));
  };

  const g = new GraphAssembler();
  const io = buildDecoderGraph(g, { config: model.config, weights: model.weights, linear: storage });
  const file = onnxFileName(dtype);
  const weightBytes = g.initializers.reduce((n, t) => n + t.data.byteLength, 0);
  const useExternal = externalData === 'auto' ? weightBytes > AUTO_EXTERNAL_BYTES : externalData;
  if (!useExternal && weightBytes >= PROTOBUF_LIMIT) {
    throw new UsageError(
      'the weights do not fit in one .onnx file (protobuf messages are limited to 2 GiB)',
      {
        field: 'external-data',
        got: `${weightBytes} bytes of weights`,
        hint: 'drop --no-external-data',
      },
    );
  }
  const { model: proto, chunks } = buildOnnxModelExternal(
    {
      name: `ptqkit ${model.config.modelType} ${dtype}`,
      nodes: g.nodes,
      initializers: g.initializers,
      ...io,
      metadata: {
        'ptqkit.source': path.basename(model.path),
        'ptqkit.dtype': dtype,
        ...(model.quantization && {
          'ptqkit.quantization': JSON.stringify({
            method: model.quantization.method,
            ...model.quantization.settings,
          }),
        }),
      },
    },
    useExternal
      ? { location: `${file}_data`, threshold: EXTERNAL_THRESHOLD, maxChunkBytes: MAX_CHUNK_BYTES }
      : undefined,
  );
  // float16 variants: the graph is written to a scratch directory, then converted by onnx/fp16.ts.
  const writeDir = FLOAT16_DTYPES.has(dtype) ? await mkdtemp(path.join(onnxDir, '.fp32-')) : onnxDir;
  await writeFile(path.join(writeDir, file), proto);
  for (const chunk of chunks) await writeChunk(path.join(writeDir, chunk.file), chunk);
  let written = {
    bytes: proto.byteLength + chunks.reduce((n, c) => n + c.bytes, 0),
    externalFiles: chunks.map((c) => c.file),
  };
  if (writeDir !== onnxDir) {
    const source = await OnnxModel.read(path.join(writeDir, file));
    try {
      await convertToFloat16(source);
      const { bytes, externalFiles } = await writeOnnxModel(source, path.join(onnxDir, file), {
        externalData: useExternal,
      });
      written = { bytes, externalFiles };
    } finally {
      await source.close();
      await rm(writeDir, { recursive: true, force: true });
    }
  }
  return {
    dtype,
    file,
    ...written,
    linears,
    quantizedBitsPerWeight: quantizedWeights ? (quantizedBytes * 8) / quantizedWeights : undefined,
    quantizedWeights,
  };
}

/** transformers.js' q4/q8/q2 grid for float layers: symmetric, groups of 32 (per channel if 32 does not divide). */
function rtnGrid(bits: number, cols: number): IntGrid {
  const grouped = cols % EXPORT_RTN_GROUP_SIZE === 0;
  const spec: GridSpec = {
    bits,
    symmetric: true,
    granularity: grouped ? 'group' : 'channel',
    groupSize: grouped ? EXPORT_RTN_GROUP_SIZE : 0,
    scaleDtype: 'f16',
  };
  return new IntGrid(spec);
}

async function writeChunk(file: string, chunk: ExternalChunk): Promise<void> {
  const fh = await open(file, 'w');
  try {
    for (const p of chunk.pieces) {
      const bytes = new Uint8Array(p.data.buffer, p.data.byteOffset, p.data.byteLength);
      await fh.write(bytes, 0, bytes.length, p.offset);
    }
    await fh.truncate(chunk.bytes);
  } finally {
    await fh.close();
  }
}

function transformersConfig(
  model: LoadedModel,
  dtype: OnnxDtype,
  external: Record<string, number>,
): Record<string, unknown> {
  // quantization_config names ptqkit's checkpoint layout, which the ONNX files no longer use.
  const { quantization_config: _dropped, ...config } = model.hfConfig;
  return {
    ...config,
    model_type: 'llama',
    'transformers.js_config': {
      dtype,
      ...(Object.keys(external).length > 0 && { use_external_data_format: external }),
    },
  };
}

function generationConfig(model: LoadedModel): Record<string, unknown> {
  const c = model.config;
  return {
    ...(c.bosTokenId !== undefined && { bos_token_id: c.bosTokenId }),
    ...(c.eosTokenId !== undefined && { eos_token_id: c.eosTokenId }),
  };
}

async function writeJson(file: string, value: unknown): Promise<void> {
  await writeFile(file, `${JSON.stringify(value, null, 2)}\n`);
}
