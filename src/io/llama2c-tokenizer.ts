/**
 * llama2.c `tokenizer.bin`: int32 max_token_length, then for each of vocab_size tokens
 * float32 score, int32 byte length, bytes.
 *
 * Encoding reproduces run.c's `encode(t, text, bos=1, eos=0)`: BOS, a dummy-prefix " " token
 * (non-empty text), each UTF-8 code point as its token or as byte tokens (id = byte + 3),
 * then repeatedly the adjacent pair whose concatenation is a token with the highest score is
 * merged (ties: leftmost). run.c rescans all pairs per merge (O(n²)); here a priority queue
 * over a linked list of symbols, ordered by (score desc, position asc) with stale entries
 * skipped, performs the same merges in the same order in O(n log n).
 */
import { open } from 'node:fs/promises';
import { FileError, FormatError } from '../errors.js';
import {
  CODE_POINTS,
  cutPieces,
  type EncodeOptions,
  IdList,
  innerPairs,
  PIECE_SIZES,
  type TextTokenizer,
} from './tokenizer.js';

const BOS = 1;
const BYTE_TOKEN_OFFSET = 3;

export class Llama2cTokenizer implements TextTokenizer {
  readonly bosId = BOS;
  private readonly ids = new Map<string, number>();

  private constructor(
    private readonly pieces: string[],
    private readonly scores: Float32Array,
  ) {
    // run.c's str_lookup returns the first match in sorted order; keep the first id of duplicates.
    pieces.forEach((p, i) => {
      if (!this.ids.has(p)) this.ids.set(p, i);
    });
  }

  get vocabSize(): number {
    return this.pieces.length;
  }

  /** Pieces (spaces stored as ' ', bytes as `<0xXX>`) and their merge scores, for format converters. */
  vocabulary(): { pieces: readonly string[]; scores: Float32Array } {
    return { pieces: this.pieces, scores: this.scores };
  }

  static async load(file: string, vocabSize: number): Promise<Llama2cTokenizer> {
    const bytes = await readBounded(file, vocabSize);
    return Llama2cTokenizer.fromBytes(bytes, vocabSize, file);
  }

  /**
   * Parse the bytes of a tokenizer.bin for a model of `vocabSize` tokens. Every length is
   * checked against the remaining bytes and against the file's own max_token_length.
   */
  static fromBytes(bytes: Uint8Array, vocabSize: number, file: string): Llama2cTokenizer {
    if (bytes.length < 4)
      throw new FormatError('tokenizer truncated', {
        file,
        offset: 0,
        expected: 'a 4-byte max_token_length',
        got: `${bytes.length} bytes`,
      });
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const maxTokenLength = view.getInt32(0, true);
    checkMaxTokenLength(maxTokenLength, file);
    // At least 8 bytes per token: refuse a vocabulary the file cannot hold before allocating for it.
    if (vocabSize > (bytes.length - 4) / 8) {
      throw new FormatError('tokenizer truncated', {
        file,
        offset: bytes.length,
        expected: `${vocabSize} tokens (>= ${4 + 8 * vocabSize} bytes)`,
        got: `${bytes.length} bytes`,
      });
    }
    const pieces: string[] = [];
    const scores = new Float32Array(vocabSize);
    let offset = 4;
    const decoder = new TextDecoder('utf-8');
    for (let i = 0; i < vocabSize; i++) {
      if (offset + 8 > bytes.length) {
        throw new FormatError('tokenizer truncated', {
          file,
          offset,
          expected: `${vocabSize} tokens`,
          got: `${i}`,
        });
      }
      scores[i] = view.getFloat32(offset, true);
      if (!Number.isFinite(scores[i]!))
        throw new FormatError('token score is not finite', {
          file,
          field: `token ${i}`,
          offset,
          got: `${scores[i]}`,
        });
      const len = view.getInt32(offset + 4, true);
      offset += 8;
      if (len < 0 || len > maxTokenLength || offset + len > bytes.length) {
        throw new FormatError('invalid token length', {
          file,
          field: `token ${i}`,
          offset: offset - 4,
          expected: `0..${Math.min(maxTokenLength, bytes.length - offset)} (max_token_length and the bytes left)`,
          got: `${len}`,
        });
      }
      pieces.push(decoder.decode(bytes.subarray(offset, offset + len)));
      offset += len;
    }
    if (offset !== bytes.length) {
      throw new FormatError('unexpected bytes after the vocabulary', {
        file,
        offset,
        expected: `${vocabSize} tokens (the model's vocab_size)`,
      });
    }
    return new Llama2cTokenizer(pieces, scores);
  }

