/**
 * Dense float64 linear algebra for calibrated methods (GPTQ's inverse Hessian).
 * Matrices are row-major n×n Float64Arrays.
 */
import type { ComputeEngine } from '../compute/engine.js';
import { profiled } from '../compute/profile.js';
import { PtqError } from '../errors.js';

export class NotPositiveDefiniteError extends PtqError {}

/** In-place lower Cholesky factor: A = L Lᵀ, upper triangle zeroed. */
export function choleskyLower(A: Float64Array, n: number): Float64Array {
  for (let j = 0; j < n; j++) {
    const rowJ = j * n;
    let d = A[rowJ + j]!;
    for (let k = 0; k < j; k++) d -= A[rowJ + k]! * A[rowJ + k]!;
    if (!(d > 0)) throw new NotPositiveDefiniteError(`matrix is not positive definite (pivot ${j} = ${d})`);
    const ljj = Math.sqrt(d);
    A[rowJ + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      const rowI = i * n;
      let s = A[rowI + j]!;
      for (let k = 0; k < j; k++) s -= A[rowI + k]! * A[rowJ + k]!;
      A[rowI + j] = s / ljj;
    }
    for (let k = j + 1; k < n; k++) A[rowJ + k] = 0;
  }
  return A;
}

/**
 * Upper-triangular U with H⁻¹ = Uᵀ U — what GPTQ calls `Hinv`
 * (torch: cholesky(cholesky_inverse(cholesky(H)), upper=True)).
 *
 * Computed with one factorization: with P the reversal permutation, chol(P H P) = L' gives
 * H = R Rᵀ for the upper R = P L' P, hence H⁻¹ = R⁻ᵀ R⁻¹ and U = R⁻¹ (upper).
 * Cost n³/3 + n³/3 flops instead of three factorizations.
 */
export function inverseCholeskyUpper(H: Float64Array, n: number): Float64Array {
  const rev = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) rev[i * n + j] = H[(n - 1 - i) * n + (n - 1 - j)]!;
  choleskyLower(rev, n);
  // R[i][j] = L'[n-1-i][n-1-j], upper triangular.
  const R = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = i; j < n; j++) R[i * n + j] = rev[(n - 1 - i) * n + (n - 1 - j)]!;
  return invertUpper(R, n);
}

/**
 * Inverse of an upper-triangular matrix by back substitution, one row of U at a time:
 * (R U)[i][j] = 0 for j > i gives U[i][j] = −(Σ_{k>i} R[i][k] U[k][j]) / R[i][i]; the sum is
 * accumulated row-wise so every inner loop walks memory contiguously.
 */
export function invertUpper(R: Float64Array, n: number): Float64Array {
  const U = new Float64Array(n * n);
  for (let i = n - 1; i >= 0; i--) {
    const rowI = i * n;
    const rii = R[rowI + i]!;
    for (let k = i + 1; k < n; k++) {
      const r = R[rowI + k]!;
      if (r === 0) continue;
      const rowK = k * n;
      for (let j = k; j < n; j++) U[rowI + j]! += r * U[rowK + j]!;
    }
    for (let j = i + 1; j < n; j++) U[rowI + j] = -U[rowI + j]! / rii;
    U[rowI + i] = 1 / rii;
  }
  return U;
}

/** Below this size the plain float64 loops are as fast as the blocked engine path. */
const BLOCKED_MIN = 256;
const BLOCK = 128;

/** inverseCholeskyUpperInPlace on a copy: H is left as it was. */
export const inverseCholeskyUpperFast = (H: Float64Array, n: number, engine: ComputeEngine) =>
  inverseCholeskyUpperInPlace(H.slice(), n, engine);

/**
 * inverseCholeskyUpper with the O(n³) work as matrix products on the engine (float32, as the
 * GPTQ reference computes it), the O(n²·b) panel work in float64 loops, overwriting H with U
 * (returned): GPTQ's largest Hessian (intermediate², 254 MB at TinyLlama's 5632) then exists
 * once, as torch's in-place cholesky_inverse/cholesky do in the reference, instead of once per
 * step. The steps, each in place on the one n×n array:
 *  1. P H P for the reversal permutation P: element (i, j) of an n×n row-major matrix is flat
 *     index i·n + j, and (n−1−i)·n + n−1−j = n² − 1 − (i·n + j), so P H P is H's flat reversal;
 *  2. right-looking blocked Cholesky L' of it (trailing update A22 −= L21 L21ᵀ on the engine);
 *  3. the upper R = P L' P, again the flat reversal (L' is lower with its upper triangle zeroed,
 *     so R's lower triangle is zero);
 *  4. U = R⁻¹ by recursive blocks, each diagonal block inverted where it lies and
 *     U12 = −U11 R12 U22 written over R12.
 * Every element meets the same float operations in the same order as the copying version did
 * (test/output-hashes.test.ts pins GPTQ outputs): only where values are kept changed.
 */
export const inverseCholeskyUpperInPlace = profiled(
  'cholesky',
  async (H: Float64Array, n: number, engine: ComputeEngine): Promise<Float64Array> => {
    if (n <= BLOCKED_MIN) {
      H.set(inverseCholeskyUpper(H, n));
      return H;
    }
    H.reverse();
    await blockedCholeskyLower(H, n, engine);
    H.reverse();
    await invertUpperBlocked(H, n, 0, n, engine);
    return H;
  },
);

// Loops live in synchronous functions: in an async function V8 drops the loop's optimized
// (on-stack-replaced) code at the next await; measured 1.4-1.6x slower here.

