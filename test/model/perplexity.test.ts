import assert from 'node:assert/strict';
import { test } from 'node:test';
import { planWindows } from '../../src/model/perplexity.js';

test('non-overlapping chunks drop the partial tail and score ctx-1 tokens each', () => {
  const w = planWindows(1100, { ctx: 512, stride: 512, dropPartial: true });
  assert.deepEqual(w, [
    { start: 0, end: 512, firstTarget: 1 },
    { start: 512, end: 1024, firstTarget: 1 },
  ]);
});

test('keeping the partial window scores the tail too', () => {
  const w = planWindows(1100, { ctx: 512, stride: 512, dropPartial: false });
  assert.deepEqual(w.at(-1), { start: 1024, end: 1100, firstTarget: 1 });
});

test('sliding windows score each token once, with at least ctx-stride context', () => {
  const w = planWindows(1100, { ctx: 512, stride: 256, dropPartial: false });
  assert.deepEqual(w, [
    { start: 0, end: 512, firstTarget: 1 },
    { start: 256, end: 768, firstTarget: 256 },
    { start: 512, end: 1024, firstTarget: 256 },
    { start: 768, end: 1100, firstTarget: 256 },
  ]);
  // Every token but the first is scored exactly once.
  const scored = w.reduce((n, x) => n + (x.end - x.start - x.firstTarget), 0);
  assert.equal(scored, 1099);
});

test('invalid windows are refused', () => {
  assert.throws(() => planWindows(100, { ctx: 512, stride: 1024, dropPartial: true }), /stride <= ctx/);
});
