/**
 * README.md's figures as the tests see them. Issue #22's rule is that README and the tests agree
 * on every figure: a number README prints with d decimals is asserted to round to exactly that
 * (`assertPrinted`), and the tables that are a command's own output are read from README itself
 * (`readmeBlock`, `readmeTable`), so neither the code nor README can change without the other.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { REPO } from './helpers.js';

const README = readFileSync(path.join(REPO, 'README.md'), 'utf8').split('\n');

/** The index of the one README line containing `marker` (an error when none or several do). */
function lineOf(marker: string): number {
  const hits = README.flatMap((l, i) => (l.includes(marker) ? [i] : []));
  assert.equal(hits.length, 1, `README lines containing ${JSON.stringify(marker)}: ${hits.length}`);
  return hits[0]!;
}

/** The lines of the first ``` block after the README line containing `marker`. */
export function readmeBlock(marker: string): string[] {
  const open = README.findIndex((l, i) => i > lineOf(marker) && l.startsWith('```'));
  const close = README.findIndex((l, i) => i > open && l.startsWith('```'));
  assert.ok(open > 0 && close > open, `no code block after ${JSON.stringify(marker)}`);
  return README.slice(open + 1, close);
}

/** The rows (cells, trimmed) of the first Markdown table after the README line containing `marker`, header first. */
export function readmeTable(marker: string): string[][] {
  const start = README.findIndex((l, i) => i > lineOf(marker) && l.startsWith('|'));
  assert.ok(start > 0, `no table after ${JSON.stringify(marker)}`);
  const rows: string[][] = [];
  for (let i = start; i < README.length && README[i]!.startsWith('|'); i++) {
    // Split on unescaped pipes; `\|` inside a cell is a literal pipe.
    const cells = README[i]!.slice(1, -1)
      .split(/(?<!\\)\|/)
      .map((c) => c.trim());
    if (!cells.every((c) => /^:?-+:?$/.test(c))) rows.push(cells);
  }
  return rows;
}

/** The columns of a fixed-width text table (two or more spaces apart), dashed rules dropped. */
export function textTableRows(lines: readonly string[]): string[][] {
  return lines.filter((l) => l.trim() !== '' && !/^[-\s]+$/.test(l)).map((l) => l.trim().split(/\s{2,}/));
}

/**
 * `actual` shown with as many decimals as README's `printed` reads exactly `printed` (`1.02e-4`:
 * in exponent notation with as many mantissa decimals).
 */
export function assertPrinted(actual: number, printed: string, what: string): void {
  const exponent = /^-?\d+(?:\.(\d+))?e[-+]?\d+$/.exec(printed);
  const shown = exponent
    ? actual.toExponential(exponent[1]?.length ?? 0).replace('e+', 'e')
    : actual.toFixed(printed.split('.')[1]?.length ?? 0);
  assert.equal(shown, printed, `${what}: ${actual} is not README's ${printed}`);
}
