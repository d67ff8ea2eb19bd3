/**
 * `ptq compare`: a grid of (method × format × bits) quantizations of one model, each evaluated
 * against the full-precision model on one text (perplexity, KLD, top-1 agreement), with the
 * per-layer errors and per-layer stored bits that report.ts draws.
 *
 * Everything runs in-process through the library (quantizeModel, evaluate); combinations that
 * cannot exist are listed as skipped with the reason instead of failing the whole grid.
 */

import { UsageError } from '../errors.js';
import type { GridSpec } from '../formats/grid.js';
import { gridName, validateGrid } from '../formats/grid.js';
import { type FormatName, formatBits, gridSpecFor } from '../formats/number-formats.js';
import { storedBits } from '../formats/quantized-tensor.js';
import type { ModelConfig } from '../model/config.js';
import { Decoder } from '../model/decoder.js';
import type { LoadedModel } from '../model/load.js';
import type { WindowProtocol } from '../model/perplexity.js';
import { type EvalResult, evaluate } from '../model/perplexity.js';
import { getMethod, isCalibrated } from '../quant/methods/index.js';
import { type Calibration, type MethodName, modelSize, quantizeModel } from '../quant/quantize-model.js';

export interface CompareOptions {
  methods: MethodName[];
  bits: number[];
  formats: FormatName[];
  /** Columns per scale of integer grids (formats with fixed blocks keep theirs). */
  groupSize: number;
  protocol: WindowProtocol;
  /** The evaluation text's file, recorded in the results. */
  text: string;
  calibration?: Calibration;
  onProgress?: (p: { run: number; runs: number; label: string }) => void;
}

/** One cell of the grid that will run. */
export interface PlannedRun {
  method: MethodName;
  format: FormatName;
  bits: number;
  spec: GridSpec;
}

export interface SkippedRun {
  method: MethodName;
  format: FormatName;
  bits: number;
  reason: string;
}

/** Which error a layer's `relativeError` is (both are ratios of squared Frobenius norms). */
export type LayerErrorMetric = 'output' | 'weight';

export interface CompareLayer {
  name: string;
  /** 'output': ‖WX − ŴX‖²/‖WX‖² on calibration inputs; 'weight': ‖W − Ŵ‖²/‖W‖². */
  relativeError: number;
  /** Stored bits of this layer (codes + scales + zeros + g_idx) per weight. */
  bitsPerWeight: number;
}

export interface CompareRun {
  /** Unique label: method and grid name. */
  label: string;
  method: string;
  format: string;
  grid: string;
  bitsPerWeight: number;
  bytes: number;
  perplexity: number;
  kld: number;
  top1Agreement: number;
  quantizeSeconds: number;
  evalTokensPerSecond: number;
  /** Peak resident set of the process so far (MiB): monotone over the runs. */
  peakRssMiB: number;
  layerMetric: LayerErrorMetric;
  layers: CompareLayer[];
  evaluation: EvalResult;
}

export interface CompareResults {
  model: string;
  text: string;
  protocol: string;
  tokens: number;
  reference: { bitsPerWeight: number; bytes: number; perplexity: number; evaluation: EvalResult };
  runs: CompareRun[];
  skipped: SkippedRun[];
}

/** The runnable cells of methods × formats × bits, and why the others cannot exist. */
export function planCompare(
  methods: MethodName[],
  formats: FormatName[],
  bits: number[],
  groupSize: number,
  config?: ModelConfig,
) {
  const runs: PlannedRun[] = [];
  const skipped: SkippedRun[] = [];
  for (const method of methods) {
    const record = getMethod(method, 'methods');
    const unsupported = record.unsupported?.({ config });
    for (const format of formats) {
      for (const b of bits) {
        const fixed = formatBits(format);
        if (unsupported) {
          skipped.push({ method, format, bits: b, reason: unsupported });
        } else if (format !== 'int' && record.integerOnly) {
          // quantizeModel refuses these: the method optimizes an integer grid's scales and zeros.
          skipped.push({ method, format, bits: b, reason: `${method} optimizes integer grids only` });
        } else if (fixed !== undefined && fixed !== b) {
          skipped.push({ method, format, bits: b, reason: `${format} has ${fixed}-bit codes` });
        } else {
          // Validated here so a bad --bits fails before the first (possibly long) run.
          const spec = validateGrid(
            format === 'int' ? gridSpecFor('int', { bits: b, groupSize }) : gridSpecFor(format, {}),
          );
          runs.push({ method, format, bits: b, spec });
        }
      }
    }
  }
  return { runs, skipped };
}

