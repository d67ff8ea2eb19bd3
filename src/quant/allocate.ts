/**
 * Mixed-precision allocation: one grid per block linear minimizing the summed predicted loss
 * (sensitivity.ts, additive over layers as HAWQ-V2 and BAQ assume) subject to Σ storedBits ≤ budget.
 *
 * This is a multiple-choice knapsack. Two solvers:
 *  - `dp`: exact. Costs are divided by the gcd of all option bits (group-quantized layers of a
 *    model share large power-of-two factors), then a DP over the used budget keeps the minimal
 *    loss per (layer, bits) state. Used when layers × states × options stays under DP_WORK_LIMIT,
 *    which holds for the small models here.
 *  - `lagrangian`: for λ ≥ 0 every layer independently picks argmin loss + λ·bits (Everett's
 *    generalized Lagrange multiplier method, 1963; the relaxation BAQ/HAWQ-V3 solve); bisection
 *    on λ finds the smallest λ whose picks fit, then a greedy fix-up spends the leftover budget
 *    on the upgrade with the largest loss drop per extra bit until none fits. The relaxation is
 *    exact on budgets that land on the lower convex hull of the (bits, loss) trade-off; elsewhere
 *    its loss exceeds the optimum by at most the largest single-layer loss step between two
 *    adjacent hull options (the gap the tests check). Used for models too large for the DP.
 * Both never exceed the budget; both fail with a UsageError if even the cheapest grid per layer
 * does not fit.
 */
import { UsageError } from '../errors.js';
import { mixBlockLinearType, useMoreBits } from '../formats/gguf-mix.js';
import type { GridSpec } from '../formats/grid.js';
import { BLOCK_LINEARS, type BlockLinear, linearWeightName } from '../formats/tensor-names.js';
import type { ModelConfig } from '../model/config.js';
import { Decoder } from '../model/decoder.js';
import { evaluate } from '../model/perplexity.js';
import type { TensorMap } from '../tensor.js';
import { layerSensitivity, parseGridName, SENSITIVITY_DEFAULTS } from './sensitivity.js';

export interface AllocOption {
  grid: string;
  bits: number;
  loss: number;
}

export interface AllocLayer {
  name: string;
  options: AllocOption[];
}

export interface Allocation {
  /** Index into each layer's options. */
  choice: number[];
  bits: number;
  loss: number;
  solver: 'dp' | 'lagrangian';
}

/** Above this many DP cell updates the exact DP gives way to the Lagrangian solve. */
export const DP_WORK_LIMIT = 2e8;

const gcd = (a: number, b: number): number => (b ? gcd(b, a % b) : a);

function checkFeasible(layers: readonly AllocLayer[], budget: number): void {
  const min = layers.reduce((s, l) => s + Math.min(...l.options.map((o) => o.bits)), 0);
  if (min > budget) {
    throw new UsageError('the budget is below the smallest palette grid on every layer', {
      field: 'target',
      expected: `>= ${min} bits (${(min / 8).toFixed(0)} bytes of quantized layers)`,
      got: `${Math.floor(budget)} bits`,
    });
  }
}

function summarize(
  layers: readonly AllocLayer[],
  choice: number[],
  solver: Allocation['solver'],
): Allocation {
  let bits = 0;
  let loss = 0;
  layers.forEach((l, i) => {
    bits += l.options[choice[i]!]!.bits;
    loss += l.options[choice[i]!]!.loss;
  });
  return { choice, bits, loss, solver };
}

