/**
 * `ptq export --format compressed-tensors`: the layouts llm-compressor saves and vLLM /
 * transformers (CompressedTensorsConfig) load, from compressed-tensors' compressors
 * (compressors/pack_quantized, nvfp4, mxfp4, mxfp8, naive_quantized; quantization/quant_args.py).
 * Per quantized linear `X` with weight [out, in], G groups per row:
 *
 *   pack-quantized (integer codes, PackedQuantizationCompressor):
 *     X.weight_packed      I32 [out, ⌈in·b/32⌉]  row r: the codes as one LSB-first bit stream,
 *                          value i at bits [i·b, (i+1)·b), crossing words when 32 mod b ≠ 0
 *                          (pack_to_int32 of compressed-tensors ≥ 0.18; earlier releases put
 *                          ⌊32/b⌋ values per word, the same words for b = 2, 4, 8). The stored
 *                          value is the signed code q_s ∈ [−2^(b−1), 2^(b−1)) plus 2^(b−1),
 *                          i.e. ptqkit's unsigned code q.
 *     X.weight_scale       [out, G] in the scale dtype (F16/BF16/F32)
 *     X.weight_zero_point  I32 [⌈out·b/32⌉, G]   asymmetric only: z_s + 2^(b−1) = ptqkit's z,
 *                          packed the same way along the output dimension (packed_dim 0)
 *     X.weight_shape       I64 [2] = [out, in]
 *     X.weight_g_idx       I32 [in]  act-order only (actorder "group"): the group of each column
 *     w = (q_s − z_s) · s = (q − z) · s   (symmetric: z_s = 0)
 *   float-quantized (FP8 E4M3 codes, FloatQuantizationCompressor):
 *     X.weight F8_E4M3 [out, in], X.weight_scale [1] | [out, 1] | [out, G];  w = e4m3(code) · s
 *   nvfp4-pack-quantized (NVFP4PackedCompressor):
 *     X.weight_packed U8 [out, in/2] (E2M1 codes, element 2j in the low nibble),
 *     X.weight_scale F8_E4M3 [out, in/16], X.weight_global_scale F32 [1] = g = 448·6 / amax(W);
 *     w = e2m1(code) · (s / g)   (the stored global scale divides: _dequantize's scale / global_scale)
 *   mxfp4-pack-quantized / mxfp8-quantized: E2M1 nibbles as NVFP4 / E4M3 bytes, X.weight_scale U8
 *     [out, in/32] E8M0 biased exponents (scale = 2^(e − 127)), no global scale.
 *
 * config.json's quantization_config: {quant_method "compressed-tensors", format, quantization_status
 * "compressed", config_groups {group_0: {targets ["Linear"], weights: QuantizationArgs,
 * input_activations null, output_activations null}}, ignore ["lm_head"], kv_cache_scheme null}.
 * QuantizationArgs carry only fields every compressed-tensors release accepts (extra="forbid"):
 * scale_dtype is added for the MX formats only (which need it and postdate it).
 *
 * Grids are mapped exactly where the format allows, else re-quantized with an announcement:
 *  - ternary / binary become symmetric 2-bit codes; FP6/FP4 (amax-scaled) and MXFP6 codes become
 *    E4M3 codes (every E2M1/E2M3/E3M2 value is an E4M3 value) with the same scales;
 *  - per-tensor integer scales are repeated per output channel; e4m3 scales of integer/FP8 grids
 *    are written as F16 (every E4M3 value is an f16 value);
 *  - float zero points (HQQ), column scales (SINQ), E5M2 codes and act-order on formats without
 *    weight_g_idx (NVFP4, MX) are re-quantized with RTN from the dequantized weights.
 */

import { ConfigError, UsageError } from '../errors.js';
import { packBits } from '../formats/bitpack.js';
import { ELEMENT_FORMATS, FP8_E4M3 } from '../formats/element-formats.js';
import { blockShapeOf, type GridSpec } from '../formats/grid.js';
import { type FormatName, formatInfo } from '../formats/number-formats.js';
import { type QuantizedTensor, unpackCodes } from '../formats/quantized-tensor.js';
import type { OutputOptions } from '../io/atomic.js';
import { encodeParams } from '../io/ptq-checkpoint.js';
import type { TensorToWrite } from '../io/safetensors.js';
import type { LoadedModel } from '../model/load.js';
import { groupContiguousOrder } from '../onnx/matmul-nbits.js';
import type { Exporter } from './exporter.js';
import {
  groupColumns,
  hasActOrder,
  mapCodes,
  type PlannedLinear,
  packStreams,
  quantizedLinears,
  requantize,
  requantizedWarning,
  type SafetensorsExportReport,
  summarizeSafetensors,
  ternaryAsInt2,
  warningCollector,
  wordCount,
  writeQuantizedModel,
  writesLlamaNames,
} from './hf-safetensors.js';
import { assertWeightOnly } from './weight-only.js';

