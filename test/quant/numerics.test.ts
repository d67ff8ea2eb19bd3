/**
 * Numerical edge cases have defined, reported behaviour and never put NaN/Inf in an output:
 * non-finite weights are refused by name, all-zero and constant blocks get finite scales with
 * hand-computed codes, f16 scale overflow is refused with the fix, degenerate GPTQ Hessians
 * escalate the dampening with a warning (or fail clearly), and too little calibration text is
 * refused before any work.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { getDefaultEngine } from '../../src/compute/index.js';
import { NumericError, UsageError } from '../../src/errors.js';
import { packBits } from '../../src/formats/bitpack.js';
import { type GridSpec, IntGrid } from '../../src/formats/grid.js';
import { dequantize, type QuantizedTensor, unpackCodes } from '../../src/formats/quantized-tensor.js';
import { loadModel } from '../../src/model/load.js';
import { sampleCalibrationWindows } from '../../src/quant/calibrate.js';
import { GPTQ_DEFAULTS, prepareHessian } from '../../src/quant/methods/gptq.js';
import { quantizeRtn } from '../../src/quant/methods/rtn.js';
import { assertFiniteQuantized, assertFiniteQuantizedParams } from '../../src/quant/numerics.js';
import { quantizeModel } from '../../src/quant/quantize-model.js';
import type { TensorMap } from '../../src/tensor.js';
import { REPO } from '../helpers.js';

const MODEL = path.join(REPO, 'models/tinystories-656k');
const grid = (bits: number, symmetric: boolean, scaleDtype: GridSpec['scaleDtype'] = 'f16'): GridSpec => ({
  bits,
  symmetric,
  granularity: 'group',
  groupSize: 4,
  scaleDtype,
});

function withValue(weights: TensorMap, name: string, index: number, value: number): TensorMap {
  const copy = new Map(weights);
  const t = weights.get(name)!;
  const data = t.data.slice();
  data[index] = value;
  copy.set(name, { shape: t.shape, data });
  return copy;
}

test('NaN or Inf anywhere in the model: NumericError naming the tensor and position', async () => {
  const m = await loadModel(MODEL);
  const spec = grid(4, true);
  const up = 'model.layers.1.mlp.up_proj.weight'; // [384, 128]
  await assert.rejects(
    quantizeModel(m.config, withValue(m.weights, up, 130, Number.NaN), { method: 'rtn', grid: spec }),
    (e: unknown) =>
      e instanceof NumericError &&
      e.message ===
        `'${up}': weight is not finite; expected finite values in every tensor of a model to quantize, got NaN at row 1, column 2 (the checkpoint is corrupt or was saved after a diverged training step)`,
  );
  // Not only the quantized linears: a calibrated method would carry an Inf embedding into every Hessian.
  await assert.rejects(
    quantizeModel(m.config, withValue(m.weights, 'model.embed_tokens.weight', 5, -Infinity), {
      method: 'rtn',
      grid: spec,
    }),
    /'model\.embed_tokens\.weight': weight is not finite; .* got -Infinity at row 0, column 5/,
  );
});

test('all-zero and constant blocks: finite scales, hand-computed codes, exact zeros', () => {
  // One row, three groups of 4: zeros, constant 1.5, constant -1.5.
  const w = {
    shape: [1, 12],
    data: Float32Array.from([0, 0, 0, 0, 1.5, 1.5, 1.5, 1.5, -1.5, -1.5, -1.5, -1.5]),
  };
  // Asymmetric int4: range widened to contain 0. Zeros: span [-1, 1] -> s = f16(2/15), z = round(1/s) = 8.
  const asym = quantizeRtn(w, new IntGrid(grid(4, false)));
  const s0 = 0.1333007812; // f16(2/15)
  const s1 = 0.0999755859375; // f16(1.5/15)
  assert.ok(Math.abs(asym.scales[0]! - s0) < 1e-9 && asym.scales[1] === s1 && asym.scales[2] === s1);
  assert.deepEqual([...asym.zeros], [8, 0, 15]);
  assert.deepEqual([...unpackCodes(asym)], [8, 8, 8, 8, 15, 15, 15, 15, 0, 0, 0, 0]);
  const dq = dequantize(asym);
  assert.deepEqual([...dq.subarray(0, 4)], [0, 0, 0, 0]);
  assert.equal(dq[4], 15 * s1); // 1.4996337890625
  assert.equal(dq[8], -15 * s1);
  // Symmetric int4 (z = 8, s = 2·1.5/15 = f16(0.2)): 1.5/s = 7.5 -> 8 + 8 = 16 clamps to 15, i.e. 7·s.
  const sym = quantizeRtn(w, new IntGrid(grid(4, true)));
  const s = 0.199951171875; // f16(0.2)
  assert.deepEqual([...unpackCodes(sym)], [8, 8, 8, 8, 15, 15, 15, 15, 0, 0, 0, 0]);
  assert.equal(dequantize(sym)[4], 7 * s);
  assert.equal(dequantize(sym)[8], -8 * s);
  for (const q of [asym, sym]) assert.ok([...q.scales].every((x) => Number.isFinite(x) && x > 0));
  // Values below f16's resolution: the scale falls back to the smallest subnormal, codes to the zero point.
  const tiny = quantizeRtn(
    { shape: [1, 4], data: Float32Array.from([1e-30, 0, -1e-30, 0]) },
    new IntGrid(grid(3, true)),
  );
  assert.equal(tiny.scales[0], 2 ** -24);
  assert.deepEqual([...dequantize(tiny)], [0, 0, 0, 0]);
});

test('weights beyond the f16 scale range: NumericError with the fix; f32 scales work', async () => {
  const m = await loadModel(MODEL);
  const q = 'model.layers.0.self_attn.q_proj.weight';
  // int4 symmetric: s = 2·1e6/15 ≈ 133333 > 65504 (f16 max) rounds to Inf.
  const huge = withValue(m.weights, q, 0, 1e6);
  await assert.rejects(
    quantizeModel(m.config, huge, { method: 'rtn', grid: grid(4, true) }),
    (e: unknown) =>
      e instanceof NumericError &&
      e.message ===
        `'${q}': scale is not finite; expected finite scales in f16, got Infinity at block 0 (the weights exceed the range of the scale dtype; use --scale-dtype f32 or bf16)`,
  );
  const ok = await quantizeModel(m.config, huge, { method: 'rtn', grid: grid(4, true, 'f32') });
  assert.equal(ok.weights.get(q)!.data[0], Math.fround(7 * Math.fround((2 * 1e6) / 15))); // 1e6/s = 7.5 -> clamps to 15: 7·s
});

test('GPTQ: an indefinite Hessian escalates the dampening with a warning; a NaN Hessian is refused', async () => {
  const engine = getDefaultEngine();
  // Eigenvalues 2.05 and -0.05 (mean diagonal 1): damp 0.01 leaves it indefinite, 0.1 fixes it.
  const H = Float64Array.from([1, 1.05, 1.05, 1]);
  const warnings: Error[] = [];
  const listener = (w: Error) => warnings.push(w);
  process.on('warning', listener);
  try {
    const p = await prepareHessian(H, 2, GPTQ_DEFAULTS, engine, 'layer.x');
    assert.ok(Math.abs(p.damp - 0.1) < 1e-12);
    // U is the upper Cholesky factor of (H + 0.1 I)⁻¹: Uᵀ U (H + 0.1 I) = I.
    const A = [1.1, 1.05, 1.05, 1.1];
    const Hinv = [
      p.U[0]! * p.U[0]!,
      p.U[0]! * p.U[1]!,
      p.U[1]! * p.U[0]!,
      p.U[1]! * p.U[1]! + p.U[3]! * p.U[3]!,
    ];
    const I = [
      Hinv[0]! * A[0]! + Hinv[1]! * A[2]!,
      Hinv[0]! * A[1]! + Hinv[1]! * A[3]!,
      Hinv[2]! * A[0]! + Hinv[3]! * A[2]!,
      Hinv[2]! * A[1]! + Hinv[3]! * A[3]!,
    ];
    for (const [i, v] of [1, 0, 0, 1].entries())
      assert.ok(Math.abs(I[i]! - v) < 1e-9, `(Uᵀ U A)[${i}] = ${I[i]}`);
    await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0]!.name, 'PtqWarning');
    assert.match(
      warnings[0]!.message,
      /^layer\.x: Hessian not positive definite with damp 0\.01; used damp 0\.1/,
    );
  } finally {
    process.off('warning', listener);
  }
  // Eigenvalue -3 of [[1, 4], [4, 1]]... +1 at most (damp 1): never positive definite.
  await assert.rejects(
    prepareHessian(Float64Array.from([1, 4, 4, 1]), 2, GPTQ_DEFAULTS, engine, 'layer.y'),
    (e: unknown) =>
      e instanceof NumericError &&
      /^'layer\.y': Hessian not positive definite at any dampening/.test(e.message),
  );
  await assert.rejects(
    prepareHessian(Float64Array.from([1, Number.NaN, Number.NaN, 1]), 2, GPTQ_DEFAULTS, engine, 'layer.z'),
    /'layer\.z': Hessian of the calibration inputs is not finite, got NaN at \[0, 1\]/,
  );
});

test('calibration text shorter than one window is refused before any work; shorter than nsamples windows overlaps', () => {
  assert.throws(
    () =>
      sampleCalibrationWindows(
        Array.from({ length: 100 }, (_, i) => i),
        { nsamples: 4, seqlen: 100, seed: 0 },
      ),
    (e: unknown) =>
      e instanceof UsageError && /calibration text too short; expected more than 100 tokens/.test(e.message),
  );
  // 101 tokens, 4 windows of 100: every window is one of the two possible, sampled with replacement (GPTQ's recipe).
  const w = sampleCalibrationWindows(
    Array.from({ length: 101 }, (_, i) => i),
    { nsamples: 4, seqlen: 100, seed: 0 },
  );
  for (let s = 0; s < 4; s++) assert.ok(w[s * 100] === 0 || w[s * 100] === 1);
});

test('assertFiniteQuantizedParams: the scale bound proves finiteness, or the full check decides', () => {
  const spec: GridSpec = { bits: 4, symmetric: true, granularity: 'group', groupSize: 2, scaleDtype: 'f32' };
  const tensor = (codes: number[], scale: number): QuantizedTensor => ({
    rows: 1,
    cols: 2,
    spec,
    qweight: packBits(codes, 4),
    scales: Float32Array.of(scale),
    zeros: Float32Array.of(8),
  });
  // |s| · (15 + 8) = 23 · 2^100: finite in float32, so no code can overflow.
  assert.doesNotThrow(() => assertFiniteQuantizedParams('w', tensor([0, 15], 2 ** 100)));
  // s = 2^124: the bound 23 · 2^124 overflows, but codes 8 and 9 dequantize to 0 and 2^124.
  assert.doesNotThrow(() => assertFiniteQuantizedParams('w', tensor([8, 9], 2 ** 124)));
  // s = 2^125: code 15 gives 7 · 2^125 = 1.75 · 2^127, finite (max ≈ 2^128); code 0 gives −2^128.
  const big = tensor([15, 0], 2 ** 125);
  const expected = (e: unknown) =>
    e instanceof NumericError &&
    e.message ===
      "'w': dequantized weight is not finite, got -Infinity at row 0, column 1 (scale × (code − zero) overflows float32: weights within a grid step of float32's largest value; check the checkpoint)";
  assert.throws(() => assertFiniteQuantized('w', big, dequantize(big)), expected);
  assert.throws(() => assertFiniteQuantizedParams('w', big), expected);
  assert.throws(
    () => assertFiniteQuantizedParams('w', tensor([0, 1], Number.NaN)),
    /'w': scale is not finite; expected finite scales in f32, got NaN at block 0/,
  );
});
