/**
 * Shared set-up of the method-quality tests on the real models: the integer grids they compare
 * methods on, the TinyStories validation tokens, and perplexity/KLD of quantized weights
 * against the float32 model under one protocol (non-overlapping chunks of 512 tokens).
 */
import path from 'node:path';
import { readText } from '../../src/cli/commands.js';
import { type EvalResult, evaluate } from '../../src/eval/perplexity.js';
import { Decoder } from '../../src/model/decoder.js';
import { type LoadedModel, loadModel } from '../../src/model/load.js';
import type { GridSpec } from '../../src/quant/grid.js';
import type { TensorMap } from '../../src/tensor.js';
import { ASSETS } from '../helpers.js';

/** Chunks of 512 tokens, no overlap, a trailing partial chunk dropped. */
export const PROTOCOL = { ctx: 512, stride: 512, dropPartial: true };

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
