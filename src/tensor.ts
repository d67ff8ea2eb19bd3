/**
 * The in-memory tensor of ptqkit: row-major float32 data with a shape.
 * Weights of a linear layer follow the Hugging Face convention [out_features, in_features].
 */
export interface Tensor {
  shape: number[];
  data: Float32Array;
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function tensor(shape: number[], data?: Float32Array): Tensor {
  return { shape, data: data ?? new Float32Array(numel(shape)) };
}

/** Named float32 tensors, keyed by Hugging Face parameter name. */
export type TensorMap = Map<string, Tensor>;