/** compressed-tensors' CompressionFormat of each layout written here. */
export type CtFormat =
  | 'pack-quantized'
  | 'float-quantized'
  | 'nvfp4-pack-quantized'
  | 'mxfp4-pack-quantized'
  | 'mxfp8-quantized';

export interface CompressedTensorsExportOptions extends OutputOptions {
  onWarning?(message: string): void;
}

export interface CtPlannedLinear extends PlannedLinear {
  format: CtFormat;
}

/** Formats whose compressor stores weight_g_idx (naive/float and pack-quantized). */
const G_IDX_FORMATS: readonly CtFormat[] = ['pack-quantized', 'float-quantized'];

/** Where each ptqkit number format goes, and whether its codes are re-encoded as E4M3. */
function targetOf(format: FormatName): { format: CtFormat; asE4m3?: boolean } | undefined {
  switch (format) {
    case 'int':
    case 'ternary':
    case 'binary':
      return { format: 'pack-quantized' };
    case 'fp8-e4m3':
      return { format: 'float-quantized' };
    case 'fp6-e3m2':
    case 'fp6-e2m3':
    case 'fp4-e2m1':
      return { format: 'float-quantized', asE4m3: true };
    case 'nvfp4':
      return { format: 'nvfp4-pack-quantized' };
    case 'mxfp4':
      return { format: 'mxfp4-pack-quantized' };
    case 'mxfp8':
      return { format: 'mxfp8-quantized' };
    case 'mxfp6-e3m2':
    case 'mxfp6-e2m3':
      return { format: 'mxfp8-quantized', asE4m3: true };
    default:
      return undefined; // fp8-e5m2: no E5M2 layout in compressed-tensors
  }
}

/** The compressed-tensors form of one linear (exact mapping or announced re-quantization). */
export function planCompressedTensorsLinear(
  planned: PlannedLinear,
  warn: (m: string) => void,
): CtPlannedLinear {
  const { name } = planned;
  let { q, source } = planned;
  const notes: string[] = [];
  const format = q.spec.format ?? 'int';
  const target = targetOf(format);
  const requant = (reason: string, spec: GridSpec) => {
    const r = requantize(name, q, spec);
    warn(requantizedWarning(name, q.spec, reason, spec, r.maxShift));
    q = r.q;
    source = 'requantized';
  };
  const storableScale = (d: GridSpec['scaleDtype']) => (d === 'e4m3' || d === 'e8m0' ? 'f16' : d);

  if (!target) {
    requant('has E5M2 codes, which compressed-tensors does not store', {
      ...q.spec,
      format: 'fp8-e4m3',
      scaleDtype: storableScale(q.spec.scaleDtype),
    });
  } else if (format === 'int' && (q.spec.zeroPoint === 'float' || q.columnScales)) {
    requant(q.columnScales ? 'has per-column scales (SINQ)' : 'has float zero points (HQQ)', {
      bits: q.spec.bits,
      symmetric: q.spec.symmetric,
      granularity: q.spec.granularity,
      groupSize: q.spec.groupSize,
      scaleDtype: storableScale(q.spec.scaleDtype),
    });
  } else if (
    hasActOrder(q) &&
    (!G_IDX_FORMATS.includes(target.format) || !groupContiguousOrder(q.groupIndex!, groupColumns(q)))
  ) {
    requant(
      G_IDX_FORMATS.includes(target.format)
        ? 'has act-order groups of unequal sizes'
        : `has act-order groups, which ${target.format} cannot store`,
      { ...q.spec },
    );
  } else if (format === 'ternary' || format === 'binary') {
    q = ternaryAsInt2(q);
    notes.push(`${format} codes as symmetric 2-bit codes (exact)`);
  } else if (target.asE4m3) {
    // Same scales, each element value re-encoded as the E4M3 code of the same value.
    const element = ELEMENT_FORMATS[formatInfo(format).element!];
    const spec: GridSpec = { ...q.spec, bits: 8, format: format.startsWith('mx') ? 'mxfp8' : 'fp8-e4m3' };
    q = mapCodes(q, spec, (c) => FP8_E4M3.encode(element.decode(c)), q.zeros);
    notes.push(`${format} values as E4M3 codes (exact)`);
  }
  if (q.spec.scaleDtype === 'e4m3' && (q.spec.format ?? 'int') !== 'nvfp4') {
    q = { ...q, spec: { ...q.spec, scaleDtype: 'f16' } };
    notes.push('e4m3 scales written as f16 (exact)');
  }
  if (source === 'codes' && notes.length) source = 'mapped';
  const ctFormat = targetOf(q.spec.format ?? 'int')!.format;
  return { name, q, source, format: ctFormat, note: notes.join('; ') || undefined };
}

