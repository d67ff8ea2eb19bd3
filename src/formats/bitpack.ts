/**
 * Bit packing of unsigned integer codes, LSB-first: code i occupies bits
 * [i·bits, (i+1)·bits) of the little-endian bit stream. This is the order of GPTQ's
 * int32 qweight and of ONNX MatMulNBits blobs, so exporters can re-slice it.
 */

export function packedByteLength(count: number, bits: number): number {
  return Math.ceil((count * bits) / 8);
}

export function packBits(codes: ArrayLike<number>, bits: number): Uint8Array {
  return packBitsInto(codes, bits, new Uint8Array(packedByteLength(codes.length, bits)), 0);
}

/**
 * ORs `codes` into the zero-filled bit stream `out` from bit `bitOffset` on (a row of a larger
 * tensor: rtn.ts packs each row as it is quantized). 2-, 4- and 8-bit codes starting on a byte
 * boundary take whole-byte loops (x = c0 | c1 << 4 for int4), ~10x faster than the general
 * loop and byte-identical to it: a store truncates to 8 bits as the general loop's `& 0xff` does.
 */
export function packBitsInto(
  codes: ArrayLike<number>,
  bits: number,
  out: Uint8Array,
  bitOffset: number,
): Uint8Array {
  const n = codes.length;
  if ((bitOffset & 7) === 0 && (bits === 2 || bits === 4 || bits === 8)) {
    const per = 8 / bits;
    const whole = n - (n % per);
    let byte = bitOffset >>> 3;
    let i = 0;
    if (bits === 4) for (; i < whole; i += 2) out[byte++] |= codes[i]! | (codes[i + 1]! << 4);
    else if (bits === 8) for (; i < whole; i++) out[byte++] |= codes[i]!;
    else {
      for (; i < whole; i += 4)
        out[byte++] |= codes[i]! | (codes[i + 1]! << 2) | (codes[i + 2]! << 4) | (codes[i + 3]! << 6);
    }
    // The last partial byte, low bits first.
    for (let shift = 0; i < n; i++, shift += bits) out[byte] |= (codes[i]! << shift) & 0xff;
    return out;
  }
  let bitPos = bitOffset;
  for (let i = 0; i < n; i++, bitPos += bits) {
    const v = codes[i]!;
    let byte = bitPos >>> 3;
    const shift = bitPos & 7;
    // A code spans at most two bytes for bits <= 8.
    out[byte] |= (v << shift) & 0xff;
    if (shift + bits > 8) out[++byte] |= v >>> (8 - shift);
  }
  return out;
}

export function unpackBits(
  packed: Uint8Array,
  bits: number,
  count: number,
  out = new Uint8Array(count),
): Uint8Array {
  const mask = (1 << bits) - 1;
  let bitPos = 0;
  for (let i = 0; i < count; i++, bitPos += bits) {
    const byte = bitPos >>> 3;
    const shift = bitPos & 7;
    const word = packed[byte]! | ((packed[byte + 1] ?? 0) << 8);
    out[i] = (word >>> shift) & mask;
  }
  return out;
}
