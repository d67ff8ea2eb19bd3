/**
 * ONNX export proven in the runtimes that load it: onnxruntime-node directly, and
 * transformers.js (`AutoModelForCausalLM`, `pipeline('text-generation')`, offline), on the real
 * TinyStories-656K model at fp32 and as 4-bit MatMulNBits built from ptq RTN checkpoints
 * (symmetric and asymmetric int4 g32: the method's own codes, scales and zeros).
 *
 * Every comparison is against ptqkit's own forward (src/model/decoder.ts) of the same weights
 * (a quantized checkpoint's dequantized weights): logits, greedy tokens, perplexity.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { AutoModelForCausalLM, AutoTokenizer, env, pipeline, Tensor } from '@huggingface/transformers';
import * as ort from 'onnxruntime-node';
import { exportOnnx, type OnnxDtype, type OnnxExportReport, onnxFileName } from '../../src/export/onnx.js';
import { OnnxCausalLM } from '../../src/export/onnx-session.js';
import type { GridSpec } from '../../src/formats/grid.js';
import { writePtqCheckpoint } from '../../src/io/ptq-checkpoint.js';
import { Decoder } from '../../src/model/decoder.js';
import { greedyGenerate } from '../../src/model/generate.js';
import { type LoadedModel, loadModel } from '../../src/model/load.js';
import { evaluate } from '../../src/model/perplexity.js';
import { sampleCalibrationWindows } from '../../src/quant/calibrate.js';
import { getMethod, isCalibrated } from '../../src/quant/methods/index.js';
import { type MethodName, quantizeModel } from '../../src/quant/quantize-model.js';
import { runCli } from '../cli/run-cli.js';
import { ASSETS, assetsPresent, maxAbsDiff, REPO } from '../helpers.js';

/**
 * fp32 graph vs ptqkit's forward: same weights, different summation order. README: max |Δlogit|
 * 2.3e-5 measured (2.29e-5, logits up to ~20 in magnitude: ~10 float32 ulps), asserted < 5e-5:
 * about twice the measurement, for other CPUs' onnxruntime kernels (AVX2, NEON) summing in other
 * orders. A wrong operation (norm epsilon, rotary angle, softmax scale) moves logits by 1e-3+.
 */
const FP32_LOGIT_TOL = 5e-5;
/**
 * 4-bit graph vs ptqkit's forward of the dequantized weights: MatMulNBits multiplies by exactly
 * those weights in fp32, so only summation order differs as well (same bound as fp32).
 */
const Q4_LOGIT_TOL = 5e-5;
/** Incremental decoding through the KV cache vs one full pass of the same tokens. */
const KV_CACHE_TOL = 1e-4;
/**
 * Perplexity from the ONNX model's logits vs ptqkit's (relative). README: 6.2e-8 measured
 * (fp32; 3.3e-8 and 9.1e-9 for q4 sym/asym), asserted < 2e-7: a 3x margin, for the same reason
 * as the logits; one token's log-prob off by 1e-3 over these 4,096 tokens already moves it 2.4e-7.
 */
const PPL_REL_TOL = 2e-7;
/** README's sizes, in MB (10^6 bytes) to its two decimals: the symmetric model_q4.onnx and the fp32 export. */
const README_MB = { q4: '1.32', fp32: '2.64' };

const BUNDLED = path.join(REPO, 'models/tinystories-656k');
const SOURCE = assetsPresent ? path.join(ASSETS, 'models/tinystories-656k') : BUNDLED;
const TEXT = assetsPresent
  ? path.join(ASSETS, 'text/tinystories-valid-800k.txt')
  : path.join(REPO, 'data/tinystories-valid-slice.txt');
const PPL_TOKENS = 4096;
const PROMPT = 'Once upon a time';
/** One intra-op thread per session: the tiny model gains nothing from a pool on a shared 2-core machine. */
const SESSION = { local_files_only: true, session_options: { intraOpNumThreads: 1, interOpNumThreads: 1 } };
const NEW_TOKENS = 20;

