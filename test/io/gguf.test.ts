import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  closeSync,
  copyFileSync,
  existsSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { FormatError } from '../../src/errors.js';
import { exportGguf } from '../../src/export/gguf.js';
import { encodeValues, ggmlType } from '../../src/formats/ggml.js';
import { type GgufArray, GgufFile, type GgufKv, GgufValueType, kv, writeGguf } from '../../src/io/gguf.js';
import { GgufTokenizer } from '../../src/io/gguf-tokenizer.js';
import { loadModel } from '../../src/model/load.js';
import { ASSETS, assetsPresent, REPO, tempDir } from '../helpers.js';

const V1 = path.join(ASSETS, 'models/stories260k-gguf-v1/tinyllamas-stories-260k-f32.gguf');
const SPM = path.join(ASSETS, 'tokenizers/llamacpp-vocab/ggml-vocab-llama-spm.gguf');
const tmp = () => tempDir('ptq-gguf-io-');

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
      [4000000000, -5, 0.5, true, 2n ** 40n, -3, Math.PI, ['', 'ä', '▁x'], Float32Array.of(1, -2.5)],
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

test('metadata arrays come back as typed arrays of their element type, across the 1 MiB header window', async () => {
  const file = path.join(tmp(), 'arrays.gguf');
  const A = GgufValueType.ARRAY;
  const arr = (key: string, itemType: GgufValueType, value: GgufArray) =>
    ({ key, type: A, itemType, value }) as GgufKv;
  // Corner values of every element type; the 3-byte string before them leaves them at odd offsets.
  const corners: [string, GgufValueType, GgufArray][] = [
    ['u8', GgufValueType.UINT8, Uint8Array.of(0, 255, 7)],
    ['i8', GgufValueType.INT8, Int8Array.of(-128, 127, -1)],
    ['u16', GgufValueType.UINT16, Uint16Array.of(0, 65535, 258)],
    ['i16', GgufValueType.INT16, Int16Array.of(-32768, 32767, -2)],
    ['u32', GgufValueType.UINT32, Uint32Array.of(0, 2 ** 32 - 1, 65536)],
    ['i32', GgufValueType.INT32, Int32Array.of(-(2 ** 31), 2 ** 31 - 1, -3)],
    ['f32', GgufValueType.FLOAT32, Float32Array.of(-2.5, 3.4028234663852886e38, -0)],
    ['bool', GgufValueType.BOOL, Uint8Array.of(1, 0, 1)],
    ['u64', GgufValueType.UINT64, BigUint64Array.of(0n, 2n ** 64n - 1n, 2n ** 53n + 1n)],
    ['i64', GgufValueType.INT64, BigInt64Array.of(-(2n ** 63n), 2n ** 63n - 1n, -5n)],
    ['f64', GgufValueType.FLOAT64, Float64Array.of(Math.PI, -1e308, 5e-324)],
  ];
  const long = `${'x'.repeat(3 << 20)}ä`; // one string longer than the window
  const many = Array.from({ length: 100_000 }, (_, i) => `t${i}`); // ~1.3 MB of strings
  const wide = Float32Array.from({ length: 300_000 }, (_, i) => i / 7); // 1.2 MB, crosses a refill
  await writeGguf(
    file,
    [
      kv.str('general.architecture', 'llama'),
      kv.str('a.odd', 'abc'),
      ...corners.map(([k, t, v]) => arr(`a.${k}`, t, v)),
      kv.str('a.long', long),
      kv.strings('a.many', many),
      kv.f32s('a.wide', wide),
      ...corners.map(([k, t, v]) => arr(`b.${k}`, t, v)),
    ],
    [{ name: 't', dims: [32], type: ggmlType('F32'), data: () => new Uint8Array(128).fill(1) }],
  );
  const g = await GgufFile.open(file);
  try {
    assert.ok(g.dataOffset > 5 << 20, `header of ${g.dataOffset} bytes spans several windows`);
    for (const [k, , v] of corners) {
      for (const p of ['a', 'b']) {
        const got = g.get(`${p}.${k}`);
        assert.equal(got?.constructor, v.constructor, `${p}.${k}`);
        assert.deepEqual(got, v, `${p}.${k}`);
      }
    }
    assert.ok(Object.is((g.get('a.f32') as Float32Array)[2], -0));
    assert.equal(g.get('a.long'), long);
    assert.deepEqual(g.get('a.many'), many);
    assert.deepEqual(g.get('a.wide'), wide);
    assert.deepEqual(await g.readRaw('t'), new Uint8Array(128).fill(1));
  } finally {
    await g.close();
  }
  // A bool element other than 0/1 is refused with its index and byte position.
  const bytes = readFileSync(file);
  const name = Buffer.from('a.bool');
  const at = bytes.indexOf(name) + name.length + 4 + 4 + 8; // type, element type, count
  assert.deepEqual([...bytes.subarray(at, at + 3)], [1, 0, 1]);
  bytes[at + 1] = 2;
  const bad = path.join(path.dirname(file), 'bad-bool.gguf');
  writeFileSync(bad, bytes);
  await assert.rejects(GgufFile.open(bad), {
    name: 'FormatError',
    message: `${bad} offset ${at + 1}: invalid bool in 'a.bool'[1]; expected 0 or 1, got 2`,
  });
});

