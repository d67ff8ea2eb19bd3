/**
 * Apply a weight quantization method to every block linear of a model (the layers GPTQ,
 * AWQ and llama.cpp quantize; embeddings, norms and the LM head stay in full precision).
 */
import type { PtqQuantization } from '../io/ptq-checkpoint.js';
import { BLOCK_LINEARS, linearWeightName } from '../model/architecture.js';
import type { ModelConfig } from '../model/config.js';
import type { TensorMap } from '../tensor.js';
import { type GridSpec, gridName, IntGrid } from './grid.js';
import { dequantize, type QuantizedTensor, storedBits } from './quantized-tensor.js';
import { quantizeRtn } from './rtn.js';

export interface LayerProgress {
  layer: number;
  layers: number;
}

export interface QuantizeOptions {
  method: 'rtn';
  grid: GridSpec;
  onProgress?: (p: LayerProgress) => void;
}

export interface QuantizedModel {
  /** Weights with every quantized layer replaced by its dequantized values. */
  weights: TensorMap;
  quantization: PtqQuantization;
  seconds: number;
}

export async function quantizeModel(
  config: ModelConfig,
  weights: TensorMap,
  options: QuantizeOptions,
): Promise<QuantizedModel> {
  const t0 = performance.now();
  const grid = new IntGrid(options.grid);
  const out: TensorMap = new Map(weights);
  const tensors = new Map<string, QuantizedTensor>();
  for (let layer = 0; layer < config.numLayers; layer++) {
    for (const linear of BLOCK_LINEARS) {
      const name = linearWeightName(layer, linear);
      const w = weights.get(name)!;
      const q = quantizeRtn(w, grid, name);
      tensors.set(name, q);
      out.set(name, { shape: w.shape, data: dequantize(q) });
    }
    options.onProgress?.({ layer: layer + 1, layers: config.numLayers });
  }
  return {
    weights: out,
    quantization: { method: options.method, settings: { grid: options.grid, grid_name: gridName(options.grid) }, tensors },
    seconds: (performance.now() - t0) / 1000,
  };
}

/** Size accounting from what is stored: quantized tensors at their packed size, the rest as float32. */
export function modelSize(weights: TensorMap, quantized?: Map<string, QuantizedTensor>) {
  let quantizedBits = 0;
  let quantizedWeights = 0;
  let otherBytes = 0;
  for (const [name, t] of weights) {
    const q = quantized?.get(name);
    if (q) {
      quantizedBits += storedBits(q);
      quantizedWeights += q.rows * q.cols;
    } else {
      otherBytes += t.data.length * 4;
    }
  }
  return {
    /** Bits per weight of the quantized layers (codes + scales + zeros + g_idx). */
    bitsPerWeight: quantizedWeights ? quantizedBits / quantizedWeights : 32,
    totalBytes: Math.ceil(quantizedBits / 8) + otherBytes,
  };
}
