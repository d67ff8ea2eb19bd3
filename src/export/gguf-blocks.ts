/**
 * A method's own codes and scales as ggml blocks, without re-quantizing.
 *
 * ptqkit stores w = s·(q − z) with b-bit codes q, one (s, z) per group of G input columns.
 * ggml's 32-weight blocks hold (ggml-common.h):
 *   Q8_0  x = d·c, c ∈ [−128, 127]        -> c = q − z          (sym b ≤ 8, asym b ≤ 7)
 *   Q5_0  x = d·(c − 16), c ∈ [0, 31]     -> c = q − z + 16     (sym b ≤ 5)
 *   Q4_0  x = d·(c − 8), c ∈ [0, 15]      -> c = q − z + 8      (sym b ≤ 4)
 *   Q5_1  x = d·c + m, c ∈ [0, 31]        -> c = q, m = −s·z    (b ≤ 5)
 *   Q4_1  x = d·c + m, c ∈ [0, 15]        -> c = q, m = −s·z    (b ≤ 4)
 * with d = s. A group of G = 32·k columns becomes k blocks repeating its (s, z); a per-channel
 * or per-tensor grid repeats its scale over the row. The result is exact when every s is an
 * f16 value and, for Q4_1/Q5_1, every m = −s·z is too (a symmetric z = 2^(b−1) always is;
 * an asymmetric integer z usually is not, then m is rounded to f16 and the shift is reported).
 * Act-order (g_idx), SINQ column scales and non-integer number formats have no block form.
 */
import { type GgmlType, rowBytes } from '../formats/ggml.js';
import { readF16, viaF16, writeF16 } from '../formats/ggml-math.js';
import { IntGrid } from '../formats/grid.js';
import { type QuantizedTensor, unpackCodes } from '../formats/quantized-tensor.js';

interface BlockMapping {
  /** Code offset added to q − z (symmetric types) or undefined for d·c + m types. */
  offset?: number;
  /** Largest allowed bits for symmetric / asymmetric grids (0 = not allowed). */
  maxBitsSym: number;
  maxBitsAsym: number;
  /** Byte layout writer of one block from 32 codes. */
  write(codes: Int32Array, d: number, m: number, y: Uint8Array, yo: number): void;
}

/** Nibble layout shared by Q4_0/Q4_1 (weight j low nibble, j + 16 high) and the low 4 bits of Q5. */
function nibbles(codes: Int32Array, y: Uint8Array, o: number): void {
  for (let j = 0; j < 16; j++) y[o + j] = (codes[j]! & 0xf) | ((codes[j + 16]! & 0xf) << 4);
}

function fifthBits(codes: Int32Array, y: Uint8Array, o: number): void {
  let qh = 0;
  for (let j = 0; j < 32; j++) qh |= ((codes[j]! >> 4) & 1) << j;
  new DataView(y.buffer, y.byteOffset).setUint32(o, qh >>> 0, true);
}

const MAPPINGS: Record<string, BlockMapping> = {
  Q8_0: {
    offset: 0,
    maxBitsSym: 8,
    maxBitsAsym: 7,
    write(c, d, _m, y, o) {
      writeF16(y, o, d);
      for (let j = 0; j < 32; j++) y[o + 2 + j] = c[j]! & 0xff;
    },
  },
  Q5_0: {
    offset: 16,
    maxBitsSym: 5,
    maxBitsAsym: 0,
    write(c, d, _m, y, o) {
      writeF16(y, o, d);
      fifthBits(c, y, o + 2);
      nibbles(c, y, o + 6);
    },
  },
  Q4_0: {
    offset: 8,
    maxBitsSym: 4,
    maxBitsAsym: 0,
    write(c, d, _m, y, o) {
      writeF16(y, o, d);
      nibbles(c, y, o + 2);
    },
  },
  Q5_1: {
    maxBitsSym: 5,
    maxBitsAsym: 5,
    write(c, d, m, y, o) {
      writeF16(y, o, d);
      writeF16(y, o + 2, m);
      fifthBits(c, y, o + 4);
      nibbles(c, y, o + 8);
    },
  },
  Q4_1: {
    maxBitsSym: 4,
    maxBitsAsym: 4,
    write(c, d, m, y, o) {
      writeF16(y, o, d);
      writeF16(y, o + 2, m);
      nibbles(c, y, o + 4);
    },
  },
};

