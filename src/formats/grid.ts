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
 *
 * Other number formats (FP8/FP6/FP4, NVFP4, MX, ternary, binary; number-formats.ts) are
 * ScaledGrid below: symmetric, w ≈ s · value(code) with the element format's value table.
 * Both implement `Grid`, the plug-in every method (RTN, GPTQ, AWQ) quantizes through, so any
 * method composes with any format (gpt-fast's GPTQ takes the format's functions the same way).
 */
import { ShapeError, UsageError } from '../errors.js';
import {
  bitPacking,
  type CodePacking,
  ELEMENT_FORMATS,
  type ElementFormat,
  FP4_E2M1,
  FP8_E4M3,
  SCALE_FORMATS,
} from './element-formats.js';
import { roundToBf16, roundToF16 } from './half.js';
import { E8M0, floorLog2, roundHalfEven } from './minifloat.js';
import {
  formatInfo,
  type Granularity,
  type GridSpec,
  type ScaleDtype,
  type Scaling,
} from './number-formats.js';

/** The stored description of a grid, declared with the number formats it names. */
export type { Granularity, GridSpec, ScaleDtype };

export const MIN_BITS = 2;
export const MAX_BITS = 8;
export const SCALE_BITS: Record<ScaleDtype, number> = { f16: 16, bf16: 16, f32: 32, e4m3: 8, e8m0: 8 };

/**
 * A quantization grid as a plug-in: methods find block parameters, encode and decode through
 * it and never look at the number format. A block is `blockShape` rows × columns sharing one
 * (scale, zero) pair; `scale`/`zero` are the values stored in QuantizedTensor.scales/zeros.
 */
export interface Grid {
  readonly spec: GridSpec;
  /** How codes are packed into bytes (bits per code, or 5 trits per byte). */
  readonly packing: CodePacking;
  /** The zero point of symmetric grids (2^(b−1) for integers, 0 for float formats). */
  readonly symmetricZero: number;
  blockShape(rows: number, cols: number, tensorName?: string): [number, number];
  withGroupSize(groupSize: number): Grid;
  /** The grid for one tensor: formats with per-tensor parameters (NVFP4's global scale) fix them here. */
  forTensor(w: Float32Array): Grid;
  /** Scale and zero of the block M[r0:r1, c0:c1] of a row-major matrix `width` columns wide. */
  blockParams(
    M: Float32Array,
    width: number,
    r0: number,
    r1: number,
    c0: number,
    c1: number,
  ): { scale: number; zero: number };
  encode(x: number, scale: number, zero: number): number;
  decode(q: number, scale: number, zero: number): number;
  /** Bits stored per (scale, zero) pair. */
  bitsPerBlockParams(): number;
  /** Bits stored once per tensor (NVFP4's FP32 global scale). */
  bitsPerTensorParams(): number;
}

/** The grid of a spec: integer grids, or the scaled grid of its number format. */
export function makeGrid(spec: GridSpec): Grid {
  return (spec.format ?? 'int') === 'int' ? new IntGrid(spec) : new ScaledGrid(spec);
}

export { roundHalfEven };

export function gridName(g: GridSpec): string {
  const gran = g.granularity === 'group' ? `g${g.groupSize}` : g.granularity === 'channel' ? 'pc' : 'pt';
  const format = g.format ?? 'int';
  if (format === 'int') return `int${g.bits}-${gran}-${g.symmetric ? 'sym' : 'asym'}`;
  // Formats with a fixed block (NVFP4, MX) are named alone; the others carry their granularity.
  return formatInfo(format).groupSize ? format : `${format}-${gran}`;
}

