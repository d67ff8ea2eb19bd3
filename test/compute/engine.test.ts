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

test('onnxruntime grouped-query causal attention equals the reference loops, and is causal', async () => {
  const rand = seededRandom(3);
  const shape = { batch: 2, seqLen: 17, heads: 4, kvHeads: 2, headDim: 8, scale: 0.35 };
  const { batch, seqLen, heads, kvHeads, headDim: d } = shape;
  const q = randomArray(batch * seqLen * heads * d, rand);
  const k = randomArray(batch * seqLen * kvHeads * d, rand);
  const v = randomArray(batch * seqLen * kvHeads * d, rand);
  const fast = await ort.causalAttention(q, k, v, shape);
  const diff = maxAbsDiff(fast, await js.causalAttention(q, k, v, shape));
  assert.ok(diff < 1e-5, `max diff ${diff}`);
  // Position 0 attends only to itself: query heads 0,1 output v of KV head 0, heads 2,3 of KV head 1.
  assert.ok(maxAbsDiff(fast.subarray(0, d), v.subarray(0, d)) < 1e-6);
  assert.ok(maxAbsDiff(fast.subarray(3 * d, 4 * d), v.subarray(d, 2 * d)) < 1e-6);
});

test('results go into a caller buffer when one is given (same values, same memory)', async () => {
  const rand = seededRandom(4);
  const [M, K, N] = [6, 8, 5];
  const x = randomArray(M * K, rand);
  const w = randomArray(N * K, rand);
  const w2 = randomArray(N * K, rand);
  const shape = { batch: 1, seqLen: 3, heads: 2, kvHeads: 1, headDim: 8, scale: 0.5 };
  const q = randomArray(3 * 16, rand);
  const kv = randomArray(3 * 8, rand);
  for (const engine of [ort, js]) {
    const backing = new Float32Array(M * N + 3).fill(7);
    const out = backing.subarray(1, 1 + M * N);
    assert.equal(await engine.linear(x, w, M, K, N, out), out);
    assert.deepEqual(out, await engine.linear(x, w, M, K, N));
    assert.deepEqual([backing[0], backing[M * N + 1]], [7, 7], 'nothing written outside the buffer');
    const act = new Float32Array(M * N);
    assert.equal(await engine.linearSwiGlu(x, w, w2, M, K, N, act), act);
    assert.deepEqual(act, await engine.linearSwiGlu(x, w, w2, M, K, N));
    const attn = new Float32Array(q.length).fill(3);
    assert.equal(await engine.causalAttention(q, kv, kv, shape, attn), attn);
    assert.deepEqual(attn, await engine.causalAttention(q, kv, kv, shape));
  }
});