// Offline: transformers.js reads only the exported directory and never the Hub.
env.allowRemoteModels = false;
env.allowLocalModels = true;

const tmp = await mkdtemp(path.join(os.tmpdir(), 'ptq-onnx-'));
after(() => rm(tmp, { recursive: true, force: true }));

interface Variant {
  label: string;
  dir: string;
  dtype: OnnxDtype;
  /** The model whose float forward the ONNX graph must reproduce. */
  reference: LoadedModel;
  report: OnnxExportReport;
}

const fp = await loadModel(SOURCE);
const text = await readFile(TEXT, 'utf8');
// ~4 characters per token: the first 60K characters hold the evaluated tokens and the calibration windows.
const textTokens = fp.tokenizer.encode(text.slice(0, 60_000));
const tokens = textTokens.slice(0, PPL_TOKENS);
const window = Int32Array.from(tokens.slice(0, 256));

async function quantizedCheckpoint(
  name: string,
  grid: GridSpec,
  method: MethodName = 'rtn',
): Promise<LoadedModel> {
  // GPTQ with act-order: a small calibration set from tokens past the evaluated ones (disjoint).
  const calibration = isCalibrated(getMethod(method))
    ? {
        windows: sampleCalibrationWindows(textTokens.slice(PPL_TOKENS), {
          nsamples: 8,
          seqlen: 128,
          seed: 0,
        }),
        seqlen: 128,
        description: {},
      }
    : undefined;
  const q = await quantizeModel(fp.config, fp.weights, {
    method,
    grid,
    calibration,
    methodOptions: { actOrder: true },
  });
  const dir = path.join(tmp, name);
  await writePtqCheckpoint(dir, { ...fp, weights: q.weights }, q.quantization);
  return loadModel(dir);
}

const grid = (symmetric: boolean, groupSize = 32): GridSpec => ({
  bits: 4,
  symmetric,
  granularity: 'group',
  groupSize,
  scaleDtype: 'f16',
});
const sym = await quantizedCheckpoint('rtn-int4-g32-sym', grid(true));
const asym = await quantizedCheckpoint('rtn-int4-g32-asym', grid(false));

const fpDir = path.join(tmp, 'onnx-fp');
const symDir = path.join(tmp, 'onnx-sym');
const asymDir = path.join(tmp, 'onnx-asym');
// fp32 with every weight in model.onnx_data (the external-data path), the quantized ones inline.
const fpReport = await exportOnnx(fp, fpDir, { dtypes: ['fp32'], externalData: true });
const symReport = await exportOnnx(sym, symDir, { dtypes: ['q4', 'fp32'] });
const asymReport = await exportOnnx(asym, asymDir);

const VARIANTS: Variant[] = [
  { label: 'fp32', dir: fpDir, dtype: 'fp32', reference: fp, report: fpReport },
  { label: 'q4 (RTN int4 g32 sym codes)', dir: symDir, dtype: 'q4', reference: sym, report: symReport },
  { label: 'fp32 of the sym checkpoint', dir: symDir, dtype: 'fp32', reference: sym, report: symReport },
  { label: 'q4 (RTN int4 g32 asym codes)', dir: asymDir, dtype: 'q4', reference: asym, report: asymReport },
];
const tolerance = (v: Variant) => (v.dtype === 'fp32' ? FP32_LOGIT_TOL : Q4_LOGIT_TOL);
const ours = (m: LoadedModel) => new Decoder(m.config, m.weights);

