/**
 * Number formats on a real model (tinystories-656k): RTN, GPTQ and AWQ through every kind of
 * grid, measured on the first 4096 tokens of the TinyStories validation text (chunks of 512,
 * KLD against the FP32 model), calibration 32 × 512 tokens sampled (seed 0) from tokens 96K+
 * of the same file. Asserts the measured numbers (1%), the exact bits per weight, and the
 * orderings: 8-bit formats ≪ 4-bit formats ≪ ternary < binary in KLD.
 */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { type FormatName, gridSpecFor } from '../../src/formats/number-formats.js';
import { BLOCK_LINEARS, linearWeightName } from '../../src/formats/tensor-names.js';
import { Decoder } from '../../src/model/decoder.js';
import type { LoadedModel } from '../../src/model/load.js';
import { type EvalResult, evaluate } from '../../src/model/perplexity.js';
import { type MethodName, modelSize, quantizeModel } from '../../src/quant/quantize-model.js';
import { assetsPresent } from '../helpers.js';
import { assertPrinted } from '../readme-figures.js';
import {
  assertMeasured,
  type Calibration,
  calibrationWindows,
  loadWithValidTokens,
  PROTOCOL,
} from './quality-setup.js';

const EVAL_TOKENS = 4096;

/** README: FP32 perplexity on these tokens, as printed (also the SmoothQuant table's). */
const FP32_PERPLEXITY = '37.4471';
/** Measured (perplexity, KLD); FP32 perplexity on these tokens: FP32_PERPLEXITY. */
const MEASURED: Record<string, [number, number]> = {
  'rtn int8 pc': [37.4853, 0.00038],
  'rtn int4 g32': [40.8826, 0.08237],
  'rtn fp8-e4m3 pc': [37.457, 0.00518],
  'rtn nvfp4': [39.99, 0.07317],
  'rtn mxfp4': [43.1938, 0.11627],
  'rtn ternary g32': [1158.3976, 3.62813],
  'rtn binary g32': [2794.2733, 4.74323],
  'gptq nvfp4': [39.4678, 0.05067],
  'gptq mxfp4': [40.9403, 0.08206],
  'awq nvfp4': [39.8037, 0.06715],
};

