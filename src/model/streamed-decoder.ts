/**
 * A decoder whose weights stay where they are stored (model/weight-source.ts) and are read
 * when a stage needs them: the embedding rows of the tokens at hand, one decoder block at a
 * time, the head (final norm and lm_head) while windows are scored. It computes with the same
 * Decoder, on the same float32 values, as a model loaded whole: only what is resident changes.
 *
 * `stats` counts what was resident (float32 bytes of weights, blocks at once) and how often
 * blocks were read, so that tests bound memory by a measured quantity rather than by RSS.
 */
import type { ComputeEngine } from '../compute/engine.js';
import { getDefaultEngine } from '../compute/index.js';
import { EMBED } from '../formats/tensor-names.js';
import type { TensorMap } from '../tensor.js';
import type { ModelConfig } from './config.js';
import { Decoder, type ForwardHooks } from './decoder.js';
import {
  blockTensorNames,
  embeddingTensorNames,
  float32Bytes,
  headTensorNames,
  type WeightSource,
} from './weight-source.js';

export interface StreamStats {
  /** Float32 bytes of weights resident now, and the most at any time. */
  residentBytes: number;
  peakResidentBytes: number;
  /** Decoder blocks resident now, and the most at once. */
  residentBlocks: number;
  maxResidentBlocks: number;
  /** Reads of a whole block, of the head, and of embedding rows. */
  blockLoads: number;
  headLoads: number;
  embeddingRows: number;
}

export function newStreamStats(): StreamStats {
  return {
    residentBytes: 0,
    peakResidentBytes: 0,
    residentBlocks: 0,
    maxResidentBlocks: 0,
    blockLoads: 0,
    headLoads: 0,
    embeddingRows: 0,
  };
}

export class StreamedDecoder {
  /** The forward pass, over the tensors resident now. */
  readonly decoder: Decoder;
  private readonly resident: TensorMap = new Map();

  /** `stats` may be shared by several decoders (a model and its reference): it then counts what they hold together. */
  constructor(
    readonly config: ModelConfig,
    readonly weights: WeightSource,
    engine: ComputeEngine = getDefaultEngine(),
    readonly stats: StreamStats = newStreamStats(),
  ) {
    this.decoder = new Decoder(config, this.resident, engine);
  }

  /** Float32 bytes of the largest block, and of the head. */
  get blockBytes(): number {
    let most = 0;
    for (let l = 0; l < this.config.numLayers; l++)
      most = Math.max(most, float32Bytes(this.weights, blockTensorNames(this.weights, l)));
    return most;
  }

  get headBytes(): number {
    return float32Bytes(this.weights, headTensorNames(this.weights, this.config));
  }

  /** Embeddings of windows of T tokens: only the rows of the distinct ids are read. */
  async embed(ids: Int32Array, T: number): Promise<Float32Array> {
    this.decoder.checkTokens(ids);
    const distinct = Int32Array.from(new Set(ids)).sort();
    const rows = await this.weights.readRows(EMBED, distinct);
    this.stats.embeddingRows += distinct.length;
    const D = this.config.hiddenSize;
    const index = new Map(Array.from(distinct, (id, i) => [id, i]));
    const x = new Float32Array(ids.length * D);
    ids.forEach((id, i) => {
      const r = index.get(id)!;
      x.set(rows.subarray(r * D, (r + 1) * D), i * D);
    });
    const added = await this.load(embeddingTensorNames(this.config));
    try {
      return this.decoder.embed(ids, T, x);
    } finally {
      this.drop(added);
    }
  }

  async loadBlock(layer: number): Promise<void> {
    await this.load(blockTensorNames(this.weights, layer));
    this.stats.blockLoads++;
    this.stats.residentBlocks++;
    this.stats.maxResidentBlocks = Math.max(this.stats.maxResidentBlocks, this.stats.residentBlocks);
  }

  dropBlock(layer: number): void {
    this.drop(blockTensorNames(this.weights, layer));
    this.stats.residentBlocks--;
  }

  async loadHead(): Promise<void> {
    await this.load(headTensorNames(this.weights, this.config));
    this.stats.headLoads++;
  }

  dropHead(): void {
    this.drop(headTensorNames(this.weights, this.config));
  }

  /**
   * Logits [B*T, vocab] of B windows of T tokens, every block read in turn (what is resident
   * already stays and is not read again): the pass the diagnosis of non-finite logits reruns.
   */
  async forward(ids: Int32Array, B: number, T: number, hooks?: ForwardHooks): Promise<Float32Array> {
    let x = await this.embed(ids, T);
    for (let layer = 0; layer < this.config.numLayers; layer++) {
      const added = await this.load(blockTensorNames(this.weights, layer));
      try {
        x = (await this.decoder.block(layer, x, B, T, hooks))!;
      } finally {
        this.drop(added);
      }
    }
    const added = await this.load(headTensorNames(this.weights, this.config));
    try {
      return await this.decoder.head(x, B * T);
    } finally {
      this.drop(added);
    }
  }

  /** Read the tensors not resident yet; returns those it read. */
  private async load(names: readonly string[]): Promise<string[]> {
    const added: string[] = [];
    for (const name of names) {
      if (this.resident.has(name)) continue;
      const t = await this.weights.read(name);
      this.resident.set(name, t);
      added.push(name);
      this.stats.residentBytes += t.data.byteLength;
      this.stats.peakResidentBytes = Math.max(this.stats.peakResidentBytes, this.stats.residentBytes);
    }
    return added;
  }

  private drop(names: readonly string[]): void {
    for (const name of names) {
      const t = this.resident.get(name);
      if (!t) continue;
      this.stats.residentBytes -= t.data.byteLength;
      this.resident.delete(name);
    }
  }
}