/** Exact multiple-choice knapsack by DP over budget units of gcd(bits). */
export function allocateDp(layers: readonly AllocLayer[], budget: number): Allocation {
  checkFeasible(layers, budget);
  const unit = layers.reduce((g, l) => l.options.reduce((h, o) => gcd(h, o.bits), g), 0);
  const cap = Math.floor(budget / unit);
  const n = layers.length;
  // best[c] = minimal loss of the layers so far using exactly c units; pick[i][c] the option taken.
  let best = new Float64Array(cap + 1).fill(Number.POSITIVE_INFINITY);
  best[0] = 0;
  const pick: Int16Array[] = [];
  for (let i = 0; i < n; i++) {
    const next = new Float64Array(cap + 1).fill(Number.POSITIVE_INFINITY);
    const p = new Int16Array(cap + 1).fill(-1);
    layers[i]!.options.forEach((o, k) => {
      const w = o.bits / unit;
      for (let c = cap; c >= w; c--) {
        const v = best[c - w]! + o.loss;
        if (v < next[c]!) {
          next[c] = v;
          p[c] = k;
        }
      }
    });
    pick.push(p);
    best = next;
  }
  let c = 0;
  for (let k = 1; k <= cap; k++) if (best[k]! < best[c]!) c = k;
  const choice = new Array<number>(n);
  for (let i = n - 1; i >= 0; i--) {
    choice[i] = pick[i]![c]!;
    c -= layers[i]!.options[choice[i]!]!.bits / unit;
  }
  return summarize(layers, choice, 'dp');
}

/** For a given λ each layer's argmin of loss + λ·bits (ties to fewer bits). */
function lagrangePicks(layers: readonly AllocLayer[], lambda: number): number[] {
  return layers.map((l) => {
    let k = 0;
    l.options.forEach((o, j) => {
      const v = o.loss + lambda * o.bits;
      const b = l.options[k]!;
      const bv = b.loss + lambda * b.bits;
      if (v < bv || (v === bv && o.bits < b.bits)) k = j;
    });
    return k;
  });
}

/** Lagrangian relaxation with bisection on λ and a greedy fix-up (see the file comment). */
export function allocateLagrangian(layers: readonly AllocLayer[], budget: number): Allocation {
  checkFeasible(layers, budget);
  const bitsOf = (c: number[]) => c.reduce((s, k, i) => s + layers[i]!.options[k]!.bits, 0);
  // λ large enough that every layer takes its cheapest option: above every loss drop per bit.
  let hi = 1;
  while (bitsOf(lagrangePicks(layers, hi)) > budget && hi < 1e300) hi *= 2;
  let lo = 0;
  let choice =
    bitsOf(lagrangePicks(layers, 0)) <= budget ? lagrangePicks(layers, 0) : lagrangePicks(layers, hi);
  if (bitsOf(lagrangePicks(layers, 0)) > budget) {
    for (let it = 0; it < 200 && hi - lo > hi * 1e-12; it++) {
      const mid = (lo + hi) / 2;
      const c = lagrangePicks(layers, mid);
      if (bitsOf(c) <= budget) {
        hi = mid;
        choice = c;
      } else lo = mid;
    }
  }
  // Greedy fix-up: the best loss drop per extra bit that still fits, until nothing fits.
  let used = bitsOf(choice);
  for (;;) {
    let bestRate = 0;
    let best: [number, number] | undefined;
    layers.forEach((l, i) => {
      const cur = l.options[choice[i]!]!;
      l.options.forEach((o, k) => {
        const extra = o.bits - cur.bits;
        const gain = cur.loss - o.loss;
        if (extra > 0 && gain > 0 && used + extra <= budget && gain / extra > bestRate) {
          bestRate = gain / extra;
          best = [i, k];
        }
      });
    });
    if (!best) break;
    const [i, k] = best;
    used += layers[i]!.options[k]!.bits - layers[i]!.options[choice[i]!]!.bits;
    choice[i] = k;
  }
  return summarize(layers, choice, 'lagrangian');
}

/** The exact DP when its table is small enough, otherwise the Lagrangian solve. */
export function allocate(
  layers: readonly AllocLayer[],
  budget: number,
  solver: 'auto' | 'dp' | 'lagrangian' = 'auto',
): Allocation {
  if (solver === 'lagrangian') return allocateLagrangian(layers, budget);
  const unit = layers.reduce((g, l) => l.options.reduce((h, o) => gcd(h, o.bits), g), 0);
  const work = layers.reduce((s, l) => s + l.options.length, 0) * (budget / Math.max(1, unit));
  if (solver === 'dp' || work <= DP_WORK_LIMIT) return allocateDp(layers, budget);
  return allocateLagrangian(layers, budget);
}

