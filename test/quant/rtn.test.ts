import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ShapeError, UsageError } from '../../src/errors.js';
import { packBits } from '../../src/formats/bitpack.js';
import { type GridSpec, IntGrid, roundHalfEven } from '../../src/formats/grid.js';
import { roundToF16 } from '../../src/formats/half.js';
import { dequantize, storedBits, unpackCodes } from '../../src/formats/quantized-tensor.js';
import { quantizeRtn } from '../../src/quant/methods/rtn.js';
import { seededRandom } from '../helpers.js';

const grid = (g: Partial<GridSpec>) =>
  new IntGrid({ bits: 4, symmetric: true, granularity: 'group', groupSize: 4, scaleDtype: 'f32', ...g });

test('round half to even, like torch.round', () => {
  assert.deepEqual(
    [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4, -2.6].map(roundHalfEven),
    [0, 2, 2, -0, -2, -2, 2, -3],
  );
});

test('symmetric 4-bit: s = 2·max|w|/15, z = 8, codes by hand', () => {
  const q = quantizeRtn({ shape: [1, 4], data: Float32Array.of(-1.875, 0, 0.625, 1.125) }, grid({}));
  const s = 0.25; // 2 · 1.875 / 15, exact in binary
  assert.equal(q.scales[0], s);
  assert.equal(q.zeros[0], 8);
  // -7.5 -> -8 (tie to even) -> code 0; 0 -> 8; 2.5 -> 2 (tie to even) -> 10; 4.5 -> 4 -> 12.
  assert.deepEqual([...unpackCodes(q)], [0, 8, 10, 12]);
  assert.deepEqual([...dequantize(q)], [-2, 0, 0.5, 1]);
});

test('asymmetric 3-bit: range widened to include 0, z = round(-min/s)', () => {
  const q = quantizeRtn(
    { shape: [1, 4], data: Float32Array.of(0.5, 1, 2, 4.2) },
    grid({ bits: 3, symmetric: false }),
  );
  const s = Math.fround(Math.fround(4.2) / 7);
  assert.equal(q.scales[0], s);
  assert.equal(q.zeros[0], 0);
  assert.deepEqual([...unpackCodes(q)], [1, 2, 3, 7]);
});

test('f16 scales are rounded before the codes are chosen, so stored values dequantize exactly', () => {
  const rand = seededRandom(3);
  const w = Float32Array.from({ length: 8 * 64 }, () => rand() - 0.5);
  const q = quantizeRtn({ shape: [8, 64], data: w }, grid({ groupSize: 32, scaleDtype: 'f16' }));
  for (const s of q.scales) assert.equal(s, roundToF16(s));
  const deq = dequantize(q);
  // Every in-range weight is within half a step of its dequantized value.
  for (let i = 0; i < w.length; i++) {
    // Symmetric grids clip the top code (+max|w| maps to 7.5 steps, stored as 7): allow one step there.
    const step = q.scales[Math.floor(i / 32)]!;
    assert.ok(Math.abs(w[i]! - deq[i]!) <= step * (w[i]! > 6.5 * step ? 1 : 0.5) + 1e-7, `weight ${i}`);
  }
});

test('per-channel and per-tensor granularity; all-positive rows keep their full range', () => {
  const w = { shape: [2, 4], data: Float32Array.of(1, 2, 3, 4, 10, 20, 30, 40) };
  const pc = quantizeRtn(w, grid({ granularity: 'channel', bits: 8 }));
  assert.equal(pc.scales.length, 2);
  assert.deepEqual([...pc.scales], [Math.fround(8 / 255), Math.fround(80 / 255)]);
  const pt = quantizeRtn(w, grid({ granularity: 'tensor', bits: 8 }));
  assert.deepEqual([...pt.scales], [Math.fround(80 / 255)]);
});

test('bits per weight counts what is stored', () => {
  const w = { shape: [16, 64], data: new Float32Array(16 * 64).fill(0.1) };
  assert.equal(storedBits(quantizeRtn(w, grid({ groupSize: 32, scaleDtype: 'f16' }))) / w.data.length, 4.5);
  assert.equal(
    storedBits(quantizeRtn(w, grid({ groupSize: 32, symmetric: false, scaleDtype: 'f16' }))) / w.data.length,
    4 + 20 / 32,
  );
  assert.equal(
    storedBits(quantizeRtn(w, grid({ bits: 3, granularity: 'channel', scaleDtype: 'f16' }))) / w.data.length,
    3 + 16 / 64,
  );
});

