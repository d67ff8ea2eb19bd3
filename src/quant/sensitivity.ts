/**
 * Per-layer sensitivity of a model to quantizing one block linear alone at each grid of a
 * palette, two ways:
 *  - measured: mean KL(P_fp ‖ P_q) on calibration text with only that layer RTN-quantized
 *    (the "one layer at a time" protocol of HAWQ's ablations and of Q-Palette / SliM-LLM);
 *  - proxy: Σ_j H_jj · ‖ΔW_:,j‖², ΔW = Q(W) − W, H_jj the diagonal of the layer's input second
 *    moment E[x xᵀ] from one fp forward. This is the second-order term ½ ΔWᵀ H ΔW of HAWQ-V2
 *    (arXiv:1911.03852 §3) with the Gauss–Newton/Fisher Hessian of the layer output
 *    ‖ΔW X‖² = tr(ΔW XXᵀ ΔWᵀ) kept to its diagonal, as BAQ's per-layer loss does.
 * Their Spearman rank correlation over layers × grids says how far the proxy can stand in.
 */
import { UsageError } from '../errors.js';
import { type GridSpec, makeGrid } from '../formats/grid.js';
import { type FormatName, gridSpecFor } from '../formats/number-formats.js';
import { dequantize, storedBits } from '../formats/quantized-tensor.js';
import { linearWeightName } from '../formats/tensor-names.js';
import { blockLinears } from '../model/architecture.js';
import type { ModelConfig } from '../model/config.js';
import { Decoder } from '../model/decoder.js';
import { evaluate } from '../model/perplexity.js';
import type { TensorMap } from '../tensor.js';
import { quantizeRtn } from './methods/rtn.js';

/** The default palette: integer g32 grids from 2 to 6 bits, int8 per channel, NVFP4. */
export const DEFAULT_PALETTE = [
  'int2-g32',
  'int3-g32',
  'int4-g32',
  'int5-g32',
  'int6-g32',
  'int8-ch',
  'nvfp4',
];

/**
 * A palette entry: `int<b>-g<G>` / `int<b>-ch` (symmetric integers, f16 scales) or a number
 * format's name (`nvfp4`, `mxfp4`, `fp8-e4m3-g32`, `fp8-e4m3-ch`).
 */
export function parseGridName(name: string): GridSpec {
  const int = /^int(\d)-(?:g(\d+)|ch)$/.exec(name);
  if (int) return gridSpecFor('int', { bits: Number(int[1]), groupSize: int[2] ? Number(int[2]) : 0 });
  const fmt = /^(.+?)(?:-(?:g(\d+)|(ch)))?$/.exec(name)!;
  try {
    return gridSpecFor(fmt[1] as FormatName, { groupSize: fmt[3] ? 0 : fmt[2] ? Number(fmt[2]) : undefined });
  } catch (e) {
    if (e instanceof UsageError)
      throw new UsageError(`unknown palette grid "${name}"`, {
        field: 'palette',
        expected: 'int<b>-g<G>, int<b>-ch or a format name (nvfp4, mxfp4, fp8-e4m3-g32)',
        got: name,
      });
    throw e;
  }
}

/** The palette's grids that fit every block linear's shape (a group must divide the columns...). */
export function fittingPalette(
  config: ModelConfig,
  weights: TensorMap,
  names: readonly string[],
): { name: string; spec: GridSpec }[] {
  const out: { name: string; spec: GridSpec }[] = [];
  for (const name of names) {
    const spec = parseGridName(name);
    const grid = makeGrid(spec);
    try {
      for (let layer = 0; layer < config.numLayers; layer++) {
        for (const linear of blockLinears(config)) {
          const w = weights.get(linearWeightName(layer, linear))!;
          grid.blockShape(w.shape[0]!, w.shape[1]!, linearWeightName(layer, linear));
        }
      }
      out.push({ name, spec });
    } catch {
      // A grid whose blocks do not tile this model's shapes is not a candidate.
    }
  }
  if (!out.length)
    throw new UsageError('no palette grid fits the model', { field: 'palette', got: names.join(',') });
  return out;
}

export interface SensitivityOptions {
  /** Calibration tokens (the measured KLD reads the first `measureTokens` of them). */
  tokens: readonly number[];
  /** Tokens of the forward that gathers the proxy's input second moments. */
  proxyTokens?: number;
  /** Tokens of each one-layer KLD evaluation; 0 skips the measurement (proxy only). */
  measureTokens?: number;
  /** Window of both forwards. */
  ctx?: number;
}

export const SENSITIVITY_DEFAULTS = { proxyTokens: 1024, measureTokens: 512, ctx: 128 };

export interface SensitivityEntry {
  layer: string;
  grid: string;
  spec: GridSpec;
  /** storedBits of the RTN-quantized layer. */
  bits: number;
  proxy: number;
  /** KLD in nats/token with this layer alone quantized; undefined when not measured. */
  measured?: number;
}

export interface SensitivityTable {
  layers: { name: string; weights: number }[];
  grids: string[];
  entries: SensitivityEntry[];
  /** Spearman ρ between proxy and measured over all entries (when measured). */
  spearman?: number;
  seconds: number;
}

