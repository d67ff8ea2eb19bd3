/**
 * MatMulNBits layouts built from ptqkit grids, checked two ways:
 *  - an independent reader written from the op spec (onnxruntime docs/ContribOperators.md:
 *    B uint8 [N, k_blocks, block_size·bits/8] LSB-first along K, scales [N·k_blocks], zero points
 *    packed like B per row or float, default 2^(bits−1)) recovers exactly the weights
 *    `dequantize` gives, through act-order permutations and column scales;
 *  - onnxruntime-node runs the node built by the exporter and matches A·Wᵀ in float64.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { applyLinear } from '../../src/export/onnx-graph.js';
import type { GridSpec } from '../../src/formats/grid.js';
import { dequantize, fromCodes, type QuantizedTensor } from '../../src/formats/quantized-tensor.js';
import { buildOnnxModelExternal, GraphAssembler } from '../../src/io/onnx-builder.js';
import {
  containerBits,
  encodeMatMulNBits,
  type MatMulNBitsWeight,
  planMatMulNBits,
} from '../../src/onnx/matmul-nbits.js';
import { maxAbsDiff, seededRandom } from '../helpers.js';

/** Relative error allowed between onnxruntime's fp32 product and the float64 reference. */
const RUNTIME_REL_TOL = 1e-5;

interface Case {
  label: string;
  rows: number;
  cols: number;
  spec: Partial<GridSpec> & { bits: number };
  actOrder?: boolean;
  columnScales?: boolean;
  /** Expected block size and container bits, or undefined when MatMulNBits cannot express the grid. */
  expect?: { bits: number; blockSize: number; zeroPoints: 'none' | 'packed' | 'float' };
}

const CASES: Case[] = [
  {
    label: 'int4 g32 sym',
    rows: 8,
    cols: 64,
    spec: { bits: 4, groupSize: 32 },
    expect: { bits: 4, blockSize: 32, zeroPoints: 'none' },
  },
  {
    label: 'int4 g64 asym',
    rows: 6,
    cols: 128,
    spec: { bits: 4, groupSize: 64, symmetric: false },
    expect: { bits: 4, blockSize: 64, zeroPoints: 'packed' },
  },
  {
    label: 'int3 g32 sym (4-bit container)',
    rows: 5,
    cols: 96,
    spec: { bits: 3, groupSize: 32 },
    expect: { bits: 4, blockSize: 32, zeroPoints: 'packed' },
  },
  {
    label: 'int8 per-channel K=100',
    rows: 4,
    cols: 100,
    spec: { bits: 8, granularity: 'channel' },
    expect: { bits: 8, blockSize: 128, zeroPoints: 'none' },
  },
  {
    label: 'int6 g16 asym (8-bit container)',
    rows: 3,
    cols: 48,
    spec: { bits: 6, groupSize: 16, symmetric: false },
    expect: { bits: 8, blockSize: 16, zeroPoints: 'packed' },
  },
  {
    label: 'int2 g16 asym',
    rows: 7,
    cols: 80,
    spec: { bits: 2, groupSize: 16, symmetric: false },
    expect: { bits: 2, blockSize: 16, zeroPoints: 'packed' },
  },
  {
    label: 'int4 g48 (3 blocks of 16)',
    rows: 4,
    cols: 96,
    spec: { bits: 4, groupSize: 48 },
    expect: { bits: 4, blockSize: 16, zeroPoints: 'none' },
  },
  {
    label: 'int4 per-tensor K=172',
    rows: 4,
    cols: 172,
    spec: { bits: 4, granularity: 'tensor' },
    expect: { bits: 4, blockSize: 256, zeroPoints: 'none' },
  },
  {
    label: 'int4 g16 act-order',
    rows: 6,
    cols: 64,
    spec: { bits: 4, groupSize: 16, symmetric: false },
    actOrder: true,
    expect: { bits: 4, blockSize: 16, zeroPoints: 'packed' },
  },
  {
    label: 'int4 g32 float zeros (HQQ)',
    rows: 4,
    cols: 64,
    spec: { bits: 4, groupSize: 32, symmetric: false, zeroPoint: 'float' },
    expect: { bits: 4, blockSize: 32, zeroPoints: 'float' },
  },
  {
    label: 'int4 g32 column scales (SINQ)',
    rows: 4,
    cols: 64,
    spec: { bits: 4, groupSize: 32 },
    columnScales: true,
    expect: { bits: 4, blockSize: 32, zeroPoints: 'none' },
  },
  { label: 'int4 g20: no block size tiles it', rows: 4, cols: 40, spec: { bits: 4, groupSize: 20 } },
  {
    label: 'int8 float zeros: no 8-bit kernel',
    rows: 4,
    cols: 64,
    spec: { bits: 8, groupSize: 32, symmetric: false, zeroPoint: 'float' },
  },
];