export function validateGrid(g: GridSpec): GridSpec {
  if ((g.format ?? 'int') !== 'int') return validateScaledGrid(g);
  if (g.scaleDtype === 'e8m0') {
    throw new UsageError('e8m0 scales are powers of two chosen by the MX formats', {
      field: 'scale-dtype',
      expected: 'f16, bf16, f32 or e4m3 for integer grids',
      got: g.scaleDtype,
    });
  }
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

export class IntGrid implements Grid {
  readonly maxq: number;
  readonly packing: CodePacking;
  readonly symmetricZero: number;
  private readonly roundScale: (s: number) => number;
  private readonly smallestScale: number;

  constructor(readonly spec: GridSpec) {
    if ((spec.format ?? 'int') !== 'int') {
      throw new UsageError('not an integer grid', {
        field: 'format',
        expected: 'int',
        got: spec.format,
        hint: 'use makeGrid(spec)',
      });
    }
    validateGrid(spec);
    this.maxq = 2 ** spec.bits - 1;
    this.packing = bitPacking(spec.bits);
    this.symmetricZero = (this.maxq + 1) / 2;
    this.roundScale =
      spec.scaleDtype === 'f16'
        ? roundToF16
        : spec.scaleDtype === 'bf16'
          ? roundToBf16
          : spec.scaleDtype === 'e4m3'
            ? SCALE_FORMATS.e4m3.round!
            : Math.fround;
    this.smallestScale = SCALE_FORMATS[spec.scaleDtype].smallest;
  }

  /** The same grid with one group spanning `groupSize` columns (per-channel grids become groups). */
  withGroupSize(groupSize: number): IntGrid {
    return new IntGrid({ ...this.spec, granularity: 'group', groupSize });
  }

  /** Rows and columns covered by one (scale, zero) pair for a [rows, cols] weight. */
  blockShape(rows: number, cols: number, tensorName?: string): [number, number] {
    return blockShapeOf(this.spec, rows, cols, tensorName);
  }

  /** Integer grids have no per-tensor parameters. */
  forTensor(): IntGrid {
    return this;
  }

  /** GPTQ find_params on the block's min and max. */
  blockParams(M: Float32Array, width: number, r0: number, r1: number, c0: number, c1: number) {
    let min = Infinity;
    let max = -Infinity;
    for (let r = r0; r < r1; r++) {
      for (let c = c0; c < c1; c++) {
        const x = M[r * width + c]!;
        if (x < min) min = x;
        if (x > max) max = x;
      }
    }
    return this.params(min, max);
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
    if (scale === 0) scale = this.smallestScale;
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
    return Math.min(this.maxq, Math.max(0, q));
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

  bitsPerTensorParams(): number {
    return 0;
  }
}

/** Rows and columns covered by one (scale, zero) pair for a [rows, cols] weight. */
export function blockShapeOf(
  spec: GridSpec,
  rows: number,
  cols: number,
  tensorName?: string,
): [number, number] {
  switch (spec.granularity) {
    case 'tensor':
      return [rows, cols];
    case 'channel':
      return [1, cols];
    case 'group':
      if (cols % spec.groupSize !== 0) {
        throw new ShapeError('group size does not divide the input dimension', {
          field: tensorName,
          expected: `in_features divisible by ${spec.groupSize}`,
          got: String(cols),
        });
      }
      return [1, spec.groupSize];
  }
}

function validateScaledGrid(g: GridSpec): GridSpec {
  const format = g.format!;
  const info = formatInfo(format);
  const element = ELEMENT_FORMATS[info.element!];
  const fail = (field: string, expected: string, got: string) => {
    throw new UsageError(`invalid ${format} grid`, { field, expected, got });
  };
  if (g.bits !== element.bits) fail('bits', `${element.bits} (${element.name} codes)`, String(g.bits));
  if (!g.symmetric || g.zeroPoint === 'float') fail('asym', 'a symmetric grid (zero point 0)', 'asymmetric');
  if (info.groupSize !== undefined && (g.granularity !== 'group' || g.groupSize !== info.groupSize)) {
    fail(
      'group-size',
      `blocks of ${info.groupSize}`,
      g.granularity === 'group' ? String(g.groupSize) : g.granularity,
    );
  }
  if (g.granularity === 'group' && (!Number.isInteger(g.groupSize) || g.groupSize < 1)) {
    fail('group-size', 'a positive integer', String(g.groupSize));
  }
  if (info.scaleDtype !== undefined ? g.scaleDtype !== info.scaleDtype : g.scaleDtype === 'e8m0') {
    fail('scale-dtype', info.scaleDtype ?? 'f16, bf16, f32 or e4m3', g.scaleDtype);
  }
  return g;
}

/** BitNet's reference clamps the absmean scale at 1e-5 before dividing by it. */
const TERNARY_MIN_SCALE = 1e-5;
/** compressed-tensors replaces a zero FP8 block scale by finfo(float8_e4m3fn).eps = 0.125. */
const NVFP4_ZERO_SCALE = 0.125;

/**
 * Float and codebook grids: w ≈ s · v(q) with v the element format's value table, always
 * symmetric (zero point 0). How each format picks a block's scale s (Scaling):
 *
 *   amax     s = round_dtype(amax_b / max_elem)         compressed-tensors calculate_qparams (float, symmetric)
 *   nvfp4    g = 448·6 / amax(W)       (FP32, once per tensor)            compressed-tensors generate_gparam
 *            s = e4m3(g · (amax_b / 6)), w = v(q) · (s / g)               calculate_qparams, _quantize
 *   mx       s = 2^clamp(floor(log2 amax_b) − emax_elem, −127, 127)       OCP MX v1.0 §6.3
 *   absmean  s = round_dtype(mean_b |w|)  (ternary: ≥ 1e-5)               BitNet b1.58 Eq. 3, XNOR-Net Eq. 4
 *
 * Codes: q = encode(x / s), nearest-even with saturation to ±max_elem (ternary: RoundClip to
 * {−1, 0, 1}; binary: sign). Quotients and products are rounded to float32 as the torch
 * references compute them, so ties fall where theirs do.
 */
export class ScaledGrid implements Grid {
  readonly element: ElementFormat;
  readonly scaling: Scaling;
  readonly packing: CodePacking;
  readonly symmetricZero = 0;
  private readonly roundScale: (s: number) => number;
  private readonly smallestScale: number;

  constructor(readonly spec: GridSpec) {
    validateScaledGrid(spec);
    const info = formatInfo(spec.format);
    this.element = ELEMENT_FORMATS[info.element!];
    this.scaling = info.scaling;
    this.packing = this.element.packing;
    const scaleFormat = SCALE_FORMATS[spec.scaleDtype];
    this.roundScale = scaleFormat.round ?? ((s) => s);
    this.smallestScale = scaleFormat.smallest;
  }

  withGroupSize(groupSize: number): ScaledGrid {
    return new ScaledGrid({ ...this.spec, granularity: 'group', groupSize });
  }

  blockShape(rows: number, cols: number, tensorName?: string): [number, number] {
    return blockShapeOf(this.spec, rows, cols, tensorName);
  }

  /** NVFP4: the FP32 global scale g = 448 · 6 / amax(W) (amax at least the smallest normal f32). */
  forTensor(w: Float32Array): ScaledGrid {
    if (this.scaling !== 'nvfp4') return this;
    let amax = 0;
    for (let i = 0; i < w.length; i++) amax = Math.max(amax, Math.abs(w[i]!));
    const globalScale = Math.fround((FP8_E4M3.max * FP4_E2M1.max) / Math.max(amax, 2 ** -126));
    return new ScaledGrid({ ...this.spec, globalScale });
  }

  blockParams(M: Float32Array, width: number, r0: number, r1: number, c0: number, c1: number) {
    let amax = 0;
    let sum = 0;
    for (let r = r0; r < r1; r++) {
      for (let c = c0; c < c1; c++) {
        const a = Math.abs(M[r * width + c]!);
        if (a > amax) amax = a;
        sum += a;
      }
    }
    let scale: number;
    switch (this.scaling) {
      case 'amax':
        scale = this.roundScale(amax / this.element.max);
        break;
      case 'absmean': {
        const mean = sum / ((r1 - r0) * (c1 - c0));
        scale = this.roundScale(this.element.name === 'ternary' ? Math.max(mean, TERNARY_MIN_SCALE) : mean);
        break;
      }
      case 'nvfp4': {
        const g = this.globalScale();
        scale = FP8_E4M3.round(Math.fround(g * Math.fround(amax / FP4_E2M1.max)));
        if (scale === 0) scale = NVFP4_ZERO_SCALE;
        break;
      }
      case 'mx': {
        // An all-zero block takes the smallest scale, 2^-127 (E8M0 code 0).
        const e = amax === 0 ? E8M0.minExponent : floorLog2(amax) - this.element.emax;
        if (e > E8M0.maxExponent) {
          throw new UsageError('block maximum beyond the E8M0 scale range', {
            field: this.spec.format,
            got: String(amax),
          });
        }
        scale = 2 ** Math.max(e, E8M0.minExponent);
        break;
      }
      default:
        throw new UsageError('integer scaling on a float grid', { field: this.spec.format });
    }
    return { scale: scale === 0 ? this.smallestScale : scale, zero: 0 };
  }

  encode(x: number, scale: number): number {
    return this.element.encode(Math.fround(x / this.effectiveScale(scale)));
  }

  decode(q: number, scale: number): number {
    return Math.fround(this.element.decode(q) * this.effectiveScale(scale));
  }

  bitsPerBlockParams(): number {
    return SCALE_BITS[this.spec.scaleDtype];
  }

  bitsPerTensorParams(): number {
    return this.scaling === 'nvfp4' ? 32 : 0;
  }

  /** The multiplier of the element values: the stored scale, over the global scale for NVFP4. */
  private effectiveScale(scale: number): number {
    return this.scaling === 'nvfp4' ? Math.fround(scale / this.globalScale()) : scale;
  }

  private globalScale(): number {
    const g = this.spec.globalScale;
    if (g === undefined) {
      throw new UsageError('NVFP4 grid used before its per-tensor scale was set', {
        field: 'globalScale',
        hint: 'quantize through grid.forTensor(weight)',
      });
    }
    return g;
  }
}
