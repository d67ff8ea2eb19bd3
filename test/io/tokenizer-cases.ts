/**
 * Every tokenizer the tests have, for the piecewise-tokenization tests (tokenizer-pieces.test.ts)
 * and the hostile corpus (tokenizer-dos.test.ts): the bundled model's tokenizer.json, GPT-2's
 * BPE as a tokenizer.json twice (the ByteLevel pre-tokenizer's built-in regex, and a Split with
 * Llama-3's pattern, which runs in the regex sandbox), the llama2.c vocabularies as tokenizer.bin
 * and as tokenizer.json, and the GGUF vocabularies. Run directly, prints the digests of the
 * one-call ids of every asset text (the table in tokenizer-pieces.test.ts):
 *
 *   node --import tsx test/io/tokenizer-cases.ts
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { llama2cTokenizerJson } from '../../src/export/tokenizer-json.js';
import { GgufFile } from '../../src/io/gguf.js';
import { GgufTokenizer } from '../../src/io/gguf-tokenizer.js';
import { HfTokenizer } from '../../src/io/hf-tokenizer.js';
import { Llama2cTokenizer } from '../../src/io/llama2c-tokenizer.js';
import type { TextTokenizer } from '../../src/io/tokenizer.js';
import type { ModelConfig } from '../../src/model/config.js';
import { ASSETS, assetsPresent, REPO } from '../helpers.js';

export const BUNDLED = path.join(REPO, 'models/tinystories-656k');

/** The asset texts (../shared/assets/text). */
export const TEXTS = [
  'tinystories-valid-slice.txt',
  'tinystories-valid-800k.txt',
  'wikitext-2-raw-test.txt',
  'wikitext-2-tokens-test.txt',
  'wikitext-2-tokens-valid.txt',
];

export function readText(name: string): string {
  return readFileSync(path.join(ASSETS, 'text', name), 'utf8');
}

/** Llama-3's pre-tokenizer pattern (lookahead, case-insensitive group, \p classes). */
export const LLAMA3_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

export function readJson(file: string): Record<string, unknown> {
  return JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
}

/** The bundled model's tokenizer.json and tokenizer_config.json. */
export function bundledJson(): { json: Record<string, unknown>; config: Record<string, unknown> } {
  return {
    json: readJson(path.join(BUNDLED, 'tokenizer.json')),
    config: readJson(path.join(BUNDLED, 'tokenizer_config.json')),
  };
}

/** GPT-2's vocab.json + merges.txt as a tokenizer.json; `split`: a Split pre-tokenizer with Llama-3's pattern. */
export function gpt2Json(split: boolean): Record<string, unknown> {
  const dir = path.join(ASSETS, 'tokenizers/gpt2');
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: !split };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [
      {
        id: 50256,
        content: '<|endoftext|>',
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: true,
      },
    ],
    normalizer: null,
    pre_tokenizer: split
      ? {
          type: 'Sequence',
          pretokenizers: [
            { type: 'Split', pattern: { Regex: LLAMA3_PATTERN }, behavior: 'Isolated', invert: false },
            byteLevel,
          ],
        }
      : byteLevel,
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      vocab: readJson(path.join(dir, 'vocab.json')),
      merges: readFileSync(path.join(dir, 'merges.txt'), 'utf8')
        .split('\n')
        .filter((l) => l.length > 0 && !l.startsWith('#version')),
    },
  };
}

export interface Case {
  name: string;
  tokenizer: TextTokenizer;
}

/** Every tokenizer: the bundled one always, the others when the assets are present. */
export async function tokenizerCases(): Promise<Case[]> {
  const { json, config } = bundledJson();
  const cases: Case[] = [
    {
      name: 'tinystories-656k tokenizer.json',
      tokenizer: HfTokenizer.fromJson(json, config, 'tokenizer.json'),
    },
  ];
  if (!assetsPresent) return cases;
  cases.push(
    {
      name: 'gpt2 tokenizer.json (ByteLevel)',
      tokenizer: HfTokenizer.fromJson(gpt2Json(false), {}, 'gpt2.json'),
    },
    {
      name: 'gpt2 tokenizer.json (Split, Llama-3 pattern)',
      tokenizer: HfTokenizer.fromJson(gpt2Json(true), {}, 'gpt2-split.json'),
    },
  );
  const modelConfig = { bosTokenId: 1, eosTokenId: 2, maxPositions: 2048 } as ModelConfig;
  for (const [label, file, vocab] of [
    ['stories260K tok512', 'models/stories260k/tok512.bin', 512],
    ['llama2-32k', 'tokenizers/llama2-32k/tokenizer.bin', 32000],
  ] as const) {
    const bin = await Llama2cTokenizer.load(path.join(ASSETS, file), vocab);
    cases.push({ name: `${label} tokenizer.bin`, tokenizer: bin });
    const files = llama2cTokenizerJson(bin.vocabulary(), modelConfig);
    cases.push({
      name: `${label} as tokenizer.json`,
      tokenizer: HfTokenizer.fromJson(
        files['tokenizer.json'] as Record<string, unknown>,
        files['tokenizer_config.json'] as Record<string, unknown>,
        `${label}.json`,
      ),
    });
  }
  for (const [label, file] of [
    ['llama-spm', 'tokenizers/llamacpp-vocab/ggml-vocab-llama-spm.gguf'],
    ['stories260K', 'models/stories260k-gguf-v1/tinyllamas-stories-260k-f32.gguf'],
  ] as const) {
    const g = await GgufFile.open(path.join(ASSETS, file));
    try {
      cases.push({ name: `${label} GGUF`, tokenizer: GgufTokenizer.fromGguf(g) });
    } finally {
      await g.close();
    }
  }
  return cases;
}

/** Token count and the first 16 hex digits of the SHA-256 of the ids as int32. */
export function digest(ids: number[]): string {
  const hash = createHash('sha256')
    .update(new Uint8Array(Int32Array.from(ids).buffer))
    .digest('hex');
  return `${ids.length}:${hash.slice(0, 16)}`;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const cases = await tokenizerCases();
  for (const c of cases) {
    for (const t of TEXTS) {
      const start = performance.now();
      const d = digest(c.tokenizer.encode(readText(t), { whole: true }));
      const s = ((performance.now() - start) / 1000).toFixed(1);
      console.log(`  ['${c.name}', '${t}', '${d}'], // ${s} s`);
    }
  }
}
