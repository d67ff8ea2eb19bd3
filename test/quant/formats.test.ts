/**
 * Number formats as grids: scales, codes and packed bytes by hand; NVFP4 and MX against an
 * independent transcription of their reference formulas (compressed-tensors' NVFP4
 * generate_gparam / calculate_qparams / _quantize, OCP MX v1.0 §6.3); exact bits per weight;
 * checkpoint round trips; GPTQ through a float format.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { JsEngine } from '../../src/compute/index.js';
import { UsageError } from '../../src/errors.js';
import { FP4_E2M1, FP8_E4M3 } from '../../src/formats/element-formats.js';
import { type GridSpec, gridName, IntGrid, makeGrid, validateGrid } from '../../src/formats/grid.js';
import { roundToF16 } from '../../src/formats/half.js';
import { FORMAT_NAMES, type FormatName, gridSpecFor } from '../../src/formats/number-formats.js';
import {
  dequantize,
  type QuantizedTensor,
  storedBits,
  unpackCodes,
} from '../../src/formats/quantized-tensor.js';
import { readPtqCheckpoint, writePtqCheckpoint } from '../../src/io/ptq-checkpoint.js';
import { SafetensorsModel } from '../../src/io/safetensors.js';
import { relativeOutputError } from '../../src/quant/layer-error.js';
import { GPTQ_DEFAULTS, gptqQuantize, prepareHessian } from '../../src/quant/methods/gptq.js';
import { quantizeRtn } from '../../src/quant/methods/rtn.js';
import { seededRandom } from '../helpers.js';

const spec = (format: FormatName, o: Parameters<typeof gridSpecFor>[1] = {}) => gridSpecFor(format, o);
const rtn = (
  format: FormatName,
  rows: number,
  data: number[] | Float32Array,
  o: Parameters<typeof gridSpecFor>[1] = {},
) =>
  quantizeRtn(
    { shape: [rows, data.length / rows], data: Float32Array.from(data) },
    makeGrid(spec(format, o)),
  );

test('NVFP4 by hand: g = 448·6/amax, block scale e4m3(g·amax_b/6), E2M1 codes packed low nibble first', () => {
  // amax(W) = 6 → g = 448. Block 0 (amax 6): s = 448, effective s/g = 1, so the codes are the values.
  // Block 1 (amax 3): s = e4m3(448 · 0.5) = 224, effective 0.5, values are doubled before rounding.
  const block0 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.5, -1, -1.5, -2, -3, -4, -6, 0.25];
  const block1 = [3, 1.5, 0.75, -0.25, 2.9, 1.3, 0.1, -3, 0, 0, 0, 0, 0, 0, 0, 0];
  const q = rtn('nvfp4', 1, [...block0, ...block1]);
  assert.equal(q.spec.globalScale, 448);
  assert.deepEqual([...q.scales], [448, 224]);
  assert.deepEqual([...q.zeros], [0, 0]);
  // 0.25 is the tie between 0 and 0.5 → 0 (even); 2.9·2 = 5.8 → 6 (code 7); 0.1·2 = 0.2 → 0.
  assert.deepEqual(
    [...unpackCodes(q)],
    [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 0, 7, 5, 3, 9, 7, 5, 0, 15, 0, 0, 0, 0, 0, 0, 0, 0],
  );
  assert.deepEqual(
    [...q.qweight],
    [0x10, 0x32, 0x54, 0x76, 0xa9, 0xcb, 0xed, 0x0f, 0x57, 0x93, 0x57, 0xf0, 0, 0, 0, 0],
  );
  const w = dequantize(q);
  assert.deepEqual([...w.subarray(0, 15)], block0.slice(0, 15));
  assert.deepEqual([...w.subarray(16, 24)], [3, 1.5, 0.75, -0.25, 3, 1.5, 0, -3]);
  // 32 × 4 code bits + 2 × 8 E4M3 scale bits + 32 bits of FP32 global scale.
  assert.equal(storedBits(q), 32 * 4 + 2 * 8 + 32);
});

/** compressed-tensors' NVFP4 in float32 steps, with E2M1 rounding by brute force (nearest, ties to even code). */
function nvfp4Reference(w: Float32Array, rows: number, cols: number) {
  const f = Math.fround;
  const e2m1 = (x: number) => {
    const a = Math.min(Math.abs(x), 6);
    let best = 0;
    for (let c = 1; c < 8; c++) {
      const d = Math.abs(FP4_E2M1.values[c]! - a) - Math.abs(FP4_E2M1.values[best]! - a);
      if (d < 0 || (d === 0 && c % 2 === 0)) best = c;
    }
    return (x < 0 ? 8 : 0) | best;
  };
  let amax = 0;
  for (const x of w) amax = Math.max(amax, Math.abs(x));
  const g = f(2688 / amax); // generate_gparam: FP8 max · FP4 max / amax
  const codes: number[] = [];
  const scales: number[] = [];
  for (let r = 0; r < rows; r++) {
    for (let c0 = 0; c0 < cols; c0 += 16) {
      const block = w.subarray(r * cols + c0, r * cols + c0 + 16);
      const bmax = Math.max(...Array.from(block, Math.abs));
      let s = FP8_E4M3.round(f(g * f(bmax / 6))); // calculate_qparams: (amax/6)·g, cast to float8_e4m3fn
      if (s === 0) s = 0.125;
      scales.push(s);
      const eff = f(s / g); // _quantize: scale / global_scale
      for (const x of block) codes.push(e2m1(f(x / eff)));
    }
  }
  return { g, codes, scales };
}

