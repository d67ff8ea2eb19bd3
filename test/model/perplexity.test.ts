import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Decoder } from '../../src/model/decoder.js';
import { evaluate, llamaCppProtocol, planWindows } from '../../src/model/perplexity.js';

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

test("llama-perplexity's windows: whole chunks, the predictions from position ctx/2 on (ctx − 1 − ⌊ctx/2⌋ each)", () => {
  assert.deepEqual(llamaCppProtocol(512, 1), {
    ctx: 512,
    stride: 512,
    dropPartial: true,
    scoreFrom: 256,
    windowStart: 1,
  });
  // perplexity.cpp: first = n_ctx/2; logits of positions first..n_ctx−2 predict tokens first+1..n_ctx−1.
  assert.deepEqual(planWindows(1100, llamaCppProtocol(512)), [
    { start: 0, end: 512, firstTarget: 257 },
    { start: 512, end: 1024, firstTarget: 257 },
  ]);
  // Odd ctx: first = 3 (integer division), 7 − 1 − 3 = 3 predictions per chunk.
  const odd = planWindows(15, llamaCppProtocol(7));
  assert.deepEqual(odd, [
    { start: 0, end: 7, firstTarget: 4 },
    { start: 7, end: 14, firstTarget: 4 },
  ]);
  assert.equal(llamaCppProtocol(7).windowStart, undefined, 'no BOS given: windows keep their first token');
});

test('a fixed first scored position: a kept partial window too short to reach it is left out', () => {
  const p = { ctx: 8, stride: 8, dropPartial: false, scoreFrom: 4 };
  // 8 + 5 tokens: the tail [8, 13) has targets 5..4 — none; 8 + 6: one (target 5).
  assert.deepEqual(
    planWindows(13, p).map((w) => w.start),
    [0],
  );
  assert.deepEqual(planWindows(14, p).at(-1), { start: 8, end: 14, firstTarget: 5 });
});

test('a first scored position outside the window, or with overlapping windows, is refused', () => {
  const base = { ctx: 8, stride: 8, dropPartial: true };
  assert.throws(() => planWindows(100, { ...base, scoreFrom: 7 }), /first scored position/);
  assert.throws(() => planWindows(100, { ...base, scoreFrom: -1 }), /first scored position/);
  assert.throws(() => planWindows(100, { ...base, scoreFrom: 2.5 }), /first scored position/);
  assert.throws(() => planWindows(100, { ...base, stride: 4, scoreFrom: 4 }), /stride = ctx/);
  assert.doesNotThrow(() => planWindows(100, { ...base, scoreFrom: 6 }));
});

/** A decoder of vocabulary V that records the ids it is given and returns uniform logits. */
function recordingDecoder(V: number) {
  const seen: number[][] = [];
  const decoder = {
    config: { vocabSize: V },
    async forward(ids: Int32Array, B: number, T: number) {
      for (let b = 0; b < B; b++) seen.push(Array.from(ids.subarray(b * T, (b + 1) * T)));
      return new Float32Array(B * T * V);
    },
  } as unknown as Decoder;
  return { decoder, seen };
}

test('evaluate writes windowStart over the first token of every window, and scores the rest', async () => {
  const tokens = Array.from({ length: 20 }, (_, i) => 2 + (i % 5));
  const { decoder, seen } = recordingDecoder(8);
  const r = await evaluate(decoder, tokens, { protocol: llamaCppProtocol(6, 1) });
  // 20 tokens: 3 whole chunks of 6 (the last 2 tokens dropped), each starting with BOS (1).
  assert.deepEqual(seen, [
    [1, 3, 4, 5, 6, 2],
    [1, 4, 5, 6, 2, 3],
    [1, 5, 6, 2, 3, 4],
  ]);
  assert.equal(r.windows, 3);
  assert.equal(r.predictions, 3 * (6 - 1 - 3));
  assert.ok(Math.abs(r.perplexity - 8) < 1e-9, 'uniform logits over 8 tokens');
  assert.match(r.protocol, /predictions from position 3 of each window, token 1 at the start of each window/);
  // Without it the windows are the text's own tokens.
  const plain = recordingDecoder(8);
  await evaluate(plain.decoder, tokens, { protocol: llamaCppProtocol(6) });
  assert.deepEqual(plain.seen[1], tokens.slice(6, 12));
  await assert.rejects(
    evaluate(decoder, tokens, { protocol: llamaCppProtocol(6, 8) }),
    /invalid window start token/,
  );
});
