/**
 * `ptq export --format gptq`: the GPTQ v1 checkpoint layout that AutoGPTQ, GPTQModel and
 * transformers (GPTQConfig, through GPTQModel/optimum) load. Per quantized linear `X` with
 * weight [out, in], g = group size (in for per-channel), G = in / g groups (AutoGPTQ
 * qlinear `pack`, GPTQModel utils/model_dequant.py):
 *
 *   X.qweight  I32 [in·b/32, out]  column o holds the codes q[o, 0..in) as a bit stream along the
 *                                  input, LSB-first: code i at bits [i·b, (i+1)·b) of the column's
 *                                  words (b = 3: 32 codes per 3 words, codes 10 and 21 split)
 *   X.qzeros   I32 [G, out·b/32]   row j holds (z[o, j] − 1) for o = 0..out as a bit stream along
 *                                  the output: the v1 convention, every reader adds 1 back
 *   X.scales   F16 [G, out]        s[o, j]
 *   X.g_idx    I32 [in]            group of each input column (⌊i / g⌋, or act-order's groups)
 *   (no X.weight)                  w[o, i] = scales[g_idx[i], o] · (q[o, i] − (qzeros[g_idx[i], o] + 1))
 *
 * config.json gets quantization_config {quant_method "gptq", bits, group_size (−1 = per
 * channel), desc_act, sym, true_sequential, static_groups false, checkpoint_format "gptq",
 * pack_dtype "int32"}, also written as quantize_config.json (AutoGPTQ's file). Every linear
 * must share bits, group size and sym: the config is global.
 *
 * Worked example (test/export/gptq-safetensors.test.ts, README "safetensors export"): int4, one
 * group of 8, codes q[o, i] = (o + i) mod 16, symmetric (z = 8): qweight[0, o] = 0x76543210 +
 * 0x11111111·o (mod 2^32; o = 0 gives 0x76543210, o = 1 gives 0x87654321), qzeros[0, 0] =
 * 0x77777777 (eight 7s: z − 1 per output column).
 *
 * Grids without an exact GPTQ form are mapped or re-quantized, never written wrong:
 *  - 5..7-bit integer codes become 8-bit codes q − z + 128 with z = 128 (exact; announced);
 *  - ternary / binary become symmetric 2-bit codes (exact);
 *  - per-tensor scales are repeated over the output columns with group size −1 (exact);
 *  - bf16/f32 scales that f16 cannot hold are rounded to f16, codes kept (announced, max |Δw|);
 *  - a zero point 0 (asymmetric) has no v1 encoding (0 − 1 wraps; kernels that add 1 without
 *    masking read 2^b): the zero becomes 1 and the codes q + 1, the top code saturating
 *    (announced with the count of changed weights);
 *  - float zero points (HQQ), column scales (SINQ) and float number formats are re-quantized
 *    with RTN onto the nearest GPTQ grid (same group size, 2/3/4/8 bits ≥ the element width)
 *    from the dequantized weights (announced).
 */

import { ConfigError, UsageError } from '../errors.js';
import { blockShapeOf, type GridSpec, gridName } from '../formats/grid.js';
import { encodeF16, roundToF16 } from '../formats/half.js';
import { formatBits } from '../formats/number-formats.js';
import { dequantize, type QuantizedTensor, unpackCodes } from '../formats/quantized-tensor.js';
import type { OutputOptions } from '../io/atomic.js';
import type { TensorToWrite } from '../io/safetensors.js';
import type { LoadedModel } from '../model/load.js';
import type { Exporter } from './exporter.js';
import {
  groupColumns,
  hasActOrder,
  mapCodes,
  maxAbsDifference,
  type PlannedLinear,
  packStreams,
  quantizedLinears,
  requantize,
  requantizedWarning,
  requireWholeWords,
  type SafetensorsExportReport,
  summarizeSafetensors,
  ternaryAsInt2,
  warningCollector,
  writeQuantizedModel,
  writesLlamaNames,
} from './hf-safetensors.js';
import { assertWeightOnly } from './weight-only.js';

/** Code widths the GPTQ v1 layout (and transformers' GPTQConfig) accepts. */
export const GPTQ_BITS = [2, 3, 4, 8] as const;

