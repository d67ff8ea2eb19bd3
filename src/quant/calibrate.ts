/**
 * Calibration data and the sequential (block-by-block) calibration protocol of GPTQ
 * (Frantar et al. 2022, §4 "Step 3" and the reference llama.py `llama_sequential`):
 * the calibration windows pass through block i, its linear inputs are captured and block i
 * is quantized; the *quantized* block's outputs are the inputs of block i+1. Memory is the
 * residual stream of all windows (N·L·hidden floats), one stage input kept for all windows
 * between passes (the attention output, or the SwiGLU activation: N·L·intermediate floats)
 * and the statistics of the layers being quantized.
 *
 * The activations live in an ActivationStore (activation-store.ts), one slot per chunk of
 * windows: float32 or 16-bit, in memory up to a budget and in a temporary file past it. Each
 * pass over a block loads a chunk, advances it and saves it again, so memory holds one chunk's
 * working set plus the resident slots, whatever the number of windows. With float32 and no budget
 * every value is the one the whole-array protocol computed (the pinned outputs did not change).
 */
import { constants as bufferConstants } from 'node:buffer';
import os from 'node:os';
import type { ComputeEngine } from '../compute/engine.js';
import { profile } from '../compute/profile.js';
import { ShapeError, UsageError } from '../errors.js';
import {
  BLOCK_LINEARS,
  type BlockLinear,
  type DenseLinear,
  expertOf,
  roleOf,
} from '../formats/tensor-names.js';
import { linearsInRole } from '../model/architecture.js';
import { type Decoder, Scratch } from '../model/decoder.js';
import { mulberry32 } from '../random.js';
import { type ActivationDtype, ActivationStore, type StoreOptions } from './activation-store.js';

export interface CalibrationOptions {
  nsamples: number;
  seqlen: number;
  seed: number;
}

export const CALIBRATION_DEFAULTS: CalibrationOptions = { nsamples: 128, seqlen: 2048, seed: 0 };

/**
 * Shortest calibration window: a window of one token never runs attention over any context
 * (every linear would see position-0 activations only).
 */
export const MIN_SEQLEN = 2;

/** Throw UsageError unless nsamples ≥ 1 and seqlen ≥ MIN_SEQLEN are integers. */
export function checkCalibrationOptions(options: Pick<CalibrationOptions, 'nsamples' | 'seqlen'>): void {
  const { nsamples, seqlen } = options;
  if (!Number.isInteger(seqlen) || seqlen < MIN_SEQLEN) {
    throw new UsageError('invalid calibration window length', {
      field: 'seqlen',
      expected: `an integer >= ${MIN_SEQLEN} (tokens per calibration window)`,
      got: String(seqlen),
    });
  }
  if (!Number.isInteger(nsamples) || nsamples < 1) {
    throw new UsageError('invalid number of calibration samples', {
      field: 'nsamples',
      expected: 'a positive integer',
      got: String(nsamples),
    });
  }
}

/** Bytes this process can hope to allocate: physical memory, or the cgroup limit when lower. */
export function availableMemoryBytes(): number {
  const constrained = process.constrainedMemory?.() ?? 0;
  const total = os.totalmem();
  return constrained > 0 && constrained < total ? constrained : total;
}

/**
 * Refuse, before anything is allocated, calibration activations that cannot exist: the residual
 * stream of all windows is one float32 array of nsamples · seqlen · `floatsPerToken` (the hidden
 * size; 1 for the token windows themselves), which must fit in a typed array and in memory.
 * The rest of the sequential pass (one stage input, statistics, the model) needs more still, so
 * this refuses only runs that could never finish.
 */
