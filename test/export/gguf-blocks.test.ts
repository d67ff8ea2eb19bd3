/**
 * ptqkit checkpoints exported to GGUF keep the method's codes and scales when the grid fits a
 * ggml block (gguf-blocks.ts), and say so when it does not.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { type TestContext, test } from 'node:test';
import { exportGguf } from '../../src/export/gguf.js';
import { blockScale, codesToBlocks } from '../../src/export/gguf-blocks.js';
import { ggmlType } from '../../src/formats/ggml.js';
import type { GridSpec } from '../../src/formats/grid.js';
import { fromCodes } from '../../src/formats/quantized-tensor.js';
import { writePtqCheckpoint } from '../../src/io/ptq-checkpoint.js';
import { loadModel } from '../../src/model/load.js';
import { quantizeModel } from '../../src/quant/quantize-model.js';
import { ASSETS, assetsPresent, tempDir } from '../helpers.js';

const MODEL = path.join(ASSETS, 'models/tinystories-656k');
const LINEAR = /self_attn|mlp/;

/** RTN-quantize the model, save it as a ptqkit checkpoint, read it back, export it to GGUF (files removed after `t`). */
async function exportCheckpoint(t: TestContext, grid: GridSpec, type: string) {
  const model = await loadModel(MODEL);
  const q = await quantizeModel(model.config, model.weights, { method: 'rtn', grid });
  const dir = tempDir('ptq-gguf-ckpt-', t);
  await writePtqCheckpoint(path.join(dir, 'ckpt'), { ...model, weights: q.weights }, q.quantization);
  const ckpt = await loadModel(path.join(dir, 'ckpt'));
  const warnings: string[] = [];
  const report = await exportGguf(ckpt, path.join(dir, 'out.gguf'), {
    type,
    onWarning: (w) => warnings.push(w),
  });
  const back = await loadModel(path.join(dir, 'out.gguf'));
  return { ckpt, report, back, warnings };
}

/** Largest |a − b| over the quantized linears of two models (GGUF read back un-permutes Q/K). */
function maxLinearDiff(
  a: Map<string, { data: Float32Array }>,
  b: Map<string, { data: Float32Array }>,
): number {
  let m = 0;
  for (const [name, t] of a) {
    if (!LINEAR.test(name)) continue;
    const u = b.get(name)!.data;
    for (let i = 0; i < u.length; i++) m = Math.max(m, Math.abs(u[i]! - t.data[i]!));
  }
  return m;
}

test('hand-made codes land in Q4_0, Q4_1 and Q8_0 blocks as the op formulas say', () => {
  // One row of 32 weights, 4-bit codes 0..15 twice, scale 0.5 (f16-exact), zero 8 (symmetric).
  const codes = Uint8Array.from({ length: 32 }, (_, j) => j % 16);
  const sym: GridSpec = { bits: 4, symmetric: true, granularity: 'group', groupSize: 32, scaleDtype: 'f16' };
  const q = fromCodes(1, 32, sym, codes, Float32Array.of(0.5), Float32Array.of(8));
  const q40 = codesToBlocks(q, ggmlType('Q4_0'));
  assert.ok(q40.ok);
  // d = 0.5 (f16 0x3800), nibble j = code j (low) | code j+16 (high): c = q − z + 8 = q.
  assert.deepEqual([...q40.bytes.subarray(0, 4)], [0x00, 0x38, 0x00, 0x11]);
  assert.equal(blockScale(q40.bytes, ggmlType('Q4_0'), 0), 0.5);
  const q80 = codesToBlocks(q, ggmlType('Q8_0'));
  assert.ok(q80.ok);
  // Q8_0 holds q − z: −8 … 7.
  assert.deepEqual([...new Int8Array(q80.bytes.buffer, 2, 4)], [-8, -7, -6, -5]);
  // Asymmetric zero 3: Q4_1 keeps q and stores m = −0.5·3 = −1.5 (f16-exact, so exact).
  const asym = fromCodes(
    1,
    32,
    { ...sym, symmetric: false },
    codes,
    Float32Array.of(0.5),
    Float32Array.of(3),
  );
  const q41 = codesToBlocks(asym, ggmlType('Q4_1'));
  assert.ok(q41.ok);
  assert.equal(q41.inexactBlocks, 0);
  assert.deepEqual([...q41.bytes.subarray(0, 4)], [0x00, 0x38, 0x00, 0xbe]); // d 0.5, m −1.5 = 0xBE00
  assert.equal(codesToBlocks(asym, ggmlType('Q4_0')).ok, false);
});