test('directory layout: transformers.js file names, config, tokenizer, q4 size', async () => {
  assert.deepEqual(
    fpReport.files.map((f) => f.path),
    [
      '.ptq-output.json',
      'config.json',
      'generation_config.json',
      'onnx/model.onnx',
      'onnx/model.onnx_data',
      'special_tokens_map.json',
      'tokenizer.json',
      'tokenizer_config.json',
    ],
  );
  assert.deepEqual(
    asymReport.files.map((f) => f.path).filter((f) => f.startsWith('onnx/')),
    ['onnx/model_q4.onnx'],
  );
  const config = JSON.parse(await readFile(path.join(symDir, 'config.json'), 'utf8'));
  assert.equal(config.model_type, 'llama');
  assert.equal(config.quantization_config, undefined);
  assert.deepEqual(config['transformers.js_config'], { dtype: 'q4' });
  const fpConfig = JSON.parse(await readFile(path.join(fpDir, 'config.json'), 'utf8'));
  assert.deepEqual(fpConfig['transformers.js_config'], {
    dtype: 'fp32',
    use_external_data_format: { 'model.onnx': 1 },
  });

  for (const [label, report] of [
    ['sym', symReport],
    ['asym', asymReport],
  ] as const) {
    const q4 = report.variants.find((v) => v.dtype === 'q4')!;
    assert.ok(
      q4.linears.every((l) => l.source === 'codes' && l.storage.startsWith('matmulnbits b4 bs32')),
      JSON.stringify(q4.linears[0]),
    );
    const fp32Bytes = fpReport.variants[0]!.bytes;
    console.log(
      `  ${label} q4: onnx/${q4.file} ${q4.bytes} bytes (fp32 ${fp32Bytes}), quantized linears ` +
        `${q4.quantizedBitsPerWeight!.toFixed(3)} bits/weight over ${q4.quantizedWeights} weights (${q4.linears[0]!.storage})`,
    );
    // 4-bit codes + one fp32 scale per 32 (+ a 4-bit zero per 32 when asymmetric).
    assert.equal(q4.quantizedBitsPerWeight, label === 'sym' ? 5 : 5.125);
  }
  // README's figure is the symmetric file's (5.0 bits/weight); the asymmetric one is 1.33 MB.
  const q4Bytes = symReport.variants.find((v) => v.dtype === 'q4')!.bytes;
  assert.equal((q4Bytes / 1e6).toFixed(2), README_MB.q4, `q4 ${q4Bytes} bytes`);
  const fp32Bytes = fpReport.variants[0]!.bytes;
  assert.equal((fp32Bytes / 1e6).toFixed(2), README_MB.fp32, `fp32 ${fp32Bytes} bytes`);
});

test('the bundled copy exports to the same bytes', {
  skip: !assetsPresent || SOURCE === BUNDLED,
}, async () => {
  const dir = path.join(tmp, 'onnx-bundled');
  await exportOnnx(await loadModel(BUNDLED), dir, { dtypes: ['fp32'], externalData: true });
  for (const f of ['onnx/model.onnx', 'onnx/model.onnx_data']) {
    assert.ok((await readFile(path.join(dir, f))).equals(await readFile(path.join(fpDir, f))), f);
  }
});

