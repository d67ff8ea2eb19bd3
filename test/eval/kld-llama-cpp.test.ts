/**
 * ptqkit's whole-model KLD, top-1 agreement and perplexities against llama.cpp's own
 * `llama-perplexity --kl-divergence` (built from the source node-llama-cpp bundles,
 * test/export/llama-cpp.ts) on the same GGUF files, text, context and windows.
 *
 * TinyStories-656K exported by ptqkit as an F32 GGUF (the reference P) and RTN int4 g32 weights,
 * dequantized, exported as F32 too (the model Q): llama.cpp then computes both in float32 as
 * ptqkit does. (A Q4_0 file would not do: llama.cpp's Q4_0 matmul quantizes the activations to
 * Q8_0, and the two KLDs would part for a reason other than the KL formula.) llama.cpp runs with
 * an F32 KV cache and no flash attention, so its attention stays in float32 too.
 *
 * llama-perplexity cuts the tokens into chunks of -c 512, writes BOS over each chunk's first
 * token and scores the second half of each: `ptq eval --llama-cpp-windows` (llamaCppProtocol).
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { evalCommand } from '../../src/cli/commands.js';
import { exportGguf } from '../../src/export/gguf.js';
import { Decoder } from '../../src/model/decoder.js';
import { loadModel } from '../../src/model/load.js';
import { type EvalResult, evaluate, llamaCppProtocol } from '../../src/model/perplexity.js';
import { quantizeModel } from '../../src/quant/quantize-model.js';
import { runCliAsync } from '../cli/run-cli.js';
import { llamaPerplexity } from '../export/llama-cpp.js';
import { ASSETS, assetsPresent, REPO, skipOrFail, tempDir } from '../helpers.js';

/** llama-perplexity's default -c; also TinyStories-656K's trained context. */
const CTX = 512;
/**
 * Mean KLD, relative. Both sides run float32 forwards of the same weights (they differ by up to
 * 1e-4 in a log-probability: summation order, rope's sin/cos; test/export/gguf.test.ts), and
 * llama.cpp stores the reference's log-probabilities in 16-bit steps of at most 16/65535 nats and
 * drops entries below e^-16 (perplexity.cpp log_softmax): each moves a token's KLD by ~1e-4·|Δlog p|,
 * with either sign. Measured: 4.7e-5 (0.0714157 vs 0.071419, printed to 6 decimals). The errors
 * the test must catch are 10 times the tolerance or more: KL(Q‖P) is 3.2e-2 away, windows without
 * BOS at each chunk's start 1.3e-2.
 */
const KLD_REL_TOL = 1e-3;
/** Perplexities, relative: measured 1e-8 (the model, float logits on both sides) and 7.6e-7 (the reference, read back from 16-bit steps). */
const PPL_REL_TOL = 1e-4;
/**
 * Top-1 agreement, in predictions: a near-tie between the reference's two best tokens (within the
 * 2.4e-4 nats of llama.cpp's 16-bit steps, or the 1e-4 of the forwards) can fall either way.
 * Measured: 1 of 3825.
 */
const TOP1_TOL = 3;

/** The eval text without CR: the 656K vocabulary has no "\r" and no byte tokens (llama.cpp would abort). */
const text = () =>
  readFileSync(path.join(ASSETS, 'text/tinystories-valid-slice.txt'), 'utf8').replaceAll('\r', '');

/** A number llama-perplexity printed after `label`, or an error quoting its output. */
function printed(output: string, label: RegExp): number {
  const m = new RegExp(`${label.source}\\s*[:=]\\s*([0-9.]+)`).exec(output);
  if (!m) throw new Error(`llama-perplexity printed no ${label.source}:\n${output.slice(-3000)}`);
  return Number(m[1]);
}

/**
 * The tokens llama.cpp evaluated, from its --kl-divergence-base file (perplexity.cpp: "_logits_",
 * u32 n_ctx, i32 n_vocab, i32 n_chunk, i32 tokens[n_chunk·n_ctx], then the log-probabilities).
 */