/**
 * The quantized linears' bit budget: `bpw` × their weights, or for a whole-model size the bytes
 * left after the unquantized tensors at float32 (modelSize's accounting: totalBytes =
 * ceil(quantized bits / 8) + 4 · unquantized elements).
 */
export function bitBudget(
  target: { bpw?: number; bytes?: number },
  quantizedWeights: number,
  otherBytes: number,
): number {
  if (target.bpw !== undefined) {
    if (!(target.bpw > 0))
      throw new UsageError('invalid --target-bpw', {
        field: 'target-bpw',
        expected: '> 0',
        got: String(target.bpw),
      });
    return Math.floor(target.bpw * quantizedWeights);
  }
  if (target.bytes === undefined)
    throw new UsageError('no budget', { field: 'target', hint: 'pass --target-bpw or --target-size' });
  const left = (Math.floor(target.bytes) - otherBytes) * 8;
  if (left <= 0) {
    throw new UsageError('--target-size is below the unquantized tensors alone', {
      field: 'target-size',
      expected: `> ${otherBytes} bytes`,
      got: String(target.bytes),
    });
  }
  return left;
}

export { useMoreBits };

/** The integer g32 grid of each K-quant's code width: what the presets use for the K-quant. */
const K_QUANT_GRID: Record<string, string> = {
  Q2_K: 'int2-g32',
  Q3_K: 'int3-g32',
  Q4_K: 'int4-g32',
  Q5_K: 'int5-g32',
  Q6_K: 'int6-g32',
};
const likeMix =
  (mix: string) =>
  (layer: number, n: number, linear: BlockLinear): string =>
    K_QUANT_GRID[mixBlockLinearType(mix, layer, n, linear)]!;

/**
 * Fixed-rule baselines after llama.cpp's K-quant mixes, read from formats/gguf-mix.ts (the one
 * place for llama_tensor_get_type's rules): Q4_K_M puts attn_v and ffn_down at Q6_K where
 * useMoreBits, Q4_K elsewhere; Q3_K_M puts attn_v at Q5_K in the first two blocks (Q4_K after),
 * ffn_down at Q5_K in the first n/16 blocks and Q4_K after, attn_output at Q4_K, Q3_K elsewhere.
 * K-quants map to integer g32 grids of the same code width here.
 */
export const PRESETS = {
  'q4_k_m-like': likeMix('q4_k_m'),
  'q3_k_m-like': likeMix('q3_k_m'),
} as const;
export type PresetName = keyof typeof PRESETS;

/** The per-layer grids of a preset, for the block linears `linears` the model has (no gate in a plain MLP). */
export function presetGrids(
  preset: string,
  numLayers: number,
  linears: readonly BlockLinear[] = BLOCK_LINEARS,
): Map<string, GridSpec> {
  const rule = (PRESETS as Record<string, (l: number, n: number, b: BlockLinear) => string>)[preset];
  if (!rule)
    throw new UsageError('unknown preset', {
      field: 'preset',
      expected: Object.keys(PRESETS).join('|'),
      got: preset,
    });
  const out = new Map<string, GridSpec>();
  for (let layer = 0; layer < numLayers; layer++) {
    for (const linear of linears)
      out.set(linearWeightName(layer, linear), parseGridName(rule(layer, numLayers, linear)));
  }
  return out;
}

export interface PlanOptions {
  /** --target-bpw over the quantized linears, or --target-size of the whole stored model. */
  target: { bpw?: number; bytes?: number };
  palette: readonly string[];
  /** Which loss the allocation minimizes: the one-layer KLD or the diagonal-Hessian proxy. */
  sensitivity: 'measured' | 'proxy';
  /** Calibration tokens for sensitivity.ts. */
  tokens: readonly number[];
  measureTokens?: number;
  solver?: 'auto' | 'dp' | 'lagrangian';
  onProgress?: (done: number, total: number) => void;
}

