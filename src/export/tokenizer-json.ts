/**
 * A llama2.c `tokenizer.bin` as the Hugging Face `tokenizer.json` of a Llama (SentencePiece
 * BPE) tokenizer, so transformers.js can tokenize text for models exported from llama2.c.
 *
 * llama2.c's run.c encodes: BOS, a dummy-prefix " ", every code point as its piece or as
 * UTF-8 byte pieces `<0xXX>`, then repeatedly merges the adjacent pair whose concatenation is
 * a piece with the highest score (leftmost on ties). The Hugging Face equivalent (the layout
 * of Llama-2's own tokenizer.json):
 *   normalizer      Prepend("▁") then Replace(" " -> "▁")       (the dummy prefix, spaces as ▁)
 *   pre_tokenizer   none: the whole text is one BPE word
 *   model           BPE, byte_fallback: merges (l, r) for every split of a piece into two
 *                   pieces, ranked by the merged piece's score (descending), which is
 *                   run.c's "highest score first"; BPE breaks rank ties leftmost as run.c does
 *   post_processor  <s> $A                                     (BOS once)
 *   decoder         Replace("▁" -> " "), ByteFallback, Fuse, Strip one leading space
 * Two merges of equal score compete by position in run.c but by rank here: with the scores
 * of SentencePiece vocabularies (distinct per piece) the token ids agree (tested on real text).
 */
import type { ModelConfig } from '../model/config.js';

const SPACE = '▁';
const BYTE_PIECE = /^<0x[0-9A-F]{2}>$/;

export interface HfTokenizerFiles {
  'tokenizer.json': unknown;
  'tokenizer_config.json': unknown;
  'special_tokens_map.json': unknown;
}

/** Special pieces of llama2.c's export script (tokenizer.py writes BOS/EOS as "\n<s>\n" / "\n</s>\n"). */
function specialName(piece: string, id: number, config: ModelConfig): string | undefined {
  if (id === config.bosTokenId || piece === '\n<s>\n') return '<s>';
  if (id === config.eosTokenId || piece === '\n</s>\n') return '</s>';
  if (piece === '<unk>') return '<unk>';
  return undefined;
}

export function llama2cTokenizerJson(
  vocabulary: { pieces: readonly string[]; scores: Float32Array },
  config: ModelConfig,
): HfTokenizerFiles {
  const { pieces, scores } = vocabulary;
  const vocab: Record<string, number> = {};
  const special: { id: number; content: string }[] = [];
  const mergeable = new Map<string, number>(); // piece (▁ for space) -> id, first id of duplicates as run.c
  pieces.forEach((raw, id) => {
    const name = specialName(raw, id, config);
    const piece = name ?? raw.replaceAll(' ', SPACE);
    if (piece in vocab) return;
    vocab[piece] = id;
    if (name) special.push({ id, content: name });
    else if (!BYTE_PIECE.test(piece)) mergeable.set(piece, id);
  });

  // Every split of a piece into two pieces is a merge producing it (SentencePiece BPE has no merge list).
  const merges: { left: string; right: string; score: number; id: number }[] = [];
  for (const [piece, id] of mergeable) {
    const chars = Array.from(piece);
    for (let k = 1; k < chars.length; k++) {
      const left = chars.slice(0, k).join('');
      const right = chars.slice(k).join('');
      if (mergeable.has(left) && mergeable.has(right)) merges.push({ left, right, score: scores[id]!, id });
    }
  }
  merges.sort((a, b) => b.score - a.score || a.id - b.id || vocab[a.left]! - vocab[b.left]!);

  const bos = special.find((s) => s.content === '<s>');
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: special.map((s) => ({
      id: s.id,
      content: s.content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: SPACE },
        { type: 'Replace', pattern: { String: ' ' }, content: SPACE },
      ],
    },
    pre_tokenizer: null,
    post_processor: bos
      ? {
          type: 'TemplateProcessing',
          single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
          pair: [
            { SpecialToken: { id: '<s>', type_id: 0 } },
            { Sequence: { id: 'A', type_id: 0 } },
            { SpecialToken: { id: '<s>', type_id: 1 } },
            { Sequence: { id: 'B', type_id: 1 } },
          ],
          special_tokens: { '<s>': { id: '<s>', ids: [bos.id], tokens: ['<s>'] } },
        }
      : null,
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: SPACE }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>' in vocab ? '<unk>' : null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: merges.map((m) => [m.left, m.right]),
    },
  };
  const names = { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' };
  return {
    'tokenizer.json': tokenizer,
    'tokenizer_config.json': {
      tokenizer_class: 'LlamaTokenizer',
      add_bos_token: true,
      add_eos_token: false,
      legacy: true,
      clean_up_tokenization_spaces: false,
      model_max_length: config.maxPositions,
      ...names,
    },
    'special_tokens_map.json': names,
  };
}
