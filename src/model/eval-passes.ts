/**
 * How evaluation pushes its batches of windows through the model and the reference, and how
 * much memory that takes. model/perplexity.ts scores what comes out; this file decides only the
 * order of the work and what is resident.
 *
 * One path for every model. A pass is a run of consecutive batches: each batch is embedded,
 * then, block by block, every model advances every batch of the pass (a block-streamed model,
 * StreamedDecoder, reads block i, advances all of the pass's activations through it and frees
 * it before the next model reads its block i), then the heads are read once and every batch is
 * scored. Models held whole in memory (Decoder) run passes of one batch: embed, blocks, head,
 * exactly the forward pass; a block-streamed model makes a pass as long as the memory budget
 * allows for the windows in flight, and re-reads the blocks for every pass. Each batch meets
 * the same operations on the same values whatever the pass length, so the logits, hence every
 * number of the evaluation, are the same bit for bit (test/model/streamed-eval.test.ts).
 * Models with a forward pass only (an ONNX graph) compute their logits when a batch is scored.
 *
 * Memory of a streamed evaluation (bytes, float32):
 *   weights      max(largest block of any one model, Σ heads (final norm + lm_head) of all models)
 *   activations  Σ_models windows in flight × ctx × hidden × 4
 *   work         one batch's temporaries: max(block ≈ rows × (8·hidden + 4·qkv + 3·ffn),
 *                logits rows × vocab per model)
 * The windows in flight are as many as fit the budget after weights and work (at least one batch).
 */
import { UsageError } from '../errors.js';
import type { TensorMap } from '../tensor.js';
import type { ModelConfig } from './config.js';
import { Decoder, type ForwardHooks } from './decoder.js';
import { formatBytes } from './memory.js';
import { StreamedDecoder } from './streamed-decoder.js';

/** A model known only by its forward pass (an ONNX graph, transformers.js). */
export interface ForwardModel {
  readonly config: ModelConfig;
  forward(ids: Int32Array, B: number, T: number, hooks?: ForwardHooks): Promise<Float32Array>;
}

/** What evaluation runs: held in memory, streamed block by block, or a forward pass only. */
export type EvalModel = Decoder | StreamedDecoder | ForwardModel;

/** `count` windows of T tokens, ids row-major [count, T]. */
export interface Batch {
  count: number;
  T: number;
  ids: Int32Array;
}

/** Which path ran and what it held: reported by `ptq eval` (JSON `execution`). */
export interface ExecutionReport {
  path: 'in-memory' | 'streamed';
  passes: number;
  /** The most windows one pass held in flight. */
  windowsPerPass: number;
  /** Bytes of the float32 activations of those windows, all models. */
  activationBytes: number;
  /** Streamed: the budget (--max-memory) and what of it the weights and one batch's work take. */
  memoryBudget?: number;
  weightBytes?: number;
  workBytes?: number;
}

/** Rows (window positions) per batch: whole windows, logits of at most `maxBatchLogits` floats (2^22 = 16 MiB). */
export function batchRows(ctx: number, vocabSize: number, maxBatchLogits = 2 ** 22): number {
  return Math.max(ctx, Math.floor(maxBatchLogits / vocabSize));
}

/** Float32 bytes of the residual stream of one window of T tokens, summed over the models that hold it. */
function activationBytesPerWindow(models: readonly EvalModel[], T: number): number {
  return models.filter(isStaged).reduce((s, m) => s + T * m.config.hiddenSize * 4, 0);
}

/** One batch's temporaries (see the top of the file). */
export function workBytes(configs: readonly ModelConfig[], rows: number): number {
  let block = 0;
  let logits = 0;
  for (const c of configs) {
    const qkv = (c.numHeads + 2 * c.numKvHeads) * c.headDim;
    block = Math.max(block, rows * (8 * c.hiddenSize + 4 * qkv + 3 * c.intermediateSize) * 4);
    logits += rows * c.vocabSize * 4;
  }
  return Math.max(block, logits);
}

const isStaged = (m: EvalModel): m is Decoder | StreamedDecoder =>
  m instanceof Decoder || m instanceof StreamedDecoder;

const decoderOf = (m: Decoder | StreamedDecoder): Decoder => (m instanceof StreamedDecoder ? m.decoder : m);

function residentBytes(weights: TensorMap): number {
  let n = 0;
  for (const t of weights.values()) n += t.data.byteLength;
  return n;
}

/**
 * Float32 bytes of weights a streamed evaluation holds at most: models in memory whole, and of
 * the streamed ones one block at a time, then all heads together.
 */
export function streamedWeightBytes(models: readonly EvalModel[]): number {
  let whole = 0;
  let block = 0;
  let heads = 0;
  for (const m of models) {
    if (m instanceof Decoder) whole += residentBytes(m.weights);
    else if (m instanceof StreamedDecoder) {
      block = Math.max(block, m.blockBytes);
      heads += m.headBytes;
    }
  }
  return whole + Math.max(block, heads);
}

/**
 * The passes: one batch each when every model is in memory; with a block-streamed model, runs
 * of consecutive batches whose activations fit `memoryBudget` after the weights and one batch's work.
 */
