/**
 * Run an exported ONNX decoder directory with onnxruntime-node: whole windows (the
 * `Decoder.forward` contract, so `evaluate` can score the ONNX model) and greedy decoding
 * that feeds one token per step through the KV cache (present.* -> past_key_values.*),
 * as transformers.js does.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { FileError, FormatError } from '../errors.js';
import { LLAMA } from '../model/architecture.js';
import type { ModelConfig } from '../model/config.js';
import { type OnnxDtype, onnxFileName } from './onnx.js';
import { ATTENTION_MASK, INPUT_IDS, LOGITS, POSITION_IDS, pastName, presentName } from './onnx-graph.js';

/** past_key_values.{i}.key/value by name, [B, kv_heads, length, head_dim] each. */
export type KvCache = Record<string, ort.Tensor>;

export class OnnxCausalLM {
  private constructor(
    readonly config: ModelConfig,
    readonly session: ort.InferenceSession,
  ) {}

  static async load(dir: string, dtype: OnnxDtype = 'fp32', threads = 0): Promise<OnnxCausalLM> {
    const configFile = path.join(dir, 'config.json');
    const json = await readFile(configFile, 'utf8').catch(() => {
      throw new FileError('not an exported ONNX model directory', {
        file: configFile,
        hint: 'run ptq export --format onnx',
      });
    });
    const config = LLAMA.parseConfig(JSON.parse(json), configFile);
    const file = path.join(dir, 'onnx', onnxFileName(dtype));
    const session = await ort.InferenceSession.create(file, {
      intraOpNumThreads: threads,
      graphOptimizationLevel: 'all',
    }).catch((e: Error) => {
      throw new FormatError(`onnxruntime cannot load the model: ${e.message}`, { file });
    });
    return new OnnxCausalLM(config, session);
  }

  private emptyCache(batch: number): KvCache {
    const { numLayers, numKvHeads, headDim } = this.config;
    const cache: KvCache = {};
    for (let i = 0; i < numLayers; i++) {
      for (const kv of ['key', 'value'] as const) {
        cache[pastName(i, kv)] = new ort.Tensor('float32', new Float32Array(0), [
          batch,
          numKvHeads,
          0,
          headDim,
        ]);
      }
    }
    return cache;
  }

  /**
   * Run `ids` ([B, S], row-major) after `cache` (empty when absent) with every token attended
   * (attention_mask all ones); returns logits [B·S, vocab] and the grown cache.
   */
  async step(
    ids: ArrayLike<number>,
    B: number,
    S: number,
    cache?: KvCache,
  ): Promise<{ logits: Float32Array; cache: KvCache }> {
    const past = cache ?? this.emptyCache(B);
    const P = past[pastName(0, 'key')]!.dims[2]!;
    const positions = new BigInt64Array(B * S);
    for (let b = 0; b < B; b++) for (let s = 0; s < S; s++) positions[b * S + s] = BigInt(P + s);
    const out = await this.session.run({
      [INPUT_IDS]: new ort.Tensor('int64', BigInt64Array.from(Array.from(ids, BigInt)), [B, S]),
      [ATTENTION_MASK]: new ort.Tensor('int64', new BigInt64Array(B * (P + S)).fill(1n), [B, P + S]),
      [POSITION_IDS]: new ort.Tensor('int64', positions, [B, S]),
      ...past,
    });
    const next: KvCache = {};
    for (let i = 0; i < this.config.numLayers; i++) {
      for (const kv of ['key', 'value'] as const) next[pastName(i, kv)] = out[presentName(i, kv)]!;
    }
    return { logits: out[LOGITS]!.data as Float32Array, cache: next };
  }

  /** Logits [B·T, vocab] of B windows of T tokens each (positions 0..T−1): Decoder.forward's contract. */
  async forward(tokens: Int32Array, B: number, T: number): Promise<Float32Array> {
    return (await this.step(tokens, B, T)).logits;
  }

  /** Greedy decoding: the prompt in one step, then one token per step through the KV cache. */
  async greedy(prompt: readonly number[], steps: number, eosId?: number): Promise<number[]> {
    const V = this.config.vocabSize;
    const ids = [...prompt];
    let { logits, cache } = await this.step(ids, 1, ids.length);
    for (let s = 0; s < steps && ids.length < this.config.maxPositions; s++) {
      const last = logits.subarray(logits.length - V);
      let best = 0;
      for (let v = 1; v < V; v++) if (last[v]! > last[best]!) best = v;
      if (best === eosId) break;
      ids.push(best);
      // The cache only needs the new token when another one will be chosen after it.
      if (s + 1 < steps && ids.length < this.config.maxPositions)
        ({ logits, cache } = await this.step([best], 1, 1, cache));
    }
    return ids;
  }
}
