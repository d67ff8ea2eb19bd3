/**
 * A quantized weight as it is stored: packed codes plus per-block scales and zero points
 * (and NVFP4's per-tensor scale in `spec.globalScale`). Exporters re-slice these arrays into
 * their own layouts; `dequantize` gives the float weights every evaluation uses, decoding each
 * code through the grid of `spec` (integers, or the number format's value table), so what is
 * evaluated is what is saved.
 */
import { UsageError } from '../errors.js';
import { type GridSpec, makeGrid, SCALE_BITS } from './grid.js';

export interface QuantizedTensor {
  rows: number;
  cols: number;
  spec: GridSpec;
  /**
   * Codes of the row-major [rows, cols] weight, `spec.bits` each, packed LSB-first (ternary:
   * 5 trits per byte). Float formats store their element codes (E2M1 nibbles, E4M3 bytes...).
   */
  qweight: Uint8Array;
  /** [rows / blockRows, numGroups] scales, exactly representable in `spec.scaleDtype` (e4m3, e8m0 too). */
  scales: Float32Array;
  /**
   * Zero points, same shape as `scales` (2^(bits-1) everywhere when symmetric, 0 for float
   * formats); integers unless the grid's `zeroPoint` is 'float'.
   */
  zeros: Float32Array;
  /**
   * Optional per-input-column scale t (SINQ's dual scaling, arXiv:2509.22944):
   * w[r, c] = scales[r, g(c)] · (q[r, c] − zeros[r, g(c)]) · t[c]. Stored in `spec.scaleDtype`.
   */
  columnScales?: Float32Array;
  /**
   * Group of each input column (GPTQ `g_idx`), when columns were quantized in a permuted
   * order (act-order); otherwise column c belongs to group floor(c / groupColumns).
   */
  groupIndex?: Int32Array;
  /**
   * SpQR-style outliers (arXiv:2306.03078 §4.2): weights kept in FP16 instead of their grid
   * value, as a CSR side matrix in original column order (quant/outliers.ts). They replace the
   * decoded value at their position.
   */
  outliers?: SparseOutliers;
  /**
   * LoRC low-rank error compensation (ZeroQuant-V2, arXiv:2303.08302 §5): FP16 factors added
   * to the decoded weight, w[r, c] += Σ_k u[r, k] · v[c, k] (quant/lorc.ts).
   */
  lowRank?: LowRankCorrection;
}

/** CSR outliers of a [rows, cols] weight; `values` are FP16 values held as float32. */
export interface SparseOutliers {
  /** [rows + 1]: row r's outliers are entries rowPtr[r] .. rowPtr[r + 1] − 1. */
  rowPtr: Int32Array;
  /** [nnz] column of each outlier, increasing within a row. */
  colIndex: Int32Array;
  /** [nnz] FP16-exact values. */
  values: Float32Array;
}

/** Rank-r factors of the quantization error, FP16-exact values held as float32. */
export interface LowRankCorrection {
  rank: number;
  /** [rows, rank], row-major. */
  u: Float32Array;
  /** [cols, rank], row-major: the correction is U Vᵀ. */
  v: Float32Array;
}

/**
 * Storage dtypes of the CSR index arrays: the narrowest signed integer safetensors has that
 * holds them (I16 for column indices below 2^15 and for row pointers up to 2^15 − 1 entries).
 */
export function outlierIndexDtypes(
  cols: number,
  nnz: number,
): { cols: 'I16' | 'I32'; rowPtr: 'I16' | 'I32' } {
  return { cols: cols <= 0x8000 ? 'I16' : 'I32', rowPtr: nnz < 0x8000 ? 'I16' : 'I32' };
}

/** Bits stored for the outliers (FP16 values + column indices + row pointers) and the LoRC factors (FP16). */
export function sideBits(q: QuantizedTensor): number {
  let bits = 0;
  if (q.outliers) {
    const nnz = q.outliers.values.length;
    const dt = outlierIndexDtypes(q.cols, nnz);
    const width = (d: 'I16' | 'I32') => (d === 'I16' ? 16 : 32);
    bits += nnz * (16 + width(dt.cols)) + (q.rows + 1) * width(dt.rowPtr);
  }
  if (q.lowRank) bits += q.lowRank.rank * (q.rows + q.cols) * 16;
  return bits;
}

/** Replace outlier positions by their kept values, then add U Vᵀ (summed in float64, rounded once). */
function applySide(q: QuantizedTensor, out: Float32Array): void {
  const o = q.outliers;
  if (o) {
    for (let r = 0; r < q.rows; r++)
      for (let k = o.rowPtr[r]!; k < o.rowPtr[r + 1]!; k++) out[r * q.cols + o.colIndex[k]!] = o.values[k]!;
  }
  const lr = q.lowRank;
  if (lr) {
    const { rank, u, v } = lr;
    for (let r = 0; r < q.rows; r++) {
      for (let c = 0; c < q.cols; c++) {
        let s = out[r * q.cols + c]!;
        for (let k = 0; k < rank; k++) s += u[r * rank + k]! * v[c * rank + k]!;
        out[r * q.cols + c] = s;
      }
    }
  }
}

