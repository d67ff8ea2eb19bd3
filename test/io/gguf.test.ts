import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { FormatError } from '../../src/errors.js';
import { exportGguf } from '../../src/export/gguf.js';
import { encodeValues, ggmlType } from '../../src/formats/ggml.js';
import { GgufFile, GgufValueType, kv, writeGguf } from '../../src/io/gguf.js';
import { GgufTokenizer } from '../../src/io/gguf-tokenizer.js';
import { loadModel } from '../../src/model/load.js';
import { ASSETS, assetsPresent } from '../helpers.js';

const V1 = path.join(ASSETS, 'models/stories260k-gguf-v1/tinyllamas-stories-260k-f32.gguf');
const SPM = path.join(ASSETS, 'tokenizers/llamacpp-vocab/ggml-vocab-llama-spm.gguf');
const tmp = () => mkdtempSync(path.join(os.tmpdir(), 'ptq-gguf-io-'));

test('GGUF v1 asset: header, 32-bit counts and lengths, 48 F32 tensors, llama metadata', {
  skip: !assetsPresent,
}, async () => {
  const g = await GgufFile.open(V1);
  try {
    assert.equal(g.version, 1);
    assert.equal(g.tensors.length, 48);
    assert.equal(g.get('general.architecture'), 'llama');
    assert.equal(g.get('llama.embedding_length'), 64);
    assert.equal(g.get('llama.feed_forward_length'), 172);
    assert.equal(g.get('llama.attention.head_count_kv'), 4);
    assert.deepEqual(g.tensor('blk.0.attn_k.weight').dims, [64, 32]);
    assert.equal(g.dataOffset % 32, 0);
    const last = g.tensors.at(-1)!;
    assert.equal(g.dataOffset + last.offset + last.byteLength, g.size);
  } finally {
    await g.close();
  }
});

test('our export of stories260K.bin equals the independent v1 conversion tensor for tensor (Q/K layout included)', {
  skip: !assetsPresent,
}, async () => {
  const out = path.join(tmp(), 's.gguf');
  await exportGguf(await loadModel(path.join(ASSETS, 'models/stories260k/stories260K.bin')), out, {
    type: 'f32',
  });
  const [ours, ref] = [await GgufFile.open(out), await GgufFile.open(V1)];
  try {
    assert.equal(ours.version, 3);
    assert.equal(ours.get('general.alignment'), 32);
    assert.equal(ours.get('general.quantization_version'), 2);
    assert.equal(ours.get('general.file_type'), 0);
    // The v1 file stores the (untied) classifier as output.weight; ours leaves it to token_embd.
    for (const t of ref.tensors) {
      const name = t.name === 'output.weight' ? 'token_embd.weight' : t.name;
      assert.deepEqual(await ours.readFloat32(name), await ref.readFloat32(t.name), t.name);
    }
    assert.deepEqual(ours.get('tokenizer.ggml.tokens'), ref.get('tokenizer.ggml.tokens'));
    assert.deepEqual(ours.get('tokenizer.ggml.token_type'), ref.get('tokenizer.ggml.token_type'));
    for (const key of ['context_length', 'block_count', 'rope.dimension_count', 'attention.head_count']) {
      assert.equal(ours.get(`llama.${key}`), ref.get(`llama.${key}`), key);
    }
  } finally {
    await ours.close();
    await ref.close();
  }
});

test("GGUF tokenizer reproduces llama.cpp's test vectors for the llama-spm vocabulary (v3 vocab-only file)", {
  skip: !assetsPresent,
}, async () => {
  const g = await GgufFile.open(SPM);
  const tok = GgufTokenizer.fromGguf(g);
  await g.close();
  assert.equal(g.version, 3);
  // Texts separated by a marker line, the file ending with one (llama.cpp's test-tokenizer-0 format).
  const inputs = readFileSync(`${SPM}.inp`, 'utf8').split('\n__ggml_vocab_test__\n').slice(0, -1);
  const outputs = readFileSync(`${SPM}.out`, 'utf8').split('\n');
  assert.equal(inputs.length, 46);
  inputs.forEach((text, i) => {
    const expected = outputs[i]!.trim() ? outputs[i]!.trim().split(/\s+/).map(Number) : [];
    // llama.cpp's test tokenizes without special tokens: drop our BOS.
    assert.deepEqual(tok.encode(text).slice(1), expected, `test ${i}: ${JSON.stringify(text)}`);
  });
  assert.deepEqual(tok.encode('Once upon a time,'), [1, 9038, 2501, 263, 931, 29892]);
});

