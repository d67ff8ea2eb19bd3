/**
 * README's orderings over its method × format tables (method-format-claims.ts), on the pinned
 * cells README prints. Needs no model: the table tests (method-format-table*.test.ts, with the
 * shared assets) check the same claims on the cells they measure.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { REPO } from '../helpers.js';
import { type Cell, CLAIMS, checkClaims, tableOf } from './method-format-claims.js';
import { STORIES260K_PINS, type TablePins, TINYSTORIES_PINS } from './method-format-pins.js';

const tables: [string, TablePins][] = [
  ['tinystories-656k', TINYSTORIES_PINS],
  ['stories260K.bin', STORIES260K_PINS],
];

for (const [model, pins] of tables) {
  test(`${model}: README's orderings hold on the pinned table`, () => {
    const cells = new Map<string, Cell>(
      Object.entries(pins.cells).map(([k, [perplexity, kld]]) => [k, { perplexity, kld }]),
    );
    const table = tableOf(model, pins.fp32, cells);
    for (const c of CLAIMS) console.log(`  ${c.check(table).length ? 'FAILS' : 'holds'}: ${c.readme}`);
    assert.deepEqual(checkClaims(table), []);
  });
}

test("every checked ordering is quoted word for word in README's 'What holds across columns'", () => {
  const readme = readFileSync(path.join(REPO, 'README.md'), 'utf8').replace(/\s+/g, ' ');
  for (const c of CLAIMS) assert.ok(readme.includes(c.readme), `README no longer states: ${c.readme}`);
});