/** A random quantized tensor of the case's grid (codes, f16-representable scales, zeros). */
function makeTensor(c: Case, seed: number): QuantizedTensor {
  const rand = seededRandom(seed);
  const spec: GridSpec = {
    symmetric: true,
    granularity: 'group',
    groupSize: 0,
    scaleDtype: 'f16',
    ...c.spec,
  };
  const G = spec.granularity === 'group' ? spec.groupSize : c.cols;
  const paramRows = spec.granularity === 'tensor' ? 1 : c.rows;
  const nParams = paramRows * (c.cols / G);
  const maxq = 2 ** spec.bits - 1;
  const codes = Uint8Array.from({ length: c.rows * c.cols }, () => Math.floor(rand() * (maxq + 1)));
  const scales = Float32Array.from({ length: nParams }, () => (1 + Math.floor(rand() * 64)) / 1024);
  const zeros = Float32Array.from({ length: nParams }, () =>
    spec.symmetric
      ? 2 ** (spec.bits - 1)
      : spec.zeroPoint === 'float'
        ? rand() * maxq
        : Math.floor(rand() * (maxq + 1)),
  );
  let groupIndex: Int32Array | undefined;
  if (c.actOrder) {
    // GPTQ act-order: columns in a random order, group j holds columns perm[jG .. (j+1)G).
    const perm = Int32Array.from({ length: c.cols }, (_, i) => i);
    for (let i = perm.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [perm[i], perm[j]] = [perm[j]!, perm[i]!];
    }
    groupIndex = new Int32Array(c.cols);
    perm.forEach((col, i) => {
      groupIndex![col] = Math.floor(i / G);
    });
  }
  const q = fromCodes(c.rows, c.cols, spec, codes, scales, zeros, groupIndex);
  if (c.columnScales)
    q.columnScales = Float32Array.from({ length: c.cols }, () => 0.5 + Math.floor(rand() * 32) / 32);
  return q;
}

/** The op spec read back independently: W[n, order[j]] = scale·(code − zero) · inputScale[j]. */
function readMatMulNBits(w: MatMulNBitsWeight): Float32Array {
  const { K, N, bits, blockSize, kBlocks } = w;
  const blob = (blockSize * bits) / 8;
  assert.equal(w.B.length, N * kBlocks * blob, 'B is [N, k_blocks, blob]');
  const zeroRow = Math.ceil((kBlocks * bits) / 8);
  const mask = (1 << bits) - 1;
  const out = new Float32Array(N * K);
  for (let n = 0; n < N; n++) {
    for (let j = 0; j < K; j++) {
      const b = Math.floor(j / blockSize);
      const within = j % blockSize;
      // Bit (within·bits) of block b's blob, least significant bits first.
      const bit = within * bits;
      const byte = w.B[(n * kBlocks + b) * blob + (bit >> 3)]!;
      const code = (byte >> (bit & 7)) & mask;
      let zero = 2 ** (bits - 1);
      if (w.zeroPoints instanceof Float32Array) zero = w.zeroPoints[n * kBlocks + b]!;
      else if (w.zeroPoints)
        zero = (w.zeroPoints[n * zeroRow + ((b * bits) >> 3)]! >> ((b * bits) & 7)) & mask;
      const value = (code - zero) * w.scales[n * kBlocks + b]!;
      const col = w.inputPermutation ? w.inputPermutation[j]! : j;
      out[n * K + col] = w.inputScales ? value * w.inputScales[j]! : value;
    }
  }
  return out;
}

