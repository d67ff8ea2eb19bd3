import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import * as ptq from '../src/index.js';
import { REPO } from './helpers.js';

test('the library API quantizes, evaluates and round-trips a model', async () => {
  const model = await ptq.loadModel(path.join(REPO, 'models/tinystories-656k'));
  const grid: ptq.GridSpec = {
    bits: 4,
    symmetric: true,
    granularity: 'group',
    groupSize: 32,
    scaleDtype: 'f16',
  };
  const q = await ptq.quantizeModel(model.config, model.weights, { method: 'rtn', grid });
  assert.equal(q.quantization.tensors.size, 14);
  assert.equal(ptq.modelSize(q.weights, q.quantization.tensors).bitsPerWeight, 4.5);
  const text = readFileSync(path.join(REPO, 'data/tinystories-valid-slice.txt'), 'utf8');
  const tokens = model.tokenizer.encode(text).slice(0, 1024);
  const r = await ptq.evaluate(new ptq.Decoder(model.config, q.weights), tokens, {
    protocol: { ctx: 256, stride: 256, dropPartial: true },
    reference: new ptq.Decoder(model.config, model.weights),
  });
  assert.equal(r.predictions, 4 * 255);
  assert.ok(r.kld! > 0.01 && r.kld! < 0.2 && r.top1Agreement! > 0.7, JSON.stringify(r));
  assert.ok(r.perplexity > r.referencePerplexity!, JSON.stringify(r));
});
