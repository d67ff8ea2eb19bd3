import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { UsageError } from '../../src/errors.js';
import { IntGrid } from '../../src/formats/grid.js';
import { dequantize } from '../../src/formats/quantized-tensor.js';
import { type BlockLinear, linearWeightName } from '../../src/formats/tensor-names.js';
import { readText } from '../../src/io/text.js';
import { Decoder } from '../../src/model/decoder.js';
import { loadModel } from '../../src/model/load.js';
import {
  ALL_AT_ONCE,
  type LinearStats,
  runSequential,
  sampleCalibrationWindows,
  TRUE_SEQUENTIAL,
} from '../../src/quant/calibrate.js';
import { quantizeRtn } from '../../src/quant/methods/rtn.js';
import { quantizeModel } from '../../src/quant/quantize-model.js';
import type { TensorMap } from '../../src/tensor.js';
import { REPO } from '../helpers.js';

const MODEL = path.join(REPO, 'models/tinystories-656k');
const TEXT = path.join(REPO, 'data/tinystories-valid-slice.txt');

test('calibration windows: seeded, uniform starts, exact copies of the text', () => {
  const tokens = Array.from({ length: 1000 }, (_, i) => i);
  const a = sampleCalibrationWindows(tokens, { nsamples: 4, seqlen: 10, seed: 3 });
  assert.deepEqual(a, sampleCalibrationWindows(tokens, { nsamples: 4, seqlen: 10, seed: 3 }));
  assert.notDeepEqual(a, sampleCalibrationWindows(tokens, { nsamples: 4, seqlen: 10, seed: 4 }));
  for (let s = 0; s < 4; s++) for (let t = 1; t < 10; t++) assert.equal(a[s * 10 + t], a[s * 10]! + t);
});

test('too little calibration text, or no samples, is refused', () => {
  assert.throws(
    () => sampleCalibrationWindows([1, 2, 3], { nsamples: 4, seqlen: 512, seed: 0 }),
    (e: unknown) =>
      e instanceof UsageError && /calibration text too short; expected more than 512 tokens/.test(e.message),
  );
  assert.throws(() => sampleCalibrationWindows([], { nsamples: 1, seqlen: 512, seed: 0 }), UsageError);
  assert.throws(
    () => sampleCalibrationWindows(Array(2000).fill(1), { nsamples: 0, seqlen: 512, seed: 0 }),
    /'nsamples': invalid number of calibration samples/,
  );
});

test('per-layer output errors: 3-bit > 4-bit > 8-bit for every layer (GPTQ and AWQ)', async () => {
  const model = await loadModel(MODEL);
  const tokens = model.tokenizer.encode(await readText(TEXT));
  const calibration = {
    windows: sampleCalibrationWindows(tokens, { nsamples: 16, seqlen: 256, seed: 0 }),
    seqlen: 256,
    description: {},
  };
  for (const method of ['gptq', 'awq'] as const) {
    const errors = new Map<number, number[]>();
    for (const bits of [8, 4, 3]) {
      const q = await quantizeModel(model.config, model.weights, {
        method,
        grid: { bits, symmetric: true, granularity: 'group', groupSize: 32, scaleDtype: 'f16' },
        calibration,
      });
      assert.equal(q.layers.length, 14);
      errors.set(
        bits,
        q.layers.map((l) => l.relativeError),
      );
    }
    for (let i = 0; i < 14; i++) {
      const [e8, e4, e3] = [errors.get(8)![i]!, errors.get(4)![i]!, errors.get(3)![i]!];
      assert.ok(e3 > e4 && e4 > e8 && e8 > 0, `${method} layer ${i}: ${e3} ${e4} ${e8}`);
    }
    console.log(
      `  ${method} layer 0 errors: int3 ${errors.get(3)![0]!.toExponential(2)}, int4 ${errors.get(4)![0]!.toExponential(2)}, int8 ${errors.get(8)![0]!.toExponential(2)}`,
    );
  }
});

