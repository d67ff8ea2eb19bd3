/**
 * Property-based fuzzing (fast-check) of every parser of untrusted files: random mutations
 * (truncation, byte edits, 32/64-bit field overwrites, insertions, deletions) of small valid
 * files, plus structure-aware generators for safetensors headers, config.json and
 * tokenizer.json. Property: the parser either succeeds or throws a PtqError — never another
 * exception, never a hang (per-case timeout), never a wild allocation (an impossible allocation
 * throws RangeError, which fails the property; peak RSS is checked at the end). Parses that
 * succeed must satisfy the format's invariants.
 *
 * FUZZ_RUNS (default 10000) sets the cases per parser; FUZZ_SEED fixes the seed (default: a
 * constant in CI, random under `npm run fuzz`). As README states: safetensors splits its cases
 * between mutated files and generated headers; ptqkit checkpoints get a fifth of them (each case
 * writes, reads and checks a whole checkpoint: 2,000 take ~4 s); tokenizer.bin's file-reading
 * path gets a tenth on top of its RUNS in-memory cases.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import { PtqError } from '../../src/errors.js';
import { GgufFile, GgufValueType } from '../../src/io/gguf.js';
import { HfTokenizer } from '../../src/io/hf-tokenizer.js';
import { parseJsonBytes } from '../../src/io/json.js';
import { Llama2cTokenizer } from '../../src/io/llama2c-tokenizer.js';
import { writePtqCheckpoint } from '../../src/io/ptq-checkpoint.js';
import { SafetensorsModel } from '../../src/io/safetensors.js';
import { LLAMA } from '../../src/model/architecture.js';
import { loadModel, readCheckedPtqCheckpoint } from '../../src/model/load.js';
import { loadLlama2cCheckpoint } from '../../src/model/sources/llama2c.js';
import { quantizeModel } from '../../src/quant/quantize-model.js';
import {
  L2C_VOCAB,
  llama2cBytes,
  safetensorsBytes,
  TINY_CONFIG,
  tokenizerBinBytes,
  writeTinyGguf,
  writeTinyHfModel,
} from '../fixtures/malformed/generate.js';
import { FUZZ_RUNS, FUZZ_SEED, fuzzParams, fuzzScratch } from '../fuzz-settings.js';

const RUNS = FUZZ_RUNS;
/** README: "ptqkit checkpoints 2,000" (a fifth of the default RUNS; see the header). */
const CHECKPOINT_RUNS = Math.ceil(RUNS / 5);
const SEED = FUZZ_SEED;
const params = fuzzParams;
const work = fuzzScratch('ptq-fuzz-');
const timings: string[] = [];
after(() => {
  console.log(
    `  fuzz (${RUNS} runs per parser, ${CHECKPOINT_RUNS} for ptqkit checkpoints, seed ${SEED ?? 'random'}): ${timings.join('; ')}; peak RSS ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MiB`,
  );
});

// ---------- mutations ----------

type Mutation =
  | { kind: 'truncate'; at: number }
  | { kind: 'set'; edits: [number, number][] }
  | { kind: 'u32'; at: number; value: number }
  | { kind: 'u64'; at: number; value: bigint }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; n: number };

/** Positions are fractions of the length, biased to the start where headers live. */
const position = fc.oneof(fc.integer({ min: 0, max: 63 }), fc.nat({ max: 1 << 20 }));
const interesting32 = fc.oneof(
  fc.constantFrom(0, 1, -1, 2 ** 31 - 1, -(2 ** 31), 255, 256, 65535),
  fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
);
const interesting64 = fc.oneof(
  fc.constantFrom(0n, 1n, 2n ** 63n, 2n ** 64n - 1n, 2n ** 32n, 2n ** 53n + 1n),
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
);
const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('truncate' as const), at: position }),
  fc.record({
    kind: fc.constant('set' as const),
    edits: fc.array(fc.tuple(position, fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }),
  }),
  fc.record({ kind: fc.constant('u32' as const), at: position, value: interesting32 }),
  fc.record({ kind: fc.constant('u64' as const), at: position, value: interesting64 }),
  fc.record({
    kind: fc.constant('insert' as const),
    at: position,
    bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }),
  }),
  fc.record({ kind: fc.constant('delete' as const), at: position, n: fc.integer({ min: 1, max: 32 }) }),
);
const mutations = fc.array(mutation, { minLength: 1, maxLength: 3 });

