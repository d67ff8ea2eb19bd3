/**
 * Generic ExMy minifloats (1 sign bit, E exponent bits, M mantissa bits, bias B) as used by
 * the OCP 8-bit floating point spec (OFP8: E4M3, E5M2) and the OCP Microscaling spec v1.0
 * (MX element types FP6 E3M2 / E2M3, FP4 E2M1), and E8M0, the MX scale type.
 *
 *   value = (−1)^S · 2^(e − B) · (1 + m / 2^M)     e = 1 .. top      (normal)
 *   value = (−1)^S · 2^(1 − B) · (m / 2^M)         e = 0             (subnormal, and ±0)
 *
 * What the top exponent field means is the format's special-value rule:
 *   | specials   | top exponent field                          | example                      |
 *   |------------|---------------------------------------------|------------------------------|
 *   | 'ieee'     | m = 0: ±Inf, m ≠ 0: NaN (IEEE 754 style)    | E5M2: max 57344, 0x7C = +Inf |
 *   | 'nan-only' | normal numbers, except S.1111.111 = NaN     | E4M3: max 448, 0x7F = NaN    |
 *   | 'none'     | normal numbers; no Inf, no NaN              | E3M2 28, E2M3 7.5, E2M1 6    |
 *
 * Conversion from a real number rounds to nearest, ties to even (IEEE 754 roundTiesToEven,
 * the OFP8 spec's rounding), with subnormals. Values beyond the largest finite value:
 *  - saturating (OFP8 "saturation mode", CUDA's __NV_SATFINITE, what quantizers use): ±Inf and
 *    every finite overflow become ±max; NaN stays NaN;
 *  - non-saturating: overflow gives ±Inf ('ieee') or NaN ('nan-only').
 * Formats without NaN/Inf ('none') always saturate (the MX spec clamps to max normal) and have
 * no encoding for NaN: encoding NaN throws.
 * Decoding is a lookup in the table of all 2^(1+E+M) values, built once per format.
 */
import { FormatError } from '../errors.js';

export type Specials = 'ieee' | 'nan-only' | 'none';

export interface MinifloatSpec {
  name: string;
  exponentBits: number;
  mantissaBits: number;
  bias: number;
  specials: Specials;
}

/** Round half to even, as torch.round and numpy.round do (Math.round rounds half up). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The binade of a > 0: the integer e with 2^e ≤ a < 2^(e+1) (Math.log2 may be off by one next to 2^e). */
export function floorLog2(a: number): number {
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  else if (2 ** (e + 1) <= a) e++;
  return e;
}

export class Minifloat {
  readonly bits: number;
  /** Largest finite value. */
  readonly max: number;
  /** Smallest positive normal value 2^(1 − B). */
  readonly minNormal: number;
  /** Smallest positive subnormal value 2^(1 − B − M). */
  readonly minSubnormal: number;
  /** Exponent of the largest binade, floor(log2(max)) (the MX spec's emax_elem). */
  readonly emax: number;
  /** Code of +max; the sign bit is added for −max. */
  readonly maxCode: number;
  /** Code of +NaN, or −1 when the format has none. */
  readonly nanCode: number;
  /** Code of +Inf, or −1 when the format has none. */
  readonly infCode: number;
  /** value of every code, indexed by code. */
  readonly values: Float64Array;
  private readonly signBit: number;
  private readonly emin: number;

  constructor(readonly spec: MinifloatSpec) {
    const { exponentBits: E, mantissaBits: M, bias: B, specials } = spec;
    this.bits = 1 + E + M;
    this.signBit = 1 << (E + M);
    const top = (1 << E) - 1;
    const mMax = (1 << M) - 1;
    this.emin = 1 - B;
    this.minNormal = 2 ** this.emin;
    this.minSubnormal = 2 ** (this.emin - M);
    // The largest finite code: below the reserved top binade (ieee), one below the NaN
    // pattern (nan-only), or the all-ones pattern (none).
    const [maxField, maxMant] =
      specials === 'ieee' ? [top - 1, mMax] : specials === 'nan-only' ? [top, mMax - 1] : [top, mMax];
    this.maxCode = (maxField << M) | maxMant;
    this.emax = maxField - B;
    this.max = 2 ** this.emax * (1 + maxMant / 2 ** M);
    // IEEE's quiet NaN sets the top mantissa bit (E5M2 0x7E, like f16's 0x7E00).
    this.nanCode =
      specials === 'ieee' ? (top << M) | (1 << (M - 1)) : specials === 'nan-only' ? (top << M) | mMax : -1;
    this.infCode = specials === 'ieee' ? top << M : -1;
    this.values = new Float64Array(1 << this.bits);
    for (let c = 0; c < this.values.length; c++) this.values[c] = this.decodeBits(c);
  }

