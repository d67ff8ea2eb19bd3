/**
 * compressed-tensors export, checked by a reader written here from compressed-tensors' own
 * definitions (compressors/pack_quantized/helpers.py unpack_from_int32, nvfp4/helpers.py
 * unpack_fp4_from_uint8, mx_utils.py, quantization/lifecycle/forward.py _dequantize and
 * _process_group), not from the writer:
 *   pack-quantized: element i of a row at global bit i·b of its int32 words (low bits first,
 *     crossing words), minus 2^(b−1) = the signed code; zero points the same along dim 0;
 *     w = (q_s − z_s)·s, with act-order columns permuted by argsort(g_idx) into groups of G;
 *   float-quantized: E4M3 byte · s;  nvfp4: E2M1 nibble (low first) · (s_e4m3 / global_scale);
 *   mxfp4 / mxfp8: E2M1 / E4M3 · 2^(scale − 127).
 * It must recover exactly the weights ptqkit's `dequantize` gives for RTN and GPTQ (act-order)
 * checkpoints of the bundled tinystories-656k (int 2..8 bits sym/asym, FP8, NVFP4, MX), pin the
 * words of a hand-made tensor, and see every grid the formats cannot hold mapped exactly or
 * re-quantized with a warning.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { exportCompressedTensors } from '../../src/export/compressed-tensors.js';
import { exportGptq } from '../../src/export/gptq-safetensors.js';
import { type GridSpec, makeGrid } from '../../src/formats/grid.js';
import { type FormatName, gridSpecFor } from '../../src/formats/number-formats.js';
import { dequantize, fromCodes } from '../../src/formats/quantized-tensor.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { type LoadedModel, loadModel } from '../../src/model/load.js';
import { quantizeRtn } from '../../src/quant/methods/rtn.js';
import type { MethodName } from '../../src/quant/quantize-model.js';
import { runCli } from '../cli/run-cli.js';
import { ASSETS, assetsPresent } from '../helpers.js';
import { assertPrinted } from '../readme-figures.js';
import { BUNDLED, f16, quantized, TINY_LINEAR, tinyModel } from './safetensors-fixtures.js';

const tmp = await mkdtemp(path.join(tmpdir(), 'ptq-ct-'));
after(() => rm(tmp, { recursive: true, force: true }));

/** Every field compressed-tensors' QuantizationArgs accepts (pydantic extra="forbid"). */
const QUANTIZATION_ARGS_FIELDS = [
  'num_bits',
  'type',
  'symmetric',
  'group_size',
  'strategy',
  'block_structure',
  'dynamic',
  'actorder',
  'scale_dtype',
  'zp_dtype',
  'observer',
  'observer_kwargs',
];

// ---------- the independent reader ----------

const bf16 = (h: number) => new Float32Array(new Uint32Array([h << 16]).buffer)[0]!;

/** float8_e4m3fn: bias 7, no Inf, S.1111.111 = NaN. */
function e4m3(b: number): number {
  const sign = b & 0x80 ? -1 : 1;
  const e = (b >> 3) & 15;
  const m = b & 7;
  if (e === 15 && m === 7) return Number.NaN;
  if (e === 0) return sign * (m / 8) * 2 ** -6;
  return sign * 2 ** (e - 7) * (1 + m / 8);
}

/** E2M1 nibble: sign bit 3, magnitude index into kE2M1ToFloat. */
const e2m1 = (n: number) => [0, 0.5, 1, 1.5, 2, 3, 4, 6][n & 7]! * (n & 8 ? -1 : 1);

/** Element i of a dense int32 stream: global bit i·b, low part from word ⌊i·b/32⌋, high part from the next. */
function streamElement(word: (k: number) => number, i: number, bits: number): number {
  const bit = i * bits;
  const k = Math.floor(bit / 32);
  const offset = bit % 32;
  const lo = Math.min(bits, 32 - offset);
  let v = (word(k) >>> offset) & ((1 << lo) - 1);
  if (lo < bits) v |= (word(k + 1) & ((1 << (bits - lo)) - 1)) << lo;
  return v;
}

interface CtDir {
  qc: Record<string, unknown> & {
    format: string;
    config_groups: Record<string, { weights: Record<string, unknown> }>;
  };
  linears: Map<string, Float32Array>;
  plain: Map<string, Float32Array>;
  names: string[];
  raw: (name: string) => Int32Array | undefined;
}

