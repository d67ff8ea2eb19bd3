/**
 * Piecewise tokenization gives the ids of one call over the whole text (issue #14 item 6), for
 * every tokenizer the tests have (tokenizer-cases.ts):
 *   - every asset text, against the digests of the one-call ids (the library's one call takes
 *     minutes on these texts; `node --import tsx test/io/tokenizer-cases.ts` recomputes them),
 *     and a 60 K-character prefix of each against a live one call;
 *   - adversarial strings (CRLF, a long line with no newline, many blank lines, unicode, lone
 *     surrogates, added tokens at line starts) against a live one call, on these tokenizers and
 *     on variants of the bundled tokenizer.json exercising the other paths (Metaspace, no byte
 *     fallback so unknown tokens fuse across pieces, Whitespace + Digits, lstrip/rstrip added
 *     tokens, a regex normalizer run in the sandbox).
 * Strings are longer than twice the cut length (16 K characters; 8 K for tokenizer.bin and GGUF)
 * so that long words are cut.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HfTokenizer } from '../../src/io/hf-tokenizer.js';
import { PIECE_SIZES } from '../../src/io/tokenizer.js';
import { assetsPresent } from '../helpers.js';
import { bundledJson, type Case, digest, readText, TEXTS, tokenizerCases } from './tokenizer-cases.js';

/** One-call digests (count:sha256 prefix) from `node --import tsx test/io/tokenizer-cases.ts`. */
const ONE_CALL: [string, string, string][] = [
  ['tinystories-656k tokenizer.json', 'tinystories-valid-slice.txt', '7957:73b11ee8fa4811bd'],
  ['tinystories-656k tokenizer.json', 'tinystories-valid-800k.txt', '193347:04b19afbab7b71eb'],
  ['tinystories-656k tokenizer.json', 'wikitext-2-raw-test.txt', '560212:9f3716b94576a834'],
  ['tinystories-656k tokenizer.json', 'wikitext-2-tokens-test.txt', '514434:1ae98e23a5ed636a'],
  ['tinystories-656k tokenizer.json', 'wikitext-2-tokens-valid.txt', '460079:6fbb8d95fdde7b9f'],
  ['gpt2 tokenizer.json (ByteLevel)', 'tinystories-valid-slice.txt', '7195:7bda9901a85e9088'],
  ['gpt2 tokenizer.json (ByteLevel)', 'tinystories-valid-800k.txt', '195558:829e0e2096926927'],
  ['gpt2 tokenizer.json (ByteLevel)', 'wikitext-2-raw-test.txt', '287644:ef6af648320b73e3'],
  ['gpt2 tokenizer.json (ByteLevel)', 'wikitext-2-tokens-test.txt', '295877:b707897cad36e76a'],
  ['gpt2 tokenizer.json (ByteLevel)', 'wikitext-2-tokens-valid.txt', '258659:9c87f1a0a64b3a69'],
  ['gpt2 tokenizer.json (Split, Llama-3 pattern)', 'tinystories-valid-slice.txt', '7197:ac2702bc51a0166b'],
  ['gpt2 tokenizer.json (Split, Llama-3 pattern)', 'tinystories-valid-800k.txt', '191304:bb4d9e424190907b'],
  ['gpt2 tokenizer.json (Split, Llama-3 pattern)', 'wikitext-2-raw-test.txt', '297906:5c488812f24283e8'],
  ['gpt2 tokenizer.json (Split, Llama-3 pattern)', 'wikitext-2-tokens-test.txt', '305907:81f6dd74fa388064'],
  ['gpt2 tokenizer.json (Split, Llama-3 pattern)', 'wikitext-2-tokens-valid.txt', '267507:e853c1e71c88f3c4'],
  ['stories260K tok512 tokenizer.bin', 'tinystories-valid-slice.txt', '15555:33b2d2ebf3536183'],
  ['stories260K tok512 tokenizer.bin', 'tinystories-valid-800k.txt', '393019:187799c4f829b8a2'],
  ['stories260K tok512 tokenizer.bin', 'wikitext-2-raw-test.txt', '815070:95472f82ba94a1ee'],
  ['stories260K tok512 tokenizer.bin', 'wikitext-2-tokens-test.txt', '792800:2e8291be49e1e5cc'],
  ['stories260K tok512 tokenizer.bin', 'wikitext-2-tokens-valid.txt', '705243:e65730bc427df41d'],
  ['stories260K tok512 as tokenizer.json', 'tinystories-valid-slice.txt', '15555:33b2d2ebf3536183'],
  ['stories260K tok512 as tokenizer.json', 'tinystories-valid-800k.txt', '393019:187799c4f829b8a2'],
  ['stories260K tok512 as tokenizer.json', 'wikitext-2-raw-test.txt', '815070:95472f82ba94a1ee'],
  ['stories260K tok512 as tokenizer.json', 'wikitext-2-tokens-test.txt', '762364:eb0bddc4547811ec'],
  ['stories260K tok512 as tokenizer.json', 'wikitext-2-tokens-valid.txt', '681807:9401145df9bf0646'],
  ['llama2-32k tokenizer.bin', 'tinystories-valid-slice.txt', '7762:e54f3c4f219e734c'],
  ['llama2-32k tokenizer.bin', 'tinystories-valid-800k.txt', '212398:d9c23d739d3291c4'],
  ['llama2-32k tokenizer.bin', 'wikitext-2-raw-test.txt', '341469:9b69cd50dbe9e29f'],
  ['llama2-32k tokenizer.bin', 'wikitext-2-tokens-test.txt', '339370:3c3a78a6dfc8c857'],
  ['llama2-32k tokenizer.bin', 'wikitext-2-tokens-valid.txt', '298066:63a92341014b207f'],
  ['llama2-32k as tokenizer.json', 'tinystories-valid-slice.txt', '7762:e54f3c4f219e734c'],
  ['llama2-32k as tokenizer.json', 'tinystories-valid-800k.txt', '212398:d9c23d739d3291c4'],
  ['llama2-32k as tokenizer.json', 'wikitext-2-raw-test.txt', '341469:9b69cd50dbe9e29f'],
  ['llama2-32k as tokenizer.json', 'wikitext-2-tokens-test.txt', '337886:eee8cf90ac35a18f'],
  ['llama2-32k as tokenizer.json', 'wikitext-2-tokens-valid.txt', '297084:93f7635429946663'],
  ['llama-spm GGUF', 'tinystories-valid-slice.txt', '7762:e54f3c4f219e734c'],
  ['llama-spm GGUF', 'tinystories-valid-800k.txt', '212398:d9c23d739d3291c4'],
  ['llama-spm GGUF', 'wikitext-2-raw-test.txt', '341469:9b69cd50dbe9e29f'],
  ['llama-spm GGUF', 'wikitext-2-tokens-test.txt', '339370:3c3a78a6dfc8c857'],
  ['llama-spm GGUF', 'wikitext-2-tokens-valid.txt', '298066:63a92341014b207f'],
  ['stories260K GGUF', 'tinystories-valid-slice.txt', '15555:33b2d2ebf3536183'],
  ['stories260K GGUF', 'tinystories-valid-800k.txt', '393019:187799c4f829b8a2'],
  ['stories260K GGUF', 'wikitext-2-raw-test.txt', '815070:95472f82ba94a1ee'],
  ['stories260K GGUF', 'wikitext-2-tokens-test.txt', '792800:2e8291be49e1e5cc'],
  ['stories260K GGUF', 'wikitext-2-tokens-valid.txt', '705243:e65730bc427df41d'],
];

