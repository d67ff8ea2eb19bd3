/**
 * Output-space error of a quantized linear layer on its calibration inputs, from the
 * Hessian alone: with H ∝ XᵀX, ‖W X − Q X‖² / ‖W X‖² = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ), ΔW = W − Q.
 */
import type { ComputeEngine } from '../compute/engine.js';
import { profiled } from '../compute/profile.js';

/** ‖W X − Q X‖² / ‖W X‖² of weights W and their quantization Q [rows, cols]; H ∝ XᵀX [cols, cols]. */
export const relativeOutputError = profiled('layer error', hessianError);

async function hessianError(
  W: Float32Array,
  Q: Float32Array,
  H: Float64Array,
  rows: number,
  cols: number,
  engine: ComputeEngine,
) {
  const Hf = Float32Array.from(H);
  // H is symmetric, so the engine's x·Hᵀ is x·H.
  const quadratic = async (M: Float32Array) => dot(await engine.linear(M, Hf, rows, cols, cols), M);
  const denominator = await quadratic(W);
  return denominator > 0 ? (await quadratic(difference(W, Q))) / denominator : 0;
}

// Loops live in synchronous functions: in an async function V8 drops the loop's optimized
// (on-stack-replaced) code at the next await; measured 1.4-1.6x slower here.

function difference(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! - b[i]!;
  return out;
}

function dot(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}
