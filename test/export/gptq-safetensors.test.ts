/**
 * GPTQ v1 safetensors export, checked by a reader written here from the format as AutoGPTQ and
 * GPTQModel define it (qlinear `pack` / `dequantize_weight`, utils/model_dequant.py), not from
 * the writer:
 *   qweight I32 [in·b/32, out]: column o is the codes along the input, LSB-first; 2/4/8 bits:
 *     code i = (word ⌊i / (32/b)⌋ >>> b·(i mod 32/b)) & mask; 3 bits: 32 codes per 3 words with
 *     codes 10 and 21 split across words (the table in unpackColumn3);
 *   qzeros I32 [G, out·b/32]: packed the same way along the output, z = (stored + 1) & mask;
 *   scales F16 [G, out]; g_idx I32 [in];  w[o, i] = scales[g_idx[i], o] · (q[o, i] − z[g_idx[i], o]).
 * The reader must recover exactly the weights ptqkit's `dequantize` gives for RTN and GPTQ
 * (act-order) checkpoints of the bundled tinystories-656k at 2/3/4/8 bits, symmetric and
 * asymmetric; a hand-made tensor pins the int32 words; grids GPTQ cannot hold are mapped
 * exactly or re-quantized with a warning, never written wrong.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { exportGptq, planGptqLinear } from '../../src/export/gptq-safetensors.js';
import type { GridSpec } from '../../src/formats/grid.js';
import { gridSpecFor } from '../../src/formats/number-formats.js';
import { dequantize, fromCodes, type QuantizedTensor } from '../../src/formats/quantized-tensor.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { type LoadedModel, loadModel } from '../../src/model/load.js';
import { runCli } from '../cli/run-cli.js';
import { assertPrinted } from '../readme-figures.js';
import { BUNDLED, f16, fp, quantized, TINY_LINEAR, tinyModel } from './safetensors-fixtures.js';

const tmp = await mkdtemp(path.join(tmpdir(), 'ptq-gptq-'));
after(() => rm(tmp, { recursive: true, force: true }));

// ---------- the independent reader ----------

/** 3-bit GPTQ: 32 codes in words w0, w1, w2 (AutoGPTQ qlinear_cuda_old's wf table). */
function unpackColumn3(word: (k: number) => number, count: number): number[] {
  const v: number[] = [];
  for (let t = 0; t < count / 32; t++) {
    const [w0, w1, w2] = [word(3 * t) >>> 0, word(3 * t + 1) >>> 0, word(3 * t + 2) >>> 0];
    for (let j = 0; j < 10; j++) v.push((w0 >>> (3 * j)) & 7);
    v.push(((w0 >>> 30) & 3) | ((w1 & 1) << 2));
    for (let j = 0; j < 10; j++) v.push((w1 >>> (3 * j + 1)) & 7);
    v.push(((w1 >>> 31) & 1) | ((w2 & 3) << 1));
    for (let j = 0; j < 10; j++) v.push((w2 >>> (3 * j + 2)) & 7);
  }
  return v;
}

function unpackColumn(word: (k: number) => number, count: number, bits: number): number[] {
  if (bits === 3) return unpackColumn3(word, count);
  const perWord = 32 / bits;
  return Array.from(
    { length: count },
    (_, i) => (word(Math.floor(i / perWord)) >>> (bits * (i % perWord))) & ((1 << bits) - 1),
  );
}

interface GptqDir {
  config: Record<string, unknown>;
  quant: { bits: number; group_size: number; sym: boolean; desc_act: boolean; checkpoint_format: string };
  quantizeConfigFile: Record<string, unknown>;
  /** Dequantized linears [out, in] by `X.weight` name. */
  linears: Map<string, Float32Array>;
  /** F32 tensors stored as they are. */
  plain: Map<string, Float32Array>;
  /** Raw int32 words of each linear (for the worked examples). */
  words: Map<string, { qweight: Int32Array; qzeros: Int32Array; shape: number[] }>;
}