async function readCt(dir: string): Promise<CtDir> {
  const config = JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8'));
  const qc = config.quantization_config;
  const args = qc.config_groups.group_0.weights;
  const st = await SafetensorsFile.open(path.join(dir, 'model.safetensors'));
  const rawOf = new Map<string, Int32Array>();
  const read = async (name: string) => (await st.readRaw(name)).slice();
  const scalesOf = async (name: string): Promise<{ values: number[]; shape: number[] }> => {
    const info = st.info(name);
    const raw = await read(name);
    const values =
      info.dtype === 'F16'
        ? Array.from(new Uint16Array(raw.buffer), f16)
        : info.dtype === 'BF16'
          ? Array.from(new Uint16Array(raw.buffer), bf16)
          : info.dtype === 'F32'
            ? Array.from(new Float32Array(raw.buffer))
            : info.dtype === 'F8_E4M3'
              ? Array.from(raw, e4m3)
              : Array.from(raw, (u) => 2 ** (u - 127)); // U8: E8M0 exponents (mx_utils)
    return { values, shape: info.shape };
  };
  const linears = new Map<string, Float32Array>();
  const plain = new Map<string, Float32Array>();
  try {
    for (const [name, info] of st.tensors) {
      if (info.dtype === 'F32' && !name.endsWith('_scale'))
        plain.set(name, new Float32Array((await read(name)).buffer));
    }
    const bases = [...st.tensors.keys()]
      .filter((n) => n.endsWith('.weight_scale'))
      .map((n) => n.slice(0, -'.weight_scale'.length));
    for (const base of bases) {
      const scale = await scalesOf(`${base}.weight_scale`);
      const G = scale.shape.length === 2 ? scale.shape[1]! : 1;
      let out: number;
      let inF: number;
      /** The dequantization's x_q − zero_point of element (r, i) in scale group g. */
      let element: (r: number, i: number, g: number) => number;
      switch (qc.format) {
        case 'pack-quantized': {
          const b = args.num_bits as number;
          const shapeRaw = await read(`${base}.weight_shape`);
          [out, inF] = Array.from(new BigInt64Array(shapeRaw.buffer), Number) as [number, number];
          const packed = new Int32Array((await read(`${base}.weight_packed`)).buffer);
          rawOf.set(`${base}.weight_packed`, packed);
          const words = st.info(`${base}.weight_packed`).shape[1]!;
          assert.equal(words, Math.ceil((inF * b) / 32));
          const offset = 2 ** (b - 1);
          let zero = (_r: number, _g: number) => 0;
          if (!args.symmetric) {
            const zp = new Int32Array((await read(`${base}.weight_zero_point`)).buffer);
            rawOf.set(`${base}.weight_zero_point`, zp);
            assert.deepEqual(st.info(`${base}.weight_zero_point`).shape, [Math.ceil((out * b) / 32), G]);
            zero = (r, g) => streamElement((k) => zp[k * G + g]!, r, b) - offset;
          }
          element = (r, i, g) => streamElement((k) => packed[r * words + k]!, i, b) - offset - zero(r, g);
          break;
        }
        case 'float-quantized':
        case 'mxfp8-quantized': {
          [out, inF] = st.info(`${base}.weight`).shape as [number, number];
          const bytes = await read(`${base}.weight`);
          element = (r, i) => e4m3(bytes[r * inF + i]!);
          break;
        }
        default: {
          // nvfp4 / mxfp4: two E2M1 codes per byte, element 2j in the low nibble.
          const shape = st.info(`${base}.weight_packed`).shape as [number, number];
          [out, inF] = [shape[0], shape[1] * 2];
          const bytes = await read(`${base}.weight_packed`);
          element = (r, i) => e2m1(bytes[(r * inF + i) >> 1]! >> (4 * (i & 1)));
        }
      }
      const globalScale =
        qc.format === 'nvfp4-pack-quantized'
          ? new Float32Array((await read(`${base}.weight_global_scale`)).buffer)[0]!
          : undefined;
      const gIdx = st.tensors.has(`${base}.weight_g_idx`) ? await read(`${base}.weight_g_idx`) : undefined;
      const at = groupOfColumn(args, inF, gIdx);
      const w = new Float32Array(out * inF);
      for (let r = 0; r < out; r++) {
        for (let i = 0; i < inF; i++) {
          const s = scale.values[scale.shape.length === 2 ? r * G + at(i) : 0]!;
          // _dequantize: scale / global_scale first (float32), then (x_q − zero_point) · scale.
          const effective = globalScale === undefined ? s : Math.fround(s / globalScale);
          w[r * inF + i] = Math.fround(element(r, i, at(i)) * effective);
        }
      }
      linears.set(`${base}.weight`, w);
    }
  } finally {
    await st.close();
  }
  return { qc, linears, plain, names: [...st.tensors.keys()], raw: (n) => rawOf.get(n) };
}

