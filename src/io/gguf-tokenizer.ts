/**
 * The "llama" vocabulary of a GGUF file, tokenized as llama.cpp does (src/llama-vocab.cpp,
 * llm_tokenizer_spm_session): BOS when tokenizer.ggml.add_bos_token, " " prepended when
 * add_space_prefix, spaces escaped to "▁", the text split into UTF-8 characters, then the
 * adjacent pair whose concatenation is a token of highest score merged first (ties: leftmost
 * pair), until no pair is a token; a symbol that is not a token is spelled as <0xNN> byte
 * tokens (or the unknown token when the vocabulary has none).
 */
import { ConfigError } from '../errors.js';
import type { GgufFile } from './gguf.js';
import {
  cutPieces,
  type EncodeOptions,
  IdList,
  innerPairs,
  PIECE_SIZES,
  type TextTokenizer,
} from './tokenizer.js';

/** A GGUF file's "llama" vocabulary (tokenizer.ggml.*), with llama.cpp's defaults for absent keys. */
export interface LlamaVocab {
  tokens: string[];
  scores: Float32Array;
  /** gguf-py TokenType: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte. */
  types: Int32Array;
  bos?: number;
  eos?: number;
  unk?: number;
  pad?: number;
  addBos: boolean;
  addSpacePrefix: boolean;
}

export function readLlamaVocab(g: GgufFile): LlamaVocab {
  const model = g.get('tokenizer.ggml.model');
  if (model !== 'llama') {
    throw new ConfigError('only "llama" (SentencePiece-style) GGUF vocabularies are supported', {
      file: g.file,
      field: 'tokenizer.ggml.model',
      got: String(model),
    });
  }
  const tokens = g.get('tokenizer.ggml.tokens');
  if (!Array.isArray(tokens)) throw new ConfigError('missing tokenizer.ggml.tokens', { file: g.file });
  const num = (k: string) => {
    const v = g.get(k);
    return typeof v === 'number' ? v : undefined;
  };
  // Numeric arrays come as typed arrays (f32 scores, i32 types); a column of another length is ignored.
  const column = (k: string, fill: number): ArrayLike<number | bigint> => {
    const v = g.get(k);
    return ArrayBuffer.isView(v) && v.length === tokens.length
      ? v
      : new Array<number>(tokens.length).fill(fill);
  };
  return {
    tokens: tokens.map(String),
    scores: Float32Array.from(column('tokenizer.ggml.scores', 0), Number),
    types: Int32Array.from(column('tokenizer.ggml.token_type', 1), Number),
    bos: num('tokenizer.ggml.bos_token_id'),
    eos: num('tokenizer.ggml.eos_token_id'),
    unk: num('tokenizer.ggml.unknown_token_id'),
    pad: num('tokenizer.ggml.padding_token_id'),
    addBos: g.get('tokenizer.ggml.add_bos_token') !== false,
    addSpacePrefix: g.get('tokenizer.ggml.add_space_prefix') !== false,
  };
}

interface Pair {
  score: number;
  left: number;
  right: number;
  /** Byte length of the merged text: a stale pair no longer adds up to it (llama.cpp's check). */
  size: number;
  token: number;
}

/** Max-heap on (score, then smaller left index), llm_bigram_spm's comparator. */
function higher(a: Pair, b: Pair): boolean {
  return a.score > b.score || (a.score === b.score && a.left < b.left);
}

export class GgufTokenizer implements TextTokenizer {
  private readonly ids = new Map<string, number>();
  private readonly byteIds = new Map<number, number>();

  private constructor(
    private readonly tokens: string[],
    private readonly scores: number[],
    readonly bosId: number | undefined,
    private readonly addBos: boolean,
    private readonly addSpacePrefix: boolean,
    private readonly unkId: number | undefined,
  ) {
    tokens.forEach((t, i) => {
      if (!this.ids.has(t)) this.ids.set(t, i);
      const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(t);
      if (m) this.byteIds.set(Number.parseInt(m[1]!, 16), i);
    });
  }

  get vocabSize(): number {
    return this.tokens.length;
  }

  static fromGguf(g: GgufFile): GgufTokenizer {
    const v = readLlamaVocab(g);
    return new GgufTokenizer(v.tokens, Array.from(v.scores), v.bos, v.addBos, v.addSpacePrefix, v.unk);
  }

