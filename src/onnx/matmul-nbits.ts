/**
 * onnxruntime's com.microsoft::MatMulNBits weight layout, built from a method's own codes.
 *
 * Op spec (onnxruntime docs/ContribOperators.md, MatMulNBits): Y = A · dequant(B)ᵀ with
 *   dequant(B)[n, k] = (q[n, k] − zero[n, ⌊k / block_size⌋]) · scales[n, ⌊k / block_size⌋]
 *   B            uint8 [N, k_blocks, blob], k_blocks = ⌈K / block_size⌉, blob = block_size · bits / 8,
 *                codes packed LSB-first along K inside each block (4 bits: low nibble first)
 *   scales       same type as A, [N · k_blocks]
 *   zero_points  optional: uint8 [N, ⌈k_blocks · bits / 8⌉] packed like B, or float [N · k_blocks];
 *                absent means 2^(bits−1)
 *   attributes   K, N, bits ∈ {2, 4, 8} (onnxruntime 1.30 CPU rejects 3, 5, 6, 7),
 *                block_size a power of two ≥ 16
 *   g_idx        deprecated, so act-order is expressed by permuting A's columns instead.
 *
 * ptqkit's grids map onto it without changing a single code or scale:
 *  - container bits: the exported dtype's width (q2, q4, q8), which must hold the codes; by
 *    default the narrowest one (3 → 4, 5..7 → 8): a code q ∈ [0, 2^b) is a valid code of any
 *    wider container, and an explicit zero point keeps w = s · (q − z) exact (the default zero
 *    2^(c−1) is only right when b = c and the grid is symmetric);
 *  - block size: a group of G columns becomes G / bs blocks that repeat its scale and zero,
 *    with bs the largest power of two ≥ 16 dividing G; a single group per row (per-channel,
 *    per-tensor) becomes one block of the next power of two ≥ K, zero-padded past K;
 *  - act-order (g_idx): columns are sorted by group, which makes every group contiguous; the
 *    graph gathers A's columns in the same order, so A·Wᵀ is unchanged;
 *  - column scales (SINQ): w = s·(q − z)·t[c] is A·diag(t) times the plain grid, so the graph
 *    multiplies A by t first;
 *  - float zero points (HQQ): passed as float zero_points (supported for 2 and 4 bits).
 * A grid that cannot be expressed exactly (a group size with no such block size, float zeros
 * at 8 bits) is reported with the reason; the exporter then keeps that layer in float.
 */
import { packBits } from '../formats/bitpack.js';
import { IntGrid } from '../formats/grid.js';
import { type QuantizedTensor, unpackCodes } from '../formats/quantized-tensor.js';

/** Bit widths onnxruntime's MatMulNBits kernels accept. */
export const MATMUL_NBITS_BITS = [2, 4, 8] as const;
export const MIN_BLOCK_SIZE = 16;

export interface MatMulNBitsWeight {
  K: number;
  N: number;
  bits: number;
  blockSize: number;
  /** uint8 [N, kBlocks, blockSize · bits / 8]. */
  B: Uint8Array;
  kBlocks: number;
  /** [N · kBlocks]. */
  scales: Float32Array;
  /** Packed uint8 [N, ⌈kBlocks · bits / 8⌉] or float [N · kBlocks]; absent = 2^(bits−1). */
  zeroPoints?: Uint8Array | Float32Array;
  /** A's columns in this order feed the packed K axis (act-order); absent = identity. */
  inputPermutation?: Int32Array;
  /** Per-input-column factor applied to A before the product (SINQ column scales). */
  inputScales?: Float32Array;
}

export type MatMulNBitsPlan =
  | { ok: true; bits: number; blockSize: number; permutation?: Int32Array }
  | { ok: false; reason: string };

const nextPow2 = (n: number) => 2 ** Math.ceil(Math.log2(Math.max(n, 1)));

/** Smallest supported container of `bits`-bit codes. */
export function containerBits(bits: number): number | undefined {
  return MATMUL_NBITS_BITS.find((c) => c >= bits);
}

/** Columns sharing one (scale, zero) pair along K. */
function groupColumns(q: QuantizedTensor): number {
  return new IntGrid(q.spec).blockShape(q.rows, q.cols)[1];
}

/**
 * Decide how `q` maps to a MatMulNBits of `bits`-bit codes (2, 4 or 8; codes of fewer bits
 * are stored in it unchanged, with explicit zero points), or why it cannot.
 */
