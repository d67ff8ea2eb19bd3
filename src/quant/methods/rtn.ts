/**
 * RTN — round-to-nearest: each block's scale and zero point come from its own values
 * (the grid's rule: min/max for integers, amax or mean|w| for the number formats) and every
 * weight rounds to the nearest grid point, independently.
 * The baseline every PTQ paper reports (e.g. GPTQ, Frantar et al. 2022, Table 3).
 *
 * Integer grids with one row per block (per-group, per-channel: every grid `ptq quantize`
 * streams) take `RtnRows`, a fused loop over each row on typed arrays: per group one pass for
 * min/max, IntGrid.params, one pass that rounds into a row of codes, then the row is packed into
 * qweight. No allocation per element or group beyond params' result, no whole-tensor codes
 * array. Its codes, scales and zeros are those of the per-element reference below
 * (grid.blockParams + grid.encode, which every other grid still takes): test/quant/rtn.test.ts.
 */
import { packBitsInto, packedByteLength } from '../../formats/bitpack.js';
import { type Grid, IntGrid } from '../../formats/grid.js';
import { fromCodes, type QuantizedTensor } from '../../formats/quantized-tensor.js';
import type { Tensor } from '../../tensor.js';
import type { QuantMethod } from './method.js';

export function quantizeRtn(weight: Tensor, grid: Grid, tensorName?: string): QuantizedTensor {
  const [rows, cols] = weight.shape as [number, number];
  const w = weight.data;
  grid = grid.forTensor(w);
  const [blockRows, blockCols] = grid.blockShape(rows, cols, tensorName);
  if (RtnRows.fits(grid, blockRows)) {
    const q = new RtnRows(grid, rows, cols, blockCols);
    for (let r = 0; r < rows; r++) q.row(r, w.subarray(r * cols, (r + 1) * cols));
    return q.result();
  }
  const numGroups = cols / blockCols;
  const scales = new Float32Array((rows / blockRows) * numGroups);
  const zeros = new Float32Array(scales.length);
  const codes = new Uint8Array(rows * cols);

  for (let br = 0; br < rows; br += blockRows) {
    for (let g = 0; g < numGroups; g++) {
      const c0 = g * blockCols;
      const { scale, zero } = grid.blockParams(w, cols, br, br + blockRows, c0, c0 + blockCols);
      const p = (br / blockRows) * numGroups + g;
      scales[p] = scale;
      zeros[p] = zero;
      for (let r = br; r < br + blockRows; r++) {
        for (let c = c0; c < c0 + blockCols; c++)
          codes[r * cols + c] = grid.encode(w[r * cols + c]!, scale, zero);
      }
    }
  }
  return fromCodes(rows, cols, grid.spec, codes, scales, zeros);
}

/**
 * 1.5 · 2^52: for |v| < 2^51, (v + ROUND_MAGIC) − ROUND_MAGIC is v rounded half-to-even
 * (the sum lands in [2^52, 2^53), where float64's spacing is 1, and IEEE addition rounds to
 * nearest even), i.e. roundHalfEven(v) without Math.round's call and tie fix-up. For |v| ≥ 2^51
 * the result keeps v's sign and is ≥ 2^51 in magnitude (rounding is monotone), so after the
 * clamp to [0, maxq] the code is the same as the reference's; NaN stays NaN and stores as 0
 * in a Uint8Array, as the reference's does.
 */
const ROUND_MAGIC = 6755399441055744;

/** RTN of an integer grid one row at a time (blocks of one row: groups or channels). */
export class RtnRows {
  readonly qweight: Uint8Array;
  readonly scales: Float32Array;
  readonly zeros: Float32Array;
  /** One group's codes before packing (the paths other than int4's fused one). */
  private readonly codes: Uint8Array;
  private readonly numGroups: number;
  /** int4 with whole bytes per group: codes go in pairs straight into qweight (x = c0 | c1 << 4). */
  private readonly fusedInt4: boolean;

  /** Integer grids whose blocks are single rows; other grids go through quantizeRtn's reference loop. */
  static fits(grid: Grid, blockRows: number): grid is IntGrid {
    return grid instanceof IntGrid && blockRows === 1;
  }

  constructor(
    private readonly grid: IntGrid,
    readonly rows: number,
    readonly cols: number,
    private readonly groupSize: number,
  ) {
    this.numGroups = cols / groupSize;
    this.scales = new Float32Array(rows * this.numGroups);
    this.zeros = new Float32Array(this.scales.length);
    this.qweight = new Uint8Array(packedByteLength(rows * cols, grid.spec.bits));
    this.codes = new Uint8Array(groupSize);
    this.fusedInt4 = grid.spec.bits === 4 && groupSize % 2 === 0;
  }

  /** Quantize row r, given as its `cols` float32 values. */
  row(r: number, x: Float32Array): void {
    const { grid, codes, groupSize, qweight, scales, zeros } = this;
    const { maxq } = grid;
    const bits = grid.spec.bits;
    for (let g = 0, p = r * this.numGroups; g < this.numGroups; g++, p++) {
      const c0 = g * groupSize;
      const c1 = c0 + groupSize;
      // IntGrid.blockParams on [c0, c1) of this row (NaN-free: the caller checked the weights).
      let min = Infinity;
      let max = -Infinity;
      for (let c = c0; c < c1; c++) {
        const v = x[c]!;
        if (v < min) min = v;
        if (v > max) max = v;
      }
      const { scale, zero } = grid.params(min, max);
      scales[p] = scale;
      zeros[p] = zero;
      // IntGrid.encode with params' zero point, always an integer (2^(b−1), or a rounded and
      // clamped −min/s): q = roundHalfEven(x / s) + z, clamped to [0, maxq]. x / s stays a
      // division: a reciprocal product moves ties. A clamped q is an integer in [0, maxq] (or
      // NaN, which `|` and a byte store make 0 as the reference's store does).
      if (this.fusedInt4) {
        for (let c = c0, o = (r * this.cols + c0) / 2; c < c1; c += 2, o++) {
          let lo = x[c]! / scale + ROUND_MAGIC - ROUND_MAGIC + zero;
          if (lo < 0) lo = 0;
          else if (lo > maxq) lo = maxq;
          let hi = x[c + 1]! / scale + ROUND_MAGIC - ROUND_MAGIC + zero;
          if (hi < 0) hi = 0;
          else if (hi > maxq) hi = maxq;
          qweight[o] = lo | (hi << 4);
        }
        continue;
      }
      for (let c = c0; c < c1; c++) {
        let q = x[c]! / scale + ROUND_MAGIC - ROUND_MAGIC + zero;
        if (q < 0) q = 0;
        else if (q > maxq) q = maxq;
        codes[c - c0] = q;
      }
      packBitsInto(codes, bits, qweight, (r * this.cols + c0) * bits);
    }
  }

  result(): QuantizedTensor {
    const { rows, cols, grid, qweight, scales, zeros } = this;
    // The fields (and their order) of fromCodes' result.
    return { rows, cols, spec: grid.spec, qweight, scales, zeros, groupIndex: undefined };
  }
}

export const rtn: QuantMethod<Record<string, never>> = {
  name: 'rtn',
  description: 'round to nearest, per block min/max (no data)',
  defaults: {},
  options: [],
  integerOnly: false,
  settings: () => ({}),
  outlierSelection: 'before quantization, leave-one-out error weighted by E[x_j^2] (1 without calibration)',
  quantizeWeight: (weight, grid, _options, name) => quantizeRtn(weight, grid, name),
  rowWise: true,
};