const cases = await tokenizerCases();

function sameIds(c: Case, text: string, label: string): void {
  const pieces = c.tokenizer.encode(text);
  const whole = c.tokenizer.encode(text, { whole: true });
  const first = pieces.findIndex((id, i) => id !== whole[i]);
  assert.ok(
    pieces.length === whole.length && first === -1,
    `${c.name}, ${label}: ${pieces.length} ids in pieces, ${whole.length} in one call, first difference at ${first}`,
  );
}

const PARAGRAPH =
  'Once upon a time, there was a little girl named Lily.  She said: "Hi!"\tIt\'s 3.14 — naïve café ' +
  '日本語 🤖 e\u0301 \u00a0nbsp \u2028sep ▁meta <0x0A> 12345 end. ';

/** [label, text] of about `size` characters each (and a few short ones). */
function adversarial(size = 40_000): [string, string][] {
  const rep = (unit: string, chars = size) => unit.repeat(Math.ceil(chars / unit.length));
  return [
    ['empty', ''],
    ['one character', 'a'],
    ['one newline', '\n'],
    ['only newlines', '\n'.repeat(size)],
    ['CRLF line ends', rep(`${PARAGRAPH}\r\n`)],
    ['a long line with no newline', rep(PARAGRAPH)],
    ['many blank lines', rep(`\n\n\n\n${PARAGRAPH}\r\n\r\n`)],
    ['newlines before combining marks, spaces, tabs, emoji', rep(`x\n\u0301y\n 🤖\n\t${PARAGRAPH}\n \n`)],
    ['lone surrogates around newlines', rep(`\ud800a\n\udc00${PARAGRAPH}\ud83e\n`)],
    [
      'unicode lines',
      rep('Ελληνικά σίγμα ΟΔΟΣ\nрусский текст\nالعربية\nहिन्दी\n한국어 텍스트\n\u200b\ufeff\u0000\n'),
    ],
    ['whitespace at both ends', `\n \n\t${rep(`${PARAGRAPH}\n`)} \n\n `],
    // Sections between added tokens are short: the one long section is after the last one.
    [
      'added tokens at line starts and ends',
      `${rep(`<|start_story|>\n${PARAGRAPH}\n<|end_story|>\n<|endoftext|>`, size / 20)}${rep(`\n${PARAGRAPH}`)}`,
    ],
    ['one long word of letters', 'a'.repeat(size)],
    ['runs of spaces and newlines', rep(`${' '.repeat(300)}\n${'\n'.repeat(300)} x`)],
  ];
}

