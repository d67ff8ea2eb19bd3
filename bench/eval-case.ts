/**
 * Eval throughput, ptqkit against llama.cpp, on the same synthetic Llama-shaped weights:
 * perplexity over non-overlapping windows of CTX random tokens (every window from an empty
 * cache, 511 scored predictions each), THREADS threads on each side.
 *
 *   eval-case.ts prepare <shape> <type>   write the GGUF (f32, q8_0, q4_0) and the tokens, once
 *   eval-case.ts ptqkit <shape>           ptqkit's perplexity (onnxruntime engine); one JSON line
 *
 * llama.cpp's side is bench/llama-perplexity.c, run by run.ts as its own process. Files live
 * in synthetic.ts's CACHE: a 1B-parameter F32 GGUF is 4.4 GB.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { OrtEngine } from '../src/compute/ort-engine.js';
import { exportGguf } from '../src/export/gguf.js';
import { Llama2cTokenizer } from '../src/io/llama2c-tokenizer.js';
import { LLAMA } from '../src/model/architecture.js';
import { Decoder } from '../src/model/decoder.js';
import type { LoadedModel } from '../src/model/load.js';
import { evaluate } from '../src/model/perplexity.js';
import { mulberry32 } from '../src/random.js';
import { CACHE, type ShapeName, syntheticConfig, syntheticWeights } from './synthetic.js';

export const CTX = 512;
export const THREADS = 2;
/** Windows per shape: enough tokens for a stable rate, few enough for the default run. */
export const WINDOWS: Record<ShapeName, number> = { '100M': 6, '500M': 2, '1B': 2 };
/** The Llama-2 SentencePiece vocabulary (32,000 tokens): llama.cpp needs one in the GGUF. */
const TOKENIZER = path.join(
  path.dirname(fileURLToPath(import.meta.url)),
  '..',
  '..',
  'shared',
  'assets',
  'tokenizers',
  'llama2-32k',
  'tokenizer.bin',
);

export const ggufPath = (shape: ShapeName, type: string) =>
  path.join(CACHE, `synthetic-${shape}-${type}.gguf`);
export const tokensPath = (shape: ShapeName) => path.join(CACHE, `tokens-${shape}-${CTX}.i32`);

/** WINDOWS[shape] windows of CTX token ids, uniform over the vocabulary (seeded). */
function randomTokens(shape: ShapeName): Int32Array {
  const rand = mulberry32(11);
  const V = syntheticConfig(shape).vocabSize;
  return Int32Array.from({ length: WINDOWS[shape] * CTX }, () => Math.floor(rand() * V));
}

async function prepare(shape: ShapeName, type: string): Promise<void> {
  mkdirSync(CACHE, { recursive: true });
  const tokens = tokensPath(shape);
  if (!existsSync(tokens)) writeFileSync(tokens, randomTokens(shape));
  const file = ggufPath(shape, type);
  if (existsSync(file)) return;
  const config = syntheticConfig(shape);
  const model: LoadedModel = {
    path: `synthetic-${shape}`,
    source: 'huggingface',
    arch: LLAMA,
    config,
    hfConfig: {},
    weights: syntheticWeights(config),
    tokenizer: await Llama2cTokenizer.load(TOKENIZER, config.vocabSize),
    tokenizerFiles: [TOKENIZER],
  };
  await exportGguf(model, `${file}.tmp`, { type });
  renameSync(`${file}.tmp`, file);
}

async function ptqkit(shape: ShapeName): Promise<void> {
  const config = syntheticConfig(shape);
  const tokens = [...new Int32Array(readFileSync(tokensPath(shape)).buffer.slice(0))];
  const decoder = new Decoder(config, syntheticWeights(config), new OrtEngine(THREADS));
  const cpu0 = process.cpuUsage();
  const r = await evaluate(decoder, tokens, { protocol: { ctx: CTX, stride: CTX, dropPartial: true } });
  const cpu = process.cpuUsage(cpu0);
  console.log(
    JSON.stringify({
      windows: r.windows,
      predictions: r.predictions,
      nll: r.nll,
      seconds: r.seconds,
      cpuSeconds: (cpu.user + cpu.system) / 1e6,
      maxRssKiB: process.resourceUsage().maxRSS,
    }),
  );
}

// Run as a script (eval-run.ts imports the constants above).
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [mode, shape, type] = process.argv.slice(2) as [string, ShapeName, string];
  if (mode === 'prepare') await prepare(shape, type);
  else if (mode === 'ptqkit') await ptqkit(shape);
  else throw new Error(`eval-case.ts: unknown mode ${mode}`);
}
