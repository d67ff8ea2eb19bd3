/** Reference engine in plain loops (float64 accumulation): slow, obviously correct. */
import type { ComputeEngine } from './engine.js';

export class JsEngine implements ComputeEngine {
  readonly name = 'js';

  async linear(x: Float32Array, w: Float32Array, M: number, K: number, N: number): Promise<Float32Array> {
    const y = new Float32Array(M * N);
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let acc = 0;
        for (let k = 0; k < K; k++) acc += x[m * K + k]! * w[n * K + k]!;
        y[m * N + n] = acc;
      }
    }
    return y;
  }

  async matmulTransA(a: Float32Array, b: Float32Array, K: number, M: number, N: number): Promise<Float32Array> {
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
    batch: number,
    T: number,
    d: number,
    scale: number,
  ): Promise<Float32Array> {
    const out = new Float32Array(batch * T * d);
    const scores = new Float64Array(T);
    for (let b = 0; b < batch; b++) {
      const base = b * T * d;
      for (let t = 0; t < T; t++) {
        let max = -Infinity;
        for (let s = 0; s <= t; s++) {
          let dot = 0;
          for (let i = 0; i < d; i++) dot += q[base + t * d + i]! * k[base + s * d + i]!;
          scores[s] = dot * scale;
          if (scores[s]! > max) max = scores[s]!;
        }
        let sum = 0;
        for (let s = 0; s <= t; s++) {
          scores[s] = Math.exp(scores[s]! - max);
          sum += scores[s]!;
        }
        for (let s = 0; s <= t; s++) {
          const p = scores[s]! / sum;
          for (let i = 0; i < d; i++) out[base + t * d + i]! += p * v[base + s * d + i]!;
        }
      }
    }
    return out;
  }
}
