/**
 * Real trained weight matrices for weight-only tests (GPT-2 small, partial; see
 * ../shared/assets/README.md) and the element-wise error statistics the methods are judged by.
 */
import path from 'node:path';
import { SafetensorsModel } from '../../src/io/safetensors.js';
import type { Tensor } from '../../src/tensor.js';
import { ASSETS } from '../helpers.js';

export const GPT2_PARTIAL = path.join(ASSETS, 'weights/gpt2-small-partial/gpt2_small_partial.safetensors');

/** A GPT-2 Conv1D weight, stored [in, out], as the [out, in] linear weight every method expects. */
export async function readGpt2Linear(name: string): Promise<Tensor> {
  const st = await SafetensorsModel.open(GPT2_PARTIAL);
  try {
    const [inF, outF] = st.info(name).shape as [number, number];
    const w = await st.readFloat32(name);
    const data = new Float32Array(w.length);
    for (let i = 0; i < inF; i++) for (let o = 0; o < outF; o++) data[o * inF + i] = w[i * outF + o]!;
    return { shape: [outF, inF], data };
  } finally {
    await st.close();
  }
}

export interface WeightErrors {
  /** mean |W − Ŵ| */
  l1: number;
  /** mean |W − Ŵ|^0.7 (HQQ's objective with the reference's p) */
  lp: number;
  /** ‖W − Ŵ‖² / ‖W‖² */
  rel2: number;
}

export function weightErrors(w: ArrayLike<number>, q: ArrayLike<number>, p = 0.7): WeightErrors {
  let l1 = 0;
  let lp = 0;
  let e2 = 0;
  let w2 = 0;
  for (let i = 0; i < w.length; i++) {
    const e = Math.abs(w[i]! - q[i]!);
    l1 += e;
    lp += e ** p;
    e2 += e * e;
    w2 += w[i]! * w[i]!;
  }
  return { l1: l1 / w.length, lp: lp / w.length, rel2: e2 / w2 };
}

/** |a/b − 1| < tol: measured numbers pinned to a relative tolerance. */
export function near(a: number, b: number, tol = 0.01): boolean {
  return Math.abs(a / b - 1) < tol;
}