function mutate(base: Uint8Array, ms: Mutation[]): Uint8Array {
  let b = Buffer.from(base);
  for (const m of ms) {
    // 'set' carries its positions in its edits.
    const at = b.length && 'at' in m ? m.at % b.length : 0;
    switch (m.kind) {
      case 'truncate':
        b = b.subarray(0, at);
        break;
      case 'set':
        for (const [p, v] of m.edits) if (b.length) b[p % b.length] = v;
        break;
      case 'u32':
        if (at + 4 <= b.length) b.writeInt32LE(m.value, at);
        break;
      case 'u64':
        if (at + 8 <= b.length) b.writeBigUInt64LE(m.value, at);
        break;
      case 'insert':
        b = Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
        break;
      case 'delete':
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.n)]);
        break;
    }
  }
  return b;
}

/** Run `fn`; a PtqError is a fine answer, anything else fails the property. */
async function parsesOrPtqError<T>(fn: () => Promise<T> | T): Promise<T | undefined> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof PtqError) return undefined;
    throw e;
  }
}

/** `fn` is fc.assert: void for a synchronous property, a Promise for an async one. */
async function timed(label: string, fn: () => void | Promise<void>) {
  const t0 = performance.now();
  await fn();
  timings.push(`${label} ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

let n = 0;
const scratchFile = (ext: string, bytes: Uint8Array) => {
  const f = path.join(work, `case-${n++ % 4}${ext}`);
  writeFileSync(f, bytes);
  return f;
};

// ---------- bases ----------

const stBase = safetensorsBytes(
  {
    __metadata__: { format: 'pt' },
    a: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] },
    b: { dtype: 'F16', shape: [4], data_offsets: [24, 32] },
    c: { dtype: 'I64', shape: [1], data_offsets: [32, 40] },
  },
  40,
);
let ggufBase: Uint8Array;
let ptqDir: string;
let ptqBase: Uint8Array;
const tinyTokenizer = {
  version: '1.0',
  added_tokens: [
    {
      id: 0,
      content: '<unk>',
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    },
  ],
  normalizer: null,
  pre_tokenizer: { type: 'Whitespace' },
  post_processor: null,
  decoder: null,
  model: {
    type: 'BPE',
    dropout: null,
    unk_token: '<unk>',
    continuing_subword_prefix: null,
    end_of_word_suffix: null,
    fuse_unk: false,
    byte_fallback: false,
    vocab: { '<unk>': 0, a: 1, b: 2, c: 3, ab: 4, abc: 5 },
    merges: ['a b', 'ab c'],
  },
};

before(async () => {
  const g = path.join(work, 'base.gguf');
  await writeTinyGguf(g);
  ggufBase = readFileSync(g);
  // A ptqkit checkpoint of the tiny model (RTN int4 g4 asymmetric).
  const hf = path.join(work, 'hf');
  await writeTinyHfModel(hf);
  const m = await loadModel(hf);
  const q = await quantizeModel(m.config, m.weights, {
    method: 'rtn',
    grid: { bits: 4, symmetric: false, granularity: 'group', groupSize: 4, scaleDtype: 'f16' },
  });
  ptqDir = path.join(work, 'ptq');
  await writePtqCheckpoint(ptqDir, { ...m, weights: q.weights }, q.quantization);
  ptqBase = readFileSync(path.join(ptqDir, 'model.safetensors'));
});

// ---------- the parsers ----------

// The two safetensors properties share the parser's budget of RUNS cases.
test('safetensors: mutated files parse within bounds or throw a PtqError', async () => {
  await timed('safetensors', () =>
    fc.assert(
      fc.asyncProperty(mutations, async (ms) => {
        const bytes = mutate(stBase, ms);
        const f = scratchFile('.safetensors', bytes);
        await parsesOrPtqError(async () => {
          const st = await SafetensorsModel.open(f);
          try {
            // Invariants of an accepted file: tensors tile the data exactly, sizes match shapes.
            let total = 0;
            for (const name of st.names()) {
              const info = st.info(name);
              assert.ok(info.begin >= 8 && info.end <= bytes.length && info.begin <= info.end);
              total += info.end - info.begin;
              await st.readFloat32(name);
            }
            assert.equal(total, bytes.length - 8 - Number(Buffer.from(bytes).readBigUInt64LE(0)));
          } finally {
            await st.close();
          }
        });
      }),
      params(Math.ceil(RUNS / 2)),
    ),
  );
});

test('safetensors: generated headers with absurd shapes, offsets and dtypes', async () => {
  const dim = fc.oneof(
    fc.integer({ min: 0, max: 8 }),
    fc.constantFrom(-1, 1.5, 2 ** 53, 2 ** 62, 1e300, Number.MAX_SAFE_INTEGER),
    fc.string({ maxLength: 2 }),
  );
  const entry = fc.record({
    dtype: fc.oneof(
      fc.constantFrom('F32', 'F16', 'BF16', 'U8', 'I64', 'BOOL', 'F64'),
      fc.string({ maxLength: 4 }),
    ),
    shape: fc.oneof(fc.array(dim, { maxLength: 5 }), fc.anything()),
    data_offsets: fc.oneof(
      fc.tuple(fc.integer({ min: 0, max: 80 }), fc.integer({ min: 0, max: 80 })),
      fc.anything(),
    ),
  });
  const header = fc.dictionary(
    fc.oneof(fc.string({ maxLength: 3 }), fc.constant('__metadata__')),
    fc.oneof(entry, fc.anything()),
    { maxKeys: 5 },
  );
  await timed('safetensors headers', () =>
    fc.assert(
      fc.asyncProperty(header, fc.integer({ min: 0, max: 80 }), async (h, dataBytes) => {
        const f = scratchFile('.safetensors', safetensorsBytes(h, dataBytes));
        await parsesOrPtqError(async () => {
          const st = await SafetensorsModel.open(f);
          try {
            for (const name of st.names()) await st.readFloat32(name);
          } finally {
            await st.close();
          }
        });
      }),
      params(Math.ceil(RUNS / 2)),
    ),
  );
});

test('llama2.c checkpoints: mutated headers and sizes never allocate before the size check', async () => {
  // A smaller model than the corpus's (vocab 16, seq 4): the header is what is fuzzed.
  const base = llama2cBytes([8, 16, 1, 2, 1, 16, 4]);
  // Header fields are the interesting part: mutate them more often.
  const headerEdit = fc.record({
    kind: fc.constant('u32' as const),
    at: fc.integer({ min: 0, max: 6 }).map((i) => i * 4),
    value: interesting32,
  });
  await timed('llama2.c', () =>
    fc.assert(
      fc.asyncProperty(
        fc.array(fc.oneof(mutation, headerEdit), { minLength: 1, maxLength: 3 }),
        async (ms) => {
          const bytes = mutate(base, ms);
          const f = scratchFile('.bin', bytes);
          const r = await parsesOrPtqError(() => loadLlama2cCheckpoint(f));
          if (r)
            for (const t of r.tensors.values())
              assert.equal(
                t.data.length,
                t.shape.reduce((a, b) => a * b, 1),
              );
        },
      ),
      params(),
    ),
  );
});

test('tokenizer.bin: mutated vocabularies', async () => {
  const base = tokenizerBinBytes();
  await timed('tokenizer.bin', () =>
    fc.assert(
      fc.asyncProperty(mutations, fc.integer({ min: 0, max: 400 }), async (ms, vocab) => {
        const bytes = mutate(base, ms);
        const tok = await parsesOrPtqError(() => Llama2cTokenizer.fromBytes(bytes, vocab, 'tokenizer.bin'));
        if (tok && vocab >= 259) {
          // Any text encodes to ids of the vocabulary (byte fallback needs ids 3..258).
          for (const id of tok.encode('héllo wörld')) assert.ok(id >= 0 && id < vocab);
        }
      }),
      params(),
    ),
  );
  // The file-reading path with its size bound, on a smaller budget (it opens a file per case).
  await fc.assert(
    fc.asyncProperty(mutations, async (ms) => {
      const f = scratchFile('.bin', mutate(base, ms));
      await parsesOrPtqError(() => Llama2cTokenizer.load(f, L2C_VOCAB));
    }),
    params(Math.ceil(RUNS / 10)),
  );
});

test('config.json: random values for every hyper-parameter', async () => {
  const value = fc.oneof(
    fc.integer({ min: -4, max: 64 }),
    fc.constantFrom(0, 1e12, 2 ** 31, 1.5, -0, Number.NaN, Number.POSITIVE_INFINITY, null, '8', [8], {}),
    fc.double(),
  );
  const keys = Object.keys(TINY_CONFIG).concat('head_dim');
  const config = fc.record(Object.fromEntries(keys.map((k) => [k, fc.option(value, { nil: undefined })])), {
    requiredKeys: [],
  });
  await timed('config.json', () =>
    fc.assert(
      fc.property(config, fc.boolean(), (edits, keepOthers) => {
        const json: Record<string, unknown> = keepOthers ? { ...TINY_CONFIG, ...edits } : edits;
        let c: ReturnType<typeof LLAMA.parseConfig> | undefined;
        try {
          c = LLAMA.parseConfig(json, 'config.json');
        } catch (e) {
          if (!(e instanceof PtqError)) throw e;
          return;
        }
        // Accepted configurations describe a buildable model.
        for (const v of [
          c.vocabSize,
          c.hiddenSize,
          c.intermediateSize,
          c.numLayers,
          c.numHeads,
          c.numKvHeads,
          c.headDim,
          c.maxPositions,
        ]) {
          assert.ok(Number.isInteger(v) && v > 0 && v <= 2 ** 27);
        }
        assert.equal(c.hiddenSize % c.numHeads, 0);
        assert.equal(c.numHeads % c.numKvHeads, 0);
        assert.equal(c.headDim % 2, 0);
        assert.ok(Number.isFinite(c.normEps) && c.normEps > 0 && Number.isFinite(c.ropeTheta));
        assert.ok(LLAMA.expectedShapes(c).size <= 9 * 4096 + 3);
      }),
      params(),
    ),
  );
});

test('JSON: byte mutations of config.json agree with JSON.parse or throw FormatError', async () => {
  const base = new TextEncoder().encode(JSON.stringify(TINY_CONFIG));
  await timed('JSON', () =>
    fc.assert(
      fc.property(mutations, (ms) => {
        const bytes = mutate(base, ms);
        const ours = (() => {
          try {
            return { value: parseJsonBytes(bytes, 'config.json') };
          } catch (e) {
            if (!(e instanceof PtqError)) throw e;
            return undefined;
          }
        })();
        // Differential: what we accept, JSON.parse reads identically.
        if (ours) assert.deepEqual(ours.value, JSON.parse(Buffer.from(bytes).toString('utf8')));
      }),
      params(),
    ),
  );
});

test('tokenizer.json: random edits of a small BPE tokenizer', async () => {
  const anyValue = fc.oneof(
    fc.anything({ maxDepth: 2 }),
    fc.integer({ min: -3, max: 10 }),
    fc.constantFrom('BPE', 'Unigram', 'WordLevel', 'WordPiece', 'Whitespace', 1e12),
  );
  const pathInto = fc.constantFrom(
    ['model', 'type'],
    ['model', 'vocab'],
    ['model', 'vocab', 'a'],
    ['model', 'vocab', 'zz'],
    ['model', 'merges'],
    ['model', 'merges', '0'],
    ['model', 'unk_token'],
    ['added_tokens'],
    ['added_tokens', '0', 'id'],
    ['added_tokens', '0', 'content'],
    ['pre_tokenizer'],
    ['pre_tokenizer', 'type'],
    ['normalizer'],
    ['decoder'],
    ['model'],
  );
  const edit = fc.tuple(pathInto, fc.option(anyValue, { nil: undefined }));
  await timed('tokenizer.json', () =>
    fc.assert(
      fc.property(fc.array(edit, { minLength: 1, maxLength: 3 }), (edits) => {
        const json = structuredClone(tinyTokenizer) as Record<string, unknown>;
        for (const [keys, v] of edits) {
          let o = json as Record<string, unknown>;
          for (const k of keys.slice(0, -1)) {
            if (typeof o[k] !== 'object' || o[k] === null) break;
            o = o[k] as Record<string, unknown>;
          }
          if (v === undefined) delete o[keys.at(-1)!];
          else o[keys.at(-1)!] = v;
        }
        let tok: HfTokenizer | undefined;
        try {
          tok = HfTokenizer.fromJson(json, {}, 'tokenizer.json');
          for (const id of tok.encode('abc ab a cab')) assert.ok(id >= 0 && id < tok.vocabSize);
        } catch (e) {
          if (!(e instanceof PtqError)) throw e;
        }
      }),
      params(),
    ),
  );
});

test('ptqkit checkpoints: mutated model.safetensors never dequantizes to NaN unnoticed', async () => {
  await timed('ptq checkpoint', () =>
    fc.assert(
      fc.asyncProperty(mutations, async (ms) => {
        writeFileSync(path.join(ptqDir, 'model.safetensors'), mutate(ptqBase, ms));
        const r = await parsesOrPtqError(() => readCheckedPtqCheckpoint(ptqDir));
        // F32 tensors may hold any float; quantized ones never dequantize to NaN/Inf.
        if (r)
          for (const name of r.quantization.tensors.keys())
            assert.ok(r.weights.get(name)!.data.every(Number.isFinite), name);
      }),
      params(CHECKPOINT_RUNS),
    ),
  );
  writeFileSync(path.join(ptqDir, 'model.safetensors'), ptqBase);
});

test('GGUF: mutated files parse within bounds or throw a PtqError', async () => {
  await timed('GGUF', () =>
    fc.assert(
      fc.asyncProperty(mutations, async (ms) => {
        const bytes = mutate(ggufBase, ms);
        const f = scratchFile('.gguf', bytes);
        await parsesOrPtqError(async () => {
          const g = await GgufFile.open(f);
          try {
            // Tensors tile the data section in order (gguf.cpp), each padded to the alignment.
            let end = 0;
            for (const t of g.tensors) {
              assert.equal(t.offset, end, t.name);
              end += Math.ceil(t.byteLength / g.alignment) * g.alignment;
              assert.ok(g.dataOffset + t.offset + t.byteLength <= bytes.length);
              await g.readFloat32(t.name);
            }
            // Numeric arrays are typed arrays no larger than the file.
            for (const m of g.metadata.values())
              if (m.type === GgufValueType.ARRAY && m.itemType !== GgufValueType.STRING)
                assert.ok(ArrayBuffer.isView(m.value) && m.value.byteLength <= bytes.length, m.key);
          } finally {
            await g.close();
          }
        });
      }),
      params(),
    ),
  );
});

test('peak RSS stays bounded over all fuzz cases', () => {
  const rssMiB = process.resourceUsage().maxRSS / 1024;
  assert.ok(rssMiB < 1024, `peak RSS ${rssMiB} MiB`);
});
