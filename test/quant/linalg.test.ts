import assert from 'node:assert/strict';
import { test } from 'node:test';
import { OrtEngine } from '../../src/compute/index.js';
import {
  choleskyLower,
  inverseCholeskyUpper,
  inverseCholeskyUpperFast,
  NotPositiveDefiniteError,
} from '../../src/quant/linalg.js';
import { seededRandom } from '../helpers.js';

function randomSpd(n: number, seed: number): Float64Array {
  const rand = seededRandom(seed);
  const X = Float64Array.from({ length: 2 * n * n }, () => rand() - 0.5);
  const H = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      let s = i === j ? 0.1 : 0;
      for (let k = 0; k < 2 * n; k++) s += X[k * n + i]! * X[k * n + j]!;
      H[i * n + j] = s;
    }
  return H;
}

test('Cholesky: L Lᵀ reproduces the matrix', () => {
  const n = 9;
  const H = randomSpd(n, 1);
  const L = choleskyLower(H.slice(), n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = 0; k < n; k++) s += L[i * n + k]! * L[j * n + k]!;
      assert.ok(Math.abs(s - H[i * n + j]!) < 1e-10);
    }
});

test('inverseCholeskyUpper: U is upper triangular and Uᵀ U · H = I', () => {
  const n = 12;
  const H = randomSpd(n, 2);
  const U = inverseCholeskyUpper(H, n);
  for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) assert.equal(U[i * n + j], 0);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = 0; k < n; k++) {
        let hinvIk = 0;
        for (let m = 0; m < n; m++) hinvIk += U[m * n + i]! * U[m * n + k]!;
        s += hinvIk * H[k * n + j]!;
      }
      assert.ok(Math.abs(s - (i === j ? 1 : 0)) < 1e-9, `(${i},${j}) = ${s}`);
    }
});

test('a singular matrix is reported, not factorized into NaN', () => {
  assert.throws(() => choleskyLower(Float64Array.of(1, 1, 1, 1), 2), NotPositiveDefiniteError);
});

test('the blocked engine path equals the float64 loops (n = 700, three levels of blocks)', async () => {
  const n = 700;
  const H = randomSpd(n, 9);
  const exact = inverseCholeskyUpper(H, n);
  const fast = await inverseCholeskyUpperFast(H, n, new OrtEngine());
  let maxRel = 0;
  let maxAbs = 0;
  for (let i = 0; i < n * n; i++) maxAbs = Math.max(maxAbs, Math.abs(exact[i]!));
  for (let i = 0; i < n * n; i++) maxRel = Math.max(maxRel, Math.abs(fast[i]! - exact[i]!) / maxAbs);
  console.log(`  max |ΔU| / max |U| = ${maxRel.toExponential(2)}`);
  assert.ok(maxRel < 1e-4);
  for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) assert.equal(fast[i * n + j], 0);
});