export interface GptqExportOptions extends OutputOptions {
  /** Called with each warning (re-quantization, mapped grids, f16 rounding, zero points). */
  onWarning?(message: string): void;
}

/** The four tensors of one GPTQ linear. */
export interface GptqLinear {
  bits: number;
  /** Input columns per group (in for per-channel). */
  groupSize: number;
  /** [in·b/32, out]. */
  qweight: Int32Array;
  /** [G, out·b/32], zero − 1 packed along the output. */
  qzeros: Int32Array;
  /** [G, out], f16 values. */
  scales: Float32Array;
  /** [in]. */
  gIdx: Int32Array;
}

/**
 * GPTQ tensors of an integer grid with integer zero points in [1, 2^b − 1], f16 scales and
 * 2/3/4/8-bit codes (planGptqLinear establishes all of it).
 */
export function encodeGptqLinear(name: string, q: QuantizedTensor): GptqLinear {
  const { rows: out, cols: inF } = q;
  const bits = q.spec.bits;
  requireWholeWords(name, inF, bits, 'an input row');
  requireWholeWords(name, out, bits, 'an output column');
  const g = groupColumns(q);
  const numGroups = inF / g;
  const codes = unpackCodes(q);
  const [blockRows] = blockShapeOf(q.spec, out, inF);
  const gIdx = q.groupIndex ?? Int32Array.from({ length: inF }, (_, i) => Math.floor(i / g));

  // qweight[k, o]: word k of output column o's code stream along the input.
  const qweight = packStreams(
    out,
    inF,
    bits,
    ((inF * bits) / 32) * out,
    (o, i) => codes[o * inF + i]!,
    (o, k) => k * out + o,
  );
  // scales / zeros [G, out]: the transpose of ptqkit's [out / blockRows, G] (per-tensor and
  // per-channel grids repeat their row's parameters).
  const scales = new Float32Array(numGroups * out);
  const zeros = new Int32Array(numGroups * out);
  for (let j = 0; j < numGroups; j++) {
    for (let o = 0; o < out; o++) {
      const p = Math.floor(o / blockRows) * numGroups + j;
      scales[j * out + o] = q.scales[p]!;
      zeros[j * out + o] = q.zeros[p]!;
    }
  }
  const bad = zeros.findIndex((z) => z < 1 || z >= 2 ** bits);
  if (bad >= 0) {
    throw new UsageError('zero point outside the GPTQ v1 range (it stores z − 1 in b bits)', {
      field: name,
      expected: `1 .. ${2 ** bits - 1}`,
      got: String(zeros[bad]),
      hint: 'map the linear with planGptqLinear first',
    });
  }
  // qzeros[j, k]: word k of group j's stream of z − 1 along the output (v1).
  const zeroWords = (out * bits) / 32;
  const qzeros = packStreams(
    numGroups,
    out,
    bits,
    numGroups * zeroWords,
    (j, o) => zeros[j * out + o]! - 1,
    (j, k) => j * zeroWords + k,
  );
  return { bits, groupSize: g, qweight, qzeros, scales, gIdx };
}

/**
 * The GPTQ form of one linear: `q` itself when it already is one, otherwise the exact mapping
 * or the announced re-quantization described in the header.
 */