/** ‖W − Ŵ‖² / ‖W‖², the weight-space error of calibration-free runs (no inputs to weigh it by). */
export function weightRelativeError(w: Float32Array, q: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < w.length; i++) {
    const d = w[i]! - q[i]!;
    num += d * d;
    den += w[i]! * w[i]!;
  }
  return den > 0 ? num / den : 0;
}

export async function runCompare(
  model: LoadedModel,
  tokens: readonly number[],
  options: CompareOptions,
): Promise<CompareResults> {
  const { runs: plan, skipped } = planCompare(
    options.methods,
    options.formats,
    options.bits,
    options.groupSize,
    model.config,
  );
  if (plan.length === 0)
    throw new UsageError('no runnable combination in the grid', {
      field: 'methods',
      got: skipped.map((s) => s.reason).join('; '),
    });
  if (!options.calibration) {
    const needs = [...new Set(plan.filter((r) => isCalibrated(getMethod(r.method))).map((r) => r.method))];
    if (needs.length)
      throw new UsageError(`${needs.join(', ')} ${needs.length > 1 ? 'need' : 'needs'} calibration text`, {
        field: 'calib',
        hint: 'pass --calib <text file>, disjoint from the evaluation text',
      });
  }
  const reference = new Decoder(model.config, model.weights);
  const fp = await evaluate(reference, tokens, { protocol: options.protocol });
  const fpSize = modelSize(model.weights);
  const runs: CompareRun[] = [];
  for (const [i, p] of plan.entries()) {
    options.onProgress?.({ run: i, runs: plan.length, label: `${p.method} ${gridName(p.spec)}` });
    const q = await quantizeModel(model.config, model.weights, {
      method: p.method,
      grid: p.spec,
      calibration: options.calibration,
    });
    const evaluation = await evaluate(new Decoder(q.config, q.weights), tokens, {
      protocol: options.protocol,
      reference,
    });
    const size = modelSize(q.weights, q.quantization.tensors);
    const calibrated = q.layers.length > 0;
    const outputError = new Map(q.layers.map((l) => [l.name, l.relativeError]));
    const layers = [...q.quantization.tensors].map(([name, t]) => ({
      name,
      relativeError: calibrated
        ? outputError.get(name)!
        : weightRelativeError(model.weights.get(name)!.data, q.weights.get(name)!.data),
      bitsPerWeight: storedBits(t) / (t.rows * t.cols),
    }));
    // The grid the method used (HQQ's is always asymmetric), as quantizeModel records it.
    const grid = String(q.quantization.settings.grid_name ?? gridName(p.spec));
    runs.push({
      label: `${p.method} ${grid}`,
      method: p.method,
      format: p.format,
      grid,
      bitsPerWeight: size.bitsPerWeight,
      bytes: size.totalBytes,
      perplexity: evaluation.perplexity,
      kld: evaluation.kld!,
      top1Agreement: evaluation.top1Agreement!,
      quantizeSeconds: q.seconds,
      evalTokensPerSecond: evaluation.tokensPerSecond,
      peakRssMiB: process.resourceUsage().maxRSS / 1024,
      layerMetric: calibrated ? 'output' : 'weight',
      layers,
      evaluation,
    });
  }
  options.onProgress?.({ run: plan.length, runs: plan.length, label: 'done' });
  return {
    model: model.path,
    text: options.text,
    protocol: fp.protocol,
    tokens: tokens.length,
    reference: {
      bitsPerWeight: fpSize.bitsPerWeight,
      bytes: fpSize.totalBytes,
      perplexity: fp.perplexity,
      evaluation: fp,
    },
    runs,
    skipped,
  };
}