for (const v of VARIANTS) {
  test(`onnxruntime-node, ${v.label}: logits, KV cache, left padding`, async () => {
    const lm = await OnnxCausalLM.load(v.dir, v.dtype, 1);
    const T = window.length;
    const V = lm.config.vocabSize;
    const expected = await ours(v.reference).forward(window, 1, T);
    const full = await lm.forward(window, 1, T);
    const diff = maxAbsDiff(full, expected);
    console.log(
      `  ${T}-token window: max |logit diff| vs ptqkit forward = ${diff.toExponential(2)} (tol ${tolerance(v)})`,
    );
    assert.ok(diff < tolerance(v));

    // The same tokens in two steps through the cache: 100, then 156 with past_sequence_length 100.
    const first = await lm.step(window.subarray(0, 100), 1, 100);
    const second = await lm.step(window.subarray(100), 1, T - 100, first.cache);
    const cached = new Float32Array(T * V);
    cached.set(first.logits);
    cached.set(second.logits, 100 * V);
    const cacheDiff = maxAbsDiff(cached, full);
    console.log(`  cached 100 + 156 vs one pass: max diff ${cacheDiff.toExponential(2)}`);
    assert.ok(cacheDiff < KV_CACHE_TOL);

    // A left-padded batch (transformers.js pads Llama prompts on the left): the padded row equals its unpadded run.
    const L = 24;
    const pad = 5;
    const row0 = [...new Array(pad).fill(0), ...window.subarray(0, L - pad)];
    const ids = BigInt64Array.from([...row0, ...window.subarray(0, L)].map(BigInt));
    const mask = BigInt64Array.from([...row0.map((_, i) => (i < pad ? 0n : 1n)), ...new Array(L).fill(1n)]);
    // transformers.js' position_ids: cumsum(mask) − 1, padding positions filled with 1.
    const positions = BigInt64Array.from(
      [...row0.map((_, i) => (i < pad ? 1 : i - pad)), ...Array.from({ length: L }, (_, i) => i)].map(BigInt),
    );
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', ids, [2, L]),
      attention_mask: new ort.Tensor('int64', mask, [2, L]),
      position_ids: new ort.Tensor('int64', positions, [2, L]),
    };
    for (let i = 0; i < lm.config.numLayers; i++) {
      for (const kv of ['key', 'value']) {
        feeds[`past_key_values.${i}.${kv}`] = new ort.Tensor('float32', new Float32Array(0), [
          2,
          lm.config.numKvHeads,
          0,
          lm.config.headDim,
        ]);
      }
    }
    const batched = (await lm.session.run(feeds)).logits!.data as Float32Array;
    const single = await lm.forward(window.subarray(0, L - pad), 1, L - pad);
    const padDiff = maxAbsDiff(batched.subarray(pad * V, L * V), single);
    const rowDiff = maxAbsDiff(batched.subarray(L * V), full.subarray(0, L * V));
    console.log(
      `  left-padded row vs unpadded run: ${padDiff.toExponential(2)}; full row: ${rowDiff.toExponential(2)}`,
    );
    assert.ok(padDiff < KV_CACHE_TOL && rowDiff < KV_CACHE_TOL);
  });
}

test('transformers.js runs on the onnxruntime-node of this package', () => {
  const here = createRequire(import.meta.url).resolve('onnxruntime-node');
  const theirs = createRequire(
    path.join(REPO, 'node_modules/@huggingface/transformers/package.json'),
  ).resolve('onnxruntime-node');
  assert.equal(theirs, here);
});

