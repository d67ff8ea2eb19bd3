/**
 * Randomized Hadamard transforms for incoherence processing (QuIP#, Tseng et al. 2024,
 * arXiv:2402.04396 §3; QuaRot, Ashkboos et al. 2024, arXiv:2404.00456 §3–4).
 *
 * An orthonormal Hadamard matrix H (entries ±1/√n, H Hᵀ = I) spreads every coordinate of
 * a vector over all n outputs, so a weight row or activation with a few large entries
 * becomes "incoherent" (max entry ≈ ‖x‖·√(log n / n) after random signs), which is what
 * shrinks the quantization grid's step. Multiplying by a random ±1 diagonal first makes the
 * transform random while keeping it orthogonal and fast (QuIP# Lemma 3.1: the randomized
 * Hadamard transform is incoherent with high probability):
 *
 *   Q = diag(s) · K / √n,   K = H_{2^k} ⊗ M_m,   n = 2^k · m,   s ∈ {−1, +1}^n seeded
 *
 * (the convention of QuaRot's `random_hadamard_matrix`: signs first, then the Hadamard).
 * A row vector r is rotated as r Q = ((r ∘ s) K) / √n in O(n (k + m)) operations:
 *   - H_{2^k}: Sylvester's matrix, H[i][j] = (−1)^popcount(i & j), applied by the fast
 *     Walsh–Hadamard transform (k butterfly stages, O(n log n));
 *   - M_m: for n = 2^k exactly, m = 1. Otherwise the smallest m = odd(n)·2^j dividing n for
 *     which a Hadamard matrix of order m can be *constructed* is used, as QuaRot's
 *     `get_hadK` does with its tables for 12, 20, 28, 36, 40, 52, 60, 108, 140, 156, 172:
 *     Paley I (q prime, q ≡ 3 mod 4, order q + 1: 12, 20, 24, 32, 44, 48, 60, ...) and
 *     Paley II (q prime, q ≡ 1 mod 4, order 2(q + 1): 12, 28, 36, 60, 76, 108, ...).
 *   - Fallback when no such m exists (e.g. 172 = 4·43: a Hadamard matrix of order 172
 *     exists but only from a Williamson-type search, not from Paley; 52 needs GF(25)):
 *     M is a Haar-random orthogonal matrix of the odd part o of n (QR of a seeded Gaussian
 *     matrix, Mezzadri 2007) and K = H_{2^e} ⊗ M_o. This keeps Q exactly orthogonal (so
 *     every invariance argument holds unchanged) and dense: every output mixes every input,
 *     with entries of typical size 1/√n — the incoherence QuIP (Chee et al. 2023,
 *     arXiv:2307.13304 §4) obtains from random orthogonal Kronecker factors. A block-
 *     diagonal Hadamard over power-of-two blocks would also be orthogonal, but it never
 *     mixes coordinates across blocks (172 would split into 43 blocks of 4), so an outlier
 *     would stay concentrated in its block: it is not incoherence processing.
 */
import { UsageError } from '../errors.js';

export type Rows = Float32Array | Float64Array;

const isPowerOfTwo = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

/**
 * Normalized fast Walsh–Hadamard transform, in place, of the n = 2^k values
 * x[offset + i·stride], i < n: x ← x · H_n / √n with Sylvester's H_n (symmetric, so also
 * H_n x). Each of the k stages applies the butterfly (a, b) → (a + b, a − b) of
 * H_{2n} = [[H_n, H_n], [H_n, −H_n]].
 */
export function fwht(x: Rows, n = x.length, offset = 0, stride = 1): void {
  if (!isPowerOfTwo(n))
    throw new UsageError('Walsh–Hadamard transform length must be a power of two', { got: String(n) });
  for (let h = 1; h < n; h *= 2) {
    for (let i = 0; i < n; i += 2 * h) {
      for (let j = i; j < i + h; j++) {
        const p = offset + j * stride;
        const q = p + h * stride;
        const a = x[p]!;
        const b = x[q]!;
        x[p] = a + b;
        x[q] = a - b;
      }
    }
  }
  const norm = 1 / Math.sqrt(n);
  for (let i = 0; i < n; i++) x[offset + i * stride]! *= norm;
}

function isPrime(q: number): boolean {
  if (q < 2) return false;
  for (let d = 2; d * d <= q; d++) if (q % d === 0) return false;
  return true;
}

/** Legendre symbol χ(a) over GF(q), q an odd prime: 0, +1 (quadratic residue) or −1. */
function legendreTable(q: number): Int8Array {
  const chi = new Int8Array(q).fill(-1);
  chi[0] = 0;
  for (let x = 1; x < q; x++) chi[(x * x) % q] = 1;
  return chi;
}

