import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import {
  decodeValues,
  encodeValues,
  GGML_TYPES,
  ggmlType,
  rowBytes,
  typeForRow,
} from '../../src/formats/ggml.js';
import { nearestInt } from '../../src/formats/ggml-math.js';
import { SafetensorsModel } from '../../src/io/safetensors.js';
import { refHarness } from '../export/llama-cpp.js';
import { ASSETS, assetsPresent, seededRandom, skipOrFail, tempDir } from '../helpers.js';

/** ggml-common.h static_asserts (bytes per block) and ggml.h type ids. */
const GGML_COMMON: Record<string, [id: number, block: number, bytes: number]> = {
  F32: [0, 1, 4],
  F16: [1, 1, 2],
  Q4_0: [2, 32, 2 + 16],
  Q4_1: [3, 32, 2 * 2 + 16],
  Q5_0: [6, 32, 2 + 4 + 16],
  Q5_1: [7, 32, 2 * 2 + 4 + 16],
  Q8_0: [8, 32, 2 + 32],
  Q2_K: [10, 256, 2 * 2 + 256 / 16 + 256 / 4],
  Q3_K: [11, 256, 2 + 256 / 4 + 256 / 8 + 12],
  Q4_K: [12, 256, 2 * 2 + 12 + 256 / 2],
  Q5_K: [13, 256, 2 * 2 + 12 + 256 / 2 + 256 / 8],
  Q6_K: [14, 256, 2 + 256 / 16 + (3 * 256) / 4],
  BF16: [30, 1, 2],
  TQ1_0: [34, 256, 2 + 256 / 64 + (256 - (4 * 256) / 64) / 5],
  TQ2_0: [35, 256, 2 + 256 / 4],
};

test('block sizes, bytes per block and ids equal ggml-common.h / ggml.h', () => {
  assert.equal(GGML_TYPES.length, Object.keys(GGML_COMMON).length);
  for (const t of GGML_TYPES) {
    const [id, block, bytes] = GGML_COMMON[t.name]!;
    assert.deepEqual([t.id, t.blockSize, t.typeSize], [id, block, bytes], t.name);
    assert.equal(t.bitsPerWeight, (bytes * 8) / block);
  }
  // The bits per weight ggml-common.h states in its comments.
  assert.equal(ggmlType('Q2_K').bitsPerWeight, 2.625);
  assert.equal(ggmlType('Q3_K').bitsPerWeight, 3.4375);
  assert.equal(ggmlType('Q4_K').bitsPerWeight, 4.5);
  assert.equal(ggmlType('Q6_K').bitsPerWeight, 6.5625);
  assert.equal(ggmlType('TQ1_0').bitsPerWeight, 1.6875);
  assert.equal(rowBytes(ggmlType('Q4_0'), 128), 72);
});

test('nearest_int rounds half to even through float32, like ggml', () => {
  assert.deepEqual([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999998, 7.5].map(nearestInt), [0, 2, 2, 0, -2, 2, 8]);
});

/** x_j = (j − 16)/2: −8 … 7.5, largest |x| is −8 at j = 0. */
const ramp = Float32Array.from({ length: 32 }, (_, j) => (j - 16) / 2);

test('Q4_0 block by hand: d = max/−8 = 1, q = trunc(x/d + 8.5) capped at 15', () => {
  const y = encodeValues(ggmlType('Q4_0'), ramp);
  assert.deepEqual([y[0], y[1]], [0x00, 0x3c]); // f16 1.0
  // q_j = floor((j + 1)/2) for j < 16 (x = −7.5 -> 1.0 -> 1), q_{j+16} = min(15, floor((j + 17)/2)).
  assert.equal(y[2], 0 | (8 << 4));
  assert.equal(y[3], 1 | (9 << 4));
  assert.equal(y[17], 8 | (15 << 4));
  const x = decodeValues(ggmlType('Q4_0'), y, 32);
  assert.deepEqual([x[0], x[1], x[2], x[31]], [-8, -7, -7, 7]);
});

