/**
 * Output-space error of a quantized linear layer on its calibration inputs, from the
 * Hessian alone: with H ∝ XᵀX, ‖W X − Q X‖² / ‖W X‖² = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ), ΔW = W − Q.
 */
import type { ComputeEngine } from '../compute/engine.js';
import { profile } from '../compute/profile.js';

export function relativeOutputError(
  W: Float32Array,
  Q: Float32Array,
  H: Float64Array,
  rows: number,
  cols: number,
  engine: ComputeEngine,
): Promise<number> {
  return profile.phase('layer error', () => hessianError(W, Q, H, rows, cols, engine));
}

async function hessianError(
  W: Float32Array,
  Q: Float32Array,
  H: Float64Array,
  rows: number,
  cols: number,
  engine: ComputeEngine,
) {
  const Hf = Float32Array.from(H);
  const delta = new Float32Array(W.length);
  for (let i = 0; i < W.length; i++) delta[i] = W[i]! - Q[i]!;
  // H is symmetric, so the engine's x·Hᵀ is x·H.
  const quadratic = async (M: Float32Array) => {
    const MH = await engine.linear(M, Hf, rows, cols, cols);
    let s = 0;
    for (let i = 0; i < M.length; i++) s += MH[i]! * M[i]!;
    return s;
  };
  const denominator = await quadratic(W);
  return denominator > 0 ? (await quadratic(delta)) / denominator : 0;
}