/**
 * Scale column of input column i: _process_group sorts columns by g_idx (argsort) and cuts the
 * sorted order into groups of group_size; without g_idx, ⌊i / group_size⌋ (0 per channel).
 */
function groupOfColumn(
  args: Record<string, unknown>,
  inF: number,
  gIdxRaw?: Uint8Array,
): (i: number) => number {
  const G = args.strategy === 'group' || args.strategy === 'tensor_group' ? (args.group_size as number) : inF;
  if (!gIdxRaw) return (i) => Math.floor(i / G);
  const gIdx = new Int32Array(gIdxRaw.buffer);
  const perm = Array.from(gIdx.keys()).sort((a, b) => gIdx[a]! - gIdx[b]! || a - b);
  const group = new Int32Array(inF);
  perm.forEach((c, k) => {
    group[c] = Math.floor(k / G);
  });
  return (i) => group[i]!;
}

// ---------- models ----------

async function exportAndRead(label: string, model: LoadedModel) {
  const dir = path.join(tmp, label);
  const warnings: string[] = [];
  const report = await exportCompressedTensors(model, dir, { onWarning: (m) => warnings.push(m) });
  return { report, r: await readCt(dir), warnings };
}

/** Linears the format holds must come back bit for bit; the rest of the model as stored (F32). */
function assertExact(label: string, model: LoadedModel, r: CtDir, names: Iterable<string>) {
  for (const name of names) {
    assert.deepEqual(
      r.linears.get(name),
      dequantize(model.quantization!.tensors.get(name)!),
      `${label} ${name}`,
    );
  }
  for (const [name, t] of model.weights) {
    if (!model.quantization!.tensors.has(name))
      assert.deepEqual(r.plain.get(name), t.data, `${label} ${name}`);
  }
}

function assertConfig(label: string, r: CtDir, format: string, weights: Record<string, unknown>) {
  assert.equal(r.qc.quant_method, 'compressed-tensors', label);
  assert.equal(r.qc.quantization_status, 'compressed', label);
  assert.equal(r.qc.format, format, label);
  assert.deepEqual(r.qc.ignore, ['lm_head']);
  const group = r.qc.config_groups.group_0 as Record<string, unknown>;
  assert.deepEqual(group.targets, ['Linear']);
  assert.equal(group.input_activations, null);
  const args = group.weights as Record<string, unknown>;
  for (const key of Object.keys(args)) assert.ok(QUANTIZATION_ARGS_FIELDS.includes(key), `${label}: ${key}`);
  for (const [key, value] of Object.entries(weights)) assert.deepEqual(args[key], value, `${label}: ${key}`);
}

const int = (bits: number, asym: boolean, groupSize = 32): GridSpec =>
  gridSpecFor('int', { bits, asym, groupSize });

/** README: stored bits per weight of the linears, as printed (int4 g32, NVFP4, MXFP4, FP8 per channel). */
const README_BITS: Record<string, string> = {
  'int4-sym': '4.50',
  'int4-asym': '4.63',
  nvfp4: '4.50',
  mxfp4: '4.25',
  'fp8-pc': '8.10',
};

