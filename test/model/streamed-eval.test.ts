/**
 * Block-streamed evaluation (#16 item 2): a model read block by block from its files
 * (model/weight-source.ts, StreamedDecoder) gives the same perplexity, KLD and top-1 agreement,
 * bit for bit, as the model loaded whole, on the real models of every input kind (Hugging Face
 * directory, ptqkit checkpoint, llama2.c, GGUF); with a budget forcing several passes, every
 * block is read once per pass and at most one block is resident at a time, and the weights
 * held at once stay within the plan's bound (measured in bytes of resident float32 weights).
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { encodeF16 } from '../../src/formats/half.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { readText } from '../../src/io/text.js';
import { LLAMA } from '../../src/model/architecture.js';
import { Decoder } from '../../src/model/decoder.js';
import { planPasses, streamedWeightBytes, workBytes } from '../../src/model/eval-passes.js';
import { loadModel, type OpenedModel, openModel } from '../../src/model/load.js';
import { parseSize } from '../../src/model/memory.js';
import { type EvalResult, evaluate, type WindowProtocol } from '../../src/model/perplexity.js';
import { newStreamStats, StreamedDecoder } from '../../src/model/streamed-decoder.js';
import { float32Bytes } from '../../src/model/weight-source.js';
import { streamQuantize } from '../../src/quant/stream-quantize.js';
import { runCli } from '../cli/run-cli.js';
import { ASSETS, assetsPresent, REPO, seededRandom, tempDir } from '../helpers.js';
import { wordLevelTokenizer } from './arch-reference.js';

const TINY = path.join(REPO, 'models/tinystories-656k');
const SLICE = path.join(ASSETS, 'text/tinystories-valid-slice.txt');
const STORIES = path.join(ASSETS, 'models/stories260k/stories260K.bin');
const STORIES_GGUF = path.join(ASSETS, 'models/stories260k-gguf-v1/tinyllamas-stories-260k-f32.gguf');
const work = tempDir('ptq-streamed-eval-');
const skip = assetsPresent ? false : 'needs /work/shared/assets';

/** The evaluation's numbers (time and the execution report aside). */
const numbers = (r: EvalResult) => ({
  tokens: r.tokens,
  windows: r.windows,
  predictions: r.predictions,
  nll: r.nll,
  perplexity: r.perplexity,
  kld: r.kld,
  top1Agreement: r.top1Agreement,
  referencePerplexity: r.referencePerplexity,
});

async function inMemory(model: string, ref: string | undefined, tokens: number[], protocol: WindowProtocol) {
  const m = await loadModel(model);
  const r = ref ? await loadModel(ref) : undefined;
  const result = await evaluate(new Decoder(m.config, m.weights), tokens, {
    protocol,
    reference: r && new Decoder(r.config, r.weights),
  });
  assert.equal(result.execution.path, 'in-memory');
  return result;
}

/**
 * Streamed, one window per batch and a budget holding `windowsInFlight` windows after the
 * weights and one batch's work: several passes. Returns the result and the shared counters.
 */
async function streamed(
  model: string,
  ref: string | undefined,
  tokens: number[],
  protocol: WindowProtocol,
  windowsInFlight: number,
  options: { pieceBytes?: number } = {},
) {
  const opened: OpenedModel[] = [await openModel(model, options)];
  if (ref) opened.push(await openModel(ref, options));
  try {
    const stats = newStreamStats();
    const decoders = opened.map((o) => new StreamedDecoder(o.config, o.weights, undefined, stats));
    const { config } = opened[0]!;
    const rows = protocol.ctx;
    const budget =
      streamedWeightBytes(decoders) +
      workBytes(
        decoders.map((d) => d.config),
        rows,
      ) +
      windowsInFlight * rows * config.hiddenSize * 4 * decoders.length;
    const result = await evaluate(decoders[0]!, tokens, {
      protocol,
      reference: decoders[1],
      maxBatchLogits: rows * config.vocabSize, // one window per batch
      maxMemory: budget,
    });
    return { result, stats, decoders };
  } finally {
    for (const o of opened) await o.weights.close();
  }
}

async function tokensOf(model: string, maxTokens: number) {
  const m = await openModel(model);
  await m.weights.close();
  return m.tokenizer.encode(await readText(SLICE)).slice(0, maxTokens);
}