export function planMatMulNBits(q: QuantizedTensor, bits: number): MatMulNBitsPlan {
  const format = q.spec.format ?? 'int';
  if (format !== 'int') return { ok: false, reason: `${format} codes are not integers on a uniform grid` };
  if (!(MATMUL_NBITS_BITS as readonly number[]).includes(bits)) {
    return { ok: false, reason: `MatMulNBits takes ${MATMUL_NBITS_BITS.join(', ')}-bit codes, not ${bits}` };
  }
  if (q.spec.bits > bits) return { ok: false, reason: `${q.spec.bits}-bit codes do not fit ${bits} bits` };
  if (q.spec.zeroPoint === 'float' && !q.spec.symmetric && bits === 8) {
    return { ok: false, reason: 'float zero points are supported by MatMulNBits for 2 and 4 bits only' };
  }
  const G = groupColumns(q);
  let blockSize: number;
  if (G === q.cols) {
    blockSize = Math.max(MIN_BLOCK_SIZE, nextPow2(G));
  } else {
    blockSize = G & -G; // largest power of two dividing G
    if (blockSize < MIN_BLOCK_SIZE) {
      return {
        ok: false,
        reason: `group size ${G} is not a multiple of a power of two >= ${MIN_BLOCK_SIZE}`,
      };
    }
  }
  if (!q.groupIndex) return { ok: true, bits, blockSize };
  const permutation = groupContiguousOrder(q.groupIndex, G);
  if (!permutation) return { ok: false, reason: `g_idx does not assign exactly ${G} columns to each group` };
  return { ok: true, bits, blockSize, permutation: isIdentity(permutation) ? undefined : permutation };
}

/**
 * Columns sorted by group (stable): position j of the result holds a column of group ⌊j / G⌋,
 * or undefined when the groups are not all of size G (then no order makes them contiguous blocks).
 */
export function groupContiguousOrder(groupIndex: Int32Array, G: number): Int32Array | undefined {
  const order = Int32Array.from(groupIndex.keys()).sort((a, b) => groupIndex[a]! - groupIndex[b]! || a - b);
  for (let j = 0; j < order.length; j++) if (groupIndex[order[j]!] !== Math.floor(j / G)) return undefined;
  return order;
}

function isIdentity(p: Int32Array): boolean {
  return p.every((v, i) => v === i);
}

/** Build the MatMulNBits tensors of `q` following `plan` (from planMatMulNBits). */
export function encodeMatMulNBits(
  q: QuantizedTensor,
  plan: Extract<MatMulNBitsPlan, { ok: true }>,
): MatMulNBitsWeight {
  const { rows: N, cols: K } = q;
  const { bits, blockSize, permutation } = plan;
  const G = groupColumns(q);
  const [blockRows] = new IntGrid(q.spec).blockShape(q.rows, q.cols);
  const numGroups = K / G;
  const kBlocks = Math.ceil(K / blockSize);
  const paddedK = kBlocks * blockSize;
  const rowBytes = (paddedK * bits) / 8;

  const codes = unpackCodes(q);
  const B = new Uint8Array(N * rowBytes);
  const row = new Uint8Array(paddedK);
  for (let n = 0; n < N; n++) {
    // Sorted column j of the packed row holds original column permutation[j] (identity without act-order).
    for (let j = 0; j < K; j++) row[j] = codes[n * K + (permutation ? permutation[j]! : j)]!;
    B.set(packBits(row, bits), n * rowBytes);
  }

  // Block b of row n covers sorted columns [b·bs, (b+1)·bs), all in group ⌊b·bs / G⌋.
  const scales = new Float32Array(N * kBlocks);
  const zeros = new Float32Array(N * kBlocks);
  for (let n = 0; n < N; n++) {
    const paramRow = Math.floor(n / blockRows) * numGroups;
    for (let b = 0; b < kBlocks; b++) {
      const g = Math.min(numGroups - 1, Math.floor((b * blockSize) / G));
      scales[n * kBlocks + b] = q.scales[paramRow + g]!;
      zeros[n * kBlocks + b] = q.zeros[paramRow + g]!;
    }
  }

  let zeroPoints: Uint8Array | Float32Array | undefined;
  const defaultZero = 2 ** (bits - 1);
  if (q.spec.zeroPoint === 'float' && !q.spec.symmetric) {
    zeroPoints = zeros;
  } else if (zeros.some((z) => z !== defaultZero)) {
    const zeroRowBytes = Math.ceil((kBlocks * bits) / 8);
    zeroPoints = new Uint8Array(N * zeroRowBytes);
    for (let n = 0; n < N; n++) {
      zeroPoints.set(packBits(zeros.subarray(n * kBlocks, (n + 1) * kBlocks), bits), n * zeroRowBytes);
    }
  }

  return {
    K,
    N,
    bits,
    blockSize,
    B,
    kBlocks,
    scales,
    zeroPoints,
    inputPermutation: permutation,
    inputScales:
      q.columnScales &&
      (permutation ? Float32Array.from(permutation, (c) => q.columnScales![c]!) : q.columnScales),
  };
}

/** Bytes stored for one MatMulNBits weight (B, scales, zero points, permutation, column scales). */
export function matMulNBitsBytes(w: MatMulNBitsWeight): number {
  return (
    w.B.byteLength +
    w.scales.byteLength +
    (w.zeroPoints?.byteLength ?? 0) +
    (w.inputPermutation ? w.K * 8 : 0) +
    (w.inputScales?.byteLength ?? 0)
  );
}
