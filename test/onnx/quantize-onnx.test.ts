/**
 * Quantizing an existing ONNX model: ptqkit's own fp32 export of the real TinyStories-656K
 * Llama (src/export/onnx.ts, weights in external data) goes through the ONNX quantizer
 * (src/onnx/) to transformers.js' dtype files, and
 *  - q4 runs in onnxruntime-node and in transformers.js with `dtype: 'q4'`; its perplexity is
 *    ptqkit's own RTN W4's (int4 g32 symmetric, f16 scales, the same block linears) to 2e-7;
 *  - q4f16, fp16 and q8 (dynamic) run in onnxruntime-node, perplexities measured;
 *  - byte level: one MatMulNBits node's B / scales / zero_points, unpacked by a reader written
 *    here from the com.microsoft MatMulNBits spec (not ptqkit's bit packing), hold exactly the
 *    codes and scales ptqkit's RTN chooses for W = Bᵀ (symmetric, and asymmetric with zero points).
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { AutoModelForCausalLM, env } from '@huggingface/transformers';
import { exportOnnx } from '../../src/export/onnx.js';
import { OnnxCausalLM } from '../../src/export/onnx-session.js';
import type { GridSpec } from '../../src/formats/grid.js';
import { IntGrid } from '../../src/formats/grid.js';
import { unpackCodes } from '../../src/formats/quantized-tensor.js';
import { Decoder } from '../../src/model/decoder.js';
import { loadModel } from '../../src/model/load.js';
import { evaluate } from '../../src/model/perplexity.js';
import { dimsOf, OnnxModel, onnx } from '../../src/onnx/model-file.js';
import { quantizeOnnx } from '../../src/onnx/quantize-onnx.js';
import { quantizeWeightsToNBits } from '../../src/onnx/weight-only.js';
import { quantizeRtn } from '../../src/quant/methods/rtn.js';
import { quantizeModel } from '../../src/quant/quantize-model.js';
import { ASSETS, assetsPresent, maxAbsDiff, tempDir } from '../helpers.js';
import { assertPrinted } from '../readme-figures.js';
import { onnxPerplexity, PROTOCOL, SOURCE, TEXT, transformersDecoder } from './setup.js';

/**
 * q4's perplexity against ptqkit's RTN W4 on the same grid (relative). The file holds RTN's very
 * codes and scales (checked byte for byte below), so only float32 summation order differs.
 * README: 1.5e-8 measured on TinyStories-656K, 7.6e-8 on stories260K; asserted < 2e-7, as the
 * ONNX export's (test/export/onnx.test.ts). It was 1%, the issue's acceptance bound.
 */
const PPL_REL_TOL = 2e-7;
/**
 * README's figures (ctx 512, first tokens of tinystories-valid-800k), as printed: perplexities
 * to 4 decimals, sizes in MB (10^6 bytes) to 2. Checked by the last test, with the assets.
 */
const README = {
  tokens2048: { fp32: '36.7854', rtn: '40.3134', q4: '40.3134', fp32MB: '2.64', q4MB: '1.32' },
  tokens1024: { fp32: '36.2618', fp16: '36.2602', q4: '40.2742', q4f16: '40.2783', q8: '36.5356' },
  sizesMB: { fp16: '1.33', q4f16: '0.77', q8: '1.49' },
  stories260k: { rtn: '4.5367', q4: '4.5367' },
};
/** What the tests below measure, for README's figures. */
const measured: Record<string, number> = {};
const PPL_TOKENS = 2048;
const SESSION = { local_files_only: true, session_options: { intraOpNumThreads: 1, interOpNumThreads: 1 } };
const GRID: GridSpec = { bits: 4, symmetric: true, granularity: 'group', groupSize: 32, scaleDtype: 'f16' };

env.allowRemoteModels = false;
env.allowLocalModels = true;

