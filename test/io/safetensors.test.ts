/**
 * safetensors: every dtype the issue lists reads back to the values written, shards join
 * through model.safetensors.index.json, and the real GPT-2 asset reads its documented values.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { FormatError } from '../../src/errors.js';
import { encodeBf16, encodeF16 } from '../../src/formats/half.js';
import { SafetensorsModel, writeSafetensors } from '../../src/io/safetensors.js';
import { ASSETS, assetsPresent } from '../helpers.js';

const work = mkdtempSync(path.join(os.tmpdir(), 'ptq-st-'));
after(() => rmSync(work, { recursive: true, force: true }));

const VALUES = [-2.5, -1, 0, 0.5, 3, 100];
const f32 = Float32Array.from(VALUES);

test('F32, F16, BF16, F64, I8, U8, I32, I64 read back as the float32 values written', async () => {
  const file = path.join(work, 'dtypes.safetensors');
  const ints = VALUES.map(Math.trunc);
  await writeSafetensors(file, [
    { name: 'f32', dtype: 'F32', shape: [2, 3], data: f32 },
    { name: 'f16', dtype: 'F16', shape: [6], data: encodeF16(f32) },
    { name: 'bf16', dtype: 'BF16', shape: [6], data: encodeBf16(f32) },
    { name: 'f64', dtype: 'F64', shape: [6], data: Float64Array.from(VALUES) },
    { name: 'i8', dtype: 'I8', shape: [6], data: Int8Array.from(ints) },
    { name: 'u8', dtype: 'U8', shape: [6], data: Uint8Array.from(ints.map(Math.abs)) },
    { name: 'i32', dtype: 'I32', shape: [6], data: Int32Array.from(ints) },
    { name: 'i64', dtype: 'I64', shape: [6], data: BigInt64Array.from(ints, BigInt) },
  ]);
  // The header length prefix is u64 LE and the JSON is padded to 8 bytes.
  const bytes = readFileSync(file);
  assert.equal(Number(bytes.readBigUInt64LE(0)) % 8, 0);
  const st = await SafetensorsModel.open(file);
  try {
    assert.deepEqual(st.info('f32').shape, [2, 3]);
    for (const name of ['f32', 'f16', 'bf16', 'f64'])
      assert.deepEqual([...(await st.readFloat32(name))], VALUES, name);
    assert.deepEqual([...(await st.readFloat32('i8'))], [-2, -1, 0, 0, 3, 100]);
    assert.deepEqual([...(await st.readFloat32('u8'))], [2, 1, 0, 0, 3, 100]);
    assert.deepEqual([...(await st.readFloat32('i64'))], [-2, -1, 0, 0, 3, 100]);
  } finally {
    await st.close();
  }
});

test('multi-shard models join through model.safetensors.index.json; a wrong index is named', async () => {
  const dir = path.join(work, 'sharded');
  mkdirSync(dir);
  await writeSafetensors(path.join(dir, 'a.safetensors'), [
    { name: 'x', dtype: 'F32', shape: [6], data: f32 },
  ]);
  await writeSafetensors(path.join(dir, 'b.safetensors'), [
    { name: 'y', dtype: 'F32', shape: [1], data: Float32Array.of(7) },
  ]);
  const index = path.join(dir, 'model.safetensors.index.json');
  writeFileSync(index, JSON.stringify({ weight_map: { x: 'a.safetensors', y: 'b.safetensors' } }));
  const st = await SafetensorsModel.open(dir);
  assert.deepEqual(st.names().sort(), ['x', 'y']);
  assert.deepEqual([...(await st.readFloat32('y'))], [7]);
  await st.close();

  writeFileSync(index, JSON.stringify({ weight_map: { x: 'b.safetensors', y: 'b.safetensors' } }));
  await assert.rejects(
    SafetensorsModel.open(dir),
    (e: unknown) =>
      e instanceof FormatError &&
      /index names a tensor its shard does not hold/.test(e.message) &&
      /x/.test(e.message),
  );
});

test('the real GPT-2 asset reads its documented first values', {
  skip: !assetsPresent && 'needs ../shared/assets',
}, async () => {
  const st = await SafetensorsModel.open(
    path.join(ASSETS, 'weights/gpt2-small-partial/gpt2_small_partial.safetensors'),
  );
  try {
    assert.equal(st.names().length, 123);
    const w = await st.readFloat32('transformer.h.0.attn.c_attn.weight');
    assert.deepEqual(st.info('transformer.h.0.attn.c_attn.weight').shape, [768, 2304]);
    assert.deepEqual(
      [...w.subarray(0, 3)].map((v) => Math.round(v * 1e4) / 1e4),
      [-0.4738, -0.2614, -0.0978],
    );
  } finally {
    await st.close();
  }
});
