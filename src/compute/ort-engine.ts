/**
 * onnxruntime-node engine: each operation is a tiny ONNX graph with symbolic dimensions,
 * built once and cached, so one session serves every shape and every layer.
 */
import * as ort from 'onnxruntime-node';
import { buildOnnxModel, type GraphSpec } from '../io/onnx-builder.js';
import type { ComputeEngine } from './engine.js';

const LINEAR: GraphSpec = {
  name: 'linear',
  nodes: [{ op: 'Gemm', inputs: ['x', 'w'], outputs: ['y'], attributes: { transB: 1 } }],
  inputs: [
    { name: 'x', type: 'float32', dims: ['M', 'K'] },
    { name: 'w', type: 'float32', dims: ['N', 'K'] },
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

/** softmax(scale·q·kᵀ + mask)·v, with `mask` the additive causal mask (0 on/below the diagonal, -inf above). */
const CAUSAL_ATTENTION: GraphSpec = {
  name: 'causal_attention',
  nodes: [
    { op: 'Transpose', inputs: ['k'], outputs: ['kt'], attributes: { perm: [0, 2, 1] } },
    { op: 'MatMul', inputs: ['q', 'kt'], outputs: ['s'] },
    { op: 'Mul', inputs: ['s', 'scale'], outputs: ['s_scaled'] },
    { op: 'Add', inputs: ['s_scaled', 'mask'], outputs: ['s_masked'] },
    { op: 'Softmax', inputs: ['s_masked'], outputs: ['p'], attributes: { axis: -1 } },
    { op: 'MatMul', inputs: ['p', 'v'], outputs: ['o'] },
  ],
  inputs: [
    { name: 'q', type: 'float32', dims: ['B', 'T', 'D'] },
    { name: 'k', type: 'float32', dims: ['B', 'T', 'D'] },
    { name: 'v', type: 'float32', dims: ['B', 'T', 'D'] },
    { name: 'scale', type: 'float32', dims: [1] },
    { name: 'mask', type: 'float32', dims: ['T', 'T'] },
  ],
  outputs: [{ name: 'o', type: 'float32', dims: ['B', 'T', 'D'] }],
};

export class OrtEngine implements ComputeEngine {
  readonly name = 'onnxruntime';
  private readonly sessions = new Map<string, Promise<ort.InferenceSession>>();
  private readonly masks = new Map<number, ort.Tensor>();

  constructor(private readonly threads = 0) {}

  private session(spec: GraphSpec): Promise<ort.InferenceSession> {
    let s = this.sessions.get(spec.name);
    if (!s) {
      s = ort.InferenceSession.create(buildOnnxModel(spec), {
        intraOpNumThreads: this.threads,
        interOpNumThreads: 1,
        executionMode: 'sequential',
        graphOptimizationLevel: 'all',
      });
      this.sessions.set(spec.name, s);
    }
    return s;
  }

  private async run(spec: GraphSpec, feeds: Record<string, ort.Tensor>): Promise<Float32Array> {
    const session = await this.session(spec);
    const out = await session.run(feeds);
    return out[spec.outputs[0]!.name]!.data as Float32Array;
  }

  linear(x: Float32Array, w: Float32Array, M: number, K: number, N: number): Promise<Float32Array> {
    return this.run(LINEAR, {
      x: new ort.Tensor('float32', x, [M, K]),
      w: new ort.Tensor('float32', w, [N, K]),
    });
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
    batch: number,
    T: number,
    d: number,
    scale: number,
  ): Promise<Float32Array> {
    return this.run(CAUSAL_ATTENTION, {
      q: new ort.Tensor('float32', q, [batch, T, d]),
      k: new ort.Tensor('float32', k, [batch, T, d]),
      v: new ort.Tensor('float32', v, [batch, T, d]),
      scale: new ort.Tensor('float32', Float32Array.of(scale), [1]),
      mask: this.causalMask(T),
    });
  }

  private causalMask(T: number): ort.Tensor {
    let mask = this.masks.get(T);
    if (!mask) {
      const m = new Float32Array(T * T);
      for (let i = 0; i < T; i++) m.fill(-Infinity, i * T + i + 1, (i + 1) * T);
      mask = new ort.Tensor('float32', m, [T, T]);
      this.masks.set(T, mask);
    }
    return mask;
  }
}