  private decodeBits(code: number): number {
    const { exponentBits: E, mantissaBits: M, bias: B, specials } = this.spec;
    const sign = code & this.signBit ? -1 : 1;
    const field = (code >>> M) & ((1 << E) - 1);
    const mant = code & ((1 << M) - 1);
    const top = (1 << E) - 1;
    if (specials === 'ieee' && field === top) return mant ? Number.NaN : sign * Infinity;
    if (specials === 'nan-only' && field === top && mant === (1 << M) - 1) return Number.NaN;
    if (field === 0) return sign * mant * this.minSubnormal;
    return sign * 2 ** (field - B) * (1 + mant / 2 ** M);
  }

  decode(code: number): number {
    return this.values[code]!;
  }

  /**
   * The code of x rounded to nearest even. `saturate` (default true) maps overflow and ±Inf to
   * ±max; otherwise they become Inf/NaN as the format defines.
   */
  encode(x: number, saturate = true): number {
    const M = this.spec.mantissaBits;
    if (Number.isNaN(x)) {
      if (this.nanCode < 0) {
        throw new FormatError('NaN has no encoding', { field: this.spec.name, expected: 'a finite value' });
      }
      return this.nanCode;
    }
    const sign = x < 0 || Object.is(x, -0) ? this.signBit : 0;
    const a = Math.abs(x);
    if (a === Infinity)
      return sign | (saturate || this.spec.specials === 'none' ? this.maxCode : this.overflowCode());
    if (a === 0) return sign;
    let e = floorLog2(a);
    if (e < this.emin) e = this.emin; // subnormal range: fixed quantum 2^(emin − M)
    const ulp = 2 ** (e - M);
    const n = roundHalfEven(a / ulp); // a / 2^k is exact in float64
    if (n * ulp > this.max) {
      return sign | (saturate || this.spec.specials === 'none' ? this.maxCode : this.overflowCode());
    }
    if (n < 1 << M) return sign | n; // subnormal (only when e = emin); n = 2^M carries into the first normal
    // n ∈ [2^M, 2^(M+1)]: n = 2^(M+1) carries into the next binade with mantissa 0.
    const [field, mant] = n === 2 << M ? [e + 1 + this.spec.bias, 0] : [e + this.spec.bias, n - (1 << M)];
    return sign | (field << M) | mant;
  }

  /** x rounded to the nearest representable value (saturating). */
  round(x: number): number {
    return this.values[this.encode(x)]!;
  }

  private overflowCode(): number {
    return this.spec.specials === 'ieee' ? this.infCode : this.nanCode;
  }
}

/**
 * E8M0 (OCP MX v1.0 §5.4.1): an unsigned power of two 2^(c − 127), c = 0..254; 0xFF is NaN.
 * No zero, no sign, no Inf.
 */
export const E8M0 = {
  bits: 8,
  bias: 127,
  nanCode: 0xff,
  minExponent: -127,
  maxExponent: 127,
  decode(code: number): number {
    return code === 0xff ? Number.NaN : 2 ** (code - 127);
  },
  /** The code of 2^exponent; exponents above 127 have no encoding (NaN), below −127 clamp to −127. */
  fromExponent(exponent: number): number {
    if (!(exponent <= 127)) return 0xff;
    return Math.max(exponent, -127) + 127;
  },
  /** The code of a stored power-of-two scale (the inverse of decode). */
  encode(value: number): number {
    if (Number.isNaN(value)) return 0xff;
    const e = Math.round(Math.log2(value));
    if (!(2 ** e === value) || e < -127 || e > 127) {
      throw new FormatError('not a power of two in the E8M0 range', {
        field: 'e8m0',
        expected: '2^k, −127 ≤ k ≤ 127',
        got: String(value),
      });
    }
    return e + 127;
  },
} as const;
