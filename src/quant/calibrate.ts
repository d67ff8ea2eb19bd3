/**
 * Calibration data and the sequential (block-by-block) calibration protocol of GPTQ
 * (Frantar et al. 2022, §4 "Step 3" and the reference llama.py `llama_sequential`):
 * the calibration windows pass through block i, its linear inputs are captured and block i
 * is quantized; the *quantized* block's outputs are the inputs of block i+1. Memory is one
 * block's activations (N·L·hidden floats) plus the statistics of the layers being quantized.
 */
import type { ComputeEngine } from '../compute/engine.js';
import { UsageError } from '../errors.js';
import { mulberry32 } from '../random.js';
import { BLOCK_LINEARS, type BlockLinear } from '../model/architecture.js';
import type { Decoder } from '../model/decoder.js';

export interface CalibrationOptions {
  nsamples: number;
  seqlen: number;
  seed: number;
}

export const CALIBRATION_DEFAULTS: CalibrationOptions = { nsamples: 128, seqlen: 2048, seed: 0 };

/** Random windows of `seqlen` tokens (the GPTQ/AutoGPTQ recipe: uniform start, fixed seed). */
export function sampleCalibrationWindows(tokens: readonly number[], options: CalibrationOptions): Int32Array {
  const { nsamples, seqlen, seed } = options;
  if (!Number.isInteger(nsamples) || nsamples < 1) {
    throw new UsageError('invalid number of calibration samples', { field: 'nsamples', expected: 'a positive integer', got: String(nsamples) });
  }
  if (tokens.length < seqlen + 1) {
    throw new UsageError('calibration text too short', {
      field: 'calib',
      expected: `more than ${seqlen} tokens (one window of --seqlen)`,
      got: `${tokens.length} tokens`,
      hint: 'use a longer text or a smaller --seqlen',
    });
  }
  const rand = mulberry32(seed);
  const windows = new Int32Array(nsamples * seqlen);
  for (let s = 0; s < nsamples; s++) {
    const start = Math.floor(rand() * (tokens.length - seqlen));
    for (let t = 0; t < seqlen; t++) windows[s * seqlen + t] = tokens[start + t]!;
  }
  return windows;
}

/** Statistics of one linear layer's inputs over the calibration tokens. */
export interface LinearStats {
  cols: number;
  /** Tokens seen. */
  count: number;
  /** H = 2/N · Σ x xᵀ (GPTQ's Hessian of ‖WX − QX‖²), [cols, cols]. */
  hessian: Float64Array;
  /** Mean |x_j| per input channel (AWQ's activation salience). */
  absMean: Float64Array;
  /** A bounded sample of input rows [sampleRows, cols] for methods that measure outputs (AWQ). */
  sample: Float32Array;
  sampleRows: number;
}

export interface SequentialOptions {
  /** Linears captured and quantized together; later groups see earlier groups quantized ("true sequential"). */
  groups: BlockLinear[][];
  /** Sequences per forward chunk (bounds attention memory). */
  chunk: number;
  /** Input rows kept per linear for output-space searches. */
  sampleRows: number;
  /** Quantize (and write back into the decoder's weights) the linears of one group. */
  quantizeGroup(layer: number, linears: BlockLinear[], stats: Map<BlockLinear, LinearStats>): Promise<void>;
  onProgress?(layer: number, layers: number): void;
}

export const ALL_AT_ONCE: BlockLinear[][] = [[...BLOCK_LINEARS]];
export const TRUE_SEQUENTIAL: BlockLinear[][] = [
  ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'],
  ['self_attn.o_proj'],
  ['mlp.gate_proj', 'mlp.up_proj'],
  ['mlp.down_proj'],
];

