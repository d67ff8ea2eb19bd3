/**
 * Shared by the GPTQ and compressed-tensors export tests: the bundled tinystories-656k, a small
 * calibration set from the bundled text, checkpoints quantized in memory, a one-linear model
 * around a hand-made tensor, and an IEEE binary16 decoder written from the standard (the
 * readers in the tests must not use the writer's helpers).
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { GridSpec } from '../../src/formats/grid.js';
import { dequantize, type QuantizedTensor } from '../../src/formats/quantized-tensor.js';
import { type LoadedModel, loadModel } from '../../src/model/load.js';
import { sampleCalibrationWindows } from '../../src/quant/calibrate.js';
import { type MethodName, quantizeModel } from '../../src/quant/quantize-model.js';
import { REPO } from '../helpers.js';

export const BUNDLED = path.join(REPO, 'models/tinystories-656k');
export const fp = await loadModel(BUNDLED);
const text = await readFile(path.join(REPO, 'data/tinystories-valid-slice.txt'), 'utf8');
const calibration = {
  windows: sampleCalibrationWindows(fp.tokenizer.encode(text), { nsamples: 8, seqlen: 128, seed: 0 }),
  seqlen: 128,
  description: {},
};

/** tinystories-656k quantized in memory, as `ptq quantize` would save it (GPTQ: 8 × 128 calibration tokens). */
export async function quantized(
  grid: GridSpec,
  method: MethodName = 'rtn',
  actOrder = false,
): Promise<LoadedModel> {
  const q = await quantizeModel(fp.config, fp.weights, {
    method,
    grid,
    calibration: method === 'gptq' ? calibration : undefined,
    methodOptions: { actOrder },
  });
  return { ...fp, weights: q.weights, quantization: q.quantization };
}

/** The block linear the one-linear models hold. */
export const TINY_LINEAR = 'model.layers.0.mlp.down_proj.weight';

/** A model holding only `q`, as a quantized block linear. */
export function tinyModel(q: QuantizedTensor): LoadedModel {
  return {
    ...fp,
    weights: new Map([[TINY_LINEAR, { shape: [q.rows, q.cols], data: dequantize(q) }]]),
    quantization: { method: 'rtn', settings: {}, tensors: new Map([[TINY_LINEAR, q]]) },
  };
}

/** IEEE 754 binary16 → number. */
export function f16(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 31;
  const m = h & 1023;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 31) return m ? Number.NaN : sign * Infinity;
  return sign * 2 ** (e - 15) * (1 + m / 1024);
}