async function runNode(w: MatMulNBitsWeight, A: Float32Array, M: number): Promise<Float32Array> {
  const g = new GraphAssembler();
  const y = applyLinear(g, 'A', 'layer.weight', { kind: 'nbits', weight: w });
  g.op('Identity', [y], {}, { outputs: ['Y'] });
  const { model } = buildOnnxModelExternal({
    name: 'matmulnbits',
    nodes: g.nodes,
    initializers: g.initializers,
    inputs: [{ name: 'A', type: 'float32', dims: ['M', w.K] }],
    outputs: [{ name: 'Y', type: 'float32', dims: ['M', w.N] }],
  });
  const session = await ort.InferenceSession.create(model);
  const out = await session.run({ A: new ort.Tensor('float32', A, [M, w.K]) });
  return out.Y!.data as Float32Array;
}

for (const [i, c] of CASES.entries()) {
  test(`MatMulNBits layout: ${c.label}`, async () => {
    const q = makeTensor(c, 100 + i);
    // The narrowest container of the codes: 3 -> 4 bits, 6 -> 8 bits.
    const plan = planMatMulNBits(q, containerBits(q.spec.bits)!);
    if (!c.expect) {
      assert.equal(plan.ok, false);
      console.log(`  not expressible: ${!plan.ok && plan.reason}`);
      return;
    }
    assert.ok(plan.ok, !plan.ok ? plan.reason : '');
    const w = encodeMatMulNBits(q, plan);
    assert.equal(w.bits, c.expect.bits);
    assert.equal(w.blockSize, c.expect.blockSize);
    const zp = w.zeroPoints === undefined ? 'none' : w.zeroPoints instanceof Uint8Array ? 'packed' : 'float';
    assert.equal(zp, c.expect.zeroPoints);
    assert.equal(!!w.inputPermutation, !!c.actOrder);

    // Exact: the spec reader and ptqkit's dequantize agree to the last bit.
    const ref = dequantize(q);
    assert.equal(maxAbsDiff(readMatMulNBits(w), ref), 0);

    // The runtime: onnxruntime's MatMulNBits (with the gather/scale nodes) against A·Wᵀ in float64.
    const M = 3;
    const rand = seededRandom(7 + i);
    const A = Float32Array.from({ length: M * q.cols }, () => rand() * 2 - 1);
    const y = await runNode(w, A, M);
    let worst = 0;
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < q.rows; n++) {
        let acc = 0;
        let mag = 0;
        for (let k = 0; k < q.cols; k++) {
          acc += A[m * q.cols + k]! * ref[n * q.cols + k]!;
          mag += Math.abs(A[m * q.cols + k]! * ref[n * q.cols + k]!);
        }
        worst = Math.max(worst, Math.abs(acc - y[m * q.rows + n]!) / mag);
      }
    }
    console.log(
      `  b${w.bits} bs${w.blockSize} zp ${zp}: max relative error vs float64 ${worst.toExponential(2)}`,
    );
    assert.ok(worst < RUNTIME_REL_TOL);
  });
}

test('4-bit blob byte layout: first code in the low nibble (op spec example)', () => {
  const spec: GridSpec = { bits: 4, symmetric: true, granularity: 'group', groupSize: 16, scaleDtype: 'f16' };
  const codes = Uint8Array.from({ length: 32 }, (_, i) => i % 16);
  const q = fromCodes(1, 32, spec, codes, Float32Array.of(1, 1), Float32Array.of(8, 8));
  const plan = planMatMulNBits(q, 4);
  assert.ok(plan.ok);
  const w = encodeMatMulNBits(q, plan);
  assert.deepEqual([...w.B.subarray(0, 3)], [0x10, 0x32, 0x54]);
  assert.equal(w.B.length, 16); // [1, 2 blocks, 8 bytes]
});
