/**
 * Operations a model applies to the input of its block linears at inference time, beyond the
 * linear itself: dynamic activation quantization (W8A8 / W4A8 simulation, SmoothQuant
 * arXiv:2211.10438 §3: per-token symmetric int8 of X). They belong to the model (a runtime
 * that runs the quantized model must apply them too), so they live in ModelConfig and the
 * forward pass (decoder.ts) applies them wherever a block linear reads its input.
 */
import { FormatError, UsageError } from '../errors.js';
import { type BlockLinear, linearWeightName } from '../formats/tensor-names.js';
import { type InputRotationSpec, inputRotationTransform } from './input-rotation.js';
import type { LinearInputTransform } from './input-transform.js';
import {
  type GgmlQuantizer,
  ggmlHeadInputTransform,
  ggmlLinearInputTransform,
} from './sources/gguf-activations.js';

/** Symmetric integer quantization of activations, fake-quantized (quantize then dequantize). */
export interface ActivationQuantSpec {
  bits: number;
  /**
   * 'per-token': one dynamic scale per row (SmoothQuant's O1); 'per-tensor': one dynamic scale
   * per input matrix (O2); 'per-tensor-static': one fixed scale per input from calibration,
   * `absMax` (O3, SmoothQuant §5: static scales need no max reduction at run time).
   */
  granularity: 'per-token' | 'per-tensor' | 'per-tensor-static';
  /** per-tensor-static: max|X| over the calibration tokens, keyed by the weight name of each linear reading X. */
  absMax?: Record<string, number>;
}

export interface LinearInputOps {
  activations?: ActivationQuantSpec;
  /** Online Hadamard rotation x ← x·Q of some inputs (input-rotation.ts), applied before the others. */
  rotation?: InputRotationSpec;
  /**
   * llama.cpp emulation (`ptq eval file.gguf --emulate-llama-cpp`): the ggml type each weight is
   * stored in, by Hugging Face name; each linear's input (lm_head's too) is then converted as
   * llama.cpp's CPU matmul converts it for that type (sources/gguf-activations.ts).
   */
  ggmlWeightTypes?: Record<string, string>;
  /** Which Q8_0/Q8_1 activation quantizer that llama.cpp build runs; default: the host's SIMD one. */
  ggmlQuantizer?: GgmlQuantizer;
}

export function checkActivationQuant(spec: ActivationQuantSpec): void {
  if (!Number.isInteger(spec.bits) || spec.bits < 2 || spec.bits > 16)
    throw new UsageError(`activation bits must be an integer in 2..16, got ${spec.bits}`);
  if (!['per-token', 'per-tensor', 'per-tensor-static'].includes(spec.granularity))
    throw new UsageError(
      `activation granularity must be per-token, per-tensor or per-tensor-static, got ${spec.granularity}`,
    );
  for (const [name, m] of Object.entries(spec.absMax ?? {}))
    if (!(Number.isFinite(m) && m >= 0))
      throw new UsageError(`static activation max of ${name} must be a finite number >= 0, got ${m}`);
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
  staticAbsMax?: number,
): Float32Array {
  const qmax = 2 ** (spec.bits - 1) - 1;
  const quantizeRange = (start: number, end: number, absMax: number) => {
    if (absMax === 0) return; // an all-zero range stays zero
    const s = absMax / qmax;
    // A static scale saturates values beyond the calibrated range (dynamic ones never exceed qmax).
    for (let i = start; i < end; i++) x[i] = Math.min(qmax, Math.max(-qmax, Math.round(x[i]! / s))) * s;
  };
  const absMaxOf = (start: number, end: number) => {
    let m = 0;
    for (let i = start; i < end; i++) m = Math.max(m, Math.abs(x[i]!));
    return m;
  };
  if (spec.granularity === 'per-tensor-static') {
    if (staticAbsMax === undefined)
      throw new UsageError('per-tensor-static activations need a calibrated max|X|');
    quantizeRange(0, rows * cols, staticAbsMax);
  } else if (spec.granularity === 'per-tensor') quantizeRange(0, rows * cols, absMaxOf(0, rows * cols));
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
  return (layer, readers, x, rows, cols) =>
    rest(layer, readers, rotate(layer, readers, x, rows, cols), rows, cols);
}

function unrotatedInputTransform(ops: LinearInputOps | undefined): LinearInputTransform | undefined {
  const activations = ops?.activations;
  const ggml = ops?.ggmlWeightTypes && ggmlLinearInputTransform(ops.ggmlWeightTypes, ops.ggmlQuantizer);
  if (!activations) return ggml;
  checkActivationQuant(activations);
  return (layer, readers, x, rows, cols) => {
    const fixedMax = staticAbsMaxOf(activations, layer, readers);
    const q = fakeQuantizeActivations(x, rows, cols, activations, fixedMax);
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

/** The calibrated max|X| of the input `readers` of `layer` read (per-tensor-static only). */
function staticAbsMaxOf(spec: ActivationQuantSpec, layer: number, readers: readonly BlockLinear[]) {
  if (spec.granularity !== 'per-tensor-static') return undefined;
  const name = linearWeightName(layer, readers[0]!);
  const m = spec.absMax?.[name];
  if (m === undefined)
    throw new UsageError('no calibrated activation max for this linear', {
      field: `activations.absMax.${name}`,
    });
  return m;
}

/**
 * The activation quantization a ptqkit checkpoint's quantization_config.activations records
 * (written by quantize-model.ts), to put back into its config when it is loaded: `ptq eval`
 * of the saved directory then simulates the same W8A8/W4A8 model. Undefined when absent.
 */
export function activationQuantOf(value: unknown, file: string): ActivationQuantSpec | undefined {
  if (value === undefined) return undefined;
  const v = value as { bits?: unknown; granularity?: unknown; absMax?: unknown } | null;
  const spec = { bits: v?.bits, granularity: v?.granularity } as ActivationQuantSpec;
  if (v?.absMax !== undefined) spec.absMax = v.absMax as Record<string, number>;
  try {
    if (spec.absMax !== undefined && (typeof spec.absMax !== 'object' || spec.absMax === null))
      throw new UsageError('absMax must be an object of numbers');
    if ((spec.granularity === 'per-tensor-static') !== (spec.absMax !== undefined))
      throw new UsageError('absMax goes with granularity per-tensor-static, and only with it');
    checkActivationQuant(spec);
  } catch (e) {
    throw new FormatError(`invalid activation quantization: ${(e as Error).message}`, {
      file,
      field: 'quantization_config.activations',
      got: JSON.stringify(value),
    });
  }
  return spec;
}

/**
 * Export formats hold weights only (GGUF, GPTQ, compressed-tensors, ONNX's MatMulNBits): a
 * model whose evaluation fake-quantizes its activations would run with float activations
 * there and not be the model ptqkit measured, so refuse it.
 */
export function refuseActivationQuant(ops: LinearInputOps | undefined, file: string, format: string): void {
  const a = ops?.activations;
  if (!a) return;
  throw new UsageError(
    `cannot export to ${format}: the model quantizes its activations (int${a.bits} ${a.granularity}), which the format does not record`,
    {
      file,
      hint: 'quantize without --act-bits to export; activation quantization is an evaluation-time simulation',
    },
  );
}
