/**
 * Shared set-up of the method-quality tests on the real models: the integer grids they compare
 * methods on, the TinyStories validation tokens, and perplexity/KLD of quantized weights
 * against the float32 model under one protocol (non-overlapping chunks of 512 tokens).
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import type { GridSpec } from '../../src/formats/grid.js';
import { readText } from '../../src/io/text.js';
import { Decoder } from '../../src/model/decoder.js';
import { type LoadedModel, loadModel } from '../../src/model/load.js';
import { type EvalResult, evaluate } from '../../src/model/perplexity.js';
import { sampleCalibrationWindows } from '../../src/quant/calibrate.js';
import type { TensorMap } from '../../src/tensor.js';
import { ASSETS } from '../helpers.js';

/** Chunks of 512 tokens, no overlap, a trailing partial chunk dropped. */
export const PROTOCOL = { ctx: 512, stride: 512, dropPartial: true };

/** Calibration starts at token 96K of the validation text, disjoint from the evaluation tokens. */
const CALIB_FROM = 96 * 1024;

export interface Calibration {
  windows: Int32Array;
  seqlen: number;
  description: Record<string, unknown>;
}

/** `nsamples` windows of 512 tokens sampled (seed 0) from tokens CALIB_FROM+ of `tokens`. */
export function calibrationWindows(tokens: number[], nsamples: number): Calibration {
  const options = { nsamples, seqlen: 512, seed: 0 };
  return {
    windows: sampleCalibrationWindows(tokens.slice(CALIB_FROM), options),
    seqlen: 512,
    description: options,
  };
}

/** An integer grid with f16 scales: per group of `groupSize` columns, or per channel for 0. */
export const intGrid = (bits: number, groupSize: number, symmetric: boolean): GridSpec => ({
  bits,
  symmetric,
  granularity: groupSize ? 'group' : 'channel',
  groupSize,
  scaleDtype: 'f16',
});

/** The model under ../shared/assets/`modelPath` and the whole validation text in its tokens. */
export async function loadWithValidTokens(
  modelPath: string,
): Promise<{ model: LoadedModel; tokens: number[] }> {
  const model = await loadModel(path.join(ASSETS, modelPath));
  const tokens = model.tokenizer.encode(await readText(path.join(ASSETS, 'text/tinystories-valid-800k.txt')));
  return { model, tokens };
}

/** Perplexity of `weights` on `tokens`, with KLD and top-1 agreement against the float32 model. */
export function evaluateAgainstFp(
  model: LoadedModel,
  weights: TensorMap,
  tokens: number[],
): Promise<EvalResult> {
  return evaluate(new Decoder(model.config, weights), tokens, {
    protocol: PROTOCOL,
    reference: new Decoder(model.config, model.weights),
  });
}

/**
 * Perplexity and KLD pinned to numbers measured before, within 1% (a KLD near zero within 2e-5),
 * so that a change in any method's behaviour shows up, not only a change in the orderings.
 */
export function assertMeasured(key: string, r: EvalResult, [ppl, kld]: readonly [number, number]): void {
  assert.ok(
    Math.abs(r.perplexity / ppl - 1) < 0.01,
    `${key}: perplexity ${r.perplexity}, measured before ${ppl}`,
  );
  assert.ok(
    Math.abs(r.kld! / kld - 1) < 0.01 || Math.abs(r.kld! - kld) < 2e-5,
    `${key}: KLD ${r.kld}, measured before ${kld}`,
  );
}
