/**
 * GPTQ against an independent, deliberately naive transcription of the paper's Algorithm 1
 * (arXiv:2210.17323): float64, no lazy batches, H⁻¹ by Gauss-Jordan, its Cholesky by the
 * textbook loop, every remaining column updated after every quantized column.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { JsEngine, OrtEngine } from '../../src/compute/index.js';
import { type GridSpec, IntGrid } from '../../src/formats/grid.js';
import { dequantize } from '../../src/formats/quantized-tensor.js';
import { relativeOutputError } from '../../src/quant/layer-error.js';
import {
  GPTQ_DEFAULTS,
  type GptqOptions,
  gptqQuantize as gptqFromPrepared,
  prepareHessian,
} from '../../src/quant/methods/gptq.js';
import { quantizeRtn } from '../../src/quant/methods/rtn.js';
import { seededRandom } from '../helpers.js';

function invertGaussJordan(A: Float64Array, n: number): Float64Array {
  const M = new Float64Array(n * 2 * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) M[i * 2 * n + j] = A[i * n + j]!;
    M[i * 2 * n + n + i] = 1;
  }
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(M[r * 2 * n + c]!) > Math.abs(M[p * 2 * n + c]!)) p = r;
    for (let j = 0; j < 2 * n; j++)
      [M[c * 2 * n + j], M[p * 2 * n + j]] = [M[p * 2 * n + j]!, M[c * 2 * n + j]!];
    const pivot = M[c * 2 * n + c]!;
    for (let j = 0; j < 2 * n; j++) M[c * 2 * n + j]! /= pivot;
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = M[r * 2 * n + c]!;
      for (let j = 0; j < 2 * n; j++) M[r * 2 * n + j]! -= f * M[c * 2 * n + j]!;
    }
  }
  const inv = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) inv[i * n + j] = M[i * 2 * n + n + j]!;
  return inv;
}

/** Upper U with A = Uᵀ U (textbook Cholesky–Banachiewicz, transposed). */
function choleskyUpper(A: Float64Array, n: number): Float64Array {
  const L = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j <= i; j++) {
      let s = A[i * n + j]!;
      for (let k = 0; k < j; k++) s -= L[i * n + k]! * L[j * n + k]!;
      L[i * n + j] = i === j ? Math.sqrt(s) : s / L[j * n + j]!;
    }
  const U = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) U[i * n + j] = L[j * n + i]!;
  return U;
}

/** Algorithm 1 of the paper, unblocked; group parameters from the current columns at each group start. */
function algorithm1(
  W0: Float32Array,
  H0: Float64Array,
  rows: number,
  cols: number,
  grid: IntGrid,
  damp: number,
) {
  const W = Float64Array.from(W0);
  const H = H0.slice();
  let mean = 0;
  for (let i = 0; i < cols; i++) mean += H[i * cols + i]! / cols;
  for (let i = 0; i < cols; i++) H[i * cols + i]! += damp * mean;
  const U = choleskyUpper(invertGaussJordan(H, cols), cols);
  const G = grid.spec.granularity === 'group' ? grid.spec.groupSize : cols;
  const Q = new Float64Array(W.length);
  const params: { scale: number; zero: number }[] = [];
  for (let i = 0; i < cols; i++) {
    if (i % G === 0) {
      for (let r = 0; r < rows; r++) {
        let min = Infinity;
        let max = -Infinity;
        for (let c = i; c < i + G; c++) {
          min = Math.min(min, W[r * cols + c]!);
          max = Math.max(max, W[r * cols + c]!);
        }
        params[r] = grid.params(min, max);
      }
    }
    for (let r = 0; r < rows; r++) {
      const { scale, zero } = params[r]!;
      const q = grid.decode(grid.encode(W[r * cols + i]!, scale, zero), scale, zero);
      Q[r * cols + i] = q;
      const err = (W[r * cols + i]! - q) / U[i * cols + i]!;
      for (let j = i + 1; j < cols; j++) W[r * cols + j]! -= err * U[i * cols + j]!;
    }
  }
  return Q;
}

const gptqQuantize = async (
  weight: { shape: number[]; data: Float32Array },
  H: Float64Array,
  grid: IntGrid,
  o: GptqOptions,
  engine: JsEngine | OrtEngine,
) => gptqFromPrepared(weight, await prepareHessian(H, weight.shape[1]!, o, engine), grid, o, engine);