test('tinystories-656k and its RTN int4 checkpoint: streamed KLD, top-1 and perplexities equal the in-memory ones', {
  skip,
}, async () => {
  const q = path.join(work, 'tiny-rtn4');
  await streamQuantize(TINY, q, {
    method: 'rtn',
    grid: { bits: 4, symmetric: true, granularity: 'group', groupSize: 32, scaleDtype: 'f16' },
  });
  const tokens = await tokensOf(TINY, 4000);
  const protocol = { ctx: 256, stride: 256, dropPartial: true };
  const a = await inMemory(q, TINY, tokens, protocol);
  const { result: b, stats, decoders } = await streamed(q, TINY, tokens, protocol, 3);
  assert.ok(a.kld! > 0 && a.top1Agreement! < 1, 'the int4 model differs from its reference');
  assert.deepEqual(numbers(b), numbers(a));
  // 15 windows, 3 in flight: 5 passes; both models read every block once per pass, one block at a time.
  const e = b.execution;
  assert.equal(e.path, 'streamed');
  assert.equal(e.windowsPerPass, 3);
  assert.equal(e.passes, Math.ceil(b.windows / 3));
  assert.equal(stats.blockLoads, e.passes * 2 * decoders[0]!.config.numLayers);
  assert.equal(stats.headLoads, e.passes * 2);
  assert.equal(stats.maxResidentBlocks, 1);
  assert.equal(stats.residentBytes, 0, 'everything read was freed');
  assert.ok(stats.peakResidentBytes <= e.weightBytes!, `${stats.peakResidentBytes} > ${e.weightBytes}`);
  // Tied embeddings: both heads (the embedding matrix of each) are what is held at most.
  assert.equal(stats.peakResidentBytes, decoders[0]!.headBytes + decoders[1]!.headBytes);
});

test('stories260K as llama2.c and as GGUF: streamed equals in memory (perplexity, and KLD of one against the other)', {
  skip,
}, async () => {
  const tokens = await tokensOf(STORIES, 3000);
  const protocol = { ctx: 256, stride: 128, dropPartial: false };
  for (const [model, ref] of [
    [STORIES, undefined],
    [STORIES_GGUF, STORIES],
  ] as const) {
    const a = await inMemory(model, ref, tokens, protocol);
    const { result: b, stats } = await streamed(model, ref, tokens, protocol, 4);
    assert.deepEqual(numbers(b), numbers(a), path.basename(model));
    assert.ok(b.execution.passes >= 3, `${b.execution.passes} passes`);
    assert.equal(stats.maxResidentBlocks, 1);
  }
});

test('a synthetic F16 model read in small pieces: peak resident weights one block or the heads, not the model', async () => {
  const hf = {
    model_type: 'llama',
    hidden_size: 64,
    intermediate_size: 160,
    num_hidden_layers: 8,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 300,
    max_position_embeddings: 128,
    tie_word_embeddings: false,
  };
  const dir = path.join(work, 'synthetic-f16');
  mkdirSync(dir);
  const config = LLAMA.parseConfig(hf, 'synthetic');
  const rand = seededRandom(5);
  const tensors = [...LLAMA.expectedShapes(config)].map(([name, shape]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const values = Float32Array.from({ length: n }, () => (shape.length === 1 ? 1 : (rand() - 0.5) * 0.2));
    return { name, dtype: 'F16' as const, shape, data: encodeF16(values) };
  });
  await writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify(hf));
  writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(wordLevelTokenizer(300)));
  const tokens = Array.from({ length: 1000 }, () => Math.floor(rand() * 300));
  const protocol = { ctx: 100, stride: 100, dropPartial: true };
  const a = await inMemory(dir, undefined, tokens, protocol);
  // Pieces of 1000 bytes: every matrix is read across piece boundaries, rows split between pieces.
  const {
    result: b,
    stats,
    decoders,
  } = await streamed(dir, undefined, tokens, protocol, 2, { pieceBytes: 1000 });
  assert.deepEqual(numbers(b), numbers(a));
  const d = decoders[0]!;
  const total = float32Bytes(d.weights);
  assert.equal(b.execution.passes, 5);
  assert.equal(stats.blockLoads, 5 * 8);
  assert.equal(stats.maxResidentBlocks, 1);
  assert.equal(stats.peakResidentBytes, Math.max(d.blockBytes, d.headBytes));
  assert.ok(
    stats.peakResidentBytes < total / 4,
    `${stats.peakResidentBytes} of ${total} bytes resident at once`,
  );
  // Only the embedding rows of the tokens in the windows were read, never the whole matrix.
  assert.ok(stats.embeddingRows <= 5 * 300 && stats.embeddingRows > 0);
});

