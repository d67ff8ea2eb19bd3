/**
 * `ptq eval <quantized.onnx> --ref <original.onnx>`: run both graphs in onnxruntime-node on the
 * same inputs and compare every common float output:
 *
 *   max |Δ|, mean |Δ|, cosine similarity cos = ⟨a, b⟩ / (‖a‖·‖b‖) over the flattened output,
 *
 * summed over all input batches. Inputs come from the graph's declared inputs (session input
 * metadata): `input_ids`-like int64/int32 inputs get seeded uniform ids below `vocab`,
 * `attention_mask` ones, `token_type_ids` zeros, `position_ids` 0..S−1, float inputs seeded
 * standard normal values, symbolic dimensions `batch` × `sequence`; decoder caches
 * (past_key_values.*) get a past length of 0.
 */
import * as ort from 'onnxruntime-node';
import { FormatError, UsageError } from '../errors.js';
import { decodeF16 } from '../formats/half.js';
import { mulberry32 } from '../random.js';

export interface FeedOptions {
  batch?: number;
  sequence?: number;
  /** Exclusive upper bound of generated ids. */
  vocab?: number;
  seed?: number;
}

export interface OutputComparison {
  name: string;
  elements: number;
  maxAbs: number;
  meanAbs: number;
  cosine: number;
}

type Meta = { name: string; isTensor: boolean; type?: string; shape?: readonly (number | string)[] };

function inputMeta(session: ort.InferenceSession): Meta[] {
  const meta = (session as unknown as { inputMetadata?: Meta[] }).inputMetadata;
  if (!meta)
    throw new UsageError('this onnxruntime-node does not report input metadata', {
      field: 'onnxruntime-node',
    });
  return meta;
}

/** Seeded inputs for every declared input of `session`. */
export function syntheticFeeds(
  session: ort.InferenceSession,
  o: FeedOptions = {},
): Record<string, ort.Tensor> {
  const batch = o.batch ?? 2;
  const seq = o.sequence ?? 16;
  const vocab = o.vocab ?? 100;
  const rand = mulberry32(o.seed ?? 0);
  const feeds: Record<string, ort.Tensor> = {};
  for (const m of inputMeta(session)) {
    if (!m.isTensor) throw new UsageError('non-tensor graph inputs are not supported', { field: m.name });
    const isPast = /past|cache/.test(m.name);
    const shape = (m.shape ?? []).map((d, i) => {
      if (typeof d === 'number' && d >= 0) return d;
      if (i === 0) return batch;
      if (isPast) return /past_sequence|past/.test(String(d)) ? 0 : 1;
      return seq;
    });
    // attention_mask covers past + new tokens; with past 0 both are `seq`.
    const n = shape.reduce((a, b) => a * b, 1);
    const ints = (f: (i: number) => number) => {
      const v = Array.from({ length: n }, (_, i) => f(i));
      return m.type === 'int32'
        ? new ort.Tensor('int32', Int32Array.from(v), shape)
        : new ort.Tensor('int64', BigInt64Array.from(v.map(BigInt)), shape);
    };
    if (m.type === 'int64' || m.type === 'int32') {
      if (/mask/.test(m.name)) feeds[m.name] = ints(() => 1);
      else if (/token_type/.test(m.name)) feeds[m.name] = ints(() => 0);
      else if (/position/.test(m.name)) feeds[m.name] = ints((i) => i % shape.at(-1)!);
      else feeds[m.name] = ints(() => Math.floor(rand() * vocab));
    } else if (m.type === 'float32') {
      const v = new Float32Array(n);
      for (let i = 0; i < n; i++)
        v[i] = Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());
      feeds[m.name] = new ort.Tensor('float32', v, shape);
    } else if (m.type === 'bool') {
      feeds[m.name] = new ort.Tensor('bool', new Uint8Array(n).fill(1), shape);
    } else {
      throw new UsageError('cannot generate inputs of this type', { field: m.name, got: m.type });
    }
  }
  return feeds;
}

export async function openSession(file: string, threads = 1): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(file, { intraOpNumThreads: threads, interOpNumThreads: 1 }).catch(
    (e: Error) => {
      throw new FormatError(`onnxruntime cannot load the model: ${e.message}`, { file });
    },
  );
}

const toFloat = (t: ort.Tensor): Float64Array | undefined => {
  if (t.type === 'float32') return Float64Array.from(t.data as Float32Array);
  if (t.type === 'float16') {
    const d = t.data as unknown as ArrayLike<number>;
    // Float16Array or Uint16Array of bit patterns (onnxruntime-node returns the latter).
    if (d instanceof Uint16Array) return Float64Array.from(decodeF16(d));
    return Float64Array.from(d);
  }
  return undefined;
};

/** Compare the float outputs of two sessions over `feedsList` (same inputs to both). */
export async function compareSessions(
  reference: ort.InferenceSession,
  candidate: ort.InferenceSession,
  feedsList: Record<string, ort.Tensor>[],
): Promise<OutputComparison[]> {
  const names = reference.outputNames.filter((n) => candidate.outputNames.includes(n));
  const acc = new Map(names.map((n) => [n, { elements: 0, maxAbs: 0, sumAbs: 0, dot: 0, aa: 0, bb: 0 }]));
  for (const feeds of feedsList) {
    const [ra, rb] = [await reference.run(feeds), await candidate.run(feeds)];
    for (const name of names) {
      const a = toFloat(ra[name]!);
      const b = toFloat(rb[name]!);
      if (!a || !b) continue;
      if (a.length !== b.length)
        throw new FormatError('outputs differ in size', {
          field: name,
          expected: String(a.length),
          got: String(b.length),
        });
      const s = acc.get(name)!;
      for (let i = 0; i < a.length; i++) {
        const d = Math.abs(a[i]! - b[i]!);
        s.maxAbs = Math.max(s.maxAbs, d);
        s.sumAbs += d;
        s.dot += a[i]! * b[i]!;
        s.aa += a[i]! * a[i]!;
        s.bb += b[i]! * b[i]!;
      }
      s.elements += a.length;
    }
  }
  return [...acc]
    .filter(([, s]) => s.elements > 0)
    .map(([name, s]) => ({
      name,
      elements: s.elements,
      maxAbs: s.maxAbs,
      meanAbs: s.sumAbs / s.elements,
      cosine: s.aa === 0 && s.bb === 0 ? 1 : s.dot / Math.sqrt(s.aa * s.bb),
    }));
}

/** Open both files and compare them on `batches` seeded input sets. */
export async function compareOnnxFiles(
  referenceFile: string,
  candidateFile: string,
  o: FeedOptions & { batches?: number } = {},
): Promise<OutputComparison[]> {
  const [ref, cand] = [await openSession(referenceFile), await openSession(candidateFile)];
  try {
    const feeds = Array.from({ length: o.batches ?? 4 }, (_, i) =>
      syntheticFeeds(ref, { ...o, seed: (o.seed ?? 0) + i }),
    );
    return await compareSessions(ref, cand, feeds);
  } finally {
    await ref.release();
    await cand.release();
  }
}
