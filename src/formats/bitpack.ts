/**
 * Bit packing of unsigned integer codes, LSB-first: code i occupies bits
 * [i·bits, (i+1)·bits) of the little-endian bit stream. This is the order of GPTQ's
 * int32 qweight and of ONNX MatMulNBits blobs, so exporters can re-slice it.
 */

export function packedByteLength(count: number, bits: number): number {
  return Math.ceil((count * bits) / 8);
}

export function packBits(codes: ArrayLike<number>, bits: number): Uint8Array {
  const out = new Uint8Array(packedByteLength(codes.length, bits));
  let bitPos = 0;
  for (let i = 0; i < codes.length; i++, bitPos += bits) {
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