/** QuantizationArgs of the weights, as compressed-tensors serializes them. */
export function weightArgs(q: QuantizedTensor, format: CtFormat): Record<string, unknown> {
  const group = q.spec.granularity === 'group';
  const common = {
    block_structure: null,
    dynamic: false,
    actorder: hasActOrder(q) ? 'group' : null,
  };
  const observer = { observer: 'minmax', observer_kwargs: {} };
  switch (format) {
    case 'pack-quantized':
    case 'float-quantized':
      return {
        num_bits: q.spec.bits,
        type: format === 'pack-quantized' ? 'int' : 'float',
        symmetric: q.spec.symmetric,
        group_size: group ? q.spec.groupSize : null,
        // Per-tensor integer scales are written per channel (pack-quantized packs zero points per channel or group).
        strategy: group
          ? 'group'
          : q.spec.granularity === 'tensor' && format === 'float-quantized'
            ? 'tensor'
            : 'channel',
        ...common,
        ...observer,
      };
    case 'nvfp4-pack-quantized':
      return {
        num_bits: 4,
        type: 'float',
        symmetric: true,
        group_size: 16,
        strategy: 'tensor_group',
        ...common,
        ...observer,
      };
    case 'mxfp4-pack-quantized':
    case 'mxfp8-quantized':
      return {
        num_bits: format === 'mxfp4-pack-quantized' ? 4 : 8,
        type: 'float',
        symmetric: true,
        group_size: 32,
        strategy: 'group',
        ...common,
        scale_dtype: 'torch.uint8',
        ...observer,
      };
  }
}

/** The safetensors tensors of one planned linear under `base` (the weight's name without ".weight"). */
export function encodeCompressedTensorsLinear(base: string, l: CtPlannedLinear): TensorToWrite[] {
  const { q, format } = l;
  const { rows: out, cols: inF } = q;
  const codes = unpackCodes(q);
  const [blockRows, blockCols] = blockShapeOf(q.spec, out, inF);
  const G = inF / blockCols;
  // [out, G] parameters (per-tensor grids repeat their single value per row).
  const perRow = (values: Float32Array) => {
    const m = new Float32Array(out * G);
    for (let r = 0; r < out; r++)
      for (let j = 0; j < G; j++) m[r * G + j] = values[Math.floor(r / blockRows) * G + j]!;
    return m;
  };
  // Scales in their dtype: F16/BF16/F32, F8_E4M3 (NVFP4), U8 E8M0 exponents (MX).
  const perTensor = format === 'float-quantized' && q.spec.granularity === 'tensor';
  const scale: TensorToWrite = {
    name: `${base}.weight_scale`,
    ...encodeParams(perTensor ? q.scales : perRow(q.scales), q.spec.scaleDtype),
    shape: perTensor ? [1] : [out, G],
  };
  const gIdx: TensorToWrite[] = hasActOrder(q)
    ? [{ name: `${base}.weight_g_idx`, dtype: 'I32', shape: [inF], data: q.groupIndex! }]
    : [];
  switch (format) {
    case 'pack-quantized': {
      const bits = q.spec.bits;
      const words = wordCount(inF, bits);
      const packed = packStreams(
        out,
        inF,
        bits,
        out * words,
        (r, i) => codes[r * inF + i]!,
        (r, k) => r * words + k,
      );
      const tensors: TensorToWrite[] = [
        { name: `${base}.weight_packed`, dtype: 'I32', shape: [out, words], data: packed },
        scale,
      ];
      if (!q.spec.symmetric) {
        const zeros = perRow(q.zeros);
        const zeroWords = wordCount(out, bits);
        // Along dim 0: stream j is group j's zero points over the outputs.
        const zp = packStreams(
          G,
          out,
          bits,
          zeroWords * G,
          (j, o) => zeros[o * G + j]!,
          (j, k) => k * G + j,
        );
        tensors.push({ name: `${base}.weight_zero_point`, dtype: 'I32', shape: [zeroWords, G], data: zp });
      }
      const shape = BigInt64Array.of(BigInt(out), BigInt(inF));
      return [...tensors, { name: `${base}.weight_shape`, dtype: 'I64', shape: [2], data: shape }, ...gIdx];
    }
    case 'float-quantized':
    case 'mxfp8-quantized':
      return [{ name: `${base}.weight`, dtype: 'F8_E4M3', shape: [out, inF], data: codes }, scale, ...gIdx];
    case 'nvfp4-pack-quantized':
    case 'mxfp4-pack-quantized': {
      const packed: TensorToWrite = {
        name: `${base}.weight_packed`,
        dtype: 'U8',
        shape: [out, inF / 2],
        data: packBits(codes, 4),
      };
      if (format === 'mxfp4-pack-quantized') return [packed, scale];
      const globalScale = Float32Array.of(q.spec.globalScale!);
      return [
        packed,
        scale,
        { name: `${base}.weight_global_scale`, dtype: 'F32', shape: [1], data: globalScale },
      ];
    }
  }
}

