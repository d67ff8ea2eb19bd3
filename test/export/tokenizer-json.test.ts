/**
 * llama2.c tokenizer.bin -> tokenizer.json: transformers.js (through @huggingface/tokenizers)
 * tokenizes real text into exactly the ids of run.c's encoder (src/io/llama2c-tokenizer.ts),
 * and decodes them back, for the stories260K vocabulary and the Llama-2 32k one.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { AutoTokenizer, env, type Tensor } from '@huggingface/transformers';
import { llama2cTokenizerJson } from '../../src/export/tokenizer-json.js';
import { Llama2cTokenizer } from '../../src/io/llama2c-tokenizer.js';
import type { ModelConfig } from '../../src/model/config.js';
import { ASSETS, assetsPresent } from '../helpers.js';

env.allowRemoteModels = false;
/** Characters of the validation text compared (about 25K tokens with the 512-token vocabulary). */
const TEXT_CHARS = 50_000;

const tmp = await mkdtemp(path.join(os.tmpdir(), 'ptq-tokjson-'));
after(() => rm(tmp, { recursive: true, force: true }));

const CASES = [
  { label: 'stories260K tok512.bin', file: 'models/stories260k/tok512.bin', vocab: 512 },
  // The Llama-2 vocabulary, with the asset's reference ids for "Once upon a time,".
  {
    label: 'Llama-2 tokenizer.bin',
    file: 'tokenizers/llama2-32k/tokenizer.bin',
    vocab: 32000,
    reference: [1, 9038, 2501, 263, 931, 29892],
  },
];

for (const c of CASES) {
  test(`tokenizer.json from ${c.label} tokenizes like run.c`, { skip: !assetsPresent }, async () => {
    const bin = await Llama2cTokenizer.load(path.join(ASSETS, c.file), c.vocab);
    const config = { bosTokenId: 1, eosTokenId: 2, maxPositions: 2048 } as ModelConfig;
    const dir = path.join(tmp, String(c.vocab));
    await mkdir(dir);
    for (const [name, json] of Object.entries(llama2cTokenizerJson(bin.vocabulary(), config))) {
      await writeFile(path.join(dir, name), JSON.stringify(json));
    }
    const hf = await AutoTokenizer.from_pretrained(dir, { local_files_only: true });
    const ids = (s: string) => (hf(s).input_ids as Tensor).tolist()[0].map(Number) as number[];

    if (c.reference) assert.deepEqual(ids('Once upon a time,'), c.reference);
    // Byte fallback (code points outside the vocabulary), runs of spaces, newlines.
    const odd = 'héllo wörld 🤖 日本\n\nnew  line\tend';
    assert.deepEqual(ids(odd), bin.encode(odd));
    assert.equal(hf.decode(ids(odd), { skip_special_tokens: true }), odd);

    const text = (await readFile(path.join(ASSETS, 'text/tinystories-valid-800k.txt'), 'utf8')).slice(
      0,
      TEXT_CHARS,
    );
    const expected = bin.encode(text);
    const got = ids(text);
    const first = got.findIndex((id, i) => id !== expected[i]);
    console.log(
      `  ${text.length} characters -> ${expected.length} tokens; first differing position: ${first}`,
    );
    assert.equal(got.length, expected.length);
    assert.equal(first, -1);
    assert.equal(hf.decode(got, { skip_special_tokens: true }), bin.decode(expected));
  });
}
