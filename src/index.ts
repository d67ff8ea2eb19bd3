/**
 * ptqkit's library API: the same functions the `ptq` CLI is built from.
 *
 *   const model = await loadModel('path/to/hf-dir');
 *   const q = await quantizeModel(model.config, model.weights, { method: 'rtn', grid });
 *   const r = await evaluate(new Decoder(model.config, q.weights), tokens, { protocol, reference });
 *   await writePtqCheckpoint('out', { ...model, weights: q.weights }, q.quantization);
 *
 * A model larger than memory is evaluated block by block from its files:
 *
 *   const big = await openModel('path/to/hf-dir-or-checkpoint');
 *   const r = await evaluate(new StreamedDecoder(big.config, big.weights), tokens, { protocol, maxMemory });
 *   await big.weights.close();
 */

export {
  type AttentionShape,
  type ComputeEngine,
  getDefaultEngine,
  JsEngine,
  OrtEngine,
} from './compute/index.js';
export * from './errors.js';
export { packBits, unpackBits } from './formats/bitpack.js';
export {
  ELEMENT_FORMATS,
  type ElementFormat,
  FP4_E2M1,
  FP6_E2M3,
  FP6_E3M2,
  FP8_E4M3,
  FP8_E5M2,
  SCALE_FORMATS,
} from './formats/element-formats.js';
export { type Grid, type GridSpec, gridName, IntGrid, makeGrid, ScaledGrid } from './formats/grid.js';
export { decodeBf16, decodeF16, encodeBf16, encodeF16, roundToBf16, roundToF16 } from './formats/half.js';
export { E8M0, Minifloat, type MinifloatSpec } from './formats/minifloat.js';
export { FORMAT_NAMES, type FormatName, gridSpecFor, QUANT_FORMATS } from './formats/number-formats.js';
export { dequantize, type QuantizedTensor, storedBits } from './formats/quantized-tensor.js';
export { BLOCK_LINEARS, type BlockLinear } from './formats/tensor-names.js';
export { type PtqQuantization, readPtqCheckpoint, writePtqCheckpoint } from './io/ptq-checkpoint.js';
export { SafetensorsModel, writeSafetensors } from './io/safetensors.js';
export type { TextTokenizer } from './io/tokenizer.js';
export { fwht, planHadamard, RandomizedHadamard } from './math/hadamard.js';
export { type Architecture, architectureFor } from './model/architecture.js';
export type { ModelConfig } from './model/config.js';
export { Decoder, type ForwardHooks } from './model/decoder.js';
export { greedyGenerate } from './model/generate.js';
export { type LoadedModel, loadModel, type OpenedModel, openModel } from './model/load.js';
export { defaultMemoryBudget, parseSize } from './model/memory.js';
export {
  type EvalResult,
  evaluate,
  llamaCppProtocol,
  planWindows,
  type WindowProtocol,
} from './model/perplexity.js';
export { StreamedDecoder } from './model/streamed-decoder.js';
export type { WeightSource } from './model/weight-source.js';
export { CALIBRATION_DEFAULTS, sampleCalibrationWindows } from './quant/calibrate.js';
export { AWQ_DEFAULTS, type AwqOptions, applyAwqScales } from './quant/methods/awq.js';
export { GPTQ_DEFAULTS, type GptqOptions, gptqQuantize, prepareHessian } from './quant/methods/gptq.js';
export { METHODS, type QuantMethod } from './quant/methods/index.js';
export { quantizeRtn } from './quant/methods/rtn.js';
export {
  type Calibration,
  type MethodName,
  modelSize,
  type QuantizeOptions,
  quantizeModel,
} from './quant/quantize-model.js';
export {
  foldNorms,
  ROTATE_DEFAULTS,
  type RotateOptions,
  rotateModel,
  untiedHfConfig,
} from './quant/rotate.js';
export type { Tensor, TensorMap } from './tensor.js';
