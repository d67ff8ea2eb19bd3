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
 *  - duplicate keys within any object.
 * The pass works on bytes: every structural character is ASCII and UTF-8 continuation bytes
 * are never ASCII, so offsets in errors are exact byte offsets in the file.
 */
import { open, stat } from 'node:fs/promises';
import { FileError, FormatError } from '../errors.js';

export interface JsonLimits {
  /** Largest accepted document in bytes. */
  maxBytes: number;
  /** Deepest accepted nesting of objects and arrays. */
  maxDepth: number;
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
  const { maxBytes, maxDepth } = { ...DEFAULT_JSON_LIMITS, ...limits };
  if (bytes.length > maxBytes) {
    throw new FormatError('JSON document too large', {
      file,
      offset: baseOffset,
      expected: `<= ${maxBytes} bytes`,
      got: `${bytes.length}`,
    });
  }
  let text: string;
  try {
    text = fatalDecoder.decode(bytes);
  } catch {
    throw new FormatError('JSON is not valid UTF-8', { file, offset: baseOffset });
  }
  checkStructure(bytes, file, maxDepth, baseOffset);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new FormatError(`invalid JSON: ${(e as Error).message}`, { file, offset: baseOffset });
  }
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
  limits: Partial<JsonLimits> = {},
): Promise<Record<string, unknown>> {
  const maxBytes = limits.maxBytes ?? DEFAULT_JSON_LIMITS.maxBytes;
  let size: number;
  try {
    size = (await stat(file)).size;
  } catch (e) {
    throw new FileError(`cannot read the ${what}`, { file, got: (e as NodeJS.ErrnoException).code });
  }
  if (size > maxBytes) {
    throw new FormatError(`${what} too large`, { file, expected: `<= ${maxBytes} bytes`, got: `${size}` });
  }
  const handle = await open(file, 'r').catch((e: NodeJS.ErrnoException) => {
    throw new FileError(`cannot read the ${what}`, { file, got: e.code });
  });
  try {
    const bytes = new Uint8Array(size);
    const { bytesRead } = await handle.read(bytes, 0, size, 0);
    return parseJsonObject(bytes.subarray(0, bytesRead), file, limits);
  } catch (e) {
    if (e instanceof FormatError) throw e;
    throw new FileError(`cannot read the ${what}: ${(e as Error).message}`, { file });
  } finally {
    await handle.close();
  }
}

/** Like readJsonObjectFile, but a missing file gives undefined. */
export async function readOptionalJsonObjectFile(
  file: string,
  what: string,
  limits: Partial<JsonLimits> = {},
): Promise<Record<string, unknown> | undefined> {
  try {
    await stat(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
  }
  return readJsonObjectFile(file, what, limits);
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
}

/**
 * One pass over the bytes: depth of nesting and duplicate keys. Syntax errors are left to
 * JSON.parse (the pass tolerates them: it never indexes outside `bytes` and never recurses).
 */
function checkStructure(bytes: Uint8Array, file: string, maxDepth: number, baseOffset: number): void {
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
        const raw = bytes.subarray(start + 1, i);
        const key = escaped ? decodeEscapedKey(bytes.subarray(start, i + 1)) : fatalDecoder.decode(raw);
        if (key !== undefined) {
          if (top.keys.has(key)) {
            throw new FormatError('duplicate key in JSON object', {
              file,
              field: key,
              offset: baseOffset + start,
              expected: 'unique keys',
            });
          }
          top.keys.add(key);
        }
        top.expectKey = false;
      }
    } else if (b === 0x7b /* { */ || b === 0x5b /* [ */) {
      stack.push(b === 0x7b ? { keys: new Set(), expectKey: true } : { expectKey: false });
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
    }
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
