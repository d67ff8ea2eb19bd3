import assert from 'node:assert/strict';
import { test } from 'node:test';
import { packBits, packBitsInto, packedByteLength, unpackBits } from '../../src/formats/bitpack.js';
import { seededRandom } from '../helpers.js';

test('4-bit codes pack low nibble first, as GPTQ and MatMulNBits expect', () => {
  assert.deepEqual([...packBits([1, 2, 3, 4], 4)], [0x21, 0x43]);
  assert.deepEqual([...packBits([0xab], 8)], [0xab]);
});

test('3-bit codes straddle byte boundaries LSB-first', () => {
  // codes 7,0,5 -> bits 111 000 101 -> 0b01_000_111 = 0x47, then the top bit of 5 = 1.
  assert.deepEqual([...packBits([7, 0, 5], 3)], [0x47, 0x01]);
});

test('pack/unpack round trip for every bit width 2..8', () => {
  const rand = seededRandom(7);
  for (let bits = 2; bits <= 8; bits++) {
    const codes = Uint8Array.from({ length: 1001 }, () => Math.floor(rand() * 2 ** bits));
    const packed = packBits(codes, bits);
    assert.equal(packed.length, packedByteLength(1001, bits));
    assert.deepEqual(unpackBits(packed, bits, codes.length), codes, `bits ${bits}`);
  }
});

test('whole-byte packing (2, 4, 8 bits) equals the general bit loop, at any offset and length', () => {
  // The reference: each code's bits placed one at a time, LSB-first, from bit `offset`.
  const reference = (codes: Uint8Array, bits: number, bytes: number, offset: number) => {
    const out = new Uint8Array(bytes);
    for (let i = 0; i < codes.length; i++)
      for (let b = 0; b < bits; b++) {
        const at = offset + i * bits + b;
        if ((codes[i]! >> b) & 1) out[at >> 3] |= 1 << (at & 7);
      }
    return out;
  };
  const rand = seededRandom(11);
  for (const bits of [2, 3, 4, 8]) {
    for (const [count, offset] of [
      [16, 0],
      [7, 0],
      [9, 8],
      [5, 4],
      [6, 3],
    ] as const) {
      const codes = Uint8Array.from({ length: count }, () => Math.floor(rand() * 2 ** bits));
      const bytes = Math.ceil((offset + count * bits) / 8);
      const out = packBitsInto(codes, bits, new Uint8Array(bytes), offset);
      assert.deepEqual(
        out,
        reference(codes, bits, bytes, offset),
        `bits ${bits}, ${count} codes at bit ${offset}`,
      );
    }
  }
  assert.deepEqual([...packBitsInto([1, 2, 3], 4, Uint8Array.of(0xff, 0, 0), 8)], [0xff, 0x21, 0x03]);
});
