/**
 * The ptqkit checkpoint stores every part of a quantized tensor that dequantization reads:
 * float zero points (HQQ) and per-column scales (SINQ) survive a write/read bit-exactly.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import type { GridSpec } from '../../src/formats/grid.js';
import { dequantize, fromCodes, storedBits } from '../../src/formats/quantized-tensor.js';
import { readPtqCheckpoint, writePtqCheckpoint } from '../../src/io/ptq-checkpoint.js';

const work = mkdtempSync(path.join(os.tmpdir(), 'ptq-ckpt-'));
after(() => rmSync(work, { recursive: true, force: true }));

test('float zero points and column scales round-trip exactly and are counted in bits/weight', async () => {
  const [rows, cols] = [2, 8];
  const spec: GridSpec = {
    bits: 3,
    symmetric: false,
    granularity: 'group',
    groupSize: 4,
    scaleDtype: 'f16',
    zeroPoint: 'float',
  };
  const codes = Uint8Array.from({ length: rows * cols }, (_, i) => i % 8);
  // Values exactly representable in f16, so the stored tensor must give back the same floats.
  const scales = Float32Array.from([0.5, 0.25, 0.125, 1]);
  const zeros = Float32Array.from([3.5, 2.25, 0.75, 4]);
  const q = {
    ...fromCodes(rows, cols, spec, codes, scales, zeros),
    columnScales: Float32Array.from([1, 2, 0.5, 1, 1, 1, 1.5, 1]),
  };
  // w[0,1] = 0.5 · (1 − 3.5) · 2
  assert.equal(dequantize(q)[1], -2.5);
  // 16 × 3 code bits + 4 × (16 scale + 16 zero) + 8 × 16 column-scale bits
  assert.equal(storedBits(q), 48 + 128 + 128);

  const out = path.join(work, 'ckpt');
  const weights = new Map([['w.weight', { shape: [rows, cols], data: dequantize(q) }]]);
  await writePtqCheckpoint(
    out,
    { hfConfig: { model_type: 'llama' }, weights, tokenizerFiles: [] },
    { method: 'test', settings: {}, tensors: new Map([['w.weight', q]]) },
  );
  const back = await readPtqCheckpoint(out);
  const qb = back.quantization.tensors.get('w.weight')!;
  assert.deepEqual(qb.zeros, zeros);
  assert.deepEqual(qb.columnScales, q.columnScales);
  assert.deepEqual(back.weights.get('w.weight')!.data, dequantize(q));
});
