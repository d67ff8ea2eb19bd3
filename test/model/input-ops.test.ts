import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fakeQuantizeActivations } from '../../src/model/input-ops.js';

test('per-token int8 fake quantization: s = max|x|/127 per row, round to nearest on x/s', () => {
  // Row 0: s = 2.54/127 = 0.02 -> 0.011/0.02 = 0.55 -> 1 -> 0.02; -2.54 -> -127 -> -2.54.
  // Row 1: all zero stays zero.
  const x = Float32Array.from([0.011, -2.54, 1.0, 0, 0, 0]);
  const q = fakeQuantizeActivations(x, 2, 3, { bits: 8, granularity: 'per-token' });
  assert.equal(q, x, 'in place');
  const s = Math.fround(2.54) / 127;
  assert.deepEqual(Array.from(q), [
    Math.fround(1 * s),
    Math.fround(-127 * s),
    Math.fround(Math.round(1 / s) * s),
    0,
    0,
    0,
  ]);
  assert.equal(Math.round(1 / s), 50);
});

test('per-tensor int4 fake quantization shares one scale: qmax = 7', () => {
  const x = Float32Array.from([7, 1.4, -3.6, 0.5]);
  fakeQuantizeActivations(x, 2, 2, { bits: 4, granularity: 'per-tensor' });
  assert.deepEqual(Array.from(x), [7, 1, -4, 1]); // -3.6 -> -4 (nearest), 0.5 -> 1 (Math.round rounds .5 up)
});