// The fp32 graph of the sym checkpoint differs from the fp32 model's only in weights: onnxruntime checks it.
for (const v of VARIANTS.filter((x) => x.label !== 'fp32 of the sym checkpoint')) {
  test(`transformers.js, ${v.label}: logits, greedy generation with KV cache, pipeline`, async () => {
    const model = await AutoModelForCausalLM.from_pretrained(v.dir, { ...SESSION, dtype: v.dtype });
    const session = (model as unknown as { sessions: { model: ort.InferenceSession } }).sessions.model;
    assert.ok(
      // onnxruntime-common types InferenceSession as an interface plus a factory object; the value
      // is the session class, which is what instanceof needs.
      session instanceof (ort.InferenceSession as unknown as new () => ort.InferenceSession),
      'transformers.js session comes from the same onnxruntime-node module',
    );

    // (b) logits of the whole window through transformers.js' own forward (position_ids from the mask).
    const T = window.length;
    const input_ids = new Tensor('int64', BigInt64Array.from(Array.from(window, BigInt)), [1, T]);
    const attention_mask = new Tensor('int64', new BigInt64Array(T).fill(1n), [1, T]);
    const out = (await model({ input_ids, attention_mask })) as { logits: Tensor };
    const expected = await ours(v.reference).forward(window, 1, T);
    const diff = maxAbsDiff(out.logits.data as Float32Array, expected);
    console.log(`  logits vs ptqkit forward: max diff ${diff.toExponential(2)} (tol ${tolerance(v)})`);
    assert.ok(diff < tolerance(v));

    // Greedy generation: token for token equal to ptqkit's greedy decoding, one token per step through the cache.
    const tokenizer = await AutoTokenizer.from_pretrained(v.dir, { local_files_only: true });
    const prompt = v.reference.tokenizer.encode(PROMPT);
    const inputs = tokenizer(PROMPT);
    assert.deepEqual((inputs.input_ids as Tensor).tolist()[0].map(Number), prompt);
    const calls: { seq: number; past: number }[] = [];
    const run = session.run.bind(session);
    session.run = ((feeds: Record<string, ort.Tensor>, ...rest: unknown[]) => {
      calls.push({ seq: feeds.input_ids!.dims[1]!, past: feeds['past_key_values.0.key']!.dims[2]! });
      return (run as (...a: unknown[]) => ReturnType<typeof run>)(feeds, ...rest);
    }) as typeof session.run;
    const generated = (await model.generate({
      ...inputs,
      max_new_tokens: NEW_TOKENS,
      do_sample: false,
    })) as Tensor;
    session.run = run;
    const theirs = generated.tolist()[0].map(Number);
    const mine = await greedyGenerate(ours(v.reference), prompt, NEW_TOKENS, v.reference.config.eosTokenId);
    console.log(`  ${JSON.stringify(v.reference.tokenizer.decode(mine))}`);
    assert.deepEqual(theirs, mine);
    // The prompt once with an empty cache, then every new token alone after all earlier ones.
    const steps = mine.length - prompt.length;
    assert.deepEqual(calls, [
      { seq: prompt.length, past: 0 },
      ...Array.from({ length: steps - 1 }, (_, i) => ({ seq: 1, past: prompt.length + i })),
    ]);

    const generator = await pipeline('text-generation', v.dir, { ...SESSION, dtype: v.dtype });
    const [result] = (await generator(PROMPT, { max_new_tokens: NEW_TOKENS, do_sample: false })) as {
      generated_text: string;
    }[];
    assert.equal(result!.generated_text, tokenizer.decode(mine, { skip_special_tokens: true }));

    // (c) perplexity of the first tokens of the text from transformers.js' logits.
    const viaTransformers = {
      config: v.reference.config,
      forward: async (ids: Int32Array, B: number, T: number) => {
        const r = (await model({
          input_ids: new Tensor('int64', BigInt64Array.from(Array.from(ids, BigInt)), [B, T]),
          attention_mask: new Tensor('int64', new BigInt64Array(B * T).fill(1n), [B, T]),
        })) as { logits: Tensor };
        return r.logits.data as Float32Array;
      },
    } as unknown as Decoder;
    const protocol = { ctx: 512, stride: 512, dropPartial: true };
    const theirsPpl = (await evaluate(viaTransformers, tokens, { protocol })).perplexity;
    const ortPpl = (
      await evaluate((await OnnxCausalLM.load(v.dir, v.dtype, 1)) as unknown as Decoder, tokens, { protocol })
    ).perplexity;
    const minePpl = (await evaluate(ours(v.reference), tokens, { protocol })).perplexity;
    console.log(
      `  perplexity, ${tokens.length} tokens, ctx 512: ptqkit ${minePpl.toFixed(4)}, onnxruntime ${ortPpl.toFixed(4)} ` +
        `(rel. ${(ortPpl / minePpl - 1).toExponential(1)}), transformers.js ${theirsPpl.toFixed(4)} (rel. ${(theirsPpl / minePpl - 1).toExponential(1)})`,
    );
    assert.ok(Math.abs(ortPpl / minePpl - 1) < PPL_REL_TOL);
    assert.ok(Math.abs(theirsPpl / minePpl - 1) < PPL_REL_TOL);
  });
}