  /**
   * run.c's encode of the whole text. A long text is merged in pieces of at least
   * PIECE_SIZES.merge characters, cut between two code points x, y that are pieces themselves
   * (their symbols' strings are x and y) and that no piece holds next to each other: a merge
   * across the cut would make a piece holding "xy", so none happens, and the pieces give the
   * ids of the whole (`{ whole: true }`: one merge).
   */
  encode(text: string, options: EncodeOptions = {}): number[] {
    if (text.length === 0) return [BOS];
    const out = new IdList();
    out.push(BOS);
    const whole = ` ${text}`;
    let pieces = [whole];
    if (!options.whole && whole.length >= 2 * PIECE_SIZES.merge) {
      this.joinable ??= innerPairs(this.pieces);
      const joinable = this.joinable;
      const isPiece = (cp: number) => this.ids.has(String.fromCodePoint(cp));
      pieces = cutPieces(
        whole,
        PIECE_SIZES.merge,
        (pair) =>
          pair >= 0 &&
          !joinable.has(pair) &&
          isPiece(Math.floor(pair / CODE_POINTS)) &&
          isPiece(pair % CODE_POINTS),
      );
    }
    const encoder = new TextEncoder();
    for (const piece of pieces) {
      const symbols: number[] = [];
      for (const ch of piece) {
        const id = this.ids.get(ch);
        if (id !== undefined) symbols.push(id);
        else for (const b of encoder.encode(ch)) symbols.push(b + BYTE_TOKEN_OFFSET);
      }
      for (const id of this.merge(symbols)) out.push(id);
    }
    return out.toArray();
  }

  /** Pairs of code points that some piece holds next to each other. */
  private joinable: Set<number> | undefined;

  /** Highest-score-first pair merging over a doubly linked list (run.c semantics). */
  private merge(tokens: number[]): number[] {
    const n = tokens.length;
    const id = Int32Array.from(tokens);
    const next = Int32Array.from({ length: n }, (_, i) => (i + 1 < n ? i + 1 : -1));
    const prev = Int32Array.from({ length: n }, (_, i) => i - 1);
    const alive = new Uint8Array(n).fill(1);
    const heap = new PairHeap();
    const push = (left: number) => {
      const right = next[left]!;
      if (right < 0) return;
      const merged = this.ids.get(this.pieces[id[left]!]! + this.pieces[id[right]!]!);
      if (merged !== undefined)
        heap.push({ score: this.scores[merged]!, left, leftId: id[left]!, rightId: id[right]!, merged });
    };
    for (let i = 0; i < n - 1; i++) push(i);
    while (heap.size > 0) {
      const c = heap.pop();
      const right = next[c.left]!;
      // Skip pairs that a previous merge changed.
      if (!alive[c.left] || right < 0 || id[c.left] !== c.leftId || id[right] !== c.rightId) continue;
      id[c.left] = c.merged;
      alive[right] = 0;
      next[c.left] = next[right]!;
      if (next[right]! >= 0) prev[next[right]!] = c.left;
      if (prev[c.left]! >= 0) push(prev[c.left]!);
      push(c.left);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0; i = next[i]!) out.push(id[i]!);
    return out;
  }