test('pack-quantized: RTN and GPTQ act-order checkpoints read back exactly (2..8 bits, sym/asym, per-channel, bf16 scales)', async () => {
  const cases: [string, LoadedModel, Record<string, unknown>][] = [
    [
      'int4-sym',
      await quantized(int(4, false)),
      { num_bits: 4, symmetric: true, strategy: 'group', group_size: 32 },
    ],
    ['int4-asym', await quantized(int(4, true)), { num_bits: 4, symmetric: false, strategy: 'group' }],
    ['int3-sym', await quantized(int(3, false)), { num_bits: 3, symmetric: true }],
    ['int3-asym', await quantized(int(3, true)), { num_bits: 3, symmetric: false }],
    ['int5-asym', await quantized(int(5, true, 64)), { num_bits: 5, group_size: 64 }],
    ['int8-pc', await quantized(int(8, false, -1)), { num_bits: 8, strategy: 'channel', group_size: null }],
    ['int2-asym', await quantized(int(2, true, 64)), { num_bits: 2, symmetric: false }],
    ['int8-pt', await quantized({ ...int(8, false), granularity: 'tensor' }), { strategy: 'channel' }],
    ['int4-bf16', await quantized({ ...int(4, false), scaleDtype: 'bf16' }), { num_bits: 4 }],
    ['gptq-int4-actorder', await quantized(int(4, false), 'gptq', true), { actorder: 'group', type: 'int' }],
    ['gptq-int3-asym-actorder', await quantized(int(3, true), 'gptq', true), { actorder: 'group' }],
  ];
  for (const [label, model, weights] of cases) {
    const { report, r, warnings } = await exportAndRead(label, model);
    assertConfig(label, r, 'pack-quantized', { type: 'int', dynamic: false, ...weights });
    assertExact(label, model, r, model.quantization!.tensors.keys());
    assert.ok(
      report.linears.every((l) => l.source === 'codes'),
      label,
    );
    if (README_BITS[label]) assertPrinted(report.bitsPerWeight, README_BITS[label], `${label} bits/weight`);
    const bits = model.quantization!.tensors.values().next().value!.spec.bits;
    // 3 and 5 bits cross int32 words: the layout of compressed-tensors ≥ 0.18 is announced.
    assert.equal(warnings.length, 32 % bits === 0 ? 0 : 1, label);
    if (label.startsWith('gptq')) assert.ok(r.names.includes('model.layers.0.mlp.down_proj.weight_g_idx'));
    else assert.equal((r.qc.config_groups.group_0!.weights as { actorder: unknown }).actorder, null);
  }
});

test('float formats: FP8 float-quantized, NVFP4, MXFP4, MXFP8 exact; FP4/MXFP6/ternary mapped exactly', async () => {
  const cases: [string, GridSpec, string, Record<string, unknown>, 'codes' | 'mapped', MethodName?][] = [
    [
      'fp8-pc',
      gridSpecFor('fp8-e4m3', { groupSize: -1 }),
      'float-quantized',
      { num_bits: 8, type: 'float', strategy: 'channel' },
      'codes',
    ],
    [
      'fp8-pt',
      gridSpecFor('fp8-e4m3', { perTensor: true }),
      'float-quantized',
      { strategy: 'tensor' },
      'codes',
    ],
    [
      'fp8-g32-e4m3-scales',
      gridSpecFor('fp8-e4m3', { scaleDtype: 'e4m3' }),
      'float-quantized',
      { strategy: 'group', group_size: 32 },
      'mapped',
    ],
    [
      'nvfp4',
      gridSpecFor('nvfp4', {}),
      'nvfp4-pack-quantized',
      { num_bits: 4, type: 'float', strategy: 'tensor_group', group_size: 16 },
      'codes',
    ],
    [
      'gptq-nvfp4',
      gridSpecFor('nvfp4', {}),
      'nvfp4-pack-quantized',
      { strategy: 'tensor_group' },
      'codes',
      'gptq',
    ],
    [
      'mxfp4',
      gridSpecFor('mxfp4', {}),
      'mxfp4-pack-quantized',
      { num_bits: 4, group_size: 32, scale_dtype: 'torch.uint8' },
      'codes',
    ],
    [
      'mxfp8',
      gridSpecFor('mxfp8', {}),
      'mxfp8-quantized',
      { num_bits: 8, group_size: 32, scale_dtype: 'torch.uint8' },
      'codes',
    ],
    ['mxfp6', gridSpecFor('mxfp6-e2m3', {}), 'mxfp8-quantized', { num_bits: 8 }, 'mapped'],
    ['fp4', gridSpecFor('fp4-e2m1', {}), 'float-quantized', { num_bits: 8, group_size: 32 }, 'mapped'],
    ['fp6', gridSpecFor('fp6-e3m2', { groupSize: -1 }), 'float-quantized', { strategy: 'channel' }, 'mapped'],
    [
      'ternary',
      gridSpecFor('ternary', {}),
      'pack-quantized',
      { num_bits: 2, type: 'int', symmetric: true },
      'mapped',
    ],
    [
      'binary',
      gridSpecFor('binary', { groupSize: 64 }),
      'pack-quantized',
      { num_bits: 2, group_size: 64 },
      'mapped',
    ],
  ];
  for (const [label, grid, format, weights, source, method] of cases) {
    const model = await quantized(grid, method ?? 'rtn');
    const { report, r, warnings } = await exportAndRead(label, model);
    assertConfig(label, r, format, weights);
    assertExact(label, model, r, model.quantization!.tensors.keys());
    assert.deepEqual(warnings, [], label);
    assert.ok(
      report.linears.every((l) => l.source === source),
      `${label}: ${report.linears[0]!.source}`,
    );
    if (README_BITS[label]) assertPrinted(report.bitsPerWeight, README_BITS[label], `${label} bits/weight`);
  }
  assert.ok(['nvfp4', 'mxfp4', 'fp8-pc'].every((l) => cases.some(([label]) => label === l)));
});