async function readGptq(dir: string): Promise<GptqDir> {
  const config = JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8'));
  const quantizeConfigFile = JSON.parse(await readFile(path.join(dir, 'quantize_config.json'), 'utf8'));
  const quant = config.quantization_config;
  const bits = quant.bits as number;
  const st = await SafetensorsFile.open(path.join(dir, 'model.safetensors'));
  const i32 = async (name: string) => {
    const raw = await st.readRaw(name);
    return new Int32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
  };
  const linears = new Map<string, Float32Array>();
  const plain = new Map<string, Float32Array>();
  const words = new Map<string, { qweight: Int32Array; qzeros: Int32Array; shape: number[] }>();
  try {
    for (const [name, info] of st.tensors) {
      if (info.dtype === 'F32') {
        const raw = await st.readRaw(name);
        plain.set(name, new Float32Array(raw.slice().buffer));
      }
      if (!name.endsWith('.qweight')) continue;
      const base = name.slice(0, -'.qweight'.length);
      assert.equal(info.dtype, 'I32');
      const [packedRows, out] = info.shape as [number, number];
      const inF = (packedRows * 32) / bits;
      const qweight = await i32(name);
      const qzeros = await i32(`${base}.qzeros`);
      const zerosInfo = st.info(`${base}.qzeros`);
      const G = zerosInfo.shape[0]!;
      assert.deepEqual(zerosInfo.shape, [G, (out * bits) / 32]);
      assert.equal(st.info(`${base}.scales`).dtype, 'F16');
      assert.deepEqual(st.info(`${base}.scales`).shape, [G, out]);
      assert.deepEqual(st.info(`${base}.g_idx`).shape, [inF]);
      assert.ok(!st.tensors.has(`${base}.weight`), 'no .weight next to qweight');
      const scalesRaw = await st.readRaw(`${base}.scales`);
      const scales = Array.from(new Uint16Array(scalesRaw.slice().buffer), f16);
      const gIdx = await i32(`${base}.g_idx`);
      const zeros = new Array<number>(G * out);
      for (let g = 0; g < G; g++) {
        const z = unpackColumn((k) => qzeros[g * ((out * bits) / 32) + k]!, out, bits);
        for (let o = 0; o < out; o++) zeros[g * out + o] = (z[o]! + 1) & ((1 << bits) - 1);
      }
      const w = new Float32Array(out * inF);
      for (let o = 0; o < out; o++) {
        const q = unpackColumn((k) => qweight[k * out + o]!, inF, bits);
        for (let i = 0; i < inF; i++) {
          const g = gIdx[i]!;
          w[o * inF + i] = scales[g * out + o]! * (q[i]! - zeros[g * out + o]!);
        }
      }
      linears.set(`${base}.weight`, w);
      words.set(`${base}.weight`, { qweight, qzeros, shape: info.shape });
    }
  } finally {
    await st.close();
  }
  return { config, quant, quantizeConfigFile, linears, plain, words };
}

// ---------- models ----------

async function exportAndRead(label: string, model: LoadedModel) {
  const dir = path.join(tmp, label);
  const warnings: string[] = [];
  const report = await exportGptq(model, dir, { onWarning: (m) => warnings.push(m) });
  return { report, r: await readGptq(dir), warnings };
}

/** Export, read back, and require every linear to equal the dequantized checkpoint bit for bit. */
async function roundTrip(
  label: string,
  model: LoadedModel,
  expect: { bits: number; group: number; sym: boolean },
) {
  const { report, r, warnings } = await exportAndRead(label, model);
  assert.equal(r.quant.bits, expect.bits, label);
  assert.equal(r.quant.group_size, expect.group, label);
  assert.equal(r.quant.sym, expect.sym, label);
  assert.equal(r.quant.checkpoint_format, 'gptq');
  assert.equal((r.config.quantization_config as { quant_method: string }).quant_method, 'gptq');
  assert.deepEqual(r.quantizeConfigFile, r.config.quantization_config);
  assert.equal(r.linears.size, model.quantization!.tensors.size);
  for (const [name, q] of model.quantization!.tensors) {
    assert.deepEqual(r.linears.get(name), dequantize(q), `${label} ${name}`);
  }
  for (const [name, t] of model.weights) {
    if (!model.quantization!.tensors.has(name))
      assert.deepEqual(r.plain.get(name), t.data, `${label} ${name}`);
  }
  return { report, r, warnings };
}

const int = (bits: number, asym: boolean, groupSize = 32) => gridSpecFor('int', { bits, asym, groupSize });

