import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { IntGrid } from '../../src/formats/grid.js';
import { type BLOCK_LINEARS, blockPrefix } from '../../src/formats/tensor-names.js';
import { readText } from '../../src/io/text.js';
import { Decoder } from '../../src/model/decoder.js';
import { loadModel } from '../../src/model/load.js';
import {
  ALL_AT_ONCE,
  type LinearStats,
  runSequential,
  sampleCalibrationWindows,
} from '../../src/quant/calibrate.js';
import { AWQ_DEFAULTS, applyAwqScales } from '../../src/quant/methods/awq.js';
import { maxAbsDiff, REPO } from '../helpers.js';

test('AWQ scales are folded so that the full-precision model is unchanged', async () => {
  const model = await loadModel(path.join(REPO, 'models/tinystories-656k'));
  const tokens = model.tokenizer.encode(await readText(path.join(REPO, 'data/tinystories-valid-slice.txt')));
  const windows = sampleCalibrationWindows(tokens, { nsamples: 8, seqlen: 128, seed: 0 });
  const grid = new IntGrid({
    bits: 3,
    symmetric: true,
    granularity: 'group',
    groupSize: 32,
    scaleDtype: 'f16',
  });

  // Capture FP statistics block by block and fold the AWQ scales, without quantizing.
  const scaled = new Map(model.weights);
  const decoder = new Decoder(model.config, scaled);
  const alphas: number[] = [];
  await runSequential(decoder, windows, 128, {
    groups: ALL_AT_ONCE,
    chunk: 8,
    sampleRows: 512,
    quantizeGroup: async (layer, _linears, stats: Map<(typeof BLOCK_LINEARS)[number], LinearStats>) => {
      for (const r of await applyAwqScales(
        model.config,
        scaled,
        layer,
        stats,
        grid,
        AWQ_DEFAULTS,
        decoder.engine,
      )) {
        alphas.push(r.alpha);
        assert.ok(r.errorBest <= r.errorRtn, 'the search never does worse than alpha = 0');
      }
    },
  });
  assert.ok(
    alphas.some((a) => a > 0),
    `some group is scaled (alphas ${alphas})`,
  );
  const normBefore = model.weights.get(`${blockPrefix(0)}input_layernorm.weight`)!.data;
  const normAfter = scaled.get(`${blockPrefix(0)}input_layernorm.weight`)!.data;
  assert.ok(maxAbsDiff(normBefore, normAfter) > 0, 'the norm absorbed the scales');

  const ids = Int32Array.from(tokens.slice(0, 256));
  const before = await new Decoder(model.config, model.weights).forward(ids, 1, 256);
  const after = await new Decoder(model.config, scaled).forward(ids, 1, 256);
  let maxLogit = 0;
  for (const v of before) maxLogit = Math.max(maxLogit, Math.abs(v));
  const relative = maxAbsDiff(before, after) / maxLogit;
  console.log(`  alphas ${alphas.join(' ')}; max logit change ${relative.toExponential(2)} (relative)`);
  assert.ok(relative < 1e-4);
});
