/**
 * Distrust for ptqkit checkpoints (ptq-checkpoint.ts reads them; this file decides whether
 * they may be read). A checkpoint is a safetensors file whose `__metadata__.ptqkit` JSON names,
 * for each quantized `X.weight`, its [rows, cols] and grid; the codes and parameters are
 * tensors `X.qweight`, `X.scales`, ... . Everything the metadata claims is checked against
 * the tensors actually stored before anything is allocated from it:
 *  - entries are objects with positive integer rows/cols and a grid object;
 *  - every component tensor exists with the dtype the reader will view it as;
 *  - rows·cols is at most 8 codes per stored qweight byte (every format spends >= 1 bit per
 *    weight), so a 1e6 × 1e6 claim over a few bytes is refused instead of allocated;
 *  - g_idx holds [cols] group indices within [0, cols);
 * and after reading, every dequantized weight is finite (a scale or group index out of range
 * reads as NaN there).
 */
import path from 'node:path';
import { FormatError } from '../errors.js';
import type { TensorMap } from '../tensor.js';
import { isPlainObject, jsonKind, parseJsonBytes } from './json.js';
import { CHECKPOINT_FILE, type PtqQuantization } from './ptq-checkpoint.js';
import { DTYPE_BYTES, SafetensorsModel } from './safetensors.js';

/** The safetensors dtype each scale storage dtype is written as (ptq-checkpoint.ts encodeParams). */
const SCALE_TENSOR_DTYPE: Record<string, string> = {
  f16: 'F16',
  bf16: 'BF16',
  f32: 'F32',
  e4m3: 'F8_E4M3',
  e8m0: 'U8',
};

const METADATA_KEY = 'ptqkit';

/** Validate the metadata and component tensors of the checkpoint in `dir` (model.safetensors). */
export async function checkPtqCheckpoint(dir: string): Promise<void> {
  const st = await SafetensorsModel.open(dir);
  try {
    const file = path.join(dir, CHECKPOINT_FILE);
    const text = st.metadata[METADATA_KEY];
    if (typeof text !== 'string') {
      throw new FormatError('missing ptqkit metadata', {
        file,
        field: `__metadata__.${METADATA_KEY}`,
        hint: 'the directory was not written by `ptq quantize`, or was modified',
      });
    }
    const meta = parseJsonBytes(new TextEncoder().encode(text), file, { maxDepth: 16 });
    const tensors = isPlainObject(meta) ? meta.tensors : undefined;
    if (!isPlainObject(tensors)) {
      throw new FormatError('invalid ptqkit metadata', {
        file,
        field: `__metadata__.${METADATA_KEY}.tensors`,
        expected: 'an object',
        got: jsonKind(tensors),
      });
    }
    for (const [name, entry] of Object.entries(tensors)) await checkEntry(st, name, entry, file);
  } finally {
    await st.close();
  }
}

async function checkEntry(st: SafetensorsModel, name: string, entry: unknown, file: string): Promise<void> {
  const where = { file, field: name };
  if (!isPlainObject(entry) || !isPlainObject(entry.grid)) {
    throw new FormatError('invalid quantized tensor entry', {
      ...where,
      expected: '{rows, cols, grid}',
      got: jsonKind(entry),
    });
  }
  const { rows, cols, grid } = entry as { rows: unknown; cols: unknown; grid: Record<string, unknown> };
  for (const [key, v] of [
    ['rows', rows],
    ['cols', cols],
  ] as const) {
    if (!(typeof v === 'number' && Number.isSafeInteger(v) && v > 0)) {
      throw new FormatError(`invalid ${key}`, {
        ...where,
        expected: 'a positive integer',
        got: JSON.stringify(v),
      });
    }
  }
  const r = rows as number;
  const c = cols as number;
  const base = name.replace(/\.weight$/, '');
  const component = (suffix: string, dtypes: readonly string[], required = true) => {
    const tensor = `${base}.${suffix}`;
    if (!st.names().includes(tensor)) {
      if (!required) return undefined;
      throw new FormatError('quantized tensor component missing', {
        file,
        field: tensor,
        expected: `a tensor for '${name}'`,
      });
    }
    const info = st.info(tensor);
    if (!dtypes.includes(info.dtype)) {
      throw new FormatError('quantized tensor component has the wrong dtype', {
        file,
        field: tensor,
        expected: dtypes.join(' or '),
        got: info.dtype,
      });
    }
    return info;
  };
  const qweight = component('qweight', ['U8'])!;
  const codeBytes = qweight.end - qweight.begin;
  if (r * c > codeBytes * 8) {
    throw new FormatError('quantized tensor larger than its stored codes', {
      ...where,
      expected: `at most ${codeBytes * 8} weights for ${codeBytes} code bytes`,
      got: `[${r}, ${c}]`,
    });
  }
  const scaleDtype = SCALE_TENSOR_DTYPE[String(grid.scaleDtype)];
  component('scales', scaleDtype ? [scaleDtype] : allDtypes());
  if (grid.symmetric === false && grid.zeroPoint !== 'float') component('qzeros', ['U8']);
  if (grid.symmetric === false && grid.zeroPoint === 'float')
    component('zeros', scaleDtype ? [scaleDtype] : allDtypes());
  const gIdx = component('g_idx', ['I32'], false);
  if (gIdx) {
    if (gIdx.shape.length !== 1 || gIdx.shape[0] !== c) {
      throw new FormatError('g_idx shape disagrees with the weight', {
        file,
        field: `${base}.g_idx`,
        expected: `[${c}]`,
        got: `[${gIdx.shape}]`,
      });
    }
    const raw = await st.readRaw(`${base}.g_idx`);
    const groups = new Int32Array(raw.buffer, raw.byteOffset, c);
    for (let i = 0; i < c; i++) {
      if (groups[i]! < 0 || groups[i]! >= c) {
        throw new FormatError('group index out of range', {
          file,
          field: `${base}.g_idx`,
          expected: `[0, ${c})`,
          got: `${groups[i]} at column ${i}`,
        });
      }
    }
  }
}

function allDtypes(): string[] {
  return Object.keys(DTYPE_BYTES);
}

/**
 * After reading: every dequantized weight finite. A scale, zero point or group index that does
 * not fit the grid reads past its array, which dequantizes to NaN.
 */
export function checkDequantized(weights: TensorMap, quantization: PtqQuantization, file: string): void {
  for (const [name, q] of quantization.tensors) {
    const w = weights.get(name);
    if (!w || w.data.length !== q.rows * q.cols) {
      throw new FormatError('quantized tensor does not dequantize to its shape', {
        file,
        field: name,
        expected: `${q.rows * q.cols} values`,
        got: `${w?.data.length}`,
      });
    }
    const bad = w.data.findIndex((x) => !Number.isFinite(x));
    if (bad >= 0) {
      throw new FormatError('quantized tensor dequantizes to a non-finite value', {
        file,
        field: name,
        expected: 'scales, zero points and group indices consistent with the grid',
        got: `${w.data[bad]} at row ${Math.floor(bad / q.cols)}, column ${bad % q.cols}`,
      });
    }
  }
}
