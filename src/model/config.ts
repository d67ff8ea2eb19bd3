/**
 * The normalized hyper-parameters of a decoder-only transformer, independent of the
 * file it came from (Hugging Face config.json, llama2.c header, GGUF metadata).
 */
import type { LinearInputOps } from './input-ops.js';

export interface ModelConfig {
  /** Architecture key, e.g. 'llama' (Hugging Face `model_type`). */
  modelType: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Largest context the model was trained for. */
  maxPositions: number;
  ropeTheta: number;
  normEps: number;
  /** lm_head shares the token embedding matrix. */
  tiedEmbeddings: boolean;
  bosTokenId?: number;
  eosTokenId?: number;
  /** Inference-time operations on the inputs of block linears (activation quantization...). */
  linearInputOps?: LinearInputOps;
}
