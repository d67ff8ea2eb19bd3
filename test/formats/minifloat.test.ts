/**
 * Element and scale formats against their specs' corner values:
 *  - OCP 8-bit Floating Point Specification (OFP8) v1.0, Table 1: E4M3 max 448 = S.1111.110,
 *    NaN S.1111.111, no Inf; E5M2 max 57344 = S.11110.11, Inf S.11111.00, NaN S.11111.{01,10,11};
 *    min normal 2^-6 / 2^-14, min subnormal 2^-9 / 2^-16.
 *  - OCP Microscaling Formats (MX) v1.0, §5.3: FP6 E3M2 max 28, min normal 0.25, min subnormal
 *    0.0625; FP6 E2M3 max 7.5, min normal 1, min subnormal 0.125; FP4 E2M1 values
 *    ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}; §5.4.1: E8M0 bias 127, 0xFF = NaN.
 * Rounding (roundTiesToEven) and saturation are also checked against an independent brute
 * force: the nearest entry of the decoded value table, ties to the even code.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FormatError } from '../../src/errors.js';
import {
  ELEMENT_FORMATS,
  FP4_E2M1,
  FP6_E2M3,
  FP6_E3M2,
  FP8_E4M3,
  FP8_E5M2,
  SCALE_FORMATS,
  TRIT_PACKING,
} from '../../src/formats/element-formats.js';
import { E8M0, type Minifloat } from '../../src/formats/minifloat.js';
import { seededRandom } from '../helpers.js';

test('FP8 E4M3 (OFP8): 0x7E = 448, 0x7F/0xFF NaN, min normal 0x08 = 2^-6, min subnormal 0x01 = 2^-9', () => {
  const f = FP8_E4M3;
  assert.equal(f.decode(0x7e), 448);
  assert.equal(f.decode(0xfe), -448);
  assert.ok(Number.isNaN(f.decode(0x7f)) && Number.isNaN(f.decode(0xff)));
  assert.equal(f.decode(0x78), 256); // S.1111.000 is a normal number: E4M3 has no Inf
  assert.equal(f.decode(0x38), 1);
  assert.equal(f.decode(0x08), 2 ** -6);
  assert.equal(f.decode(0x07), 7 * 2 ** -9); // max subnormal 0.875 · 2^-6
  assert.equal(f.decode(0x01), 2 ** -9);
  assert.ok(Object.is(f.decode(0x80), -0));
  assert.deepEqual([f.max, f.minNormal, f.minSubnormal, f.emax], [448, 2 ** -6, 2 ** -9, 8]);
  assert.equal(f.values.filter(Number.isNaN).length, 2);
});

test('FP8 E4M3: saturating conversion clamps to ±448 (incl. ±Inf), NaN stays NaN; without saturation 464 ties to 448, above is NaN', () => {
  const f = FP8_E4M3;
  assert.equal(f.encode(448), 0x7e);
  assert.equal(f.encode(449), 0x7e);
  assert.equal(f.encode(464), 0x7e);
  assert.equal(f.encode(1e9), 0x7e);
  assert.equal(f.encode(Infinity), 0x7e);
  assert.equal(f.encode(-Infinity), 0xfe);
  assert.equal(f.encode(Number.NaN), 0x7f);
  // Non-saturating (OFP8 overflow rule): 464 is halfway 448 (mantissa 110, even) and 480 → 448.
  assert.equal(f.encode(464, false), 0x7e);
  assert.equal(f.encode(464.5, false), 0x7f);
  assert.equal(f.encode(-500, false), 0xff);
  assert.equal(f.encode(Infinity, false), 0x7f);
});

test('FP8 E4M3: round to nearest, ties to even, in normal and subnormal ranges', () => {
  const f = FP8_E4M3;
  assert.equal(f.encode(1.0625), 0x38); // halfway 1 (…000) and 1.125 (…001) → 1
  assert.equal(f.encode(1.1875), 0x3a); // halfway 1.125 (…001) and 1.25 (…010) → 1.25
  assert.equal(f.encode(1.0626), 0x39);
  assert.equal(f.encode(2 ** -10), 0x00); // half the min subnormal → 0 (even)
  assert.equal(f.encode(2 ** -10 * 1.0001), 0x01);
  assert.equal(f.encode(3 * 2 ** -10), 0x02); // halfway codes 1 and 2 → 2
  assert.equal(f.encode(7.5 * 2 ** -9), 0x08); // halfway max subnormal 0x07 and min normal 0x08 → 0x08
  assert.equal(f.encode(-1.1875), 0xba);
  assert.equal(f.encode(240), 0x77); // 240 = 1.875 · 2^7
  assert.equal(f.encode(248), 0x78); // halfway 240 (…111) and 256 → 256 (carry into the next binade)
});

test('FP8 E5M2 (OFP8): 0x7B = 57344, 0x7C = +Inf, 0xFC = −Inf, 0x7D-0x7F NaN, min normal 2^-14, min subnormal 2^-16', () => {
  const f = FP8_E5M2;
  assert.equal(f.decode(0x7b), 57344);
  assert.equal(f.decode(0x7c), Infinity);
  assert.equal(f.decode(0xfc), -Infinity);
  for (const c of [0x7d, 0x7e, 0x7f, 0xfd, 0xfe, 0xff]) assert.ok(Number.isNaN(f.decode(c)));
  assert.equal(f.decode(0x3c), 1);
  assert.equal(f.decode(0x04), 2 ** -14);
  assert.equal(f.decode(0x01), 2 ** -16);
  assert.deepEqual([f.max, f.emax], [57344, 15]);
  // Saturating: overflow and Inf → ±57344; without saturation the halfway point 61440 rounds to
  // even, which is the Inf pattern (57344's mantissa 11 is odd), and NaN is the quiet 0x7E.
  assert.equal(f.encode(61440), 0x7b);
  assert.equal(f.encode(Infinity), 0x7b);
  assert.equal(f.encode(-1e6), 0xfb);
  assert.equal(f.encode(61439, false), 0x7b);
  assert.equal(f.encode(61440, false), 0x7c);
  assert.equal(f.encode(-Infinity, false), 0xfc);
  assert.equal(f.encode(Number.NaN), 0x7e);
  assert.equal(f.encode(1.125), 0x3c); // halfway 1 (…00) and 1.25 (…01) → 1
  assert.equal(f.encode(1.375), 0x3e); // halfway 1.25 (…01) and 1.5 (…10) → 1.5
});

test('FP6 E3M2 and E2M3 (OCP MX §5.3.2): max, min normal, min subnormal; always saturating; NaN has no code', () => {
  const cases: [Minifloat, number, number, number, number][] = [
    // format, max, min normal, min subnormal, code of 1.0
    [FP6_E3M2, 28, 0.25, 0.0625, 0x0c],
    [FP6_E2M3, 7.5, 1, 0.125, 0x08],
  ];
  for (const [f, max, minNormal, minSub, one] of cases) {
    assert.equal(f.bits, 6);
    assert.equal(f.decode(0x1f), max);
    assert.equal(f.decode(0x3f), -max);
    assert.deepEqual([f.max, f.minNormal, f.minSubnormal], [max, minNormal, minSub]);
    assert.equal(f.decode(0x01), minSub);
    assert.equal(f.decode(one), 1);
    assert.equal(f.values.filter((v) => !Number.isFinite(v)).length, 0);
    assert.equal(f.encode(1000), 0x1f);
    assert.equal(f.encode(Infinity, false), 0x1f);
    assert.equal(f.encode(-1000, false), 0x3f);
    assert.throws(() => f.encode(Number.NaN), FormatError);
  }
  assert.equal(FP6_E3M2.encode(1.125), 0x0c); // halfway 1 and 1.25 → 1
  assert.equal(FP6_E3M2.encode(26), 0x1e); // halfway 24 (…10) and 28 (…11) → 24
  assert.equal(FP6_E2M3.encode(1.0625), 0x08); // halfway 1 and 1.125 → 1
  assert.equal(FP6_E2M3.encode(7.25), 0x1e); // halfway 7 (…110) and 7.5 → 7
});

test('FP4 E2M1 (OCP MX §5.3.3): codes 0-15 are ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}; ties as compressed-tensors cast_to_fp4', () => {
  assert.deepEqual([...FP4_E2M1.values], [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6]);
  assert.deepEqual([FP4_E2M1.max, FP4_E2M1.minNormal, FP4_E2M1.minSubnormal, FP4_E2M1.emax], [6, 1, 0.5, 2]);
  // compressed-tensors FP4_E2M1_DATA.cast_to_fp4 thresholds: ≤0.25→0, <0.75→0.5, ≤1.25→1, <1.75→1.5,
  // ≤2.5→2, <3.5→3, ≤5→4, >5→6: exactly round-half-to-even on this grid.
  const cases: [number, number][] = [
    [0.25, 0],
    [0.2500001, 0.5],
    [0.75, 1],
    [1.25, 1],
    [1.75, 2],
    [2.5, 2],
    [3.5, 4],
    [5, 4],
    [5.0001, 6],
    [7, 6],
    [1e30, 6],
  ];
  for (const [x, v] of cases) {
    assert.equal(FP4_E2M1.round(x), v, `${x}`);
    assert.equal(FP4_E2M1.round(-x), -v, `${-x}`);
  }
});

test('E8M0 (OCP MX §5.4.1): 0x7F = 1.0, 0x00 = 2^-127, 0xFE = 2^127, 0xFF NaN; exponents clamp low, overflow to NaN', () => {
  assert.equal(E8M0.decode(0x7f), 1);
  assert.equal(E8M0.decode(0x00), 2 ** -127);
  assert.equal(E8M0.decode(0xfe), 2 ** 127);
  assert.ok(Number.isNaN(E8M0.decode(0xff)));
  assert.equal(E8M0.encode(1), 0x7f);
  assert.equal(E8M0.encode(0.25), 0x7d);
  assert.equal(E8M0.encode(Number.NaN), 0xff);
  assert.equal(E8M0.fromExponent(-3), 124);
  assert.equal(E8M0.fromExponent(-200), 0);
  assert.equal(E8M0.fromExponent(128), 0xff);
  assert.throws(() => E8M0.encode(3), FormatError);
  // 2^-127 is an f32 subnormal: the scale survives a Float32Array exactly.
  assert.equal(Float32Array.of(2 ** -127)[0], 2 ** -127);
});

/** Independent reference: the nearest finite table value, ties to the even code, saturating. */
function bruteForce(f: Minifloat, x: number): number {
  let best = -1;
  for (let c = 0; c < f.values.length; c++) {
    const v = f.values[c]!;
    if (!Number.isFinite(v) || x < 0 !== (Object.is(v, -0) || v < 0)) continue;
    if (best < 0) {
      best = c;
      continue;
    }
    const d = Math.abs(v - x);
    const bd = Math.abs(f.values[best]! - x);
    if (d < bd || (d === bd && c % 2 === 0 && best % 2 === 1)) best = c;
  }
  return best;
}