/** A layer with correlated, unevenly scaled inputs, so the Hessian matters. */
function problem(rows: number, cols: number, samples: number, seed: number) {
  const rand = seededRandom(seed);
  const gauss = () => Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());
  const W = Float32Array.from({ length: rows * cols }, () => gauss() * 0.1);
  const colScale = Float64Array.from({ length: cols }, () => Math.exp(gauss()));
  const X = new Float64Array(samples * cols);
  for (let s = 0; s < samples; s++) {
    const shared = gauss();
    for (let c = 0; c < cols; c++) X[s * cols + c] = (gauss() + 0.5 * shared) * colScale[c]!;
  }
  const H = new Float64Array(cols * cols);
  for (let s = 0; s < samples; s++)
    for (let i = 0; i < cols; i++)
      for (let j = 0; j < cols; j++) H[i * cols + j]! += (2 / samples) * X[s * cols + i]! * X[s * cols + j]!;
  return { W, H };
}

const GRIDS: GridSpec[] = [
  { bits: 4, symmetric: true, granularity: 'group', groupSize: 16, scaleDtype: 'f32' },
  { bits: 3, symmetric: false, granularity: 'channel', groupSize: 0, scaleDtype: 'f32' },
];

for (const spec of GRIDS) {
  test(`lazy-batch GPTQ equals the unblocked Algorithm 1 (int${spec.bits} ${spec.granularity})`, async () => {
    const [rows, cols] = [24, 64];
    const { W, H } = problem(rows, cols, 400, spec.bits);
    const grid = new IntGrid(spec);
    const fast = dequantize(
      await gptqQuantize(
        { shape: [rows, cols], data: W },
        H,
        grid,
        { ...GPTQ_DEFAULTS, blockSize: 32 },
        new OrtEngine(),
      ),
    );
    const reference = algorithm1(W, H, rows, cols, grid, 0.01);
    let differing = 0;
    let maxDiff = 0;
    for (let i = 0; i < fast.length; i++) {
      const d = Math.abs(fast[i]! - reference[i]!);
      if (d > 1e-6) differing++;
      else maxDiff = Math.max(maxDiff, d);
    }
    console.log(
      `  int${spec.bits}: ${differing} of ${fast.length} codes differ, max diff elsewhere ${maxDiff.toExponential(2)}`,
    );
    // float32 lazy updates vs float64: a code may flip at an exact rounding tie, nothing more.
    assert.ok(differing <= fast.length * 0.002, `${differing} codes differ`);
    assert.ok(maxDiff < 1e-6);
  });
}

test('GPTQ output error is below RTN on the same grid, with and without act-order', async () => {
  const engine = new JsEngine();
  const [rows, cols] = [32, 64];
  const { W, H } = problem(rows, cols, 500, 11);
  for (const spec of GRIDS) {
    const grid = new IntGrid(spec);
    const weight = { shape: [rows, cols], data: W };
    const rtn = await relativeOutputError(W, dequantize(quantizeRtn(weight, grid)), H, rows, cols, engine);
    for (const actOrder of [false, true]) {
      const q = await gptqQuantize(weight, H, grid, { ...GPTQ_DEFAULTS, actOrder }, engine);
      const err = await relativeOutputError(W, dequantize(q), H, rows, cols, engine);
      console.log(
        `  int${spec.bits} ${spec.granularity} act-order=${actOrder}: GPTQ ${err.toFixed(5)} vs RTN ${rtn.toFixed(5)}`,
      );
      assert.ok(err < rtn * 0.9, `GPTQ ${err} not below RTN ${rtn}`);
      if (actOrder && spec.granularity === 'group')
        assert.ok(q.groupIndex, 'act-order with groups stores g_idx');
    }
  }
});

test('dead inputs (H_ii = 0) are zeroed, not divided by', async () => {
  const [rows, cols] = [4, 16];
  const { W, H } = problem(rows, cols, 100, 5);
  for (let j = 0; j < cols; j++) {
    H[3 * cols + j] = 0;
    H[j * cols + 3] = 0;
  }
  const q = dequantize(
    await gptqQuantize(
      { shape: [rows, cols], data: W },
      H,
      new IntGrid(GRIDS[0]!),
      GPTQ_DEFAULTS,
      new JsEngine(),
    ),
  );
  for (let r = 0; r < rows; r++) assert.equal(q[r * cols + 3], 0);
  assert.ok(q.every(Number.isFinite));
});
