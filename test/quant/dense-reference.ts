/** Dense float64 matrix products written out, the reference the fast rotations are checked against. */

/** A [n, k] · B [k, m], row-major. */
export function matmul(
  A: ArrayLike<number>,
  B: ArrayLike<number>,
  n: number,
  k: number,
  m: number,
): Float64Array {
  const C = new Float64Array(n * m);
  for (let i = 0; i < n; i++)
    for (let t = 0; t < k; t++) for (let j = 0; j < m; j++) C[i * m + j]! += A[i * k + t]! * B[t * m + j]!;
  return C;
}

/** Aᵀ of a row-major [n, m] matrix. */
export function transpose(A: ArrayLike<number>, n: number, m: number): Float64Array {
  const T = new Float64Array(n * m);
  for (let i = 0; i < n; i++) for (let j = 0; j < m; j++) T[j * n + i] = A[i * m + j]!;
  return T;
}
