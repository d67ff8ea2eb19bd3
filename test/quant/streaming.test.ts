/**
 * Streaming quantization (stream-quantize.ts) writes the same checkpoint, byte for byte, as
 * the in-memory path `ptq quantize` takes (loadModel -> quantizeModel -> writePtqCheckpoint):
 * on the bundled tinystories-656k (F32, tied embeddings) and on sharded F16/BF16 fixtures whose
 * names need the architecture's fused splits (phi3) and Conv1D transposes (gpt2).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { FormatError } from '../../src/errors.js';
import type { GridSpec } from '../../src/formats/grid.js';
import { decodeF16, encodeBf16, encodeF16, f16ToF32 } from '../../src/formats/half.js';
import { writePtqCheckpoint } from '../../src/io/ptq-checkpoint.js';
import { SafetensorsModel, SafetensorsWriter, writeSafetensors } from '../../src/io/safetensors.js';
import { loadModel } from '../../src/model/load.js';
import { modelSize, quantizeModel } from '../../src/quant/quantize-model.js';
import { untiedHfConfig } from '../../src/quant/rotate.js';
import { streamQuantize } from '../../src/quant/stream-quantize.js';
import type { TensorMap } from '../../src/tensor.js';
import { runCli } from '../cli/run-cli.js';
import { REPO, tempDir } from '../helpers.js';
import { CASES, WeightMaker, writeCheckpoint } from '../model/arch-reference.js';

type StreamingMethod = 'rtn' | 'hqq' | 'sinq';

const TINY = path.join(REPO, 'models/tinystories-656k');
const work = tempDir('ptq-stream-');
const INT4_G32: GridSpec = {
  bits: 4,
  symmetric: true,
  granularity: 'group',
  groupSize: 32,
  scaleDtype: 'f16',
};

/** The in-memory path exactly as quantizeCommand runs it. */
async function inMemory(dir: string, out: string, method: StreamingMethod, grid: GridSpec) {
  const model = await loadModel(dir);
  const q = await quantizeModel(model.config, model.weights, { method, grid, inPlace: true });
  const hfConfig = q.config.tiedEmbeddings ? model.hfConfig : untiedHfConfig(model.hfConfig);
  await writePtqCheckpoint(out, { ...model, hfConfig, weights: q.weights }, q.quantization);
  return modelSize(q.weights, q.quantization.tensors);
}

async function assertSameCheckpoint(dir: string, label: string, method: StreamingMethod, grid: GridSpec) {
  const a = path.join(work, `${label}-memory`);
  const b = path.join(work, `${label}-stream`);
  const size = await inMemory(dir, a, method, grid);
  const progress: number[] = [];
  const r = await streamQuantize(dir, b, {
    method,
    grid,
    copyPieceBytes: 1000, // pieces that split rows and tensors at odd places
    onProgress: (p) => progress.push(p.layer),
  });
  for (const file of ['model.safetensors', 'config.json']) {
    const [x, y] = [readFileSync(path.join(a, file)), readFileSync(path.join(b, file))];
    assert.ok(x.length > 0 && x.equals(y), `${label}: ${file} differs (${x.length} vs ${y.length} bytes)`);
  }
  assert.deepEqual(
    progress,
    Array.from({ length: r.config.numLayers }, (_, i) => i + 1),
  );
  assert.equal(r.bitsPerWeight, size.bitsPerWeight);
  assert.equal(r.totalBytes, size.totalBytes);
  await rm(a, { recursive: true });
  return b;
}