function baseTokens(file: string): { nCtx: number; nVocab: number; nChunk: number; tokens: number[] } {
  const b = readFileSync(file);
  assert.equal(b.toString('latin1', 0, 8), '_logits_', `${file}: magic`);
  const [nCtx, nVocab, nChunk] = [b.readUInt32LE(8), b.readInt32LE(12), b.readInt32LE(16)];
  const tokens = Array.from({ length: nCtx * nChunk }, (_, i) => b.readInt32LE(20 + 4 * i));
  return { nCtx, nVocab, nChunk, tokens };
}

/** `ptq eval <model> --ref <ref> --text <file> --ctx 512 --llama-cpp-windows --json`. */
async function ptqEval(model: string, ref: string, textFile: string): Promise<EvalResult> {
  const lines: string[] = [];
  await evalCommand(
    model,
    { text: textFile, ctx: CTX, llamaCppWindows: true, ref },
    { json: true, log: (l) => lines.push(l) },
  );
  return JSON.parse(lines.join('\n')) as EvalResult;
}

const rel = (a: number, b: number) => Math.abs(a / b - 1);

test("KLD, top-1 and perplexities of ptq eval --llama-cpp-windows are llama-perplexity --kl-divergence's", async (t) => {
  if (!assetsPresent) return t.skip('shared assets not present');
  const tool = llamaPerplexity();
  if ('reason' in tool) return skipOrFail(t, tool.reason);
  const dir = tempDir('ptq-kld-llama-', t);
  const [textFile, refFile, qFile, baseFile] = ['text.txt', 'ref.gguf', 'q.gguf', 'base.kld'].map((f) =>
    path.join(dir, f),
  );
  writeFileSync(textFile, text());
  const model = await loadModel(path.join(ASSETS, 'models/tinystories-656k'));
  await exportGguf(model, refFile!, { type: 'f32' });
  const q = await quantizeModel(model.config, model.weights, {
    method: 'rtn',
    grid: { bits: 4, symmetric: true, granularity: 'group', groupSize: 32, scaleDtype: 'f16' },
  });
  await exportGguf({ ...model, weights: q.weights }, qFile!, { type: 'f32' });

  // llama.cpp: the reference's log-probabilities saved, then the model's KLD against them. One
  // thread: npm test runs two files on two cores, and ggml's spinning threads then took 10 s, not 1.
  const common = ['-f', textFile!, '-c', String(CTX), '-t', '1', '-ctk', 'f32', '-ctv', 'f32', '-fa', 'off'];
  const t0 = performance.now();
  const baseRun = tool.run(['-m', refFile!, ...common, '--kl-divergence-base', baseFile!]);
  const kldRun = tool.run(['-m', qFile!, ...common, '--kl-divergence-base', baseFile!, '--kl-divergence']);
  const llamaSeconds = (performance.now() - t0) / 1000;
  const llama = {
    kld: printed(kldRun, /Mean\s+KLD/),
    sameTop: printed(kldRun, /Same top p/) / 100,
    ppl: printed(kldRun, /Mean PPL\(Q\)/),
    refPpl: printed(kldRun, /Mean PPL\(base\)/),
    refPplBaseRun: printed(baseRun, /Final estimate: PPL/),
  };

  // The same tokens: llama.cpp's tokenizer on the GGUF's vocabulary and ptqkit's on the model's.
  const base = baseTokens(baseFile!);
  const ours = model.tokenizer.encode(text());
  assert.equal(base.nCtx, CTX);
  assert.equal(base.nVocab, model.config.vocabSize);
  assert.equal(base.nChunk, Math.floor(ours.length / CTX), 'llama.cpp evaluated every whole chunk');
  assert.deepEqual(
    base.tokens,
    ours.slice(0, base.tokens.length),
    'llama.cpp evaluated the tokens ptqkit does',
  );

  // ptqkit on the same two GGUF files, through the CLI's option; then with the KL direction reversed.
  const t1 = performance.now();
  const r = await ptqEval(qFile!, refFile!, textFile!);
  const ptqSeconds = (performance.now() - t1) / 1000;
  const reversed = (await ptqEval(refFile!, qFile!, textFile!)).kld!;
  // The windows without BOS at each chunk's start: what the option adds to plain second-half scoring.
  const [qModel, refModel] = [await loadModel(qFile!), await loadModel(refFile!)];
  const noBos = await evaluate(new Decoder(qModel.config, qModel.weights), ours, {
    protocol: llamaCppProtocol(CTX),
    reference: new Decoder(refModel.config, refModel.weights),
  });

  const predictions = base.nChunk * (CTX - 1 - CTX / 2);
  const llamaAgree = Math.round(llama.sameTop * predictions);
  const ourAgree = Math.round(r.top1Agreement! * r.predictions);
  console.log(
    `llama-perplexity (${llamaSeconds.toFixed(1)} s) vs ptq eval --llama-cpp-windows (${ptqSeconds.toFixed(1)} s), ${predictions} predictions:\n` +
      `  KLD ${llama.kld} vs ${r.kld!.toFixed(7)} (rel ${rel(r.kld!, llama.kld).toExponential(1)}); reversed KL(Q‖P) ${reversed.toFixed(7)} (rel ${rel(reversed, llama.kld).toExponential(1)});` +
      ` without BOS per window ${noBos.kld!.toFixed(7)} (rel ${rel(noBos.kld!, llama.kld).toExponential(1)})\n` +
      `  same top ${llamaAgree} vs ${ourAgree}; ppl ${llama.ppl} vs ${r.perplexity.toFixed(6)}; reference ppl ${llama.refPpl} (base run ${llama.refPplBaseRun}) vs ${r.referencePerplexity!.toFixed(6)}`,
  );

  assert.equal(r.predictions, predictions, 'ctx − 1 − ctx/2 predictions per chunk, as llama.cpp scores');
  assert.ok(rel(r.kld!, llama.kld) < KLD_REL_TOL, `KLD ${r.kld} vs llama.cpp ${llama.kld}`);
  // KL(Q‖P) in place of KL(P‖Q) would not pass, nor would windows that keep each chunk's first token.
  assert.ok(
    rel(reversed, llama.kld) > KLD_REL_TOL,
    `reversed KL ${reversed} is within tolerance of ${llama.kld}`,
  );
  assert.ok(rel(noBos.kld!, llama.kld) > KLD_REL_TOL, `KLD without BOS per window ${noBos.kld}`);
  assert.ok(Math.abs(ourAgree - llamaAgree) <= TOP1_TOL, `same top ${ourAgree} vs llama.cpp ${llamaAgree}`);
  assert.ok(rel(r.perplexity, llama.ppl) < PPL_REL_TOL, `perplexity ${r.perplexity} vs ${llama.ppl}`);
  assert.ok(rel(r.referencePerplexity!, llama.refPpl) < PPL_REL_TOL, `reference ${r.referencePerplexity}`);
  assert.ok(rel(r.referencePerplexity!, llama.refPplBaseRun) < PPL_REL_TOL, 'reference, base run');
});

test('--llama-cpp-windows is refused with the options it would override or the inputs it would not reach', async () => {
  const model = path.join(REPO, 'models/tinystories-656k');
  const textFile = path.join(REPO, 'data/tinystories-valid-slice.txt');
  const runs = await Promise.all(
    [
      ['eval', model, '--text', textFile, '--llama-cpp-windows', '--stride', '256'],
      ['eval', model, '--text', textFile, '--llama-cpp-windows', '--keep-partial'],
      ['eval', 'q.onnx', '--ref', 'ref.onnx', '--llama-cpp-windows'],
    ].map((args) => runCliAsync(args)),
  );
  const expected = [
    /UsageError: --stride does not combine with --llama-cpp-windows/,
    /UsageError: --keep-partial does not combine with --llama-cpp-windows/,
    /UsageError: --llama-cpp-windows is for models, not \.onnx files/,
  ];
  runs.forEach((r, i) => {
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, expected[i]!);
  });
});
