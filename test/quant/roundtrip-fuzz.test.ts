/**
 * Property-based round trips of every integer grid (bits 2..8, symmetric/asymmetric, per
 * tensor / per channel / per group, f16/bf16/f32 scales) and of bit packing (fast-check):
 *  - pack → unpack is the identity on codes of 1..8 bits, in ceil(n·bits/8) bytes;
 *  - RTN's stored codes are exactly grid.encode(w, s, z) of its stored (s, z), within
 *    [0, 2^b − 1]; dequantize is s·(q − z) exactly; scales are finite and positive;
 *  - the error |w − ŵ| is at most s/2 for symmetric grids and s for asymmetric ones (the
 *    rounded zero point shifts the range by up to s/2), plus the scale dtype's rounding;
 *  - the ptqkit checkpoint stores and reads the same codes, scales and zeros bit-exactly
 *    (on a smaller budget: it writes a file per case).
 * FUZZ_RUNS / FUZZ_SEED as in test/io/fuzz.test.ts.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { packBits, packedByteLength, unpackBits } from '../../src/formats/bitpack.js';
import { type GridSpec, IntGrid } from '../../src/formats/grid.js';
import { dequantize, unpackCodes } from '../../src/formats/quantized-tensor.js';
import { quantizeRtn } from '../../src/quant/methods/rtn.js';
import { FUZZ_RUNS, fuzzParams, fuzzScratch } from '../fuzz-settings.js';

const RUNS = FUZZ_RUNS;
const params = fuzzParams;
const work = fuzzScratch('ptq-rt-fuzz-');

test('bit packing: unpack(pack(codes)) = codes for 1..8 bits, ceil(n·bits/8) bytes', () => {
  const t0 = performance.now();
  fc.assert(
    fc.property(
      fc
        .integer({ min: 1, max: 8 })
        .chain((bits) =>
          fc.tuple(
            fc.constant(bits),
            fc.array(fc.integer({ min: 0, max: 2 ** bits - 1 }), { maxLength: 300 }),
          ),
        ),
      ([bits, codes]) => {
        const packed = packBits(codes, bits);
        assert.equal(packed.length, packedByteLength(codes.length, bits));
        assert.equal(packed.length, Math.ceil((codes.length * bits) / 8));
        assert.deepEqual([...unpackBits(packed, bits, codes.length)], codes);
        // LSB-first: code i occupies bits [i·bits, (i+1)·bits) of the little-endian stream.
        for (let i = 0; i < codes.length; i++) {
          let v = 0;
          for (let k = 0; k < bits; k++) {
            const bit = i * bits + k;
            v |= ((packed[bit >> 3]! >> (bit & 7)) & 1) << k;
          }
          assert.equal(v, codes[i]);
        }
      },
    ),
    params(),
  );
  console.log(`  bit packing: ${RUNS} cases in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
});

/** A weight matrix with the cases that break grids: zeros, constant rows, one sign, outliers. */
const weights = fc
  .record({
    rows: fc.integer({ min: 1, max: 6 }),
    groups: fc.integer({ min: 1, max: 4 }),
    groupSize: fc.constantFrom(1, 2, 4, 8),
    kind: fc.constantFrom('random', 'zeros', 'constant', 'positive', 'outlier', 'tiny'),
    scale: fc.constantFrom(1e-3, 0.05, 1, 300),
    seed: fc.integer(),
  })
  .map(({ rows, groups, groupSize, kind, scale, seed }) => {
    const cols = groups * groupSize;
    let s = seed >>> 0;
    const rand = () => {
      s = (s * 1664525 + 1013904223) >>> 0;
      return s / 2 ** 32;
    };
    const data = Float32Array.from({ length: rows * cols }, (_, i) => {
      switch (kind) {
        case 'zeros':
          return 0;
        case 'constant':
          return scale * (Math.floor(i / cols) % 2 ? -0.7 : 0.7);
        case 'positive':
          return scale * rand();
        case 'outlier':
          return i === 0 ? scale * 40 : scale * (rand() * 2 - 1);
        case 'tiny':
          return 1e-9 * (rand() * 2 - 1);
        default:
          return scale * (rand() * 2 - 1);
      }
    });
    return { rows, cols, groupSize, data };
  });

const spec = fc.record({
  bits: fc.integer({ min: 2, max: 8 }),
  symmetric: fc.boolean(),
  granularity: fc.constantFrom('tensor' as const, 'channel' as const, 'group' as const),
  scaleDtype: fc.constantFrom('f16' as const, 'bf16' as const, 'f32' as const),
});

