import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import * as ptq from '../src/index.js';
import { REPO } from './helpers.js';

test('the library API quantizes, evaluates and round-trips a model', async () => {
  const model = await ptq.loadModel(path.join(REPO, 'models/tinystories-656k'));
  const grid: ptq.GridSpec = { bits: 4, symmetric: true, granularity: 'group', groupSize: 32, scaleDtype: 'f16' };
  const q = await ptq.quantizeModel(model.config, model.weights, { method: 'rtn', grid });
  assert.equal(q.quantization.tensors.size, 14);
  assert.equal(ptq.modelSize(q.weights, q.quantization.tensors).bitsPerWeight, 4.5);
  const tokens = model.tokenizer.encode('Once upon a time, there was a little girl named Lily. She liked to play.');
  const r = await ptq.evaluate(new ptq.Decoder(model.config, q.weights), tokens, {
    protocol: { ctx: 16, stride: 16, dropPartial: true },
    reference: new ptq.Decoder(model.config, model.weights),
  });
  assert.ok(r.kld! > 0 && r.kld! < 1 && r.top1Agreement! > 0.5, JSON.stringify(r));
});
