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
 * `out`, when given, receives the result (exactly its length) and is returned: callers reuse
 * buffers instead of allocating one per product (sequential calibration runs thousands).
 */

export interface ComputeEngine {
  readonly name: string;
  /** y[M,N] = x[M,K] · w[N,K]ᵀ — a linear layer with Hugging Face [out,in] weights. */
  linear(
    x: Float32Array,
    w: Float32Array,
    M: number,
    K: number,
    N: number,
    out?: Float32Array,
  ): Promise<Float32Array>;
  /**
   * The SwiGLU input half of a gated MLP (Shazeer 2020): silu(x·gateᵀ) ⊙ (x·upᵀ), [M,N],
   * with silu(z) = z·σ(z); gate and up are [N,K]. Fused so the activation runs on the engine too.
   */
  linearSwiGlu(
    x: Float32Array,
    gate: Float32Array,
    up: Float32Array,
    M: number,
    K: number,
    N: number,
    out?: Float32Array,
  ): Promise<Float32Array>;
  /** c[M,N] = a[K,M]ᵀ · b[K,N] — e.g. the Gram matrix XᵀX of calibration activations. */
  matmulTransA(a: Float32Array, b: Float32Array, K: number, M: number, N: number): Promise<Float32Array>;
  /**
   * Causal grouped-query attention over B windows of T positions. q is [B, T, heads·d],
   * k and v are [B, T, kvHeads·d]; query head h reads KV head floor(h / (heads / kvHeads)).
   * out[b, t, h] = Σ_{s<=t} softmax_s(scale · q[b,t,h]·k[b,s,kv(h)]) v[b,s,kv(h)], same layout as q;
   * `window` narrows s to t − window < s <= t and `softcap` caps the scaled scores.
   */
  causalAttention(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    shape: AttentionShape,
    out?: Float32Array,
  ): Promise<Float32Array>;
}

export interface AttentionShape {
  batch: number;
  seqLen: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  scale: number;
  /** Sliding window: key s is visible from query t iff t − s < window (Mistral, Gemma-2); absent: all s <= t. */
  window?: number;
  /** Scores become cap·tanh(score/cap) before the softmax (Gemma-2 attention logit soft-capping). */
  softcap?: number;
}
