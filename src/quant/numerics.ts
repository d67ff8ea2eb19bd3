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
import { dequantize, type QuantizedTensor } from '../formats/quantized-tensor.js';
import type { TensorMap } from '../tensor.js';

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
    if (i >= 0) throw nonFiniteWeight(name, t.shape, i, t.data[i]!);
  }
}

/** The error of assertFiniteWeights for element `index` (row-major) of tensor `name`. */
export function nonFiniteWeight(
  name: string,
  shape: readonly number[],
  index: number,
  value: number,
): NumericError {
  return new NumericError('weight is not finite', {
    field: name,
    expected: 'finite values in every tensor of a model to quantize',
    got: `${value} at ${position(shape, index)}`,
    hint: 'the checkpoint is corrupt or was saved after a diverged training step',
  });
}

/** Throw NumericError when a quantized tensor's parameters or dequantized values are not finite. */
export function assertFiniteQuantized(name: string, q: QuantizedTensor, dequantized: Float32Array): void {
  assertFiniteParams(name, q);
  const i = firstNonFinite(dequantized);
  if (i >= 0) {
    throw new NumericError('dequantized weight is not finite', {
      field: name,
      got: `${dequantized[i]} at ${position([q.rows, q.cols], i)}`,
      // Only scales near float32's largest value get here (f16 scales × codes stay far below it).
      hint: "scale × (code − zero) overflows float32: weights within a grid step of float32's largest value; check the checkpoint",
    });
  }
}

/**
 * assertFiniteQuantized without dequantizing, for a caller that has no use for the
 * dequantized weight (stream-quantize.ts): same errors, same guarantee, ~0.1 ns per weight
 * instead of a decode of every code.
 *
 * Why it is the same check, for an integer grid without column scales, outliers or LoRC factors
 * (dequantize: w = fround(s · (q − z)) in float64, then rounded to float32):
 *  - the codes are unpacked from `bits`-wide fields, so 0 ≤ q ≤ maxq = 2^bits − 1, and
 *    |q − z| ≤ maxq + |z| for every code of the block;
 *  - float64 rounding and fround are monotone and odd, so |w| ≤ fround(|s| · (maxq + |z|))
 *    (the bound evaluated with the same roundings);
 *  - hence a finite bound (with finite s and z, checked first) proves every dequantized value of
 *    the block finite: |s| · 2^bits finite in float32 for symmetric and integer zero points.
 * A block whose bound overflows may still dequantize finitely (its extreme code unused), so any
 * such block sends the tensor to the full check, which then throws exactly when it did before.
 * Other grids (number formats, SINQ's column scales, side corrections) take the full check.
 */
export function assertFiniteQuantizedParams(name: string, q: QuantizedTensor): void {
  const exact = (q.spec.format ?? 'int') === 'int' && !q.columnScales && !q.outliers && !q.lowRank;
  if (exact) {
    assertFiniteParams(name, q);
    const maxq = 2 ** q.spec.bits - 1;
    const { scales, zeros } = q;
    let proven = true;
    for (let p = 0; p < scales.length; p++)
      if (Math.fround(Math.abs(scales[p]!) * (maxq + Math.abs(zeros[p]!))) === Infinity) proven = false;
    if (proven) return;
  }
  assertFiniteQuantized(name, q, dequantize(q));
}

/** Scales, zero points and column scales finite. */
function assertFiniteParams(name: string, q: QuantizedTensor): void {
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
}