/** Build a QuantizedTensor from unpacked codes. */
export function fromCodes(
  rows: number,
  cols: number,
  spec: GridSpec,
  codes: Uint8Array,
  scales: Float32Array,
  zeros: Float32Array,
  groupIndex?: Int32Array,
): QuantizedTensor {
  return { rows, cols, spec, qweight: makeGrid(spec).packing.pack(codes), scales, zeros, groupIndex };
}

export function unpackCodes(q: QuantizedTensor): Uint8Array {
  return makeGrid(q.spec).packing.unpack(q.qweight, q.rows * q.cols);
}

/** Column -> group and row -> scale-row maps implied by the grid. */
function blockIndexing(q: QuantizedTensor) {
  const [blockRows, blockCols] = makeGrid(q.spec).blockShape(q.rows, q.cols);
  const numGroups = q.cols / blockCols;
  const groupOf = q.groupIndex ?? Int32Array.from({ length: q.cols }, (_, c) => Math.floor(c / blockCols));
  return { blockRows, numGroups, groupOf };
}

export function dequantize(q: QuantizedTensor): Float32Array {
  const grid = makeGrid(q.spec);
  const codes = unpackCodes(q);
  const { blockRows, numGroups, groupOf } = blockIndexing(q);
  const out = new Float32Array(q.rows * q.cols);
  const t = q.columnScales;
  for (let r = 0; r < q.rows; r++) {
    const paramRow = Math.floor(r / blockRows) * numGroups;
    for (let c = 0; c < q.cols; c++) {
      const p = paramRow + groupOf[c]!;
      const w = grid.decode(codes[r * q.cols + c]!, q.scales[p]!, q.zeros[p]!);
      out[r * q.cols + c] = t ? w * t[c]! : w;
    }
  }
  applySide(q, out);
  return out;
}

/**
 * Bits actually stored for this tensor: packed codes, scales in their dtype, zeros when
 * asymmetric, per-tensor parameters (NVFP4's FP32 scale), g_idx, column scales, outliers and
 * LoRC factors.
 */
export function storedBits(q: QuantizedTensor): number {
  const grid = makeGrid(q.spec);
  const codeBits = grid.packing.byteLength(q.rows * q.cols) * 8;
  const paramBits = q.scales.length * grid.bitsPerBlockParams() + grid.bitsPerTensorParams();
  const gIdxBits = q.groupIndex ? q.groupIndex.length * 32 : 0;
  const columnScaleBits = q.columnScales ? q.columnScales.length * SCALE_BITS[q.spec.scaleDtype] : 0;
  return codeBits + paramBits + gIdxBits + columnScaleBits + sideBits(q);
}

/**
 * A model's stored size (ptqkit's accounting): quantized weights at their stored bits
 * (`storedBitsOf`, storedBits of their QuantizedTensor), every other tensor at float32.
 */
export function storageSize(
  shapes: Iterable<[string, readonly number[]]>,
  storedBitsOf: (name: string) => number | undefined,
): { bitsPerWeight: number; totalBytes: number } {
  let quantizedBits = 0;
  let quantizedWeights = 0;
  let otherBytes = 0;
  for (const [name, shape] of shapes) {
    const elements = shape.reduce((a, b) => a * b, 1);
    const bits = storedBitsOf(name);
    if (bits !== undefined) {
      quantizedBits += bits;
      quantizedWeights += elements;
    } else {
      otherBytes += elements * 4;
    }
  }
  return {
    /** Bits per weight of the quantized layers (codes + scales + zeros + g_idx). */
    bitsPerWeight: quantizedWeights ? quantizedBits / quantizedWeights : 32,
    totalBytes: Math.ceil(quantizedBits / 8) + otherBytes,
  };
}

/**
 * Exporters write the grid's codes and parameters only: a sparse FP16 outlier matrix or LoRC
 * factors have no place in GGUF, ONNX MatMulNBits, GPTQ or compressed-tensors, and dropping
 * them would silently export a different model than the one measured.
 */
export function rejectSideExport(format: string, tensor?: string): never {
  throw new UsageError(`${format} export cannot hold SpQR outliers or LoRC factors`, {
    field: tensor ?? 'export',
    expected: 'a checkpoint quantized without --outliers and --lorc-rank',
    hint: 'ptq eval reads the ptqkit checkpoint with them; quantize again without them to export',
  });
}

/** Refuse, at an exporter's entry, quantized tensors that carry outliers or LoRC factors. */
export function assertNoSideCorrections(
  tensors: Map<string, QuantizedTensor> | undefined,
  format: string,
): void {
  for (const [name, q] of tensors ?? []) if (q.outliers || q.lowRank) rejectSideExport(format, name);
}
