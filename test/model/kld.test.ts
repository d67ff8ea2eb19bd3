/**
 * KLD and top-1 agreement (src/model/perplexity.ts) against numbers written from their
 * definitions, not against earlier outputs of the same code:
 *
 *   KL(P ‖ Q) = Σ_v p_v ln(p_v / q_v),  p = softmax(reference logits), q = softmax(model logits),
 *
 * llama.cpp's `--kl-divergence` statistic (tools/perplexity/perplexity.cpp: the sum runs over the
 * base, i.e. reference, probabilities), and top-1 agreement = both argmaxes equal, where a tied
 * maximum counts as its lowest index on each side (perplexity.cpp's `imax`: strict > from index 0).
 *
 * The per-row functions on closed forms (float64, integer logits, so the float32 rows hold them
 * exactly); `evaluate` on constructed decoders (its mean over windows and its argument order); and
 * `evaluate` on the bundled model: against itself, and quantized against a float64 recomputation
 * from the raw logits.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { readText } from '../../src/io/text.js';
import type { ModelConfig } from '../../src/model/config.js';
import { Decoder } from '../../src/model/decoder.js';
import { loadModel } from '../../src/model/load.js';
import { evaluate, klDivergence, logSoftmaxRow } from '../../src/model/perplexity.js';
import { quantizeModel } from '../../src/quant/quantize-model.js';
import { REPO } from '../helpers.js';

const row = (logits: number[]) => logSoftmaxRow(Float32Array.from(logits), 0, logits.length);
const kl = (p: number[], q: number[]) => klDivergence(row(p), row(q), p.length);

/** The definition, literally: p_v = e^{x_v} / Σ e^{x_u} with no shift (only for |x| ≪ 700). */
function definitionKl(x: ArrayLike<number>, y: ArrayLike<number>): number {
  let zx = 0;
  let zy = 0;
  for (let v = 0; v < x.length; v++) {
    zx += Math.exp(x[v]!);
    zy += Math.exp(y[v]!);
  }
  let sum = 0;
  for (let v = 0; v < x.length; v++) {
    const p = Math.exp(x[v]!) / zx;
    const q = Math.exp(y[v]!) / zy;
    sum += p * Math.log(p / q);
  }
  return sum;
}

/** Lowest index of the maximum. */
function firstArgmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let v = 1; v < x.length; v++) if (x[v]! > x[best]!) best = v;
  return best;
}

/**
 * Float64 sums of a few terms agree to a few ulps of the largest term (the default 1e-12); a
 * reversed KL is off by > 0.01 in every case below that has a direction.
 */
function assertClose(got: number, expected: number, what: string, relative = 1e-12): void {
  assert.ok(
    Math.abs(got - expected) <= relative * Math.max(1, Math.abs(expected)),
    `${what}: got ${got}, expected ${expected}`,
  );
}

const E = Math.E;
const LN2 = Math.LN2;

test('KL of small distributions equals its closed form (float64)', () => {
  // P uniform over 4, Q = softmax(1, 0, 0, 0) = (e, 1, 1, 1)/(e + 3):
  // KL(P‖Q) = Σ ¼ (ln ¼ − ln q_v) = −ln 4 − ¼ · 1 + ln(e + 3) = ln((e + 3)/4) − ¼ = 0.10737401950878854
  // KL(Q‖P) = Σ q_v ln q_v + ln 4 = e/(e + 3) − ln((e + 3)/4)            = 0.1179928669098832
  assertClose(kl([0, 0, 0, 0], [1, 0, 0, 0]), Math.log((E + 3) / 4) - 0.25, 'KL(uniform ‖ (1,0,0,0))');
  assertClose(kl([0, 0, 0, 0], [1, 0, 0, 0]), 0.10737401950878854, 'KL(uniform ‖ (1,0,0,0)), decimal');
  assertClose(kl([1, 0, 0, 0], [0, 0, 0, 0]), E / (E + 3) - Math.log((E + 3) / 4), 'KL((1,0,0,0) ‖ uniform)');
  assertClose(kl([1, 0, 0, 0], [0, 0, 0, 0]), 0.1179928669098832, 'KL((1,0,0,0) ‖ uniform), decimal');
  // A permutation of the logits has the same normalizer: KL = Σ p_v (x_v − y_v) = 2(p_0 − p_2)
  // = 2(e² − 1)/(e² + e + 1) = 1.1504207652088829.
  assertClose(kl([2, 1, 0], [0, 1, 2]), (2 * (E ** 2 - 1)) / (E ** 2 + E + 1), 'KL((2,1,0) ‖ (0,1,2))');
  assertClose(kl([2, 1, 0], [0, 1, 2]), 1.1504207652088829, 'KL((2,1,0) ‖ (0,1,2)), decimal');
  // KL(P ‖ P) = 0 exactly, and KL ≥ 0 (Gibbs) on a few mixed rows against the literal definition.
  assert.equal(kl([3, -1, 0.5, 2], [3, -1, 0.5, 2]), 0);
  for (const [x, y] of [
    [
      [0.5, -2, 3, 1, 0],
      [1, 1, 1, 1, 1],
    ],
    [
      [-4, 2.25, 2, 0.75],
      [-3.5, 2, 2.5, -1],
    ],
  ] as const) {
    const got = kl([...x], [...y]);
    assert.ok(got > 0);
    assertClose(got, definitionKl(x, y), `KL(${x} ‖ ${y})`);
  }
});