export function planGptqLinear(planned: PlannedLinear, warn: (m: string) => void): PlannedLinear {
  const { name } = planned;
  let q = planned.q;
  let source = planned.source;
  const notes: string[] = [];
  const format = q.spec.format ?? 'int';
  if (format === 'ternary' || format === 'binary') {
    q = ternaryAsInt2(q);
    source = 'mapped';
    notes.push(`${format} codes as symmetric 2-bit codes (exact)`);
  } else if (format !== 'int' || q.spec.zeroPoint === 'float' || q.columnScales) {
    const reason =
      format !== 'int'
        ? `has ${format} codes, which GPTQ's integer codes cannot hold`
        : q.columnScales
          ? 'has per-column scales (SINQ), which GPTQ cannot store'
          : 'has float zero points (HQQ), which GPTQ stores as integers';
    const elementBits = format === 'int' ? q.spec.bits : formatBits(format)!;
    const spec: GridSpec = {
      bits: GPTQ_BITS.find((b) => b >= Math.min(elementBits, 8))!,
      symmetric: format !== 'int' || q.spec.symmetric,
      granularity: q.spec.granularity,
      groupSize: q.spec.groupSize,
      scaleDtype: 'f16',
    };
    const r = requantize(name, q, spec);
    warn(requantizedWarning(name, q.spec, reason, spec, r.maxShift));
    q = r.q;
    source = 'requantized';
  } else if (!(GPTQ_BITS as readonly number[]).includes(q.spec.bits)) {
    // q − z ∈ (−2^b, 2^b) ⊂ [−127, 127] for b ≤ 7: an exact symmetric 8-bit code around 128.
    const from = gridName(q.spec);
    q = mapCodes(
      q,
      { ...q.spec, bits: 8, symmetric: true, zeroPoint: undefined },
      (c, z) => c - z + 128,
      new Float32Array(q.scales.length).fill(128),
    );
    source = 'mapped';
    notes.push(`${from} codes stored as 8-bit codes q − z + 128 (exact)`);
    warn(
      `${name}: GPTQ has no ${from.split('-')[0]} layout; its codes are stored as 8-bit codes q − z + 128 (exact, 8 bits per weight)`,
    );
  }
  q = f16Scales(name, q, warn, notes);
  q = liftZeroZero(name, q, warn, notes);
  if (source === 'codes' && notes.length) source = 'mapped';
  return { name, q, source, note: notes.join('; ') || undefined };
}

/** GPTQ stores f16 scales: exact when every scale is an f16 value, else rounded (announced). */
function f16Scales(
  name: string,
  q: QuantizedTensor,
  warn: (m: string) => void,
  notes: string[],
): QuantizedTensor {
  if (q.spec.scaleDtype === 'f16') return q;
  const scales = Float32Array.from(q.scales, roundToF16);
  const spec: GridSpec = { ...q.spec, scaleDtype: 'f16' };
  const bad = scales.findIndex((s, i) => !Number.isFinite(s) || (s === 0 && q.scales[i] !== 0));
  if (bad >= 0) {
    throw new UsageError('a scale has no f16 value, which GPTQ stores', {
      field: name,
      expected: `|scale| within the f16 range (2^-24 .. 65504)`,
      got: String(q.scales[bad]),
      hint: 'quantize with --scale-dtype f16, or export --format compressed-tensors (bf16/f32 scales)',
    });
  }
  if (scales.every((s, i) => s === q.scales[i])) {
    notes.push(`${q.spec.scaleDtype} scales are f16 values (exact)`);
    return { ...q, spec, scales };
  }
  const mapped = { ...q, spec, scales };
  const shift = maxAbsDifference(dequantize(q), dequantize(mapped));
  notes.push(`${q.spec.scaleDtype} scales rounded to f16`);
  warn(
    `${name}: ${q.spec.scaleDtype} scales rounded to f16, which GPTQ stores; codes kept (max |Δw| ${shift.toExponential(2)})`,
  );
  return mapped;
}

/**
 * v1 stores z − 1, so z = 0 has no encoding: such blocks get z = 1 and codes min(q + 1, 2^b − 1).
 * Only weights at the top code change (by one step); the count is announced.
 */
function liftZeroZero(
  name: string,
  q: QuantizedTensor,
  warn: (m: string) => void,
  notes: string[],
): QuantizedTensor {
  if (q.spec.symmetric || !q.zeros.includes(0)) return q;
  const maxq = 2 ** q.spec.bits - 1;
  const blocks = q.zeros.reduce((n, z) => n + (z === 0 ? 1 : 0), 0);
  let changed = 0;
  const lifted = mapCodes(
    q,
    q.spec,
    (c, z) => {
      if (z !== 0) return c;
      if (c === maxq) changed++;
      return Math.min(c + 1, maxq);
    },
    Float32Array.from(q.zeros, (z) => (z === 0 ? 1 : z)),
  );
  const shift = maxAbsDifference(dequantize(q), dequantize(lifted));
  notes.push(`${blocks} zero points 0 raised to 1`);
  warn(
    `${name}: ${blocks} block(s) have zero point 0, which GPTQ v1 cannot store (it stores z − 1); ` +
      `raised to 1 with codes + 1: ${changed} weight(s) at the top code move one step (max |Δw| ${shift.toExponential(2)})`,
  );
  return lifted;
}

