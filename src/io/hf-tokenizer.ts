/**
 * Hugging Face tokenizer.json, through @huggingface/tokenizers: the same ids as
 * transformers.js and the Python `tokenizers` crate (pre/post-processors included,
 * so BOS is added exactly when the model's template adds it).
 *
 * Bounded pieces. The library's `encode(text)` holds every intermediate of the whole text at
 * once, and with no pre-tokenizer (the Llama-2 / SentencePiece layout: the normalized text is
 * one BPE "word") its BPE runs over the whole text at ~300 bytes and a few µs per character,
 * super-linearly (0.8 MB: 11.7 s; 1.6 MB: 32.5 s, 0.74 GB; 4 MB: 89 s, 1.4 GB). `encode` runs
 * the library's own stages instead (StreamingEncoder), so that ids are those of the one call:
 *   - added tokens split the raw, then the normalized text, and lstrip/rstrip trim, as
 *     Tokenizer.encode_text does. The normalizer maps each section; a long one in chunks cut
 *     between two ASCII letters when every normalizer step is local there (localSteps: Prepend
 *     on the first chunk only, Unicode forms, Lowercase, Strip, StripAccents, BertNormalizer,
 *     Precompiled, Replace of a string without letters), whole otherwise;
 *   - the first pre-tokenizer, when it is a regex matcher (Split, ByteLevel), is iterated with
 *     RegExp.exec over the whole normalized section, which is exactly what the library's
 *     String.match / matchAll do (lookaheads see the whole text, no boundary is guessed); its
 *     words go PIECE_SIZES.batch characters at a time through the later pre-tokenizers and the
 *     model, both word by word. fuse_unk, the one step that joins neighbouring words, is
 *     carried across batches;
 *   - a word of 2·PIECE_SIZES.cut characters or more (with no pre-tokenizer, a whole text) is
 *     cut into parts of at least PIECE_SIZES.cut, each cut between two code points (x, y) such
 *     that no merge (a, b) has a ending with x and b starting with y. A merge across the cut
 *     would need exactly such a pair, so none ever happens: the cut stays a symbol boundary,
 *     merges on either side never interact (BPE applies them in the same order, rank then
 *     position, within each part), and the BPE of the parts, concatenated, is the BPE of the
 *     word. Parts are longer than any vocabulary entry, so ignore_merges's whole-word lookup
 *     cannot hit either. (In the bundled TinyStories tokenizer one character in ~35
 *     qualifies, "\n\n" among them.) A word with no such pair (10 MB of "a") is one part;
 *   - BPE itself (FastBpe) is the library's algorithm on typed arrays: lowest merge rank first,
 *     leftmost on ties (the library's rank + position/length score orders exactly so), then
 *     vocabulary, byte fallback or unk per token.
 * Time and memory are linear in the text: the text, its normalized copy and the ids (int32
 * blocks, one array at the end) are whole, everything else is per chunk or batch. A setup
 * the stages cannot reproduce (a post-processor that does more than wrap the sequence,
 * internals missing in another library version, do_lowercase_and_remove_accent) is tokenized
 * in one call. Tested: identical ids on every asset text with every tokenizer, and on
 * adversarial strings with default and tiny piece sizes (test/io/tokenizer-pieces.test.ts).
 *
 * Time budget on regular expressions. A tokenizer.json may carry its own regexes
 * ({"Regex": ...} in a Split pre-tokenizer, a Replace normalizer or decoder). JavaScript's
 * backtracking engine takes exponential time on some ((▁?a+)+$ on 40 characters: hours), and
 * no check between pieces can interrupt one match. A linear-time engine (re2) would change the
 * semantics (\s, lookarounds) and so the ids. So a tokenizer with such patterns encodes and
 * decodes in a worker thread (RegexSandbox): the main thread waits synchronously (Atomics.wait)
 * while the worker announces each step (normalizer, a batch of pre-tokenization, decoding) with
 * its allowance, REGEX_BASE_MS plus REGEX_MS_PER_MCHAR per million characters; a step that
 * overruns terminates the worker (V8 interrupts a running match) and throws a FormatError
 * naming tokenizer.json and the patterns of that step. The allowance is wall time, so it is
 * generous (a batch takes ~0.1 s, but a full garbage collection of a worker holding a 50 MB
 * text on a loaded machine took over 3 s). Before its first use the worker runs each pattern
 * on short probes (every pair of characters of the pattern and a few classes, repeated, then
 * a character that breaks the match; PROBE_MS per pattern, ~10 ms of work when the pattern is
 * sane), which catches nested quantifiers within seconds and names the one pattern. Tokenizers
 * without such patterns (the library's built-in regexes are linear) run in the main thread.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import {
  isMainThread,
  MessageChannel,
  type MessagePort,
  receiveMessageOnPort,
  Worker,
  workerData,
} from 'node:worker_threads';
import * as tokenizers from '@huggingface/tokenizers';
import { Tokenizer } from '@huggingface/tokenizers';
import { FileError, FormatError } from '../errors.js';
import { isPlainObject, jsonKind, readJsonObjectFile, readOptionalJsonObjectFile } from './json.js';
import {
  CODE_POINTS,
  cutPieces,
  type EncodeOptions,
  IdList,
  PIECE_SIZES,
  type TextTokenizer,
} from './tokenizer.js';

/** Large multilingual tokenizer.json files are tens of MiB; past this the file is refused unread. */
const MAX_TOKENIZER_BYTES = 128 * 1024 * 1024;
/** The `model.type`s of Hugging Face tokenizers (tokenizers/src/models). */
const MODEL_TYPES = ['BPE', 'WordPiece', 'WordLevel', 'Unigram'];
/** Token ids index embedding rows; no real vocabulary comes near this. */
const MAX_TOKEN_ID = 2 ** 24;

/** Allowance of one step of a tokenizer with its own regexes: this much plus REGEX_MS_PER_MCHAR. */
const REGEX_BASE_MS = 10_000;
/** Allowance of the probes of one pattern. */
const PROBE_MS = 3000;
/** Per million characters of a step; legitimate patterns run at well under 0.1 s per million. */
const REGEX_MS_PER_MCHAR = 2000;
/** The same for the library's one call (`{ whole: true }`, or a setup the stages do not reproduce). */
const WHOLE_MS_PER_MCHAR = 60_000;
/** Starting the worker (loading this module, with tsx when running from source) and constructing the tokenizer. */
const WORKER_START_MS = 120_000;

