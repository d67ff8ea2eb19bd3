/**
 * A quantized weight as it is stored: packed codes plus per-block scales and zero points
 * (and NVFP4's per-tensor scale in `spec.globalScale`). Exporters re-slice these arrays into
 * their own layouts; `dequantize` gives the float weights every evaluation uses, decoding each
 * code through the grid of `spec` (integers, or the number format's value table), so what is
 * evaluated is what is saved.
 */
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
  return out;
}

/**
 * Bits actually stored for this tensor: packed codes, scales in their dtype, zeros when
 * asymmetric, per-tensor parameters (NVFP4's FP32 scale), g_idx, column scales.
 */
export function storedBits(q: QuantizedTensor): number {
  const grid = makeGrid(q.spec);
  const codeBits = grid.packing.byteLength(q.rows * q.cols) * 8;
  const paramBits = q.scales.length * grid.bitsPerBlockParams() + grid.bitsPerTensorParams();
  const gIdxBits = q.groupIndex ? q.groupIndex.length * 32 : 0;
  const columnScaleBits = q.columnScales ? q.columnScales.length * SCALE_BITS[q.spec.scaleDtype] : 0;
  return codeBits + paramBits + gIdxBits + columnScaleBits;
}
