import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { UsageError } from '../../src/errors.js';
import { loadModel } from '../../src/model/load.js';
import { sampleCalibrationWindows } from '../../src/quant/calibrate.js';
import { quantizeModel } from '../../src/quant/quantize-model.js';
import { readText } from '../../src/cli/commands.js';
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
  assert.throws(() => sampleCalibrationWindows([1, 2, 3], { nsamples: 4, seqlen: 512, seed: 0 }), (e: unknown) => e instanceof UsageError && /calibration text too short; expected more than 512 tokens/.test(e.message));
  assert.throws(() => sampleCalibrationWindows([], { nsamples: 1, seqlen: 512, seed: 0 }), UsageError);
  assert.throws(() => sampleCalibrationWindows(Array(2000).fill(1), { nsamples: 0, seqlen: 512, seed: 0 }), /'nsamples': invalid number of calibration samples/);
});

test('per-layer output errors: 3-bit > 4-bit > 8-bit for every layer (GPTQ and AWQ)', async () => {
  const model = await loadModel(MODEL);
  const tokens = model.tokenizer.encode(await readText(TEXT));
  const calibration = { windows: sampleCalibrationWindows(tokens, { nsamples: 16, seqlen: 256, seed: 0 }), seqlen: 256, description: {} };
  for (const method of ['gptq', 'awq'] as const) {
    const errors = new Map<number, number[]>();
    for (const bits of [8, 4, 3]) {
      const q = await quantizeModel(model.config, model.weights, {
        method,
        grid: { bits, symmetric: true, granularity: 'group', groupSize: 32, scaleDtype: 'f16' },
        calibration,
      });
      assert.equal(q.layers.length, 14);
      errors.set(bits, q.layers.map((l) => l.relativeError));
    }
    for (let i = 0; i < 14; i++) {
      const [e8, e4, e3] = [errors.get(8)![i]!, errors.get(4)![i]!, errors.get(3)![i]!];
      assert.ok(e3 > e4 && e4 > e8 && e8 > 0, `${method} layer ${i}: ${e3} ${e4} ${e8}`);
    }
    console.log(`  ${method} layer 0 errors: int3 ${errors.get(3)![0]!.toExponential(2)}, int4 ${errors.get(4)![0]!.toExponential(2)}, int8 ${errors.get(8)![0]!.toExponential(2)}`);
  }
});