async function blockedCholeskyLower(A: Float64Array, n: number, engine: ComputeEngine): Promise<void> {
  // One buffer for every trailing update (the first is (n − BLOCK)² floats, 121 MB at n = 5632)
  // instead of a new one per panel left for the garbage collector.
  const update = new Float32Array(Math.max(0, n - BLOCK) ** 2);
  for (let k = 0; k < n; k += BLOCK) {
    const b = Math.min(BLOCK, n - k);
    const m = n - k - b;
    const L21 = factorPanel(A, n, k, b);
    if (m === 0) break;
    // A22 −= L21 L21ᵀ (only the lower triangle is read later; the upper is cleared at the end).
    subtractLower(A, n, k + b, await engine.linear(L21, L21, m, b, m, update.subarray(0, m * m)), m);
  }
  for (let i = 0; i < n; i++) A.fill(0, i * n + i + 1, (i + 1) * n);
}

/**
 * Panel k of the right-looking factorization, in place: L11 = chol(A11), then
 * L21 = A21 L11⁻ᵀ by forward substitution on each row of A21; returns L21 as float32.
 */
function factorPanel(A: Float64Array, n: number, k: number, b: number): Float32Array {
  const A11 = new Float64Array(b * b);
  for (let i = 0; i < b; i++) for (let j = 0; j < b; j++) A11[i * b + j] = A[(k + i) * n + k + j]!;
  choleskyLower(A11, b);
  for (let i = 0; i < b; i++) for (let j = 0; j < b; j++) A[(k + i) * n + k + j] = A11[i * b + j]!;
  const m = n - k - b;
  // Column-oriented substitution (once x_t is final, x_j −= x_t · L11[j][t] for all j > t):
  // every x_j sees the same subtractions in the same order as row-oriented dot products, but
  // the inner loop has no dependency chain and reads L11ᵀ contiguously.
  const L11t = new Float64Array(b * b);
  for (let i = 0; i < b; i++) for (let j = 0; j <= i; j++) L11t[j * b + i] = A11[i * b + j]!;
  const L21 = new Float32Array(m * b);
  for (let r = 0; r < m; r++) {
    const base = (k + b + r) * n + k;
    for (let t = 0; t < b; t++) {
      const x = A[base + t]! / L11t[t * b + t]!;
      A[base + t] = x;
      L21[r * b + t] = x;
      const lt = t * b;
      for (let j = t + 1; j < b; j++) A[base + j]! -= x * L11t[lt + j]!;
    }
  }
  return L21;
}

/** A[k0 + i, k0 + j] −= update[i, j] for j <= i (update is m×m). */
function subtractLower(A: Float64Array, n: number, k0: number, update: Float32Array, m: number): void {
  for (let i = 0; i < m; i++) {
    const dst = (k0 + i) * n + k0;
    for (let j = 0; j <= i; j++) A[dst + j]! -= update[i * m + j]!;
  }
}

/**
 * The diagonal block M[r0:r0+size, r0:r0+size] (upper triangular R, stride n) replaced by R⁻¹:
 * [[R11, R12], [0, R22]]⁻¹ has U12 = −U11 R12 U22. The strict lower triangle stays zero.
 */
async function invertUpperBlocked(
  M: Float64Array,
  n: number,
  r0: number,
  size: number,
  engine: ComputeEngine,
): Promise<void> {
  if (size <= BLOCKED_MIN) {
    invertDiagonalBlock(M, n, r0, size);
    return;
  }
  const h = Math.floor(size / 2 / BLOCK) * BLOCK || Math.floor(size / 2);
  const m = size - h;
  await invertUpperBlocked(M, n, r0, h, engine);
  await invertUpperBlocked(M, n, r0 + h, m, engine);
  // T = R12 U22 (h×m) = linear(R12, U22ᵀ); U12 = −U11 T = −linear(U11, Tᵀ), both in float32.
  const T = await engine.linear(block32(M, n, r0, r0 + h, h, m), transposedBlock32(M, n, r0 + h, m), h, m, m);
  const U12 = await engine.linear(block32(M, n, r0, r0, h, h), transpose32(T, h, m), h, h, m);
  negateInto(M, n, r0, r0 + h, U12, h, m);
}

/** invertUpper of the diagonal block at r0 (a contiguous copy in, its upper triangle back). */
function invertDiagonalBlock(M: Float64Array, n: number, r0: number, size: number): void {
  const R = new Float64Array(size * size);
  for (let i = 0; i < size; i++) for (let j = 0; j < size; j++) R[i * size + j] = M[(r0 + i) * n + r0 + j]!;
  const U = invertUpper(R, size);
  for (let i = 0; i < size; i++) for (let j = i; j < size; j++) M[(r0 + i) * n + r0 + j] = U[i * size + j]!;
}

/** M[r0:r0+rows, c0:c0+cols] as float32, row-major. */
function block32(
  M: Float64Array,
  n: number,
  r0: number,
  c0: number,
  rows: number,
  cols: number,
): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[i * cols + j] = M[(r0 + i) * n + c0 + j]!;
  return out;
}

/** The diagonal block M[r0:r0+size, r0:r0+size] transposed, as float32. */
function transposedBlock32(M: Float64Array, n: number, r0: number, size: number): Float32Array {
  const out = new Float32Array(size * size);
  for (let i = 0; i < size; i++) for (let j = 0; j < size; j++) out[j * size + i] = M[(r0 + i) * n + r0 + j]!;
  return out;
}

/** M[r0:r0+rows, c0:c0+cols] = −B (B row-major rows×cols). */
function negateInto(
  M: Float64Array,
  n: number,
  r0: number,
  c0: number,
  B: Float32Array,
  rows: number,
  cols: number,
): void {
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) M[(r0 + i) * n + c0 + j] = -B[i * cols + j]!;
}

function transpose32(M: ArrayLike<number>, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = M[i * cols + j]!;
  return out;
}