test('direction: KL(P_reference ‖ Q_model), not the reverse', () => {
  // P uniform over 2, Q = softmax(20, 0) nearly one-hot. Where P has mass Q has almost none:
  // KL(P‖Q) = −ln 2 + ½ (ln(1 + e^−20) + ln(1 + e^20)) = 10 − ln 2 + ln(1 + e^−20) = 9.3068528215012083
  // KL(Q‖P) = ln 2 + q_0 ln q_0 + q_1 ln q_1 ≤ ln 2                                = 0.6931471372757193
  const forward = 10 - LN2 + Math.log1p(Math.exp(-20));
  assertClose(kl([0, 0], [20, 0]), forward, 'KL(uniform ‖ peaked)');
  assertClose(kl([0, 0], [20, 0]), 9.306852821501208, 'KL(uniform ‖ peaked), decimal');
  assertClose(kl([20, 0], [0, 0]), 0.6931471372757193, 'KL(peaked ‖ uniform)');
});

test('very large and very small logits: no overflow or underflow of the softmax', () => {
  // Softmax is shift-invariant: (1000, 1020) are (0, 20) moved by 1000, where e^1000 = Inf in
  // float64 makes a naive e^x / Σ e^x NaN.
  assert.equal(Math.exp(1000), Infinity);
  assertClose(kl([1000, 1000], [1020, 1000]), 10 - LN2 + Math.log1p(Math.exp(-20)), 'shifted by 1000');
  assertClose(kl([-1e4, -1e4, -1e4 - 50], [-1e4, -1e4, -1e4 - 50]), 0, 'shifted by −1e4');
  // Q = softmax(0, −1000): q_1 = e^−1000 underflows to 0 in float64 (a naive ln q_1 = −Inf), yet
  // ln q_1 = −1000 − ln(1 + e^−1000) = −1000: KL(P‖Q) = ½ (ln ½ − 0) + ½ (ln ½ + 1000) = 500 − ln 2.
  assert.equal(Math.exp(-1000), 0);
  assertClose(kl([0, 0], [0, -1000]), 500 - LN2, 'KL(uniform ‖ (0, −1000))');
  // The other way the tiny entry has no weight: KL = ln 2 to double precision.
  assertClose(kl([0, -1000], [0, 0]), LN2, 'KL((0, −1000) ‖ uniform)');
  // Peaked rows of a large vocabulary: one logit 30 above 50,000 zeros (p_top ≈ 0.99999), against
  // the same row with the peak moved: the mass sits where the other has ~e^−30 of it.
  const V = 50_000;
  const x = new Float32Array(V);
  const y = new Float32Array(V);
  x[7] = 30;
  y[V - 1] = 30;
  const z = Math.exp(30) + V - 1;
  // KL = Σ p_v (x_v − y_v) (equal normalizers) = 30 (p_7 − p_{V−1}) = 30 (e^30 − 1)/z. The
  // normalizer is a float64 sum of 50,000 terms in index order (peak first in one row, last in
  // the other): up to V·2⁻⁵³ ≈ 6e-12 apart, which p_7 and the 30 nats carry to ~2e-10.
  const got = klDivergence(logSoftmaxRow(x, 0, V), logSoftmaxRow(y, 0, V), V);
  assertClose(got, (30 * (Math.exp(30) - 1)) / z, 'V = 50,000', 1e-11);
});

