/**
 * Text files given on the command line (--text, --calib): read whole, strictly UTF-8.
 */
import { FileError } from '../errors.js';
import { openRegularFile } from './confined-path.js';

/**
 * A UTF-8 text file (--text, --calib). Invalid UTF-8 is refused with the byte offset of its first
 * invalid sequence rather than silently replaced by U+FFFD (tokens the text does not contain).
 * A byte-order mark is kept, as before.
 */
export async function readText(file: string): Promise<string> {
  // A regular file: a FIFO or device would block the read or never end.
  const handle = await openRegularFile(file, 'cannot read the text file');
  let bytes: Buffer;
  try {
    bytes = await handle.readFile();
  } catch (e) {
    throw new FileError('cannot read the text file', { file, got: (e as NodeJS.ErrnoException).code });
  } finally {
    await handle.close();
  }
  try {
    return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    const offset = firstInvalidUtf8(bytes);
    const shown = [...bytes.subarray(offset, offset + 4)].map((b) => b.toString(16).padStart(2, '0'));
    throw new FileError('text is not valid UTF-8', {
      file,
      offset,
      got: `bytes ${shown.join(' ')}`,
      hint: `convert it from its encoding, e.g. iconv -f latin1 -t utf-8 ${file} > text-utf8.txt`,
    });
  }
}

/**
 * Offset of the first byte that does not start a well-formed UTF-8 sequence (Unicode Table 3-7:
 * no overlong forms, surrogates or code points above U+10FFFF, no truncated sequence), or −1.
 */
export function firstInvalidUtf8(bytes: Uint8Array): number {
  const n = bytes.length;
  for (let i = 0; i < n; ) {
    const b = bytes[i]!;
    if (b < 0x80) {
      i++;
      continue;
    }
    // Continuation bytes after b, and the allowed range of the first one.
    let more: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) more = 1;
    else if (b >= 0xe0 && b <= 0xef) {
      more = 2;
      if (b === 0xe0) lo = 0xa0;
      else if (b === 0xed) hi = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
      more = 3;
      if (b === 0xf0) lo = 0x90;
      else if (b === 0xf4) hi = 0x8f;
    } else return i;
    if (i + more >= n) return i;
    const c = bytes[i + 1]!;
    if (c < lo || c > hi) return i;
    for (let k = 2; k <= more; k++) {
      const d = bytes[i + k]!;
      if (d < 0x80 || d > 0xbf) return i;
    }
    i += more + 1;
  }
  return -1;
}