test('RTN checkpoints of tinystories-656k: the reader recovers every weight exactly (2/3/4/8 bits, sym/asym, per-channel)', async () => {
  for (const [bits, asym, groupSize] of [
    [4, false, 32],
    [4, true, 32],
    [3, false, 32],
    [3, true, 32],
    [8, false, -1],
    [8, true, 64],
    [2, true, 32],
  ] as const) {
    const label = `rtn-int${bits}-${asym ? 'asym' : 'sym'}-g${groupSize}`;
    const { report, r, warnings } = await roundTrip(label, await quantized(int(bits, asym, groupSize)), {
      bits,
      group: groupSize,
      sym: !asym,
    });
    assert.deepEqual(warnings, [], label);
    assert.ok(
      report.linears.every((l) => l.source === 'codes'),
      label,
    );
    assert.equal(r.quant.desc_act, false);
    // Stored bits: codes + f16 scale and b-bit zero per group + 32-bit g_idx per input column.
    const q = [...report.linears];
    const expectedBytes = q.reduce((n, l) => {
      const t = fp.weights.get(l.name)!;
      const [out, inF] = t.shape as [number, number];
      const groups = groupSize === -1 ? 1 : inF / groupSize;
      return n + (out * inF * bits) / 8 + groups * out * (2 + bits / 8) + inF * 4;
    }, 0);
    assert.equal(
      q.reduce((n, l) => n + l.bytes, 0),
      expectedBytes,
      label,
    );
    // README: "Stored bits per weight of the linears, int4 g32: GPTQ 4.81".
    if (label === 'rtn-int4-sym-g32') assertPrinted(report.bitsPerWeight, '4.81', label);
  }
});

test('GPTQ checkpoints with act-order: g_idx carries the permuted groups, desc_act true, weights exact', async () => {
  for (const [bits, asym] of [
    [4, false],
    [3, true],
  ] as const) {
    const model = await quantized(int(bits, asym), 'gptq', true);
    const label = `gptq-int${bits}-${asym ? 'asym' : 'sym'}-actorder`;
    const { r, report } = await roundTrip(label, model, { bits, group: 32, sym: !asym });
    assert.equal(r.quant.desc_act, true, label);
    assert.match(report.layout, /act-order/);
    const q = model.quantization!.tensors.get('model.layers.0.mlp.down_proj.weight')!;
    assert.ok(
      q.groupIndex?.some((g, c) => g !== Math.floor(c / 32)),
      'act-order permutes groups',
    );
    assert.equal((r.config.quantization_config as { damp_percent: number }).damp_percent, 0.01);
  }
});

test('worked example: int4 codes (o + i) mod 16, one group of 8 — the exact int32 words', async () => {
  const codes = Uint8Array.from({ length: 64 }, (_, k) => (Math.floor(k / 8) + (k % 8)) % 16);
  const spec: GridSpec = { bits: 4, symmetric: true, granularity: 'group', groupSize: 8, scaleDtype: 'f16' };
  const sym = fromCodes(8, 8, spec, codes, new Float32Array(8).fill(0.5), new Float32Array(8).fill(8));
  const asym = fromCodes(
    8,
    8,
    { ...spec, symmetric: false },
    codes,
    new Float32Array(8).fill(0.5),
    Float32Array.from({ length: 8 }, (_, o) => o + 1),
  );
  for (const [label, q, zeroWord] of [
    ['sym', sym, 0x77777777],
    ['asym', asym, 0x76543210], // z − 1 = o for output o, nibble o
  ] as const) {
    const model = tinyModel(q);
    const dir = path.join(tmp, `worked-${label}`);
    await exportGptq(model, dir);
    const r = await readGptq(dir);
    const { qweight, qzeros, shape } = r.words.get(TINY_LINEAR)!;
    assert.deepEqual(shape, [1, 8]);
    assert.deepEqual(
      [...qweight].map((w) => w >>> 0),
      [0x76543210, 0x87654321, 0x98765432, 0xa9876543, 0xba987654, 0xcba98765, 0xdcba9876, 0xedcba987],
    );
    assert.deepEqual(
      [...qzeros].map((w) => w >>> 0),
      [zeroWord],
    );
    assert.deepEqual(r.linears.get(TINY_LINEAR), dequantize(q));
  }
  // 3 bits: codes i mod 8 down one column of 32 inputs take 3 words, codes 10 and 21 split.
  const codes3 = Uint8Array.from({ length: 32 * 32 }, (_, k) => (k % 32) % 8);
  const q3 = fromCodes(
    32,
    32,
    { ...spec, bits: 3, groupSize: 32 },
    codes3,
    new Float32Array(32).fill(1),
    new Float32Array(32).fill(4),
  );
  const dir = path.join(tmp, 'worked-3bit');
  await exportGptq(tinyModel(q3), dir);
  const { qweight, qzeros, shape } = (await readGptq(dir)).words.get(TINY_LINEAR)!;
  assert.deepEqual(shape, [3, 32]);
  assert.deepEqual(
    [qweight[0]!, qweight[32]!, qweight[64]!].map((w) => w >>> 0),
    [0x88fac688, 0xc688fac6, 0xfac688fa],
  );
  // z − 1 = 3 for all 32 outputs: the 3-bit stream 011 011 ... in 3 words.
  assert.deepEqual(
    [...qzeros].map((w) => w >>> 0),
    [0xdb6db6db, 0xb6db6db6, 0x6db6db6d],
  );
});