test('NVFP4 RTN equals the compressed-tensors formulas on random weights (codes, E4M3 scales, global scale)', () => {
  const rand = seededRandom(21);
  const [rows, cols] = [8, 64];
  const w = Float32Array.from({ length: rows * cols }, (_, i) => (rand() - 0.5) * (i % 37 === 0 ? 0.8 : 0.1));
  const q = rtn('nvfp4', rows, w);
  const ref = nvfp4Reference(w, rows, cols);
  assert.equal(q.spec.globalScale, ref.g);
  assert.deepEqual([...q.scales], ref.scales);
  assert.deepEqual([...unpackCodes(q)], ref.codes);
  // Bits per weight of a real-sized layer: 4 + 8/16 + 32/(rows·cols).
  const big = rtn(
    'nvfp4',
    64,
    Float32Array.from({ length: 64 * 256 }, () => rand() - 0.5),
  );
  assert.equal(storedBits(big) / (64 * 256), 4.5 + 32 / (64 * 256));
});

test('MXFP4 by hand (OCP MX §6.3): X = 2^(floor(log2 amax) − 2), elements saturate, zero blocks take 2^-127', () => {
  const data = new Float32Array(96);
  // amax 7: floor(log2 7) = 2 → X = 1; 7 saturates to 6; 5, 2.5 and 0.75 are ties → 4, 2, 1 (even codes).
  data.set([5, -7, 2.5, 0.75, 3.25], 0);
  data.set([0.3, -0.1, 0.05], 32); // amax 0.3: floor(log2 0.3) = −2 → X = 2^-4; 4.8 → 4, 1.6 → 1.5, 0.8 → 1
  const q = rtn('mxfp4', 1, data);
  assert.deepEqual([...q.scales], [1, 2 ** -4, 2 ** -127]);
  const w = dequantize(q);
  assert.deepEqual([...w.subarray(0, 5)], [4, -6, 2, 1, 3]);
  assert.deepEqual([...w.subarray(32, 35)], [4 / 16, -1.5 / 16, 1 / 16]);
  assert.ok(w.subarray(64).every((x) => x === 0));
  assert.equal(storedBits(q), 96 * 4 + 3 * 8);
});

test('MXFP8 (E4M3, emax 8) and MXFP6: shared scale 2^(floor(log2 amax) − emax_elem)', () => {
  const data = new Float32Array(32);
  data.set([1, 0.001, -0.5]);
  const q8 = rtn('mxfp8', 1, data);
  assert.deepEqual([...q8.scales], [2 ** -8]); // floor(log2 1) − 8
  // 0.001 · 256 = 0.256 → 0.25 in E4M3 (code 0x28); 1 · 256 = 256 (0x78).
  assert.deepEqual([...unpackCodes(q8)].slice(0, 3), [0x78, 0x28, 0xf0]);
  assert.deepEqual([...dequantize(q8)].slice(0, 3), [1, 0.25 / 256, -0.5]);
  const q6 = rtn('mxfp6-e3m2', 1, data); // emax 4 → X = 2^-4; 0.001·16 = 0.016 → 0 (below half of 0.0625)
  assert.deepEqual([...q6.scales], [2 ** -4]);
  assert.deepEqual([...dequantize(q6)].slice(0, 3), [1, 0, -0.5]);
  const q6b = rtn('mxfp6-e2m3', 1, data); // emax 2 → X = 2^-2; 0.004 → 0
  assert.deepEqual([...q6b.scales], [0.25]);
  assert.equal(storedBits(q6) / 32, 6.25);
});

