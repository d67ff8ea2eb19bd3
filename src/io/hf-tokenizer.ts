/**
 * Hugging Face tokenizer.json, through @huggingface/tokenizers: the same ids as
 * transformers.js and the Python `tokenizers` crate (pre/post-processors included,
 * so BOS is added exactly when the model's template adds it).
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { FileError, FormatError } from '../errors.js';
import type { TextTokenizer } from './tokenizer.js';

export class HfTokenizer implements TextTokenizer {
  private constructor(
    private readonly tokenizer: Tokenizer,
    readonly vocabSize: number,
    readonly bosId: number | undefined,
  ) {}

  /** Load `tokenizer.json` (and `tokenizer_config.json` when present) from a model directory. */
  static async load(dir: string, bosId?: number): Promise<HfTokenizer> {
    const file = path.join(dir, 'tokenizer.json');
    const json = (await readJson(file, true))!;
    const config = (await readJson(path.join(dir, 'tokenizer_config.json'), false)) ?? {};
    let tokenizer: Tokenizer;
    try {
      tokenizer = new Tokenizer(json, config);
    } catch (e) {
      throw new FormatError(`not a usable tokenizer: ${(e as Error).message}`, { file });
    }
    return new HfTokenizer(tokenizer, largestId(json) + 1, bosId);
  }

  encode(text: string): number[] {
    return this.tokenizer.encode(text).ids;
  }

  decode(ids: readonly number[]): string {
    return this.tokenizer.decode([...ids], { skip_special_tokens: true });
  }
}

async function readJson(file: string, required: boolean): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    if (!required && (e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new FileError('cannot read the tokenizer', {
      file,
      hint: 'a Hugging Face model directory needs tokenizer.json; pass --tokenizer <file> to use another',
    });
  }
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch (e) {
    throw new FormatError(`invalid JSON: ${(e as Error).message}`, { file });
  }
}

/** Vocabulary size = largest id of the model vocabulary or of the added tokens, plus one. */
function largestId(json: Record<string, unknown>): number {
  const vocab = (json.model as { vocab?: Record<string, number> | [string, number][] } | undefined)?.vocab ?? {};
  const ids = Array.isArray(vocab) ? vocab.map((_, i) => i) : Object.values(vocab);
  for (const t of (json.added_tokens as { id: number }[] | undefined) ?? []) ids.push(t.id);
  return ids.reduce((a, b) => Math.max(a, b), -1);
}
