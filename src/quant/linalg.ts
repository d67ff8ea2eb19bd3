/**
 * Dense float64 linear algebra for calibrated methods (GPTQ's inverse Hessian).
 * Matrices are row-major n×n Float64Arrays.
 */
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