/** Jacobsthal matrix Q[i][j] = χ(j − i) of GF(q), bordered: C = [[0, 1ᵀ], [ε·1, Q]], order q + 1. */
function borderedJacobsthal(q: number, epsilon: 1 | -1): Int8Array {
  const chi = legendreTable(q);
  const n = q + 1;
  const C = new Int8Array(n * n);
  for (let j = 1; j < n; j++) {
    C[j] = 1;
    C[j * n] = epsilon;
  }
  for (let i = 0; i < q; i++) for (let j = 0; j < q; j++) C[(i + 1) * n + (j + 1)] = chi[(j - i + q) % q]!;
  return C;
}

/**
 * A ±1 Hadamard matrix of order m (row-major, H Hᵀ = m I) from Paley's constructions, or
 * undefined if m is not of the form q + 1 (q ≡ 3 mod 4 prime) or 2(q + 1) (q ≡ 1 mod 4 prime).
 *   Paley I:  H = I + C with C = [[0, 1ᵀ], [−1, Q]] skew (Q is antisymmetric since χ(−1) = −1).
 *   Paley II: H = C ⊗ [[1, 1], [1, −1]] + I ⊗ [[1, −1], [−1, −1]] with C = [[0, 1ᵀ], [1, Q]]
 *             the symmetric conference matrix (C² = q I since χ(−1) = +1).
 */
export function paleyHadamard(m: number): Int8Array | undefined {
  const q1 = m - 1;
  if (q1 % 4 === 3 && isPrime(q1)) {
    const H = borderedJacobsthal(q1, -1);
    for (let i = 0; i < m; i++) H[i * m + i] = 1;
    return H;
  }
  const q2 = m / 2 - 1;
  if (Number.isInteger(q2) && q2 % 4 === 1 && isPrime(q2)) {
    const c = q2 + 1;
    const C = borderedJacobsthal(q2, 1);
    const H = new Int8Array(m * m);
    for (let i = 0; i < c; i++) {
      for (let j = 0; j < c; j++) {
        const v = C[i * c + j]!;
        // Block (i, j) of size 2×2: v·[[1, 1], [1, −1]] off the diagonal, [[1, −1], [−1, −1]] on it.
        const [a, b, d, e] = i === j ? [1, -1, -1, -1] : [v, v, v, -v];
        H[2 * i * m + 2 * j] = a;
        H[2 * i * m + 2 * j + 1] = b;
        H[(2 * i + 1) * m + 2 * j] = d;
        H[(2 * i + 1) * m + 2 * j + 1] = e;
      }
    }
    return H;
  }
  return undefined;
}

export type HadamardKind = 'sylvester' | 'paley' | 'random-orthogonal';

/** How a size n is factored: n = pow2 · m, with the kind of the m×m factor. */
export interface HadamardPlan {
  n: number;
  pow2: number;
  m: number;
  kind: HadamardKind;
}

/**
 * Largest dense factor M_m: it costs m multiply-adds per element (QuaRot's largest table
 * entry is 172). Without the cap, 11008 = 2 · 5504 would pick Paley I of order 5504.
 */
export const MAX_DENSE_FACTOR = 256;

export function planHadamard(n: number): HadamardPlan {
  if (!Number.isInteger(n) || n < 1)
    throw new UsageError('rotation size must be a positive integer', { got: String(n) });
  let pow2 = 1;
  while ((n / pow2) % 2 === 0) pow2 *= 2;
  const odd = n / pow2;
  if (odd === 1) return { n, pow2: n, m: 1, kind: 'sylvester' };
  // Smallest m = odd·2^j with a Paley matrix: the dense factor costs m per element.
  for (let m = odd; m <= Math.min(n, MAX_DENSE_FACTOR); m *= 2) {
    if (paleyHadamard(m)) return { n, pow2: n / m, m, kind: 'paley' };
  }
  if (odd > MAX_DENSE_FACTOR) {
    throw new UsageError('no fast rotation of this size', {
      got: String(n),
      expected: `n = 2^k · m with an odd part m <= ${MAX_DENSE_FACTOR}`,
    });
  }
  return { n, pow2, m: odd, kind: 'random-orthogonal' };
}

/** Standard normal deviates from a uniform generator (Box–Muller). */
function gaussian(random: () => number): number {
  const u = 1 - random(); // (0, 1]
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * random());
}

/**
 * A Haar-distributed random orthogonal m×m matrix: Q of the QR factorization of a Gaussian
 * matrix with R's diagonal made positive (Mezzadri 2007, "How to generate random matrices
 * from the classical compact groups", §5). Gram–Schmidt produces exactly that Q (its R has a
 * positive diagonal by construction); it is run twice per column for orthogonality to
 * rounding precision. Rows of the result are the orthonormal vectors.
 */