test('masked entries (−Inf logits): zero mass adds 0; mass the model masks makes KL infinite', () => {
  // Both models mask entry 2: its term is 0 · (−∞ + ∞), which is 0 in the limit, not NaN.
  assertClose(kl([0, 0, -Infinity], [20, 0, -Infinity]), 10 - LN2 + Math.log1p(Math.exp(-20)), 'both masked');
  assert.equal(kl([1, 2, -Infinity], [1, 2, -Infinity]), 0);
  // The model masks an entry the reference gives ½: no finite KL.
  assert.equal(kl([0, 0, -Infinity], [0, -Infinity, -Infinity]), Infinity);
});

test('top-1: argmax is the lowest index of the maximum (llama.cpp imax), on each side', () => {
  const same = (p: number[], q: number[]) => row(p).argmax === row(q).argmax;
  assert.equal(row([1, 3, 2]).argmax, 1);
  assert.ok(same([1, 3, 2], [0, 5, 1]));
  assert.ok(!same([3, 1, 2], [1, 3, 2]));
  // Ties resolve to the first index on each side independently.
  assert.equal(row([5, 5, 1]).argmax, 0);
  assert.equal(row([1, 5, 5]).argmax, 1);
  assert.ok(same([5, 5, 1], [5, 5, 1]));
  // The model's top (1) is one of the reference's tied tops, but the reference's top-1 is index 0.
  assert.ok(!same([5, 5, 1], [4, 5, 1]));
  assert.ok(same([1, 5, 5], [1, 5, 4]));
  // Large magnitudes and −Inf do not disturb it.
  assert.equal(row([-Infinity, 1e4, 1e4 - 1]).argmax, 1);
});

/**
 * A decoder whose logits at a position depend only on the token there (a bigram table): what
 * `evaluate` does with them is then computable by hand, whatever windows it batches together.
 */
function tableDecoder(table: number[][]): Decoder {
  const V = table[0]!.length;
  const fake = {
    config: { vocabSize: V } as ModelConfig,
    async forward(ids: Int32Array, B: number, T: number) {
      const out = new Float32Array(B * T * V);
      for (let i = 0; i < B * T; i++) out.set(table[ids[i]!]!, i * V);
      return out;
    },
  };
  return fake as unknown as Decoder;
}

test('evaluate: mean KLD over the scored positions, reference as P, and top-1 agreement', async () => {
  // Reference rows are broad, model rows peaked on another entry for tokens 1 and 3, so that
  // KL(P‖Q) and KL(Q‖P) differ by far more than any rounding.
  const P = [
    [0, 0, 0, 0],
    [0, 1, 0, 1],
    [2, 1, 0, -1],
    [1, 1, 1, 3],
  ];
  const Q = [
    [1, 0, 0, 0],
    [0, 0, 8, 0],
    [3, 1, 0, -1],
    [6, 0, 0, 2],
  ];
  // Two windows of 4 tokens (stride = ctx): positions 0..2 of each predict positions 1..3.
  const tokens = [0, 1, 2, 3, 1, 2, 3, 0];
  const predictors = [0, 1, 2, 1, 2, 3];
  const targets = [1, 2, 3, 2, 3, 0];
  const r = await evaluate(tableDecoder(Q), tokens, {
    protocol: { ctx: 4, stride: 4, dropPartial: true },
    reference: tableDecoder(P),
  });
  const mean = (f: (t: number, i: number) => number) =>
    predictors.reduce((s, t, i) => s + f(t, i), 0) / predictors.length;
  const expected = mean((t) => definitionKl(P[t]!, Q[t]!));
  const reversed = mean((t) => definitionKl(Q[t]!, P[t]!));
  assert.ok(
    Math.abs(expected - reversed) > 0.5,
    `the case separates the directions: ${expected} vs ${reversed}`,
  );
  assert.equal(r.predictions, 6);
  assertClose(r.kld!, expected, 'mean KL(P_ref ‖ Q_model)');
  // Tokens 0 (P's four-way tie → 0; Q → 0) and 2 (both 0) agree; 1 (P: 1, the first of its tie
  // with 3; Q: 2) and 3 (P: 3, Q: 0) do not. Predicting tokens 0, 1, 2, 1, 2, 3: 3 of 6 agree.
  assert.equal(
    r.top1Agreement,
    mean((t) => (firstArgmax(P[t]!) === firstArgmax(Q[t]!) ? 1 : 0)),
  );
  assert.equal(r.top1Agreement, 3 / 6);
  const nll = (table: number[][]) =>
    mean((t, i) => Math.log(table[t]!.reduce((s, x) => s + Math.exp(x), 0)) - table[t]![targets[i]!]!);
  assertClose(r.nll, nll(Q), 'mean NLL of the model');
  assertClose(Math.log(r.referencePerplexity!), nll(P), 'mean NLL of the reference');
});

