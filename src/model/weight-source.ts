/**
 * A model's weights read lazily: canonical float32 tensors one at a time — one decoder block's,
 * the head's, the embedding rows a batch needs — from whatever file holds them, so that a
 * model larger than memory can be run block by block (block-streamed evaluation,
 * model/streamed-decoder.ts; streamed calibration reads the same blocks).
 *
 * A source file is seen as RawTensors (its own names, shapes and a float32 read per tensor:
 * safetensors shards, a ptqkit checkpoint's dequantized weights, a GGUF file, a llama2.c
 * checkpoint). The canonical names are planned from the shapes alone, as streaming
 * quantization plans them: each source tensor goes through the architecture's canonicalize as a
 * shape-only placeholder, so renames, Conv1D transposes and fused splits give exactly the names,
 * order and shapes `loadModel` produces, tied embeddings are normalized and every shape is
 * checked against the configuration before a weight is read.
 */
import { FormatError, ShapeError } from '../errors.js';
import { blockPrefix, EMBED, FINAL_NORM, LM_HEAD, POSITION_EMBED } from '../formats/tensor-names.js';
import { numel, type Tensor, type TensorMap } from '../tensor.js';
import type { Architecture } from './architecture.js';
import { LLAMA_LAYOUT, type ModelConfig } from './config.js';

/** Canonical float32 tensors, read on demand. */
export interface WeightSource {
  /** Every canonical tensor and its shape, in `loadModel`'s order. */
  readonly shapes: ReadonlyMap<string, readonly number[]>;
  /** One canonical tensor as float32 (the caller may keep it or drop it). */
  read(name: string): Promise<Tensor>;
  /** Rows of a 2-D canonical tensor, [rows.length, cols] (the embedding rows of a batch). */
  readRows(name: string, rows: ArrayLike<number>): Promise<Float32Array>;
  close(): Promise<void>;
}

/** A source file's tensors under its own names. */
export interface RawTensors {
  names(): string[];
  shape(name: string): readonly number[];
  readFloat32(name: string): Promise<Float32Array>;
  /** Rows of a 2-D tensor without reading the rest (absent: the whole tensor is read and gathered). */
  readRows?(name: string, rows: ArrayLike<number>): Promise<Float32Array>;
  close(): Promise<void>;
}

/** A canonical tensor before it is read: which source tensor holds it. */
export interface Planned extends Tensor {
  source: string;
  /** Its name out of canonicalize (before tied embeddings are normalized). */
  canonical: string;
  /** Its data is the source tensor's, unchanged (no transpose, no split). */
  passThrough: boolean;
}

/** Canonical names and shapes of `names` (with `shapeOf`) without reading data; checked as loadModel checks. */
export function planCanonical(
  names: readonly string[],
  shapeOf: (name: string) => readonly number[],
  arch: Architecture,
  config: ModelConfig,
  where: string,
): Map<string, Planned> {
  const plan: TensorMap = new Map();
  const empty = new Float32Array(0);
  for (const source of names) {
    const placeholder = { shape: [...shapeOf(source)], data: empty };
    for (const [name, t] of arch.canonicalize(new Map([[source, placeholder]]), config, where)) {
      const planned: Planned = {
        shape: t.shape,
        data: empty,
        source,
        canonical: name,
        passThrough: t === placeholder,
      };
      plan.set(name, planned);
    }
  }
  normalizeTiedEmbeddings(plan, config, where);
  checkShapes(plan, arch, config, where);
  return plan as Map<string, Planned>;
}

/** Reads canonical tensors; keeps the last transposed/split source so that its parts are read once. */
export class CanonicalReader {
  private cached?: { source: string; tensors: TensorMap };

  constructor(
    private readonly raw: Pick<RawTensors, 'readFloat32' | 'shape'>,
    private readonly arch: Architecture,
    private readonly config: ModelConfig,
    private readonly where: string,
  ) {}

  async read(name: string, t: Planned): Promise<Tensor> {
    if (t.passThrough) return { shape: t.shape, data: await this.raw.readFloat32(t.source) };
    if (this.cached?.source !== t.source) {
      this.cached = undefined; // free the previous source before reading the next
      const source = new Map([
        [t.source, { shape: [...this.raw.shape(t.source)], data: await this.raw.readFloat32(t.source) }],
      ]);
      this.cached = { source: t.source, tensors: this.arch.canonicalize(source, this.config, this.where) };
    }
    const tensor = this.cached.tensors.get(t.canonical);
    if (!tensor)
      throw new FormatError('tensor missing from its source', { field: name, expected: `in ${t.source}` });
    return tensor;
  }

  /** Forget the cached source (its parts were all read). */
  release(): void {
    this.cached = undefined;
  }
}