const tmp = tempDir('ptq-onnxq-');
const fp = await loadModel(SOURCE);
const tokens = fp.tokenizer.encode((await readFile(TEXT, 'utf8')).slice(0, 20_000)).slice(0, PPL_TOKENS);
const fpDir = path.join(tmp, 'fp32');
await exportOnnx(fp, fpDir, { dtypes: ['fp32'], externalData: true });
const outDir = path.join(tmp, 'quantized');
// The block linears, as `ptq quantize` quantizes them: the tied embedding / LM head stay float.
const report = await quantizeOnnx(fpDir, outDir, {
  dtypes: ['q4', 'q4f16', 'fp16', 'q8'],
  blockSize: 32,
  symmetric: true,
  method: 'rtn',
  gather: false,
  exclude: [/^\/lm_head\//],
});

const ortPerplexity = (dtype: 'q4' | 'q4f16' | 'fp16' | 'q8' | 'fp32', dir = outDir, n = tokens.length) =>
  onnxPerplexity(dir, dtype, tokens.slice(0, n));
/** fp16 runs slowly on onnxruntime's CPU kernels: the float16 and q8 files are scored on fewer tokens. */
const SHORT_TOKENS = 1024;

test('q4 of the fp32 export: onnxruntime and transformers.js perplexity equal to ptqkit RTN W4 (2e-7)', async () => {
  const q4 = report.graphs.find((g) => g.dtype === 'q4')!;
  assert.equal(q4.file, path.join('onnx', 'model_q4.onnx'));
  // 2 layers × 7 block linears; the LM head Gemm excluded by pattern.
  assert.equal(q4.weightOnly!.quantized.length, 14);
  assert.ok(q4.weightOnly!.quantized.every((n) => n.result === 'MatMulNBits b4 bs32'));
  const config = JSON.parse(await readFile(path.join(outDir, 'config.json'), 'utf8'));
  assert.equal(config['transformers.js_config'].dtype, 'q4');
  assert.equal(config['transformers.js_config'].use_external_data_format['model_q4.onnx'], 1);

  const rtn = await quantizeModel(fp.config, fp.weights, { method: 'rtn', grid: GRID });
  const mine = (await evaluate(new Decoder(fp.config, rtn.weights), tokens, { protocol: PROTOCOL }))
    .perplexity;
  const fp32 = await ortPerplexity('fp32', fpDir);
  const ort = await ortPerplexity('q4');

  const model = await AutoModelForCausalLM.from_pretrained(outDir, { ...SESSION, dtype: 'q4' });
  const tjs = (await evaluate(transformersDecoder(model, fp.config), tokens, { protocol: PROTOCOL }))
    .perplexity;
  console.log(
    `  ${tokens.length} tokens, ctx 512: fp32 ONNX ${fp32.toFixed(4)}; ptqkit RTN W4 ${mine.toFixed(4)}; ` +
      `ONNX q4 onnxruntime ${ort.toFixed(4)} (rel. ${(ort / mine - 1).toExponential(2)}), transformers.js ${tjs.toFixed(4)} ` +
      `(rel. ${(tjs / mine - 1).toExponential(2)}); model_q4.onnx ${q4.bytes} bytes (fp32 ${q4.sourceBytes})`,
  );
  assert.ok(Math.abs(ort / mine - 1) < PPL_REL_TOL);
  assert.ok(Math.abs(tjs / mine - 1) < PPL_REL_TOL);
  Object.assign(measured, { fp32, rtn: mine, q4: ort, tjs, fp32Bytes: q4.sourceBytes, q4Bytes: q4.bytes });
});

test('q4f16, fp16 and q8 files run in onnxruntime (q4f16 in transformers.js too): perplexities against fp32 and q4', async () => {
  const fp32 = await ortPerplexity('fp32', fpDir, SHORT_TOKENS);
  const q4 = await ortPerplexity('q4', outDir, SHORT_TOKENS);
  const result: Record<string, number> = {};
  for (const dtype of ['fp16', 'q4f16', 'q8'] as const)
    result[dtype] = await ortPerplexity(dtype, outDir, SHORT_TOKENS);
  const size = (d: string) => report.graphs.find((g) => g.dtype === d)!.bytes;
  Object.assign(measured, {
    fp32Short: fp32,
    q4Short: q4,
    fp16Short: result.fp16!,
    q4f16Short: result.q4f16!,
    q8Short: result.q8!,
    fp16Bytes: size('fp16'),
    q4f16Bytes: size('q4f16'),
    q8Bytes: size('q8'),
  });
  console.log(
    `  ${SHORT_TOKENS} tokens: perplexity fp32 ${fp32.toFixed(4)}, fp16 ${result.fp16!.toFixed(4)} (${size('fp16')} B), q4 ${q4.toFixed(4)}, ` +
      `q4f16 ${result.q4f16!.toFixed(4)} (${size('q4f16')} B), q8 ${result.q8!.toFixed(4)} (${size('q8')} B)`,
  );
  // fp16 rounding of weights and activations: a few 1e-4 relative; q8's per-tensor uint8 activations: ~1%.
  assert.ok(Math.abs(result.fp16! / fp32 - 1) < 2e-3);
  assert.ok(Math.abs(result.q4f16! / q4 - 1) < 2e-3);
  assert.ok(Math.abs(result.q8! / fp32 - 1) < 2e-2);
  // fp16 keeps float32 inputs and outputs (keep_io_types): transformers.js feeds a float32 cache.
  const f16 = await OnnxModel.read(path.join(outDir, 'onnx/model_fp16.onnx'));
  const elem = (v: { type?: { tensorType?: { elemType?: number | null } | null } | null }) =>
    v.type?.tensorType?.elemType;
  assert.ok(f16.graph.input.filter((i) => i.name.startsWith('past_key_values')).every((i) => elem(i) === 1));
  assert.equal(elem(f16.graph.output.find((o) => o.name === 'logits')!), 1);
  assert.ok(f16.graph.initializer.every((t) => t.dataType !== onnx.TensorProto.DataType.FLOAT));
  await f16.close();

  // transformers.js picks model_q4f16.onnx for dtype 'q4f16' and feeds its float32 cache.
  const window = Int32Array.from(tokens.slice(0, 64));
  const tjs = await AutoModelForCausalLM.from_pretrained(outDir, { ...SESSION, dtype: 'q4f16' });
  const theirs = await transformersDecoder(tjs, fp.config).forward(window, 1, 64);
  const ours = await (await OnnxCausalLM.load(outDir, 'q4f16', 1)).forward(window, 1, 64);
  const diff = maxAbsDiff(theirs, ours);
  console.log(`  transformers.js q4f16 logits vs onnxruntime's: max diff ${diff.toExponential(2)}`);
  assert.ok(diff < 1e-3);
});

/**
 * Independent MatMulNBits reader (onnxruntime docs/ContribOperators.md): B uint8 [N, k_blocks,
 * blob]; element k of block b of row n is bits (k·bits mod 8).. of byte ⌊k·bits/8⌋ of that blob;
 * zero_points uint8 [N, ⌈k_blocks·bits/8⌉] packed the same way, absent = 2^(bits−1).
 */
function readMatMulNBits(
  B: Uint8Array,
  zp: Uint8Array | undefined,
  N: number,
  K: number,
  bits: number,
  bs: number,
) {
  const kBlocks = Math.ceil(K / bs);
  const blob = (bs * bits) / 8;
  const mask = (1 << bits) - 1;
  const codes = new Uint8Array(N * K);
  const zeros = new Uint8Array(N * kBlocks);
  const zpRow = Math.ceil((kBlocks * bits) / 8);
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < kBlocks; b++) {
      zeros[n * kBlocks + b] = zp
        ? (zp[n * zpRow + ((b * bits) >> 3)]! >> ((b * bits) & 7)) & mask
        : 1 << (bits - 1);
      for (let j = 0; j < bs && b * bs + j < K; j++) {
        const byte = B[n * kBlocks * blob + b * blob + ((j * bits) >> 3)]!;
        codes[n * K + b * bs + j] = (byte >> ((j * bits) & 7)) & mask;
      }
    }
  }
  return { codes, zeros };
}

