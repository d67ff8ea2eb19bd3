/**
 * Sensitivity (one-layer KLD and the diagonal-Hessian proxy) and budgeted allocation on the
 * bundled tinystories-656k with data/tinystories-valid-slice.txt: calibration on the first
 * 1024 tokens, KLD measured on the last 2048 (disjoint). Every row of README's table (uniform
 * grids, budgeted mixes, the q4_k_m-like preset) and both Spearman ρ are asserted as printed.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { quantizeCommand } from '../../src/cli/commands.js';
import { type GridSpec, gridName } from '../../src/formats/grid.js';
import { writePtqCheckpoint } from '../../src/io/ptq-checkpoint.js';
import { Decoder } from '../../src/model/decoder.js';
import { loadModel } from '../../src/model/load.js';
import { evaluate } from '../../src/model/perplexity.js';
import { type AllocLayer, allocate, presetGrids } from '../../src/quant/allocate.js';
import { modelSize, quantizeModel } from '../../src/quant/quantize-model.js';
import {
  DEFAULT_PALETTE,
  diagonalHessianError,
  fittingPalette,
  layerSensitivity,
  parseGridName,
  spearman,
} from '../../src/quant/sensitivity.js';
import { REPO } from '../helpers.js';
import { assertPrinted, readmeTable } from '../readme-figures.js';

test('spearman and the diagonal-Hessian error on hand-computed values', () => {
  assert.equal(spearman([1, 2, 3, 4], [10, 20, 30, 40]), 1);
  assert.equal(spearman([1, 2, 3, 4], [4, 3, 2, 1]), -1);
  // Ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]: ρ = 4.5 / sqrt(4.5 · 5) = 0.9486833.
  assert.ok(Math.abs(spearman([1, 2, 2, 3], [1, 2, 3, 4]) - 4.5 / Math.sqrt(4.5 * 5)) < 1e-12);
  // W = [[1, 2], [3, 4]], Q = [[1.5, 2], [3, 3]], H_diag = [2, 10]: 2·0.25 + 10·1 = 10.5.
  const e = diagonalHessianError(
    Float32Array.of(1, 2, 3, 4),
    Float32Array.of(1.5, 2, 3, 3),
    2,
    2,
    Float64Array.of(2, 10),
  );
  assert.equal(e, 10.5);
  assert.equal(gridName(parseGridName('int8-ch')), 'int8-pc-sym');
  assert.equal(gridName(parseGridName('nvfp4')), 'nvfp4');
  assert.equal(gridName(parseGridName('fp8-e4m3-g32')), 'fp8-e4m3-g32');
  assert.throws(() => parseGridName('int9-x'), /unknown palette grid/);
});

/**
 * README's Spearman ρ of proxy vs measured one-layer KLD (three decimals, as printed): over the
 * 14 layers × {int2, int3, int4} g32, and over the 7-grid default palette.
 */
const README_RHO = { int234: '0.647', palette: '0.841' };
/** README table row -> this file's measurement of it (bits/weight and KLD), filled by the tests. */
const measured = new Map<string, { bits: number; kld: number }>();
const m = await loadModel(path.join(REPO, 'models/tinystories-656k'));
const tokens = m.tokenizer.encode(
  await readFile(path.join(REPO, 'data/tinystories-valid-slice.txt'), 'utf8'),
);
const calib = tokens.slice(0, 1024);
const evalTokens = tokens.slice(tokens.length - 2048);
const reference = new Decoder(m.config, m.weights);
const protocol = { ctx: 128, stride: 128, dropPartial: false };

/**
 * One sensitivity table over the default palette, with the measured one-layer KLD on 256
 * calibration tokens (the protocol of `ptq quantize --target-bpw`). Each entry quantizes one
 * layer at one grid with the rest fp, so the int2..int4 g32 entries are what a table of those
 * three grids alone holds: the tests below take them from this one (it costs ~2 s per 3 grids).
 */
const sens = await layerSensitivity(m.config, m.weights, DEFAULT_PALETTE, {
  tokens: calib,
  measureTokens: 256,
});
const INT234 = ['int2-g32', 'int3-g32', 'int4-g32'];

async function quantizeMixed(perLayerGrid: Map<string, GridSpec>, base = 'int4-g32') {
  const q = await quantizeModel(m.config, m.weights, {
    method: 'rtn',
    grid: parseGridName(base),
    perLayerGrid,
  });
  const r = await evaluate(new Decoder(m.config, q.weights), evalTokens, { protocol, reference });
  return { q, kld: r.kld!, size: modelSize(q.weights, q.quantization.tensors) };
}