/** The canonical weights of a source file, read on demand (see the top of this file). */
export function lazyWeights(
  raw: RawTensors,
  arch: Architecture,
  config: ModelConfig,
  where: string,
): WeightSource {
  const plan = planCanonical(raw.names(), (n) => raw.shape(n), arch, config, where);
  const reader = new CanonicalReader(raw, arch, config, where);
  const planned = (name: string) => {
    const t = plan.get(name);
    if (!t) throw new FormatError('no such tensor', { file: where, field: name });
    return t;
  };
  return {
    shapes: new Map([...plan].map(([name, t]) => [name, t.shape])),
    async read(name) {
      const t = await reader.read(name, planned(name));
      reader.release();
      return t;
    },
    async readRows(name, rows) {
      const t = planned(name);
      checkRows(name, t.shape, rows, where);
      if (t.passThrough && raw.readRows) return raw.readRows(t.source, rows);
      const whole = await reader.read(name, t);
      reader.release();
      return gatherRows(whole.data, t.shape[1]!, rows);
    },
    close: () => raw.close(),
  };
}

/** Weights already in memory as a WeightSource (reads return the resident tensors themselves). */
export function residentWeights(weights: TensorMap): WeightSource {
  const get = (name: string) => {
    const t = weights.get(name);
    if (!t) throw new FormatError('no such tensor', { field: name });
    return t;
  };
  return {
    shapes: new Map([...weights].map(([name, t]) => [name, t.shape])),
    read: async (name) => get(name),
    async readRows(name, rows) {
      const t = get(name);
      checkRows(name, t.shape, rows, 'weights');
      return gatherRows(t.data, t.shape[1]!, rows);
    },
    close: async () => {},
  };
}

function checkRows(name: string, shape: readonly number[], rows: ArrayLike<number>, where: string): void {
  if (shape.length !== 2)
    throw new ShapeError('rows of a tensor that is not a matrix', { file: where, field: name });
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i]!;
    if (!(Number.isInteger(r) && r >= 0 && r < shape[0]!))
      throw new ShapeError('row outside the tensor', {
        file: where,
        field: name,
        expected: `[0, ${shape[0]})`,
        got: String(r),
      });
  }
}

/** rows of a row-major [*, cols] matrix, [rows.length, cols]. */
export function gatherRows(data: Float32Array, cols: number, rows: ArrayLike<number>): Float32Array {
  const out = new Float32Array(rows.length * cols);
  for (let i = 0; i < rows.length; i++)
    out.set(data.subarray(rows[i]! * cols, (rows[i]! + 1) * cols), i * cols);
  return out;
}

/** The canonical tensors of decoder block `layer` (weights, biases, norms), in the source's order. */
export function blockTensorNames(source: Pick<WeightSource, 'shapes'>, layer: number): string[] {
  const prefix = blockPrefix(layer);
  return [...source.shapes.keys()].filter((n) => n.startsWith(prefix));
}

/** The tensors the head reads: the final norm (and its bias) and lm_head (the embedding when tied). */
export function headTensorNames(source: Pick<WeightSource, 'shapes'>, config: ModelConfig): string[] {
  const bias = FINAL_NORM.replace(/\.weight$/, '.bias');
  return [FINAL_NORM, bias, config.tiedEmbeddings ? EMBED : LM_HEAD].filter((n) => source.shapes.has(n));
}

/** Tensors the embedding step reads whole (learned positions); token rows are read per batch. */
export function embeddingTensorNames(config: ModelConfig): string[] {
  return (config.layout ?? LLAMA_LAYOUT).positions === 'learned' ? [POSITION_EMBED] : [];
}

/** Bytes of the float32 tensors `names` (every tensor when `names` is omitted). */
export function float32Bytes(source: Pick<WeightSource, 'shapes'>, names?: readonly string[]): number {
  let n = 0;
  for (const name of names ?? source.shapes.keys()) n += numel(source.shapes.get(name) ?? []) * 4;
  return n;
}

/** Tied models may store the shared matrix under either name; keep it under the embedding's. */
export function normalizeTiedEmbeddings(weights: TensorMap, config: ModelConfig, where: string): void {
  if (!config.tiedEmbeddings) return;
  const head = weights.get(LM_HEAD);
  if (!weights.has(EMBED) && head) weights.set(EMBED, head);
  weights.delete(LM_HEAD);
  if (!weights.has(EMBED)) throw new ShapeError('missing tensor', { file: where, field: EMBED });
}

export function checkShapes(
  weights: TensorMap,
  arch: Architecture,
  config: ModelConfig,
  where: string,
): void {
  for (const [name, shape] of arch.expectedShapes(config)) {
    const t = weights.get(name);
    if (!t)
      throw new ShapeError('missing tensor', { file: where, field: name, expected: `shape [${shape}]` });
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new ShapeError('tensor shape disagrees with the model configuration', {
        file: where,
        field: name,
        expected: `[${shape}]`,
        got: `[${t.shape}]`,
      });
    }
  }
}