export function checkCalibrationMemory(
  options: Pick<CalibrationOptions, 'nsamples' | 'seqlen'>,
  floatsPerToken: number,
  what = `hidden size ${floatsPerToken} float32 values`,
): void {
  const { nsamples, seqlen } = options;
  const elements = nsamples * seqlen * floatsPerToken;
  const bytes = elements * 4;
  const available = availableMemoryBytes();
  const maxElements = bufferConstants.MAX_LENGTH;
  if (elements > maxElements || bytes > available) {
    throw new UsageError('calibration activations do not fit in memory', {
      field: 'nsamples',
      expected: `--nsamples × --seqlen × ${what} within ${
        elements > maxElements
          ? `one typed array (${maxElements} elements)`
          : `this machine's memory (${gib(available)})`
      }`,
      got: `${nsamples} × ${seqlen} × ${floatsPerToken} × 4 bytes = ${gib(bytes)}`,
      hint: 'lower --nsamples or --seqlen',
    });
  }
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toPrecision(3)} GiB`;
}

/** Random windows of `seqlen` tokens (the GPTQ/AutoGPTQ recipe: uniform start, fixed seed). */
export function sampleCalibrationWindows(tokens: readonly number[], options: CalibrationOptions): Int32Array {
  const { nsamples, seqlen, seed } = options;
  checkCalibrationOptions(options);
  checkCalibrationMemory(options, 1, 'one int32 token id');
  if (tokens.length < seqlen + 1) {
    throw new UsageError('calibration text too short', {
      field: 'calib',
      expected: `more than ${seqlen} tokens (one window of --seqlen)`,
      got: `${tokens.length} tokens`,
      hint: 'use a longer text or a smaller --seqlen',
    });
  }
  const rand = mulberry32(seed);
  const windows = new Int32Array(nsamples * seqlen);
  for (let s = 0; s < nsamples; s++) {
    const start = Math.floor(rand() * (tokens.length - seqlen));
    for (let t = 0; t < seqlen; t++) windows[s * seqlen + t] = tokens[start + t]!;
  }
  return windows;
}

/** Statistics of one linear layer's inputs over the calibration tokens. */
export interface LinearStats {
  cols: number;
  /** Tokens seen. */
  count: number;
  /** H = 2/N · Σ x xᵀ (GPTQ's Hessian of ‖WX − QX‖²), [cols, cols]. */
  hessian: Float64Array;
  /** Mean |x_j| per input channel (AWQ's activation salience); zeros unless sampleRows > 0. */
  absMean: Float64Array;
  /** A bounded sample of input rows [sampleRows, cols] for methods that measure outputs (AWQ). */
  sample: Float32Array;
  sampleRows: number;
  /**
   * An expert's down_proj (sparse MoE): tokens the router picked the expert for. Its statistics
   * cover every calibration token (`count`) whatever the routing, so an expert the router never
   * picks is still calibrated; this says how representative they are.
   */
  routedTokens?: number;
}

export interface SequentialOptions {
  /** Linears captured and quantized together; later groups see earlier groups quantized ("true sequential"). */
  groups: BlockLinear[][];
  /** Sequences per forward chunk (bounds attention memory). */
  chunk: number;
  /**
   * Input rows kept per linear for output-space searches, gathered with the mean |x| per
   * channel (AWQ); 0 gathers the Hessian alone (GPTQ).
   */
  sampleRows: number;
  /** Quantize (and write back into the decoder's weights) the linears of one group. */
  quantizeGroup(layer: number, linears: BlockLinear[], stats: Map<BlockLinear, LinearStats>): Promise<void>;
  onProgress?(layer: number, layers: number): void;
  /**
   * Continue an interrupted run (resume.ts) at block `layer`, whose input — the residual stream
   * of all windows, [n, seqlen, hidden] — is `x`: blocks before it are already quantized in the
   * decoder's weights (`x` may be absent when all are). The rest of the run is then the same
   * computation as an uninterrupted one.
   */
  start?: { layer: number; x?: Float32Array };
  /**
   * Block `layer` is finished; `residual()` reads back the residual stream of all windows entering
   * block layer + 1, float32 [n, seqlen, hidden] (resume.ts saves it).
   */
  onBlockDone?(layer: number, residual: () => Promise<Float32Array>): Promise<void>;
  /** Precision and memory budget of the stored activations (default: float32, all in memory). */
  activations?: StoreOptions;
  /**
   * Weights read block by block (quant/stream-calibrate.ts): `load` makes block `layer`'s tensors
   * resident in the decoder's weights before its first pass, `finish` takes them once it is
   * quantized; `embed` gives the embeddings of windows (reading only their rows). Absent: the
   * decoder holds the whole model.
   */
  blocks?: {
    embed(ids: Int32Array, T: number): Promise<Float32Array>;
    load(layer: number): Promise<void>;
    finish(layer: number): Promise<void>;
  };
}

/** What the activations took: chunks in memory and in the spill file. */
export interface SequentialReport {
  dtype: ActivationDtype;
  /** Chunks of windows, and how many of them stayed in memory. */
  chunks: number;
  residentChunks: number;
  /** Most bytes of stored activations in memory at once. */
  peakActivationBytes: number;
  /** Bytes written to the spill file over the run, and its size. */
  spilledBytes: number;
  spillFileBytes: number;
}

/** Windows per forward chunk: about 4096 tokens (bounds attention memory and one chunk's working set). */
export const calibrationChunk = (seqlen: number): number => Math.max(1, Math.floor(4096 / seqlen));

export const ALL_AT_ONCE: BlockLinear[][] = [[...BLOCK_LINEARS]];
export const TRUE_SEQUENTIAL: BlockLinear[][] = [
  ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'],
  ['self_attn.o_proj'],
  ['mlp.gate_proj', 'mlp.up_proj'],
  ['mlp.down_proj'],
];

/**
 * Where each linear reads its input inside a block, in execution order: 0 rmsnorm(x) for q/k/v,
 * 1 the attention output, 2 rmsnorm(x + o) for gate/up, 3 the SwiGLU activation; 4 is the
 * block's output.
 */
const STAGE: Record<DenseLinear, number> = {
  'self_attn.q_proj': 0,
  'self_attn.k_proj': 0,
  'self_attn.v_proj': 0,
  'self_attn.o_proj': 1,
  'mlp.gate_proj': 2,
  'mlp.up_proj': 2,
  'mlp.down_proj': 3,
};
const BLOCK_OUTPUT = 4;

/**
 * One chunk of windows inside the current block, loaded from the activation store: the residual
 * stream `x` (updated in place) and the input of the current stage: always at stages 1 and 3
 * (attention output, SwiGLU activation), kept from the capture at 0 and 2. Both are buffers of
 * the pool; `borrowed` marks an input that belongs to another state.
 */
/** A chunk between passes: its windows (from window s0), stage and the width of its stored input (0: none). */
interface ChunkMeta {
  s0: number;
  windows: number;
  stage?: number;
  inputCols?: number;
}

interface ChunkState {
  stage: number;
  x: Float32Array;
  input?: Float32Array;
  borrowed?: boolean;
  windows: number;
}

/**
 * Memory of the sequential pass, reused from stage to stage and layer to layer instead of
 * allocated per product (a 100M model's calibration would otherwise allocate and drop ~1 GB
 * per layer): `pool` holds buffers of the exact lengths asked for (a chunk's residual stream is
 * hidden wide, its SwiGLU activation intermediate wide: one size for all would hold 2.75x the
 * residual's bytes at TinyLlama's shape), `scratch` the temporaries (transposes, Gram blocks,
 * q/k/v, projections).
 */
class Buffers {
  private readonly free = new Map<number, ArrayBuffer[]>();
  /** Buffers this pool allocated: an engine that ignored `out` returned its own array, not ours to keep. */
  private readonly own = new WeakSet<ArrayBuffer>();
  readonly scratch = new Scratch();

  take(length: number): Float32Array {
    let b = this.free.get(length)?.pop();
    if (!b) {
      b = new ArrayBuffer(length * 4);
      this.own.add(b);
    }
    return new Float32Array(b, 0, length);
  }

  give(b: Float32Array): void {
    const buffer = b.buffer as ArrayBuffer;
    if (!this.own.has(buffer)) return;
    const length = buffer.byteLength / 4;
    const list = this.free.get(length);
    if (list) list.push(buffer);
    else this.free.set(length, [buffer]);
  }

  /** Drop the free buffers and the temporaries (call with none taken); the next pass allocates them again. */
  release(): void {
    this.free.clear();
    this.scratch.clear();
  }
}

/**
 * Sequential calibration. Each chunk's state only moves forward through a block, and only
 * through linears that are already quantized: every linear's output is computed once, from
 * its final weights, and reused by all later groups (the o_proj input, for one, is computed
 * once and not per pass). Contract for quantizeGroup:
 *  - a group within one stage (TRUE_SEQUENTIAL, GPTQ) changes only its own linears: the input
 *    captured for it is kept and runs them;
 *  - a group spanning several stages (ALL_AT_ONCE, AWQ) may change anything inside its span,
 *    the norms included (AWQ folds its scales into them): its capture pass runs on a scratch
 *    copy, and the block is rerun from the group's first stage after it;
 *  - neither changes what an earlier group quantized.
 */
export async function runSequential(
  decoder: Decoder,
  windows: Int32Array,
  seqlen: number,
  options: SequentialOptions,
): Promise<SequentialReport> {
  checkGroups(options.groups);
  // Groups name linears by their role: a model without one (no gate_proj in a plain MLP) skips it,
  // a MoE block has it once per expert (architecture.ts linearsInRole).
  const groups = options.groups
    .map((g) =>
      g.flatMap((l) => (expertOf(l) === undefined ? linearsInRole(decoder.config, l as DenseLinear) : [l])),
    )
    .filter((g) => g.length > 0);
  const n = windows.length / seqlen;
  const D = decoder.config.hiddenSize;
  const layers = decoder.config.numLayers;
  const start = options.start?.layer ?? 0;
  const store = options.activations ?? { dtype: 'f32', budgetBytes: Number.POSITIVE_INFINITY };
  const report: SequentialReport = {
    dtype: store.dtype,
    chunks: 0,
    residentChunks: 0,
    peakActivationBytes: 0,
    spilledBytes: 0,
    spillFileBytes: 0,
  };
  if (start === layers) return report;
  if (options.start && !(options.start.x?.length === n * seqlen * D && start >= 0 && start < layers)) {
    throw new ShapeError('resumed calibration activations do not fit', {
      field: `block ${start}`,
      expected: `${n * seqlen * D} floats [${n}, ${seqlen}, ${D}] entering one of blocks 0..${layers - 1}`,
      got: String(options.start.x?.length),
    });
  }
  if (!options.start) {
    checkCalibrationOptions({ nsamples: n, seqlen });
    // Past a finite budget the activations go to a file: only an unbounded store must fit in memory.
    if (!Number.isFinite(store.budgetBytes)) checkCalibrationMemory({ nsamples: n, seqlen }, D);
  }
  const widest = decoder.stageWidth();
  const buffers = new Buffers();
  // Each chunk's slot: its residual stream, then the input of its current stage.
  const meta: ChunkMeta[] = [];
  for (let s0 = 0; s0 < n; s0 += options.chunk)
    meta.push({ s0, windows: Math.min(n, s0 + options.chunk) - s0 });
  const acts = new ActivationStore(meta.length, options.chunk * seqlen * (D + widest), store);
  report.chunks = meta.length;
  report.residentChunks = acts.residentSlots;
  const track = () => {
    report.peakActivationBytes = Math.max(report.peakActivationBytes, acts.stats.residentBytes);
    report.spilledBytes = acts.stats.spilledBytes;
    report.spillFileBytes = acts.stats.spillFileBytes;
  };
  const what = (layer: number, i: number) => `block ${layer}, windows ${meta[i]!.s0}..`;
  try {
    const blocks = options.blocks;
    for (const [i, m] of meta.entries()) {
      const rows = m.windows * seqlen;
      const x = options.start
        ? options.start.x!.subarray(m.s0 * seqlen * D, m.s0 * seqlen * D + rows * D)
        : await profile.phase('forward', () =>
            (blocks?.embed ?? ((ids, T) => decoder.embed(ids, T)))(
              windows.subarray(m.s0 * seqlen, m.s0 * seqlen + rows),
              seqlen,
            ),
          );
      await acts.save(i, [x], what(start, i));
      track();
    }
    for (let layer = start; layer < layers; layer++) {
      await blocks?.load(layer);
      for (const m of meta) {
        m.stage = 0;
        m.inputCols = 0;
      }
      // Chunk i, as the pass left it, through `fn`, then saved again.
      const withChunk = async (i: number, fn: (s: ChunkState) => Promise<void>) => {
        const m = meta[i]!;
        const rows = m.windows * seqlen;
        const x = buffers.take(rows * D);
        const input = m.inputCols ? buffers.take(rows * m.inputCols) : undefined;
        await acts.load(i, input ? [x, input] : [x]);
        const s: ChunkState = { stage: m.stage!, x, input, windows: m.windows };
        await fn(s);
        m.stage = s.stage;
        m.inputCols = s.input ? s.input.length / rows : 0;
        await acts.save(i, s.input ? [s.x, s.input] : [s.x], what(layer, i));
        track();
        if (s.input) buffers.give(s.input);
        buffers.give(x);
      };
      const advance = (s: ChunkState) =>
        profile.phase('forward', () => advanceStage(decoder, layer, s, seqlen, buffers));
      for (const group of groups) {
        const first = STAGE[roleOf(group[0]!)];
        const last = STAGE[roleOf(group.at(-1)!)];
        // Linears reading the same stage (q/k/v, gate/up) share one statistics object.
        const stats = new Map<BlockLinear, LinearStats>();
        const shared = new Map<string, LinearStats>();
        for (let i = 0; i < meta.length; i++) {
          await withChunk(i, async (s) => {
            while (s.stage < first) await advance(s);
            // Later stages of a multi-stage group run on a copy: their linears are not final yet.
            let t = s;
            for (let stage = first; ; stage++) {
              const linears = group.filter((l) => STAGE[roleOf(l)] === stage);
              if (linears.length) {
                await profile.phase('hessian', async () => {
                  const input = t.input ?? normOutput(decoder, layer, t, buffers);
                  const rows = t.windows * seqlen;
                  // Linears reading one input (q/k/v; gate/up of every expert) share one statistics object;
                  // each expert's down_proj reads its own activations of every token (Decoder.linearInputView).
                  const routed =
                    stage === STAGE['mlp.down_proj'] ? decoder.routedTokens(input, rows) : undefined;
                  const accumulated = new Set<LinearStats>();
                  for (const l of linears) {
                    const view = decoder.linearInputView(l, input, rows);
                    const expert = expertOf(l);
                    const key = view.x === input ? `${stage}` : `${stage} ${expert}`;
                    let st = shared.get(key);
                    if (!st) {
                      st = newStats(view.cols, Math.min(options.sampleRows, n * seqlen));
                      shared.set(key, st);
                    }
                    if (!accumulated.has(st)) {
                      accumulated.add(st);
                      await accumulate(st, view.x, rows, n * seqlen, decoder.engine, buffers.scratch);
                      if (routed && typeof expert === 'number')
                        st.routedTokens = (st.routedTokens ?? 0) + routed[expert]!;
                    }
                    stats.set(l, st);
                  }
                  if (input !== t.input) {
                    // A single-stage group keeps the norm's output to run its linears later.
                    if (first === last) s.input = input;
                    else buffers.give(input);
                  }
                });
              }
              if (stage === last) break;
              if (t === s) t = { ...s, x: s.x.slice(), borrowed: s.input !== undefined };
              await advance(t);
            }
            if (t !== s && t.input && !t.borrowed) buffers.give(t.input);
          });
        }
        await profile.phase('hessian', () => {
          for (const st of shared.values()) finishStats(st);
        });
        // Between passes no chunk buffer is taken: the pool, the temporaries and the spill buffer
        // (at TinyLlama's shape and 4096-token chunks ~3 × 92 + 170 + 126 MB) are dropped so the
        // group's quantization (GPTQ's factor: intermediate² × 8 bytes) does not come on top of
        // them. Reallocating them costs page faults per group, little beside a pass.
        buffers.release();
        acts.releaseBuffer();
        await profile.phase('quantize', () => options.quantizeGroup(layer, group, stats));
        // The norms may have changed: their outputs are recomputed (the stored ones are dropped).
        if (first !== last) for (const m of meta) if (m.stage! % 2 === 0) m.inputCols = 0;
      }
      for (let i = 0; i < meta.length; i++)
        await withChunk(i, async (s) => {
          while (s.stage < BLOCK_OUTPUT) await advance(s);
        });
      await blocks?.finish(layer);
      // The residual stream of all windows, read back from the store (resume.ts saves it).
      await options.onBlockDone?.(layer, async () => {
        const x = new Float32Array(n * seqlen * D);
        for (const [i, m] of meta.entries())
          await acts.load(i, [x.subarray(m.s0 * seqlen * D, (m.s0 + m.windows) * seqlen * D)]);
        return x;
      });
      options.onProgress?.(layer + 1, layers);
    }
  } finally {
    track();
    await acts.close();
  }
  return report;
}

/** Groups must partition the block in execution order: a chunk's state never moves backwards. */
function checkGroups(groups: BlockLinear[][]): void {
  const order = groups.flat();
  const inOrder =
    groups.every((g) => g.length > 0) &&
    order.every((l, i) => i === 0 || STAGE[roleOf(l)] >= STAGE[roleOf(order[i - 1]!)]);
  if (!inOrder || new Set(order).size !== order.length) {
    throw new UsageError('invalid sequential calibration groups', {
      field: 'groups',
      expected: 'non-empty groups of distinct block linears in execution order',
      got: JSON.stringify(groups),
    });
  }
}

/** The output of the norm that feeds the chunk's current stage (0: q/k/v, 2: gate/up), in a pool buffer. */
function normOutput(decoder: Decoder, layer: number, s: ChunkState, buffers: Buffers): Float32Array {
  const out = buffers.take(s.x.length);
  return s.stage === 0 ? decoder.attentionInput(layer, s.x, out) : decoder.mlpInput(layer, s.x, out);
}

/** Run the chunk through its current stage with the decoder's current weights. */
async function advanceStage(
  decoder: Decoder,
  layer: number,
  s: ChunkState,
  seqlen: number,
  buffers: Buffers,
): Promise<void> {
  const { numHeads, headDim } = decoder.config;
  const rows = s.windows * seqlen;
  const input = s.input ?? normOutput(decoder, layer, s, buffers);
  const release = input !== s.input || !s.borrowed;
  s.input = undefined;
  s.borrowed = false;
  const { scratch } = buffers;
  switch (s.stage) {
    case 0:
      s.input = await decoder.selfAttention(
        layer,
        input,
        s.windows,
        seqlen,
        buffers.take(rows * numHeads * headDim),
        scratch,
      );
      break;
    case 1:
      await decoder.addAttentionOutput(layer, input, s.x, scratch);
      break;
    case 2:
      s.input = await decoder.mlpActivation(
        layer,
        input,
        rows,
        buffers.take(rows * decoder.mlpActivationWidth()),
      );
      break;
    case 3:
      await decoder.addMlpOutput(layer, input, s.x, scratch);
      break;
  }
  if (release) buffers.give(input);
  s.stage++;
}

/** An expert's routed and calibration tokens, for its layer report (nothing for other linears). */
export function expertTokens(stats: LinearStats | undefined): {
  routedTokens?: number;
  calibrationTokens?: number;
} {
  return stats?.routedTokens === undefined
    ? {}
    : { routedTokens: stats.routedTokens, calibrationTokens: stats.count };
}

function newStats(cols: number, sampleRows: number): LinearStats {
  return {
    cols,
    count: 0,
    hessian: new Float64Array(cols * cols),
    absMean: new Float64Array(cols),
    sample: new Float32Array(sampleRows * cols),
    sampleRows,
  };
}

/** Columns per engine product of the Gram matrix: only blocks on or below the diagonal are computed. */
const GRAM_BLOCK = 256;

async function accumulate(
  s: LinearStats,
  x: Float32Array,
  rows: number,
  totalRows: number,
  engine: ComputeEngine,
  scratch: Scratch,
) {
  const cols = s.cols;
  // Xᵀ makes every column block of X a contiguous row block, so each block row of Σ x xᵀ
  // (lower triangle only: H is symmetric) is one product on the engine, in float32 like the
  // reference; chunks are summed in float64.
  const xt = transposeWithAbsSum(
    x,
    rows,
    cols,
    scratch.get('transpose', rows * cols),
    s.sampleRows ? s.absMean : undefined,
  );
  for (let i0 = 0; i0 < cols; i0 += GRAM_BLOCK) {
    const i1 = Math.min(cols, i0 + GRAM_BLOCK);
    const block = xt.subarray(i0 * rows, i1 * rows);
    const gram = await engine.linear(
      block,
      xt.subarray(0, i1 * rows),
      i1 - i0,
      rows,
      i1,
      scratch.get('gram', (i1 - i0) * i1),
    );
    addLowerRows(s.hessian, cols, gram, i0, i1);
  }
  if (s.sampleRows) keepSampleRows(s, x, rows, totalRows);
  s.count += rows;
}

// Loops live in synchronous functions: in an async function V8 drops the loop's optimized
// (on-stack-replaced) code at the next await; measured 1.4-1.6x slower here.

/** H[i, j] += gram[i − i0, j] for i0 <= i < i1, j <= i (gram is (i1 − i0) × i1). */
function addLowerRows(H: Float64Array, cols: number, gram: Float32Array, i0: number, i1: number): void {
  for (let i = i0; i < i1; i++) {
    const src = (i - i0) * i1;
    const dst = i * cols;
    for (let j = 0; j <= i; j++) H[dst + j]! += gram[src + j]!;
  }
}

/** Keep evenly spaced rows of the whole calibration set (rows s.count.. of it are in x). */
function keepSampleRows(s: LinearStats, x: Float32Array, rows: number, totalRows: number): void {
  const cols = s.cols;
  const stride = totalRows / s.sampleRows;
  for (let r = 0; r < rows; r++) {
    const global = s.count + r;
    const slot = Math.floor(global / stride);
    if (slot < s.sampleRows && Math.floor(slot * stride) === global)
      s.sample.set(x.subarray(r * cols, (r + 1) * cols), slot * cols);
  }
}

/**
 * Xᵀ of a row-major [rows, cols] matrix, in tiles of rows (the fastest order measured here);
 * with absSum, adds Σ_r |x_rc| to absSum[c], rows in order as a row-by-row sum would.
 */
function transposeWithAbsSum(
  x: Float32Array,
  rows: number,
  cols: number,
  xt: Float32Array,
  absSum?: Float64Array,
): Float32Array {
  const TILE = 64;
  for (let r0 = 0; r0 < rows; r0 += TILE) {
    const r1 = Math.min(rows, r0 + TILE);
    for (let c = 0; c < cols; c++) {
      const out = c * rows;
      if (absSum) {
        let a = absSum[c]!;
        for (let r = r0; r < r1; r++) {
          const v = x[r * cols + c]!;
          xt[out + r] = v;
          a += Math.abs(v);
        }
        absSum[c] = a;
      } else {
        for (let r = r0; r < r1; r++) xt[out + r] = x[r * cols + c]!;
      }
    }
  }
  return xt;
}

function finishStats(s: LinearStats): void {
  const n = s.cols;
  const f = 2 / s.count;
  const H = s.hessian;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) H[i * n + j]! *= f;
    // The upper triangle mirrors the lower one.
    for (let j = 0; j < i; j++) H[j * n + i] = H[i * n + j]!;
  }
  for (let i = 0; i < n; i++) s.absMean[i]! /= s.count;
}
