/**
 * Perplexity, and agreement with a reference model, over a tokenized text.
 *
 * Window protocol (Hugging Face "perplexity of fixed-length models", strided sliding window):
 * windows of `ctx` tokens start every `stride` tokens; each window scores only the tokens
 * no earlier window scored, so with stride < ctx every scored token sees >= ctx − stride
 * tokens of context. stride = ctx gives non-overlapping chunks; `dropPartial` drops a
 * final window shorter than ctx (the "chunks" protocol of GPTQ/SINQ evaluations and of the
 * assets' reference numbers: 511 predictions per 512-token window).
 *
 * llama.cpp's llama-perplexity (tools/perplexity/perplexity.cpp, `perplexity` and
 * `kl_divergence`) cuts the same non-overlapping chunks but scores only each chunk's second half
 * (`first = n_ctx/2`: the logits of positions first..n_ctx−2, ctx − 1 − ⌊ctx/2⌋ predictions per
 * chunk, so every scored token has at least half a window of context) and, when the vocabulary
 * adds BOS, writes BOS over every chunk's first token: `scoreFrom` and `windowStart`
 * (llamaCppProtocol) reproduce it.
 *
 * With a reference model, each scored position also yields KL(P_ref ‖ P_model) of the
 * next-token distributions and whether both argmaxes agree (llama.cpp's KLD / "same top").
 *
 * A scored row of logits holding NaN or +Inf (a forward pass that overflowed float32) is a
 * NumericError naming the window and position, the first block linear whose input was not
 * finite and the largest weight: a perplexity of NaN is never returned.
 */
import { NumericError, UsageError } from '../errors.js';
import {
  type Batch,
  batchLogits,
  batchRows,
  type EvalModel,
  type ExecutionReport,
  largestWeight,
  planPasses,
} from './eval-passes.js';
import { defaultMemoryBudget } from './memory.js';

export interface WindowProtocol {
  ctx: number;
  stride: number;
  dropPartial: boolean;
  /**
   * Position in every window of the first prediction scored (the logits there predict the token
   * after it): llama-perplexity's `first`. Unset: a window scores the tokens no earlier window
   * scored. Needs stride = ctx (windows that overlap would score tokens twice).
   */
  scoreFrom?: number;
  /**
   * Token id written over the first token of every window (llama-perplexity's BOS at each chunk's
   * start). That position is never a target, so only the context of the scored tokens changes.
   */
  windowStart?: number;
}

/**
 * llama-perplexity's windows for `-c ctx` (its default is 512): non-overlapping, the last partial
 * one dropped, predictions from position ⌊ctx/2⌋ on, and `bos` at every window's start when the
 * tokenizer adds BOS (llama.cpp's `llama_vocab_get_add_bos`; undefined: the windows keep their
 * first token).
 */
export function llamaCppProtocol(ctx: number, bos?: number): WindowProtocol {
  return {
    ctx,
    stride: ctx,
    dropPartial: true,
    scoreFrom: Math.floor(ctx / 2),
    ...(bos !== undefined && { windowStart: bos }),
  };
}

/** A window [start, end) of the token stream whose positions >= firstTarget (relative) are scored. */
export interface Window {
  start: number;
  end: number;
  firstTarget: number;
}

export function describeProtocol(p: WindowProtocol): string {
  const kind = p.stride === p.ctx ? 'non-overlapping windows' : `sliding windows, stride ${p.stride}`;
  return (
    `ctx ${p.ctx}, ${kind}${p.dropPartial ? ', last partial window dropped' : ''}` +
    (p.scoreFrom !== undefined ? `, predictions from position ${p.scoreFrom} of each window` : '') +
    (p.windowStart !== undefined ? `, token ${p.windowStart} at the start of each window` : '')
  );
}

export function planWindows(numTokens: number, p: WindowProtocol): Window[] {
  if (!(p.ctx >= 2) || !(p.stride >= 1) || p.stride > p.ctx) {
    throw new UsageError('invalid evaluation window', {
      expected: '2 <= ctx and 1 <= stride <= ctx',
      got: `ctx ${p.ctx}, stride ${p.stride}`,
    });
  }
  if (
    p.scoreFrom !== undefined &&
    !(Number.isInteger(p.scoreFrom) && p.scoreFrom >= 0 && p.scoreFrom <= p.ctx - 2 && p.stride === p.ctx)
  ) {
    throw new UsageError('invalid first scored position', {
      field: 'scoreFrom',
      expected: '0 <= scoreFrom <= ctx - 2, with stride = ctx',
      got: `scoreFrom ${p.scoreFrom}, ctx ${p.ctx}, stride ${p.stride}`,
    });
  }
  const windows: Window[] = [];
  let scoredUpTo = 0;
  for (let start = 0; start < numTokens; start += p.stride) {
    const end = Math.min(start + p.ctx, numTokens);
    if (p.dropPartial && end - start < p.ctx) break;
    const firstTarget = p.scoreFrom !== undefined ? p.scoreFrom + 1 : Math.max(1, scoredUpTo - start);
    // A kept partial window too short to reach scoreFrom has no prediction to score.
    if (p.scoreFrom === undefined || firstTarget < end - start) windows.push({ start, end, firstTarget });
    scoredUpTo = end;
    if (end === numTokens) break;
  }
  return windows;
}

