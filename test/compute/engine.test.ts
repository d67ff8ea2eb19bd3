import assert from 'node:assert/strict';
import { test } from 'node:test';
import { JsEngine, OrtEngine } from '../../src/compute/index.js';
import { maxAbsDiff, seededRandom } from '../helpers.js';

const ort = new OrtEngine();
const js = new JsEngine();

function randomArray(n: number, rand: () => number): Float32Array {
  return Float32Array.from({ length: n }, () => rand() * 2 - 1);
}

test('onnxruntime linear equals the reference loops', async () => {
  const rand = seededRandom(1);
  const [M, K, N] = [37, 64, 29];
  const x = randomArray(M * K, rand);
  const w = randomArray(N * K, rand);
  const diff = maxAbsDiff(await ort.linear(x, w, M, K, N), await js.linear(x, w, M, K, N));
  assert.ok(diff < 1e-5, `max diff ${diff}`);
  // One value by hand: y[0,0] = Σ x[0,k] w[0,k].
  let y00 = 0;
  for (let k = 0; k < K; k++) y00 += x[k]! * w[k]!;
  assert.ok(Math.abs((await ort.linear(x, w, M, K, N))[0]! - y00) < 1e-5);
});

test('onnxruntime XᵀX equals the reference loops', async () => {
  const rand = seededRandom(2);
  const [K, M, N] = [50, 16, 16];
  const a = randomArray(K * M, rand);
  const diff = maxAbsDiff(await ort.matmulTransA(a, a, K, M, N), await js.matmulTransA(a, a, K, M, N));
  assert.ok(diff < 1e-4, `max diff ${diff}`);
});

test('onnxruntime causal attention equals the reference loops, and is causal', async () => {
  const rand = seededRandom(3);
  const [B, T, d] = [3, 17, 8];
  const q = randomArray(B * T * d, rand);
  const k = randomArray(B * T * d, rand);
  const v = randomArray(B * T * d, rand);
  const fast = await ort.causalAttention(q, k, v, B, T, d, 0.35);
  const diff = maxAbsDiff(fast, await js.causalAttention(q, k, v, B, T, d, 0.35));
  assert.ok(diff < 1e-5, `max diff ${diff}`);
  // Position 0 attends only to itself: its output is v[0].
  assert.ok(maxAbsDiff(fast.subarray(0, d), v.subarray(0, d)) < 1e-6);
});
