/**
 * SpQR-style outliers (src/quant/outliers.ts): the leave-one-out score on a hand-computed block,
 * exact counts, exclusion from the statistics, GPTQ's in-loop selection against RTN's when the
 * Hessian is the identity (no error feedback: both must choose the same weights), the CSR side
 * matrix through the checkpoint bit-exactly, malformed CSR refused, exporters refusing, and the
 * acceptance numbers: 1% outliers lower W3 KLD for RTN and GPTQ on both real models, at their
 * stored bits per weight.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import { type QuantizeArgs, quantizeCommand } from '../../src/cli/commands.js';
import { getDefaultEngine } from '../../src/compute/index.js';
import { FormatError, UsageError } from '../../src/errors.js';
import { exportGguf } from '../../src/export/gguf.js';
import { exportGptq } from '../../src/export/gptq-safetensors.js';
import { type GridSpec, makeGrid } from '../../src/formats/grid.js';
import { roundToF16 } from '../../src/formats/half.js';
import { dequantize, type QuantizedTensor, storedBits } from '../../src/formats/quantized-tensor.js';
import { readPtqCheckpoint, writePtqCheckpoint } from '../../src/io/ptq-checkpoint.js';
import { checkPtqCheckpoint } from '../../src/io/ptq-checkpoint-checks.js';
import { type LoadedModel, loadModel } from '../../src/model/load.js';
import { type GptqOptions, gptqQuantize, prepareHessian } from '../../src/quant/methods/gptq.js';
import { quantizeRtn } from '../../src/quant/methods/rtn.js';
import { GptqOutlierSelector, looReductions, quantizeWithOutliers, topK } from '../../src/quant/outliers.js';
import { quantizeModel } from '../../src/quant/quantize-model.js';
import { ASSETS, assetsPresent, tempDir } from '../helpers.js';
import { assertMeasured } from './quality-setup.js';
import { describeSideModels, PLAIN_W3, SIDE_W3 } from './side-quality.js';

const int3 = (groupSize: number, scaleDtype: GridSpec['scaleDtype'] = 'f16'): GridSpec => ({
  bits: 3,
  symmetric: true,
  granularity: groupSize ? 'group' : 'channel',
  groupSize,
  scaleDtype,
});

test('leave-one-out reductions of a hand-computed int3 block', () => {
  // w = [0, 0.5, 1, 4], symmetric int3 (z = 4, s = 2·amax/7), f32 scale, unit column weights.
  // Full block: s = 8/7, errors² = [0, 0.25, 0.0204082, 0.3265304], sum 0.5969386.
  // Without 4: s = 2/7, others' errors² = [0, 0.0051020, 0.0204082] → reduction 0.5714284.
  // Without 0 (the minimum): amax still 4, parameters unchanged → reduction = its own error 0.
  const M = Float32Array.of(0, 0.5, 1, 4);
  const scores = new Float64Array(4);
  looReductions(makeGrid(int3(4, 'f32')), M, 4, 1, 0, 4, 1, new Float64Array(4).fill(1), scores);
  const expected = [0, 0.25, 0.020408177862, 0.571428418159];
  for (let i = 0; i < 4; i++)
    assert.ok(Math.abs(scores[i]! - expected[i]!) < 1e-9, `score ${i}: ${scores[i]}`);
  assert.deepEqual([...M], [0, 0.5, 1, 4], 'the block is restored');
  // The group maximum is worth most although its own rounding error is not the largest.
  assert.deepEqual([...topK(scores, 1)], [0, 0, 0, 1]);
  assert.deepEqual([...topK(scores, 2)], [0, 1, 0, 1]);
  // Ties go to the lower index; exactly k are chosen.
  assert.deepEqual([...topK(Float64Array.of(1, 2, 2, 2, 0), 2)], [0, 1, 1, 0, 0]);
});

/** A deterministic [rows, cols] weight with a few large entries, as LLM weights have. */
function heavyTailed(rows: number, cols: number, seed: number): Float32Array {
  let s = seed;
  const rand = () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return s / 2 ** 32;
  };
  return Float32Array.from({ length: rows * cols }, () => {
    const x = (rand() - 0.5) * 0.1;
    return rand() < 0.02 ? x * 20 : x;
  });
}

