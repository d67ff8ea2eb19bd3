/**
 * JSON from untrusted files (safetensors headers, config.json, tokenizer.json, shard indexes).
 *
 * `JSON.parse` alone accepts what these formats must refuse: it silently keeps the last of
 * duplicate keys (two tensors under one name), replaces invalid UTF-8, and parses arbitrarily
 * deep nesting. Here the bytes are checked first, in one linear pass that allocates nothing
 * proportional to the input:
 *  - size against a per-format limit (checked by callers before reading, again here);
 *  - strict UTF-8 (TextDecoder with fatal: true);
 *  - nesting depth against a limit;
 *  - duplicate keys within any object;
 *  - numbers beyond the range of a double (JSON.parse makes `1e400` Infinity, which
 *    JSON.stringify then shows as `null`): refused with the number as written;
 *  - optionally, the count of top-level keys (a safetensors header's tensors), counted as the
 *    pass goes so a header of a million entries fails after the first few hundred thousand.
 * Syntax errors are reported without the snippet of text JSON.parse puts in its message: a
 * file that is not JSON (say, a symlink to a secrets file) is never echoed.
 * The pass works on bytes: every structural character is ASCII and UTF-8 continuation bytes
 * are never ASCII, so offsets in errors are exact byte offsets in the file.
 */
import { stat } from 'node:fs/promises';
import { FileError, FormatError } from '../errors.js';
import { openRegularFile, type Within } from './confined-path.js';

export interface JsonLimits {
  /** Largest accepted document in bytes. */
  maxBytes: number;
  /** Deepest accepted nesting of objects and arrays. */
  maxDepth: number;
  /** Most keys of the top-level object, and what they are (for the message); default unlimited. */
  topLevelKeys?: { max: number; what: string; expected?: string };
}

/** Options of the file readers: limits, and the directory the file must resolve inside. */
export interface JsonFileOptions extends Partial<JsonLimits> {
  /** The file is read on behalf of this directory: it must be a regular file inside it (confined-path.ts). */
  within?: Within;
}

export const DEFAULT_JSON_LIMITS: JsonLimits = { maxBytes: 16 * 1024 * 1024, maxDepth: 64 };

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const fatalDecoder = new TextDecoder('utf-8', { fatal: true });

/**
 * Parse `bytes` as one JSON document. `file` and `baseOffset` (where the bytes start in the
 * file) locate errors.
 */
export function parseJsonBytes(
  bytes: Uint8Array,
  file: string,
  limits: Partial<JsonLimits> = {},
  baseOffset = 0,
): unknown {
  const { maxBytes, maxDepth, topLevelKeys } = { ...DEFAULT_JSON_LIMITS, ...limits };
  if (bytes.length > maxBytes) {
    throw new FormatError('JSON document too large', {
      file,
      offset: baseOffset,
      expected: `<= ${maxBytes} bytes`,
      got: `${bytes.length}`,
    });
  }
  // The structure first: it stops early (depth, key count) before the whole text is decoded.
  checkStructure(bytes, file, maxDepth, baseOffset, topLevelKeys);
  let text: string;
  try {
    text = fatalDecoder.decode(bytes);
  } catch {
    throw new FormatError('JSON is not valid UTF-8', { file, offset: baseOffset });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new FormatError(`invalid JSON: ${syntaxError(e as Error)}`, { file, offset: baseOffset });
  }
}

/**
 * JSON.parse's message without the text it quotes (`Unexpected token 'r', "root:x:0:0"... is
 * not valid JSON`): only the offending character, escaped when not printable ASCII.
 */
