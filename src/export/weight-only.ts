/**
 * Every exporter writes weights only (GGUF, ONNX MatMulNBits, GPTQ, compressed-tensors). A model
 * whose evaluation also needs run-time ops on the inputs of its linears (activation quantization,
 * an online rotation) or side corrections of its weights (SpQR outliers, LoRC factors) would run
 * as a different function there than the one ptqkit measured, so each exporter refuses it at its
 * entry, through this one check.
 */

import { assertNoSideCorrections } from '../formats/quantized-tensor.js';
import { refuseActivationQuant } from '../model/input-ops.js';
import { refuseOnlineRotation } from '../model/input-rotation.js';
import type { LoadedModel } from '../model/load.js';

export function assertWeightOnly(model: LoadedModel, format: string): void {
  refuseActivationQuant(model.config.linearInputOps, model.path, format);
  refuseOnlineRotation(model.config, model.path, format);
  assertNoSideCorrections(model.quantization?.tensors, format);
}