test('RTN with outliers: exact count, FP16 values kept, statistics without them, lower error', () => {
  const rows = 16;
  const cols = 64;
  const w = { shape: [rows, cols], data: heavyTailed(rows, cols, 7) };
  const grid = makeGrid(int3(32));
  const plain = quantizeRtn(w, grid);
  const q = quantizeWithOutliers(w, grid, 0.02, undefined, (t) => quantizeRtn(t, grid));
  const o = q.outliers!;
  assert.equal(o.values.length, Math.round(0.02 * rows * cols)); // 20
  assert.equal(o.rowPtr[rows], 20);
  const deq = dequantize(q);
  const isOutlier = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let k = o.rowPtr[r]!; k < o.rowPtr[r + 1]!; k++) {
      const c = o.colIndex[k]!;
      isOutlier[r * cols + c] = 1;
      assert.equal(o.values[k], roundToF16(w.data[r * cols + c]!));
      assert.equal(deq[r * cols + c], o.values[k]);
    }
  }
  // Every group's scale is the scale of its non-outliers alone.
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < 2; g++) {
      let amax = 0;
      for (let c = g * 32; c < g * 32 + 32; c++)
        if (!isOutlier[r * cols + c]) amax = Math.max(amax, Math.abs(w.data[r * cols + c]!));
      assert.equal(q.scales[r * 2 + g], roundToF16((2 * amax) / 7), `row ${r} group ${g}`);
    }
  }
  const err = (d: Float32Array) => d.reduce((s, x, i) => s + (x - w.data[i]!) ** 2, 0);
  const plainErr = err(dequantize(plain));
  const outErr = err(deq);
  assert.ok(outErr < 0.25 * plainErr, `‖W − Ŵ‖² ${outErr} vs plain ${plainErr}`);
  // Stored bits: codes + f16 scales + 20 × (f16 value + I16 column) + 17 I16 row pointers.
  assert.equal(storedBits(q), storedBits(plain) + 20 * 32 + 17 * 16);
});

test('GPTQ in-loop outliers equal RTN outliers when H = I (no error feedback)', async () => {
  const rows = 12;
  const cols = 64;
  const w = { shape: [rows, cols], data: heavyTailed(rows, cols, 3) };
  const H = new Float64Array(cols * cols);
  for (let i = 0; i < cols; i++) H[i * cols + i] = 1;
  const options: GptqOptions = { blockSize: 32, damp: 0.01, actOrder: false };
  const engine = getDefaultEngine();
  const prep = await prepareHessian(H, cols, options, engine);
  for (const groupSize of [32, 0]) {
    const grid = makeGrid(int3(groupSize));
    const selector = new GptqOutlierSelector(0.03, prep.U);
    const g = await gptqQuantize(w, prep, grid, options, engine, 'w', selector);
    const viaGptq: QuantizedTensor = { ...g, outliers: selector.finish(prep.perm) };
    const viaRtn = quantizeWithOutliers(w, grid, 0.03, undefined, (t) => quantizeRtn(t, grid));
    assert.deepEqual(viaGptq.outliers, viaRtn.outliers, `g${groupSize}: same outliers`);
    assert.deepEqual(viaGptq.scales, viaRtn.scales, `g${groupSize}: same statistics`);
    assert.deepEqual(dequantize(viaGptq), dequantize(viaRtn), `g${groupSize}: same weights`);
  }
});

test('GPTQ with outliers under a real Hessian: exact count, lower output error, act-order columns mapped back', async () => {
  const rows = 16;
  const cols = 64;
  const w = { shape: [rows, cols], data: heavyTailed(rows, cols, 11) };
  // H = XᵀX/N of correlated inputs with a few loud channels.
  const n = 256;
  const X = new Float64Array(n * cols);
  let s = 5;
  const rand = () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
  for (let t = 0; t < n; t++) {
    const shared = rand();
    for (let c = 0; c < cols; c++) X[t * cols + c] = (rand() + 0.5 * shared) * (c % 16 === 0 ? 8 : 1);
  }
  const H = new Float64Array(cols * cols);
  for (let t = 0; t < n; t++)
    for (let i = 0; i < cols; i++)
      for (let j = 0; j < cols; j++) H[i * cols + j]! += (X[t * cols + i]! * X[t * cols + j]!) / n;
  const outErr = (d: Float32Array) => {
    let e = 0;
    for (let t = 0; t < n; t++)
      for (let r = 0; r < rows; r++) {
        let y = 0;
        for (let c = 0; c < cols; c++) y += (w.data[r * cols + c]! - d[r * cols + c]!) * X[t * cols + c]!;
        e += y * y;
      }
    return e;
  };
  const engine = getDefaultEngine();
  for (const actOrder of [false, true]) {
    const options: GptqOptions = { blockSize: 32, damp: 0.01, actOrder };
    const prep = await prepareHessian(H, cols, options, engine);
    const grid = makeGrid(int3(32));
    const plain = await gptqQuantize(w, prep, grid, options, engine);
    const selector = new GptqOutlierSelector(0.02, prep.U);
    const g = await gptqQuantize(w, prep, grid, options, engine, 'w', selector);
    const q: QuantizedTensor = { ...g, outliers: selector.finish(prep.perm) };
    assert.equal(q.outliers!.values.length, 20);
    for (let r = 0; r < rows; r++)
      for (let k = q.outliers!.rowPtr[r]! + 1; k < q.outliers!.rowPtr[r + 1]!; k++)
        assert.ok(q.outliers!.colIndex[k]! > q.outliers!.colIndex[k - 1]!, 'columns increase within a row');
    const a = outErr(dequantize(plain));
    const b = outErr(dequantize(q));
    assert.ok(b < 0.8 * a, `act-order ${actOrder}: ‖(W − Ŵ)X‖² ${b} vs plain ${a}`);
  }
});