/** Diagonal of E[x xᵀ] per block linear over the first `tokens` tokens, from one fp forward (hooks of decoder.ts). */
export async function inputSecondMoments(
  decoder: Decoder,
  tokens: readonly number[],
  ctx: number,
): Promise<Map<string, Float64Array>> {
  const diag = new Map<string, Float64Array>();
  const count = new Map<string, number>();
  const n = Math.floor(tokens.length / ctx);
  if (n < 1)
    throw new UsageError('calibration text too short for sensitivity', {
      expected: `>= ${ctx} tokens`,
      got: String(tokens.length),
    });
  const ids = Int32Array.from(tokens.slice(0, n * ctx));
  await decoder.forward(ids, n, ctx, {
    onLinearInput(layer, linear, x, rows, cols) {
      const name = linearWeightName(layer, linear);
      let d = diag.get(name);
      if (!d) {
        d = new Float64Array(cols);
        diag.set(name, d);
      }
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) d[c]! += x[r * cols + c]! ** 2;
      count.set(name, (count.get(name) ?? 0) + rows);
    },
  });
  for (const [name, d] of diag) for (let c = 0; c < d.length; c++) d[c]! /= count.get(name)!;
  return diag;
}

/** Σ_j H_jj ‖ΔW_:,j‖² for a row-major [rows, cols] weight (HAWQ-V2's ½ΔWᵀHΔW, diagonal H). */
export function diagonalHessianError(
  w: Float32Array,
  q: Float32Array,
  rows: number,
  cols: number,
  hdiag: Float64Array,
): number {
  let s = 0;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const d = q[r * cols + c]! - w[r * cols + c]!;
      s += hdiag[c]! * d * d;
    }
  }
  return s;
}

/** Sensitivity of every block linear at every grid of the palette. */
export async function layerSensitivity(
  config: ModelConfig,
  weights: TensorMap,
  palette: readonly string[],
  options: SensitivityOptions,
  onProgress?: (done: number, total: number) => void,
): Promise<SensitivityTable> {
  const t0 = performance.now();
  const o = { ...SENSITIVITY_DEFAULTS, ...options };
  const grids = fittingPalette(config, weights, palette);
  const reference = new Decoder(config, weights);
  const hdiag = await inputSecondMoments(reference, o.tokens.slice(0, o.proxyTokens), o.ctx);
  const measureTokens = o.tokens.slice(0, o.measureTokens);
  // One map whose single quantized layer is swapped in and restored: the rest stays fp.
  const probe = new Map(weights);
  const model = new Decoder(config, probe);
  const layers: { name: string; weights: number }[] = [];
  const entries: SensitivityEntry[] = [];
  const total = config.numLayers * blockLinears(config).length * grids.length;
  for (let layer = 0; layer < config.numLayers; layer++) {
    for (const linear of blockLinears(config)) {
      const name = linearWeightName(layer, linear);
      const w = weights.get(name)!;
      const [rows, cols] = w.shape as [number, number];
      layers.push({ name, weights: rows * cols });
      for (const g of grids) {
        const q = quantizeRtn(w, makeGrid(g.spec), name);
        const data = dequantize(q);
        const entry: SensitivityEntry = {
          layer: name,
          grid: g.name,
          spec: g.spec,
          bits: storedBits(q),
          proxy: diagonalHessianError(w.data, data, rows, cols, hdiag.get(name)!),
        };
        if (o.measureTokens > 0) {
          probe.set(name, { shape: w.shape, data });
          const r = await evaluate(model, measureTokens, {
            protocol: { ctx: o.ctx, stride: o.ctx, dropPartial: false },
            reference,
          });
          probe.set(name, w);
          entry.measured = r.kld!;
        }
        entries.push(entry);
        onProgress?.(entries.length, total);
      }
    }
  }
  const measured = entries.every((e) => e.measured !== undefined);
  return {
    layers,
    grids: grids.map((g) => g.name),
    entries,
    ...(measured && {
      spearman: spearman(
        entries.map((e) => e.proxy),
        entries.map((e) => e.measured!),
      ),
    }),
    seconds: (performance.now() - t0) / 1000,
  };
}

/** Ranks 1..n with ties given their mean rank (the usual Spearman convention). */
function ranks(v: readonly number[]): number[] {
  const order = v.map((x, i) => [x, i] as const).sort((a, b) => a[0] - b[0]);
  const r = new Array<number>(v.length);
  for (let i = 0; i < order.length; ) {
    let j = i;
    while (j + 1 < order.length && order[j + 1]![0] === order[i]![0]) j++;
    for (let k = i; k <= j; k++) r[order[k]![1]] = (i + j) / 2 + 1;
    i = j + 1;
  }
  return r;
}

/** Spearman's ρ: Pearson correlation of the ranks. */
export function spearman(a: readonly number[], b: readonly number[]): number {
  if (a.length !== b.length || a.length < 2)
    throw new UsageError('spearman needs two equal series of >= 2 values', {
      got: `${a.length} vs ${b.length}`,
    });
  const ra = ranks(a);
  const rb = ranks(b);
  const mean = (ra.length + 1) / 2;
  let sab = 0;
  let saa = 0;
  let sbb = 0;
  for (let i = 0; i < ra.length; i++) {
    sab += (ra[i]! - mean) * (rb[i]! - mean);
    saa += (ra[i]! - mean) ** 2;
    sbb += (rb[i]! - mean) ** 2;
  }
  return sab / Math.sqrt(saa * sbb);
}
