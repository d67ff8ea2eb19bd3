/**
 * What the two Hugging Face safetensors exporters (gptq-safetensors.ts, compressed-tensors.ts)
 * share: the quantized linears of a model, re-quantization of grids a layout cannot hold, the
 * 32-bit word packing both layouts use, and the directory around model.safetensors.
 *
 * Word packing: both GPTQ (AutoGPTQ/GPTQModel `pack`, 2/3/4/8 bits) and compressed-tensors
 * (`pack_to_int32`, 1..8 bits since 0.18) lay b-bit values out as one little-endian bit stream:
 * value i occupies bits [i·b, (i+1)·b) of the stream, word k holds bits [32k, 32k + 32), and a
 * value that crosses a word boundary keeps its low bits in word k and its high bits at the bottom
 * of word k + 1 (GPTQ's 3-bit layout: 32 values in 3 words, values 10 and 21 split).
 */
import { existsSync } from 'node:fs';
import { copyFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, ShapeError } from '../errors.js';
import { blockShapeOf, type GridSpec, gridName, makeGrid } from '../formats/grid.js';
import { GRID_DEFAULTS } from '../formats/number-formats.js';
import { dequantize, type QuantizedTensor, unpackCodes } from '../formats/quantized-tensor.js';
import { linearWeightName } from '../formats/tensor-names.js';
import { type OutputOptions, writeDirectoryAtomically } from '../io/atomic.js';
import { Llama2cTokenizer } from '../io/llama2c-tokenizer.js';
import { type TensorToWrite, writeSafetensors } from '../io/safetensors.js';
import { type Architecture, blockLinears } from '../model/architecture.js';
import type { LoadedModel } from '../model/load.js';
import { quantizeRtn } from '../quant/methods/rtn.js';
import type { SummaryText } from './exporter.js';
import { llama2cTokenizerJson } from './tokenizer-json.js';

export const SAFETENSORS_FILE = 'model.safetensors';

/** Where a stored linear comes from. */
export type LinearSource =
  | 'codes' // the checkpoint's codes and scales, unchanged
  | 'mapped' // the same weights re-expressed exactly (wider codes, other element encoding, f16 scales...)
  | 'requantized' // RTN from the checkpoint's dequantized weights (announced)
  | 'rtn'; // a float model's linear, quantized with RTN on the default grid

export interface ExportedLinear {
  name: string;
  /** The grid as stored, e.g. "int4-g32-sym". */
  grid: string;
  source: LinearSource;
  /** Bytes of this linear's tensors as stored (codes, scales, zeros, g_idx, shape). */
  bytes: number;
  note?: string;
}

export interface SafetensorsExportReport {
  output: string;
  /** 'gptq' or 'compressed-tensors'. */
  format: string;
  /** The layout in one line, e.g. "GPTQ v1 int4 g32 sym" or "pack-quantized int4 group 32". */
  layout: string;
  linears: ExportedLinear[];
  /** Stored bits per weight of the quantized linears. */
  bitsPerWeight: number;
  bytes: number;
  tokenizer: 'copied' | 'converted from tokenizer.bin' | 'none';
  warnings: string[];
}

/** The model types both layouts write: those whose tensors go out under Llama's (canonical) names. */
export const writesLlamaNames = (arch: Architecture): boolean => arch.hfNamesAreCanonical;

/** What `ptq export` prints for a GPTQ or compressed-tensors export (both records' `summarize`). */
export function summarizeSafetensors(r: SafetensorsExportReport, model: string, text: SummaryText): string[] {
  return [
    text.counts(
      'linears',
      r.linears.map((l) => `${l.grid} from ${l.source}`),
    ),
    `exported ${model} as ${r.layout}: ${r.bitsPerWeight.toFixed(3)} bits/weight ` +
      `(quantized linears), ${text.bytes(r.bytes)} -> ${r.output}`,
  ];
}

/** A linear as an exporter will store it, with where it came from. */
export interface PlannedLinear {
  name: string;
  q: QuantizedTensor;
  source: LinearSource;
  note?: string;
}

