/**
 * Operations a model applies to the input of its block linears at inference time, beyond the
 * linear itself: dynamic activation quantization (W8A8 / W4A8 simulation, SmoothQuant
 * arXiv:2211.10438 §3: per-token symmetric int8 of X). They belong to the model (a runtime
 * that runs the quantized model must apply them too), so they live in ModelConfig and the
 * forward pass (decoder.ts) applies them wherever a block linear reads its input.
 */
import { UsageError } from '../errors.js';
import {
  type GgmlQuantizer,
  ggmlHeadInputTransform,
  ggmlLinearInputTransform,
} from '../io/gguf-activations.js';
import type { BlockLinear } from './architecture.js';
import { type InputRotationSpec, inputRotationTransform } from './input-rotation.js';

/** Dynamic symmetric integer quantization of activations, fake-quantized (quantize then dequantize). */
export interface ActivationQuantSpec {
  bits: number;
  /** 'per-token': one scale per row (SmoothQuant's dynamic per-token); 'per-tensor': one per input matrix. */
  granularity: 'per-token' | 'per-tensor';
}

export interface LinearInputOps {
  activations?: ActivationQuantSpec;
  /** Online Hadamard rotation x ← x·Q of some inputs (input-rotation.ts), applied before the others. */
  rotation?: InputRotationSpec;
  /**
   * llama.cpp emulation (`ptq eval file.gguf --emulate-llama-cpp`): the ggml type each weight is
   * stored in, by Hugging Face name; each linear's input (lm_head's too) is then converted as
   * llama.cpp's CPU matmul converts it for that type (io/gguf-activations.ts).
   */
  ggmlWeightTypes?: Record<string, string>;
  /** Which Q8_0/Q8_1 activation quantizer that llama.cpp build runs; default: the host's SIMD one. */
  ggmlQuantizer?: GgmlQuantizer;
}

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

export function checkActivationQuant(spec: ActivationQuantSpec): void {
  if (!Number.isInteger(spec.bits) || spec.bits < 2 || spec.bits > 16)
    throw new UsageError(`activation bits must be an integer in 2..16, got ${spec.bits}`);
  if (spec.granularity !== 'per-token' && spec.granularity !== 'per-tensor')
    throw new UsageError(`activation granularity must be per-token or per-tensor, got ${spec.granularity}`);
}

/**
 * Symmetric round-to-nearest of x to integers in [-(2^(b-1)-1), 2^(b-1)-1] with s = max|x| / qmax
 * per row or per matrix, then back to float, in place: what an integer GEMM sees (SmoothQuant Eq. 1).
 */
export function fakeQuantizeActivations(
  x: Float32Array,
  rows: number,
  cols: number,
  spec: ActivationQuantSpec,
): Float32Array {
  const qmax = 2 ** (spec.bits - 1) - 1;
  const quantizeRange = (start: number, end: number, absMax: number) => {
    if (absMax === 0) return; // an all-zero range stays zero
    const s = absMax / qmax;
    for (let i = start; i < end; i++) x[i] = Math.round(x[i]! / s) * s;
  };
  const absMaxOf = (start: number, end: number) => {
    let m = 0;
    for (let i = start; i < end; i++) m = Math.max(m, Math.abs(x[i]!));
    return m;
  };
  if (spec.granularity === 'per-tensor') quantizeRange(0, rows * cols, absMaxOf(0, rows * cols));
  else
    for (let r = 0; r < rows; r++)
      quantizeRange(r * cols, (r + 1) * cols, absMaxOf(r * cols, (r + 1) * cols));
  return x;
}

/** The transform a model's LinearInputOps describe, or undefined when there is none. */
export function linearInputTransform(ops: LinearInputOps | undefined): LinearInputTransform | undefined {
  // The rotation comes first: the weights hold W·Q, so whatever follows sees x·Q (QuaRot §4).
  const rotate = ops?.rotation && inputRotationTransform(ops.rotation);
  const rest = unrotatedInputTransform(ops);
  if (!rotate || !rest) return rotate || rest;
  return (layer, readers, x, rows, cols) => rest(layer, readers, rotate(layer, readers, x, rows, cols), rows, cols);
}

function unrotatedInputTransform(ops: LinearInputOps | undefined): LinearInputTransform | undefined {
  const activations = ops?.activations;
  const ggml = ops?.ggmlWeightTypes && ggmlLinearInputTransform(ops.ggmlWeightTypes, ops.ggmlQuantizer);
  if (!activations) return ggml;
  checkActivationQuant(activations);
  return (layer, readers, x, rows, cols) => {
    const q = fakeQuantizeActivations(x, rows, cols, activations);
    return ggml ? ggml(layer, readers, q, rows, cols) : q;
  };
}

/** The conversion of lm_head's input (llama.cpp emulation only), or undefined. */
export function headInputTransform(
  ops: LinearInputOps | undefined,
  tiedEmbeddings: boolean,
): ((x: Float32Array, rows: number, cols: number) => Float32Array) | undefined {
  return (
    ops?.ggmlWeightTypes && ggmlHeadInputTransform(ops.ggmlWeightTypes, tiedEmbeddings, ops.ggmlQuantizer)
  );
}
