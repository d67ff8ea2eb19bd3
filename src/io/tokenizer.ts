export interface EncodeOptions {
  /** Tokenize the whole text in one call, without pieces (slow and memory-hungry on long texts). */
  whole?: boolean;
}

/**
 * The one tokenizer interface the rest of ptqkit sees. Implementations: Hugging Face
 * tokenizer.json (through @huggingface/tokenizers) and llama2.c tokenizer.bin.
 */
export interface TextTokenizer {
  readonly vocabSize: number;
  readonly bosId: number | undefined;
  /**
   * Token ids of `text` exactly as the model's reference tokenizer gives them, BOS included when
   * it adds one. Long texts are tokenized in bounded pieces whose ids are those of one call
   * over the whole text; `{ whole: true }` makes that one call (the reference in tests).
   */
  encode(text: string, options?: EncodeOptions): number[];
  decode(ids: readonly number[]): string;
}

/**
 * Sizes of the pieces, in characters, read at each call. Tests make them small, so that short
 * strings are cut often.
 */
export const PIECE_SIZES = {
  /** Pre-tokenized characters per batch through a tokenizer.json's model. */
  batch: 1 << 16,
  /** A tokenizer.json's BPE words of twice this or more are cut into parts of at least this. */
  cut: 1 << 14,
  /** A tokenizer.json's sections of twice this or more are normalized in chunks of this. */
  normalize: 1 << 16,
  /** tokenizer.bin and GGUF texts of twice this or more are merged in pieces of at least this. */
  merge: 1 << 13,
};

/** Code points are below this: a pair of them is one safe integer, first · CODE_POINTS + second. */
export const CODE_POINTS = 0x110000;

/**
 * The pair of code points on either side of position `j` of `text` (the one ending at j - 1
 * and the one starting at j), or -1 when j splits a surrogate pair. Lone surrogates count as
 * code points of their own, as Array.from and for..of take them.
 */
export function pairAt(text: string, j: number): number {
  const c = text.charCodeAt(j);
  const b = text.charCodeAt(j - 1);
  if (c >= 0xdc00 && c <= 0xdfff && b >= 0xd800 && b <= 0xdbff) return -1;
  const second = text.codePointAt(j)!;
  let first = b;
  if (b >= 0xdc00 && b <= 0xdfff && j >= 2) {
    const a = text.charCodeAt(j - 2);
    if (a >= 0xd800 && a <= 0xdbff) first = text.codePointAt(j - 2)!;
  }
  return first * CODE_POINTS + second;
}

/** Every pair of consecutive code points inside `strings` (pairAt's encoding). */
export function innerPairs(strings: Iterable<string>): Set<number> {
  const pairs = new Set<number>();
  for (const s of strings) {
    let previous = -1;
    for (const ch of s) {
      const cp = ch.codePointAt(0)!;
      if (previous >= 0) pairs.add(previous * CODE_POINTS + cp);
      previous = cp;
    }
  }
  return pairs;
}

/**
 * `text` cut into pieces of at least `size` characters (the last one too), each cut at the first
 * position j past the minimum where `canCut(pairAt(text, j))`: for tokenizers whose merges
 * provably never join the code points of such a pair, the tokens of the pieces, concatenated,
 * are those of the whole text. One piece when no position qualifies.
 */
export function cutPieces(text: string, size: number, canCut: (pair: number) => boolean): string[] {
  const out: string[] = [];
  let start = 0;
  while (text.length - start >= 2 * size) {
    let j = start + size;
    const last = text.length - size;
    while (j <= last && !canCut(pairAt(text, j))) j++;
    if (j > last) break;
    out.push(text.slice(start, j));
    start = j;
  }
  out.push(start === 0 ? text : text.slice(start));
  return out;
}

/**
 * Ids in blocks of int32, made into one array at the end: a growing array of tens of millions
 * would leave each of its outgrown copies behind. An undefined id (a library with no unk
 * token for an unknown token) is kept as -1 and given back as undefined, for the caller to report.
 */
export class IdList {
  private readonly blocks: Int32Array[] = [];
  private block = new Int32Array(1 << 16);
  private used = 0;

  push(id: number | undefined): void {
    if (this.used === this.block.length) {
      this.blocks.push(this.block);
      this.block = new Int32Array(1 << 16);
      this.used = 0;
    }
    this.block[this.used++] = id ?? -1;
  }

  toArray(): number[] {
    return IdList.numbers(this.toInt32());
  }

  toInt32(): Int32Array {
    const out = new Int32Array(this.blocks.length * this.block.length + this.used);
    this.blocks.forEach((b, i) => {
      out.set(b, i * b.length);
    });
    out.set(this.block.subarray(0, this.used), this.blocks.length * this.block.length);
    return out;
  }

  /** int32 ids as an array of numbers, -1 as undefined. */
  static numbers(ids: Int32Array): number[] {
    const out = new Array<number>(ids.length);
    for (let i = 0; i < ids.length; i++) out[i] = ids[i]! >= 0 ? ids[i]! : (undefined as unknown as number);
    return out;
  }
}