/**
 * The quantized linears of `model`: a ptqkit checkpoint's own, or for a float model every
 * decoder-block linear quantized with RTN on ptqkit's default grid (int4, symmetric, groups of
 * 32, f16 scales; one scale per row for all of them when 32 does not divide every input width,
 * so that the model keeps one scheme).
 */
export function quantizedLinears(model: LoadedModel): PlannedLinear[] {
  // Tensors go out under ptqkit's canonical names, which only Llama-layout model types share.
  if (!writesLlamaNames(model.arch)) {
    throw new ConfigError('this export writes Llama-layout tensor names', {
      file: model.path,
      field: 'model_type',
      got: model.arch.modelType,
      expected: 'llama, mistral, qwen2, qwen3, gemma or gemma2',
    });
  }
  if (model.quantization) {
    return [...model.quantization.tensors].map(([name, q]) => ({ name, q, source: 'codes' as const }));
  }
  const names: string[] = [];
  for (let layer = 0; layer < model.config.numLayers; layer++) {
    // Every expert's linears too (MoE): all are block linears.
    for (const linear of blockLinears(model.config)) {
      const name = linearWeightName(layer, linear);
      if (model.weights.has(name)) names.push(name);
    }
  }
  const grouped = names.every((n) => model.weights.get(n)!.shape[1]! % GRID_DEFAULTS.groupSize === 0);
  const grid = makeGrid({
    bits: GRID_DEFAULTS.bits,
    symmetric: true,
    granularity: grouped ? 'group' : 'channel',
    groupSize: grouped ? GRID_DEFAULTS.groupSize : 0,
    scaleDtype: GRID_DEFAULTS.scaleDtype,
  });
  return names.map((name) => ({
    name,
    q: quantizeRtn(model.weights.get(name)!, grid, name),
    source: 'rtn' as const,
  }));
}

/** Re-quantize `q` with RTN onto `spec` from its dequantized weights; also the largest weight change. */
export function requantize(
  name: string,
  q: QuantizedTensor,
  spec: GridSpec,
): { q: QuantizedTensor; maxShift: number } {
  const w = dequantize(q);
  const r = quantizeRtn({ shape: [q.rows, q.cols], data: w }, makeGrid(spec), name);
  return { q: r, maxShift: maxAbsDifference(w, dequantize(r)) };
}