for (const symmetric of [true, false]) {
  test(`byte level (${symmetric ? 'symmetric' : 'asymmetric, zero points'}): one MatMulNBits node holds ptqkit's RTN codes exactly`, async () => {
    const src = path.join(fpDir, 'onnx/model.onnx');
    const model = await OnnxModel.read(src);
    const original = await OnnxModel.read(src);
    // q_proj of layer 0: MatMul(h, W_T) with W_T = Wᵀ [K, N].
    const nodeName = model.graph.node.find(
      (n) => n.opType === 'MatMul' && n.input[1]?.includes('layers.0.self_attn.q_proj'),
    )!.name;
    await quantizeWeightsToNBits(model, {
      bits: 4,
      blockSize: 32,
      symmetric,
      method: 'rtn',
      include: [new RegExp(`^${nodeName}$`)],
    });
    const node = model.graph.node.find((n) => n.name === nodeName)!;
    assert.equal(node.opType, 'MatMulNBits');
    assert.equal(node.domain, 'com.microsoft');
    const attr = (name: string) => Number(node.attribute.find((a) => a.name === name)!.i);
    const [K, N, bits, bs] = ['K', 'N', 'bits', 'block_size'].map(attr) as [number, number, number, number];
    assert.deepEqual([K, N, bits, bs], [128, 128, 4, 32]);
    const B = model.initializer(node.input[1]!)!;
    assert.deepEqual(dimsOf(B), [N, K / bs, (bs * bits) / 8]);
    const scales = await model.floatData(model.initializer(node.input[2]!)!);
    const zpInit = node.input[3] ? model.initializer(node.input[3]) : undefined;
    assert.equal(zpInit !== undefined, !symmetric);
    const read = readMatMulNBits(
      await model.tensorBytes(B),
      zpInit && (await model.tensorBytes(zpInit)),
      N,
      K,
      bits,
      bs,
    );

    // The intended codes: ptqkit's RTN of W = Bᵀ on int4 g32.
    const wT = await original.floatData(
      original.initializer(original.graph.node.find((n) => n.name === nodeName)!.input[1]!)!,
    );
    const W = new Float32Array(N * K);
    for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) W[n * K + k] = wT[k * N + n]!;
    const q = quantizeRtn({ shape: [N, K], data: W }, new IntGrid({ ...GRID, symmetric }));
    assert.deepEqual(read.codes, unpackCodes(q));
    assert.deepEqual(scales, q.scales);
    assert.deepEqual(Float32Array.from(read.zeros), q.zeros);
    const first = Array.from(read.codes.subarray(0, 8));
    console.log(
      `  ${nodeName}: row 0 codes ${first.join(' ')} (B bytes ${Array.from((await model.tensorBytes(B)).subarray(0, 4), (x) => x.toString(16).padStart(2, '0')).join(' ')}), ` +
        `scale ${scales[0]}, zero ${read.zeros[0]}`,
    );
    // Low nibble first: byte 0 = code 0 | code 1 << 4.
    assert.equal((await model.tensorBytes(B))[0], first[0]! | (first[1]! << 4));
    await model.close();
    await original.close();
  });
}

