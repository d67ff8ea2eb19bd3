/**
 * Hugging Face tokenizer.json, through @huggingface/tokenizers: the same ids as
 * transformers.js and the Python `tokenizers` crate (pre/post-processors included,
 * so BOS is added exactly when the model's template adds it).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { FileError, FormatError } from '../errors.js';
import { isPlainObject, jsonKind, readJsonObjectFile, readOptionalJsonObjectFile } from './json.js';
import type { TextTokenizer } from './tokenizer.js';

/** Large multilingual tokenizer.json files are tens of MiB; past this the file is refused unread. */
const MAX_TOKENIZER_BYTES = 128 * 1024 * 1024;
/** The `model.type`s of Hugging Face tokenizers (tokenizers/src/models). */
const MODEL_TYPES = ['BPE', 'WordPiece', 'WordLevel', 'Unigram'];
/** Token ids index embedding rows; no real vocabulary comes near this. */
const MAX_TOKEN_ID = 2 ** 24;

export class HfTokenizer implements TextTokenizer {
  private constructor(
    private readonly tokenizer: Tokenizer,
    readonly vocabSize: number,
    readonly bosId: number | undefined,
    private readonly file: string,
  ) {}

  /** Load `tokenizer.json` (and `tokenizer_config.json` when present) from a model directory. */
  static async load(dir: string, bosId?: number): Promise<HfTokenizer> {
    const file = path.join(dir, 'tokenizer.json');
    if (!existsSync(file)) {
      throw new FileError('cannot read the tokenizer', {
        file,
        hint: 'a Hugging Face model directory needs tokenizer.json; pass --tokenizer <file> to use another',
      });
    }
    // Confined to `dir`: a tokenizer.json linking out of it is refused unread (confined-path.ts).
    const json = await readJsonObjectFile(file, 'tokenizer', { maxBytes: MAX_TOKENIZER_BYTES, within: dir });
    const configFile = path.join(dir, 'tokenizer_config.json');
    const config =
      (await readOptionalJsonObjectFile(configFile, 'tokenizer configuration', {
        maxBytes: MAX_TOKENIZER_BYTES,
        within: dir,
      })) ?? {};
    return HfTokenizer.fromJson(json, config, file, bosId);
  }

  /** Build from parsed tokenizer.json / tokenizer_config.json objects; `file` names errors. */
  static fromJson(
    json: Record<string, unknown>,
    config: Record<string, unknown>,
    file: string,
    bosId?: number,
  ): HfTokenizer {
    const vocabSize = largestId(json, file) + 1;
    let tokenizer: Tokenizer;
    try {
      tokenizer = new Tokenizer(json, config);
    } catch (e) {
      throw new FormatError(`not a usable tokenizer: ${(e as Error).message}`, { file });
    }
    return new HfTokenizer(tokenizer, vocabSize, bosId, file);
  }

  encode(text: string): number[] {
    let ids: number[];
    try {
      ids = this.tokenizer.encode(text).ids;
    } catch (e) {
      throw new FormatError(`tokenizer failed to encode: ${(e as Error).message}`, { file: this.file });
    }
    // A malformed file can map text to ids outside its own vocabulary.
    for (const id of ids) {
      if (!(Number.isInteger(id) && id >= 0 && id < this.vocabSize)) {
        throw new FormatError('tokenizer produced an id outside its vocabulary', {
          file: this.file,
          expected: `[0, ${this.vocabSize})`,
          got: String(id),
        });
      }
    }
    return ids;
  }

  decode(ids: readonly number[]): string {
    try {
      return this.tokenizer.decode([...ids], { skip_special_tokens: true });
    } catch (e) {
      throw new FormatError(`tokenizer failed to decode: ${(e as Error).message}`, { file: this.file });
    }
  }
}

/**
 * Vocabulary size = largest id of the model vocabulary or of the added tokens, plus one.
 * The vocabulary is {token: id} (BPE, WordPiece, WordLevel) or [[token, score], ...] (Unigram,
 * where the id is the position); every id must be a non-negative integer below MAX_TOKEN_ID.
 */
function largestId(json: Record<string, unknown>, file: string): number {
  const model = json.model;
  if (!isPlainObject(model))
    throw new FormatError('missing tokenizer model', {
      file,
      field: 'model',
      expected: 'an object',
      got: jsonKind(model),
    });
  // The library silently accepts an unknown model type and then tokenizes with something else.
  if (model.type !== undefined && !MODEL_TYPES.includes(model.type as string)) {
    throw new FormatError('unknown tokenizer model type', {
      file,
      field: 'model.type',
      expected: MODEL_TYPES.join(', '),
      got: JSON.stringify(model.type),
    });
  }
  const vocab = model.vocab ?? {};
  let largest = -1;
  const check = (id: unknown, field: string) => {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= MAX_TOKEN_ID) {
      throw new FormatError('invalid token id', {
        file,
        field,
        expected: `an integer in [0, ${MAX_TOKEN_ID})`,
        got: JSON.stringify(id),
      });
    }
    if (id > largest) largest = id;
  };
  if (Array.isArray(vocab)) {
    if (vocab.length > MAX_TOKEN_ID)
      throw new FormatError('vocabulary too large', {
        file,
        field: 'model.vocab',
        expected: `<= ${MAX_TOKEN_ID} tokens`,
        got: String(vocab.length),
      });
    vocab.forEach((entry, i) => {
      if (!Array.isArray(entry) || typeof entry[0] !== 'string' || typeof entry[1] !== 'number') {
        throw new FormatError('invalid vocabulary entry', {
          file,
          field: `model.vocab[${i}]`,
          expected: '[token, score]',
          got: JSON.stringify(entry)?.slice(0, 40),
        });
      }
    });
    largest = vocab.length - 1;
  } else if (isPlainObject(vocab)) {
    for (const [token, id] of Object.entries(vocab)) check(id, `model.vocab.${token}`);
  } else {
    throw new FormatError('invalid vocabulary', {
      file,
      field: 'model.vocab',
      expected: 'an object or an array',
      got: jsonKind(vocab),
    });
  }
  const added = json.added_tokens ?? [];
  if (!Array.isArray(added))
    throw new FormatError('invalid added_tokens', {
      file,
      field: 'added_tokens',
      expected: 'an array',
      got: jsonKind(added),
    });
  added.forEach((t, i) => {
    check(isPlainObject(t) ? t.id : undefined, `added_tokens[${i}].id`);
  });
  return largest;
}