export interface EvalProgress {
  windowsDone: number;
  windowsTotal: number;
  tokensDone: number;
}

export interface EvalOptions {
  protocol: WindowProtocol;
  /** Full-precision model to compare against (KLD, top-1 agreement). */
  reference?: EvalModel;
  /** Upper bound on logits floats held per batch (rows × vocab). */
  maxBatchLogits?: number;
  onProgress?: (p: EvalProgress) => void;
  /** Bytes a block-streamed evaluation may hold (default: memory.ts defaultMemoryBudget); sizes its passes. */
  maxMemory?: number;
}

export interface EvalResult {
  protocol: string;
  tokens: number;
  windows: number;
  predictions: number;
  nll: number;
  perplexity: number;
  /** Mean KL(P_ref ‖ P_model) in nats per predicted token. */
  kld?: number;
  /** Fraction of positions whose argmax agrees with the reference. */
  top1Agreement?: number;
  referencePerplexity?: number;
  seconds: number;
  tokensPerSecond: number;
  /** Which path ran (in memory, or streamed block by block) and the memory it planned (eval-passes.ts). */
  execution: ExecutionReport;
}

export async function evaluate(
  model: EvalModel,
  tokens: readonly number[],
  options: EvalOptions,
): Promise<EvalResult> {
  const t0 = performance.now();
  const { protocol, reference } = options;
  const windows = planWindows(tokens.length, protocol);
  if (windows.length === 0) {
    throw new UsageError('text too short for one evaluation window', {
      expected: `>= ${protocol.ctx} tokens`,
      got: `${tokens.length}`,
    });
  }
  const V = model.config.vocabSize;
  const { windowStart } = protocol;
  if (windowStart !== undefined && !(Number.isInteger(windowStart) && windowStart >= 0 && windowStart < V)) {
    throw new UsageError('invalid window start token', {
      field: 'windowStart',
      expected: `a token id below the vocabulary size ${V}`,
      got: String(windowStart),
    });
  }
  const maxRows = batchRows(protocol.ctx, V, options.maxBatchLogits);
  const acc = { nll: 0, refNll: 0, kld: 0, agree: 0, predictions: 0, tokensDone: 0 };

  // Batches of consecutive windows of the same length, at most maxRows rows each.
  const batches: (Batch & { first: number; windows: Window[] })[] = [];
  for (let i = 0; i < windows.length; ) {
    const T = windows[i]!.end - windows[i]!.start;
    const batch: Window[] = [];
    while (
      i < windows.length &&
      windows[i]!.end - windows[i]!.start === T &&
      (batch.length + 1) * T <= maxRows
    ) {
      batch.push(windows[i++]!);
    }
    const ids = new Int32Array(batch.length * T);
    batch.forEach((w, b) => {
      ids.set(tokens.slice(w.start, w.end), b * T);
      if (windowStart !== undefined) ids[b * T] = windowStart;
    });
    batches.push({ first: i - batch.length, windows: batch, count: batch.length, T, ids });
  }
  // The model and the reference advance in passes (eval-passes.ts): block-streamed models hold one block at a time.
  const models = reference ? [model, reference] : [model];
  const { passes, execution } = planPasses(models, batches, options.maxMemory ?? defaultMemoryBudget());
  for await (const { batch: b0, logits: out } of batchLogits(models, passes)) {
    const [logits, refLogits] = out as [Float32Array, Float32Array | undefined];
    const { T, ids, first: windowIndex, windows: batch } = b0;
    for (const [b, w] of batch.entries()) {
      const where = {
        window: windowIndex + b,
        windows: windows.length,
        at: w,
        ids: ids.subarray(b * T, (b + 1) * T),
      };
      for (let t = w.firstTarget; t < T; t++) {
        const row = (b * T + t - 1) * V;
        const target = ids[b * T + t]!;
        const q = logSoftmaxRow(logits, row, V);
        const logProb = q.logProb(target);
        // NaN or +Inf anywhere in the row makes logSumExp, hence logProb, non-finite.
        if (!Number.isFinite(logProb)) throw await nonFiniteLogits(model, 'model', logits, row, V, where, t);
        acc.nll -= logProb;
        if (refLogits) {
          const p = logSoftmaxRow(refLogits, row, V);
          const refLogProb = p.logProb(target);
          if (!Number.isFinite(refLogProb))
            throw await nonFiniteLogits(reference!, 'reference model', refLogits, row, V, where, t);
          acc.refNll -= refLogProb;
          const kld = klDivergence(p, q, V);
          // Only a −Inf logit of the model where the reference has mass makes the KLD infinite.
          if (!Number.isFinite(kld)) throw await nonFiniteLogits(model, 'model', logits, row, V, where, t);
          acc.kld += kld;
          if (p.argmax === q.argmax) acc.agree++;
        }
        acc.predictions++;
      }
      acc.tokensDone += T;
    }
    options.onProgress?.({
      windowsDone: windowIndex + batch.length,
      windowsTotal: windows.length,
      tokensDone: acc.tokensDone,
    });
  }

  const seconds = (performance.now() - t0) / 1000;
  const n = acc.predictions;
  return {
    protocol: describeProtocol(protocol),
    tokens: tokens.length,
    windows: windows.length,
    predictions: n,
    nll: acc.nll / n,
    perplexity: Math.exp(acc.nll / n),
    ...(reference && {
      kld: acc.kld / n,
      top1Agreement: acc.agree / n,
      referencePerplexity: Math.exp(acc.refNll / n),
    }),
    seconds,
    tokensPerSecond: acc.tokensDone / seconds,
    execution,
  };
}