export type CodeMapping =
  | {
      ok: true;
      /** Blocks in row-major [rows, cols/32] order (rows in `rowOrder`). */
      bytes: Uint8Array;
      /** Blocks whose m = −s·z was rounded to f16 (Q4_1/Q5_1 only). */
      inexactBlocks: number;
      blocks: number;
      /** Largest |w_block − w_ptq| caused by that rounding. */
      maxShift: number;
    }
  | { ok: false; reason: string };

/** Which ggml types can hold this tensor's codes exactly (in preference order). */
export function typesHoldingCodes(q: QuantizedTensor): string[] {
  return ['Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q8_0'].filter((name) => planReason(q, name) === undefined);
}

function planReason(q: QuantizedTensor, typeName: string): string | undefined {
  const m = MAPPINGS[typeName];
  if (!m) return `${typeName} blocks have no integer-code layout ptqkit maps into`;
  const format = q.spec.format ?? 'int';
  if (format !== 'int') return `${format} codes are not integers on a uniform grid`;
  if (q.columnScales) return 'per-column scales (SINQ) have no ggml block form';
  if (q.groupIndex?.some((g, c) => g !== Math.floor(c / groupColumns(q)))) {
    return 'act-order (g_idx) groups are not contiguous 32-column blocks';
  }
  const floatZero = !q.spec.symmetric && q.spec.zeroPoint === 'float';
  if (floatZero && m.offset !== undefined)
    return `float zero points need a d·c + m type (Q4_1/Q5_1), not ${typeName}`;
  const maxBits = q.spec.symmetric ? m.maxBitsSym : m.maxBitsAsym;
  if (q.spec.bits > maxBits) {
    return `${q.spec.bits}-bit ${q.spec.symmetric ? 'symmetric' : 'asymmetric'} codes do not fit ${typeName}`;
  }
  const g = groupColumns(q);
  if (g % 32 !== 0) return `groups of ${g} columns are not whole 32-weight blocks`;
  for (const s of q.scales) if (viaF16(s) !== s) return `scale ${s} is not an f16 value`;
  return undefined;
}

function groupColumns(q: QuantizedTensor): number {
  return new IntGrid(q.spec).blockShape(q.rows, q.cols)[1];
}

/**
 * The tensor's codes as `type` blocks, rows taken in `rowOrder` (new row r = stored row
 * rowOrder[r]; the Q/K permutation of the GGUF export), or why it cannot be done exactly.
 */
export function codesToBlocks(q: QuantizedTensor, type: GgmlType, rowOrder?: Int32Array): CodeMapping {
  const reason = planReason(q, type.name);
  if (reason) return { ok: false, reason };
  const m = MAPPINGS[type.name]!;
  const codes = unpackCodes(q);
  const [blockRows, g] = new IntGrid(q.spec).blockShape(q.rows, q.cols);
  const groups = q.cols / g;
  const blocksPerRow = q.cols / 32;
  const y = new Uint8Array(rowBytes(type, q.rows * q.cols));
  const c = new Int32Array(32);
  let inexact = 0;
  let maxShift = 0;
  for (let r = 0; r < q.rows; r++) {
    const src = rowOrder ? rowOrder[r]! : r;
    const paramRow = Math.floor(src / blockRows) * groups;
    for (let b = 0; b < blocksPerRow; b++) {
      const p = paramRow + Math.floor((b * 32) / g);
      const s = q.scales[p]!;
      const z = q.zeros[p]!;
      for (let j = 0; j < 32; j++) {
        const code = codes[src * q.cols + b * 32 + j]!;
        c[j] = m.offset === undefined ? code : code - z + m.offset;
      }
      let mv = 0;
      if (m.offset === undefined) {
        mv = -s * z;
        if (viaF16(mv) !== mv) {
          inexact++;
          maxShift = Math.max(maxShift, Math.abs(viaF16(mv) - mv));
        }
      }
      m.write(c, s, mv, y, (r * blocksPerRow + b) * type.typeSize);
    }
  }
  return { ok: true, bytes: y, inexactBlocks: inexact, blocks: q.rows * blocksPerRow, maxShift };
}

/** d of block `b` (for tests: the stored scale reads back as the method's scale). */
export const blockScale = (bytes: Uint8Array, type: GgmlType, b: number): number =>
  readF16(bytes, b * type.typeSize);
