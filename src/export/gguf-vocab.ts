/**
 * Tokenizer metadata for llama.cpp (tokenizer.ggml.*), from the tokenizer files a model ships.
 *
 * llama.cpp's "llama" vocabulary (LLAMA_VOCAB_TYPE_SPM, src/llama-vocab.cpp) tokenizes like
 * SentencePiece BPE and like llama2.c's run.c: prepend " " (add_space_prefix), spaces -> "▁",
 * split into UTF-8 characters, repeatedly merge the adjacent pair whose concatenation is the
 * token of highest score (ties: leftmost), then spell leftovers as <0xNN> byte tokens.
 *
 *  - llama2.c tokenizer.bin (stories260K): pieces and scores are the SentencePiece model's; run.c
 *    wrote "▁" as " ", so it is turned back. Types as convert_hf_to_gguf's sentencepiece path:
 *    <unk> UNKNOWN, <s> </s> CONTROL, <0xNN> BYTE, else NORMAL.
 *  - Hugging Face tokenizer.json with a "▁"-prefix BPE model (TinyStories-656K: Prepend/Replace
 *    normalizer, byte_fallback decoder, merges): llama.cpp's "gpt2" vocabulary would apply a
 *    byte-level pre-tokenizer this model was not trained with, so "llama" it is. The scores
 *    convert_hf_to_gguf's LlamaHfVocab writes (−1000 for every token) would make all merges tie;
 *    instead the token made by merge rank r gets score −r, so the highest-score-first merging
 *    replays the BPE merges in rank order (the pairs a BPE would merge are exactly those whose
 *    result has the best rank). Tokens no merge makes (characters, added tokens) get score 0:
 *    they are never the concatenation of two symbols. The tests compare llama.cpp's ids with
 *    the Hugging Face tokenizer's on real text.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, FormatError } from '../errors.js';
import { GgufFile, type GgufKv, kv } from '../io/gguf.js';
import { type LlamaVocab, readLlamaVocab } from '../io/gguf-tokenizer.js';
import type { ModelConfig } from '../model/config.js';

/** gguf-py constants.TokenType. */
export const TokenType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

/** The tokenizer.ggml.* fields the exporter writes: a "llama" vocabulary as gguf-tokenizer.ts reads it. */
export type GgufVocab = Omit<LlamaVocab, 'addSpacePrefix'>;

const BYTE_PIECE = /^<0x[0-9A-Fa-f]{2}>$/;

/** llama2.c tokenizer.bin: i32 max_token_length, then per token f32 score, i32 length, bytes. */
export async function vocabFromLlama2c(file: string, vocabSize: number): Promise<GgufVocab> {
  const bytes = await readFile(file);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tokens: string[] = [];
  const scores = new Float32Array(vocabSize);
  const types = new Int32Array(vocabSize);
  const utf8 = new TextDecoder();
  let at = 4;
  for (let i = 0; i < vocabSize; i++) {
    const len = at + 8 <= bytes.length ? view.getInt32(at + 4, true) : -1;
    if (len < 0 || at + 8 + len > bytes.length) {
      throw new FormatError('tokenizer truncated', {
        file,
        offset: at,
        expected: `${vocabSize} tokens`,
        got: `${i}`,
      });
    }
    scores[i] = view.getFloat32(at, true);
    const piece = utf8.decode(bytes.subarray(at + 8, at + 8 + len));
    at += 8 + len;
    // run.c's export wrote BOS/EOS as "\n<s>\n" / "\n</s>\n"; SentencePiece's pieces are <s> </s>.
    tokens.push(i > 0 && i <= 2 ? piece.trim() : piece.replaceAll(' ', '▁'));
    types[i] =
      i === 0
        ? TokenType.UNKNOWN
        : i <= 2
          ? TokenType.CONTROL
          : BYTE_PIECE.test(piece)
            ? TokenType.BYTE
            : TokenType.NORMAL;
  }
  return { tokens, scores, types, bos: 1, eos: 2, unk: 0, addBos: true };
}

interface TokenizerJson {
  model?: {
    type?: string;
    vocab?: Record<string, number>;
    merges?: (string | [string, string])[];
    unk_token?: string;
  };
  added_tokens?: { id: number; content: string; special?: boolean }[];
  normalizer?: unknown;
}

