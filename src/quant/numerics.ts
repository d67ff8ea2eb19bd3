/**
 * Numerical guards of the quantization pipeline. Policy (documented in the README):
 *  - a NaN or infinite value in any tensor of a model being quantized is an error naming the
 *    tensor and the first bad position: no grid represents it, and through the forward pass of a
 *    calibrated method it would poison every later Hessian;
 *  - all-zero blocks and zero-variance (constant) blocks are fine: grid.params widens a range
 *    to contain 0 and gives a zero range the span [−1, 1], so scales stay finite and positive;
 *  - every quantized tensor's scales and zero points must be finite when it is stored (a range
 *    beyond the scale dtype, e.g. |w| > 65504·(2^b − 1)/2 with f16 scales, overflows to Inf)
 *    and its dequantized values finite; otherwise an error names the tensor and the fix.
 * So a finished quantization never contains NaN or Inf.
 */
import { NumericError } from '../errors.js';
import type { TensorMap } from '../tensor.js';
import type { QuantizedTensor } from './quantized-tensor.js';

/** Index of the first NaN/±Inf in `data`, or −1. */
export function firstNonFinite(data: ArrayLike<number>): number {
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i]!)) return i;
  return -1;
}

function position(shape: readonly number[], index: number): string {
  if (shape.length !== 2) return `index ${index}`;
  return `row ${Math.floor(index / shape[1]!)}, column ${index % shape[1]!}`;
}

/** Throw NumericError for the first tensor of `weights` holding a NaN or infinite value. */
export function assertFiniteWeights(weights: TensorMap): void {
  for (const [name, t] of weights) {
    const i = firstNonFinite(t.data);
    if (i >= 0) {
      throw new NumericError('weight is not finite', {
        field: name,
        expected: 'finite values in every tensor of a model to quantize',
        got: `${t.data[i]} at ${position(t.shape, i)}`,
        hint: 'the checkpoint is corrupt or was saved after a diverged training step',
      });
    }
  }
}

/** Throw NumericError when a quantized tensor's parameters or dequantized values are not finite. */
export function assertFiniteQuantized(name: string, q: QuantizedTensor, dequantized: Float32Array): void {
  for (const [what, values] of [
    ['scale', q.scales],
    ['zero point', q.zeros],
    ['column scale', q.columnScales ?? []],
  ] as const) {
    const i = firstNonFinite(values);
    if (i >= 0) {
      throw new NumericError(`${what} is not finite`, {
        field: name,
        expected: `finite ${what}s in ${q.spec.scaleDtype}`,
        got: `${values[i]} at block ${i}`,
        hint: 'the weights exceed the range of the scale dtype; use --scale-dtype f32 or bf16',
      });
    }
  }
  const i = firstNonFinite(dequantized);
  if (i >= 0) {
    throw new NumericError('dequantized weight is not finite', {
      field: name,
      got: `${dequantized[i]} at ${position([q.rows, q.cols], i)}`,
      hint: 'scale × (code − zero) overflows float32; use --scale-dtype f32',
    });
  }
}