test('planPasses: in-memory models run one batch per pass; a streamed one fills the budget, at least one batch', () => {
  const config = LLAMA.parseConfig(
    {
      model_type: 'llama',
      hidden_size: 8,
      intermediate_size: 16,
      num_hidden_layers: 1,
      num_attention_heads: 2,
      vocab_size: 10,
    },
    'tiny',
  );
  const batch = (count: number) => ({ count, T: 4, ids: new Int32Array(count * 4) });
  const batches = [batch(2), batch(2), batch(1)];
  const decoder = new Decoder(config, new Map());
  assert.deepEqual(
    planPasses([decoder], batches, 1).passes.map((p) => p.length),
    [1, 1, 1],
  );
  const source = {
    shapes: new Map(),
    read: async () => assert.fail(),
    readRows: async () => assert.fail(),
    close: async () => {},
  };
  const s = new StreamedDecoder(config, source);
  const perWindow = 4 * 8 * 4;
  const base = streamedWeightBytes([s]) + workBytes([config], 8);
  assert.deepEqual(
    planPasses([s], batches, base + 4 * perWindow).passes.map((p) => p.length),
    [2, 1],
  );
  assert.deepEqual(
    planPasses([s], batches, 1).passes.map((p) => p.length),
    [1, 1, 1],
  );
  assert.throws(() => planPasses([s], batches, Number.NaN), /invalid memory budget/);
});

test('parseSize: units, and the option named in the error', () => {
  assert.equal(parseSize('8GiB'), 8 * 2 ** 30);
  assert.equal(parseSize('1.5 GB'), 1.5e9);
  assert.throws(() => parseSize('lots', 'max-memory'), /max-memory[\s\S]*invalid size/);
});

test('ptq eval --max-memory: a budget below the float32 weights streams, with the numbers of the in-memory run', {
  skip,
}, async () => {
  const q = path.join(work, 'tiny-rtn3-cli');
  await streamQuantize(TINY, q, {
    method: 'rtn',
    grid: { bits: 3, symmetric: false, granularity: 'group', groupSize: 32, scaleDtype: 'f16' },
  });
  const run = (...extra: string[]) => {
    const r = runCli([
      'eval',
      q,
      '--ref',
      TINY,
      '--text',
      SLICE,
      '--ctx',
      '256',
      '--max-tokens',
      '3000',
      '--json',
      ...extra,
    ]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout);
  };
  const whole = run();
  const streamedRun = run('--max-memory', '1MiB');
  assert.equal(whole.execution.path, 'in-memory');
  assert.equal(streamedRun.execution.path, 'streamed');
  assert.equal(streamedRun.execution.memoryBudget, 2 ** 20);
  for (const key of ['perplexity', 'kld', 'top1Agreement', 'referencePerplexity', 'bitsPerWeight', 'bytes'])
    assert.equal(streamedRun[key], whole[key], key);
  const refused = runCli(['eval', q, '--text', SLICE, '--max-memory', 'lots']);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /max-memory.*invalid size/);
});

test('a 3e38 weight, streamed: the same refusal as in memory, naming the overflow and the largest weight', {
  skip,
}, () => {
  const dir = path.join(work, 'big-weight');
  mkdirSync(dir);
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'])
    copyFileSync(path.join(TINY, f), path.join(dir, f));
  const bytes = readFileSync(path.join(TINY, 'model.safetensors'));
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8'));
  bytes.writeFloatLE(
    3e38,
    8 + headerLength + header['model.layers.0.self_attn.q_proj.weight'].data_offsets[0],
  );
  writeFileSync(path.join(dir, 'model.safetensors'), bytes);
  const args = ['eval', dir, '--text', SLICE, '--max-tokens', '1100'];
  const whole = runCli(args);
  const streamedRun = runCli([...args, '--max-memory', '1MiB']);
  assert.equal(whole.code, 1);
  assert.match(
    whole.stderr,
    /NumericError: 'window 1 of 2 .+ model logits are not finite.+first non-finite activations enter model\.layers\.0\.self_attn\.o_proj; largest \|weight\| 3\.00e\+38 in model\.layers\.0\.self_attn\.q_proj\.weight/,
  );
  assert.equal(streamedRun.code, 1);
  assert.equal(streamedRun.stderr, whole.stderr);
});