test('ptq export --dtype fp16,q4f16 goes through the same float16 pass', async () => {
  const dir = path.join(tmp, 'export-f16');
  const exported = await exportOnnx(fp, dir, { dtypes: ['q4f16', 'fp16'] });
  assert.deepEqual(
    exported.variants.map((v) => v.file),
    ['model_q4f16.onnx', 'model_fp16.onnx'],
  );
  const short = tokens.slice(0, SHORT_TOKENS);
  const [theirs, ours] = [
    await onnxPerplexity(dir, 'q4f16', short),
    await onnxPerplexity(outDir, 'q4f16', short),
  ];
  const [fp16Export, fp16Ours] = [
    await onnxPerplexity(dir, 'fp16', short),
    await onnxPerplexity(outDir, 'fp16', short),
  ];
  console.log(
    `  ${SHORT_TOKENS} tokens: exporter q4f16 ${theirs.toFixed(4)} / quantizer q4f16 ${ours.toFixed(4)}; ` +
      `exporter fp16 ${fp16Export.toFixed(4)} / quantizer fp16 ${fp16Ours.toFixed(4)}`,
  );
  // The exporter's q4 graph holds the same RTN codes and scales (int4 g32 sym, block linears) as
  // the quantizer's, and both go through the same float16 pass: the same perplexities, exactly.
  assert.equal(theirs, ours);
  assert.equal(fp16Export, fp16Ours);
});