test('int4 g32 symmetric checkpoint -> Q4_0 from its own codes, bit-exact', async (t) => {
  if (!assetsPresent) return t.skip('shared assets not present');
  const { ckpt, report, back, warnings } = await exportCheckpoint(
    t,
    { bits: 4, symmetric: true, granularity: 'group', groupSize: 32, scaleDtype: 'f16' },
    'auto',
  );
  assert.equal(report.type, 'Q4_0');
  assert.deepEqual(warnings, []);
  const linears = report.tensors.filter((x) => /attn_(q|k|v|output)\.|ffn_(gate|up|down)\./.test(x.name));
  assert.ok(linears.length === 14 && linears.every((x) => x.source === 'codes' && x.type === 'Q4_0'));
  assert.equal(maxLinearDiff(ckpt.weights, back.weights), 0);
});

test('int3 g64 and int8 per-channel symmetric checkpoints fit Q4_0 and Q8_0 exactly', async (t) => {
  if (!assetsPresent) return t.skip('shared assets not present');
  const int3 = await exportCheckpoint(
    t,
    { bits: 3, symmetric: true, granularity: 'group', groupSize: 64, scaleDtype: 'f16' },
    'q4_0',
  );
  assert.deepEqual(int3.warnings, []);
  assert.equal(maxLinearDiff(int3.ckpt.weights, int3.back.weights), 0);
  const int8 = await exportCheckpoint(
    t,
    { bits: 8, symmetric: true, granularity: 'channel', groupSize: 0, scaleDtype: 'f16' },
    'auto',
  );
  assert.equal(int8.report.type, 'Q8_0');
  assert.equal(maxLinearDiff(int8.ckpt.weights, int8.back.weights), 0);
});

test('int4 g32 asymmetric -> Q4_1 keeps codes and d; m = −d·z rounded to f16 is reported', async (t) => {
  if (!assetsPresent) return t.skip('shared assets not present');
  const { ckpt, report, back, warnings } = await exportCheckpoint(
    t,
    { bits: 4, symmetric: false, granularity: 'group', groupSize: 32, scaleDtype: 'f16' },
    'auto',
  );
  assert.equal(report.type, 'Q4_1');
  // Every Q4_1 tensor comes from the codes; the embedding, which ptqkit did not quantize, stays F32.
  assert.ok(report.tensors.filter((x) => x.type === 'Q4_1').every((x) => x.source === 'codes'));
  assert.equal(report.tensors.find((x) => x.name === 'token_embd.weight')?.type, 'F32');
  // Every warning names the shift; the weights move by no more than it.
  const shifts = warnings.map((w) => Number(/up to ([0-9.e+-]+)/.exec(w)![1]));
  assert.ok(warnings.length > 0 && warnings.every((w) => /blocks round m = −d·z to f16/.test(w)));
  const diff = maxLinearDiff(ckpt.weights, back.weights);
  // (plus float32 rounding of d·c + m, at most half an ulp of weights below 1)
  assert.ok(
    diff > 0 && diff <= Math.max(...shifts) + 2 ** -24,
    `shift ${diff} vs reported ${Math.max(...shifts)}`,
  );
});

test('grids without a block form are re-quantized with a warning', async (t) => {
  if (!assetsPresent) return t.skip('shared assets not present');
  // int8 codes do not fit 4-bit blocks; f32 scales are not f16 values.
  const wide = await exportCheckpoint(
    t,
    { bits: 8, symmetric: true, granularity: 'group', groupSize: 32, scaleDtype: 'f16' },
    'q4_0',
  );
  assert.ok(
    wide.report.tensors.filter((x) => /attn_q/.test(x.name)).every((x) => x.source === 'requantized'),
  );
  assert.ok(wide.warnings.some((w) => /8-bit symmetric codes do not fit Q4_0; re-quantized to Q4_0/.test(w)));
  const f32 = await exportCheckpoint(
    t,
    { bits: 4, symmetric: true, granularity: 'group', groupSize: 32, scaleDtype: 'f32' },
    'q4_0',
  );
  assert.ok(f32.warnings.some((w) => /is not an f16 value; re-quantized/.test(w)));
  await assert.rejects(
    exportCheckpoint(
      t,
      { bits: 8, symmetric: false, granularity: 'channel', groupSize: 0, scaleDtype: 'f16' },
      'auto',
    ),
    /no ggml type holds this checkpoint's codes exactly/,
  );
});