test('FP8 E4M3 per channel: s = amax/448 in the scale dtype; the max element saturates to 448 (0x7E), never NaN', () => {
  const q = rtn('fp8-e4m3', 2, [1, -0.5, 0.3, 0.001, 0, 0, 0, 0], { groupSize: -1 });
  const s = roundToF16(1 / 448);
  assert.equal(q.scales[0], s);
  assert.ok(1 / s > 448); // f16 rounded the scale down: amax/s = 448.1…
  const codes = [...unpackCodes(q)];
  assert.equal(codes[0], 0x7e);
  assert.deepEqual(
    codes.slice(1, 4),
    [-0.5, 0.3, 0.001].map((x) => FP8_E4M3.encode(Math.fround(Math.fround(x) / s))),
  );
  // An all-zero row gets the smallest scale and zero codes.
  assert.equal(q.scales[1], 2 ** -24);
  assert.deepEqual(codes.slice(4), [0, 0, 0, 0]);
  assert.equal(dequantize(q)[0], Math.fround(448 * s));
  const e5 = rtn('fp8-e5m2', 1, [1, -0.5, 0.3, 0.001], { perTensor: true, scaleDtype: 'f32' });
  assert.equal(e5.scales[0], Math.fround(1 / 57344));
  assert.equal(gridName(e5.spec), 'fp8-e5m2-pt');
});

test('ternary (BitNet b1.58 absmean) and binary (XNOR-Net mean|w|) by hand', () => {
  const t = rtn('ternary', 1, [0.5, -0.2, 0.05, 0.9], { groupSize: 4, scaleDtype: 'f32' });
  const gamma = Math.fround((Math.fround(0.5) + Math.fround(0.2) + Math.fround(0.05) + Math.fround(0.9)) / 4);
  assert.equal(t.scales[0], gamma);
  // 0.5/γ = 1.21 → 1, −0.2/γ = −0.48 → 0, 0.05/γ → 0, 0.9/γ = 2.2 → clipped to 1.
  assert.deepEqual([...unpackCodes(t)], [2, 1, 1, 2]);
  assert.deepEqual([...dequantize(t)], [gamma, 0, 0, gamma]);
  assert.deepEqual([...t.qweight], [2 + 3 * 1 + 9 * 1 + 27 * 2]);
  const b = rtn('binary', 1, [0.5, -0.2, 0, 0.9], { groupSize: 4, scaleDtype: 'f32' });
  assert.equal(b.scales[0], Math.fround(0.4));
  assert.deepEqual([...unpackCodes(b)], [1, 0, 1, 1]);
  assert.deepEqual([...dequantize(b)], [0.4, -0.4, 0.4, 0.4].map(Math.fround));
  assert.deepEqual([...b.qweight], [0b1101]);
});

test('bits per weight count exactly what is stored', () => {
  const rand = seededRandom(4);
  const [rows, cols] = [64, 256];
  const w = Float32Array.from({ length: rows * cols }, () => rand() - 0.5);
  const bpw = (format: FormatName, o: Parameters<typeof gridSpecFor>[1] = {}) =>
    storedBits(rtn(format, rows, w, o)) / w.length;
  assert.equal(bpw('mxfp4'), 4.25);
  assert.equal(bpw('mxfp6-e2m3'), 6.25);
  assert.equal(bpw('mxfp8'), 8.25);
  assert.equal(bpw('fp8-e4m3', { groupSize: -1 }), 8 + 16 / cols);
  assert.equal(bpw('fp4-e2m1', { groupSize: 16, scaleDtype: 'e4m3' }), 4.5);
  assert.equal(bpw('binary'), 1.5);
  // 16384 trits in ceil(16384/5) = 3277 bytes, plus one f16 scale per 32.
  assert.equal(bpw('ternary'), (3277 * 8 + (16384 / 32) * 16) / 16384);
  assert.equal(bpw('int', { bits: 4 }), 4.5);
});