test('llama2.c stories260K: converted tokenizer, greedy decoding through the ONNX KV cache matches llama2.c', {
  skip: !assetsPresent,
}, async () => {
  const m = await loadModel(path.join(ASSETS, 'models/stories260k/stories260K.bin'));
  const dir = path.join(tmp, 'onnx-260k');
  const report = await exportOnnx(m, dir, { dtypes: ['fp32', 'q4'] });
  assert.equal(report.tokenizer, 'converted from tokenizer.bin');
  // FFN width 172: 32 does not divide it, so down_proj is quantized per channel in one 256-wide block.
  const down = report.variants[1]!.linears.find((l) => l.name.endsWith('mlp.down_proj.weight'))!;
  assert.equal(down.storage, 'matmulnbits b4 bs256');
  const mine = await greedyGenerate(ours(m), [m.config.bosTokenId!], 40);
  const lm = await OnnxCausalLM.load(dir, 'fp32', 1);
  const theirs = await lm.greedy([m.config.bosTokenId!], 40);
  console.log(`  ${JSON.stringify(m.tokenizer.decode(theirs))}`);
  assert.deepEqual(theirs, mine);
  assert.ok(m.tokenizer.decode(theirs).startsWith('Once upon a time, there was a little girl named Lily.'));

  // transformers.js, text in and text out through the converted tokenizer.json.
  const generator = await pipeline('text-generation', dir, { ...SESSION, dtype: 'fp32' });
  const prompt = 'Once upon a time, there was a little dog';
  const ids = await greedyGenerate(ours(m), m.tokenizer.encode(prompt), NEW_TOKENS, m.config.eosTokenId);
  assert.deepEqual(
    (generator.tokenizer(prompt).input_ids as Tensor).tolist()[0].map(Number),
    m.tokenizer.encode(prompt),
  );
  const [result] = (await generator(prompt, { max_new_tokens: NEW_TOKENS, do_sample: false })) as {
    generated_text: string;
  }[];
  console.log(`  ${JSON.stringify(result!.generated_text)}`);
  assert.equal(result!.generated_text, m.tokenizer.decode(ids));
});

test('other grids: wider containers, announced re-quantization and float fallback, GPTQ act-order', async () => {
  const window64 = window.subarray(0, 64);
  const check = async (m: LoadedModel, dir: string, dtype: OnnxDtype) => {
    const diff = maxAbsDiff(
      await (await OnnxCausalLM.load(dir, dtype, 1)).forward(window64, 1, 64),
      await ours(m).forward(window64, 1, 64),
    );
    assert.ok(diff < Q4_LOGIT_TOL, `${dtype}: ${diff}`);
    return diff;
  };
  // int4 codes in the 8-bit container (explicit zero points 8), exact; in 2 bits they do not fit: RTN int2, announced.
  const wide = await exportOnnx(sym, path.join(tmp, 'onnx-q8-q2'), { dtypes: ['q8', 'q2'] });
  const [q8, q2] = wide.variants;
  assert.ok(
    q8!.linears.every((l) => l.source === 'codes' && l.storage === 'matmulnbits b8 bs32 zp'),
    JSON.stringify(q8!.linears[0]),
  );
  assert.equal(q8!.file, 'model_quantized.onnx');
  console.log(
    `  q8 container of int4 codes: max logit diff ${(await check(sym, path.join(tmp, 'onnx-q8-q2'), 'q8')).toExponential(2)}`,
  );
  assert.ok(
    q2!.linears.every((l) => l.source === 'rtn' && l.storage === 'matmulnbits b2 bs32'),
    JSON.stringify(q2!.linears[0]),
  );
  assert.equal(wide.warnings.length, q2!.linears.length);
  assert.match(wide.warnings[0]!, /int4-g32-sym does not fit q2: re-quantized with RTN/);

  // Groups of 8 columns: no MatMulNBits block size (a power of two >= 16) tiles them, so the layers stay float.
  const g8 = await quantizedCheckpoint('rtn-int4-g8', grid(true, 8));
  const g8Report = await exportOnnx(g8, path.join(tmp, 'onnx-g8'));
  assert.ok(
    g8Report.variants[0]!.linears.every((l) => l.storage === 'float'),
    JSON.stringify(g8Report.variants[0]!.linears[0]),
  );
  assert.match(
    g8Report.warnings[0]!,
    /int4-g8-sym: group size 8 is not a multiple of a power of two >= 16; kept as float/,
  );
  console.log(
    `  int4 g8 kept float: max logit diff ${(await check(g8, path.join(tmp, 'onnx-g8'), 'q4')).toExponential(2)}`,
  );

  // GPTQ act-order: g_idx becomes a Gather of A's columns in front of each MatMulNBits.
  const ao = await quantizedCheckpoint('gptq-act-order', grid(false), 'gptq');
  const aoReport = await exportOnnx(ao, path.join(tmp, 'onnx-act-order'));
  assert.ok(
    aoReport.variants[0]!.linears.some((l) => l.storage.includes('act-order permutation')),
    JSON.stringify(aoReport.variants[0]!.linears[0]),
  );
  console.log(
    `  GPTQ act-order q4: max logit diff ${(await check(ao, path.join(tmp, 'onnx-act-order'), 'q4')).toExponential(2)}`,
  );
});