/** Export `model` (a ptqkit checkpoint, or a float model quantized with RTN int4 g32) as a compressed-tensors directory. */
/** `ptq export --format compressed-tensors` (registry.ts). */
export const COMPRESSED_TENSORS_EXPORTER: Exporter<object, SafetensorsExportReport> = {
  name: 'compressed-tensors',
  description:
    'compressed-tensors directory (pack-quantized, float-quantized FP8, nvfp4/mxfp4/mxfp8): vLLM, transformers',
  output: 'directory',
  options: [],
  weightOnly: true,
  writes: writesLlamaNames,
  run: (model, output, options) => exportCompressedTensors(model, output, options),
  summarize: summarizeSafetensors,
};

export async function exportCompressedTensors(
  model: LoadedModel,
  outDir: string,
  options: CompressedTensorsExportOptions = {},
): Promise<SafetensorsExportReport> {
  assertWeightOnly(model, 'compressed-tensors');
  const { warnings, warn } = warningCollector(options.onWarning);
  const planned = quantizedLinears(model).map((l) => planCompressedTensorsLinear(l, warn));
  if (planned.length === 0) throw new ConfigError('no linear layers to quantize', { file: model.path });
  const format = planned[0]!.format;
  const weights = weightArgs(planned[0]!.q, format);
  for (const l of planned) {
    const args = weightArgs(l.q, l.format);
    if (l.format !== format || JSON.stringify(args) !== JSON.stringify(weights)) {
      throw new UsageError('compressed-tensors export needs one scheme for every linear', {
        field: l.name,
        expected: `${format} ${JSON.stringify(weights)}`,
        got: `${l.format} ${JSON.stringify(args)}`,
      });
    }
  }
  const bits = planned[0]!.q.spec.bits;
  if (format === 'pack-quantized' && 32 % bits !== 0) {
    warn(
      `pack-quantized ${bits}-bit codes are packed densely across int32 words (compressed-tensors ≥ 0.18); ` +
        `earlier releases read ⌊32/${bits}⌋ codes per word`,
    );
  }

  const quantizationConfig = {
    config_groups: {
      group_0: { targets: ['Linear'], weights, input_activations: null, output_activations: null },
    },
    format,
    global_compression_ratio: null,
    ignore: ['lm_head'],
    kv_cache_scheme: null,
    quant_method: 'compressed-tensors',
    quantization_status: 'compressed',
  };
  const written = await writeQuantizedModel(
    model,
    outDir,
    planned,
    encodeCompressedTensorsLinear,
    quantizationConfig,
    {},
    options,
  );
  const w = weights as {
    actorder: string | null;
    num_bits: number;
    type: string;
    strategy: string;
    group_size: number | null;
    symmetric: boolean;
  };
  return {
    ...written,
    format: 'compressed-tensors',
    layout:
      `${format} ${w.type}${w.num_bits} ${w.strategy}${w.group_size ? ` ${w.group_size}` : ''}` +
      `${w.symmetric ? '' : ' asym'}${w.actorder ? ' act-order' : ''}`,
    warnings,
  };
}
