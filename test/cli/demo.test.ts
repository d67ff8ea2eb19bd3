/**
 * `ptq demo` prints README's quick-start table: every row's bits/w, size, perplexity, KLD and
 * top-1 agreement exactly as README shows them (read from README, compared as printed text).
 * The timing columns (quantize s, eval tok/s) measure the machine, not the code, and are not
 * compared; README's values there are one run's on the 2-core CI machine.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readmeBlock, textTableRows } from '../readme-figures.js';
import { runCli } from './run-cli.js';

/** Columns compared: model, bits/w, size, perplexity, KLD, top-1 agree (not quantize s, eval tok/s). */
const COMPARED = 6;

test("ptq demo prints README's table: bits/w, size, perplexity, KLD, top-1 of every row", () => {
  const r = runCli(['demo']);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.split('\n');
  assert.match(
    lines[0]!,
    /^ptq demo: tinystories-656k on tinystories-valid-slice\.txt \(7957 tokens; ctx 512,/,
  );
  const header = lines.findIndex((l) => l.startsWith('model '));
  const printed = textTableRows(lines.slice(header, header + 6));
  const readme = textTableRows(readmeBlock('`ptq demo` prints'));
  console.log(`  ${printed.map((row) => row.join(' | ')).join('\n  ')}`);
  assert.equal(readme.length, 5, 'README: header + fp32 + 3 quantized rows');
  assert.deepEqual(
    printed.map((row) => row.slice(0, COMPARED)),
    readme.map((row) => row.slice(0, COMPARED)),
  );
  // The timing columns are there, numbers (or '-' for fp32's quantize time).
  for (const row of printed.slice(1)) {
    assert.equal(row.length, 8, row.join(' | '));
    assert.match(row[6]!, /^(-|\d+\.\d\d)$/);
    assert.match(row[7]!, /^\d+$/);
  }
});