/** Hugging Face tokenizer.json of a "▁"-style BPE (see the header) as a "llama" vocabulary. */
export async function vocabFromTokenizerJson(dir: string, config: ModelConfig): Promise<GgufVocab> {
  const file = path.join(dir, 'tokenizer.json');
  const json = JSON.parse(await readFile(file, 'utf8')) as TokenizerJson;
  const model = json.model;
  if (model?.type !== 'BPE' || !model.vocab || !model.merges) {
    throw new ConfigError('only BPE tokenizer.json files with merges can be exported to GGUF', {
      file,
      field: 'model.type',
      got: String(model?.type),
    });
  }
  if (!JSON.stringify(json.normalizer ?? null).includes('▁')) {
    throw new ConfigError('the BPE tokenizer is not "▁"-prefixed (SentencePiece style)', {
      file,
      field: 'normalizer',
      hint: 'byte-level BPE (GPT-2 style) vocabularies are not exported yet',
    });
  }
  const ids = new Map<string, number>(Object.entries(model.vocab));
  for (const t of json.added_tokens ?? []) ids.set(t.content, t.id);
  const size = Math.max(config.vocabSize, Math.max(...ids.values()) + 1);
  const tokens: string[] = Array.from({ length: size }, (_, i) => `[PAD${i}]`);
  const types = new Int32Array(size).fill(TokenType.UNUSED);
  const scores = new Float32Array(size);
  for (const [piece, id] of ids) {
    tokens[id] = piece;
    types[id] = BYTE_PIECE.test(piece) ? TokenType.BYTE : TokenType.NORMAL;
  }
  model.merges.forEach((m, rank) => {
    const [a, b] = Array.isArray(m) ? m : (m.split(' ') as [string, string]);
    const id = ids.get(a + b);
    if (id !== undefined && scores[id] === 0) scores[id] = -(rank + 1);
  });
  const unk = model.unk_token !== undefined ? ids.get(model.unk_token) : undefined;
  for (const t of json.added_tokens ?? []) {
    types[t.id] = t.id === unk ? TokenType.UNKNOWN : t.special ? TokenType.CONTROL : TokenType.USER_DEFINED;
  }
  const tokenizerConfig = await readFile(path.join(dir, 'tokenizer_config.json'), 'utf8')
    .then((t) => JSON.parse(t) as Record<string, unknown>)
    .catch(() => ({}) as Record<string, unknown>);
  const special = (key: string): number | undefined => {
    const v = tokenizerConfig[key];
    const content = typeof v === 'string' ? v : (v as { content?: string } | undefined)?.content;
    return content !== undefined ? ids.get(content) : undefined;
  };
  return {
    tokens: tokens.slice(0, config.vocabSize),
    scores: scores.slice(0, config.vocabSize),
    types: types.slice(0, config.vocabSize),
    bos: config.bosTokenId ?? special('bos_token'),
    eos: config.eosTokenId ?? special('eos_token'),
    unk,
    pad: special('pad_token'),
    addBos: tokenizerConfig.add_bos_token !== false,
  };
}

/** The "llama" vocabulary stored in a GGUF file (to re-export a GGUF input). */
export async function vocabFromGguf(file: string): Promise<GgufVocab> {
  const g = await GgufFile.open(file);
  try {
    return readLlamaVocab(g);
  } finally {
    await g.close();
  }
}

/** The tokenizer.ggml.* entries of a "llama" (SentencePiece-style) vocabulary. */
export function vocabMetadata(v: GgufVocab): GgufKv[] {
  const out: GgufKv[] = [
    kv.str('tokenizer.ggml.model', 'llama'),
    kv.str('tokenizer.ggml.pre', 'default'),
    kv.strings('tokenizer.ggml.tokens', v.tokens),
    kv.f32s('tokenizer.ggml.scores', v.scores),
    kv.i32s('tokenizer.ggml.token_type', v.types),
  ];
  if (v.bos !== undefined) out.push(kv.u32('tokenizer.ggml.bos_token_id', v.bos));
  if (v.eos !== undefined) out.push(kv.u32('tokenizer.ggml.eos_token_id', v.eos));
  if (v.unk !== undefined) out.push(kv.u32('tokenizer.ggml.unknown_token_id', v.unk));
  if (v.pad !== undefined) out.push(kv.u32('tokenizer.ggml.padding_token_id', v.pad));
  out.push(kv.bool('tokenizer.ggml.add_bos_token', v.addBos));
  out.push(kv.bool('tokenizer.ggml.add_eos_token', false));
  out.push(kv.bool('tokenizer.ggml.add_space_prefix', true));
  return out;
}