test('tinystories-656k: proxy ranks like the measured KLD; budgeted mixes beat uniform grids at their bits', async () => {
  const palette = ['int2-g32', 'int3-g32', 'int4-g32', 'int8-ch', 'nvfp4', 'int4-g7'];
  // int4-g7 does not tile 128 columns: dropped.
  assert.deepEqual(
    fittingPalette(m.config, m.weights, palette).map((g) => g.name),
    palette.slice(0, 5),
  );
  const nW = sens.layers.reduce((s, l) => s + l.weights, 0);
  assert.equal(nW, 2 * (128 * 128 * 2 + 64 * 128 * 2 + 3 * 384 * 128));
  const int234 = sens.entries.filter((e) => INT234.includes(e.grid));
  assert.equal(int234.length, 14 * 3);
  const rho = spearman(
    int234.map((e) => e.proxy),
    int234.map((e) => e.measured!),
  );
  console.log(
    `  sensitivity: ${int234.length} layer×grid entries (int2..int4 g32), Spearman ρ = ${rho.toFixed(4)}`,
  );
  assertPrinted(rho, README_RHO.int234, 'Spearman ρ over int2..int4 g32');

  const table = (grids: string[], loss: 'measured' | 'proxy' = 'measured'): AllocLayer[] =>
    sens.layers.map((l) => ({
      name: l.name,
      options: sens.entries
        .filter((e) => e.layer === l.name && grids.includes(e.grid))
        .map((e) => ({ grid: e.grid, bits: e.bits, loss: e[loss]! })),
    }));
  const run = async (grids: string[], bpw: number, loss: 'measured' | 'proxy' = 'measured') => {
    const layers = table(grids, loss);
    const a = allocate(layers, Math.floor(bpw * nW));
    const per = new Map(layers.map((l, i) => [l.name, parseGridName(l.options[a.choice[i]!]!.grid)]));
    const r = await quantizeMixed(per);
    // The allocator's bits are storedBits of what quantizeModel stores.
    assert.equal(r.size.bitsPerWeight * nW, a.bits);
    assert.ok(a.bits <= bpw * nW);
    return { ...r, predicted: a.loss, bits: a.bits / nW };
  };
  const u3 = await quantizeMixed(new Map(), 'int3-g32');
  const u4 = await quantizeMixed(new Map(), 'int4-g32');
  const mix34 = await run(['int3-g32', 'int4-g32'], 4.0);
  const mix234 = await run(['int2-g32', 'int3-g32', 'int4-g32'], 3.5);
  const proxy34 = await run(['int3-g32', 'int4-g32'], 4.0, 'proxy');
  for (const [name, r] of Object.entries({ u3, u4 }))
    console.log(`  uniform ${name}: ${r.size.bitsPerWeight} bpw, KLD ${r.kld.toFixed(4)}`);
  for (const [name, r] of Object.entries({ mix34, mix234, proxy34 })) {
    console.log(
      `  ${name}: ${r.bits} bpw, KLD ${r.kld.toFixed(4)} (predicted Σ loss ${r.predicted.toPrecision(4)})`,
    );
  }
  assert.equal(u3.size.bitsPerWeight, 3.5);
  assert.equal(u4.size.bitsPerWeight, 4.5);
  // int3/int4 mix at 4.0 bpw: between the two uniform grids in bits and in KLD.
  assert.ok(mix34.kld < u3.kld && mix34.kld > u4.kld);
  // Same bits as uniform int3 (3.5 bpw), a lower KLD.
  assert.equal(mix234.bits, 3.5);
  assert.ok(mix234.kld < u3.kld * 0.95, `${mix234.kld} vs ${u3.kld}`);
  // The proxy's allocation also beats uniform int3, less well than the measured one.
  assert.ok(proxy34.kld < u3.kld && proxy34.kld > mix34.kld);
  const row = (r: { kld: number; size?: { bitsPerWeight: number }; bits?: number }) => ({
    bits: r.bits ?? r.size!.bitsPerWeight,
    kld: r.kld,
  });
  measured.set('uniform int3 g32', row(u3));
  measured.set('budget 3.5 from int2/int3/int4 g32', row(mix234));
  measured.set('budget 4.0 from int3/int4 g32, proxy loss', row(proxy34));
  measured.set('budget 4.0 from int3/int4 g32, measured loss', row(mix34));
  measured.set('uniform int4 g32', row(u4));
});