describe('number formats on tinystories-656k', { skip: !assetsPresent && 'no ../shared/assets' }, () => {
  let model: LoadedModel;
  let tokens: number[];
  let reference: Decoder;
  let fp: EvalResult;
  let calibration: Calibration;
  const results = new Map<string, EvalResult & { bitsPerWeight: number }>();

  const run = async (
    method: MethodName,
    format: FormatName,
    o: Parameters<typeof gridSpecFor>[1],
    label: string,
  ) => {
    const key = `${method} ${label}`;
    const q = await quantizeModel(model.config, model.weights, {
      method,
      grid: gridSpecFor(format, o),
      calibration,
    });
    const r = await evaluate(new Decoder(model.config, q.weights), tokens, { protocol: PROTOCOL, reference });
    const { bitsPerWeight } = modelSize(q.weights, q.quantization.tensors);
    console.log(
      `  ${key.padEnd(18)} ${bitsPerWeight.toFixed(4)} b/w  ppl ${r.perplexity.toFixed(4)}  KLD ${r.kld!.toFixed(5)}  top-1 ${(100 * r.top1Agreement!).toFixed(2)}%`,
    );
    assertMeasured(key, r, MEASURED[key]!);
    results.set(key, { ...r, bitsPerWeight });
    return results.get(key)!;
  };

  before(async () => {
    let all: number[];
    ({ model, tokens: all } = await loadWithValidTokens('models/tinystories-656k'));
    tokens = all.slice(0, EVAL_TOKENS);
    calibration = calibrationWindows(all, 32);
    reference = new Decoder(model.config, model.weights);
    fp = await evaluate(reference, tokens, { protocol: PROTOCOL });
    console.log(`  fp32 ppl ${fp.perplexity.toFixed(4)}`);
  });

  test("FP32 perplexity on these tokens: README's", () => {
    assertPrinted(fp.perplexity, FP32_PERPLEXITY, 'FP32 perplexity');
  });

  test('RTN: int8 < fp8-e4m3 ≪ nvfp4 < int4 g32 < mxfp4 ≪ ternary < binary in KLD; exact bits per weight', async () => {
    const int8 = await run('rtn', 'int', { bits: 8, groupSize: -1 }, 'int8 pc');
    const int4 = await run('rtn', 'int', { bits: 4, groupSize: 32 }, 'int4 g32');
    const fp8 = await run('rtn', 'fp8-e4m3', { groupSize: -1 }, 'fp8-e4m3 pc');
    const nvfp4 = await run('rtn', 'nvfp4', {}, 'nvfp4');
    const mxfp4 = await run('rtn', 'mxfp4', {}, 'mxfp4');
    const ternary = await run('rtn', 'ternary', {}, 'ternary g32');
    const binary = await run('rtn', 'binary', {}, 'binary g32');
    // Both 8-bit grids stay within 0.5% of FP32 perplexity; E4M3's 3 mantissa bits cost more KLD
    // than int8's 255 uniform steps, still 10× below any 4-bit format.
    for (const r of [int8, fp8]) assert.ok(Math.abs(r.perplexity / fp.perplexity - 1) < 0.005);
    const kld = [int8, fp8, nvfp4, int4, mxfp4, ternary, binary].map((r) => r.kld!);
    assert.deepEqual(
      [...kld].sort((a, b) => a - b),
      kld,
    );
    assert.ok(fp8.kld! * 10 < nvfp4.kld!);
    assert.ok(mxfp4.kld! * 10 < ternary.kld!);

    // Bits per weight from what is stored (14 linears, 393,216 weights).
    let weights = 0;
    let tensors = 0;
    let tritBytes = 0;
    for (let layer = 0; layer < model.config.numLayers; layer++) {
      for (const linear of BLOCK_LINEARS) {
        const n = model.weights.get(linearWeightName(layer, linear))!.data.length;
        weights += n;
        tensors++;
        tritBytes += Math.ceil(n / 5);
      }
    }
    assert.equal(nvfp4.bitsPerWeight, 4.5 + (32 * tensors) / weights); // E2M1 + E4M3/16 + FP32 per tensor
    assert.equal(mxfp4.bitsPerWeight, 4.25); // E2M1 + E8M0/32
    assert.equal(binary.bitsPerWeight, 1.5); // 1 bit + f16/32
    assert.equal(ternary.bitsPerWeight, (tritBytes * 8 + (weights / 32) * 16) / weights); // 5 trits per byte + f16/32
    assert.equal(int4.bitsPerWeight, 4.5);
  });

  test('GPTQ and AWQ compose with the formats: both beat RTN on NVFP4 (GPTQ ahead), GPTQ on MXFP4', async () => {
    for (const format of ['nvfp4', 'mxfp4'] as const) {
      const rtn = results.get(`rtn ${format}`) ?? (await run('rtn', format, {}, format));
      const gptq = await run('gptq', format, {}, format);
      assert.ok(
        gptq.perplexity < rtn.perplexity && gptq.kld! < rtn.kld!,
        `${format}: GPTQ ${gptq.kld} vs RTN ${rtn.kld}`,
      );
    }
    const awq = await run('awq', 'nvfp4', {}, 'nvfp4');
    const rtn = results.get('rtn nvfp4')!;
    assert.ok(awq.perplexity < rtn.perplexity && awq.kld! < rtn.kld!, `AWQ ${awq.kld} vs RTN ${rtn.kld}`);
    // README's bold NVFP4 cell: GPTQ's, ahead of AWQ's in both metrics.
    const gptq = results.get('gptq nvfp4')!;
    assert.ok(gptq.perplexity < awq.perplexity && gptq.kld! < awq.kld!, `GPTQ ${gptq.kld} vs AWQ ${awq.kld}`);
  });
});