  /**
   * llama.cpp's tokenization of the whole text. A long text is merged in pieces of at least
   * PIECE_SIZES.merge characters, cut between code points x, y that no token holds next to each
   * other: a merge across the cut would make a token holding "xy", so none happens, and the
   * pieces give the ids of the whole (`{ whole: true }`: one merge).
   */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const out = new IdList();
    if (this.addBos && this.bosId !== undefined) out.push(this.bosId);
    if (text.length === 0) return out.toArray();
    const escaped = (this.addSpacePrefix ? ` ${text}` : text).replaceAll(' ', '▁');
    if (options.whole || escaped.length < 2 * PIECE_SIZES.merge) this.encodePiece(escaped, out);
    else {
      this.joinable ??= innerPairs(this.tokens);
      const joinable = this.joinable;
      for (const piece of cutPieces(escaped, PIECE_SIZES.merge, (pair) => pair >= 0 && !joinable.has(pair)))
        this.encodePiece(piece, out);
    }
    return out.toArray();
  }

  /** Pairs of code points that some token holds next to each other. */
  private joinable: Set<number> | undefined;

  /** Merge the characters of `escaped` and append their ids to `out`. */
  private encodePiece(escaped: string, out: IdList): void {
    const sym = Array.from(escaped); // UTF-8 characters (code points)
    const n = sym.length;
    const next = Int32Array.from({ length: n }, (_, i) => (i + 1 < n ? i + 1 : -1));
    const prev = Int32Array.from({ length: n }, (_, i) => i - 1);
    const bytes = (s: string) => Buffer.byteLength(s, 'utf8');
    const heap: Pair[] = [];
    const push = (p: Pair) => {
      let i = heap.length;
      heap.push(p);
      while (i > 0) {
        const parent = (i - 1) >> 1;
        if (!higher(p, heap[parent]!)) break;
        heap[i] = heap[parent]!;
        i = parent;
      }
      heap[i] = p;
    };
    const pop = (): Pair => {
      const top = heap[0]!;
      const last = heap.pop()!;
      if (heap.length > 0) {
        let i = 0;
        for (;;) {
          const l = 2 * i + 1;
          if (l >= heap.length) break;
          const c = l + 1 < heap.length && higher(heap[l + 1]!, heap[l]!) ? l + 1 : l;
          if (!higher(heap[c]!, last)) break;
          heap[i] = heap[c]!;
          i = c;
        }
        heap[i] = last;
      }
      return top;
    };
    const tryPair = (left: number) => {
      const right = left < 0 ? -1 : next[left]!;
      if (right < 0) return;
      const text = sym[left]! + sym[right]!;
      const token = this.ids.get(text);
      if (token !== undefined) push({ score: this.scores[token]!, left, right, size: bytes(text), token });
    };
    for (let i = 0; i + 1 < n; i++) tryPair(i);
    while (heap.length > 0) {
      const p = pop();
      const right = p.right;
      if (sym[p.left] === '' || sym[right] === '' || bytes(sym[p.left]!) + bytes(sym[right]!) !== p.size)
        continue;
      sym[p.left] = sym[p.left]! + sym[right]!;
      sym[right] = '';
      next[p.left] = next[right]!;
      if (next[right]! >= 0) prev[next[right]!] = p.left;
      tryPair(prev[p.left]!);
      tryPair(p.left);
    }
    for (let i = 0; i >= 0; i = next[i]!) {
      const id = this.ids.get(sym[i]!);
      if (id !== undefined) {
        out.push(id);
        continue;
      }
      for (const b of Buffer.from(sym[i]!, 'utf8')) {
        const byteId = this.byteIds.get(b);
        if (byteId === undefined && this.unkId === undefined) {
          throw new ConfigError('text has a character the vocabulary cannot spell', {
            got: JSON.stringify(sym[i]),
          });
        }
        out.push(byteId ?? this.unkId!);
      }
    }
  }

  decode(ids: readonly number[]): string {
    const bytes: number[] = [];
    for (const id of ids) {
      if (id === this.bosId) continue;
      const t = this.tokens[id] ?? '';
      const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(t);
      if (m) bytes.push(Number.parseInt(m[1]!, 16));
      else bytes.push(...Buffer.from(t.replaceAll('▁', ' '), 'utf8'));
    }
    const text = Buffer.from(bytes).toString('utf8');
    return this.addSpacePrefix && text.startsWith(' ') ? text.slice(1) : text;
  }
}
