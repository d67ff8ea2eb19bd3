/** Shared set-up of the ONNX quantizer tests on the real TinyStories-656K model. */
import path from 'node:path';
import type { Tensor as TjsTensor } from '@huggingface/transformers';
import { Tensor } from '@huggingface/transformers';
import type { OnnxDtype } from '../../src/export/onnx.js';
import { OnnxCausalLM } from '../../src/export/onnx-session.js';
import type { ModelConfig } from '../../src/model/config.js';
import type { Decoder } from '../../src/model/decoder.js';
import { evaluate } from '../../src/model/perplexity.js';
import { ASSETS, assetsPresent, REPO } from '../helpers.js';

export const SOURCE = assetsPresent
  ? path.join(ASSETS, 'models/tinystories-656k')
  : path.join(REPO, 'models/tinystories-656k');
export const TEXT = assetsPresent
  ? path.join(ASSETS, 'text/tinystories-valid-800k.txt')
  : path.join(REPO, 'data/tinystories-valid-slice.txt');
/** Non-overlapping windows of 512 (the "chunks" protocol of the README's tables). */
export const PROTOCOL = { ctx: 512, stride: 512, dropPartial: true };

/** Perplexity of `<dir>/onnx/model<dtype suffix>.onnx` in onnxruntime-node (one thread). */
export async function onnxPerplexity(
  dir: string,
  dtype: OnnxDtype,
  tokens: readonly number[],
): Promise<number> {
  const lm = await OnnxCausalLM.load(dir, dtype, 1);
  return (await evaluate(lm as unknown as Decoder, tokens, { protocol: PROTOCOL })).perplexity;
}

/** A transformers.js causal LM behind Decoder.forward's contract (all-ones attention mask), for `evaluate`. */
export function transformersDecoder(
  model: (inputs: Record<string, TjsTensor>) => Promise<unknown>,
  config: ModelConfig,
): Decoder {
  const forward = async (ids: Int32Array, B: number, T: number) => {
    const r = (await model({
      input_ids: new Tensor('int64', BigInt64Array.from(Array.from(ids, BigInt)), [B, T]),
      attention_mask: new Tensor('int64', new BigInt64Array(B * T).fill(1n), [B, T]),
    })) as { logits: TjsTensor };
    return r.logits.data as Float32Array;
  };
  return { config, forward } as unknown as Decoder;
}