test('every minifloat: each finite code round-trips; midpoints and random values match the brute-force nearest-even search', () => {
  const rand = seededRandom(11);
  for (const f of [FP8_E4M3, FP8_E5M2, FP6_E3M2, FP6_E2M3, FP4_E2M1]) {
    const finite = [...f.values.keys()].filter((c) => Number.isFinite(f.values[c]!));
    for (const c of finite) assert.equal(f.encode(f.values[c]!), c, `${f.spec.name} code ${c}`);
    const positives = [...new Set(finite.map((c) => f.values[c]!).filter((v) => v >= 0))].sort(
      (a, b) => a - b,
    );
    const probes: number[] = [];
    for (let i = 1; i < positives.length; i++) {
      const [a, b] = [positives[i - 1]!, positives[i]!];
      probes.push((a + b) / 2, a + (b - a) * 0.499, a + (b - a) * 0.501);
    }
    for (let i = 0; i < 2000; i++) probes.push(f.max * 1.2 * rand() ** 3);
    for (const p of probes) {
      for (const x of [p, -p]) {
        if (x === 0) continue;
        assert.equal(f.encode(x), bruteForce(f, x), `${f.spec.name} encode(${x})`);
      }
    }
  }
});

test('ternary and binary elements: RoundClip to {−1, 0, 1} (ties to even) and sign with sign(0) = +1', () => {
  const t = ELEMENT_FORMATS.ternary;
  assert.deepEqual(
    [-3, -1.5, -0.5, -0.49, 0, 0.5, 0.51, 1.5, 9].map((x) => t.encode(x)),
    [0, 0, 1, 1, 1, 1, 2, 2, 2],
  );
  assert.deepEqual(
    [0, 1, 2].map((c) => t.decode(c)),
    [-1, 0, 1],
  );
  const b = ELEMENT_FORMATS.binary;
  assert.deepEqual(
    [-2, -1e-9, 0, 1e-9, 3].map((x) => b.encode(x)),
    [0, 0, 1, 1, 1],
  );
  assert.deepEqual(
    [0, 1].map((c) => b.decode(c)),
    [-1, 1],
  );
  assert.throws(() => t.encode(Number.NaN), FormatError);
});