/**
 * The staged pipeline (each linear's output computed once, Gram matrices from lower-triangle
 * blocks on the engine) against the naive protocol: for every group, rerun the whole block
 * on every chunk with the earlier groups already quantized, and sum x xᵀ in float64.
 */
for (const [name, groups] of [
  ['true-sequential', TRUE_SEQUENTIAL],
  ['all at once', ALL_AT_ONCE],
] as const) {
  test(`sequential statistics equal a naive rerun of each block (${name})`, async () => {
    const model = await loadModel(MODEL);
    const tokens = model.tokenizer.encode(await readText(TEXT));
    const seqlen = 64;
    const windows = sampleCalibrationWindows(tokens, { nsamples: 5, seqlen, seed: 1 });
    const grid = new IntGrid({
      bits: 3,
      symmetric: true,
      granularity: 'group',
      groupSize: 32,
      scaleDtype: 'f16',
    });
    // Quantizing a group (RTN here) changes the inputs of every later group.
    const quantizeInPlace = (weights: TensorMap, layer: number, linears: readonly BlockLinear[]) => {
      for (const l of linears) {
        const w = weights.get(linearWeightName(layer, l))!;
        weights.set(linearWeightName(layer, l), { shape: w.shape, data: dequantize(quantizeRtn(w, grid)) });
      }
    };

    const staged = new Map<string, LinearStats>();
    const weights = new Map(model.weights);
    await runSequential(new Decoder(model.config, weights), windows, seqlen, {
      groups: groups.map((g) => [...g]),
      chunk: 2,
      sampleRows: 0,
      quantizeGroup: async (layer, linears, stats) => {
        for (const l of linears) staged.set(`${layer} ${l}`, stats.get(l)!);
        quantizeInPlace(weights, layer, linears);
      },
    });

    const naiveWeights = new Map(model.weights);
    const decoder = new Decoder(model.config, naiveWeights);
    let x = decoder.embed(windows);
    const D = model.config.hiddenSize;
    const n = windows.length / seqlen;
    let maxRel = 0;
    for (let layer = 0; layer < model.config.numLayers; layer++) {
      for (const group of groups) {
        const H = new Map<BlockLinear, Float64Array>();
        for (let s = 0; s < n; s += 2) {
          const B = Math.min(2, n - s);
          await decoder.block(layer, x.subarray(s * seqlen * D, (s + B) * seqlen * D), B, seqlen, {
            onLinearInput: (_, linear, input, rows, cols) => {
              if (!group.includes(linear)) return;
              const h = H.get(linear) ?? new Float64Array(cols * cols);
              for (let r = 0; r < rows; r++)
                for (let i = 0; i < cols; i++)
                  for (let j = 0; j < cols; j++)
                    h[i * cols + j]! += input[r * cols + i]! * input[r * cols + j]!;
              H.set(linear, h);
            },
            stopAfterInputOf: group.at(-1),
          });
        }
        for (const [linear, h] of H) {
          const st = staged.get(`${layer} ${linear}`)!;
          assert.equal(st.count, windows.length);
          let scale = 0;
          for (const v of h) scale = Math.max(scale, Math.abs(v));
          for (let i = 0; i < h.length; i++) {
            maxRel = Math.max(
              maxRel,
              Math.abs(st.hessian[i]! - (2 / windows.length) * h[i]!) / ((2 / windows.length) * scale),
            );
          }
        }
        quantizeInPlace(naiveWeights, layer, group);
      }
      const next = new Float32Array(x.length);
      for (let s = 0; s < n; s += 2) {
        const B = Math.min(2, n - s);
        next.set(
          (await decoder.block(layer, x.subarray(s * seqlen * D, (s + B) * seqlen * D), B, seqlen))!,
          s * seqlen * D,
        );
      }
      x = next;
    }
    console.log(`  ${name}: max |ΔH| / max |H| = ${maxRel.toExponential(2)} over ${staged.size} layers`);
    assert.equal(staged.size, 7 * model.config.numLayers);
    assert.ok(maxRel < 1e-5);
  });
}