test('HQQ float zero points and SINQ column scales stay exact in MatMulNBits', async () => {
  for (const [method, storage] of [
    ['hqq', 'matmulnbits b4 bs32 zp'],
    ['sinq', 'matmulnbits b4 bs32 +column scales'],
  ] as const) {
    const m = await quantizedCheckpoint(`${method}-int4-g32`, grid(method === 'sinq'), method);
    const dir = path.join(tmp, `onnx-${method}`);
    const report = await exportOnnx(m, dir);
    assert.ok(
      report.variants[0]!.linears.every(
        (l) => l.source === 'codes' && l.storage.startsWith('matmulnbits b4 bs32'),
      ),
      JSON.stringify(report.variants[0]!.linears),
    );
    // SINQ leaves well-balanced layers without column scales; HQQ zeros are floats everywhere.
    const withStorage = report.variants[0]!.linears.filter((l) => l.storage === storage).length;
    assert.ok(method === 'hqq' ? withStorage === report.variants[0]!.linears.length : withStorage > 0);
    const lm = await OnnxCausalLM.load(dir, 'q4', 1);
    const diff = maxAbsDiff(
      await lm.forward(window, 1, window.length),
      await ours(m).forward(window, 1, window.length),
    );
    console.log(
      `  ${method}: ${withStorage} layers ${storage}, ${report.variants[0]!.quantizedBitsPerWeight!.toFixed(3)} bits/weight, max logit diff ${diff.toExponential(2)}`,
    );
    assert.ok(diff < Q4_LOGIT_TOL);
  }
});

test('ptq export --format onnx writes the directory and reports sizes', async () => {
  const dir = path.join(tmp, 'cli');
  const r = runCli([
    'export',
    path.join(tmp, 'rtn-int4-g32-sym'),
    '--format',
    'onnx',
    '--dtype',
    'q4',
    '-o',
    dir,
    '--json',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout) as OnnxExportReport;
  assert.deepEqual(
    report.variants.map((v) => v.file),
    [onnxFileName('q4')],
  );
  assert.ok(
    (await readFile(path.join(dir, 'onnx/model_q4.onnx'))).equals(
      await readFile(path.join(symDir, 'onnx/model_q4.onnx')),
    ),
  );
  const bad = runCli(['export', BUNDLED, '--format', 'onnx', '--dtype', 'q3', '-o', path.join(tmp, 'bad')]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /unknown ONNX dtype; expected fp32, q8, q4, q2, fp16, q4f16, got q3/);
});