test('trit packing: five trits per byte in base 3, 1.6 bits per code, round trip', () => {
  // t0 + 3 t1 + 9 t2 + 27 t3 + 81 t4 = 2 + 3 + 0 + 54 + 81 = 140; then the partial byte 1 + 3·2 = 7.
  assert.deepEqual([...TRIT_PACKING.pack([2, 1, 0, 2, 1, 1, 2])], [140, 7]);
  assert.deepEqual([...TRIT_PACKING.pack([2, 2, 2, 2, 2])], [242]);
  assert.equal(TRIT_PACKING.bitsPerCode, 1.6);
  const rand = seededRandom(5);
  for (const n of [0, 1, 4, 5, 6, 1001]) {
    const codes = Uint8Array.from({ length: n }, () => Math.floor(rand() * 3));
    const packed = TRIT_PACKING.pack(codes);
    assert.equal(packed.length, Math.ceil(n / 5));
    assert.deepEqual(TRIT_PACKING.unpack(packed, n), codes);
  }
  assert.throws(() => TRIT_PACKING.pack([3]), FormatError);
});

test('scale formats: bits and rounding of f16/bf16/f32/e4m3 scales, e8m0 chosen as powers of two', () => {
  assert.deepEqual(
    Object.entries(SCALE_FORMATS).map(([k, f]) => [k, f.bits]),
    [
      ['f16', 16],
      ['bf16', 16],
      ['f32', 32],
      ['e4m3', 8],
      ['e8m0', 8],
    ],
  );
  assert.equal(SCALE_FORMATS.e4m3.round!(1000), 448);
  assert.equal(SCALE_FORMATS.e4m3.round!(0.3), 0.3125); // 1.25 · 2^-2 (0.28125 and 0.3125 around it)
  assert.equal(SCALE_FORMATS.f16.round!(1 / 3), 0.333251953125);
  assert.equal(SCALE_FORMATS.e8m0.round, undefined);
});