test('tinystories-656k: streaming RTN/HQQ/SINQ on int, asymmetric and float grids is byte-identical to the in-memory path', async () => {
  const cases: [StreamingMethod, GridSpec][] = [
    ['rtn', INT4_G32],
    ['rtn', { bits: 3, symmetric: false, granularity: 'channel', groupSize: 0, scaleDtype: 'bf16' }],
    [
      'rtn',
      { bits: 4, symmetric: true, granularity: 'group', groupSize: 16, scaleDtype: 'e4m3', format: 'nvfp4' },
    ],
    ['hqq', INT4_G32],
    ['sinq', INT4_G32],
  ];
  for (const [i, [method, grid]] of cases.entries()) {
    const out = await assertSameCheckpoint(TINY, `tiny-${i}`, method, grid);
    const names = (await SafetensorsModel.open(out).then(async (st) => [st.names(), await st.close()]))[0]!;
    // The grid-dependent tensors are there: NVFP4's per-tensor scale, SINQ's column scales, integer zeros.
    const has = (suffix: string) => names.includes(`model.layers.1.self_attn.q_proj.${suffix}`);
    assert.equal(has('global_scale'), grid.format === 'nvfp4');
    assert.equal(has('col_scales'), method === 'sinq');
    assert.equal(has('qzeros'), !grid.symmetric);
    assert.equal(has('zeros'), method === 'hqq');
    if (i === 0) {
      // Hand-computed layout of a 4-bit g32 weight [384, 128] (mlp.down_proj is [128, 384]):
      // 128·384/2 bytes of codes, 128 × 12 F16 scales.
      const st = await SafetensorsModel.open(out);
      assert.deepEqual(st.info('model.layers.0.mlp.down_proj.qweight').shape, [(128 * 384) / 2]);
      assert.deepEqual(st.info('model.layers.0.mlp.down_proj.scales').shape, [128, 12]);
      assert.equal(st.info('model.layers.0.mlp.down_proj.scales').dtype, 'F16');
      await st.close();
    }
    await rm(out, { recursive: true });
  }
});

/** A fixture's tensors as F16 (BF16 for the norms), in two shards with model.safetensors.index.json. */
async function shardedHalf(
  label: string,
  caseName: string,
  seed: number,
  bf16Names = /norm|ln_/,
  edit?: (weights: TensorMap) => void,
): Promise<string> {
  const i = CASES.findIndex((c) => c.name.startsWith(caseName));
  assert.ok(i >= 0, caseName);
  const dir = path.join(work, label);
  const w = new WeightMaker(seed);
  CASES[i]!.tensors(w);
  edit?.(w.map as TensorMap);
  const { mkdir } = await import('node:fs/promises');
  await mkdir(dir);
  await writeCheckpoint(dir, CASES[i]!.config, w.map);
  await rm(path.join(dir, 'model.safetensors'));
  const names = [...w.map.keys()];
  const half = Math.ceil(names.length / 2);
  const weightMap: Record<string, string> = {};
  for (const [s, part] of [names.slice(0, half), names.slice(half)].entries()) {
    const file = `model-0000${s + 1}-of-00002.safetensors`;
    const tensors = part.map((name) => {
      const t = (w.map as TensorMap).get(name)!;
      weightMap[name] = file;
      const bf16 = bf16Names.test(name);
      return {
        name,
        dtype: bf16 ? ('BF16' as const) : ('F16' as const),
        shape: t.shape,
        data: bf16 ? encodeBf16(t.data) : encodeF16(t.data),
      };
    });
    await writeSafetensors(path.join(dir, file), tensors);
  }
  await writeFile(
    path.join(dir, 'model.safetensors.index.json'),
    JSON.stringify({ metadata: {}, weight_map: weightMap }),
  );
  return dir;
}

test('sharded F16/BF16 phi3 (fused splits) and gpt2 (Conv1D transposes): streaming equals the in-memory path', async () => {
  const grid: GridSpec = { ...INT4_G32, groupSize: 16 };
  const phi3 = await shardedHalf('phi3', 'phi3 (fused', 11);
  await rm(await assertSameCheckpoint(phi3, 'phi3-rtn', 'rtn', grid), { recursive: true });
  await rm(await assertSameCheckpoint(phi3, 'phi3-sinq', 'sinq', grid), { recursive: true });
  const gpt2 = await shardedHalf('gpt2', 'gpt2', 12);
  const out = await assertSameCheckpoint(gpt2, 'gpt2-hqq', 'hqq', grid);
  // The embedding went through the piecewise copy: F16 source values, stored as F32.
  const st = await SafetensorsModel.open(out);
  const src = await SafetensorsModel.open(gpt2);
  const name = src.names().find((n) => n.includes('wte'))!;
  assert.deepEqual(await st.readFloat32('model.embed_tokens.weight'), await src.readFloat32(name));
  await Promise.all([st.close(), src.close()]);
});

