/**
 * Number formats as data: the element formats a grid stores one code per weight in, how the
 * codes are packed, and the formats its scales are stored in.
 *
 *   | element   | bits | values                                   | max    | source                       |
 *   |-----------|------|------------------------------------------|--------|------------------------------|
 *   | fp8-e4m3  | 8    | bias 7, no Inf, NaN = S.1111.111         | 448    | OCP OFP8 spec v1.0           |
 *   | fp8-e5m2  | 8    | bias 15, IEEE Inf/NaN                    | 57344  | OCP OFP8 spec v1.0           |
 *   | fp6-e3m2  | 6    | bias 3, no Inf/NaN                       | 28     | OCP MX spec v1.0 §5.3.2      |
 *   | fp6-e2m3  | 6    | bias 1, no Inf/NaN                       | 7.5    | OCP MX spec v1.0 §5.3.2      |
 *   | fp4-e2m1  | 4    | ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}            | 6      | OCP MX spec v1.0 §5.3.3      |
 *   | ternary   | 2    | {−1, 0, +1}, packed 5 per byte (1.6 b)   | 1      | BitNet b1.58, arXiv:2402.17764 |
 *   | binary    | 1    | {−1, +1}                                 | 1      | XNOR-Net, arXiv:1603.05279   |
 *
 * Integer grids (int2..int8) keep their own codes q ∈ [0, 2^b − 1] (grid.ts).
 *
 *   | scale | bits | rounding                                 | stored as (safetensors)         |
 *   |-------|------|------------------------------------------|---------------------------------|
 *   | f16   | 16   | IEEE binary16, RNE                       | F16                             |
 *   | bf16  | 16   | bfloat16, RNE                            | BF16                            |
 *   | f32   | 32   | binary32, RNE                            | F32                             |
 *   | e4m3  | 8    | FP8 E4M3, RNE, saturating (NVFP4 scales) | F8_E4M3 (compressed-tensors)    |
 *   | e8m0  | 8    | 2^k, k ∈ [−127, 127] (MX shared scales)  | U8 biased exponent (idem)       |
 */
import { FormatError } from '../errors.js';
import { packBits, packedByteLength, unpackBits } from './bitpack.js';
import { roundToBf16, roundToF16 } from './half.js';
import { E8M0, Minifloat, roundHalfEven } from './minifloat.js';

/** How codes are laid out in bytes. */
export interface CodePacking {
  /** Stored bits per code (1.6 for trits). */
  bitsPerCode: number;
  byteLength(count: number): number;
  pack(codes: ArrayLike<number>): Uint8Array;
  unpack(packed: Uint8Array, count: number): Uint8Array;
}

/** `bits` per code, LSB-first (formats/bitpack.ts): E2M1 pairs share a byte low nibble first. */
export function bitPacking(bits: number): CodePacking {
  return {
    bitsPerCode: bits,
    byteLength: (count) => packedByteLength(count, bits),
    pack: (codes) => packBits(codes, bits),
    unpack: (packed, count) => unpackBits(packed, bits, count),
  };
}

/**
 * Five trits (codes 0, 1, 2) per byte as the base-3 number t0 + 3·t1 + 9·t2 + 27·t3 + 81·t4
 * (≤ 242): 1.6 bits per weight, the density of llama.cpp's TQ1_0 (not its byte layout).
 */
export const TRIT_PACKING: CodePacking = {
  bitsPerCode: 8 / 5,
  byteLength: (count) => Math.ceil(count / 5),
  pack(codes) {
    const out = new Uint8Array(Math.ceil(codes.length / 5));
    for (let i = codes.length - 1; i >= 0; i--) {
      const t = codes[i]!;
      if (t > 2)
        throw new FormatError('not a trit', { field: `code ${i}`, expected: '0, 1 or 2', got: String(t) });
      const b = Math.floor(i / 5);
      out[b] = out[b]! * 3 + t; // Horner from the highest trit of each byte down
    }
    return out;
  },
  unpack(packed, count) {
    const out = new Uint8Array(count);
    for (let b = 0; b < packed.length; b++) {
      let v = packed[b]!;
      for (let k = 0; k < 5 && b * 5 + k < count; k++) {
        out[b * 5 + k] = v % 3;
        v = Math.floor(v / 3);
      }
    }
    return out;
  },
};