test('writer -> reader round trip: every KV type, arrays, aligned tensors of several ggml types', async () => {
  const file = path.join(tmp(), 'rt.gguf');
  const x = Float32Array.from({ length: 512 }, (_, i) => Math.sin(i) * 3);
  const types = ['F32', 'F16', 'Q4_0', 'Q6_K'];
  await writeGguf(
    file,
    [
      kv.str('general.architecture', 'llama'),
      kv.u32('a.u32', 4000000000),
      kv.i32('a.i32', -5),
      kv.f32('a.f32', 0.5),
      kv.bool('a.bool', true),
      { key: 'a.u64', type: GgufValueType.UINT64, value: 2n ** 40n },
      { key: 'a.i8', type: GgufValueType.INT8, value: -3 },
      { key: 'a.f64', type: GgufValueType.FLOAT64, value: Math.PI },
      kv.strings('a.strings', ['', 'ä', '▁x']),
      kv.f32s('a.f32s', [1, -2.5]),
    ],
    types.map((t) => ({
      name: `t.${t}`,
      dims: [256, 2],
      type: ggmlType(t),
      data: () => encodeValues(ggmlType(t), x),
    })),
  );
  const g = await GgufFile.open(file);
  try {
    assert.equal(g.get('general.alignment'), 32);
    assert.deepEqual(
      ['a.u32', 'a.i32', 'a.f32', 'a.bool', 'a.u64', 'a.i8', 'a.f64', 'a.strings', 'a.f32s'].map((k) =>
        g.get(k),
      ),
      [4000000000, -5, 0.5, true, 2n ** 40n, -3, Math.PI, ['', 'ä', '▁x'], [1, -2.5]],
    );
    for (const t of types) {
      const info = g.tensor(`t.${t}`);
      assert.equal(info.offset % 32, 0);
      assert.deepEqual(await g.readRaw(`t.${t}`), encodeValues(ggmlType(t), x), t);
    }
  } finally {
    await g.close();
  }
});

test('a failing export leaves neither the target nor a temporary file', async () => {
  const dir = tmp();
  const file = path.join(dir, 'out.gguf');
  await assert.rejects(
    writeGguf(
      file,
      [kv.str('general.architecture', 'llama')],
      [
        {
          name: 'w',
          dims: [32],
          type: ggmlType('F32'),
          data: () => {
            throw new Error('disk full');
          },
        },
      ],
    ),
    /disk full/,
  );
  assert.equal(existsSync(file), false);
  assert.deepEqual(readdirSync(dir), []);
});

test('corrupt files fail with FormatError naming the offset and the expectation', {
  skip: !assetsPresent,
}, async () => {
  const dir = tmp();
  const good = readFileSync(V1);
  const write = (name: string, bytes: Uint8Array) => {
    const p = path.join(dir, name);
    writeFileSync(p, bytes);
    return p;
  };
  const expectError = async (p: string, pattern: RegExp) => {
    await assert.rejects(
      GgufFile.open(p),
      (e: unknown) => e instanceof FormatError && pattern.test(e.message) && e.message.includes(p),
    );
  };
  await expectError(
    write('magic.gguf', Buffer.from('GGML\x01\x00\x00\x00')),
    /offset 0: not a GGUF file; expected magic "GGUF"/,
  );
  const version = Buffer.from(good);
  version.writeUInt32LE(7, 4);
  await expectError(
    write('version.gguf', version),
    /offset 4: unsupported GGUF version; expected 1, 2 or 3, got 7/,
  );
  const count = Buffer.from(good);
  count.writeUInt32LE(0xffffffff, 8); // v1: u32 tensor count
  await expectError(write('count.gguf', count), /offset 8: tensor count larger than the file can hold/);
  // v3 header with one KV whose 4-byte value type is cut after 2 bytes.
  const cut = Buffer.alloc(8 + 8 + 8 + 8 + 20 + 2);
  cut.write('GGUF', 0);
  cut.writeUInt32LE(3, 4);
  cut.writeBigUInt64LE(0n, 8);
  cut.writeBigUInt64LE(1n, 16);
  cut.writeBigUInt64LE(20n, 24);
  cut.write('general.architecture', 32);
  await expectError(
    write('header.gguf', cut),
    /offset 52: file truncated inside type of 'general.architecture'; expected 4 more bytes, got 2/,
  );
  await expectError(
    write('array.gguf', good.subarray(0, 5000)),
    /element count of 'tokenizer.ggml.scores' larger than the file can hold/,
  );
  await expectError(
    write('data.gguf', good.subarray(0, good.length - 100)),
    /'output.weight' offset \d+: tensor data past the end of the file/,
  );
  const len = Buffer.from(good);
  len.writeUInt32LE(0x7fffffff, 16); // length of the first key
  await expectError(
    write('strlen.gguf', len),
    /offset 16: length of key of metadata entry 0 larger than the file can hold/,
  );
  // A tensor offset that is not a multiple of the alignment.
  const g = await GgufFile.open(V1);
  const second = g.tensors[1]!;
  await g.close();
  const raw = Buffer.from(good);
  const nameAt = raw.indexOf(Buffer.from(second.name));
  const offsetAt = nameAt + second.name.length + 4 + 4 * second.dims.length + 4;
  raw.writeBigUInt64LE(BigInt(second.offset + 4), offsetAt);
  await expectError(
    write('align.gguf', raw),
    new RegExp(`offset ${offsetAt}: misaligned data offset of '${second.name}'; expected a multiple of 32`),
  );
  const type = Buffer.from(good);
  type.writeUInt32LE(99, offsetAt - 4);
  await expectError(write('type.gguf', type), /unsupported ggml type of 'blk.0.attn_q.weight'.*got 99/);
  copyFileSync(V1, path.join(dir, 'ok.gguf'));
  await (await GgufFile.open(path.join(dir, 'ok.gguf'))).close();
});