test('Q8_0 block by hand: d = f16(8/127), q = roundf(x/d)', () => {
  const y = encodeValues(ggmlType('Q8_0'), ramp);
  // 8/127 = 0.0629921: f16 exponent −4, mantissa round(0.007874·1024) = 8 -> 0x2C08.
  assert.deepEqual([y[0], y[1]], [0x08, 0x2c]);
  const q = new Int8Array(y.buffer, 2, 32);
  // x/d with d the float32 8/127: −8 -> −127, −7.5 -> −119.06 -> −119, 0.5 -> 7.94 -> 8, 7.5 -> 119.06 -> 119.
  assert.deepEqual([q[0], q[1], q[17], q[31]], [-127, -119, 8, 119]);
});

test('Q4_1 block by hand: d = (max − min)/15, m = min', () => {
  const y = encodeValues(ggmlType('Q4_1'), ramp);
  const x = decodeValues(ggmlType('Q4_1'), y, 32);
  // d = 15.5/15 = 1.0333 (f16 1.0332031), m = −8: the ends decode to −8 and −8 + 15·d.
  assert.equal(x[0], -8);
  assert.ok(Math.abs(x[31]! - (-8 + 15 * 1.0332031)) < 1e-6);
});

test('TQ2_0 block by hand: d = amax, trits 0,1,2 in 2-bit fields of 4 weights 32 apart', () => {
  const x = Float32Array.from({ length: 256 }, (_, i) => [-0.75, 0, 0.75, 0.3][i % 4]!);
  const y = encodeValues(ggmlType('TQ2_0'), x);
  assert.deepEqual([y[64], y[65]], [0x00, 0x3a]); // f16 0.75
  // byte m of the first 32 holds weights m, m+32, m+64, m+96 (same residue mod 4): weight 0 is −0.75 -> 0.
  assert.equal(y[0], 0);
  assert.equal(y[1], 0b01010101); // weights ≡ 1 mod 4: 0 -> trit 1 in every field
  assert.equal(y[3], 0b01010101); // 0.3/0.75 = 0.4 rounds to 0
  const back = decodeValues(ggmlType('TQ2_0'), y, 256);
  assert.deepEqual([back[0], back[1], back[2], back[3]], [-0.75, 0, 0.75, 0]);
});

test("round trips stay within each type's error bound", () => {
  const rand = seededRandom(3);
  const x = Float32Array.from({ length: 256 * 16 }, () => (rand() - 0.5) * 2 * (rand() < 0.05 ? 8 : 1));
  for (const name of ['Q4_0', 'Q5_0', 'Q8_0']) {
    const t = ggmlType(name);
    const back = decodeValues(t, encodeValues(t, x), x.length);
    // Symmetric 32-blocks: |error| ≤ d (half a step, or one step at the clamped +max end), d = amax/(levels/2).
    const half = { Q4_0: 8, Q5_0: 16, Q8_0: 127 }[name]!;
    for (let b = 0; b < x.length / 32; b++) {
      let amax = 0;
      for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b * 32 + j]!));
      for (let j = 0; j < 32; j++) {
        const i = b * 32 + j;
        assert.ok(Math.abs(back[i]! - x[i]!) <= (amax / half) * 1.002, `${name} block ${b}`);
      }
    }
  }
  // Super-blocks: relative RMS error, measured on this data (Q2_K 0.377, Q3_K 0.237, Q4_K 0.101,
  // Q5_K 0.051, Q6_K 0.028, TQ2_0 0.627; bound = measurement × 1.15), and ordered by bits.
  const bounds: Record<string, number> = {
    Q2_K: 0.44,
    Q3_K: 0.28,
    Q4_K: 0.12,
    Q5_K: 0.06,
    Q6_K: 0.032,
    TQ2_0: 0.73,
  };
  let prev = Number.POSITIVE_INFINITY;
  let rms = 0;
  for (const v of x) rms += v * v;
  rms = Math.sqrt(rms / x.length);
  for (const [name, bound] of Object.entries(bounds)) {
    const t = ggmlType(name);
    const back = decodeValues(t, encodeValues(t, x), x.length);
    let e = 0;
    for (let i = 0; i < x.length; i++) e += (back[i]! - x[i]!) ** 2;
    const rel = Math.sqrt(e / x.length) / rms;
    assert.ok(rel < bound, `${name}: relative RMS error ${rel.toFixed(4)} >= ${bound}`);
    if (name !== 'TQ2_0') {
      assert.ok(rel < prev, `${name} should beat the type with fewer bits`);
      prev = rel;
    }
  }
});