test('integer grids with E4M3 scales: scales rounded (saturating) to E4M3 before the codes', () => {
  const grid = new IntGrid({
    bits: 4,
    symmetric: true,
    granularity: 'group',
    groupSize: 4,
    scaleDtype: 'e4m3',
  });
  const q = quantizeRtn({ shape: [1, 4], data: Float32Array.of(-1.875, 0, 0.625, 1.125) }, grid);
  // s = 2 · 1.875 / 15 = 0.25 exactly in E4M3; codes as the f32 grid: 0, 8, 10, 12.
  assert.equal(q.scales[0], 0.25);
  assert.deepEqual([...unpackCodes(q)], [0, 8, 10, 12]);
  const q2 = quantizeRtn({ shape: [1, 4], data: Float32Array.of(-0.3, 0, 0.1, 0.2) }, grid);
  assert.equal(q2.scales[0], FP8_E4M3.round((2 * Math.fround(0.3)) / 15)); // 0.04 → 0.0390625
  assert.equal(q2.scales[0], 0.0390625);
  assert.equal(storedBits(q2), 4 * 4 + 8);
});

test('--format options: the table fixes element bits, NVFP4/MX blocks and scale dtypes; conflicts are usage errors', () => {
  assert.deepEqual(gridSpecFor('int', { bits: 3, groupSize: 64, asym: true }), {
    bits: 3,
    symmetric: false,
    granularity: 'group',
    groupSize: 64,
    scaleDtype: 'f16',
  });
  assert.deepEqual(gridSpecFor('nvfp4', {}), {
    bits: 4,
    symmetric: true,
    granularity: 'group',
    groupSize: 16,
    scaleDtype: 'e4m3',
    format: 'nvfp4',
  });
  assert.deepEqual(gridSpecFor('mxfp6-e3m2', { bits: 6 }), {
    bits: 6,
    symmetric: true,
    granularity: 'group',
    groupSize: 32,
    scaleDtype: 'e8m0',
    format: 'mxfp6-e3m2',
  });
  assert.equal(gridSpecFor('binary', {}).bits, 1);
  assert.equal(gridSpecFor('ternary', {}).bits, 2);
  assert.equal(gridSpecFor('fp8-e4m3', { groupSize: -1 }).granularity, 'channel');
  assert.throws(() => gridSpecFor('nvfp4', { groupSize: 32 }), /nvfp4 uses blocks of 16/);
  assert.throws(() => gridSpecFor('mxfp4', { perTensor: true }), UsageError);
  assert.throws(() => gridSpecFor('mxfp4', { bits: 8 }), /--bits disagrees with --format mxfp4.*expected 4/);
  assert.throws(() => gridSpecFor('fp8-e4m3', { asym: true }), /symmetric/);
  assert.throws(() => gridSpecFor('nvfp4', { scaleDtype: 'f16' }), /nvfp4 stores e4m3 scales/);
  assert.throws(() => validateGrid({ ...gridSpecFor('fp8-e4m3', {}), scaleDtype: 'e8m0' }), UsageError);
  assert.throws(
    () => validateGrid({ bits: 4, symmetric: true, granularity: 'group', groupSize: 32, scaleDtype: 'e8m0' }),
    /e8m0/,
  );
  assert.deepEqual(
    FORMAT_NAMES.map((f) => gridName(gridSpecFor(f, {}))),
    [
      'int4-g32-sym',
      'fp8-e4m3-g32',
      'fp8-e5m2-g32',
      'fp6-e3m2-g32',
      'fp6-e2m3-g32',
      'fp4-e2m1-g32',
      'nvfp4',
      'mxfp4',
      'mxfp6-e3m2',
      'mxfp6-e2m3',
      'mxfp8',
      'ternary-g32',
      'binary-g32',
    ],
  );
});

const work = mkdtempSync(path.join(os.tmpdir(), 'ptq-formats-'));
after(() => rmSync(work, { recursive: true, force: true }));