test('RTN on every integer grid: codes, parameters and dequantized values are consistent and bounded', () => {
  const t0 = performance.now();
  fc.assert(
    fc.property(weights, spec, (w, s) => {
      const gridSpec: GridSpec = { ...s, groupSize: w.groupSize };
      const grid = new IntGrid(gridSpec);
      const q = quantizeRtn({ shape: [w.rows, w.cols], data: w.data }, grid);
      const codes = unpackCodes(q);
      const deq = dequantize(q);
      const [blockRows, blockCols] = grid.blockShape(w.rows, w.cols);
      const groups = w.cols / blockCols;
      assert.equal(q.scales.length, (w.rows / blockRows) * groups);
      assert.equal(q.qweight.length, Math.ceil((w.rows * w.cols * s.bits) / 8));
      // Relative rounding of the scale to its storage dtype.
      const rel = s.scaleDtype === 'f32' ? 2 ** -23 : s.scaleDtype === 'f16' ? 2 ** -10 : 2 ** -7;
      for (let r = 0; r < w.rows; r++) {
        for (let c = 0; c < w.cols; c++) {
          const p = Math.floor(r / blockRows) * groups + Math.floor(c / blockCols);
          const [scale, zero] = [q.scales[p]!, q.zeros[p]!];
          assert.ok(Number.isFinite(scale) && scale > 0, `scale ${scale}`);
          assert.ok(Number.isInteger(zero) && zero >= 0 && zero <= grid.maxq, `zero ${zero}`);
          const i = r * w.cols + c;
          const x = w.data[i]!;
          assert.equal(codes[i], grid.encode(x, scale, zero));
          assert.ok(codes[i]! <= grid.maxq);
          assert.equal(deq[i], Math.fround(scale * (codes[i]! - zero)));
          // Error bound: s/2 (symmetric; the top code clamps by at most s/2) or s (asymmetric),
          // widened by the block range's share of the scale rounding.
          // Subnormal f16/bf16 scales round with an absolute error of half their spacing instead.
          const scaleError = Math.max(
            rel * scale,
            s.scaleDtype === 'f16' ? 2 ** -25 : s.scaleDtype === 'bf16' ? 2 ** -134 : 0,
          );
          const bound = (s.symmetric ? scale / 2 : scale) + scaleError * grid.maxq + 1e-30;
          const err = Math.abs(x - deq[i]!);
          assert.ok(
            err <= bound,
            `|w − ŵ| = ${err} > ${bound} (w ${x}, s ${scale}, z ${zero}, q ${codes[i]})`,
          );
        }
      }
    }),
    params(),
  );
  console.log(`  RTN grids: ${RUNS} cases in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
});

test('ptqkit checkpoint: quantized tensors survive write → read bit-exactly on every grid', async () => {
  const { writeSafetensors, SafetensorsModel } = await import('../../src/io/safetensors.js');
  const { encodeBf16, encodeF16, decodeBf16, decodeF16 } = await import('../../src/formats/half.js');
  const file = path.join(work, 'q.safetensors');
  const t0 = performance.now();
  const runs = Math.ceil(RUNS / 10);
  await fc.assert(
    fc.asyncProperty(weights, spec, async (w, s) => {
      const q = quantizeRtn(
        { shape: [w.rows, w.cols], data: w.data },
        new IntGrid({ ...s, groupSize: w.groupSize }),
      );
      const enc =
        s.scaleDtype === 'f16' ? encodeF16 : s.scaleDtype === 'bf16' ? encodeBf16 : (x: Float32Array) => x;
      const dtype = s.scaleDtype === 'f16' ? 'F16' : s.scaleDtype === 'bf16' ? 'BF16' : 'F32';
      await writeSafetensors(file, [
        { name: 'qweight', dtype: 'U8', shape: [q.qweight.length], data: q.qweight },
        { name: 'scales', dtype, shape: [q.scales.length], data: enc(q.scales) },
        {
          name: 'qzeros',
          dtype: 'U8',
          shape: [Math.ceil((q.zeros.length * s.bits) / 8)],
          data: packBits(q.zeros, s.bits),
        },
      ]);
      const st = await SafetensorsModel.open(file);
      try {
        assert.deepEqual(await st.readRaw('qweight'), q.qweight);
        const raw = await st.readRaw('scales');
        const scales =
          dtype === 'F32'
            ? new Float32Array(raw.buffer)
            : (dtype === 'F16' ? decodeF16 : decodeBf16)(new Uint16Array(raw.buffer));
        assert.deepEqual([...scales], [...q.scales]);
        assert.deepEqual([...unpackBits(await st.readRaw('qzeros'), s.bits, q.zeros.length)], [...q.zeros]);
      } finally {
        await st.close();
      }
    }),
    params(runs),
  );
  console.log(`  checkpoint round trips: ${runs} cases in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
});