export function planPasses<B extends Batch>(
  models: readonly EvalModel[],
  batches: readonly B[],
  memoryBudget: number,
): { passes: B[][]; execution: ExecutionReport } {
  const acts = (b: B) => b.count * activationBytesPerWindow(models, b.T);
  const windows = (pass: B[]) => pass.reduce((s, b) => s + b.count, 0);
  const summary = (passes: B[][]) => ({
    passes: passes.length,
    windowsPerPass: Math.max(...passes.map(windows)),
    activationBytes: Math.max(...passes.map((p) => p.reduce((s, b) => s + acts(b), 0))),
  });
  if (!models.some((m) => m instanceof StreamedDecoder)) {
    const passes = batches.map((b) => [b]);
    return { passes, execution: { path: 'in-memory', ...summary(passes) } };
  }
  if (!(memoryBudget > 0))
    throw new UsageError('invalid memory budget', {
      field: 'max-memory',
      expected: '> 0 bytes',
      got: `${memoryBudget}`,
    });
  const weightBytes = streamedWeightBytes(models);
  const configs = models.map((m) => m.config);
  const work = Math.max(...batches.map((b) => workBytes(configs, b.count * b.T)));
  const forActivations = memoryBudget - weightBytes - work;
  const passes: B[][] = [];
  let pass: B[] = [];
  let held = 0;
  for (const b of batches) {
    if (pass.length && held + acts(b) > forActivations) {
      passes.push(pass);
      pass = [];
      held = 0;
    }
    pass.push(b);
    held += acts(b);
  }
  if (pass.length) passes.push(pass);
  return {
    passes,
    execution: { path: 'streamed', ...summary(passes), memoryBudget, weightBytes, workBytes: work },
  };
}

/** `ptq eval`'s choice: whole in memory when float32 weights, one batch's work and activations fit the budget. */
export function fitsInMemory(
  weightBytes: number,
  configs: readonly ModelConfig[],
  rows: number,
  memoryBudget: number,
): boolean {
  const acts = configs.reduce((s, c) => s + rows * c.hiddenSize * 4, 0);
  return weightBytes + workBytes(configs, rows) + acts <= memoryBudget;
}

/** The execution report in one line (eval's table output). */
export function describeExecution(e: ExecutionReport): string {
  const passes = `${e.passes} pass${e.passes === 1 ? '' : 'es'} of at most ${e.windowsPerPass} windows`;
  if (e.path === 'in-memory') return `in memory (${passes})`;
  const planned = e.activationBytes + e.weightBytes! + e.workBytes!;
  const over =
    planned > e.memoryBudget! ? `; over the budget, one batch at a time needs ${formatBytes(planned)}` : '';
  return (
    `streamed block by block, ${passes} (activations ${formatBytes(e.activationBytes)}, ` +
    `weights ${formatBytes(e.weightBytes!)}, work ${formatBytes(e.workBytes!)}; budget ${formatBytes(e.memoryBudget!)}${over})`
  );
}

/**
 * The logits of every batch, in order, one array per model: the passes of `planPasses` run as
 * described at the top of the file. A consumer that stops early (an error while scoring) frees
 * what the generator holds.
 */
export async function* batchLogits<B extends Batch>(
  models: readonly EvalModel[],
  passes: readonly B[][],
): AsyncGenerator<{ batch: B; logits: Float32Array[] }> {
  for (const pass of passes) {
    // Residual streams of the pass, per model and batch (undefined: a forward-only model).
    const xs: (Float32Array | undefined)[][] = [];
    for (const m of models) {
      const row: (Float32Array | undefined)[] = [];
      for (const b of pass)
        row.push(
          m instanceof StreamedDecoder
            ? await m.embed(b.ids, b.T)
            : m instanceof Decoder
              ? m.embed(b.ids, b.T)
              : undefined,
        );
      xs.push(row);
    }
    const layers = Math.max(...models.filter(isStaged).map((m) => m.config.numLayers), 0);
    for (let layer = 0; layer < layers; layer++) {
      for (const [k, m] of models.entries()) {
        if (!isStaged(m) || layer >= m.config.numLayers) continue;
        if (m instanceof StreamedDecoder) await m.loadBlock(layer);
        try {
          for (const [j, b] of pass.entries())
            xs[k]![j] = (await decoderOf(m).block(layer, xs[k]![j]!, b.count, b.T))!;
        } finally {
          if (m instanceof StreamedDecoder) m.dropBlock(layer);
        }
      }
    }
    const streamed = models.filter((m): m is StreamedDecoder => m instanceof StreamedDecoder);
    try {
      for (const m of streamed) await m.loadHead();
      for (const [j, b] of pass.entries()) {
        const logits: Float32Array[] = [];
        for (const [k, m] of models.entries()) {
          const x = xs[k]![j];
          xs[k]![j] = undefined;
          logits.push(
            isStaged(m) ? await decoderOf(m).head(x!, b.count * b.T) : await m.forward(b.ids, b.count, b.T),
          );
        }
        yield { batch: b, logits };
      }
    } finally {
      for (const m of streamed) m.dropHead();
    }
  }
}

/**
 * The largest |weight| of a model and its tensor (NaN counts as largest), for the diagnosis of
 * non-finite logits: scanned in memory, or read one tensor at a time from a streamed model's
 * files (an error path); undefined for a forward-only model.
 */
export async function largestWeight(model: EvalModel): Promise<{ name: string; value: number } | undefined> {
  let largest = { name: '', value: 0 };
  const scan = (name: string, data: Float32Array) => {
    for (let k = 0; k < data.length; k++) {
      const a = Math.abs(data[k]!);
      if (!(a <= largest.value)) largest = { name, value: a };
    }
  };
  if (model instanceof Decoder) for (const [name, t] of model.weights) scan(name, t.data);
  else if (model instanceof StreamedDecoder)
    for (const name of model.weights.shapes.keys()) scan(name, (await model.weights.read(name)).data);
  return largest.name ? largest : undefined;
}