/** Pieces small enough to cut 6 K-character strings tens of times (more than any token). */
const SMALL = { batch: 512, cut: 256, normalize: 1024, merge: 256 };

function withSmallPieces(fn: () => void): void {
  const saved = { ...PIECE_SIZES };
  Object.assign(PIECE_SIZES, SMALL);
  try {
    fn();
  } finally {
    Object.assign(PIECE_SIZES, saved);
  }
}

test('every tokenizer.json here is tokenized in pieces (none falls back to the one call)', () => {
  for (const c of cases) {
    if (c.tokenizer instanceof HfTokenizer) assert.ok(c.tokenizer.piecewise, c.name);
  }
  for (const [label, edit] of VARIANTS) assert.ok((variant(edit) as HfTokenizer).piecewise, label);
});

for (const c of cases) {
  test(`${c.name}: pieces give the one-call ids on adversarial strings`, () => {
    for (const [label, text] of adversarial()) sameIds(c, text, label);
  });
  test(`${c.name}: small pieces give the one-call ids on adversarial strings`, () => {
    withSmallPieces(() => {
      for (const [label, text] of adversarial(6000)) sameIds(c, text, label);
    });
  });
}

for (const c of cases) {
  test(`${c.name}: pieces give the one-call ids on 60 K-character prefixes of the texts`, {
    skip: !assetsPresent && 'needs ../shared/assets',
  }, () => {
    for (const t of TEXTS) sameIds(c, readText(t).slice(0, 60_000), t);
  });
}