test("the default palette's allocation at 4.5 bits/weight and the q4_k_m-like preset", async () => {
  // `ptq quantize --target-bpw 4.5` with the default palette, as budget-vs-uniform.test.ts runs
  // it through the CLI.
  assert.deepEqual(sens.grids, DEFAULT_PALETTE);
  console.log(`  default palette: Spearman ρ = ${sens.spearman!.toFixed(4)}, ${sens.seconds.toFixed(1)} s`);
  assertPrinted(sens.spearman!, README_RHO.palette, 'Spearman ρ over the default palette');
  const nW = sens.layers.reduce((s, l) => s + l.weights, 0);
  const layers: AllocLayer[] = sens.layers.map((l) => ({
    name: l.name,
    options: sens.entries
      .filter((e) => e.layer === l.name)
      .map((e) => ({ grid: e.grid, bits: e.bits, loss: e.measured! })),
  }));
  const a = allocate(layers, Math.floor(4.5 * nW));
  const mix = await quantizeMixed(
    new Map(layers.map((l, i) => [l.name, parseGridName(l.options[a.choice[i]!]!.grid)])),
  );
  assert.equal(mix.size.bitsPerWeight * nW, a.bits);
  measured.set('budget 4.5 from the 7-grid default palette, measured loss', {
    bits: mix.size.bitsPerWeight,
    kld: mix.kld,
  });
  // llama.cpp's use_more_bits for 2 blocks: attn_v and ffn_down of block 1 one step up (int6).
  const presetGrid = presetGrids('q4_k_m-like', m.config.numLayers);
  const raised = [...presetGrid].filter(([, g]) => gridName(g) !== gridName(parseGridName('int4-g32')));
  assert.deepEqual(
    raised.map(([name, g]) => `${name} ${gridName(g)}`),
    [
      'model.layers.1.self_attn.v_proj.weight int6-g32-sym',
      'model.layers.1.mlp.down_proj.weight int6-g32-sym',
    ],
  );
  const preset = await quantizeMixed(presetGrid);
  measured.set('q4_k_m-like preset', { bits: preset.size.bitsPerWeight, kld: preset.kld });
  for (const [name, r] of measured)
    console.log(`  ${name}: ${r.bits.toFixed(4)} bpw, KLD ${r.kld.toFixed(5)}`);
});

test("README's table: every row's bits/weight and KLD as printed", () => {
  const [header, ...rows] = readmeTable('measured sensitivity on 256 tokens');
  assert.deepEqual(header, ['model', 'bits/weight', 'KLD']);
  assert.equal(rows.length, 7);
  for (const [label, bits, kld] of rows) {
    // The preset's label goes on to say which layers it raises (checked above).
    const key = label!.startsWith('q4_k_m-like preset') ? 'q4_k_m-like preset' : label!;
    const r = measured.get(key);
    assert.ok(r, `README row '${label}' is measured here`);
    assertPrinted(r.bits, bits!, `${key}: bits/weight`);
    assertPrinted(r.kld, kld!, `${key}: KLD`);
  }
  assert.equal(measured.size, rows.length);
});

test('a mixed-grid checkpoint reads back exactly: per-tensor specs, weights and KLD', async () => {
  const per = new Map<string, GridSpec>([
    ['model.layers.0.self_attn.v_proj.weight', parseGridName('int6-g32')],
    ['model.layers.1.mlp.down_proj.weight', parseGridName('nvfp4')],
    ['model.layers.0.mlp.up_proj.weight', parseGridName('int8-ch')],
  ]);
  const r = await quantizeMixed(per, 'int3-g32');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ptq-mixed-'));
  try {
    await writePtqCheckpoint(path.join(dir, 'q'), { ...m, weights: r.q.weights }, r.q.quantization);
    const back = await loadModel(path.join(dir, 'q'));
    for (const name of r.q.quantization.tensors.keys()) {
      assert.equal(
        gridName(back.quantization!.tensors.get(name)!.spec),
        gridName(per.get(name) ?? parseGridName('int3-g32')),
      );
      assert.deepEqual(back.weights.get(name)!.data, r.q.weights.get(name)!.data);
    }
    const size = modelSize(back.weights, back.quantization!.tensors);
    assert.equal(size.totalBytes, r.size.totalBytes);
    const again = await evaluate(new Decoder(back.config, back.weights), evalTokens, { protocol, reference });
    assert.equal(again.kld, r.kld);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('ptq quantize --target-size: the stored model fits, achieved bits equal the predicted ones, JSON has ρ', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ptq-budget-'));
  const lines: string[] = [];
  try {
    await quantizeCommand(
      path.join(REPO, 'models/tinystories-656k'),
      {
        method: 'rtn',
        grid: parseGridName('int4-g32'),
        output: path.join(dir, 'q'),
        calib: path.join(REPO, 'data/tinystories-valid-slice.txt'),
        nsamples: 8,
        seqlen: 128,
        seed: 0,
        targetSize: '1.2MiB',
        palette: 'int2-g32,int3-g32,int4-g32,int8-ch,nvfp4',
        sensitivityTokens: 128,
      },
      { json: true, log: (t) => lines.push(t) },
    );
    const r = JSON.parse(lines.join('\n'));
    console.log(
      `  --target-size 1.2MiB: ${r.bytes} bytes, ${r.bitsPerWeight.toFixed(4)} bpw, ρ ${r.allocation.spearman.toFixed(3)}`,
    );
    assert.ok(r.bytes <= 1.2 * 2 ** 20);
    assert.equal(r.allocation.achievedBits, r.allocation.predictedBits);
    assert.ok(r.allocation.predictedBits <= r.allocation.budgetBits);
    // The budget is the size minus the float32 embeddings and norms: 2048·128 + 5·128 floats.
    assert.equal(r.allocation.budgetBits, (Math.floor(1.2 * 2 ** 20) - 4 * (2048 * 128 + 5 * 128)) * 8);
    assert.equal(r.allocation.layers.length, 14);
    assert.ok(r.allocation.spearman > 0.5);
    const back = await loadModel(path.join(dir, 'q'));
    assert.equal(modelSize(back.weights, back.quantization!.tensors).totalBytes, r.bytes);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