export class HfTokenizer implements TextTokenizer {
  /** Piecewise encoder in this thread (tokenizers without regexes of their own). */
  private readonly pieces: StreamingEncoder | undefined;
  /** Worker with a time budget (tokenizers with regexes of their own). */
  private readonly sandbox: RegexSandbox | undefined;

  private constructor(
    private readonly tokenizer: Tokenizer,
    readonly vocabSize: number,
    readonly bosId: number | undefined,
    private readonly file: string,
    json: Record<string, unknown>,
    config: Record<string, unknown>,
  ) {
    const patterns = regexPatterns(json);
    if (patterns.length > 0) this.sandbox = new RegexSandbox(this, json, config, file, patterns);
    else this.pieces = StreamingEncoder.create(tokenizer);
  }

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
    return new HfTokenizer(tokenizer, vocabSize, bosId, file, json, config);
  }

  /**
   * Token ids of `text`, in bounded pieces (see the header); `{ whole: true }` makes the
   * library's one call instead, the reference the pieces are tested against.
   */
  encode(text: string, options: EncodeOptions = {}): number[] {
    let ids: number[];
    if (this.sandbox) ids = this.sandbox.encode(text, options.whole === true);
    else {
      try {
        ids =
          this.pieces && !options.whole
            ? this.pieces.encode(text)
            : (this.tokenizer.encode(text).ids as number[]);
      } catch (e) {
        throw new FormatError(`tokenizer failed to encode: ${(e as Error).message}`, { file: this.file });
      }
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

  /**
   * Whether long texts are tokenized in pieces (else in the library's one call: a setup the
   * stages do not reproduce). With regexes of its own, this starts the tokenizer's worker.
   */
  get piecewise(): boolean {
    return this.sandbox ? this.sandbox.piecewise() : this.pieces !== undefined;
  }

  decode(ids: readonly number[]): string {
    if (this.sandbox?.decodes) return this.sandbox.decode(ids);
    try {
      return this.tokenizer.decode([...ids], { skip_special_tokens: true });
    } catch (e) {
      throw new FormatError(`tokenizer failed to decode: ${(e as Error).message}`, { file: this.file });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The library's pipeline, stage by stage.

/**
 * Classes the library exports at run time that its type declarations do not re-export
 * (their extensionless `export *` does not resolve under NodeNext).
 */
type Class = abstract new (...args: never[]) => unknown;
const lib = tokenizers as unknown as Record<string, Class | undefined>;
const { BPE, ByteLevelPreTokenizer, SequencePreTokenizer, SplitPreTokenizer } = tokenizers as unknown as {
  BPE: Class;
  ByteLevelPreTokenizer: new (config: object) => LibPreTokenizer;
  SequencePreTokenizer: Class;
  SplitPreTokenizer: new (config: object) => LibPreTokenizer & { pattern: RegExp | null; config: unknown };
};
/** Normalizers that map each character on its own, given letters on both sides (see localSteps). */
const LOCAL_NORMALIZERS = [
  'NFCNormalizer',
  'NFDNormalizer',
  'NFKCNormalizer',
  'NFKDNormalizer',
  'LowercaseNormalizer',
  'StripAccentsNormalizer',
  'BertNormalizer',
  'PrecompiledNormalizer',
  'StripNormalizer',
]
  .map((name) => lib[name])
  .filter((c): c is Class => c !== undefined);

/** What StreamingEncoder reads of a library Tokenizer (runtime fields; checked in `create`). */
interface LibAddedToken {
  id: number;
  lstrip: boolean;
  rstrip: boolean;
}
interface LibPreTokenizer {
  pre_tokenize(text: string | string[], options?: { section_index?: number }): string[];
}
interface LibModel {
  encode(tokens: string[]): string[];
  tokens_to_ids: Map<string, number>;
  unk_token_id: number | undefined;
  fuse_unk: boolean;
}
interface LibTokenizer {
  normalizer: ((text: string) => string) | null;
  pre_tokenizer: LibPreTokenizer | null;
  model: LibModel;
  post_processor: ((tokens: string[], pair: null, addSpecialTokens: boolean) => { tokens: string[] }) | null;
  splitter_unnormalized: { split(text: string): string[] };
  splitter_normalized: { split(text: string): string[] };
  added_tokens_map: Map<string, LibAddedToken>;
  remove_space: unknown;
  do_lowercase_and_remove_accent: unknown;
}

/** Steps a RegexSandbox worker times: which patterns of tokenizer.json may be running. */
const STEP_ALL = 0;
const STEP_NORMALIZER = 1;
const STEP_PRE_TOKENIZER = 2;
const STEP_DECODER = 3;
/** Probing pattern k is step STEP_PROBE + k. */
const STEP_PROBE = 16;

/**
 * Tokenizer.encode(text) of @huggingface/tokenizers 0.2, its stages run one bounded batch at a
 * time (see the header). Each step mirrors Tokenizer.encode_text / encode.
 */
export class StreamingEncoder {
  /** Called before each step, with the characters it covers (the worker's time budget). */
  onStep: ((step: number, chars: number) => void) | undefined;
  private readonly bpe: FastBpe | undefined;
  /** The normalizer's steps but Prepend, when each is local (normalize's chunks); else undefined. */
  private readonly laterChunkSteps: LibNormalizer[] | undefined;
  /** Maps byte-level words' UTF-8 bytes to characters, as ByteLevel does after its regex. */
  private readonly byteMapper = new ByteLevelPreTokenizer({ add_prefix_space: false, use_regex: false });

  private constructor(
    private readonly t: LibTokenizer,
    private readonly before: string[],
    private readonly after: string[],
    private readonly stages: LibPreTokenizer[],
  ) {
    this.bpe = FastBpe.create(t.model);
    this.laterChunkSteps =
      t.normalizer === null ? undefined : localSteps(t.normalizer as unknown as LibNormalizer);
  }

  /** undefined when this library version or configuration is not one the stages reproduce. */
  static create(tokenizer: Tokenizer): StreamingEncoder | undefined {
    const t = tokenizer as unknown as LibTokenizer;
    const fn = (x: unknown) => typeof x === 'function';
    if (
      !(t.added_tokens_map instanceof Map) ||
      !fn(t.splitter_unnormalized?.split) ||
      !fn(t.splitter_normalized?.split) ||
      !(t.normalizer === null || fn(t.normalizer)) ||
      !(t.post_processor === null || fn(t.post_processor)) ||
      !fn(t.model?.encode) ||
      !(t.model.tokens_to_ids instanceof Map) ||
      t.do_lowercase_and_remove_accent
    )
      return undefined;
    const wrap = templateWrap(t);
    const stages = t.pre_tokenizer === null ? [] : flattenStages(t.pre_tokenizer);
    if (!wrap || !stages) return undefined;
    const encoder = new StreamingEncoder(t, wrap.before, wrap.after, stages);
    return encoder.agrees(tokenizer) ? encoder : undefined;
  }

  /**
   * Whether this encoder gives the library's ids on a sample text cut at every chance (tiny
   * piece sizes): a safety net for a library version whose stages would differ from 0.2's, and
   * a tokenizer the library cannot encode at all keeps the library's own error.
   */
  private agrees(tokenizer: Tokenizer): boolean {
    const added = [...this.t.added_tokens_map.keys()].slice(0, 8).join(' \n');
    const sample = `${SELF_CHECK_TEXT.repeat(3)}${added}\n${SELF_CHECK_TEXT}`;
    const saved = { ...PIECE_SIZES };
    Object.assign(PIECE_SIZES, { batch: 64, cut: 64, normalize: 128, merge: 64 });
    try {
      const mine = this.encode(sample);
      const theirs = tokenizer.encode(sample).ids;
      return mine.length === theirs.length && mine.every((id, i) => id === theirs[i]);
    } catch {
      return false;
    } finally {
      Object.assign(PIECE_SIZES, saved);
    }
  }

  encode(text: string): number[] {
    return this.encodeList(text).toArray();
  }

  /** The ids as int32, -1 for an undefined one (for the worker's reply). */
  encodeInt32(text: string): Int32Array {
    return this.encodeList(text).toInt32();
  }

  private encodeList(text: string): IdList {
    const out = new IdList();
    for (const token of this.before) out.push(this.id(token));
    this.encodeText(text, out);
    for (const token of this.after) out.push(this.id(token));
    return out;
  }

  /** Tokenizer.encode's token -> id. */
  private id(token: string): number {
    return (
      this.t.added_tokens_map.get(token)?.id ??
      this.t.model.tokens_to_ids.get(token) ??
      this.t.model.unk_token_id!
    );
  }

  private step(step: number, chars: number): void {
    this.onStep?.(step, chars);
  }

  /** Tokenizer.encode_text. */
  private encodeText(text: string, out: IdList): void {
    const t = this.t;
    const sections = t.splitter_unnormalized.split(text);
    this.strip(sections);
    for (let i = 0; i < sections.length; i++) {
      let section = sections[i]!;
      if (section.length === 0) continue;
      if (t.added_tokens_map.has(section)) {
        out.push(this.id(section));
        continue;
      }
      if (t.remove_space === true) section = section.trim().split(/\s+/).join(' ');
      if (t.normalizer !== null) {
        this.step(STEP_NORMALIZER, section.length);
        section = this.normalize(section);
      }
      if (section.length === 0) continue;
      const subsections = t.splitter_normalized.split(section);
      this.strip(subsections);
      for (const sub of subsections) {
        if (sub.length === 0) continue;
        if (t.added_tokens_map.has(sub)) out.push(this.id(sub));
        else this.encodeSubsection(sub, i, out);
      }
    }
  }

  /**
   * The normalizer of `section`. The library's string operations on a whole text build ropes
   * of ~18 bytes per character; a long section is normalized in chunks of PIECE_SIZES.normalize
   * instead, cut between two ASCII letters, when every step is local there (localSteps), and
   * joined into one flat string: the same string, at ~3 bytes per character of peak.
   */
  private normalize(section: string): string {
    const normalizer = this.t.normalizer!;
    const later = this.laterChunkSteps;
    if (!later || section.length < 2 * PIECE_SIZES.normalize) return flat(normalizer(section));
    const chunks = cutPieces(section, PIECE_SIZES.normalize, isLetterPair);
    return chunks
      .map((c, i) => flat(i === 0 ? normalizer(c) : later.reduce<string>((x, step) => step.normalize(x), c)))
      .join('');
  }

  /** encode_text's lstrip / rstrip of the neighbours of added tokens, in place. */
  private strip(parts: string[]): void {
    for (let i = 0; i < parts.length; i++) {
      const added = this.t.added_tokens_map.get(parts[i]!);
      if (!added) continue;
      if (added.lstrip && i > 0) parts[i - 1] = parts[i - 1]!.trimEnd();
      if (added.rstrip && i < parts.length - 1) parts[i + 1] = parts[i + 1]!.trimStart();
    }
  }

  /** pre_tokenizer(sub) then model(words) (TokenizerModel._call: encode, then fuse_unk over all of them). */
  private encodeSubsection(sub: string, sectionIndex: number, out: IdList): void {
    const model = this.t.model;
    const fuser = model.fuse_unk ? new UnkFuser(model, (token) => out.push(this.id(token))) : undefined;
    for (const words of this.words(sub, sectionIndex)) {
      const cut = this.cut(words);
      // Model calls of at most ~PIECE_SIZES.batch characters (a cut word yields many parts).
      for (let i = 0; i < cut.length; ) {
        let j = i;
        for (let chars = 0; j < cut.length && chars < PIECE_SIZES.batch; j++) chars += cut[j]!.length + 1;
        const batch = i === 0 && j === cut.length ? cut : cut.slice(i, j);
        this.step(
          STEP_PRE_TOKENIZER,
          batch.reduce((n, w) => n + w.length, 0),
        );
        const tokens = this.bpe ? this.bpe.encode(batch) : model.encode(batch);
        if (fuser) for (const token of tokens) fuser.push(token);
        else for (const token of tokens) out.push(this.id(token));
        i = j;
      }
    }
    fuser?.flush();
  }

  /** Batches of the words pre_tokenizer(sub, { section_index }) returns, in order. */
  private *words(sub: string, sectionIndex: number): Generator<string[]> {
    if (this.stages.length === 0) {
      yield [sub];
      return;
    }
    const options = { section_index: sectionIndex };
    const [first, ...rest] = this.stages;
    for (const batch of this.firstStage(first!, sub, options)) {
      let words = batch;
      if (rest.length > 0)
        this.step(
          STEP_PRE_TOKENIZER,
          batch.reduce((n, w) => n + w.length, 0),
        );
      for (const stage of rest) words = stage.pre_tokenize(words, options);
      yield words;
    }
  }

  /**
   * The first pre-tokenizer's words. Split and ByteLevel's regex are iterated as
   * String.prototype.match / matchAll iterate them (exec from lastIndex over the whole string,
   * an empty match advancing one code point); any other runs whole and is batched afterwards.
   */
  private *firstStage(
    first: LibPreTokenizer,
    sub: string,
    options: { section_index: number },
  ): Generator<string[]> {
    if (first instanceof SplitPreTokenizer && first.pattern instanceof RegExp && first.pattern.global) {
      const config = first.config as { invert?: boolean; behavior?: string };
      // Split.pre_tokenize_text: invert -> match (non-empty), removed -> split, else regex_split.
      if (config.invert) {
        yield* this.matches(first.pattern, sub, true);
        return;
      }
      if (config.behavior?.toLowerCase() !== 'removed') {
        yield* this.regexSplit(first.pattern, sub);
        return;
      }
    }
    if (first instanceof ByteLevelPreTokenizer) {
      const b = first as unknown as { use_regex: boolean; add_prefix_space: boolean; pattern: unknown };
      if (b.use_regex && b.pattern instanceof RegExp && b.pattern.global) {
        const text = b.add_prefix_space && !sub.startsWith(' ') ? ` ${sub}` : sub;
        for (const batch of this.matches(b.pattern, text, false)) yield this.byteMapper.pre_tokenize(batch);
        return;
      }
    }
    this.step(STEP_PRE_TOKENIZER, sub.length);
    const all = first.pre_tokenize(sub, options);
    for (let i = 0; i < all.length; ) {
      let j = i;
      for (let chars = 0; j < all.length && chars < PIECE_SIZES.batch; j++) chars += all[j]!.length + 1;
      yield i === 0 && j === all.length ? all : all.slice(i, j);
      i = j;
    }
  }

  /** `text.match(pattern)` (global), in batches; dropEmpty as Split's `.filter((x) => x)`. */
  private *matches(pattern: RegExp, text: string, dropEmpty: boolean): Generator<string[]> {
    const re = new RegExp(pattern);
    const unicode = /[uv]/.test(re.flags);
    let batch: string[] = [];
    let chars = 0;
    this.step(STEP_PRE_TOKENIZER, PIECE_SIZES.batch);
    for (let m = re.exec(text); m !== null; m = re.exec(text)) {
      const s = m[0];
      if (s.length === 0) re.lastIndex = advance(text, re.lastIndex, unicode);
      if (s.length > 0 || !dropEmpty) {
        batch.push(s);
        chars += s.length + 1;
      }
      if (chars >= PIECE_SIZES.batch) {
        yield batch;
        batch = [];
        chars = 0;
        this.step(STEP_PRE_TOKENIZER, PIECE_SIZES.batch);
      }
    }
    if (batch.length > 0) yield batch;
  }

  /** The library's regex_split (the text between matches, and the non-empty matches), in batches. */
  private *regexSplit(pattern: RegExp, text: string): Generator<string[]> {
    const re = new RegExp(pattern);
    const unicode = /[uv]/.test(re.flags);
    let batch: string[] = [];
    let chars = 0;
    let prev = 0;
    this.step(STEP_PRE_TOKENIZER, PIECE_SIZES.batch);
    for (let m = re.exec(text); m !== null; m = re.exec(text)) {
      const s = m[0];
      if (s.length === 0) re.lastIndex = advance(text, re.lastIndex, unicode);
      if (prev < m.index) batch.push(text.slice(prev, m.index));
      if (s.length > 0) batch.push(s);
      chars += m.index + s.length - prev + 1;
      prev = m.index + s.length;
      if (chars >= PIECE_SIZES.batch) {
        yield batch;
        batch = [];
        chars = 0;
        this.step(STEP_PRE_TOKENIZER, PIECE_SIZES.batch);
      }
    }
    if (prev < text.length) batch.push(text.slice(prev));
    if (batch.length > 0) yield batch;
  }

  /** Words of 2·PIECE_SIZES.cut characters or more cut, where no merge can join, into parts of >= PIECE_SIZES.cut. */
  private cut(words: string[]): string[] {
    const bpe = this.bpe;
    if (!bpe?.cuttable) return words;
    let out: string[] | undefined;
    for (let i = 0; i < words.length; i++) {
      const w = words[i]!;
      if (w.length < 2 * PIECE_SIZES.cut) out?.push(w);
      else {
        out ??= words.slice(0, i);
        for (const part of cutPieces(w, PIECE_SIZES.cut, (pair) => bpe.canCut(pair))) out.push(part);
      }
    }
    return out ?? words;
  }
}

interface LibNormalizer {
  normalize(text: string): string;
}

/**
 * `s`, flattened: V8 flattens a rope when a character is read from it, and the rope's nodes
 * (most of its memory) become garbage. Only memory depends on it.
 */
function flat(s: string): string {
  s.charCodeAt(s.length >> 1);
  return s;
}

/** pairAt's pair is two ASCII letters. */
function isLetterPair(pair: number): boolean {
  if (pair < 0) return false;
  const a = Math.floor(pair / CODE_POINTS);
  const b = pair - a * CODE_POINTS;
  return (a | 32) >= 97 && (a | 32) <= 122 && (b | 32) >= 97 && (b | 32) <= 122;
}

/**
 * The steps of a normalizer but its Prepends, when every step maps a text cut between two ASCII
 * letters x|y to the concatenation of its images (undefined otherwise). Prepend adds its text at
 * the start only: chunks after the first skip it. Unicode normalization: x and y are starters
 * that compose with nothing before them. Lowercase's one context rule (final sigma) looks for
 * the nearest cased letter on either side, x or y at the farthest. Strip: chunks start and end
 * with letters, nothing to strip. StripAccents, BertNormalizer, Precompiled: per character (and
 * the above). Replace of a string holding no ASCII letter: no occurrence can contain x and y,
 * which every step keeps letters. A Replace of a regex could match anything: not local.
 */
function localSteps(normalizer: LibNormalizer): LibNormalizer[] | undefined {
  const out: LibNormalizer[] = [];
  const visit = (n: unknown): boolean => {
    if (n === null) return true;
    const SequenceNormalizer = lib.SequenceNormalizer;
    if (SequenceNormalizer && n instanceof SequenceNormalizer) {
      const children = (n as unknown as { normalizers: unknown }).normalizers;
      return Array.isArray(children) && children.every(visit);
    }
    if (lib.PrependNormalizer && n instanceof lib.PrependNormalizer) return true;
    if (lib.ReplaceNormalizer && n instanceof lib.ReplaceNormalizer) {
      const p = (n as unknown as { config: { pattern?: { String?: unknown } } }).config.pattern;
      if (typeof p?.String !== 'string' || /[A-Za-z]/.test(p.String)) return false;
    } else if (!LOCAL_NORMALIZERS.some((c) => n instanceof c)) return false;
    if (typeof (n as LibNormalizer).normalize !== 'function') return false;
    out.push(n as LibNormalizer);
    return true;
  };
  return visit(normalizer) ? out : undefined;
}

/** The sample StreamingEncoder.agrees checks (newlines, CRLF, runs of spaces, non-ASCII, long words). */
const SELF_CHECK_TEXT =
  'Once upon a time, there was a little girl named Lily.\nShe said: "Hi!"  It\'s 3.14 \u2014 na\u00efve caf\u00e9\r\n\r\n' +
  '\u65e5\u672c\u8a9e \ud83e\udd16 e\u0301 \u00a0\u2028 \u2581x\t\tabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz   \n\n\n';

/** AdvanceStringIndex: past an empty match, one code unit, or one code point in unicode mode. */
function advance(s: string, i: number, unicode: boolean): number {
  if (!unicode || i + 1 >= s.length) return i + 1;
  const c = s.charCodeAt(i);
  if (c >= 0xd800 && c <= 0xdbff) {
    const d = s.charCodeAt(i + 1);
    if (d >= 0xdc00 && d <= 0xdfff) return i + 2;
  }
  return i + 1;
}

/** Pre-tokenizers applied in order (Sequence flattened: each stage maps every word). */
function flattenStages(p: LibPreTokenizer): LibPreTokenizer[] | undefined {
  if (p instanceof SequencePreTokenizer) {
    const out: LibPreTokenizer[] = [];
    const children = (p as unknown as { tokenizers: unknown }).tokenizers;
    if (!Array.isArray(children)) return undefined;
    for (const child of children) {
      if (child === null) continue;
      const flat = flattenStages(child as LibPreTokenizer);
      if (!flat) return undefined;
      out.push(...flat);
    }
    return out;
  }
  return typeof p?.pre_tokenize === 'function' ? [p] : undefined;
}

/**
 * The tokens the post-processor puts before and after the sequence, when all it does is wrap
 * it (TemplateProcessing "$A", BertProcessing, RobertaProcessing, ByteLevel, Sequence of them).
 */
function templateWrap(t: LibTokenizer): { before: string[]; after: string[] } | undefined {
  if (t.post_processor === null) return { before: [], after: [] };
  const a = '\u{10fff0}ptq-a';
  const b = '\u{10fff1}ptq-b';
  try {
    const out = t.post_processor([a, b], null, true).tokens;
    const i = out.indexOf(a);
    if (i < 0 || out[i + 1] !== b || out.lastIndexOf(a) !== i || out.lastIndexOf(b) !== i + 1)
      return undefined;
    const before = out.slice(0, i);
    const after = out.slice(i + 2);
    const empty = t.post_processor([], null, true).tokens;
    const wrapped = [...before, ...after];
    if (empty.length !== wrapped.length || empty.some((x, k) => x !== wrapped[k])) return undefined;
    if (wrapped.some((x) => typeof x !== 'string')) return undefined;
    return { before, after };
  } catch {
    return undefined;
  }
}

/** fuse_unk of the library over a stream of tokens: consecutive unknown tokens become one. */
class UnkFuser {
  private pending: string | undefined;
  private previousUnknown = false;

  constructor(
    private readonly model: LibModel,
    private readonly emit: (token: string) => void,
  ) {}

  push(token: string): void {
    const { tokens_to_ids: vocab, unk_token_id: unk } = this.model;
    const unknown = (vocab.get(token) ?? unk) === unk;
    if (this.pending !== undefined && this.previousUnknown && unknown) {
      if (vocab.get(this.pending) !== unk) this.pending += token;
    } else {
      if (this.pending !== undefined) this.emit(this.pending);
      this.pending = token;
    }
    this.previousUnknown = unknown;
  }

  flush(): void {
    if (this.pending !== undefined) this.emit(this.pending);
    this.pending = undefined;
    this.previousUnknown = false;
  }
}

/** Merge ranks fit below this, positions below POSITIONS: (rank, position) packs into one double. */
const MAX_RANKS = 2 ** 22;
const POSITIONS = 2 ** 30;
/** Words shorter than this are cached, as the library's BPE caches them (results do not change). */
const CACHE_WORD_CHARS = 256;
const CACHE_ENTRIES = 100_000;
const BYTE_TOKENS = Array.from(
  { length: 256 },
  (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`,
);

/**
 * The library's BPE.encode (bpe per word, then each token as itself, as byte-fallback tokens or
 * as unk), with its merge loop on typed arrays. Its loop pops the pair of lowest score
 * rank + left position / word length: that is the lowest rank, then the leftmost pair (ranks
 * are integers and position / length < 1, distinct positions stay distinct in a double).
 */
class FastBpe {
  private readonly symbols = new Map<string, number>();
  private readonly strings: string[] = [];
  /** Open-addressing table (left symbol, right symbol) -> rank: keys in pairs, -1 empty. */
  private readonly keys: Int32Array;
  private readonly values: Int32Array;
  private readonly mask: number;
  /** Symbol of each UTF-16 code unit as a one-unit string: -2 not looked up yet, -1 none. */
  private readonly unitSymbols = new Int32Array(65536).fill(-2);
  /** rank -> merged symbol */
  private readonly merged: Int32Array;
  /** (last code point of a, first code point of b) of every merge (a, b), as pairAt encodes them. */
  private readonly joinable = new Set<number>();
  private readonly cache = new Map<string, string[]>();
  private readonly encoder = new TextEncoder();
  private heap = new Float64Array(1024);

  private constructor(
    private readonly vocab: Map<string, number>,
    merges: unknown[],
    private readonly byteFallback: boolean,
    private readonly ignoreMerges: boolean,
    private readonly unkToken: string | null | undefined,
  ) {
    const pairs: [number, string, string][] = [];
    merges.forEach((m, rank) => {
      if (!Array.isArray(m) || m.length !== 2 || typeof m[0] !== 'string' || typeof m[1] !== 'string') return;
      pairs.push([rank, m[0], m[1]]);
      this.intern(m[0]);
      this.intern(m[1]);
      this.intern(m[0] + m[1]);
      if (m[0].length > 0 && m[1].length > 0) {
        const last = Array.from(m[0]).at(-1)!.codePointAt(0)!;
        this.joinable.add(last * CODE_POINTS + m[1].codePointAt(0)!);
      }
    });
    let capacity = 16;
    while (capacity < 2 * pairs.length) capacity *= 2;
    this.mask = capacity - 1;
    this.keys = new Int32Array(2 * capacity).fill(-1);
    this.values = new Int32Array(capacity);
    this.merged = new Int32Array(merges.length).fill(-1);
    // Later duplicates overwrite earlier ones, as in the library's Map of ranks.
    for (const [rank, a, b] of pairs) {
      const left = this.symbols.get(a)!;
      const right = this.symbols.get(b)!;
      let i = FastBpe.hash(left, right) & this.mask;
      while (this.keys[2 * i] !== -1 && (this.keys[2 * i] !== left || this.keys[2 * i + 1] !== right))
        i = (i + 1) & this.mask;
      this.keys[2 * i] = left;
      this.keys[2 * i + 1] = right;
      this.values[i] = rank;
      this.merged[rank] = this.symbols.get(a + b)!;
    }
  }

  private static hash(left: number, right: number): number {
    return (Math.imul(left, 0x9e3779b1) ^ Math.imul(right + 0x632be5ab, 0x85ebca77)) >>> 0;
  }

  /** Rank of the merge (left, right), -1 if none or if either is no symbol of a merge. */
  private rank(left: number, right: number): number {
    if (left < 0 || right < 0) return -1;
    const keys = this.keys;
    for (let i = FastBpe.hash(left, right) & this.mask; ; i = (i + 1) & this.mask) {
      const k = keys[2 * i]!;
      if (k === -1) return -1;
      if (k === left && keys[2 * i + 1] === right) return this.values[i]!;
    }
  }

  static create(model: unknown): FastBpe | undefined {
    if (!(model instanceof BPE)) return undefined;
    const m = model as unknown as {
      merges: unknown;
      tokens_to_ids: unknown;
      end_of_word_suffix?: unknown;
      continuing_subword_suffix?: unknown;
      byte_fallback: unknown;
      ignore_merges: unknown;
      unk_token?: string | null;
    };
    if (m.end_of_word_suffix || m.continuing_subword_suffix) return undefined;
    if (!Array.isArray(m.merges) || m.merges.length >= MAX_RANKS || !(m.tokens_to_ids instanceof Map))
      return undefined;
    return new FastBpe(
      m.tokens_to_ids as Map<string, number>,
      m.merges,
      Boolean(m.byte_fallback),
      Boolean(m.ignore_merges),
      m.unk_token,
    );
  }

  /**
   * Whether long words may be cut: only into parts longer than any vocabulary entry, so that
   * ignore_merges's whole-word lookup finds none of them, as it finds no long word.
   */
  get cuttable(): boolean {
    if (this.longestToken === undefined) {
      this.longestToken = 0;
      for (const token of this.vocab.keys()) this.longestToken = Math.max(this.longestToken, token.length);
    }
    return this.longestToken < PIECE_SIZES.cut;
  }

  private longestToken: number | undefined;

  /**
   * Whether a word may be cut between the code points of `pair` (pairAt): a merge joining a
   * symbol ending with the first to one starting with the second needs a merge (a, b) with a
   * ending and b starting so, and there is none. No merge then ever crosses the cut.
   */
  canCut(pair: number): boolean {
    return pair >= 0 && !this.joinable.has(pair);
  }

  private intern(s: string): void {
    if (!this.symbols.has(s)) {
      this.symbols.set(s, this.strings.length);
      this.strings.push(s);
    }
  }

  /** BPE.encode */
  encode(words: string[]): string[] {
    const out: string[] = [];
    for (const word of words) {
      if (this.ignoreMerges && this.vocab.has(word)) {
        out.push(word);
        continue;
      }
      for (const t of this.word(word)) {
        if (this.vocab.has(t)) out.push(t);
        else if (this.byteFallback) {
          const bytes = Array.from(this.encoder.encode(t), (b) => BYTE_TOKENS[b]!);
          if (bytes.every((x) => this.vocab.has(x))) for (const x of bytes) out.push(x);
          else if (this.unkToken != null) out.push(this.unkToken);
        } else if (this.unkToken != null) out.push(this.unkToken);
      }
    }
    return out;
  }

  private word(word: string): string[] {
    if (word.length >= CACHE_WORD_CHARS) return this.merge(word);
    let r = this.cache.get(word);
    if (r === undefined) {
      if (this.cache.size >= CACHE_ENTRIES) this.cache.clear();
      r = this.merge(word);
      this.cache.set(word, r);
    }
    return r;
  }

  /** BPE.bpe: the symbols of `word` (its code points, as Array.from splits it) after all merges. */
  private merge(word: string): string[] {
    const units = word.length;
    const sym = new Int32Array(units);
    /** Offset in `word` of each code point (symbols of code points no merge has are never merged). */
    const offset = new Int32Array(units + 1);
    let n = 0;
    for (let i = 0; i < units; n++) {
      const c = word.charCodeAt(i);
      offset[n] = i;
      if (c >= 0xd800 && c <= 0xdbff && i + 1 < units) {
        const d = word.charCodeAt(i + 1);
        if (d >= 0xdc00 && d <= 0xdfff) {
          sym[n] = this.symbols.get(word.slice(i, i + 2)) ?? -1;
          i += 2;
          continue;
        }
      }
      let u = this.unitSymbols[c]!;
      if (u === -2) {
        u = this.symbols.get(String.fromCharCode(c)) ?? -1;
        this.unitSymbols[c] = u;
      }
      sym[n] = u;
      i += 1;
    }
    offset[n] = units;
    if (n <= 1) return n === 0 ? [] : [word];
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    let size = 0;
    const push = (rank: number, pos: number) => {
      if (size === this.heap.length) {
        const grown = new Float64Array(size * 2);
        grown.set(this.heap);
        this.heap = grown;
      }
      const h = this.heap;
      const key = rank * POSITIONS + pos;
      let i = size++;
      while (i > 0) {
        const parent = (i - 1) >> 1;
        if (h[parent]! <= key) break;
        h[i] = h[parent]!;
        i = parent;
      }
      h[i] = key;
    };
    const pop = (): number => {
      const h = this.heap;
      const top = h[0]!;
      const last = h[--size]!;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= size) break;
        const c = l + 1 < size && h[l + 1]! < h[l]! ? l + 1 : l;
        if (h[c]! >= last) break;
        h[i] = h[c]!;
        i = c;
      }
      h[i] = last;
      return top;
    };
    for (let i = 0; i + 1 < n; i++) {
      const r = this.rank(sym[i]!, sym[i + 1]!);
      if (r >= 0) push(r, i);
    }
    while (size > 0) {
      const key = pop();
      const rank = Math.floor(key / POSITIONS);
      const pos = key - rank * POSITIONS;
      const right = next[pos]!;
      // Stale: the symbol at pos was merged into its left neighbour, or its pair changed since.
      if (sym[pos] === -2 || right < 0 || this.rank(sym[pos]!, sym[right]!) !== rank) continue;
      sym[pos] = this.merged[rank]!;
      sym[right] = -2;
      const after = next[right]!;
      next[pos] = after;
      if (after >= 0) prev[after] = pos;
      const before = prev[pos]!;
      if (before >= 0) {
        const r = this.rank(sym[before]!, sym[pos]!);
        if (r >= 0) push(r, before);
      }
      if (after >= 0) {
        const r = this.rank(sym[pos]!, sym[after]!);
        if (r >= 0) push(r, pos);
      }
    }
    const out: string[] = [];
    for (let i = 0; i >= 0; i = next[i]!) {
      const id = sym[i]!;
      out.push(id >= 0 ? this.strings[id]! : word.slice(offset[i]!, offset[i + 1]!));
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// Time budget on the tokenizer's own regular expressions.

interface Pattern {
  /** Where in tokenizer.json, e.g. pre_tokenizer.pretokenizers[0].pattern.Regex */
  field: string;
  source: string;
}

/** The {"Regex": ...} patterns of the normalizer, pre-tokenizer and decoder, in document order. */
function regexPatterns(json: Record<string, unknown>): Pattern[] {
  const out: Pattern[] = [];
  const walk = (v: unknown, field: string, depth: number) => {
    if (depth > 64) return;
    if (Array.isArray(v)) {
      v.forEach((x, i) => {
        walk(x, `${field}[${i}]`, depth + 1);
      });
    } else if (isPlainObject(v)) {
      for (const [k, x] of Object.entries(v)) {
        if (k === 'Regex' && typeof x === 'string') out.push({ field: `${field}.Regex`, source: x });
        else walk(x, `${field}.${k}`, depth + 1);
      }
    }
  };
  for (const key of ['normalizer', 'pre_tokenizer', 'decoder']) walk(json[key], key, 0);
  return out;
}

/** The patterns a step may run. */
function stepPatterns(step: number, patterns: Pattern[]): Pattern[] {
  if (step >= STEP_PROBE) return patterns.slice(step - STEP_PROBE, step - STEP_PROBE + 1);
  const prefix = {
    [STEP_NORMALIZER]: 'normalizer',
    [STEP_PRE_TOKENIZER]: 'pre_tokenizer',
    [STEP_DECODER]: 'decoder',
  }[step];
  return prefix ? patterns.filter((p) => p.field.startsWith(prefix)) : patterns;
}

function allowanceMs(chars: number, msPerMchar = REGEX_MS_PER_MCHAR): number {
  return Math.ceil(REGEX_BASE_MS + (msPerMchar * chars) / 1e6);
}

/** Int32 slots shared with the worker. */
const DONE = 0; // replies posted so far (Atomics.notify on each)
const STEP = 1; // steps started so far
const ALLOW = 2; // allowance of the current step, ms
const CURRENT = 3; // which step (STEP_*)

const WORKER_FLAG = 'ptqkitHfTokenizerWorker';

/** Terminates the worker of a tokenizer that was garbage-collected. */
const workers = new FinalizationRegistry<Worker>((w) => void w.terminate());

/**
 * Encoding (and decoding, when the decoder has patterns) in a worker thread, each step within
 * its allowance; see the header. Synchronous: the caller waits with Atomics.wait and reads the
 * reply with receiveMessageOnPort.
 */
class RegexSandbox {
  private worker: Worker | undefined;
  private port: MessagePort | undefined;
  private state: Int32Array | undefined;
  private failure: Error | undefined;
  private pieces = false;
  readonly decodes: boolean;

  constructor(
    private readonly owner: object,
    private readonly json: Record<string, unknown>,
    private readonly config: Record<string, unknown>,
    private readonly file: string,
    private readonly patterns: Pattern[],
  ) {
    this.decodes = patterns.some((p) => p.field.startsWith('decoder'));
  }

  encode(text: string, whole: boolean): number[] {
    const request = { op: 'encode', text, whole, sizes: { ...PIECE_SIZES } };
    const reply = this.call(request, text.length, 'encode') as { ids: Int32Array };
    // -1 stands for an id the library left undefined (no unk token): the caller reports it.
    return IdList.numbers(reply.ids);
  }

  /** Whether the worker tokenizes in pieces (starting it if needed). */
  piecewise(): boolean {
    if (this.failure) throw this.failure;
    if (!this.worker) this.start();
    return this.pieces;
  }

  decode(ids: readonly number[]): string {
    return (this.call({ op: 'decode', ids: [...ids] }, 16 * ids.length, 'decode') as { text: string }).text;
  }

  private call(request: object, chars: number, what: 'encode' | 'decode'): unknown {
    if (this.failure) throw this.failure;
    if (!this.worker) this.start();
    return this.roundTrip(request, allowanceMs(chars), what);
  }

  private start(): void {
    const state = new Int32Array(new SharedArrayBuffer(16));
    const { port1, port2 } = new MessageChannel();
    const worker = new Worker(bootstrap(), {
      eval: true,
      execArgv: [],
      workerData: {
        [WORKER_FLAG]: true,
        port: port2,
        state,
        json: this.json,
        config: this.config,
        patterns: this.patterns,
      },
      transferList: [port2],
    });
    worker.unref();
    // Failures come back as replies; an 'error' event must not crash the process later.
    worker.on('error', () => {});
    this.worker = worker;
    this.port = port1;
    this.state = state;
    workers.register(this.owner, worker);
    this.pieces = (this.roundTrip({ op: 'init' }, WORKER_START_MS, 'start') as { pieces: boolean }).pieces;
  }

  private roundTrip(request: object, allowance: number, what: 'start' | 'encode' | 'decode'): unknown {
    const state = this.state!;
    const port = this.port!;
    port.postMessage(request);
    let step = Atomics.load(state, STEP);
    let current = -1;
    let allowed = allowance;
    let deadline = Date.now() + allowed;
    for (;;) {
      const done = Atomics.load(state, DONE);
      const reply = receiveMessageOnPort(port);
      if (reply) {
        const message = reply.message as { error?: string };
        if (message.error !== undefined) {
          throw new FormatError(`tokenizer failed to ${what}: ${message.error}`, {
            file: this.file,
          });
        }
        return message;
      }
      const s = Atomics.load(state, STEP);
      if (s !== step) {
        step = s;
        current = Atomics.load(state, CURRENT);
        allowed = Atomics.load(state, ALLOW);
        deadline = Date.now() + allowed;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw this.timeout(current, Math.round(allowed / 100) / 10);
      Atomics.wait(state, DONE, done, Math.min(left, 50));
    }
  }

  private timeout(step: number, seconds: number): Error {
    void this.worker?.terminate();
    const involved = step < 0 ? this.patterns : stepPatterns(step, this.patterns);
    this.failure = new FormatError(
      `a regular expression of the tokenizer ran for more than ${seconds} s ${
        step >= STEP_PROBE ? 'on a short probe text' : 'while tokenizing'
      }`,
      {
        file: this.file,
        field: involved.map((p) => p.field).join(', '),
        got: involved
          .map((p) => JSON.stringify(p.source.length > 200 ? `${p.source.slice(0, 200)}…` : p.source))
          .join(', '),
        hint: 'catastrophic backtracking: nested or overlapping quantifiers such as (a+)+ take exponential time; fix the pattern',
      },
    );
    return this.failure;
  }
}

/**
 * The worker's script: this module (registering tsx's loader first when running from source).
 * It runs with no execArgv (a parent's --input-type=module or --eval would apply to it) and
 * reports a failure to load through the port, as every reply.
 */
function bootstrap(): string {
  const self = import.meta.url;
  const tsx = self.endsWith('.ts') ? import.meta.resolve('tsx/esm/api') : undefined;
  return `import('node:worker_threads').then(async ({ workerData }) => {
  try {
    ${tsx ? `(await import(${JSON.stringify(tsx)})).register();` : ''}
    await import(${JSON.stringify(self)});
  } catch (e) {
    workerData.port.postMessage({ error: 'the tokenizer worker did not start: ' + (e && e.message) });
    Atomics.add(workerData.state, ${DONE}, 1);
    Atomics.notify(workerData.state, ${DONE});
  }
});`;
}

/** Characters probes are made of, besides those of the pattern itself. */
const PROBE_CLASSES = ['a', 'A', '0', ' ', '\n', '\t', '▁', '.', "'", 'é', '中', '_', '-'];
const PROBE_CHARS = 24;
const PROBE_LENGTH = 40;

/** Texts on which nested or overlapping quantifiers over these characters backtrack exponentially. */
function probes(source: string): string[] {
  const chars = [
    ...new Set([...Array.from(source).filter((c) => !'()[]{}|?*+^$\\'.includes(c)), ...PROBE_CLASSES]),
  ];
  const use = chars.slice(0, PROBE_CHARS);
  const out: string[] = [];
  for (const a of use) {
    for (const b of use) {
      const body = (a + b).repeat(PROBE_LENGTH / 2);
      for (const end of ['\u0000', '!', ' ']) out.push(body + end);
    }
  }
  return out;
}

function serveWorker(data: {
  port: MessagePort;
  state: Int32Array;
  json: Record<string, unknown>;
  config: Record<string, unknown>;
  patterns: Pattern[];
}): void {
  const { port, state, json, config, patterns } = data;
  const step = (current: number, chars: number) => {
    const allowance =
      current >= STEP_PROBE
        ? PROBE_MS
        : allowanceMs(chars, current === STEP_ALL ? WHOLE_MS_PER_MCHAR : REGEX_MS_PER_MCHAR);
    Atomics.store(state, ALLOW, allowance);
    Atomics.store(state, CURRENT, current);
    Atomics.add(state, STEP, 1);
  };
  const reply = (message: object, transfer: ArrayBuffer[] = []) => {
    port.postMessage(message, transfer);
    Atomics.add(state, DONE, 1);
    Atomics.notify(state, DONE);
  };
  let tokenizer: Tokenizer | undefined;
  let encoder: StreamingEncoder | undefined;
  port.on(
    'message',
    (request: { op: string; text?: string; whole?: boolean; ids?: number[]; sizes?: object }) => {
      try {
        if (request.op === 'init') {
          tokenizer = new Tokenizer(json, config);
          patterns.forEach((p, k) => {
            step(STEP_PROBE + k, 0);
            const re = new SplitPreTokenizer({ type: 'Split', pattern: { Regex: p.source }, invert: false })
              .pattern;
            if (!re) return;
            const r = new RegExp(re.source, re.flags.includes('g') ? re.flags : `${re.flags}g`);
            for (const text of probes(p.source)) {
              r.lastIndex = 0;
              for (let m = r.exec(text); m !== null; m = r.exec(text)) {
                if (m[0].length === 0) r.lastIndex = advance(text, r.lastIndex, /[uv]/.test(r.flags));
              }
            }
          });
          // The encoder checks itself on a sample with the library: after the probes.
          step(STEP_ALL, 10_000);
          encoder = StreamingEncoder.create(tokenizer);
          if (encoder) encoder.onStep = step;
          reply({ pieces: encoder !== undefined });
        } else if (request.op === 'encode') {
          const text = request.text!;
          Object.assign(PIECE_SIZES, request.sizes);
          let ids: Int32Array;
          if (encoder && !request.whole) ids = encoder.encodeInt32(text);
          else {
            step(STEP_ALL, text.length);
            ids = Int32Array.from(tokenizer!.encode(text).ids as unknown[], (v) =>
              typeof v === 'number' ? v : -1,
            );
          }
          reply({ ids }, [ids.buffer as ArrayBuffer]);
        } else if (request.op === 'decode') {
          step(STEP_DECODER, 16 * request.ids!.length);
          reply({ text: tokenizer!.decode(request.ids!, { skip_special_tokens: true }) });
        }
      } catch (e) {
        reply({ error: (e as Error).message });
      }
    },
  );
}

if (!isMainThread && (workerData as Record<string, unknown> | null)?.[WORKER_FLAG] === true) {
  serveWorker(workerData);
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