test('grids GPTQ cannot hold: exact mappings, announced re-quantization or a clear error', async () => {
  const warnOf = (q: QuantizedTensor) => {
    const w: string[] = [];
    const p = planGptqLinear({ name: 'x.weight', q, source: 'codes' }, (m) => w.push(m));
    return { p, w };
  };
  const model = await quantized(int(4, true));
  const base = model.quantization!.tensors.get('model.layers.1.self_attn.o_proj.weight')!;

  // 5-bit codes: q − z + 128 in 8 bits, exact, announced.
  const int5 = (await quantized(int(5, true))).quantization!.tensors.get(
    'model.layers.1.self_attn.o_proj.weight',
  )!;
  const five = warnOf(int5);
  assert.equal(five.p.q.spec.bits, 8);
  assert.equal(five.p.source, 'mapped');
  assert.deepEqual(dequantize(five.p.q), dequantize(int5));
  assert.match(five.w[0]!, /8-bit codes q − z \+ 128 \(exact/);

  // Ternary: symmetric 2-bit codes, exact, no warning.
  const tern = (await quantized(gridSpecFor('ternary', {}))).quantization!.tensors.get(
    'model.layers.1.self_attn.o_proj.weight',
  )!;
  const t = warnOf(tern);
  assert.equal(t.p.q.spec.bits, 2);
  assert.deepEqual(dequantize(t.p.q), dequantize(tern));
  assert.deepEqual(t.w, []);

  // bf16 scales: rounded to f16 with the codes kept, the weight change reported.
  const bf = (await quantized({ ...int(4, false), scaleDtype: 'bf16' })).quantization!.tensors.get(
    'model.layers.1.self_attn.o_proj.weight',
  )!;
  const b = warnOf(bf);
  assert.equal(b.p.q.spec.scaleDtype, 'f16');
  assert.deepEqual(b.p.q.qweight, bf.qweight);
  // f32 scales beyond f16's range cannot be stored.
  const huge = {
    ...base,
    spec: { ...base.spec, scaleDtype: 'f32' as const },
    scales: base.scales.map((s, i) => (i === 3 ? 1e6 : s)),
  };
  assert.throws(() => warnOf(huge), /x\.weight.*no f16 value.*got 1000000/);

  // A zero point 0 (asymmetric): z − 1 has no v1 encoding; raised to 1, top codes saturate.
  const codes = Uint8Array.from({ length: 64 * 32 }, (_, k) => k % 16);
  const zeros = Float32Array.from({ length: 64 }, (_, p) => (p === 5 ? 0 : 3));
  const z0 = fromCodes(64, 32, { ...int(4, true) }, codes, new Float32Array(64).fill(0.25), zeros);
  const lifted = warnOf(z0);
  assert.equal(lifted.p.q.zeros[5], 1);
  assert.match(
    lifted.w[0]!,
    /1 block\(s\) have zero point 0.*2 weight\(s\) at the top code move one step \(max \|Δw\| 2\.50e-1\)/,
  );
  const wBefore = dequantize(z0);
  const wAfter = dequantize(lifted.p.q);
  // 15·0.25 → 14·0.25, the two top codes of row 5.
  assert.deepEqual(Array.from(wAfter.filter((x, i) => x !== wBefore[i])), [3.5, 3.5]);

  // Float formats, HQQ float zeros and SINQ column scales: RTN onto the nearest GPTQ grid, announced.
  for (const [label, grid, method, bits] of [
    ['nvfp4', gridSpecFor('nvfp4', {}), 'rtn', 4],
    ['fp8', gridSpecFor('fp8-e4m3', {}), 'rtn', 8],
    ['hqq', int(4, true), 'hqq', 4],
    ['sinq', int(4, true), 'sinq', 4],
  ] as const) {
    const m = await quantized(grid, method);
    const { r, report, warnings } = await exportAndRead(`bad-${label}`, m);
    assert.equal(r.quant.group_size, label === 'nvfp4' ? 16 : 32, label);
    assert.equal(r.quant.sym, label === 'nvfp4' || label === 'fp8', label);
    // Linears the layout holds (SINQ's kurtosis-gated plain RTN layers) keep their weights exactly.
    for (const l of report.linears.filter((l) => l.source === 'codes')) {
      assert.deepEqual(r.linears.get(l.name), dequantize(m.quantization!.tensors.get(l.name)!), l.name);
    }
    const requantized = report.linears.filter((l) => l.source === 'requantized');
    assert.ok(requantized.length > 0, label);
    assert.equal(warnings.length, requantized.length, label);
    assert.match(
      warnings[0]!,
      /re-quantized with RTN to int\d-g\d+-(a?sym) from the dequantized weights \(max \|Δw\| /,
    );
    assert.equal(r.quant.bits, bits, label);
    // Re-quantized weights stay within one grid step of the checkpoint's.
    for (const l of requantized) {
      const original = dequantize(m.quantization!.tensors.get(l.name)!);
      const back = r.linears.get(l.name)!;
      let maxRel = 0;
      let amax = 0;
      for (let i = 0; i < back.length; i++) {
        maxRel = Math.max(maxRel, Math.abs(back[i]! - original[i]!));
        amax = Math.max(amax, Math.abs(original[i]!));
      }
      assert.ok(maxRel <= (2 * amax) / (2 ** bits - 1), `${label} ${l.name}: ${maxRel}`);
    }
  }

  // Rows that are not whole int32 words: a shape error naming the tensor.
  const odd = fromCodes(
    32,
    48,
    { ...int(3, false), groupSize: 16 },
    new Uint8Array(32 * 48),
    new Float32Array(96).fill(1),
    new Float32Array(96).fill(4),
  );
  await assert.rejects(
    exportGptq(tinyModel(odd), path.join(tmp, 'odd')),
    /down_proj\.weight.*input row of 48 3-bit values is not a whole number of int32 words; expected a multiple of 32/,
  );
});

test('CLI: ptq quantize --export gptq writes both directories; ptq export --format gptq of a float model uses RTN int4 g32', async () => {
  const out = path.join(tmp, 'cli-q3');
  const r = runCli(['quantize', BUNDLED, '-o', out, '--bits', '3', '--asym', '--export', 'gptq', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const result = JSON.parse(r.stdout);
  assert.equal(result.export.output, `${out}-gptq`);
  assert.equal(result.export.layout, 'GPTQ v1 int3 g32 asym');
  const checkpoint = await loadModel(out);
  const back = await readGptq(`${out}-gptq`);
  for (const [name, q] of checkpoint.quantization!.tensors)
    assert.deepEqual(back.linears.get(name), dequantize(q));

  const f = runCli(['export', BUNDLED, '--format', 'gptq', '-o', path.join(tmp, 'cli-fp')]);
  assert.equal(f.code, 0, f.stderr);
  assert.match(f.stdout, /14 +int4-g32-sym from rtn/);
  assert.match(f.stdout, /as GPTQ v1 int4 g32 sym: 4\.\d+ bits\/weight/);
  const bad = runCli(['quantize', BUNDLED, '-o', path.join(tmp, 'x'), '--export', 'safetensors']);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /--export.*Allowed choices are gguf, onnx, gptq, compressed-tensors/);
});