describeSideModels('outliers on the real models', (key, bench) => {
  for (const method of ['rtn', 'gptq'] as const) {
    test(`${method} W3 + 1% outliers: lower KLD at its stored bits/weight`, async () => {
      const plain = await bench().run(method);
      const spqr = await bench().run(method, { outliers: 0.01 });
      assertMeasured(`${key} ${method}`, plain.result, PLAIN_W3[key]![method].measured);
      assert.ok(Math.abs(plain.bitsPerWeight - PLAIN_W3[key]![method].bits) < 1e-4);
      const pinned = SIDE_W3.outliers[key]![method];
      assertMeasured(`${key} ${method}+outliers`, spqr.result, pinned.measured);
      assert.ok(Math.abs(spqr.bitsPerWeight - pinned.bits) < 1e-4, `${spqr.bitsPerWeight} bits/weight`);
      assert.ok(spqr.result.kld! < plain.result.kld!, `KLD ${spqr.result.kld} vs ${plain.result.kld}`);
      // Honest size: plain bits + per layer round(1% · rows · cols) × (16 + 16) + (rows + 1) × 16.
      let weightsCount = 0;
      let extra = 0;
      for (const q of spqr.tensors.values()) {
        weightsCount += q.rows * q.cols;
        const nnz = Math.round(0.01 * q.rows * q.cols);
        assert.equal(q.outliers!.values.length, nnz, 'exactly 1% per layer');
        extra += nnz * 32 + (q.rows + 1) * 16;
      }
      assert.ok(Math.abs(spqr.bitsPerWeight - (plain.bitsPerWeight + extra / weightsCount)) < 1e-12);
    });
  }
});

describe('outliers through the checkpoint and the exporters', {
  skip: !assetsPresent && 'no ../shared/assets',
}, () => {
  const dir = tempDir('ptq-outliers-');
  const out = path.join(dir, 'ckpt');
  let written: Map<string, QuantizedTensor>;
  let model: LoadedModel;
  before(async () => {
    model = await loadModel(path.join(ASSETS, 'models/stories260k/stories260K.bin'));
    const q = await quantizeModel(model.config, model.weights, {
      method: 'rtn',
      grid: int3(0),
      outliers: 0.01,
    });
    written = q.quantization.tensors;
    await writePtqCheckpoint(out, { ...model, weights: q.weights }, q.quantization);
  });

  test('an outlier fraction outside [0, 0.1] is a UsageError', async () => {
    for (const bad of [-0.01, 0.2, Number.NaN]) {
      await assert.rejects(
        quantizeModel(model.config, model.weights, { method: 'rtn', grid: int3(0), outliers: bad }),
        (e: unknown) => e instanceof UsageError && /outlier fraction out of range/.test(String(e)),
      );
    }
  });

  test('ptq quantize --outliers with --export is refused before any work', async () => {
    const args = {
      method: 'rtn',
      grid: int3(0),
      output: path.join(dir, 'never'),
      outliers: 0.01,
      export: 'gguf',
    };
    await assert.rejects(
      quantizeCommand('/nonexistent/model', args as unknown as QuantizeArgs, { json: true, log: () => {} }),
      (e: unknown) => e instanceof UsageError && /GGUF|gguf/.test(String(e)) && /outliers/.test(String(e)),
    );
  });

  test('CSR written and read back bit-exactly', async () => {
    await checkPtqCheckpoint(out);
    const read = await readPtqCheckpoint(out);
    for (const [name, q] of written) {
      const r = read.quantization.tensors.get(name)!;
      assert.deepEqual(r.outliers, q.outliers, name);
      assert.deepEqual(read.weights.get(name)!.data, dequantize(q), name);
      assert.equal(storedBits(r), storedBits(q));
    }
  });

  test('a column index out of range is a FormatError', async () => {
    const bad = path.join(dir, 'bad');
    const saved = await loadModel(out);
    const tensors = new Map(written);
    const [name, q] = [...tensors][0]!;
    const colIndex = q.outliers!.colIndex.slice();
    colIndex[0] = q.cols;
    tensors.set(name, { ...q, outliers: { ...q.outliers!, colIndex } });
    await writePtqCheckpoint(bad, saved, { method: 'rtn', settings: {}, tensors });
    await assert.rejects(
      checkPtqCheckpoint(bad),
      (e: unknown) => e instanceof FormatError && /outlier column/.test(String(e)),
    );
  });

  test('GGUF and GPTQ exporters refuse outliers instead of dropping them', async () => {
    const saved = await loadModel(out);
    await assert.rejects(exportGguf(saved, path.join(dir, 'x.gguf'), { type: 'auto' }), UsageError);
    await assert.rejects(exportGptq(saved, path.join(dir, 'x-gptq')), UsageError);
  });
});