test('checkpoint: NVFP4 (F8_E4M3 scales + F32 global_scale), MX (U8 E8M0), ternary, FP8 round-trip bit-exactly', async () => {
  const rand = seededRandom(9);
  const [rows, cols] = [4, 64];
  const w = Float32Array.from({ length: rows * cols }, () => (rand() - 0.5) * 0.2);
  const tensors = new Map<string, QuantizedTensor>();
  const formats: [FormatName, Parameters<typeof gridSpecFor>[1]][] = [
    ['nvfp4', {}],
    ['mxfp4', {}],
    ['mxfp6-e2m3', {}],
    ['ternary', {}],
    ['fp8-e4m3', { groupSize: -1, scaleDtype: 'bf16' }],
  ];
  for (const [f, o] of formats) tensors.set(`${f}.weight`, rtn(f, rows, w, o));
  const weights = new Map([...tensors].map(([n, q]) => [n, { shape: [rows, cols], data: dequantize(q) }]));
  const dir = path.join(work, 'ckpt');
  await writePtqCheckpoint(
    dir,
    { hfConfig: { model_type: 'llama' }, weights, tokenizerFiles: [] },
    { method: 'rtn', settings: {}, tensors },
  );
  const st = await SafetensorsModel.open(dir);
  try {
    assert.equal(st.info('nvfp4.scales').dtype, 'F8_E4M3');
    assert.deepEqual(st.info('nvfp4.scales').shape, [rows, cols / 16]);
    assert.equal(st.info('nvfp4.global_scale').dtype, 'F32');
    assert.equal(st.info('mxfp4.scales').dtype, 'U8');
    assert.equal(st.info('fp8-e4m3.scales').dtype, 'BF16');
    assert.ok(!st.names().includes('mxfp4.global_scale'));
    // Biased exponents as stored: 2^k ↔ k + 127.
    assert.deepEqual(
      [...(await st.readRaw('mxfp4.scales'))],
      [...tensors.get('mxfp4.weight')!.scales].map((s) => Math.log2(s) + 127),
    );
  } finally {
    await st.close();
  }
  const back = await readPtqCheckpoint(dir);
  for (const [name, q] of tensors) {
    const b = back.quantization.tensors.get(name)!;
    assert.deepEqual(b.spec, q.spec, name);
    assert.deepEqual(b.qweight, q.qweight, name);
    assert.deepEqual(b.scales, q.scales, name);
    assert.deepEqual(b.zeros, q.zeros, name);
    assert.deepEqual(back.weights.get(name)!.data, dequantize(q), name);
    assert.equal(storedBits(b), storedBits(q));
  }
});

test('GPTQ × NVFP4 composes: global scale from the original weight, valid E2M1 codes, lower output error than RTN', async () => {
  const engine = new JsEngine();
  const rand = seededRandom(13);
  const gauss = () => Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());
  const [rows, cols, samples] = [32, 64, 400];
  const W = Float32Array.from({ length: rows * cols }, () => gauss() * 0.05);
  const colScale = Float64Array.from({ length: cols }, () => Math.exp(gauss()));
  const H = new Float64Array(cols * cols);
  const x = new Float64Array(cols);
  for (let s = 0; s < samples; s++) {
    const shared = gauss();
    for (let c = 0; c < cols; c++) x[c] = (gauss() + 0.5 * shared) * colScale[c]!;
    for (let i = 0; i < cols; i++)
      for (let j = 0; j < cols; j++) H[i * cols + j]! += (2 / samples) * x[i]! * x[j]!;
  }
  const results: Record<string, number> = {};
  for (const format of ['nvfp4', 'mxfp4', 'fp8-e4m3', 'ternary'] as const) {
    const grid = makeGrid(gridSpecFor(format, format === 'ternary' ? { groupSize: 16 } : {}));
    const weight = { shape: [rows, cols], data: W };
    const q = await gptqQuantize(
      weight,
      await prepareHessian(H, cols, GPTQ_DEFAULTS, engine),
      grid,
      GPTQ_DEFAULTS,
      engine,
    );
    if (format === 'nvfp4') {
      let amax = 0;
      for (const v of W) amax = Math.max(amax, Math.abs(v));
      assert.equal(q.spec.globalScale, Math.fround(2688 / amax));
      assert.ok(q.scales.every((s) => FP8_E4M3.round(s) === s && s > 0));
    }
    const gptqErr = await relativeOutputError(W, dequantize(q), H, rows, cols, engine);
    const rtnErr = await relativeOutputError(W, dequantize(quantizeRtn(weight, grid)), H, rows, cols, engine);
    results[format] = gptqErr / rtnErr;
    console.log(
      `  ${format}: relative output error GPTQ ${gptqErr.toExponential(3)} vs RTN ${rtnErr.toExponential(3)}`,
    );
    assert.ok(gptqErr < rtnErr, `${format}: GPTQ ${gptqErr} vs RTN ${rtnErr}`);
  }
  // The smaller the format's error, the more GPTQ's error feedback has to gain relative to it.
  assert.ok(results.nvfp4! < 0.9 && results.mxfp4! < 0.9);
});

test('a grid spec with an unknown format or mismatched element bits is rejected', () => {
  assert.throws(
    () => makeGrid({ ...gridSpecFor('nvfp4', {}), bits: 8 }),
    /'bits': invalid nvfp4 grid; expected 4 \(fp4-e2m1 codes\), got 8/,
  );
  assert.throws(
    () => makeGrid({ ...gridSpecFor('int', {}), format: 'fp5' as FormatName } as GridSpec),
    /unknown number format/,
  );
});
