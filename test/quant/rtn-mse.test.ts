/**
 * rtn-mse (src/quant/rtn-mse.ts), the method added through the registry alone: against RTN on
 * its own objective (Σ x²·(x − x̂)² per layer) and on the bundled model's KLD against fp32; its
 * scale search checked on one block against a float64 transcription of llama.cpp's
 * make_qx_quants written here; asymmetric grids refused; the CLI takes --method rtn-mse.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { UsageError } from '../../src/errors.js';
import { IntGrid } from '../../src/formats/grid.js';
import { gridSpecFor } from '../../src/formats/number-formats.js';
import { dequantize } from '../../src/formats/quantized-tensor.js';
import { readText } from '../../src/io/text.js';
import { Decoder } from '../../src/model/decoder.js';
import { loadModel } from '../../src/model/load.js';
import { evaluate } from '../../src/model/perplexity.js';
import { quantizeRtn } from '../../src/quant/methods/rtn.js';
import { quantizeRtnMse } from '../../src/quant/methods/rtn-mse.js';
import { quantizeModel } from '../../src/quant/quantize-model.js';
import { runCli } from '../cli/run-cli.js';
import { REPO, seededRandom, tempDir } from '../helpers.js';
import { assertPrinted } from '../readme-figures.js';

const MODEL = path.join(REPO, 'models/tinystories-656k');
const TEXT = path.join(REPO, 'data/tinystories-valid-slice.txt');

/** Σ x²·(x − x̂)²: the objective make_qx_quants minimizes without an importance matrix. */
function weightedError(x: Float32Array, q: Float32Array): number {
  let e = 0;
  for (let i = 0; i < x.length; i++) e += x[i]! * x[i]! * (x[i]! - q[i]!) ** 2;
  return e;
}

test('one block: the scale and codes of a float64 transcription of make_qx_quants (rmse_type 1)', () => {
  const random = seededRandom(5);
  const x = Float32Array.from({ length: 32 }, () => (random() - 0.5) * (random() < 0.1 ? 1 : 0.1));
  const grid = new IntGrid(gridSpecFor('int', { bits: 4, groupSize: 32, scaleDtype: 'f32' }));
  const q = quantizeRtnMse({ shape: [1, 32], data: x }, grid);
  // llama.cpp: nmax = 8, L in [−8, 7], iscale = (nmax + 0.1·is)/amax, w = x², keep the largest sumlx²/suml2.
  const nmax = 8;
  const amax = Math.max(...x.map(Math.abs));
  let bestGain = -1;
  let bestScale = 0;
  let bestL: number[] = [];
  for (let is = -9; is <= 9; is++) {
    const iscale = (nmax + 0.1 * is) / amax;
    const L = [...x].map((v) => Math.max(-nmax, Math.min(nmax - 1, Math.round(iscale * v))));
    let sumlx = 0;
    let suml2 = 0;
    L.forEach((l, i) => {
      sumlx += x[i]! ** 2 * x[i]! * l;
      suml2 += x[i]! ** 2 * l * l;
    });
    if (sumlx ** 2 / suml2 > bestGain) {
      bestGain = sumlx ** 2 / suml2;
      bestScale = sumlx / suml2;
      bestL = L;
    }
  }
  assert.equal(q.scales[0], Math.fround(bestScale));
  assert.deepEqual(
    [...dequantize(q)].map((v) => v + 0),
    bestL.map((l) => Math.fround(Math.fround(bestScale) * l) + 0),
  );
});

test('against RTN on the bundled model: lower x²-weighted error on every layer, lower KLD at 4 and 3 bits', async () => {
  const model = await loadModel(MODEL);
  const tokens = model.tokenizer.encode(await readText(TEXT));
  const protocol = { ctx: 512, stride: 512, dropPartial: true };
  const reference = new Decoder(model.config, model.weights);
  const measured: Record<string, number> = {};
  for (const bits of [4, 3]) {
    const grid = gridSpecFor('int', { bits, groupSize: 32 });
    const layers = [...model.weights].filter(([n]) => /layers\.\d+\..*_proj/.test(n));
    for (const [name, w] of layers) {
      const g = new IntGrid(grid);
      const rtn = weightedError(w.data, dequantize(quantizeRtn(w, g, name)));
      const mse = weightedError(w.data, dequantize(quantizeRtnMse(w, g, name)));
      assert.ok(mse < rtn, `${name} int${bits}: ${mse} >= RTN ${rtn}`);
    }
    for (const method of ['rtn', 'rtn-mse']) {
      const q = await quantizeModel(model.config, model.weights, { method, grid });
      const r = await evaluate(new Decoder(q.config, q.weights), tokens, { protocol, reference });
      measured[`${method} int${bits}`] = r.kld!;
    }
    assert.ok(measured[`rtn-mse int${bits}`]! < measured[`rtn int${bits}`]!, JSON.stringify(measured));
  }
  console.log(`  KLD vs fp32: ${JSON.stringify(measured)}`);
  // README's figures (methods table), as printed; RTN's are also the demo table's KLDs.
  const readme = {
    'rtn int4': '0.0746',
    'rtn-mse int4': '0.0654',
    'rtn int3': '0.3669',
    'rtn-mse int3': '0.3139',
  };
  for (const [k, printed] of Object.entries(readme)) assertPrinted(measured[k]!, printed, k);
});

test('asymmetric and float grids are refused; the CLI quantizes with --method rtn-mse', async () => {
  const model = await loadModel(MODEL);
  await assert.rejects(
    quantizeModel(model.config, model.weights, {
      method: 'rtn-mse',
      grid: gridSpecFor('int', { bits: 4, groupSize: 32, asym: true }),
    }),
    (e) => e instanceof UsageError && /symmetric integer grids/.test(e.message),
  );
  await assert.rejects(
    quantizeModel(model.config, model.weights, { method: 'rtn-mse', grid: gridSpecFor('nvfp4', {}) }),
    (e) => e instanceof UsageError && /integer grids/.test(e.message),
  );
  const out = path.join(tempDir('ptq-rtn-mse-'), 'q');
  const r = runCli(['quantize', MODEL, '--method', 'rtn-mse', '--bits', '4', '-o', out, '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).method, 'rtn-mse');
});
