/**
 * A quantized weight as it is stored: packed integer codes plus per-block scales and
 * zero points. Exporters re-slice these arrays into their own layouts; `dequantize`
 * gives the float weights every evaluation uses, so what is evaluated is what is saved.
 */
import { packBits, packedByteLength, unpackBits } from '../formats/bitpack.js';
import { type GridSpec, IntGrid, SCALE_BITS } from './grid.js';

export interface QuantizedTensor {
  rows: number;
  cols: number;
  spec: GridSpec;
  /** Codes of the row-major [rows, cols] weight, `spec.bits` each, packed LSB-first. */
  qweight: Uint8Array;
  /** [rows / blockRows, numGroups] scales, exactly representable in `spec.scaleDtype`. */
  scales: Float32Array;
  /**
   * Zero points, same shape as `scales` (2^(bits-1) everywhere when symmetric); integers
   * unless the grid's `zeroPoint` is 'float'.
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
  return { rows, cols, spec, qweight: packBits(codes, spec.bits), scales, zeros, groupIndex };
}

export function unpackCodes(q: QuantizedTensor): Uint8Array {
  return unpackBits(q.qweight, q.spec.bits, q.rows * q.cols);
}

/** Column -> group and row -> scale-row maps implied by the grid. */
function blockIndexing(q: QuantizedTensor) {
  const [blockRows, blockCols] = new IntGrid(q.spec).blockShape(q.rows, q.cols);
  const numGroups = q.cols / blockCols;
  const groupOf = q.groupIndex ?? Int32Array.from({ length: q.cols }, (_, c) => Math.floor(c / blockCols));
  return { blockRows, numGroups, groupOf };
}

export function dequantize(q: QuantizedTensor): Float32Array {
  const codes = unpackCodes(q);
  const { blockRows, numGroups, groupOf } = blockIndexing(q);
  const out = new Float32Array(q.rows * q.cols);
  const t = q.columnScales;
  for (let r = 0; r < q.rows; r++) {
    const paramRow = Math.floor(r / blockRows) * numGroups;
    for (let c = 0; c < q.cols; c++) {
      const p = paramRow + groupOf[c]!;
      const w = q.scales[p]! * (codes[r * q.cols + c]! - q.zeros[p]!);
      out[r * q.cols + c] = t ? w * t[c]! : w;
    }
  }
  return out;
}

/** Bits actually stored for this tensor: packed codes, scales in their dtype, zeros when asymmetric, g_idx, column scales. */
export function storedBits(q: QuantizedTensor): number {
  const grid = new IntGrid(q.spec);
  const codeBits = packedByteLength(q.rows * q.cols, q.spec.bits) * 8;
  const paramBits = q.scales.length * grid.bitsPerBlockParams();
  const gIdxBits = q.groupIndex ? q.groupIndex.length * 32 : 0;
  const columnScaleBits = q.columnScales ? q.columnScales.length * SCALE_BITS[q.spec.scaleDtype] : 0;
  return codeBits + paramBits + gIdxBits + columnScaleBits;
}