/** One code per weight: encode saturates to ±max, decode reads the value table. */
export interface ElementFormat {
  name: string;
  /** Bits of one code before packing. */
  bits: number;
  /** Largest magnitude: a block's amax maps here. */
  max: number;
  /** floor(log2(max)): the MX spec's emax_elem. */
  emax: number;
  /** Value of each code. */
  values: Float64Array;
  packing: CodePacking;
  encode(x: number): number;
  decode(code: number): number;
}

function minifloatElement(mf: Minifloat): ElementFormat {
  return {
    name: mf.spec.name,
    bits: mf.bits,
    max: mf.max,
    emax: mf.emax,
    values: mf.values,
    packing: bitPacking(mf.bits),
    encode: (x) => mf.encode(x, true),
    decode: (c) => mf.values[c]!,
  };
}

export const FP8_E4M3 = new Minifloat({
  name: 'fp8-e4m3',
  exponentBits: 4,
  mantissaBits: 3,
  bias: 7,
  specials: 'nan-only',
});
export const FP8_E5M2 = new Minifloat({
  name: 'fp8-e5m2',
  exponentBits: 5,
  mantissaBits: 2,
  bias: 15,
  specials: 'ieee',
});
export const FP6_E3M2 = new Minifloat({
  name: 'fp6-e3m2',
  exponentBits: 3,
  mantissaBits: 2,
  bias: 3,
  specials: 'none',
});
export const FP6_E2M3 = new Minifloat({
  name: 'fp6-e2m3',
  exponentBits: 2,
  mantissaBits: 3,
  bias: 1,
  specials: 'none',
});
export const FP4_E2M1 = new Minifloat({
  name: 'fp4-e2m1',
  exponentBits: 2,
  mantissaBits: 1,
  bias: 1,
  specials: 'none',
});

function finite(x: number, name: string): number {
  if (Number.isNaN(x))
    throw new FormatError('NaN has no encoding', { field: name, expected: 'a finite value' });
  return x;
}

/** Code t ∈ {0, 1, 2} stands for t − 1; x ↦ RoundClip(x, −1, 1) with torch.round's ties to even (BitNet b1.58, Eq. 1-2). */
const TERNARY: ElementFormat = {
  name: 'ternary',
  bits: 2,
  max: 1,
  emax: 0,
  values: Float64Array.of(-1, 0, 1),
  packing: TRIT_PACKING,
  encode: (x) => Math.max(-1, Math.min(1, roundHalfEven(finite(x, 'ternary')))) + 1,
  decode: (c) => c - 1,
};

/** Code 1 is +1 (x ≥ 0), code 0 is −1: sign(x) with sign(0) = +1, as XNOR-Net's binarization. */
const BINARY: ElementFormat = {
  name: 'binary',
  bits: 1,
  max: 1,
  emax: 0,
  values: Float64Array.of(-1, 1),
  packing: bitPacking(1),
  encode: (x) => (finite(x, 'binary') >= 0 ? 1 : 0),
  decode: (c) => 2 * c - 1,
};

export const ELEMENT_FORMATS = {
  'fp8-e4m3': minifloatElement(FP8_E4M3),
  'fp8-e5m2': minifloatElement(FP8_E5M2),
  'fp6-e3m2': minifloatElement(FP6_E3M2),
  'fp6-e2m3': minifloatElement(FP6_E2M3),
  'fp4-e2m1': minifloatElement(FP4_E2M1),
  ternary: TERNARY,
  binary: BINARY,
} as const satisfies Record<string, ElementFormat>;
export type ElementName = keyof typeof ELEMENT_FORMATS;

export type ScaleFormatName = 'f16' | 'bf16' | 'f32' | 'e4m3' | 'e8m0';

export interface ScaleFormat {
  bits: number;
  /** Nearest storable value (RNE; saturating for e4m3). E8M0 scales are chosen as 2^k directly (MX). */
  round?: (x: number) => number;
  /** Smallest positive storable value: replaces a zero scale (an all-zero block). */
  smallest: number;
}

export const SCALE_FORMATS: Record<ScaleFormatName, ScaleFormat> = {
  // 2^-24 is the smallest f16 subnormal, also exact in bf16/f32: the integer grids' historical fallback.
  f16: { bits: 16, round: roundToF16, smallest: 2 ** -24 },
  bf16: { bits: 16, round: roundToBf16, smallest: 2 ** -24 },
  f32: { bits: 32, round: Math.fround, smallest: 2 ** -24 },
  e4m3: { bits: 8, round: (x) => FP8_E4M3.round(x), smallest: FP8_E4M3.minSubnormal },
  e8m0: { bits: 8, smallest: 2 ** E8M0.minExponent },
};
