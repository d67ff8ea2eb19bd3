/**
 * ptqkit's own quantized checkpoint: a Hugging Face-style directory that `ptq eval` and
 * `ptq export` read back exactly.
 *
 *   config.json        the model's config + quantization_config {quant_method: "ptqkit", method, ...}
 *   model.safetensors  unquantized tensors as F32 under their own names; for a quantized
 *                      weight `X.weight`:
 *                        X.qweight  U8   codes, row-major [out, in], `bits` each, LSB-first
 *                        X.scales   F16|BF16|F32 [out / blockRows, groups]
 *                        X.qzeros   U8   zero points packed like the codes (asymmetric grids only)
 *                        X.g_idx    I32  [in] group of each input column (act-order only)
 *                      __metadata__["ptqkit"] = JSON {tensors: {X.weight: {rows, cols, grid}}}
 *   tokenizer files    copied from the source model
 */
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { FormatError } from '../errors.js';
import { packBits, unpackBits } from '../formats/bitpack.js';
import { decodeBf16, decodeF16, encodeBf16, encodeF16 } from '../formats/half.js';
import type { GridSpec } from '../quant/grid.js';
import { dequantize, type QuantizedTensor } from '../quant/quantized-tensor.js';
import type { TensorMap } from '../tensor.js';
import { writeDirectoryAtomically } from './atomic.js';
import { SafetensorsModel, writeSafetensors } from './safetensors.js';

export const CHECKPOINT_FILE = 'model.safetensors';

export interface PtqQuantization {
  /** Method name, e.g. 'rtn'. */
  method: string;
  /** Method settings recorded in quantization_config (grid, calibration, seeds...). */
  settings: Record<string, unknown>;
  /** Quantized weights by tensor name. */
  tensors: Map<string, QuantizedTensor>;
}

interface TensorEntry {
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

export async function writePtqCheckpoint(outDir: string, model: CheckpointSource, q: PtqQuantization): Promise<void> {
  const tensors: Parameters<typeof writeSafetensors>[1] = [];
  const entries: Record<string, TensorEntry> = {};
  for (const [name, t] of model.weights) {
    const qt = q.tensors.get(name);
    if (!qt) {
      tensors.push({ name, dtype: 'F32', shape: t.shape, data: t.data });
      continue;
    }
    entries[name] = { rows: qt.rows, cols: qt.cols, grid: qt.spec };
    const b = base(name);
    tensors.push({ name: `${b}.qweight`, dtype: 'U8', shape: [qt.qweight.length], data: qt.qweight });
    const scaleShape = [qt.scales.length / (qt.cols / groupColumns(qt)), qt.cols / groupColumns(qt)];
    tensors.push({ name: `${b}.scales`, ...encodeScales(qt), shape: scaleShape });
    if (!qt.spec.symmetric) {
      const packed = packBits(qt.zeros, qt.spec.bits);
      tensors.push({ name: `${b}.qzeros`, dtype: 'U8', shape: [packed.length], data: packed });
    }
    if (qt.groupIndex) tensors.push({ name: `${b}.g_idx`, dtype: 'I32', shape: [qt.cols], data: qt.groupIndex });
  }
  const config = {
    ...model.hfConfig,
    quantization_config: { quant_method: 'ptqkit', format_version: 1, method: q.method, ...q.settings },
  };
  await writeDirectoryAtomically(outDir, async (tmp) => {
    await writeSafetensors(path.join(tmp, CHECKPOINT_FILE), tensors, { format: 'pt', ptqkit: JSON.stringify({ tensors: entries }) });
    await writeJson(path.join(tmp, 'config.json'), config);
    for (const file of model.tokenizerFiles) {
      // llama2.c tokenizers travel as tokenizer.bin, the name the directory loader looks for.
      const name = file.endsWith('.bin') ? 'tokenizer.bin' : path.basename(file);
      await copyFile(file, path.join(tmp, name));
    }
  });
}

export async function readPtqCheckpoint(dir: string): Promise<{ weights: TensorMap; quantization: PtqQuantization }> {
  const file = path.join(dir, CHECKPOINT_FILE);
  const st = await SafetensorsModel.open(dir);
  try {
    const meta = parseMetadata(st.metadata.ptqkit, file);
    const config = JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8'));
    const { method, ...settings } = config.quantization_config as Record<string, unknown>;
    const quantized = new Map<string, QuantizedTensor>();
    const weights: TensorMap = new Map();
    const consumed = new Set<string>();
    for (const [name, entry] of Object.entries(meta.tensors)) {
      const b = base(name);
      const read = async (suffix: string) => {
        consumed.add(`${b}.${suffix}`);
        return st.readRaw(`${b}.${suffix}`);
      };
      const scalesRaw = await read('scales');
      const scaleCount = st.info(`${b}.scales`).shape.reduce((x, y) => x * y, 1);
      const scales = decodeScales(scalesRaw, entry.grid.scaleDtype);
      const zeros = entry.grid.symmetric
        ? new Uint8Array(scaleCount).fill(2 ** (entry.grid.bits - 1))
        : unpackBits(await read('qzeros'), entry.grid.bits, scaleCount);
      const gIdxName = `${b}.g_idx`;
      const groupIndex = st.names().includes(gIdxName) ? new Int32Array((await read('g_idx')).buffer) : undefined;
      const qt: QuantizedTensor = {
        rows: entry.rows,
        cols: entry.cols,
        spec: entry.grid,
        qweight: await read('qweight'),
        scales,
        zeros,
        groupIndex,
      };
      quantized.set(name, qt);
      weights.set(name, { shape: [entry.rows, entry.cols], data: dequantize(qt) });
    }
    for (const name of st.names()) {
      if (consumed.has(name)) continue;
      weights.set(name, { shape: [...st.info(name).shape], data: await st.readFloat32(name) });
    }
    return { weights, quantization: { method: String(method), settings, tensors: quantized } };
  } finally {
    await st.close();
  }
}

function groupColumns(q: QuantizedTensor): number {
  return q.spec.granularity === 'group' ? q.spec.groupSize : q.cols;
}

function encodeScales(q: QuantizedTensor): { dtype: 'F16' | 'BF16' | 'F32'; data: ArrayBufferView } {
  switch (q.spec.scaleDtype) {
    case 'f16':
      return { dtype: 'F16', data: encodeF16(q.scales) };
    case 'bf16':
      return { dtype: 'BF16', data: encodeBf16(q.scales) };
    case 'f32':
      return { dtype: 'F32', data: q.scales };
  }
}

function decodeScales(raw: Uint8Array, dtype: GridSpec['scaleDtype']): Float32Array {
  switch (dtype) {
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