export async function runSequential(decoder: Decoder, windows: Int32Array, seqlen: number, options: SequentialOptions): Promise<void> {
  const n = windows.length / seqlen;
  const D = decoder.config.hiddenSize;
  const x = decoder.embed(windows);
  const layers = decoder.config.numLayers;
  const chunks = Math.ceil(n / options.chunk);
  for (let layer = 0; layer < layers; layer++) {
    // Once q/k/v are quantized the attention output of each chunk is final: keep it for later passes.
    const attentionCache: (Float32Array | undefined)[] = new Array(chunks);
    const qkvDone = new Set<BlockLinear>();
    const attentionHooks = (chunk: number) =>
      ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'].every((l) => qkvDone.has(l as BlockLinear))
        ? { cached: attentionCache[chunk], store: (a: Float32Array) => (attentionCache[chunk] = a) }
        : undefined;
    for (const group of options.groups) {
      const stats = new Map<BlockLinear, LinearStats>();
      await forEachChunk(n, options.chunk, async (s0, s1) => {
        const xs = x.subarray(s0 * seqlen * D, s1 * seqlen * D);
        const captured: { linear: BlockLinear; input: Float32Array; rows: number; cols: number }[] = [];
        await decoder.block(layer, xs, s1 - s0, seqlen, {
          onLinearInput: (l, linear, input, rows, cols) => {
            if (l === layer && group.includes(linear)) captured.push({ linear, input, rows, cols });
          },
          stopAfterInputOf: group.at(-1),
          attention: attentionHooks(s0 / options.chunk),
        });
        // Linears fed by the same activations (q/k/v, gate/up) share one statistics object.
        const byInput = new Map<Float32Array, LinearStats>();
        for (const c of captured) {
          let st = byInput.get(c.input);
          if (!st) {
            st = stats.get(c.linear) ?? newStats(c.cols, Math.min(options.sampleRows, n * seqlen));
            await accumulate(st, c.input, c.rows, n * seqlen, decoder.engine);
            byInput.set(c.input, st);
          }
          stats.set(c.linear, st);
        }
      });
      for (const st of new Set(stats.values())) finishStats(st);
      await options.quantizeGroup(layer, group, stats);
      for (const l of group) qkvDone.add(l);
    }
    // Each window's outputs depend only on its own inputs: overwrite x chunk by chunk.
    await forEachChunk(n, options.chunk, async (s0, s1) => {
      const xs = x.subarray(s0 * seqlen * D, s1 * seqlen * D);
      const out = await decoder.block(layer, xs, s1 - s0, seqlen, { attention: attentionHooks(s0 / options.chunk) });
      xs.set(out!);
    });
    options.onProgress?.(layer + 1, layers);
  }
}

async function forEachChunk(n: number, chunk: number, fn: (s0: number, s1: number) => Promise<void>) {
  for (let s0 = 0; s0 < n; s0 += chunk) await fn(s0, Math.min(n, s0 + chunk));
}

function newStats(cols: number, sampleRows: number): LinearStats {
  return {
    cols,
    count: 0,
    hessian: new Float64Array(cols * cols),
    absMean: new Float64Array(cols),
    sample: new Float32Array(sampleRows * cols),
    sampleRows,
  };
}

async function accumulate(s: LinearStats, x: Float32Array, rows: number, totalRows: number, engine: ComputeEngine) {
  const cols = s.cols;
  // Σ x xᵀ of this chunk on the engine (float32, like the reference), summed across chunks in float64.
  const gram = await engine.matmulTransA(x, x, rows, cols, cols);
  for (let i = 0; i < gram.length; i++) s.hessian[i]! += gram[i]!;
  const stride = totalRows / s.sampleRows;
  for (let r = 0; r < rows; r++) {
    const row = r * cols;
    for (let i = 0; i < cols; i++) s.absMean[i]! += Math.abs(x[row + i]!);
    // Keep evenly spaced rows of the whole calibration set.
    const global = s.count + r;
    const slot = Math.floor(global / stride);
    if (slot < s.sampleRows && Math.floor(slot * stride) === global) s.sample.set(x.subarray(row, row + cols), slot * cols);
  }
  s.count += rows;
}

function finishStats(s: LinearStats): void {
  const n = s.cols;
  const f = 2 / s.count;
  for (let i = 0; i < n * n; i++) s.hessian[i]! *= f;
  for (let i = 0; i < n; i++) s.absMean[i]! /= s.count;
}