function syntaxError(e: Error): string {
  const token = /^Unexpected token '([\s\S]+?)', "/.exec(e.message);
  if (token) return `unexpected character ${describeChar(token[1]!)}`;
  // Every other message of V8's JSON parser quotes nothing; cut at a quote all the same.
  return e.message.replace(/\s*"[\s\S]*$/, '') || 'syntax error';
}

function describeChar(c: string): string {
  const code = c.codePointAt(0)!;
  return code >= 0x20 && code < 0x7f ? `'${c[0]}'` : `U+${code.toString(16).toUpperCase().padStart(4, '0')}`;
}

/** A value from an untrusted file for a message: JSON, cut to `max` characters. */
export function brief(v: unknown, max = 40): string {
  const s = v === undefined ? 'undefined' : (JSON.stringify(v) ?? String(v));
  return s.length > max ? `${s.slice(0, max - 3)}...` : s;
}

/** Parse `bytes` and require a JSON object (not an array, string, number or null). */
export function parseJsonObject(
  bytes: Uint8Array,
  file: string,
  limits: Partial<JsonLimits> = {},
  baseOffset = 0,
): Record<string, unknown> {
  const value = parseJsonBytes(bytes, file, limits, baseOffset);
  if (!isPlainObject(value)) {
    throw new FormatError('JSON is not an object', {
      file,
      offset: baseOffset,
      expected: '{...}',
      got: jsonKind(value),
    });
  }
  return value;
}

/** Read and parse a JSON object file, refusing it by its size before reading any of it. */
export async function readJsonObjectFile(
  file: string,
  what: string,
  options: JsonFileOptions = {},
): Promise<Record<string, unknown>> {
  const { within, ...limits } = options;
  const maxBytes = limits.maxBytes ?? DEFAULT_JSON_LIMITS.maxBytes;
  // A regular file (a FIFO would block the read forever), inside `within` when given.
  const handle = await openRegularFile(file, `cannot read the ${what}`, within);
  try {
    const { size } = await handle.stat();
    if (size > maxBytes) {
      throw new FormatError(`${what} too large`, { file, expected: `<= ${maxBytes} bytes`, got: `${size}` });
    }
    const bytes = new Uint8Array(size);
    const { bytesRead } = await handle.read(bytes, 0, size, 0);
    return parseJsonObject(bytes.subarray(0, bytesRead), file, limits);
  } catch (e) {
    if (e instanceof FormatError || e instanceof FileError) throw e;
    throw new FileError(`cannot read the ${what}: ${(e as Error).message}`, { file });
  } finally {
    await handle.close();
  }
}

/** Like readJsonObjectFile, but a missing file gives undefined. */
export async function readOptionalJsonObjectFile(
  file: string,
  what: string,
  options: JsonFileOptions = {},
): Promise<Record<string, unknown> | undefined> {
  try {
    await stat(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
  }
  return readJsonObjectFile(file, what, options);
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function jsonKind(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v;
}

interface Frame {
  /** Keys seen so far, for objects; undefined for arrays. */
  keys?: Set<string>;
  expectKey: boolean;
  /** The latest key (objects) or element index (arrays): where a value is, for errors. */
  key?: string;
  index: number;
}

/** `a.b[3].c` of the value the pass is at. */
function pathOf(stack: Frame[]): string {
  let out = '';
  for (const f of stack) out += f.keys ? `${out ? '.' : ''}${f.key ?? ''}` : `[${f.index}]`;
  return out.length > 80 ? `${out.slice(0, 77)}...` : out;
}

const isNumberByte = (c: number) =>
  (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x2b || c === 0x2e || c === 0x65 || c === 0x45;

/**
 * One pass over the bytes: depth of nesting, duplicate keys, numbers out of the range of a
 * double, and the count of top-level keys. Syntax errors are left to JSON.parse (the pass
 * tolerates them: it never indexes outside `bytes` and never recurses).
 */
function checkStructure(
  bytes: Uint8Array,
  file: string,
  maxDepth: number,
  baseOffset: number,
  topLevelKeys?: JsonLimits['topLevelKeys'],
): void {
  const stack: Frame[] = [];
  const n = bytes.length;
  for (let i = 0; i < n; i++) {
    const b = bytes[i]!;
    if (b === QUOTE) {
      const start = i;
      let escaped = false;
      for (i++; i < n; i++) {
        const c = bytes[i]!;
        if (c === BACKSLASH) {
          escaped = true;
          i++;
        } else if (c === QUOTE) break;
      }
      const top = stack[stack.length - 1];
      if (top?.keys && top.expectKey && i < n) {
        const key = escaped ? decodeEscapedKey(bytes.subarray(start, i + 1)) : decodeKey(bytes, start, i);
        if (key === null)
          throw new FormatError('JSON is not valid UTF-8', { file, offset: baseOffset + start });
        if (key !== undefined) {
          if (top.keys.has(key)) {
            throw new FormatError('duplicate key in JSON object', {
              file,
              field: key.length > 80 ? `${key.slice(0, 77)}...` : key,
              offset: baseOffset + start,
              expected: 'unique keys',
            });
          }
          top.keys.add(key);
          top.key = key;
          if (topLevelKeys && stack.length === 1 && top.keys.size > topLevelKeys.max) {
            throw new FormatError(`too many ${topLevelKeys.what}`, {
              file,
              offset: baseOffset + start,
              expected: topLevelKeys.expected ?? `<= ${topLevelKeys.max} keys`,
              got: `more than ${topLevelKeys.max} keys`,
            });
          }
        }
        top.expectKey = false;
      }
    } else if (b === 0x7b /* { */ || b === 0x5b /* [ */) {
      stack.push(
        b === 0x7b ? { keys: new Set(), expectKey: true, index: 0 } : { expectKey: false, index: 0 },
      );
      if (stack.length > maxDepth) {
        throw new FormatError('JSON nested too deeply', {
          file,
          offset: baseOffset + i,
          expected: `depth <= ${maxDepth}`,
        });
      }
    } else if (b === 0x7d /* } */ || b === 0x5d /* ] */) {
      stack.pop();
    } else if (b === 0x2c /* , */) {
      const top = stack[stack.length - 1];
      if (top?.keys) top.expectKey = true;
      else if (top) top.index++;
    } else if ((b >= 0x30 && b <= 0x39) || b === 0x2d /* - */) {
      // A number: only one with an exponent or hundreds of digits can exceed a double.
      let j = i + 1;
      let exponent = false;
      while (j < n && isNumberByte(bytes[j]!)) {
        if (bytes[j] === 0x65 || bytes[j] === 0x45) exponent = true;
        j++;
      }
      if (exponent || j - i > 300) {
        const literal = Buffer.from(bytes.buffer, bytes.byteOffset + i, j - i).toString('latin1');
        const v = Number(literal);
        if (v === Infinity || v === -Infinity) {
          throw new FormatError('number out of the range of a double', {
            file,
            field: pathOf(stack) || undefined,
            offset: baseOffset + i,
            expected: 'a finite number (magnitude < 1.8e308)',
            got: literal.length > 40 ? `${literal.slice(0, 37)}...` : literal,
          });
        }
      }
      i = j - 1;
    }
  }
}

/** An unescaped key: its UTF-8 bytes decoded; null when they are not valid UTF-8. */
function decodeKey(bytes: Uint8Array, start: number, end: number): string | null {
  try {
    return fatalDecoder.decode(bytes.subarray(start + 1, end));
  } catch {
    return null;
  }
}

/** A quoted key with escapes, decoded as JSON does; undefined when malformed (JSON.parse reports it). */
function decodeEscapedKey(quoted: Uint8Array): string | undefined {
  try {
    const v = JSON.parse(fatalDecoder.decode(quoted));
    return typeof v === 'string' ? v : undefined;
  } catch {
    return undefined;
  }
}