test('llama2.c stories260K, per channel (block 0 → 64 / 256 for FFN width 172): q4 perplexity equal to ptqkit RTN W4 (2e-7)', {
  skip: !assetsPresent,
}, async () => {
  const m = await loadModel(path.join(ASSETS, 'models/stories260k/stories260K.bin'));
  const dir = path.join(tmp, 'fp32-260k');
  await exportOnnx(m, dir, { dtypes: ['fp32'] });
  const out = path.join(tmp, 'q4-260k');
  const r = await quantizeOnnx(dir, out, {
    dtypes: ['q4'],
    blockSize: 0,
    symmetric: true,
    method: 'rtn',
    gather: false,
    exclude: [/^\/lm_head\//],
  });
  const blocks = new Set(r.graphs[0]!.weightOnly!.quantized.map((n) => n.result));
  assert.deepEqual([...blocks].sort(), ['MatMulNBits b4 bs256', 'MatMulNBits b4 bs64']);
  const text = m.tokenizer.encode((await readFile(TEXT, 'utf8')).slice(0, 12_000)).slice(0, PPL_TOKENS);
  const grid: GridSpec = {
    bits: 4,
    symmetric: true,
    granularity: 'channel',
    groupSize: 0,
    scaleDtype: 'f16',
  };
  const rtn = await quantizeModel(m.config, m.weights, { method: 'rtn', grid });
  const mine = (await evaluate(new Decoder(m.config, rtn.weights), text, { protocol: PROTOCOL })).perplexity;
  const ort = await onnxPerplexity(out, 'q4', text);
  console.log(
    `  stories260K, ${text.length} tokens: ptqkit RTN int4 per-channel ${mine.toFixed(4)}, ONNX q4 ${ort.toFixed(4)} (rel. ${(ort / mine - 1).toExponential(2)})`,
  );
  assert.ok(Math.abs(ort / mine - 1) < PPL_REL_TOL);
  Object.assign(measured, { rtn260k: mine, q4260k: ort });
});

test("README's figures: perplexities and file sizes as printed", {
  skip: !assetsPresent && "README's figures are on ../shared/assets' tinystories-valid-800k and stories260K",
}, () => {
  const mb = (bytes: number) => bytes / 1e6;
  const r = README;
  const checks: [number, string, string][] = [
    [measured.fp32!, r.tokens2048.fp32, 'fp32 ONNX, 2048 tokens'],
    [measured.rtn!, r.tokens2048.rtn, 'ptqkit RTN W4, 2048 tokens'],
    [measured.q4!, r.tokens2048.q4, 'ONNX q4 in onnxruntime, 2048 tokens'],
    [measured.tjs!, r.tokens2048.q4, 'ONNX q4 in transformers.js, 2048 tokens'],
    [mb(measured.fp32Bytes!), r.tokens2048.fp32MB, 'fp32 ONNX MB'],
    [mb(measured.q4Bytes!), r.tokens2048.q4MB, 'model_q4.onnx MB'],
    [measured.fp32Short!, r.tokens1024.fp32, 'fp32, 1024 tokens'],
    [measured.fp16Short!, r.tokens1024.fp16, 'fp16, 1024 tokens'],
    [measured.q4Short!, r.tokens1024.q4, 'q4, 1024 tokens'],
    [measured.q4f16Short!, r.tokens1024.q4f16, 'q4f16, 1024 tokens'],
    [measured.q8Short!, r.tokens1024.q8, 'q8, 1024 tokens'],
    [mb(measured.fp16Bytes!), r.sizesMB.fp16, 'model_fp16.onnx MB'],
    [mb(measured.q4f16Bytes!), r.sizesMB.q4f16, 'model_q4f16.onnx MB'],
    [mb(measured.q8Bytes!), r.sizesMB.q8, 'model_quantized.onnx MB'],
    [measured.rtn260k!, r.stories260k.rtn, 'stories260K ptqkit RTN W4 per channel'],
    [measured.q4260k!, r.stories260k.q4, 'stories260K ONNX q4'],
  ];
  for (const [value, printed, what] of checks) {
    assert.ok(value !== undefined, `${what}: not measured (an earlier test failed)`);
    assertPrinted(value, printed, what);
  }
});