test('llama-quantize fallbacks for rows that are not whole blocks', () => {
  const fb = (t: string, n: number) => typeForRow(ggmlType(t), n).name;
  assert.equal(fb('Q4_K', 128), 'Q5_0');
  assert.equal(fb('Q5_K', 384), 'Q5_1');
  assert.equal(fb('Q6_K', 64), 'Q8_0');
  assert.equal(fb('Q2_K', 128), 'Q4_0');
  assert.equal(fb('Q4_0', 172), 'F16');
  assert.equal(fb('Q6_K', 172), 'F16');
  assert.equal(fb('Q4_K', 768), 'Q4_K');
});

test("every type is byte-exact with llama.cpp's quantizer and decoder on real GPT-2 weights", async (t) => {
  const exe = refHarness();
  if (typeof exe !== 'string') return skipOrFail(t, exe.reason);
  if (!assetsPresent) return t.skip('shared assets not present');
  const st = await SafetensorsModel.open(
    path.join(ASSETS, 'weights/gpt2-small-partial/gpt2_small_partial.safetensors'),
  );
  const w = await st.readFloat32('transformer.h.0.attn.c_attn.weight');
  await st.close();
  // 256 rows of 768 real weights, plus blocks of zeros, a constant, tiny and large values.
  const rand = seededRandom(11);
  const x = new Float32Array(768 * 256 + 256 * 8);
  x.set(w.subarray(0, 768 * 256));
  for (let i = 768 * 256; i < x.length; i++) x[i] = (rand() - 0.5) * (i % 3 === 0 ? 1e-3 : 10);
  x.fill(0, 768 * 256, 768 * 256 + 256);
  x.fill(0.5, 768 * 256 + 256, 768 * 256 + 512);
  const dir = tempDir('ptq-ggml-', t);
  writeFileSync(path.join(dir, 'x.f32'), x);
  for (const type of GGML_TYPES) {
    const ours = encodeValues(type, x);
    execFileSync(exe, ['chunk', String(type.id), '256', path.join(dir, 'x.f32'), path.join(dir, 'ref.bin')]);
    const ref = readFileSync(path.join(dir, 'ref.bin'));
    let differing = 0;
    for (let b = 0; b < ours.length / type.typeSize; b++) {
      const o = b * type.typeSize;
      if (!ours.subarray(o, o + type.typeSize).every((v, j) => v === ref[o + j])) differing++;
    }
    assert.equal(ref.length, ours.length, type.name);
    assert.equal(differing, 0, `${type.name}: ${differing} blocks differ from ggml_quantize_chunk`);
    if (type.id === 0) continue; // F32 has no to_float
    writeFileSync(path.join(dir, 'q.bin'), ours);
    execFileSync(exe, ['dequant', String(type.id), path.join(dir, 'q.bin'), path.join(dir, 'deq.f32')]);
    const refValues = new Float32Array(readFileSync(path.join(dir, 'deq.f32')).buffer.slice(0));
    const values = decodeValues(type, ours, x.length);
    assert.ok(
      values.every((v, i) => v === refValues[i]),
      `${type.name}: decoded values differ from dequantize_row`,
    );
  }
});