for (const c of cases) {
  test(`${c.name}: pieces give the one-call ids of every whole asset text`, {
    skip: !assetsPresent && 'needs ../shared/assets',
  }, () => {
    for (const t of TEXTS) {
      const expected = ONE_CALL.find(([name, text]) => name === c.name && text === t)?.[2];
      assert.ok(expected, `no one-call digest for ${c.name} on ${t}: run test/io/tokenizer-cases.ts`);
      assert.equal(digest(c.tokenizer.encode(readText(t))), expected, `${c.name} on ${t}`);
    }
  });
}

/** The bundled tokenizer.json with some of its parts replaced. */
function variant(edit: (json: Record<string, unknown>) => void): Case['tokenizer'] {
  const { json, config } = bundledJson();
  edit(json);
  return HfTokenizer.fromJson(json, config, 'variant/tokenizer.json');
}

const VARIANTS: [string, (json: Record<string, unknown>) => void][] = [
  [
    'NFKC, Lowercase, StripAccents, Strip, Prepend and Replace normalizers (normalized in chunks)',
    (j) => {
      j.normalizer = {
        type: 'Sequence',
        normalizers: [
          { type: 'NFKC' },
          { type: 'Lowercase' },
          { type: 'StripAccents' },
          { type: 'Strip', strip_left: true, strip_right: true },
          { type: 'Prepend', prepend: '▁' },
          { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
        ],
      };
    },
  ],
  [
    'a BertNormalizer (normalized in chunks)',
    (j) => {
      j.normalizer = {
        type: 'BertNormalizer',
        clean_text: true,
        handle_chinese_chars: true,
        strip_accents: null,
        lowercase: true,
      };
    },
  ],
  [
    'Metaspace pre-tokenizer (prepend_scheme first), no normalizer',
    (j) => {
      j.normalizer = null;
      j.pre_tokenizer = { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false };
    },
  ],
  [
    'no byte fallback: unknown characters (and "\\n") fuse into one unk across pieces',
    (j) => {
      (j.model as Record<string, unknown>).byte_fallback = false;
    },
  ],
  [
    'Whitespace then Digits pre-tokenizers',
    (j) => {
      j.pre_tokenizer = {
        type: 'Sequence',
        pretokenizers: [{ type: 'Whitespace' }, { type: 'Digits', individual_digits: true }],
      };
    },
  ],
  [
    'added tokens with lstrip and rstrip',
    (j) => {
      for (const t of j.added_tokens as Record<string, unknown>[]) {
        t.lstrip = true;
        t.rstrip = true;
        t.normalized = false;
      }
    },
  ],
  [
    'a Replace normalizer with a regex (runs in the sandbox) and NFKC',
    (j) => {
      j.normalizer = {
        type: 'Sequence',
        normalizers: [
          { type: 'NFKC' },
          { type: 'Replace', pattern: { Regex: ' {2,}' }, content: ' ' },
          { type: 'Prepend', prepend: '▁' },
          { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
        ],
      };
    },
  ],
  [
    'a Split pre-tokenizer isolating newlines, then ByteLevel without regex (byte-level "Ċ" cuts)',
    (j) => {
      j.normalizer = null;
      j.pre_tokenizer = {
        type: 'Sequence',
        pretokenizers: [
          { type: 'Split', pattern: { String: '\n\n\n\n' }, behavior: 'Isolated', invert: false },
          { type: 'ByteLevel', add_prefix_space: true, use_regex: false },
        ],
      };
    },
  ],
];

for (const [label, edit] of VARIANTS) {
  test(`bundled tokenizer.json with ${label}: pieces give the one-call ids`, () => {
    const c = { name: label, tokenizer: variant(edit) };
    for (const [what, text] of adversarial()) sameIds(c, text, what);
    withSmallPieces(() => {
      for (const [what, text] of adversarial(6000)) sameIds(c, text, `${what}, small pieces`);
    });
  });
}
