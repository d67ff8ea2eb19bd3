/**
 * The compute seam: every matrix product of ptqkit goes through a ComputeEngine.
 *
 * Two engines implement it:
 *  - OrtEngine: onnxruntime-node CPU kernels (MLAS; ~50-250 GFLOPS here, 20-50x plain JS),
 *    one tiny cached ONNX graph per operation, weights passed as inputs so the same
 *    session serves every layer and every quantized variant;
 *  - JsEngine: straightforward loops, the reference the fast engine is tested against.
 *
 * Shapes are row-major and given explicitly; buffers are never retained by the engine.
 */

export interface ComputeEngine {
  readonly name: string;
  /** y[M,N] = x[M,K] · w[N,K]ᵀ — a linear layer with Hugging Face [out,in] weights. */
  linear(x: Float32Array, w: Float32Array, M: number, K: number, N: number): Promise<Float32Array>;
  /** c[M,N] = a[K,M]ᵀ · b[K,N] — e.g. the Gram matrix XᵀX of calibration activations. */
  matmulTransA(a: Float32Array, b: Float32Array, K: number, M: number, N: number): Promise<Float32Array>;
  /**
   * Causal softmax attention of `batch` independent heads:
   * out[b,t] = Σ_{s<=t} softmax_s(scale · q[b,t]·k[b,s]) v[b,s], with q,k,v,out of shape [batch,T,d].
   */
  causalAttention(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    batch: number,
    T: number,
    d: number,
    scale: number,
  ): Promise<Float32Array>;
}
