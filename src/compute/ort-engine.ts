/**
 * onnxruntime-node engine: each operation is a tiny ONNX graph with symbolic dimensions,
 * built once and cached, so one session serves every shape and every layer.
 */
import * as ort from 'onnxruntime-node';
import { type AttrValue, buildOnnxModel, type GraphSpec } from '../io/onnx-builder.js';
import type { AttentionShape, ComputeEngine } from './engine.js';

const LINEAR: GraphSpec = {
  name: 'linear',
  nodes: [{ op: 'Gemm', inputs: ['x', 'w'], outputs: ['y'], attributes: { transB: 1 } }],
  inputs: [
    { name: 'x', type: 'float32', dims: ['M', 'K'] },
    { name: 'w', type: 'float32', dims: ['N', 'K'] },
  ],
  outputs: [{ name: 'y', type: 'float32', dims: ['M', 'N'] }],
};

const LINEAR_SWIGLU: GraphSpec = {
  name: 'linear_swiglu',
  nodes: [
    { op: 'Gemm', inputs: ['x', 'gate'], outputs: ['g'], attributes: { transB: 1 } },
    { op: 'Gemm', inputs: ['x', 'up'], outputs: ['u'], attributes: { transB: 1 } },
    { op: 'Sigmoid', inputs: ['g'], outputs: ['sig'] },
    { op: 'Mul', inputs: ['g', 'sig'], outputs: ['silu'] },
    { op: 'Mul', inputs: ['silu', 'u'], outputs: ['y'] },
  ],
  inputs: [
    { name: 'x', type: 'float32', dims: ['M', 'K'] },
    { name: 'gate', type: 'float32', dims: ['N', 'K'] },
    { name: 'up', type: 'float32', dims: ['N', 'K'] },
  ],
  outputs: [{ name: 'y', type: 'float32', dims: ['M', 'N'] }],
};

const MATMUL_TRANS_A: GraphSpec = {
  name: 'matmul_trans_a',
  nodes: [{ op: 'Gemm', inputs: ['a', 'b'], outputs: ['c'], attributes: { transA: 1 } }],
  inputs: [
    { name: 'a', type: 'float32', dims: ['K', 'M'] },
    { name: 'b', type: 'float32', dims: ['K', 'N'] },
  ],
  outputs: [{ name: 'c', type: 'float32', dims: ['M', 'N'] }],
};

/**
 * onnxruntime's fused causal GroupQueryAttention (com.microsoft): reads q/k/v in the
 * [B, T, heads·d] layout the projections produce and maps query heads to KV heads itself.
 * Every window is full length: seqlens_k = T − 1 and total_sequence_length = T.
 */
function groupQueryAttention(shape: AttentionShape): GraphSpec {
  const { heads, kvHeads, headDim, scale, window, softcap } = shape;
  // local_window_size = W keeps keys t − W < s <= t (checked against JsEngine in test/model/architectures).
  const extra: Record<string, AttrValue> = {};
  if (window) extra.local_window_size = window;
  if (softcap) extra.softcap = { f: softcap };
  return {
    name: `gqa_${heads}_${kvHeads}_${headDim}_${scale}_${window ?? 0}_${softcap ?? 0}`,
    nodes: [
      {
        op: 'GroupQueryAttention',
        domain: 'com.microsoft',
        inputs: ['q', 'k', 'v', '', '', 'seqlens_k', 'total_sequence_length'],
        outputs: ['o', 'present_key', 'present_value'],
        // FLOAT attributes even when integral (a softcap of 50, a scale of 1).
        attributes: {
          num_heads: heads,
          kv_num_heads: kvHeads,
          scale: { f: scale },
          ...extra,
        },
      },
    ],
    inputs: [
      { name: 'q', type: 'float32', dims: ['B', 'T', heads * headDim] },
      { name: 'k', type: 'float32', dims: ['B', 'T', kvHeads * headDim] },
      { name: 'v', type: 'float32', dims: ['B', 'T', kvHeads * headDim] },
      { name: 'seqlens_k', type: 'int32', dims: ['B'] },
      { name: 'total_sequence_length', type: 'int32', dims: [] },
    ],
    outputs: [
      { name: 'o', type: 'float32', dims: ['B', 'T', heads * headDim] },
      { name: 'present_key', type: 'float32', dims: ['B', kvHeads, 'T', headDim] },
      { name: 'present_value', type: 'float32', dims: ['B', kvHeads, 'T', headDim] },
    ],
  };
}