export interface AllocationPlan {
  perLayerGrid: Map<string, GridSpec>;
  report: {
    sensitivity: 'measured' | 'proxy';
    solver: Allocation['solver'];
    palette: string[];
    budgetBits: number;
    /** Σ storedBits of the chosen RTN grids (GPTQ act-order adds g_idx on top). */
    predictedBits: number;
    predictedBitsPerWeight: number;
    /** Σ of the chosen layers' losses (additive approximation). */
    predictedLoss: number;
    /** Spearman ρ of proxy vs measured over layers × grids (measured mode only). */
    spearman?: number;
    layers: { name: string; grid: string; bits: number; loss: number; proxy: number; measured?: number }[];
    sensitivitySeconds: number;
  };
  /**
   * The measured counterpart of `report.predictedLoss`: KL(P_fp ‖ P_q) in nats/token of the whole
   * quantized model on the calibration tokens (and windows) the one-layer KLDs were measured on.
   * Their difference is what the additive model misses (layers' errors interact through the
   * network). In proxy mode the prediction is in proxy units; the KLD is measured the same way.
   */
  measure(quantized: { config: ModelConfig; weights: TensorMap }): Promise<{
    measuredLoss: number;
    measuredTokens: number;
  }>;
}

/** Sensitivity of every layer at every palette grid, then the budgeted choice of one grid per layer. */
export async function planAllocation(
  config: ModelConfig,
  weights: TensorMap,
  o: PlanOptions,
): Promise<AllocationPlan> {
  const sens = await layerSensitivity(
    config,
    weights,
    o.palette,
    { tokens: o.tokens, measureTokens: o.sensitivity === 'measured' ? o.measureTokens : 0 },
    o.onProgress,
  );
  const quantizedWeights = sens.layers.reduce((s, l) => s + l.weights, 0);
  const quantizedNames = new Set(sens.layers.map((l) => l.name));
  let otherBytes = 0;
  for (const [name, t] of weights) if (!quantizedNames.has(name)) otherBytes += t.data.length * 4;
  const budget = bitBudget(o.target, quantizedWeights, otherBytes);
  const entries = sens.layers.map((l) => sens.entries.filter((e) => e.layer === l.name));
  const layers: AllocLayer[] = entries.map((es, i) => ({
    name: sens.layers[i]!.name,
    options: es.map((e) => ({
      grid: e.grid,
      bits: e.bits,
      loss: o.sensitivity === 'measured' ? e.measured! : e.proxy,
    })),
  }));
  const a = allocate(layers, budget, o.solver);
  const chosen = entries.map((es, i) => es[a.choice[i]!]!);
  const measureTokens = o.tokens.slice(0, o.measureTokens || SENSITIVITY_DEFAULTS.measureTokens);
  const ctx = SENSITIVITY_DEFAULTS.ctx;
  return {
    async measure(quantized) {
      const r = await evaluate(new Decoder(quantized.config, quantized.weights), measureTokens, {
        protocol: { ctx, stride: ctx, dropPartial: false },
        reference: new Decoder(config, weights),
      });
      return { measuredLoss: r.kld!, measuredTokens: measureTokens.length };
    },
    perLayerGrid: new Map(chosen.map((e) => [e.layer, e.spec])),
    report: {
      sensitivity: o.sensitivity,
      solver: a.solver,
      palette: sens.grids,
      budgetBits: budget,
      predictedBits: a.bits,
      predictedBitsPerWeight: a.bits / quantizedWeights,
      predictedLoss: a.loss,
      ...(sens.spearman !== undefined && { spearman: sens.spearman }),
      layers: chosen.map((e) => ({
        name: e.layer,
        grid: e.grid,
        bits: e.bits,
        loss: o.sensitivity === 'measured' ? e.measured! : e.proxy,
        proxy: e.proxy,
        ...(e.measured !== undefined && { measured: e.measured }),
      })),
      sensitivitySeconds: sens.seconds,
    },
  };
}
