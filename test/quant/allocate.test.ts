/**
 * The allocator against brute force on hand-made and seeded random loss tables, the budget
 * arithmetic, and llama.cpp's use_more_bits rule.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gridName } from '../../src/formats/grid.js';
import { parseSize } from '../../src/model/memory.js';
import {
  type AllocLayer,
  allocate,
  allocateDp,
  allocateLagrangian,
  bitBudget,
  presetGrids,
  useMoreBits,
} from '../../src/quant/allocate.js';
import { seededRandom } from '../helpers.js';

/** Minimal loss over every combination with Σ bits ≤ budget (Infinity when none fits). */
function bruteForce(layers: AllocLayer[], budget: number): number {
  let best = Number.POSITIVE_INFINITY;
  const rec = (i: number, bits: number, loss: number) => {
    if (bits > budget) return;
    if (i === layers.length) {
      best = Math.min(best, loss);
      return;
    }
    for (const o of layers[i]!.options) rec(i + 1, bits + o.bits, loss + o.loss);
  };
  rec(0, 0, 0);
  return best;
}

// Three layers, grids at 2/3/4 bits (× 100 weights): layer A is 10× as sensitive as B and C.
const HAND: AllocLayer[] = [
  {
    name: 'A',
    options: [
      { grid: 'int2', bits: 200, loss: 10 },
      { grid: 'int3', bits: 300, loss: 4 },
      { grid: 'int4', bits: 400, loss: 1 },
    ],
  },
  {
    name: 'B',
    options: [
      { grid: 'int2', bits: 200, loss: 1 },
      { grid: 'int3', bits: 300, loss: 0.4 },
      { grid: 'int4', bits: 400, loss: 0.1 },
    ],
  },
  {
    name: 'C',
    options: [
      { grid: 'int2', bits: 200, loss: 1.2 },
      { grid: 'int3', bits: 300, loss: 0.3 },
      { grid: 'int4', bits: 400, loss: 0.2 },
    ],
  },
];

test('hand-made table: the DP gives the hand-computed optimum at 3 bits/weight', () => {
  // 900 bits: A int4 + B int2 + C int3 = 1 + 1 + 0.3 = 2.3 beats A int3 + B int3 + C int3 = 4.7
  // and A int4 + B int3 + C int2 = 2.6.
  const a = allocateDp(HAND, 900);
  assert.deepEqual(a.choice, [2, 0, 1]);
  assert.equal(a.bits, 900);
  assert.ok(Math.abs(a.loss - 2.3) < 1e-12);
  assert.equal(allocate(HAND, 900).solver, 'dp');
  // The Lagrangian reaches the same point here (it lies on the convex hull).
  assert.deepEqual(allocateLagrangian(HAND, 900).choice, [2, 0, 1]);
  assert.throws(() => allocateDp(HAND, 599), /smallest palette grid/);
});

test('random tables: DP equals brute force; the Lagrangian fits and stays within its documented gap', () => {
  const rand = seededRandom(7);
  let lagrangeExact = 0;
  const cases = 300;
  for (let t = 0; t < cases; t++) {
    const n = 2 + Math.floor(rand() * 4);
    const layers: AllocLayer[] = Array.from({ length: n }, (_, i) => {
      const k = 2 + Math.floor(rand() * 3);
      // Options with more bits have lower loss (a real palette's shape), with random steps.
      let bits = 8 * (1 + Math.floor(rand() * 4));
      let loss = 1 + rand() * 10;
      return {
        name: `L${i}`,
        options: Array.from({ length: k }, (_, j) => {
          const o = { grid: `g${j}`, bits, loss };
          bits += 8 * (1 + Math.floor(rand() * 4));
          loss *= 0.2 + 0.7 * rand();
          return o;
        }),
      };
    });
    const min = layers.reduce((s, l) => s + l.options[0]!.bits, 0);
    const max = layers.reduce((s, l) => s + l.options.at(-1)!.bits, 0);
    const budget = min + Math.floor(rand() * (max - min + 1));
    const opt = bruteForce(layers, budget);
    const dp = allocateDp(layers, budget);
    assert.ok(dp.bits <= budget);
    assert.ok(Math.abs(dp.loss - opt) < 1e-9, `case ${t}: dp ${dp.loss} vs brute force ${opt}`);
    const lg = allocateLagrangian(layers, budget);
    assert.ok(lg.bits <= budget, `case ${t}: lagrangian ${lg.bits} bits > ${budget}`);
    // Gap bound: the largest loss step between two options of one layer.
    const gap = Math.max(
      ...layers.flatMap((l) => l.options.slice(1).map((o, j) => l.options[j]!.loss - o.loss)),
    );
    assert.ok(
      lg.loss >= opt - 1e-9 && lg.loss <= opt + gap + 1e-9,
      `case ${t}: lagrangian ${lg.loss}, optimum ${opt}, gap ${gap}`,
    );
    if (Math.abs(lg.loss - opt) < 1e-9) lagrangeExact++;
  }
  console.log(`  Lagrangian + greedy fix-up exact on ${lagrangeExact}/${cases} random tables`);
  assert.ok(lagrangeExact >= cases * 0.6);
});

test('budgets: bits per weight over the quantized linears, sizes over the whole stored model', () => {
  assert.equal(parseSize('800MB'), 800e6);
  assert.equal(parseSize('2.5MiB'), 2.5 * 2 ** 20);
  assert.equal(parseSize('1200 KiB'), 1200 * 1024);
  assert.equal(parseSize('4096'), 4096);
  assert.throws(() => parseSize('12 furlongs'), /invalid size/);
  assert.equal(bitBudget({ bpw: 3.5 }, 1000, 0), 3500);
  // 1 MiB total with 100 000 bytes of float32 tensors leaves (1048576 − 100000)·8 bits.
  assert.equal(bitBudget({ bytes: 2 ** 20 }, 1000, 100000), (2 ** 20 - 100000) * 8);
  assert.throws(() => bitBudget({ bytes: 1000 }, 1000, 100000), /below the unquantized/);
});

test("use_more_bits matches llama.cpp's rule; the q4_k_m-like preset raises attn_v/ffn_down there", () => {
  // n = 32: i < 4, i >= 28, or (i − 4) % 3 == 2 → 0..3, 6, 9, ..., 27, 28..31.
  const more = Array.from({ length: 32 }, (_, i) => i).filter((i) => useMoreBits(i, 32));
  assert.deepEqual(more, [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
  const p = presetGrids('q4_k_m-like', 32);
  assert.equal(gridName(p.get('model.layers.0.self_attn.v_proj.weight')!), 'int6-g32-sym');
  assert.equal(gridName(p.get('model.layers.4.self_attn.v_proj.weight')!), 'int4-g32-sym');
  assert.equal(gridName(p.get('model.layers.6.mlp.down_proj.weight')!), 'int6-g32-sym');
  assert.equal(gridName(p.get('model.layers.6.mlp.up_proj.weight')!), 'int4-g32-sym');
  assert.throws(() => presetGrids('q9_k', 2), /unknown preset/);
  // A plain (ungated) MLP, as GPT-2/OPT/NeoX have: no grid for a gate_proj the model lacks.
  const plain = presetGrids('q4_k_m-like', 2, ['self_attn.q_proj', 'mlp.up_proj', 'mlp.down_proj']);
  assert.deepEqual(
    [...plain.keys()].sort(),
    [0, 1].flatMap((l) =>
      ['mlp.down_proj', 'mlp.up_proj', 'self_attn.q_proj'].map((n) => `model.layers.${l}.${n}.weight`),
    ),
  );
});
