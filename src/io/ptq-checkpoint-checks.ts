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
 *  - SpQR outliers are a complete CSR: values F16 [nnz], columns [nnz] within [0, cols) and
 *    increasing per row, row pointers [rows + 1] from 0 to nnz, non-decreasing;
 *  - LoRC factors are F16 lorc_u [rows, r] and lorc_v [cols, r] with the same r ≥ 1;
 * and after reading, every dequantized weight is finite (a scale or group index out of range
 * reads as NaN there).
 */
import path from 'node:path';
import { FormatError } from '../errors.js';
import type { TensorMap } from '../tensor.js';
import { isPlainObject, jsonKind, parseJsonBytes } from './json.js';
import { CHECKPOINT_FILE, type PtqQuantization } from './ptq-checkpoint.js';
import { DTYPE_BYTES, SafetensorsModel, type TensorInfo } from './safetensors.js';

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
  await checkSide(st, base, r, c, component, file);
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

/** The CSR outliers and LoRC factors of formats/quantized-tensor.ts, when present, complete and in range. */
async function checkSide(
  st: SafetensorsModel,
  base: string,
  rows: number,
  cols: number,
  component: (suffix: string, dtypes: readonly string[], required?: boolean) => TensorInfo | undefined,
  file: string,
): Promise<void> {
  const bad = (suffix: string, message: string, expected: string, got: string) => {
    throw new FormatError(message, { file, field: `${base}.${suffix}`, expected, got });
  };
  const ints = async (suffix: string, info: TensorInfo) => {
    const raw = (await st.readRaw(`${base}.${suffix}`)).slice();
    return info.dtype === 'I16' ? Int32Array.from(new Int16Array(raw.buffer)) : new Int32Array(raw.buffer);
  };
  const anyOutliers = ['outlier_values', 'outlier_cols', 'outlier_rowptr'].some((x) =>
    st.names().includes(`${base}.${x}`),
  );
  if (anyOutliers) {
    const values = component('outlier_values', ['F16'])!;
    const colInfo = component('outlier_cols', ['I16', 'I32'])!;
    const ptrInfo = component('outlier_rowptr', ['I16', 'I32'])!;
    const nnz = values.shape.length === 1 ? values.shape[0]! : -1;
    if (nnz < 0 || nnz > rows * cols)
      bad('outlier_values', 'outlier count out of range', `[0..${rows * cols}]`, `[${values.shape}]`);
    if (colInfo.shape.length !== 1 || colInfo.shape[0] !== nnz)
      bad('outlier_cols', 'outlier columns disagree with the values', `[${nnz}]`, `[${colInfo.shape}]`);
    if (ptrInfo.shape.length !== 1 || ptrInfo.shape[0] !== rows + 1)
      bad(
        'outlier_rowptr',
        'outlier row pointers disagree with the weight',
        `[${rows + 1}]`,
        `[${ptrInfo.shape}]`,
      );
    const ptr = await ints('outlier_rowptr', ptrInfo);
    const col = await ints('outlier_cols', colInfo);
    if (ptr[0] !== 0 || ptr[rows] !== nnz)
      bad(
        'outlier_rowptr',
        'outlier row pointers do not span the values',
        `0 .. ${nnz}`,
        `${ptr[0]} .. ${ptr[rows]}`,
      );
    for (let r = 0; r < rows; r++) {
      if (ptr[r + 1]! < ptr[r]!)
        bad(
          'outlier_rowptr',
          'outlier row pointers decrease',
          'non-decreasing',
          `${ptr[r]} then ${ptr[r + 1]} at row ${r}`,
        );
      for (let k = ptr[r]!; k < ptr[r + 1]!; k++) {
        const prev = k > ptr[r]! ? col[k - 1]! : -1;
        if (col[k]! <= prev || col[k]! >= cols)
          bad(
            'outlier_cols',
            'outlier column out of range or out of order',
            `increasing within [0, ${cols}) per row`,
            `${col[k]} at entry ${k} (row ${r})`,
          );
      }
    }
  }
  const u = component('lorc_u', ['F16'], false);
  const v = component('lorc_v', ['F16'], !!u);
  if (v && !u) component('lorc_u', ['F16']);
  if (u && v) {
    const rank = u.shape[1] ?? 0;
    if (u.shape.length !== 2 || u.shape[0] !== rows || rank < 1)
      bad('lorc_u', 'LoRC factor U disagrees with the weight', `[${rows}, r ≥ 1]`, `[${u.shape}]`);
    if (v.shape.length !== 2 || v.shape[0] !== cols || v.shape[1] !== rank)
      bad('lorc_v', 'LoRC factor V disagrees with the weight and U', `[${cols}, ${rank}]`, `[${v.shape}]`);
  }
}

function allDtypes(): string[] {
  return Object.keys(DTYPE_BYTES);
}

/**
 * After reading: every dequantized weight finite. A scale, zero point or group index that does
 * not fit the grid reads past its array, which dequantizes to NaN.
 */
export function checkDequantized(
  weights: TensorMap,
  quantization: Pick<PtqQuantization, 'tensors'>,
  file: string,
): void {
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