/** The header byte position of tensor `name`'s u64 data offset (v3: u64 name length and ne). */
function offsetField(bytes: Uint8Array, name: string, nDims: number): number {
  const key = Buffer.alloc(8 + name.length);
  key.writeBigUInt64LE(BigInt(name.length));
  key.write(name, 8);
  const at = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).indexOf(key);
  assert.ok(at > 0, name);
  return at + key.length + 4 + 8 * nDims + 4;
}

test('tensor data must tile the data section in order (gguf.cpp: offset == Σ GGML_PAD(nbytes, alignment))', async () => {
  const dir = tmp();
  const file = path.join(dir, 'tiles.gguf');
  // 32 bytes, 18 bytes (one Q4_0 block, padded to 32), 128 bytes: offsets 0, 32, 64.
  const shapes = [
    { name: 'a', dims: [8], type: ggmlType('F32') },
    { name: 'b', dims: [32], type: ggmlType('Q4_0') },
    { name: 'c', dims: [32], type: ggmlType('F32') },
  ];
  const x = Float32Array.from({ length: 32 }, (_, i) => i - 16);
  await writeGguf(
    file,
    [kv.str('general.architecture', 'llama')],
    shapes.map((t) => ({ ...t, data: () => encodeValues(t.type, x.subarray(0, t.dims[0])) })),
  );
  const good = readFileSync(file);
  const g = await GgufFile.open(file);
  assert.deepEqual(
    g.tensors.map((t) => [t.offset, t.byteLength]),
    [
      [0, 32],
      [32, 18],
      [64, 128],
    ],
  );
  assert.equal(g.size, g.dataOffset + 64 + 128);
  const dataOffset = g.dataOffset;
  await g.close();
  const patched = (name: string, nDims: number, offset: number) => {
    const b = Buffer.from(good);
    const at = offsetField(b, name, nDims);
    b.writeBigUInt64LE(BigInt(offset), at);
    const p = path.join(dir, `${name}-${offset}.gguf`);
    writeFileSync(p, b);
    return { p, at };
  };
  const cases: [string, number, number, string][] = [
    ['b', 1, 0, 'expected data offset 32'], // b on top of a: accepted before this check
    ['c', 1, 32, 'expected data offset 64'], // c overlapping b
    ['c', 1, 96, 'expected data offset 64'], // a gap before c
  ];
  for (const [name, nDims, offset, expected] of cases) {
    const { p, at } = patched(name, nDims, offset);
    await assert.rejects(GgufFile.open(p), (e: unknown) => {
      assert.ok(e instanceof FormatError, String(e));
      assert.equal(
        e.message,
        `${p} '${name}' offset ${at}: tensor data does not start where the previous tensor ends; ` +
          `${expected} (tensors tile the data section in order, each padded to 32 bytes), got ${offset}`,
      );
      return true;
    });
  }
  // Trailing bytes after the last tensor stay allowed (gguf.cpp reads only what the infos claim).
  const trailing = path.join(dir, 'trailing.gguf');
  writeFileSync(trailing, Buffer.concat([good, Buffer.alloc(100)]));
  const t = await GgufFile.open(trailing);
  assert.equal(t.dataOffset, dataOffset);
  assert.deepEqual(await t.readFloat32('c'), x);
  await t.close();
});

test('the real GGUF assets tile their data sections and load', { skip: !assetsPresent }, async () => {
  const files = [
    V1,
    ...readdirSync(path.dirname(SPM))
      .filter((f) => f.endsWith('.gguf'))
      .map((f) => path.join(path.dirname(SPM), f)),
  ];
  assert.ok(files.length >= 3, files.join(', '));
  for (const f of files) {
    const g = await GgufFile.open(f);
    let end = 0;
    for (const t of g.tensors) {
      assert.equal(t.offset, end, `${f} ${t.name}`);
      end += Math.ceil(t.byteLength / g.alignment) * g.alignment;
    }
    await g.close();
  }
});