  decode(ids: readonly number[]): string {
    const bytes: number[] = [];
    const encoder = new TextEncoder();
    ids.forEach((token, i) => {
      if (token === BOS) return;
      let piece = this.pieces[token] ?? '';
      // run.c: after BOS the leading space of the first piece is the dummy prefix.
      if (i > 0 && ids[i - 1] === BOS && piece.startsWith(' ')) piece = piece.slice(1);
      const byte = /^<0x([0-9A-Fa-f]{2})>$/.exec(piece);
      if (byte) bytes.push(Number.parseInt(byte[1]!, 16));
      else bytes.push(...encoder.encode(piece));
    });
    return new TextDecoder().decode(Uint8Array.from(bytes));
  }
}

/** run.c allocates 2·max_token_length + 3 bytes per merge candidate: a few KiB at most in practice. */
const MAX_TOKEN_LENGTH = 1 << 16;

function checkMaxTokenLength(maxTokenLength: number, file: string): void {
  if (!(maxTokenLength > 0 && maxTokenLength <= MAX_TOKEN_LENGTH)) {
    throw new FormatError('invalid max_token_length', {
      file,
      offset: 0,
      expected: `1..${MAX_TOKEN_LENGTH}`,
      got: `${maxTokenLength}`,
    });
  }
}

/**
 * Read the file only if its size fits `vocabSize` tokens of at most max_token_length bytes
 * (read first, 4 bytes): a huge file passed as --tokenizer is refused without reading it.
 */
async function readBounded(file: string, vocabSize: number): Promise<Uint8Array> {
  const handle = await open(file, 'r').catch((e: NodeJS.ErrnoException) => {
    throw new FileError('cannot read the llama2.c tokenizer', {
      file,
      got: e.code,
      hint: 'pass --tokenizer <tokenizer.bin>',
    });
  });
  try {
    const { size } = await handle.stat();
    const head = new Uint8Array(4);
    const { bytesRead } = await handle.read(head, 0, 4, 0);
    if (bytesRead === 4) {
      const maxTokenLength = new DataView(head.buffer).getInt32(0, true);
      checkMaxTokenLength(maxTokenLength, file);
      const limit = 4 + vocabSize * (8 + maxTokenLength);
      if (size > limit) {
        throw new FormatError('unexpected bytes after the vocabulary', {
          file,
          offset: limit,
          expected: `<= ${limit} bytes for ${vocabSize} tokens of <= ${maxTokenLength} bytes`,
          got: `${size}`,
        });
      }
    }
    const bytes = new Uint8Array(size);
    const read = await handle.read(bytes, 0, size, 0);
    return bytes.subarray(0, read.bytesRead);
  } catch (e) {
    if (e instanceof FormatError) throw e;
    throw new FileError(`cannot read the llama2.c tokenizer: ${(e as Error).message}`, { file });
  } finally {
    await handle.close();
  }
}

interface Candidate {
  score: number;
  /** Position of the left symbol: ties go to the leftmost pair, as run.c's strict '>' scan does. */
  left: number;
  leftId: number;
  rightId: number;
  merged: number;
}

/** Binary max-heap on (score, then smaller position). */
class PairHeap {
  private readonly items: Candidate[] = [];

  get size(): number {
    return this.items.length;
  }

  private static before(a: Candidate, b: Candidate): boolean {
    return a.score > b.score || (a.score === b.score && a.left < b.left);
  }

  push(c: Candidate): void {
    const h = this.items;
    let i = h.length;
    h.push(c);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!PairHeap.before(c, h[parent]!)) break;
      h[i] = h[parent]!;
      i = parent;
    }
    h[i] = c;
  }

  pop(): Candidate {
    const h = this.items;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= h.length) break;
        const c = l + 1 < h.length && PairHeap.before(h[l + 1]!, h[l]!) ? l + 1 : l;
        if (!PairHeap.before(h[c]!, last)) break;
        h[i] = h[c]!;
        i = c;
      }
      h[i] = last;
    }
    return top;
  }
}