test('tinystories-656k against itself: KLD exactly 0, top-1 exactly 100%', async () => {
  const model = await loadModel(path.join(REPO, 'models/tinystories-656k'));
  const tokens = model.tokenizer
    .encode(await readText(path.join(REPO, 'data/tinystories-valid-slice.txt')))
    .slice(0, 2048);
  // Two decoders over the same weights: the same float operations give the same logits.
  const r = await evaluate(new Decoder(model.config, model.weights), tokens, {
    protocol: { ctx: 512, stride: 512, dropPartial: true },
    reference: new Decoder(model.config, model.weights),
  });
  assert.equal(r.predictions, 4 * 511);
  assert.equal(r.kld, 0);
  assert.equal(r.top1Agreement, 1);
  assert.equal(r.referencePerplexity, r.perplexity);
});

test('tinystories-656k RTN int4 against fp32: evaluate equals a float64 recomputation from the logits', async () => {
  const model = await loadModel(path.join(REPO, 'models/tinystories-656k'));
  const tokens = model.tokenizer
    .encode(await readText(path.join(REPO, 'data/tinystories-valid-slice.txt')))
    .slice(0, 1024);
  const q = await quantizeModel(model.config, model.weights, {
    method: 'rtn',
    grid: { bits: 4, symmetric: true, granularity: 'group', groupSize: 32, scaleDtype: 'f16' },
  });
  const fp = new Decoder(model.config, model.weights);
  const quantized = new Decoder(q.config, q.weights);
  const r = await evaluate(quantized, tokens, {
    protocol: { ctx: 512, stride: 512, dropPartial: true },
    reference: fp,
  });
  // The same two windows, one forward each, every position but the last scored.
  const V = model.config.vocabSize;
  const T = 512;
  let kldSum = 0;
  let agree = 0;
  let n = 0;
  for (let w = 0; w < 2; w++) {
    const ids = Int32Array.from(tokens.slice(w * T, (w + 1) * T));
    const refLogits = await fp.forward(ids, 1, T);
    const logits = await quantized.forward(ids, 1, T);
    for (let t = 0; t < T - 1; t++) {
      const p = refLogits.subarray(t * V, (t + 1) * V);
      const qRow = logits.subarray(t * V, (t + 1) * V);
      kldSum += definitionKl(p, qRow);
      if (firstArgmax(p) === firstArgmax(qRow)) agree++;
      n++;
    }
  }
  console.log(
    `  RTN int4 g32: KLD ${r.kld!.toFixed(6)}, top-1 ${(r.top1Agreement! * 100).toFixed(2)}% over ${n}`,
  );
  assert.equal(r.predictions, n);
  // Float64 sums over 2048-entry rows in another order: agreement to ~1e-12 of the mean.
  assert.ok(Math.abs(r.kld! - kldSum / n) < 1e-9 * (kldSum / n), `${r.kld} vs ${kldSum / n}`);
  assert.equal(r.top1Agreement, agree / n);
  assert.ok(r.kld! > 0.01 && agree < n, 'the quantized model differs from fp32');
});