test('all-zero groups get a unit range (GPTQ) instead of a zero scale', () => {
  const q = quantizeRtn({ shape: [1, 4], data: new Float32Array(4) }, grid({}));
  assert.equal(q.scales[0], Math.fround(2 / 15));
  assert.deepEqual([...dequantize(q)], [0, 0, 0, 0]);
});

test('bad grids are rejected with actionable errors', () => {
  assert.throws(() => grid({ bits: 1 }), UsageError);
  assert.throws(() => grid({ bits: 9 }), /bits out of range; expected an integer from 2 to 8, got 9/);
  assert.throws(
    () => quantizeRtn({ shape: [1, 6], data: new Float32Array(6) }, grid({ groupSize: 4 }), 'layer.weight'),
    (e: unknown) => e instanceof ShapeError && /'layer.weight'.*divisible by 4, got 6/.test(e.message),
  );
});

/** The per-element reference: IntGrid.blockParams and IntGrid.encode per weight, then packBits. */
function referenceRtn(w: Float32Array, rows: number, cols: number, g: IntGrid) {
  const [, blockCols] = g.blockShape(rows, cols);
  const scales: number[] = [];
  const zeros: number[] = [];
  const codes = new Uint8Array(rows * cols);
  let ties = 0;
  for (let r = 0; r < rows; r++) {
    for (let c0 = 0; c0 < cols; c0 += blockCols) {
      const { scale, zero } = g.blockParams(w, cols, r, r + 1, c0, c0 + blockCols);
      scales.push(scale);
      zeros.push(zero);
      for (let c = c0; c < c0 + blockCols; c++) {
        const v = w[r * cols + c]! / scale;
        if (v - Math.floor(v) === 0.5) ties++;
        codes[r * cols + c] = g.encode(w[r * cols + c]!, scale, zero);
      }
    }
  }
  return { qweight: packBits(codes, g.spec.bits), scales, zeros, ties };
}

test('the fused row loop (RtnRows) gives the per-element reference codes, scales and zeros', () => {
  const rand = seededRandom(21);
  const rows = 6;
  // Row kinds: uniform floats; multiples of 1/64 (many exact ties x/s = k + 1/2); all zero; constant;
  // tiny (scale below the f16 range -> smallest scale); huge (f16 scale overflows to Inf).
  const rowValue = [
    () => rand() - 0.5,
    () => Math.round((rand() - 0.5) * 128) / 64,
    () => 0,
    () => 0.3,
    () => (rand() - 0.5) * 1e-9,
    () => (rand() - 0.5) * 1e7,
  ];
  let ties = 0;
  for (let bits = 2; bits <= 8; bits++) {
    for (const symmetric of [true, false]) {
      for (const [granularity, groupSize, cols] of [
        ['group', 32, 96],
        ['group', 3, 9], // odd groups: rows and groups start mid-byte
        ['channel', 0, 10],
      ] as const) {
        for (const scaleDtype of ['f16', 'bf16', 'f32', 'e4m3'] as const) {
          const g = grid({ bits, symmetric, granularity, groupSize, scaleDtype });
          const w = new Float32Array(rows * cols);
          for (let i = 0; i < w.length; i++) w[i] = rowValue[Math.floor(i / cols)]!();
          const q = quantizeRtn({ shape: [rows, cols], data: w }, g);
          const ref = referenceRtn(w, rows, cols, g);
          const label = `int${bits} ${symmetric ? 'sym' : 'asym'} ${granularity} ${groupSize} ${scaleDtype}`;
          assert.deepEqual(q.qweight, ref.qweight, label);
          assert.deepEqual([...q.scales], ref.scales, label);
          assert.deepEqual([...q.zeros], ref.zeros, label);
          ties += ref.ties;
        }
      }
    }
  }
  // The dyadic rows do exercise round-half-to-even.
  assert.ok(ties >= 250, `${ties} ties`);
});
