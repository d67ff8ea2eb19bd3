/**
 * Greedy decoding (temperature 0). Recomputes the whole prefix each step: simple and exact,
 * meant for checks on small models (llama2.c's documented sample, runtime comparisons).
 */
import type { Decoder } from './decoder.js';

export async function greedyGenerate(
  model: Decoder,
  prompt: readonly number[],
  steps: number,
  eosId?: number,
): Promise<number[]> {
  const ids = [...prompt];
  const V = model.config.vocabSize;
  for (let s = 0; s < steps && ids.length < model.config.maxPositions; s++) {
    const logits = await model.forward(Int32Array.from(ids), 1, ids.length);
    const last = logits.subarray((ids.length - 1) * V, ids.length * V);
    let best = 0;
    for (let v = 1; v < V; v++) if (last[v]! > last[best]!) best = v;
    if (best === eosId) break;
    ids.push(best);
  }
  return ids;
}