test('a 50 MiB file whose metadata is one u8 array of 52M elements: read in one pass into one Uint8Array', () => {
  // Before: every refill restarted the parse into a JS array of numbers while the header buffer
  // doubled (2.4 GB peak RSS, 18 s for 50M elements). Now: one 50 MiB Uint8Array. Checked by what
  // the parse does (bytes read, reads, memory), not by its time, which depends on the machine's load.
  const N = 50 << 20;
  const file = path.join(tmp(), 'big-array.gguf');
  const key = Buffer.from('big.array');
  const tensor = Buffer.from('t');
  const head = Buffer.alloc(4 + 4 + 8 + 8 + 8 + key.length + 4 + 4 + 8);
  let o = head.write('GGUF');
  o = head.writeUInt32LE(3, o);
  o = head.writeBigUInt64LE(1n, o); // one tensor
  o = head.writeBigUInt64LE(1n, o); // one KV
  o = head.writeBigUInt64LE(BigInt(key.length), o);
  o += key.copy(head, o);
  o = head.writeUInt32LE(GgufValueType.ARRAY, o);
  o = head.writeUInt32LE(GgufValueType.UINT8, o);
  head.writeBigUInt64LE(BigInt(N), o);
  // Element i is (7i) mod 256: 1 MiB chunks repeat it exactly (1 MiB is a multiple of 256).
  const chunk = Uint8Array.from({ length: 1 << 20 }, (_, i) => (7 * i) & 255);
  const info = Buffer.alloc(8 + 1 + 4 + 8 + 4 + 8);
  o = info.writeBigUInt64LE(1n);
  o += tensor.copy(info, o);
  o = info.writeUInt32LE(1, o);
  o = info.writeBigUInt64LE(8n, o);
  o = info.writeUInt32LE(0, o); // F32
  info.writeBigUInt64LE(0n, o);
  const headerEnd = head.length + N + info.length;
  const pad = Buffer.alloc((32 - (headerEnd % 32)) % 32);
  const fd = openSync(file, 'w');
  writeSync(fd, head);
  for (let i = 0; i < N >> 20; i++) writeSync(fd, chunk);
  writeSync(fd, info);
  writeSync(fd, pad);
  writeSync(fd, new Uint8Array(Float32Array.of(1, 2, 3, 4, 5, 6, 7, 8).buffer));
  closeSync(fd);
  // The child counts the header reader's reads: fs.readSync wrapped, and the wrapper made what
  // gguf.ts's \`import { readSync }\` sees (syncBuiltinESMExports) before gguf.ts is loaded.
  const script = `
    import { createRequire, syncBuiltinESMExports } from 'node:module';
    const fs = createRequire(import.meta.url)('node:fs');
    const reads = { calls: 0, bytes: 0 };
    const readSync = fs.readSync;
    fs.readSync = (...args) => {
      const n = readSync(...args);
      reads.calls++;
      reads.bytes += n;
      return n;
    };
    syncBuiltinESMExports();
    const { GgufFile } = await import(${JSON.stringify(path.join(REPO, 'src/io/gguf.ts'))});
    const rssBefore = process.memoryUsage().rss;
    const cpu0 = process.cpuUsage();
    const g = await GgufFile.open(${JSON.stringify(file)});
    const { user, system } = process.cpuUsage(cpu0);
    const opened = { ...reads, maxRSS: process.resourceUsage().maxRSS * 1024, cpuSeconds: (user + system) / 1e6 };
    const a = g.get('big.array');
    let sum = 0;
    for (let i = 0; i < a.length; i++) sum += a[i];
    const t = Array.from(await g.readFloat32('t'));
    await g.close();
    console.log(JSON.stringify({ kind: a.constructor.name, length: a.length, sum, a5: a[5], t,
      dataOffset: g.dataOffset, fileSize: fs.statSync(${JSON.stringify(file)}).size, opened, rssBefore }));`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: REPO,
    encoding: 'utf8',
  });
  rmSync(file); // 50 MiB
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  // 7 is odd, so each period of 256 elements is a permutation of 0..255 (sum 32640).
  assert.deepEqual(
    { kind: out.kind, length: out.length, sum: out.sum, a5: out.a5, t: out.t, dataOffset: out.dataOffset },
    {
      kind: 'Uint8Array',
      length: N,
      sum: (N / 256) * 32640,
      a5: 35,
      t: [1, 2, 3, 4, 5, 6, 7, 8],
      dataOffset: headerEnd + pad.length,
    },
  );
  const MiB = 2 ** 20;
  const { calls, bytes, maxRSS, cpuSeconds } = out.opened;
  const growth = (maxRSS - out.rssBefore) / MiB;
  console.log(
    `  50 MiB u8 array: ${calls} reads, ${(bytes / MiB).toFixed(3)} MiB read of ${(out.fileSize / MiB).toFixed(3)}, ` +
      `${cpuSeconds.toFixed(3)} CPU s; ` +
      `peak RSS ${(maxRSS / MiB).toFixed(0)} MiB, ${growth.toFixed(0)} MiB above the RSS before the parse`,
  );
  // One pass: the first 1 MiB window, the rest of the array in one read, one last window from
  // the tensor infos to the end of the file. The array is almost all of the file, so a parse
  // that restarts or re-reads a window reads more bytes than the file has; one read per element
  // or per refill is thousands of calls.
  assert.ok(bytes <= out.fileSize, `${bytes} bytes read of ${out.fileSize}`);
  assert.ok(calls <= 4, `${calls} reads`);
  // Memory: the 50 MiB array and a 1 MiB window, plus 20 MiB for the runtime's own allocations
  // (measured: 54 MiB above the RSS before, 129 MiB peak); a JS array of numbers needs 400 MiB.
  assert.ok(growth < 72, `peak RSS ${growth} MiB above the start`);
  // CPU time, not wall time (which grows with the machine's load): measured ~0.05 s, the old
  // per-element parse 18 s; 2 s leaves any machine room and still catches work per element.
  assert.ok(cpuSeconds < 2, `parse took ${cpuSeconds} CPU s`);
});
