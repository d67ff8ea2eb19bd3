import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { JsEngine } from '../../src/compute/index.js';
import { Decoder } from '../../src/model/decoder.js';
import { greedyGenerate } from '../../src/model/generate.js';
import { loadModel } from '../../src/model/load.js';
import { ASSETS, assetsPresent, maxAbsDiff, REPO } from '../helpers.js';

test('onnxruntime forward equals the plain-loop reference forward', async () => {
  const m = await loadModel(path.join(REPO, 'models/tinystories-656k'));
  const ids = Int32Array.from(m.tokenizer.encode('Once upon a time, there was a little dog.').slice(0, 12));
  const fast = await new Decoder(m.config, m.weights).forward(ids, 1, ids.length);
  const slow = await new Decoder(m.config, m.weights, new JsEngine()).forward(ids, 1, ids.length);
  const diff = maxAbsDiff(fast, slow);
  console.log(`  max |logit diff| = ${diff.toExponential(2)} over ${fast.length} logits`);
  assert.ok(diff < 1e-3);
});

test('stories260K greedy decoding matches llama2.c (permuted rotary weights are right)', {
  skip: !assetsPresent,
}, async () => {
  const m = await loadModel(path.join(ASSETS, 'models/stories260k/stories260K.bin'));
  const ids = await greedyGenerate(new Decoder(m.config, m.weights), [m.config.bosTokenId!], 40);
  const text = m.tokenizer.decode(ids);
  console.log(`  ${JSON.stringify(text)}`);
  assert.ok(
    text.startsWith(
      'Once upon a time, there was a little girl named Lily. She loved to play outside in the park.',
    ),
    text,
  );
});
