/**
 * Randomized Hadamard transforms: Sylvester matrices by their definition, Paley matrices by
 * H Hᵀ = m I, orthogonality of every plan (including the random-orthogonal fallback), and
 * the fast O(n log n) path against the dense product.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fwht, paleyHadamard, planHadamard, RandomizedHadamard } from '../../src/math/hadamard.js';
import { maxAbsDiff, seededRandom } from '../helpers.js';
import { matmul, transpose } from '../quant/dense-reference.js';

/** Orthogonality to float64 rounding over n ≤ 384 (errors measured ≈ 1e-15). */
const ORTHO_TOL = 1e-12;

/** Sylvester's construction written out: H_1 = [1], H_2n = [[H_n, H_n], [H_n, −H_n]]. */
function sylvester(n: number): Float64Array {
  let H = Float64Array.of(1);
  for (let size = 1; size < n; size *= 2) {
    const next = new Float64Array(4 * size * size);
    for (let i = 0; i < size; i++) {
      for (let j = 0; j < size; j++) {
        const v = H[i * size + j]!;
        next[i * 2 * size + j] = v;
        next[i * 2 * size + j + size] = v;
        next[(i + size) * 2 * size + j] = v;
        next[(i + size) * 2 * size + j + size] = -v;
      }
    }
    H = next;
  }
  return H;
}

function kron(A: ArrayLike<number>, a: number, B: ArrayLike<number>, b: number): Float64Array {
  const n = a * b;
  const K = new Float64Array(n * n);
  for (let i = 0; i < a; i++)
    for (let j = 0; j < a; j++)
      for (let p = 0; p < b; p++)
        for (let q = 0; q < b; q++) K[(i * b + p) * n + j * b + q] = A[i * a + j]! * B[p * b + q]!;
  return K;
}

const identityError = (Q: Float64Array, n: number) => {
  const QQt = matmul(Q, transpose(Q, n, n), n, n, n);
  for (let i = 0; i < n; i++) QQt[i * n + i]! -= 1;
  return maxAbsDiff(QQt, new Float64Array(n * n));
};

test('fwht: H_4 by hand, and every row of H_n / √n for n = 1..256 equals Sylvester by recursion', () => {
  const e1 = Float64Array.of(0, 1, 0, 0);
  fwht(e1);
  assert.deepEqual([...e1], [0.5, -0.5, 0.5, -0.5]);
  const x = Float64Array.of(1, 2, 3, 4);
  fwht(x);
  assert.deepEqual([...x], [5, -1, -2, 0]); // (1+2+3+4, 1−2+3−4, 1+2−3−4, 1−2−3+4) / 2
  for (let n = 1; n <= 256; n *= 2) {
    const fast = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      fast[i * n + i] = 1;
      fwht(fast.subarray(i * n, (i + 1) * n));
    }
    const H = sylvester(n).map((v) => v / Math.sqrt(n));
    assert.ok(maxAbsDiff(fast, H) < 1e-15, `n = ${n}`);
    assert.ok(identityError(fast, n) < ORTHO_TOL, `H Hᵀ = I, n = ${n}`);
  }
});

test('fwht: in place on Float32Array rows, strided, and an involution (H symmetric orthonormal)', () => {
  const rand = seededRandom(1);
  const x64 = Float64Array.from({ length: 128 }, () => rand() - 0.5);
  const x32 = Float32Array.from(x64);
  fwht(x32);
  const y = x64.slice();
  fwht(y);
  assert.ok(maxAbsDiff(x32, y) < 1e-6, `float32 vs float64: ${maxAbsDiff(x32, y)}`);
  fwht(y);
  assert.ok(maxAbsDiff(y, x64) < 1e-15, 'H (H x) = x');
  // Stride 3, offset 1: only every third value from 1 on is transformed.
  const z = Float64Array.from({ length: 12 }, (_, i) => i);
  fwht(z, 4, 1, 3);
  assert.deepEqual([...z], [0, 22 / 2, 2, 3, -6 / 2, 5, 6, -12 / 2, 8, 9, 0, 11]);
  assert.throws(() => fwht(new Float64Array(12)), /power of two/);
});

test('Paley matrices: H Hᵀ = m I for every constructible order up to 200; which orders they cover', () => {
  const orders: number[] = [];
  for (let m = 2; m <= 200; m++) {
    const H = paleyHadamard(m);
    if (!H) continue;
    orders.push(m);
    for (const v of H) assert.ok(v === 1 || v === -1, `order ${m}: entries ±1`);
    const HHt = matmul(H, transpose(H, m, m), m, m, m);
    for (let i = 0; i < m; i++)
      for (let j = 0; j < m; j++) assert.equal(HHt[i * m + j], i === j ? m : 0, `order ${m} (${i}, ${j})`);
  }
  // Paley I: q + 1 for primes q ≡ 3 (mod 4); Paley II: 2(q + 1) for primes q ≡ 1 (mod 4).
  assert.deepEqual(
    orders,
    [
      4, 8, 12, 20, 24, 28, 32, 36, 44, 48, 60, 68, 72, 76, 80, 84, 104, 108, 124, 128, 132, 140, 148, 152,
      164, 168, 180, 192, 196, 200,
    ],
  );
  assert.equal(paleyHadamard(172), undefined);
  assert.equal(paleyHadamard(52), undefined); // Paley II would need GF(25)
});