test('worked example: the int32 words of weight_packed and weight_zero_point', async () => {
  // int4, codes q[o, i] = (o + i) mod 16, one group of 8: row o is the single word 0x76543210 + 0x11111111·o.
  const codes = Uint8Array.from({ length: 64 }, (_, k) => (Math.floor(k / 8) + (k % 8)) % 16);
  const spec: GridSpec = { bits: 4, symmetric: false, granularity: 'group', groupSize: 8, scaleDtype: 'f16' };
  const q = fromCodes(
    8,
    8,
    spec,
    codes,
    new Float32Array(8).fill(0.5),
    Float32Array.from({ length: 8 }, (_, o) => o + 1),
  );
  const { r } = await exportAndRead('worked-int4', tinyModel(q));
  const base = TINY_LINEAR.replace(/\.weight$/, '');
  assert.deepEqual(
    Array.from(r.raw(`${base}.weight_packed`)!, (w) => w >>> 0),
    [0x76543210, 0x87654321, 0x98765432, 0xa9876543, 0xba987654, 0xcba98765, 0xdcba9876, 0xedcba987],
  );
  // Zero points z_s + 8 = ptqkit's z = o + 1, packed along the outputs (dim 0): nibble o holds o + 1.
  assert.deepEqual(
    Array.from(r.raw(`${base}.weight_zero_point`)!, (w) => w >>> 0),
    [0x87654321],
  );
  assert.deepEqual(r.linears.get(`${base}.weight`), dequantize(q));

  // 3 bits, codes i mod 8 over 32 columns: 3 words, elements 10 and 21 cross word boundaries.
  const q3 = fromCodes(
    1,
    32,
    { ...spec, bits: 3, symmetric: true, groupSize: 32 },
    Uint8Array.from({ length: 32 }, (_, i) => i % 8),
    Float32Array.of(1),
    Float32Array.of(4),
  );
  const three = await exportAndRead('worked-int3', tinyModel(q3));
  assert.deepEqual(
    Array.from(three.r.raw(`${base}.weight_packed`)!, (w) => w >>> 0),
    [0x88fac688, 0xc688fac6, 0xfac688fa],
  );
  assert.deepEqual(three.r.linears.get(`${base}.weight`), dequantize(q3));
});

