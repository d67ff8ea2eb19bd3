/**
 * The shape every transform of a block linear's input has. input-ops.ts composes them
 * (activation quantization, the online rotation of input-rotation.ts, llama.cpp's input
 * conversion of sources/gguf-activations.ts); they share this type, not each other's files.
 */
import type { BlockLinear } from '../formats/tensor-names.js';

/**
 * x [rows, cols] as the block linears `readers` of layer `layer` see it. x is a stage output of
 * the forward pass that nothing else reads, so the transform may work in place and return it.
 */
export type LinearInputTransform = (
  layer: number,
  readers: readonly BlockLinear[],
  x: Float32Array,
  rows: number,
  cols: number,
) => Float32Array;