test('planHadamard: the sizes of real models', () => {
  const plan = (n: number) => {
    const p = planHadamard(n);
    return `${p.pow2}x${p.m} ${p.kind}`;
  };
  assert.equal(plan(128), '128x1 sylvester'); // tinystories-656k hidden
  assert.equal(plan(64), '64x1 sylvester'); // stories260K hidden
  assert.equal(plan(384), '32x12 paley'); // tinystories-656k FFN
  assert.equal(plan(172), '4x43 random-orthogonal'); // stories260K FFN
  assert.equal(plan(5120), '256x20 paley'); // Llama-2-13B hidden
  assert.equal(plan(3584), '128x28 paley'); // Qwen2-7B hidden
  assert.equal(plan(11008), '256x43 random-orthogonal'); // Llama-2-7B FFN (QuaRot's had172 table)
  assert.equal(plan(80), '4x20 paley'); // phi-2 head_dim
  assert.throws(() => planHadamard(2 * 5503), /odd part m <= 256/);
});

for (const n of [1, 8, 12, 24, 26, 40, 64, 172, 384]) {
  test(`RandomizedHadamard n = ${n} (${planHadamard(n).kind}): Q Qᵀ = I and the fast path equals the dense product`, () => {
    const rot = new RandomizedHadamard(n, seededRandom(7));
    const Q = rot.matrix();
    const err = identityError(Q, n);
    assert.ok(err < ORTHO_TOL, `‖Q Qᵀ − I‖max = ${err}`);

    // Dense reference: diag(s) · (H_{2^k} ⊗ M_m) / √n.
    const { pow2, m, kind } = rot.plan;
    if (kind !== 'random-orthogonal') {
      const M = m === 1 ? Float64Array.of(1) : Float64Array.from(paleyHadamard(m)!);
      const K = kron(sylvester(pow2), pow2, M, m);
      const ref = K.map((v, i) => (v * rot.signs[Math.floor(i / n)]!) / Math.sqrt(n));
      assert.ok(maxAbsDiff(Q, ref) < 1e-15, `dense Q vs diag(s)(H ⊗ M)/√n: ${maxAbsDiff(Q, ref)}`);
    }

    // Rows through the fast path vs X · Q, on Float32 and Float64 storage.
    const rand = seededRandom(3);
    const rows = 5;
    const X = Float64Array.from({ length: rows * n }, () => rand() * 2 - 1);
    const XQ = matmul(X, Q, rows, n, n);
    const fast = X.slice();
    rot.applyRows(fast, rows);
    assert.ok(maxAbsDiff(fast, XQ) < 1e-14, `applyRows vs X·Q: ${maxAbsDiff(fast, XQ)}`);
    const fast32 = Float32Array.from(X);
    rot.applyRows(fast32, rows);
    assert.ok(maxAbsDiff(fast32, XQ) < 1e-6);
    const XQt = matmul(X, transpose(Q, n, n), rows, n, n);
    const back = X.slice();
    rot.applyRowsTransposed(back, rows);
    assert.ok(maxAbsDiff(back, XQt) < 1e-14, 'applyRowsTransposed vs X·Qᵀ');
    rot.applyRows(back, rows);
    assert.ok(maxAbsDiff(back, X) < 1e-14, 'X Qᵀ Q = X');
  });
}

test('incoherence: a spike spreads to |x_i| = ‖x‖/√n (Hadamard), < 0.2‖x‖ with the 172 fallback', () => {
  for (const n of [64, 384, 172]) {
    const rot = new RandomizedHadamard(n, seededRandom(0));
    const spike = new Float64Array(n);
    spike[5] = 100;
    rot.applyRows(spike, 1);
    const max = Math.max(...spike.map(Math.abs));
    const min = Math.min(...spike.map(Math.abs));
    if (rot.plan.kind === 'random-orthogonal') {
      console.log(
        `  n = ${n}: spike 100 -> max |x_i| ${max.toFixed(2)} (‖x‖/√n = ${(100 / Math.sqrt(n)).toFixed(2)})`,
      );
      assert.ok(max < 20); // measured 18.10: the max of 43 Gaussian entries of variance 1/43, halved by H_4
    } else {
      assert.ok(Math.abs(max - 100 / Math.sqrt(n)) < 1e-12 && Math.abs(min - 100 / Math.sqrt(n)) < 1e-12);
    }
  }
});

test('signs are seeded: same seed, same rotation; another seed, another one', () => {
  const a = new RandomizedHadamard(64, seededRandom(0)).signs;
  const b = new RandomizedHadamard(64, seededRandom(0)).signs;
  const c = new RandomizedHadamard(64, seededRandom(1)).signs;
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  const negatives = a.filter((s) => s < 0).length;
  assert.ok(negatives > 16 && negatives < 48, `${negatives} of 64 signs negative`);
  assert.ok(new RandomizedHadamard(8, seededRandom(0), { signs: false }).signs.every((s) => s === 1));
});