test('grids compressed-tensors cannot hold are re-quantized with a warning', async () => {
  for (const [label, grid, method, format, actOrder] of [
    ['hqq', int(4, true), 'hqq', 'pack-quantized', false],
    ['sinq', int(3, true), 'sinq', 'pack-quantized', false],
    ['e5m2', gridSpecFor('fp8-e5m2', { groupSize: -1 }), 'rtn', 'float-quantized', false],
    ['gptq-nvfp4-actorder', gridSpecFor('nvfp4', {}), 'gptq', 'nvfp4-pack-quantized', true],
  ] as [string, GridSpec, MethodName, string, boolean][]) {
    const model = await quantized(grid, method, actOrder);
    const { report, r, warnings } = await exportAndRead(`bad-${label}`, model);
    assert.equal(r.qc.format, format, label);
    const requantized = report.linears.filter((l) => l.source === 'requantized');
    assert.ok(requantized.length > 0, label);
    for (const w of warnings.filter((w) => !w.startsWith('pack-quantized')))
      assert.match(w, /re-quantized with RTN to \S+ from the dequantized weights \(max \|Δw\| \d/, label);
    assert.equal(warnings.filter((w) => /re-quantized/.test(w)).length, requantized.length, label);
    // The rest is exact; re-quantized weights stay within a grid step of the checkpoint's.
    assertExact(
      label,
      model,
      r,
      report.linears.filter((l) => l.source === 'codes').map((l) => l.name),
    );
    const element = (grid.format ?? 'int') as FormatName;
    for (const l of requantized) {
      const original = dequantize(model.quantization!.tensors.get(l.name)!);
      const back = r.linears.get(l.name)!;
      let err = 0;
      let amax = 0;
      for (let i = 0; i < back.length; i++) {
        err = Math.max(err, Math.abs(back[i]! - original[i]!));
        amax = Math.max(amax, Math.abs(original[i]!));
      }
      const step = element === 'int' ? 1 / (2 ** grid.bits - 1) : element === 'nvfp4' ? 1 / 3 : 1 / 8;
      assert.ok(err <= amax * step, `${label} ${l.name}: ${err} vs ${amax * step}`);
    }
  }
});

test('CLI: ptq quantize --format nvfp4 --export compressed-tensors; ptq export --format compressed-tensors', async () => {
  const out = path.join(tmp, 'cli-nvfp4');
  const q = runCli(['quantize', BUNDLED, '-o', out, '--format', 'nvfp4', '--export', 'compressed-tensors']);
  assert.equal(q.code, 0, q.stderr);
  assert.match(q.stdout, /14 +nvfp4 from codes/);
  assert.match(q.stdout, /as nvfp4-pack-quantized float4 tensor_group 16: 4\.5\d+ bits\/weight/);
  const checkpoint = await loadModel(out);
  const back = await readCt(`${out}-compressed-tensors`);
  for (const [name, t] of checkpoint.quantization!.tensors)
    assert.deepEqual(back.linears.get(name), dequantize(t));

  const e = runCli([
    'export',
    out,
    '--format',
    'compressed-tensors',
    '-o',
    path.join(tmp, 'cli-again'),
    '--json',
  ]);
  assert.equal(e.code, 0, e.stderr);
  assert.equal(JSON.parse(e.stdout).layout, 'nvfp4-pack-quantized float4 tensor_group 16');
});

test('a float llama2.c model: RTN int4 per channel (FFN width 172 takes no group of 32), tokenizer.bin converted; GPTQ refuses the shape', {
  skip: !assetsPresent && 'needs ../shared/assets',
}, async () => {
  const model = await loadModel(path.join(ASSETS, 'models/stories260k/stories260K.bin'));
  const dir = path.join(tmp, 'stories260k');
  const report = await exportCompressedTensors(model, dir);
  assert.equal(report.layout, 'pack-quantized int4 channel');
  assert.equal(report.tokenizer, 'converted from tokenizer.bin');
  const vocab = JSON.parse(await readFile(path.join(dir, 'tokenizer.json'), 'utf8')).model.vocab;
  assert.equal(Object.keys(vocab).length, 512);
  const r = await readCt(dir);
  const grid = makeGrid({
    bits: 4,
    symmetric: true,
    granularity: 'channel',
    groupSize: 0,
    scaleDtype: 'f16',
  });
  assert.equal(r.linears.size, 5 * 7);
  for (const [name, w] of r.linears) {
    assert.deepEqual(w, dequantize(quantizeRtn(model.weights.get(name)!, grid, name)), name);
  }
  await assert.rejects(
    exportGptq(model, path.join(tmp, 'stories260k-gptq')),
    /gate_proj\.weight.*output column of 172 4-bit values is not a whole number of int32 words; expected a multiple of 8/,
  );
});
