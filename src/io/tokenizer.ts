/**
 * The one tokenizer interface the rest of ptqkit sees. Implementations: Hugging Face
 * tokenizer.json (through @huggingface/tokenizers) and llama2.c tokenizer.bin.
 */
export interface TextTokenizer {
  readonly vocabSize: number;
  readonly bosId: number | undefined;
  /** Token ids of `text` exactly as the model's reference tokenizer gives them, BOS included when it adds one. */
  encode(text: string): number[];
  decode(ids: readonly number[]): string;
}
