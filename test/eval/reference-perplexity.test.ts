/**
 * FP32 perplexity of the real models under the assets README's "chunks" protocol reproduces
 * the independent float64 reference numbers to every digit the reference gives (39.93 means
 * 39.925 <= ptqkit < 39.935), with exactly the same token and prediction counts — which also
 * proves both tokenizers. README's table shows each row: its ptqkit column is asserted as
 * printed, its reference column equal to the reference below.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { readText } from '../../src/io/text.js';
import { Decoder } from '../../src/model/decoder.js';
import { loadModel } from '../../src/model/load.js';
import { evaluate } from '../../src/model/perplexity.js';
import { ASSETS, assetsPresent } from '../helpers.js';
import { assertPrinted, readmeTable } from '../readme-figures.js';

const TINYSTORIES = path.join(ASSETS, 'models/tinystories-656k');
const STORIES260K = path.join(ASSETS, 'models/stories260k/stories260K.bin');
const CHUNKS = { ctx: 512, stride: 512, dropPartial: true };

const REFERENCES = [
  {
    model: TINYSTORIES,
    text: 'tinystories-valid-slice.txt',
    tokens: 7_957,
    predictions: 7_665,
    perplexity: '39.93',
  },
  {
    model: TINYSTORIES,
    text: 'tinystories-valid-800k.txt',
    tokens: 193_347,
    predictions: 192_647,
    perplexity: '37.45',
  },
  { model: TINYSTORIES, text: 'wikitext-2-raw-test.txt', tokens: 560_212, perplexity: '708.99' },
  {
    model: STORIES260K,
    text: 'tinystories-valid-800k.txt',
    tokens: 393_019,
    predictions: 391_937,
    perplexity: '5.048',
  },
  { model: STORIES260K, text: 'wikitext-2-raw-test.txt', tokens: 815_070, perplexity: '122.33' },
];

/** README's table: model | text | tokens | ptqkit | reference. */
const README_ROWS = readmeTable('Perplexity reproduction (FP32, chunks of 512, BOS once)').slice(1);

for (const ref of REFERENCES) {
  test(`${path.basename(ref.model)} on ${ref.text}: perplexity ${ref.perplexity}`, {
    skip: !assetsPresent && 'no ../shared/assets',
  }, async () => {
    const model = await loadModel(ref.model);
    const tokens = model.tokenizer.encode(await readText(path.join(ASSETS, 'text', ref.text)));
    assert.equal(tokens.length, ref.tokens);
    const r = await evaluate(new Decoder(model.config, model.weights), tokens, { protocol: CHUNKS });
    console.log(
      `  ${path.basename(ref.model)} ${ref.text}: ${r.perplexity.toFixed(4)} (reference ${ref.perplexity}), ${r.predictions} predictions`,
    );
    assert.equal(r.predictions, ref.predictions ?? Math.floor(ref.tokens / 512) * 511);
    assertPrinted(r.perplexity, ref.perplexity, 'ptqkit against the float64 reference');
    const [, , readmeTokens, ptqkit, reference] = README_ROWS.find(
      ([model, text]) =>
        model === path.basename(ref.model, '.bin') && text === path.basename(ref.text, '.txt'),
    )!;
    assert.equal(readmeTokens, ref.tokens.toLocaleString('en-US'), "README's token count");
    assert.equal(reference, ref.perplexity, "README's reference column");
    assertPrinted(r.perplexity, ptqkit!, "README's ptqkit column");
  });
}
