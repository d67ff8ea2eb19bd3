/**
 * ptqkit's own quantized checkpoint: a Hugging Face-style directory that `ptq eval` and
 * `ptq export` read back exactly.
 *
 *   config.json        the model's config + quantization_config {quant_method: "ptqkit", method, ...}
 *   model.safetensors  unquantized tensors as F32 under their own names; for a quantized
 *                      weight `X.weight`:
 *                        X.qweight  U8   codes, row-major [out, in], `bits` each, LSB-first
 *                                        (float formats: element codes, e.g. E2M1 nibbles low
 *                                        first; ternary: 5 trits per byte, base 3)
 *                        X.scales   F16|BF16|F32 [out / blockRows, groups]; F8_E4M3 for
 *                                   e4m3 scales (NVFP4, as compressed-tensors' weight_scale),
 *                                   U8 biased exponents for e8m0 (MX, as compressed-tensors)
 *                        X.global_scale F32 [1] NVFP4's per-tensor scale (weight_global_scale)
 *                        X.qzeros   U8   zero points packed like the codes (asymmetric integer zeros)
 *                        X.zeros    F16|BF16|F32 like the scales (asymmetric float zeros, HQQ)
 *                        X.col_scales F16|BF16|F32 [in] per-input-column scales (SINQ)
 *                        X.g_idx    I32  [in] group of each input column (act-order only)
 *                        X.outlier_values F16 [nnz]  SpQR outliers (CSR, original columns):
 *                        X.outlier_cols   I16|I32 [nnz] column of each, increasing per row
 *                                         (I16 when in ≤ 2^15)
 *                        X.outlier_rowptr I16|I32 [out + 1] (I16 when nnz < 2^15)
 *                        X.lorc_u   F16  [out, r] LoRC factors: w += U Vᵀ
 *                        X.lorc_v   F16  [in, r]
 *                      __metadata__["ptqkit"] = JSON {tensors: {X.weight: {rows, cols, grid}}}
 *   tokenizer files    copied from the source model
 */
import { copyFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { FormatError } from '../errors.js';
import { packBits, packedByteLength, unpackBits } from '../formats/bitpack.js';
import { FP8_E4M3 } from '../formats/element-formats.js';
import { type GridSpec, makeGrid } from '../formats/grid.js';
import { decodeBf16, decodeF16, encodeBf16, encodeF16 } from '../formats/half.js';
import { E8M0 } from '../formats/minifloat.js';
import { dequantize, outlierIndexDtypes, type QuantizedTensor } from '../formats/quantized-tensor.js';
import type { TensorMap } from '../tensor.js';
import { type OutputOptions, writeDirectoryAtomically } from './atomic.js';
import { readJsonObjectFile } from './json.js';
import {
  SafetensorsModel,
  type TensorHeader,
  type TensorToWrite,
  toFloat32,
  writeSafetensors,
} from './safetensors.js';

export const CHECKPOINT_FILE = 'model.safetensors';

export interface PtqQuantization {
  /** Method name, e.g. 'rtn'. */
  method: string;
  /** Method settings recorded in quantization_config (grid, calibration, seeds...). */
  settings: Record<string, unknown>;
  /** Quantized weights by tensor name. */
  tensors: Map<string, QuantizedTensor>;
}

export interface TensorEntry {
  rows: number;
  cols: number;
  grid: GridSpec;
}

const base = (name: string) => name.replace(/\.weight$/, '');

export interface CheckpointSource {
  hfConfig: Record<string, unknown>;
  weights: TensorMap;
  tokenizerFiles: string[];
}

export async function writePtqCheckpoint(
  outDir: string,
  model: CheckpointSource,
  q: PtqQuantization,
  output: OutputOptions = {},
): Promise<void> {
  const tensors: TensorToWrite[] = [];
  const entries: Record<string, TensorEntry> = {};
  for (const [name, t] of model.weights) {
    const qt = q.tensors.get(name);
    if (!qt) {
      tensors.push({ name, dtype: 'F32', shape: t.shape, data: t.data });
      continue;
    }
    entries[name] = checkpointEntry(qt);
    tensors.push(...quantizedTensorsToWrite(name, qt));
  }
  await writeDirectoryAtomically(
    outDir,
    async (tmp) => {
      await writeSafetensors(path.join(tmp, CHECKPOINT_FILE), tensors, checkpointMetadata(entries));
      await finishCheckpointDirectory(tmp, model, q);
    },
    output,
  );
}

/** The metadata entry of a quantized weight: the per-tensor scale is a tensor of its own, not metadata. */
export function checkpointEntry(qt: QuantizedTensor): TensorEntry {
  const { globalScale, ...grid } = qt.spec;
  return { rows: qt.rows, cols: qt.cols, grid };
}

export function checkpointMetadata(entries: Record<string, TensorEntry>): Record<string, string> {
  return { format: 'pt', ptqkit: JSON.stringify({ tensors: entries }) };
}

/** config.json (with quantization_config) and the tokenizer files, beside the weights. */
export async function finishCheckpointDirectory(
  tmp: string,
  model: Pick<CheckpointSource, 'hfConfig' | 'tokenizerFiles'>,
  q: Pick<PtqQuantization, 'method' | 'settings'>,
): Promise<void> {
  const config = {
    ...model.hfConfig,
    quantization_config: { quant_method: 'ptqkit', format_version: 1, method: q.method, ...q.settings },
  };
  await writeJson(path.join(tmp, 'config.json'), config);
  for (const file of model.tokenizerFiles) {
    // llama2.c tokenizers travel as tokenizer.bin, the name the directory loader looks for.
    const name = file.endsWith('.bin') ? 'tokenizer.bin' : path.basename(file);
    await copyFile(file, path.join(tmp, name));
  }
}

/** The stored tensors of one quantized weight `name`, in file order. */
export function quantizedTensorsToWrite(name: string, qt: QuantizedTensor): TensorToWrite[] {
  const tensors: TensorToWrite[] = [];
  const b = base(name);
  tensors.push({ name: `${b}.qweight`, dtype: 'U8', shape: [qt.qweight.length], data: qt.qweight });
  const scaleShape = [qt.scales.length / (qt.cols / groupColumns(qt)), qt.cols / groupColumns(qt)];
  tensors.push({ name: `${b}.scales`, ...encodeParams(qt.scales, qt.spec.scaleDtype), shape: scaleShape });
  if (!qt.spec.symmetric && qt.spec.zeroPoint === 'float') {
    tensors.push({ name: `${b}.zeros`, ...encodeParams(qt.zeros, qt.spec.scaleDtype), shape: scaleShape });
  } else if (!qt.spec.symmetric) {
    const packed = packBits(Uint8Array.from(qt.zeros), qt.spec.bits);
    tensors.push({ name: `${b}.qzeros`, dtype: 'U8', shape: [packed.length], data: packed });
  }
  if (qt.columnScales) {
    tensors.push({
      name: `${b}.col_scales`,
      ...encodeParams(qt.columnScales, qt.spec.scaleDtype),
      shape: [qt.cols],
    });
  }
  if (qt.groupIndex)
    tensors.push({ name: `${b}.g_idx`, dtype: 'I32', shape: [qt.cols], data: qt.groupIndex });
  tensors.push(...sideTensors(b, qt));
  if (qt.spec.globalScale !== undefined) {
    tensors.push({
      name: `${b}.global_scale`,
      dtype: 'F32',
      shape: [1],
      data: Float32Array.of(qt.spec.globalScale),
    });
  }
  return tensors;
}

/**
 * What `quantizedTensorsToWrite` will store for a [rows, cols] weight on the grid of `spec`,
 * known before the weight is quantized (the streaming writer's header): sizes follow from the
 * grid alone. Without g_idx, outliers or LoRC factors, whose presence or size depend on the
 * method's run; `columnScales` says whether SINQ keeps its column scales.
 */
export function quantizedLayout(
  name: string,
  rows: number,
  cols: number,
  spec: GridSpec,
  columnScales: boolean,
): TensorHeader[] {
  const grid = makeGrid(spec);
  const [blockRows, blockCols] = grid.blockShape(rows, cols, name);
  const params = (rows / blockRows) * (cols / blockCols);
  const groups = cols / (spec.granularity === 'group' ? spec.groupSize : cols);
  const scaleDtype = PARAM_DTYPES[spec.scaleDtype];
  const b = base(name);
  const out: TensorHeader[] = [
    { name: `${b}.qweight`, dtype: 'U8', shape: [grid.packing.byteLength(rows * cols)] },
    { name: `${b}.scales`, dtype: scaleDtype, shape: [params / groups, groups] },
  ];
  if (!spec.symmetric && spec.zeroPoint === 'float') {
    out.push({ name: `${b}.zeros`, dtype: scaleDtype, shape: [params / groups, groups] });
  } else if (!spec.symmetric) {
    out.push({ name: `${b}.qzeros`, dtype: 'U8', shape: [packedByteLength(params, spec.bits)] });
  }
  if (columnScales) out.push({ name: `${b}.col_scales`, dtype: scaleDtype, shape: [cols] });
  if (grid.bitsPerTensorParams() > 0) out.push({ name: `${b}.global_scale`, dtype: 'F32', shape: [1] });
  return out;
}

export async function readPtqCheckpoint(
  dir: string,
): Promise<{ weights: TensorMap; quantization: PtqQuantization }> {
  const reader = await PtqCheckpointReader.open(dir);
  try {
    const quantized = new Map<string, QuantizedTensor>();
    const weights: TensorMap = new Map();
    for (const name of reader.quantizedNames()) {
      const qt = await reader.readQuantized(name);
      quantized.set(name, qt);
      weights.set(name, { shape: [qt.rows, qt.cols], data: dequantize(qt) });
    }
    for (const name of reader.plainNames())
      weights.set(name, { shape: [...reader.shape(name)], data: await reader.readPlain(name) });
    return {
      weights,
      quantization: { method: reader.method, settings: reader.settings, tensors: quantized },
    };
  } finally {
    await reader.close();
  }
}

/**
 * A ptqkit checkpoint opened for reading one tensor at a time (`readPtqCheckpoint` reads them
 * all; block-streamed evaluation reads one block's): the quantized weights, as their codes and
 * parameters or dequantized, and the unquantized tensors, which the format stores as F32.
 */
export class PtqCheckpointReader {
  private constructor(
    private readonly st: SafetensorsModel,
    private readonly entries: Record<string, TensorEntry>,
    /** Stored tensors that are a component of a quantized weight (X.qweight, X.scales, ...). */
    private readonly components: Set<string>,
    readonly method: string,
    readonly settings: Record<string, unknown>,
  ) {}

  static async open(dir: string): Promise<PtqCheckpointReader> {
    const file = path.join(dir, CHECKPOINT_FILE);
    const st = await SafetensorsModel.open(dir);
    try {
      const meta = parseMetadata(st.metadata.ptqkit, file);
      // Checked like any config.json: size, strict JSON, and a regular file inside `dir`.
      const config = await readJsonObjectFile(path.join(dir, 'config.json'), 'model configuration', {
        maxBytes: 4 * 1024 * 1024,
        maxDepth: 32,
        within: dir,
      });
      const { method, ...settings } = config.quantization_config as Record<string, unknown>;
      const stored = new Set(st.names());
      const components = new Set<string>();
      for (const [name, entry] of Object.entries(meta.tensors))
        for (const suffix of componentsRead(entry, (s) => stored.has(`${base(name)}.${s}`)))
          components.add(`${base(name)}.${suffix}`);
      return new PtqCheckpointReader(st, meta.tensors, components, String(method), settings);
    } catch (e) {
      await st.close();
      throw e;
    }
  }

  /** The quantized weights, in the metadata's order. */
  quantizedNames(): string[] {
    return Object.keys(this.entries);
  }

  /** The unquantized tensors, in file order. */
  plainNames(): string[] {
    return this.st.names().filter((n) => !this.components.has(n));
  }

  isQuantized(name: string): boolean {
    return Object.hasOwn(this.entries, name);
  }

  shape(name: string): readonly number[] {
    const entry = this.isQuantized(name) ? this.entries[name] : undefined;
    return entry ? [entry.rows, entry.cols] : this.st.info(name).shape;
  }

  /** An unquantized tensor as float32. */
  readPlain(name: string): Promise<Float32Array> {
    return this.st.readFloat32(name);
  }

  /** Rows of an unquantized [rows, cols] tensor (one positional read per row), [rows.length, cols]. */
  async readPlainRows(name: string, rows: ArrayLike<number>): Promise<Float32Array> {
    const info = this.st.info(name);
    const cols = info.shape[1]!;
    const rowBytes = cols * 4;
    const out = new Float32Array(rows.length * cols);
    for (let i = 0; i < rows.length; i++) {
      const raw = await this.st.readRawRange(name, rows[i]! * rowBytes, rowBytes);
      out.set(toFloat32(raw, info.dtype), i * cols);
    }
    return out;
  }

  /** A quantized weight's codes and parameters. */
  async readQuantized(name: string): Promise<QuantizedTensor> {
    const st = this.st;
    const entry = this.entries[name]!;
    const b = base(name);
    const read = (suffix: string) => st.readRaw(`${b}.${suffix}`);
    const scalesRaw = await read('scales');
    const scaleCount = st.info(`${b}.scales`).shape.reduce((x, y) => x * y, 1);
    const scales = decodeParams(scalesRaw, entry.grid.scaleDtype);
    const has = (suffix: string) => this.components.has(`${b}.${suffix}`);
    const spec: GridSpec = has('global_scale')
      ? { ...entry.grid, globalScale: new Float32Array((await read('global_scale')).slice().buffer)[0]! }
      : entry.grid;
    const zeros = entry.grid.symmetric
      ? new Float32Array(scaleCount).fill(makeGrid(spec).symmetricZero)
      : entry.grid.zeroPoint === 'float'
        ? decodeParams(await read('zeros'), entry.grid.scaleDtype)
        : Float32Array.from(unpackBits(await read('qzeros'), entry.grid.bits, scaleCount));
    const groupIndex = has('g_idx') ? new Int32Array((await read('g_idx')).buffer) : undefined;
    const columnScales = has('col_scales')
      ? decodeParams(await read('col_scales'), entry.grid.scaleDtype)
      : undefined;
    return {
      rows: entry.rows,
      cols: entry.cols,
      spec,
      qweight: await read('qweight'),
      scales,
      zeros,
      groupIndex,
      ...(columnScales && { columnScales }),
      ...(await readSide(name, entry.rows, entry.cols, has, read, (s) => st.info(`${b}.${s}`))),
    };
  }

  close(): Promise<void> {
    return this.st.close();
  }
}

/** The stored tensors readQuantized reads for a weight (`has`: stored under its name); the rest are plain tensors. */
function componentsRead(entry: TensorEntry, has: (suffix: string) => boolean): string[] {
  const g = entry.grid;
  const zeros = g.symmetric ? [] : g.zeroPoint === 'float' ? ['zeros'] : ['qzeros'];
  const optional = ['global_scale', 'g_idx', 'col_scales'].filter(has);
  const outliers = has('outlier_values') ? ['outlier_values', 'outlier_cols', 'outlier_rowptr'] : [];
  const lorc = has('lorc_u') ? ['lorc_u', 'lorc_v'] : [];
  return ['scales', 'qweight', ...zeros, ...optional, ...outliers, ...lorc];
}

/** SpQR outliers as CSR (FP16 values, narrowest index dtypes) and LoRC factors (FP16). */
function sideTensors(b: string, q: QuantizedTensor): TensorToWrite[] {
  const out: TensorToWrite[] = [];
  const o = q.outliers;
  if (o) {
    const dt = outlierIndexDtypes(q.cols, o.values.length);
    const ints = (d: 'I16' | 'I32', v: Int32Array) => (d === 'I16' ? Int16Array.from(v) : v);
    const nnz = o.values.length;
    out.push(
      { name: `${b}.outlier_values`, dtype: 'F16', shape: [nnz], data: encodeF16(o.values) },
      { name: `${b}.outlier_cols`, dtype: dt.cols, shape: [nnz], data: ints(dt.cols, o.colIndex) },
      { name: `${b}.outlier_rowptr`, dtype: dt.rowPtr, shape: [q.rows + 1], data: ints(dt.rowPtr, o.rowPtr) },
    );
  }
  const lr = q.lowRank;
  if (lr) {
    out.push(
      { name: `${b}.lorc_u`, dtype: 'F16', shape: [q.rows, lr.rank], data: encodeF16(lr.u) },
      { name: `${b}.lorc_v`, dtype: 'F16', shape: [q.cols, lr.rank], data: encodeF16(lr.v) },
    );
  }
  return out;
}

/** The side tensors of sideTensors back (their shapes and ranges were checked by ptq-checkpoint-checks.ts). */
async function readSide(
  name: string,
  rows: number,
  cols: number,
  has: (suffix: string) => boolean,
  read: (suffix: string) => Promise<Uint8Array>,
  info: (suffix: string) => { dtype: string; shape: readonly number[] },
): Promise<Pick<QuantizedTensor, 'outliers' | 'lowRank'>> {
  const f16 = (raw: Uint8Array) => decodeF16(new Uint16Array(raw.slice().buffer));
  const ints = async (suffix: string) => {
    const raw = (await read(suffix)).slice();
    return info(suffix).dtype === 'I16'
      ? Int32Array.from(new Int16Array(raw.buffer))
      : new Int32Array(raw.buffer);
  };
  const side: Pick<QuantizedTensor, 'outliers' | 'lowRank'> = {};
  if (has('outlier_values')) {
    side.outliers = {
      values: f16(await read('outlier_values')),
      colIndex: await ints('outlier_cols'),
      rowPtr: await ints('outlier_rowptr'),
    };
  }
  if (has('lorc_u')) {
    const rank = info('lorc_u').shape[1] ?? 0;
    const u = f16(await read('lorc_u'));
    const v = f16(await read('lorc_v'));
    if (rank < 1 || u.length !== rows * rank || v.length !== cols * rank)
      throw new FormatError('LoRC factors do not match the weight', {
        field: name,
        expected: `lorc_u [${rows}, r] and lorc_v [${cols}, r]`,
        got: `${u.length} and ${v.length} values, r = ${rank}`,
      });
    side.lowRank = { rank, u, v };
  }
  return side;
}

function groupColumns(q: QuantizedTensor): number {
  return q.spec.granularity === 'group' ? q.spec.groupSize : q.cols;
}

/** Scales, float zeros and column scales are stored in the grid's scale dtype (values already rounded to it). */
/** The safetensors dtype each scale dtype is stored as (encodeParams). */
const PARAM_DTYPES = { e4m3: 'F8_E4M3', e8m0: 'U8', f16: 'F16', bf16: 'BF16', f32: 'F32' } as const;

export function encodeParams(
  values: Float32Array,
  dtype: GridSpec['scaleDtype'],
): { dtype: (typeof PARAM_DTYPES)[GridSpec['scaleDtype']]; data: ArrayBufferView } {
  switch (dtype) {
    case 'e4m3':
      return { dtype: PARAM_DTYPES[dtype], data: Uint8Array.from(values, (v) => FP8_E4M3.encode(v)) };
    case 'e8m0':
      return { dtype: PARAM_DTYPES[dtype], data: Uint8Array.from(values, (v) => E8M0.encode(v)) };
    case 'f16':
      return { dtype: PARAM_DTYPES[dtype], data: encodeF16(values) };
    case 'bf16':
      return { dtype: PARAM_DTYPES[dtype], data: encodeBf16(values) };
    case 'f32':
      return { dtype: PARAM_DTYPES[dtype], data: values };
  }
}

function decodeParams(raw: Uint8Array, dtype: GridSpec['scaleDtype']): Float32Array {
  switch (dtype) {
    case 'e4m3':
      return Float32Array.from(raw, (c) => FP8_E4M3.decode(c));
    case 'e8m0':
      return Float32Array.from(raw, (c) => E8M0.decode(c));
    case 'f16':
      return decodeF16(new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2));
    case 'bf16':
      return decodeBf16(new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2));
    case 'f32':
      return new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4).slice();
  }
}

function parseMetadata(text: string | undefined, file: string): { tensors: Record<string, TensorEntry> } {
  try {
    const meta = JSON.parse(text ?? '');
    if (meta && typeof meta.tensors === 'object') return meta;
  } catch {
    // fall through to the error below
  }
  throw new FormatError('missing or invalid ptqkit metadata', {
    file,
    field: '__metadata__.ptqkit',
    hint: 'the directory was not written by `ptq quantize`, or was modified',
  });
}

async function writeJson(file: string, value: unknown): Promise<void> {
  await writeFile(file, `${JSON.stringify(value, null, 2)}\n`);
}