export function maxAbsDifference(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** The warning of an announced re-quantization. */
export function requantizedWarning(
  name: string,
  from: GridSpec,
  reason: string,
  to: GridSpec,
  maxShift: number,
): string {
  return (
    `${name}: ${gridName(from)} ${reason}; re-quantized with RTN to ${gridName(to)} from the dequantized ` +
    `weights (max |Δw| ${maxShift.toExponential(2)})`
  );
}

/**
 * The block of every weight: `param[r·cols + c]` indexes q.scales / q.zeros (act-order groups
 * through g_idx, per-tensor and per-channel grids through their block shape).
 */
export function paramIndexOf(q: QuantizedTensor): (r: number, c: number) => number {
  const [blockRows, blockCols] = blockShapeOf(q.spec, q.rows, q.cols);
  const numGroups = q.cols / blockCols;
  const groupOf = q.groupIndex ?? Int32Array.from({ length: q.cols }, (_, c) => Math.floor(c / blockCols));
  return (r, c) => Math.floor(r / blockRows) * numGroups + groupOf[c]!;
}

/** Columns per group along the input (the whole row for per-channel and per-tensor grids). */
export function groupColumns(q: QuantizedTensor): number {
  return blockShapeOf(q.spec, q.rows, q.cols)[1];
}

/** True when `q` has a g_idx that is not the natural c ↦ ⌊c / G⌋ (act-order). */
export function hasActOrder(q: QuantizedTensor): boolean {
  if (!q.groupIndex) return false;
  const G = groupColumns(q);
  return q.groupIndex.some((g, c) => g !== Math.floor(c / G));
}

/** New codes for every weight, computed from its code and the zero point of its block. */
export function mapCodes(
  q: QuantizedTensor,
  spec: GridSpec,
  f: (code: number, zero: number) => number,
  zeros: Float32Array,
): QuantizedTensor {
  const codes = unpackCodes(q);
  const param = paramIndexOf(q);
  for (let r = 0; r < q.rows; r++) {
    for (let c = 0; c < q.cols; c++) codes[r * q.cols + c] = f(codes[r * q.cols + c]!, q.zeros[param(r, c)]!);
  }
  return {
    rows: q.rows,
    cols: q.cols,
    spec,
    qweight: makeGrid(spec).packing.pack(codes),
    scales: q.scales,
    zeros,
    ...(q.groupIndex && { groupIndex: q.groupIndex }),
  };
}

/**
 * Ternary and binary codes as a symmetric 2-bit integer grid with the same scales, exactly:
 * w = s·t (t ∈ {−1, 0, 1}, code t + 1) is s·(q − 2) with q = t + 2; binary ±1 (code c, value
 * 2c − 1) becomes q = 2c + 1.
 */
export function ternaryAsInt2(q: QuantizedTensor): QuantizedTensor {
  const ternary = q.spec.format === 'ternary';
  const spec: GridSpec = {
    bits: 2,
    symmetric: true,
    granularity: q.spec.granularity,
    groupSize: q.spec.groupSize,
    scaleDtype: q.spec.scaleDtype,
  };
  return mapCodes(q, spec, (c) => (ternary ? c + 1 : 2 * c + 1), new Float32Array(q.scales.length).fill(2));
}

/**
 * Pack `streams` independent streams of `count` b-bit unsigned values each into a new Int32Array
 * of `length` words: value i of stream s is `value(s, i)`, written LSB-first at bit i·b of the
 * stream, and stream word k lands at index `wordAt(s, k)`.
 */
export function packStreams(
  streams: number,
  count: number,
  bits: number,
  length: number,
  value: (s: number, i: number) => number,
  wordAt: (s: number, k: number) => number,
): Int32Array {
  const out = new Int32Array(length);
  for (let s = 0; s < streams; s++) {
    for (let i = 0; i < count; i++) {
      const v = value(s, i);
      const bit = i * bits;
      const k = bit >>> 5;
      const shift = bit & 31;
      out[wordAt(s, k)]! |= v << shift;
      // The high bits of a value crossing the word boundary start the next word.
      if (shift + bits > 32) out[wordAt(s, k + 1)]! |= v >>> (32 - shift);
    }
  }
  return out;
}

/** Words of a stream of `count` b-bit values. */
export const wordCount = (count: number, bits: number): number => Math.ceil((count * bits) / 32);

/** The rows of `q` must be whole words when the layout has no padding (GPTQ). */
export function requireWholeWords(name: string, count: number, bits: number, what: string): void {
  if ((count * bits) % 32 !== 0) {
    throw new ShapeError(`${what} of ${count} ${bits}-bit values is not a whole number of int32 words`, {
      field: name,
      expected: `a multiple of ${32 / gcd(32, bits)}`,
      got: String(count),
    });
  }
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

/** Warnings collected for the report and passed on to `onWarning` as they come. */
export function warningCollector(onWarning?: (message: string) => void) {
  const warnings: string[] = [];
  return {
    warnings,
    warn: (m: string) => {
      warnings.push(m);
      onWarning?.(m);
    },
  };
}

/**
 * Write `model` with its quantized linears as `encode` lays them out (unquantized tensors F32,
 * as the checkpoint holds them) into a Hugging Face directory (writeHfDirectory); the report's
 * per-linear rows and stored bits per weight.
 */
export async function writeQuantizedModel<L extends PlannedLinear>(
  model: LoadedModel,
  outDir: string,
  planned: L[],
  encode: (base: string, l: L) => TensorToWrite[],
  quantizationConfig: Record<string, unknown>,
  extra: Record<string, unknown>,
  output: OutputOptions,
): Promise<Pick<SafetensorsExportReport, 'output' | 'linears' | 'bitsPerWeight' | 'bytes' | 'tokenizer'>> {
  const quantized = new Map(planned.map((l) => [l.name, l]));
  const tensors: TensorToWrite[] = [];
  const linears: ExportedLinear[] = [];
  let weights = 0;
  let linearBytes = 0;
  for (const [name, t] of model.weights) {
    const l = quantized.get(name);
    if (!l) {
      tensors.push({ name, dtype: 'F32', shape: t.shape, data: t.data });
      continue;
    }
    const own = encode(name.replace(/\.weight$/, ''), l);
    const bytes = own.reduce((n, x) => n + x.data.byteLength, 0);
    tensors.push(...own);
    weights += l.q.rows * l.q.cols;
    linearBytes += bytes;
    linears.push({ name, grid: gridName(l.q.spec), source: l.source, bytes, note: l.note });
  }
  const { bytes, tokenizer } = await writeHfDirectory(
    outDir,
    model,
    tensors,
    quantizationConfig,
    extra,
    output,
  );
  return {
    output: path.resolve(outDir),
    linears,
    bitsPerWeight: (linearBytes * 8) / weights,
    bytes,
    tokenizer,
  };
}

/**
 * Write a Hugging Face model directory crash-safely: model.safetensors (`tensors`), config.json
 * (the source's config with `quantization_config` replaced), generation_config.json, the
 * tokenizer files (a llama2.c tokenizer.bin converted to tokenizer.json, id for id), and `extra`
 * JSON files (quantize_config.json).
 */
export async function writeHfDirectory(
  outDir: string,
  model: LoadedModel,
  tensors: TensorToWrite[],
  quantizationConfig: Record<string, unknown>,
  extra: Record<string, unknown> = {},
  output: OutputOptions = {},
): Promise<{ bytes: number; tokenizer: SafetensorsExportReport['tokenizer'] }> {
  const { quantization_config: _ptqkit, ...config } = model.hfConfig;
  let tokenizer: SafetensorsExportReport['tokenizer'] = 'none';
  await writeDirectoryAtomically(
    outDir,
    async (tmp) => {
      await writeSafetensors(path.join(tmp, SAFETENSORS_FILE), tensors, { format: 'pt' });
      await writeJson(path.join(tmp, 'config.json'), { ...config, quantization_config: quantizationConfig });
      for (const [file, json] of Object.entries(extra)) await writeJson(path.join(tmp, file), json);
      const c = model.config;
      const sourceGeneration = path.join(model.path, 'generation_config.json');
      if (model.source === 'huggingface' && existsSync(sourceGeneration)) {
        await copyFile(sourceGeneration, path.join(tmp, 'generation_config.json'));
      } else {
        await writeJson(path.join(tmp, 'generation_config.json'), {
          ...(c.bosTokenId !== undefined && { bos_token_id: c.bosTokenId }),
          ...(c.eosTokenId !== undefined && { eos_token_id: c.eosTokenId }),
        });
      }
      if (model.tokenizer instanceof Llama2cTokenizer) {
        for (const [name, json] of Object.entries(llama2cTokenizerJson(model.tokenizer.vocabulary(), c)))
          await writeJson(path.join(tmp, name), json);
        tokenizer = 'converted from tokenizer.bin';
      } else {
        // A GGUF source's vocabulary lives in the .gguf file itself: no Hugging Face files to copy.
        const files = model.tokenizerFiles.filter((f) => !f.endsWith('.gguf'));
        for (const f of files) await copyFile(f, path.join(tmp, path.basename(f)));
        if (files.length) tokenizer = 'copied';
      }
    },
    { ...output, inputs: [model.path, ...(output.inputs ?? [])] },
  );
  const { size: bytes } = await stat(path.join(outDir, SAFETENSORS_FILE));
  return { bytes, tokenizer };
}

async function writeJson(file: string, value: unknown): Promise<void> {
  await writeFile(file, `${JSON.stringify(value, null, 2)}\n`);
}
