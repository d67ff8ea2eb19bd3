/** Reference engine in plain loops (float64 accumulation): slow, obviously correct. */
import type { AttentionShape, ComputeEngine } from './engine.js';

export class JsEngine implements ComputeEngine {
  readonly name = 'js';

  async linear(
    x: Float32Array,
    w: Float32Array,
    M: number,
    K: number,
    N: number,
    out?: Float32Array,
  ): Promise<Float32Array> {
    const y = out ?? new Float32Array(M * N);
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let acc = 0;
        for (let k = 0; k < K; k++) acc += x[m * K + k]! * w[n * K + k]!;
        y[m * N + n] = acc;
      }
    }
    return y;
  }

  async linearSwiGlu(
    x: Float32Array,
    gate: Float32Array,
    up: Float32Array,
    M: number,
    K: number,
    N: number,
    out?: Float32Array,
  ): Promise<Float32Array> {
    const g = await this.linear(x, gate, M, K, N, out);
    const u = await this.linear(x, up, M, K, N);
    for (let i = 0; i < g.length; i++) g[i] = (g[i]! / (1 + Math.exp(-g[i]!))) * u[i]!;
    return g;
  }

  async matmulTransA(
    a: Float32Array,
    b: Float32Array,
    K: number,
    M: number,
    N: number,
  ): Promise<Float32Array> {
    const c = new Float64Array(M * N);
    for (let k = 0; k < K; k++) {
      for (let m = 0; m < M; m++) {
        const akm = a[k * M + m]!;
        if (akm === 0) continue;
        for (let n = 0; n < N; n++) c[m * N + n]! += akm * b[k * N + n]!;
      }
    }
    return Float32Array.from(c);
  }

  async causalAttention(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    shape: AttentionShape,
    result?: Float32Array,
  ): Promise<Float32Array> {
    const { batch, seqLen: T, heads, kvHeads, headDim: d, scale, window, softcap } = shape;
    const group = heads / kvHeads;
    const out = result ? result.fill(0) : new Float32Array(q.length);
    const scores = new Float64Array(T);
    const qAt = (b: number, t: number, h: number) => ((b * T + t) * heads + h) * d;
    const kvAt = (b: number, t: number, h: number) => ((b * T + t) * kvHeads + Math.floor(h / group)) * d;
    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < heads; h++) {
        for (let t = 0; t < T; t++) {
          const first = window ? Math.max(0, t - window + 1) : 0;
          let max = -Infinity;
          for (let s = first; s <= t; s++) {
            let dot = 0;
            for (let i = 0; i < d; i++) dot += q[qAt(b, t, h) + i]! * k[kvAt(b, s, h) + i]!;
            scores[s] = softcap ? softcap * Math.tanh((dot * scale) / softcap) : dot * scale;
            max = Math.max(max, scores[s]!);
          }
          let sum = 0;
          for (let s = first; s <= t; s++) sum += scores[s] = Math.exp(scores[s]! - max);
          for (let s = first; s <= t; s++) {
            const p = scores[s]! / sum;
            for (let i = 0; i < d; i++) out[qAt(b, t, h) + i]! += p * v[kvAt(b, s, h) + i]!;
          }
        }
      }
    }
    return out;
  }
}
