import assert from 'node:assert/strict';
import { test } from 'node:test';
import { packBits, packedByteLength, unpackBits } from '../../src/formats/bitpack.js';
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