/** Export `model` (a ptqkit checkpoint, or a float model quantized with RTN int4 g32) as a GPTQ v1 directory. */
/** `ptq export --format gptq` (registry.ts). */
export const GPTQ_EXPORTER: Exporter<object, SafetensorsExportReport> = {
  name: 'gptq',
  description:
    'GPTQ v1 safetensors directory (qweight/qzeros/scales/g_idx): GPTQModel, AutoGPTQ, transformers',
  output: 'directory',
  options: [],
  weightOnly: true,
  writes: writesLlamaNames,
  run: (model, output, options) => exportGptq(model, output, options),
  summarize: summarizeSafetensors,
};

export async function exportGptq(
  model: LoadedModel,
  outDir: string,
  options: GptqExportOptions = {},
): Promise<SafetensorsExportReport> {
  assertWeightOnly(model, 'gptq');
  const { warnings, warn } = warningCollector(options.onWarning);
  const planned = quantizedLinears(model).map((l) => planGptqLinear(l, warn));
  if (planned.length === 0) throw new ConfigError('no linear layers to quantize', { file: model.path });
  const first = planned[0]!.q;
  const groupSizeOf = (q: QuantizedTensor) => (q.spec.granularity === 'group' ? q.spec.groupSize : -1);
  const bits = first.spec.bits;
  const groupSize = groupSizeOf(first);
  for (const { name, q } of planned) {
    if (q.spec.bits !== bits || groupSizeOf(q) !== groupSize) {
      throw new UsageError(
        'GPTQ needs one bit width and group size for every linear (quantization_config is global)',
        {
          field: name,
          expected: `${bits} bits, group size ${groupSize}`,
          got: `${q.spec.bits} bits, group size ${groupSizeOf(q)}`,
        },
      );
    }
  }
  const sym = planned.every((l) => l.q.spec.symmetric);
  const descAct = planned.some((l) => hasActOrder(l.q));

  const settings = model.quantization?.settings ?? {};
  const gptq = settings.gptq as { damp?: number } | undefined;
  const quantizeConfig = {
    quant_method: 'gptq',
    bits,
    group_size: groupSize,
    desc_act: descAct,
    sym,
    true_sequential: settings.true_sequential ?? true,
    static_groups: false,
    // AutoGPTQ and transformers require 0 < damp_percent < 1; only a GPTQ run has one.
    ...(gptq?.damp !== undefined && gptq.damp > 0 && gptq.damp < 1 && { damp_percent: gptq.damp }),
    checkpoint_format: 'gptq',
    pack_dtype: 'int32',
    meta: { quantizer: ['ptqkit'], ptqkit_method: model.quantization?.method ?? 'rtn' },
  };
  const written = await writeQuantizedModel(
    model,
    outDir,
    planned,
    encodeGptqTensors,
    quantizeConfig,
    {
      'quantize_config.json': quantizeConfig,
    },
    options,
  );
  return {
    ...written,
    format: 'gptq',
    layout: `GPTQ v1 int${bits} ${groupSize === -1 ? 'per-channel' : `g${groupSize}`} ${sym ? 'sym' : 'asym'}${descAct ? ' act-order' : ''}`,
    warnings,
  };
}

/** The safetensors tensors of one planned linear under `base` (the weight's name without ".weight"). */
function encodeGptqTensors(base: string, l: PlannedLinear): TensorToWrite[] {
  const e = encodeGptqLinear(`${base}.weight`, l.q);
  const out = l.q.rows;
  const groups = e.scales.length / out;
  return [
    { name: `${base}.qweight`, dtype: 'I32', shape: [e.qweight.length / out, out], data: e.qweight },
    { name: `${base}.qzeros`, dtype: 'I32', shape: [groups, e.qzeros.length / groups], data: e.qzeros },
    { name: `${base}.scales`, dtype: 'F16', shape: [groups, out], data: encodeF16(e.scales) },
    { name: `${base}.g_idx`, dtype: 'I32', shape: [l.q.cols], data: e.gIdx },
  ];
}