test('row-wise streaming RTN: BF16 int3 asymmetric equals the in-memory path; a NaN or Inf is the same error', async () => {
  // BF16 rows decode by a shift; 3-bit codes of 16-column groups start mid-byte (the general packer).
  const grid: GridSpec = { ...INT4_G32, bits: 3, symmetric: false, groupSize: 16 };
  const llama = await shardedHalf('llama-bf16', 'llama (', 13, /./);
  await rm(await assertSameCheckpoint(llama, 'llama-bf16-rtn', 'rtn', grid), { recursive: true });
  // Weights of a quantized linear (decoded row by row) and of the embedding (copied in pieces).
  for (const [label, bf16, bad, target, row] of [
    ['nan-f16', /norm/, Number.NaN, 'model.layers.1.mlp.down_proj.weight', 2],
    ['inf-bf16', /./, -Infinity, 'model.layers.1.mlp.down_proj.weight', 2],
    ['inf-embed', /norm/, Infinity, 'model.embed_tokens.weight', 9],
  ] as const) {
    const dir = await shardedHalf(label, 'llama (', 13, bf16, (weights) => {
      const t = weights.get(target)!;
      t.data[row * t.shape[1]! + 5] = bad;
    });
    const message = `'${target}': weight is not finite; expected finite values in every tensor of a model to quantize, got ${bad} at row ${row}, column 5 (the checkpoint is corrupt or was saved after a diverged training step)`;
    await assert.rejects(inMemory(dir, path.join(work, `${label}-memory`), 'rtn', grid), { message });
    // 1000-byte pieces: the embedding's bad value lies in a later piece than the first.
    const options = { method: 'rtn' as const, grid, copyPieceBytes: 1000 };
    await assert.rejects(streamQuantize(dir, path.join(work, `${label}-stream`), options), { message });
  }
});

test('SafetensorsWriter: pieces out of order or missing bytes are refused; whole output equals writeSafetensors', async () => {
  const tensors = [
    { name: 'a', dtype: 'F32' as const, shape: [2, 3], data: Float32Array.of(1, 2, 3, 4, 5, 6) },
    { name: 'e', dtype: 'F32' as const, shape: [0], data: new Float32Array(0) },
    { name: 'b', dtype: 'U8' as const, shape: [3], data: Uint8Array.of(7, 8, 9) },
  ];
  const ref = path.join(work, 'ref.safetensors');
  await writeSafetensors(ref, tensors, { k: 'v' });
  const file = path.join(work, 'pieces.safetensors');
  const w = await SafetensorsWriter.create(file, tensors, { k: 'v' });
  await assert.rejects(w.write('b', Uint8Array.of(1)), FormatError); // 'a' comes first
  await w.write('a', Float32Array.of(1, 2));
  await assert.rejects(w.write('a', new Float32Array(5)), FormatError); // 16 bytes left, not 20
  await w.write('a', Float32Array.of(3, 4, 5, 6));
  await w.write('b', Uint8Array.of(7, 8));
  await assert.rejects(w.finish(), FormatError); // one byte of 'b' missing
  await w.write('b', Uint8Array.of(9));
  await w.finish();
  assert.ok(readFileSync(file).equals(readFileSync(ref)));
});

test('decodeF16 by table (long inputs) equals f16ToF32 on all 65536 codes', () => {
  const all = Uint16Array.from({ length: 65536 }, (_, h) => h);
  const table = decodeF16(all);
  for (let h = 0; h < 65536; h++) assert.ok(Object.is(table[h], Math.fround(f16ToF32(h))), `code ${h}`);
  // Corner values of IEEE binary16: max normal, min subnormal, -0, +inf.
  assert.deepEqual(
    [table[0x7bff], table[0x0001], table[0x8000], table[0x7c00]],
    [65504, 2 ** -24, -0, Infinity],
  );
});

test('ptq quantize streams rtn on a Hugging Face directory and writes what the in-memory path writes', async () => {
  const out = path.join(work, 'cli-stream');
  const r = runCli([
    'quantize',
    TINY,
    '--method',
    'rtn',
    '--bits',
    '4',
    '--group-size',
    '32',
    '-o',
    out,
    '--json',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const result = JSON.parse(r.stdout);
  assert.equal(result.streamed, true);
  assert.equal(result.bitsPerWeight, 4.5); // 4-bit codes + one F16 scale per 32 weights
  const ref = path.join(work, 'cli-memory');
  await inMemory(TINY, ref, 'rtn', INT4_G32);
  for (const file of ['model.safetensors', 'config.json'])
    assert.ok(readFileSync(path.join(out, file)).equals(readFileSync(path.join(ref, file))), file);
  // With a whole-model option (here --rotate) the CLI loads the model instead.
  const rotated = path.join(work, 'cli-rotated');
  const r2 = runCli(['quantize', TINY, '--method', 'rtn', '--rotate', 'hadamard', '-o', rotated, '--json']);
  assert.equal(r2.code, 0, r2.stderr);
  assert.equal(JSON.parse(r2.stdout).streamed, undefined);
});