export function randomOrthogonal(m: number, random: () => number): Float64Array {
  const A = Float64Array.from({ length: m * m }, () => gaussian(random));
  for (let i = 0; i < m; i++) {
    const vi = A.subarray(i * m, (i + 1) * m);
    for (let pass = 0; pass < 2; pass++) {
      for (let j = 0; j < i; j++) {
        const vj = A.subarray(j * m, (j + 1) * m);
        let dot = 0;
        for (let t = 0; t < m; t++) dot += vi[t]! * vj[t]!;
        for (let t = 0; t < m; t++) vi[t]! -= dot * vj[t]!;
      }
    }
    let norm = 0;
    for (let t = 0; t < m; t++) norm += vi[t]! * vi[t]!;
    norm = Math.sqrt(norm);
    for (let t = 0; t < m; t++) vi[t]! /= norm;
  }
  return A;
}

/**
 * Q = diag(s) · (H_{2^k} ⊗ M_m) / √n, applied to rows: r ← r Q (or r Qᵀ).
 * With r reshaped row-major to R (2^k × m), r (H ⊗ M) = vec(Hᵀ R M) = vec(H R M): a
 * Walsh–Hadamard transform down each of the m columns of R, then each row of R times M.
 */
export class RandomizedHadamard {
  readonly plan: HadamardPlan;
  /** The random ±1 diagonal. */
  readonly signs: Float64Array;
  /** M_m / √m (or the random orthogonal M_m), row-major; undefined when m = 1. */
  private readonly M?: Float64Array;
  private readonly scratch: Float64Array;

  /** `random` draws the signs (and the fallback's Gaussian matrix): one stream, reproducible. */
  constructor(
    readonly n: number,
    random: () => number,
    options: { signs?: boolean } = {},
  ) {
    this.plan = planHadamard(n);
    this.signs = Float64Array.from({ length: n }, () => (options.signs === false || random() < 0.5 ? 1 : -1));
    const { m, kind } = this.plan;
    if (kind === 'paley') {
      const H = paleyHadamard(m)!;
      const norm = 1 / Math.sqrt(m);
      this.M = Float64Array.from(H, (v) => v * norm);
    } else if (kind === 'random-orthogonal') {
      this.M = randomOrthogonal(m, random);
    }
    this.scratch = new Float64Array(Math.max(1, m));
  }

  /** Every row of `data` (rows × n, row-major) ← row · Q, computed in float64. */
  applyRows(data: Rows, rows: number): void {
    this.forEachRow(data, rows, false);
  }

  /** Every row ← row · Qᵀ (undoes applyRows). */
  applyRowsTransposed(data: Rows, rows: number): void {
    this.forEachRow(data, rows, true);
  }

  /** Q as a dense row-major n×n matrix (tests, small sizes). */
  matrix(): Float64Array {
    const Q = new Float64Array(this.n * this.n);
    for (let i = 0; i < this.n; i++) Q[i * this.n + i] = 1;
    this.applyRows(Q, this.n);
    return Q;
  }

  /** What quantization_config records about this rotation. */
  describe(): Record<string, unknown> {
    const { n, pow2, m, kind } = this.plan;
    return {
      size: n,
      factors: [
        pow2 > 1 || m === 1 ? `H${pow2}` : '',
        m > 1 ? `${kind === 'paley' ? 'Paley' : 'RandomOrthogonal'}${m}` : '',
      ]
        .filter(Boolean)
        .join(' x '),
    };
  }

  private forEachRow(data: Rows, rows: number, transposed: boolean): void {
    const { n, signs } = this;
    if (data.length < rows * n) {
      throw new UsageError('rotation input too short', {
        expected: `${rows} rows of ${n}`,
        got: `${data.length} values`,
      });
    }
    const row = new Float64Array(n);
    for (let r = 0; r < rows; r++) {
      const base = r * n;
      for (let i = 0; i < n; i++) row[i] = data[base + i]!;
      if (!transposed) for (let i = 0; i < n; i++) row[i]! *= signs[i]!;
      this.kronecker(row, transposed);
      if (transposed) for (let i = 0; i < n; i++) row[i]! *= signs[i]!;
      for (let i = 0; i < n; i++) data[base + i] = row[i]!;
    }
  }

  /** row ← row · (H ⊗ M) (or (H ⊗ Mᵀ), as H is symmetric), both factors normalized. */
  private kronecker(row: Float64Array, transposed: boolean): void {
    const { pow2, m } = this.plan;
    if (pow2 > 1) for (let b = 0; b < m; b++) fwht(row, pow2, b, m);
    const M = this.M;
    if (!M) return;
    const seg = this.scratch;
    // Element (i, j) of M or of Mᵀ: M[i·si + j·sj].
    const si = transposed ? 1 : m;
    const sj = transposed ? m : 1;
    for (let a = 0; a < pow2; a++) {
      const base = a * m;
      // seg = R[a, :] · M, or R[a, :] · Mᵀ.
      for (let j = 0; j < m; j++) {
        let acc = 0;
        for (let i = 0; i < m; i++) acc += row[base + i]! * M[i * si + j * sj]!;
        seg[j] = acc;
      }
      for (let j = 0; j < m; j++) row[base + j] = seg[j]!;
    }
  }
}