export class OrtEngine implements ComputeEngine {
  readonly name = 'onnxruntime';
  private readonly sessions = new Map<string, Promise<ort.InferenceSession>>();

  constructor(private readonly threads = 0) {}

  private session(spec: GraphSpec): Promise<ort.InferenceSession> {
    let s = this.sessions.get(spec.name);
    if (!s) {
      s = ort.InferenceSession.create(buildOnnxModel(spec), {
        intraOpNumThreads: this.threads,
        interOpNumThreads: 1,
        executionMode: 'sequential',
        graphOptimizationLevel: 'all',
        // Idle pool threads sleep instead of spinning: between products the main thread runs
        // JS loops (norms, GPTQ's columns), and spinning would take a core from them and from
        // any other process.
        extra: { session: { intra_op: { allow_spinning: '0' } } },
        // No arena: it keeps every session's largest intermediates (SwiGLU's 4 × M·N floats,
        // attention's B·H·T² scores) for the life of the process; freed, they are unmapped
        // (measured on the 100M bench: peak RSS −165 MiB, CPU time unchanged).
        enableCpuMemArena: false,
      });
      this.sessions.set(spec.name, s);
    }
    return s;
  }

  /** Run a graph; its first output is written into `out` when given (onnxruntime fills it in place). */
  private async run(
    spec: GraphSpec,
    feeds: Record<string, ort.Tensor>,
    out?: { data: Float32Array; dims: number[] },
  ): Promise<Float32Array> {
    const session = await this.session(spec);
    const name = spec.outputs[0]!.name;
    if (!out) return (await session.run(feeds))[name]!.data as Float32Array;
    await session.run(feeds, { [name]: new ort.Tensor('float32', out.data, out.dims) });
    return out.data;
  }

  linear(
    x: Float32Array,
    w: Float32Array,
    M: number,
    K: number,
    N: number,
    out?: Float32Array,
  ): Promise<Float32Array> {
    return this.run(
      LINEAR,
      { x: new ort.Tensor('float32', x, [M, K]), w: new ort.Tensor('float32', w, [N, K]) },
      out && { data: out, dims: [M, N] },
    );
  }

  linearSwiGlu(
    x: Float32Array,
    gate: Float32Array,
    up: Float32Array,
    M: number,
    K: number,
    N: number,
    out?: Float32Array,
  ): Promise<Float32Array> {
    return this.run(
      LINEAR_SWIGLU,
      {
        x: new ort.Tensor('float32', x, [M, K]),
        gate: new ort.Tensor('float32', gate, [N, K]),
        up: new ort.Tensor('float32', up, [N, K]),
      },
      out && { data: out, dims: [M, N] },
    );
  }

  matmulTransA(a: Float32Array, b: Float32Array, K: number, M: number, N: number): Promise<Float32Array> {
    return this.run(MATMUL_TRANS_A, {
      a: new ort.Tensor('float32', a, [K, M]),
      b: new ort.Tensor('float32', b, [K, N]),
    });
  }

  causalAttention(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    shape: AttentionShape,
    out?: Float32Array,
  ): Promise<Float32Array> {
    const { batch: B, seqLen: T, heads, kvHeads, headDim: d } = shape;
    return this.run(
      groupQueryAttention(shape),
      {
        q: new ort.Tensor('float32', q, [B, T, heads * d]),
        k: new ort.Tensor('float32', k, [B, T, kvHeads * d]),
        v: new ort.Tensor('float32', v, [B, T, kvHeads * d]),
        seqlens_k: new ort.Tensor('int32', new Int32Array(B).fill(T - 1), [B]),
        total_sequence_length: new ort.Tensor('int32', Int32Array.of(T), []),
      },
      out && { data: out, dims: [B, T, heads * d] },
    );
  }
}
