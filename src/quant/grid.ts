/**
 * Integer quantization grids: b-bit codes q ∈ [0, 2^b − 1] with w ≈ s · (q − z).
 *
 * Granularity follows torchao's block-size view; one (s, z) pair per block of
 *   | granularity | block           |
 *   |-------------|-----------------|
 *   | tensor      | [rows, cols]    |
 *   | channel     | [1, cols]       |  (one output row, GPTQ "per-channel")
 *   | group G     | [1, G]          |  (G consecutive input columns of one row)
 *
 * Parameters follow GPTQ's `Quantizer.find_params` (Frantar et al. 2022, reference code):
 * the range is widened to contain 0; symmetric grids use s = 2·max|w| / (2^b − 1) and
 * z = 2^(b−1); asymmetric grids use s = (max − min) / (2^b − 1), z = round(−min / s).
 * The scale is rounded to its storage dtype *before* codes are chosen, so the stored
 * (codes, scale, zero) dequantize to exactly the weights that were evaluated.
 */
import { ShapeError, UsageError } from '../errors.js';
import { roundToBf16, roundToF16 } from '../formats/half.js';

export type Granularity = 'tensor' | 'channel' | 'group';
export type ScaleDtype = 'f16' | 'bf16' | 'f32';

export interface GridSpec {
  bits: number;
  symmetric: boolean;
  granularity: Granularity;
  /** Columns per group when granularity is 'group'. */
  groupSize: number;
  scaleDtype: ScaleDtype;
  /**
   * 'integer' (default): zero points are codes, stored packed like them (GPTQ/AWQ).
   * 'float': zero points are real numbers stored in `scaleDtype` (HQQ optimizes them freely).
   */
  zeroPoint?: 'integer' | 'float';
}

export const MIN_BITS = 2;
export const MAX_BITS = 8;
export const SCALE_BITS: Record<ScaleDtype, number> = { f16: 16, bf16: 16, f32: 32 };

const SMALLEST_F16_SUBNORMAL = 2 ** -24;

/** Round half to even, as torch.round and numpy.round do (Math.round rounds half up). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export function gridName(g: GridSpec): string {
  const gran = g.granularity === 'group' ? `g${g.groupSize}` : g.granularity === 'channel' ? 'pc' : 'pt';
  return `int${g.bits}-${gran}-${g.symmetric ? 'sym' : 'asym'}`;
}

export function validateGrid(g: GridSpec): GridSpec {
  if (!Number.isInteger(g.bits) || g.bits < MIN_BITS || g.bits > MAX_BITS) {
    throw new UsageError('bits out of range', {
      field: 'bits',
      expected: `an integer from ${MIN_BITS} to ${MAX_BITS}`,
      got: String(g.bits),
    });
  }
  if (g.granularity === 'group' && (!Number.isInteger(g.groupSize) || g.groupSize < 1)) {
    throw new UsageError('invalid group size', {
      field: 'group-size',
      expected: 'a positive integer',
      got: String(g.groupSize),
    });
  }
  return g;
}

export class IntGrid {
  readonly maxq: number;
  private readonly roundScale: (s: number) => number;

  constructor(readonly spec: GridSpec) {
    validateGrid(spec);
    this.maxq = 2 ** spec.bits - 1;
    this.roundScale =
      spec.scaleDtype === 'f16' ? roundToF16 : spec.scaleDtype === 'bf16' ? roundToBf16 : Math.fround;
  }

  /** The same grid with one group spanning `groupSize` columns (per-channel grids become groups). */
  withGroupSize(groupSize: number): IntGrid {
    return new IntGrid({ ...this.spec, granularity: 'group', groupSize });
  }

  /** Rows and columns covered by one (scale, zero) pair for a [rows, cols] weight. */
  blockShape(rows: number, cols: number, tensorName?: string): [number, number] {
    switch (this.spec.granularity) {
      case 'tensor':
        return [rows, cols];
      case 'channel':
        return [1, cols];
      case 'group':
        if (cols % this.spec.groupSize !== 0) {
          throw new ShapeError('group size does not divide the input dimension', {
            field: tensorName,
            expected: `in_features divisible by ${this.spec.groupSize}`,
            got: String(cols),
          });
        }
        return [1, this.spec.groupSize];
    }
  }

  /** Scale and zero point of a block whose values span [min, max] (GPTQ find_params). */
  params(min: number, max: number): { scale: number; zero: number } {
    let xmin = Math.min(min, 0);
    let xmax = Math.max(max, 0);
    if (this.spec.symmetric) {
      // The reference only mirrors when xmin < 0, which clips all-positive groups at half their
      // range (z = 2^(b-1) but s = max/(2^b − 1)); mirroring always keeps every value in range.
      xmax = Math.max(-xmin, xmax);
      xmin = -xmax;
    }
    if (xmin === 0 && xmax === 0) {
      xmin = -1;
      xmax = 1;
    }
    let scale = this.roundScale((xmax - xmin) / this.maxq);
    // A range below the scale dtype's resolution: every value rounds to the zero point anyway.
    if (scale === 0) scale = SMALLEST_F16_SUBNORMAL;
    const zero = this.spec.symmetric
      ? (this.maxq + 1) / 2
      : Math.min(this.maxq, Math.max(0, roundHalfEven(-xmin / scale)));
    return { scale, zero };
  }

  /** The storage rounding of scales (and of float zero points). */
  roundParam(x: number): number {
    return this.roundScale(x);
  }

  encode(x: number, scale: number, zero: number): number {
    // An integer zero shifts the rounded value exactly; a float zero (HQQ) shifts before rounding.
    const q = Number.isInteger(zero) ? roundHalfEven(x / scale) + zero : roundHalfEven(x / scale + zero);
    return q < 0 ? 0 : q > this.maxq ? this.maxq : q;
  }

  decode(q: number, scale: number, zero: number): number {
    return scale * (q - zero);
  }

  /** Bits stored per (scale, zero) pair: the scale in its dtype, the zero only when asymmetric. */
  bitsPerBlockParams(): number {
    const scaleBits = SCALE_BITS[this.spec.scaleDtype];
    if (this.spec.symmetric) return scaleBits;
    return scaleBits + (this.spec.zeroPoint === 'float' ? scaleBits : this.spec.bits);
  }
}