/** Where non-finite logits were found: window `window` (0-based) of `windows`, its token ids. */
interface Place {
  window: number;
  windows: number;
  at: Window;
  ids: Int32Array;
}

/**
 * The error for non-finite logits at position t of a window, with what locates the overflow:
 * the window is run again alone and the first block linear whose input holds a non-finite value
 * is named (the operation before it overflowed), with the largest |weight| of the model.
 */
async function nonFiniteLogits(
  decoder: EvalModel,
  which: 'model' | 'reference model',
  logits: Float32Array,
  row: number,
  V: number,
  place: Place,
  t: number,
): Promise<NumericError> {
  let bad = row;
  while (bad < row + V - 1 && Number.isFinite(logits[bad]!)) bad++;
  const got = `${logits[bad]} for vocabulary entry ${bad - row}`;
  const clues: string[] = [];
  try {
    let first: string | undefined;
    let inputs = 0;
    await decoder.forward(place.ids, 1, place.ids.length, {
      onLinearInput(layer, linear, x) {
        inputs++;
        if (first === undefined && !x.every(Number.isFinite)) first = `model.layers.${layer}.${linear}`;
      },
    });
    // A model without block hooks (an ONNX graph) calls none: no location then.
    if (first) clues.push(`the first non-finite activations enter ${first}`);
    else if (inputs > 0)
      clues.push('block activations stay finite: the final norm or the output head overflows');
  } catch {
    // The diagnosis is best effort: the error below is the finding.
  }
  const largest = await largestWeight(decoder);
  if (largest) clues.push(`largest |weight| ${largest.value.toExponential(2)} in ${largest.name}`);
  const { at } = place;
  return new NumericError(`${which} logits are not finite: float32 overflow in the forward pass`, {
    field: `window ${place.window + 1} of ${place.windows} (tokens ${at.start}..${at.end - 1}), token ${at.start + t - 1}`,
    expected: 'finite logits (a perplexity, not NaN)',
    got,
    hint: clues.length ? clues.join('; ') : undefined,
  });
}

/** One row of logits with its log-normalizer: log p_v = logits[offset + v] − logSumExp. */
export interface LogSoftmaxRow {
  logits: Float32Array;
  offset: number;
  max: number;
  logSumExp: number;
  argmax: number;
  logProb(token: number): number;
}

/**
 * log softmax of logits[offset .. offset+V), computed stably in float64 (the max is subtracted
 * before exp, so logits of any magnitude neither overflow nor underflow the sum). `argmax` is
 * the first index of the largest logit: with ties the lowest index counts, on each side of a
 * top-1 comparison, as llama.cpp's perplexity.cpp (`imax`, strict > from index 0).
 */
export function logSoftmaxRow(logits: Float32Array, offset: number, V: number): LogSoftmaxRow {
  let max = -Infinity;
  let argmax = 0;
  for (let v = 0; v < V; v++) {
    const x = logits[offset + v]!;
    if (x > max) {
      max = x;
      argmax = v;
    }
  }
  let sum = 0;
  for (let v = 0; v < V; v++) sum += Math.exp(logits[offset + v]! - max);
  const logSumExp = max + Math.log(sum);
  return { logits, offset, max, logSumExp, argmax, logProb: (tok) => logits[offset + tok]! - logSumExp };
}

/**
 * KL(P ‖ Q) = Σ_v p_v (log p_v − log q_v) in nats, float64. `evaluate` passes the reference as P
 * and the evaluated model as Q (llama.cpp's KLD: the expectation is under the reference). A term
 * with p_v = 0 is 0 (the limit of p log p), also where q_v = 0: an entry both models mask with a
 * −Inf logit would otherwise give 0 · (−∞ + ∞) = NaN. Only q_v = 0 where p_v > 0 gives +Inf.
 */
export function klDivergence(p: LogSoftmaxRow, q: LogSoftmaxRow, V: number): number {
  let kl = 0;
  for (let v = 0; v < V; v++) {
    const logP = p.logits[p.offset + v]! - p.logSumExp;
    const pv = Math.exp(logP);
    if (pv === 0) continue;
    kl += pv * (logP - (q.logits[q.offset + v]! - q.logSumExp));
  }
  return kl;
}
