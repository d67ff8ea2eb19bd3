/**
 * The malformed-file corpus (test/fixtures/malformed/generate.ts): every file yields its typed
 * error with the expected message fragment and names the file; a sample fails the same way
 * through `ptq inspect` (exit 1, one line, no stack trace); and a safetensors header claiming
 * 100 GB in a 1 KB file is refused with the process's peak RSS up by less than 16 MiB.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ConfigError, FileError, FormatError, ShapeError } from '../../src/errors.js';
import { runCli } from '../cli/run-cli.js';
import { generateCorpus, type MalformedCase, openCase, SECRET } from '../fixtures/malformed/generate.js';
import { REPO } from '../helpers.js';

const work = mkdtempSync(path.join(os.tmpdir(), 'ptq-malformed-'));
after(() => rmSync(work, { recursive: true, force: true }));
let cases: MalformedCase[] = [];
before(async () => {
  cases = await generateCorpus(work);
});

/** README: "`test/fixtures/malformed/generate.ts` builds 105 malformed files". */
const README_CASES = 105;

test(`corpus: ${README_CASES} malformed files across every format`, () => {
  assert.equal(cases.length, README_CASES, 'the corpus has as many cases as README says');
  const kinds = new Set(cases.map((c) => c.kind));
  for (const k of ['safetensors', 'model', 'tokenizer-bin', 'tokenizer-json', 'gguf'])
    assert.ok(kinds.has(k as MalformedCase['kind']), k);
  // The model cases cover config.json, llama2.c checkpoints and ptqkit checkpoints.
  for (const prefix of ['hf-', 'l2c-', 'ptq-', 'st-', 'tok-', 'tj-', 'gguf-'])
    assert.ok(
      cases.some((c) => c.name.startsWith(prefix)),
      prefix,
    );
  console.log(
    `  ${cases.length} malformed files: ${[...kinds].map((k) => `${k} ${cases.filter((c) => c.kind === k).length}`).join(', ')}`,
  );
});

test('every malformed file: its typed error, message fragment, and the file named', async () => {
  const failures: string[] = [];
  for (const c of cases) {
    try {
      await openCase(c.kind, c.path);
      failures.push(`${c.name}: no error`);
    } catch (e) {
      const expectedClass = { ConfigError, FileError, FormatError, ShapeError }[c.error];
      if (!(e instanceof expectedClass))
        failures.push(
          `${c.name}: ${(e as Error).constructor.name} instead of ${c.error}: ${(e as Error).message}`,
        );
      else if (!e.message.includes(c.fragment))
        failures.push(`${c.name}: message lacks "${c.fragment}": ${e.message}`);
      else if (!e.message.includes(c.path))
        failures.push(`${c.name}: message does not name ${c.path}: ${e.message}`);
      // Never the content of a file that is not what it should be, never a source path.
      else if (e.message.includes('PTQ-SECRET') || /\bsrc\/|\.ts\b/.test(e.message))
        failures.push(`${c.name}: message echoes file content or names a source file: ${e.message}`);
    }
  }
  assert.deepEqual(failures, []);
});

test('a sample through the CLI: exit 1, one line naming the error, no stack trace', () => {
  const sample = cases.filter((c) => c.cli);
  assert.ok(sample.length >= 8, `${sample.length} CLI cases`);
  const text = path.join(REPO, 'data/tinystories-valid-slice.txt');
  for (const [i, c] of sample.entries()) {
    const r = runCli(i % 2 ? ['eval', c.path, '--text', text] : ['inspect', c.path]);
    assert.equal(r.code, 1, `${c.name}: exit code`);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, `${c.name}: one line, got\n${r.stderr}`);
    assert.ok(lines[0]!.startsWith(`ptq: ${c.error}: `), `${c.name}: ${lines[0]}`);
    assert.ok(lines[0]!.includes(c.fragment), `${c.name}: ${lines[0]}`);
    assert.doesNotMatch(r.stderr, /\n\s+at /, `${c.name}: stack trace`);
    assert.ok(!r.stderr.includes(SECRET.slice(0, 20)), `${c.name}: echoes the secret`);
    assert.equal(r.stdout, '', `${c.name}: nothing on stdout`);
  }
});

test('a 1 KB safetensors file claiming 100 GB of tensors: refused, peak RSS up by < 16 MiB', () => {
  const file = cases.find((c) => c.name === 'st-claims-100GB')!.path;
  const script = `
    import { SafetensorsModel } from ${JSON.stringify(path.join(REPO, 'src/io/safetensors.ts'))};
    const rssBefore = process.memoryUsage().rss;
    try { await SafetensorsModel.open(${JSON.stringify(file)}); console.log('opened'); }
    catch (e) { console.log(e.constructor.name + ': ' + e.message); }
    console.log('maxRSS ' + process.resourceUsage().maxRSS + ' before ' + Math.round(rssBefore / 1024));`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: REPO,
    encoding: 'utf8',
  });
  assert.match(
    r.stdout,
    /^FormatError: .*'big': tensor data outside the file; expected offsets within \[0, 1000\], got \[0, 100000000000\]/,
  );
  const [, peakKiB, beforeKiB] = /maxRSS (\d+) before (\d+)/.exec(r.stdout)!.map(Number);
  const growthMiB = (peakKiB! - beforeKiB!) / 1024;
  console.log(
    `  100 GB claim refused at peak RSS ${(peakKiB! / 1024).toFixed(0)} MiB, ${growthMiB.toFixed(1)} MiB above the RSS before the open`,
  );
  // README: the peak grows by < 16 MiB (measured 0.1-4.5 MiB, the runtime's own noise, over the
  // ~75 MiB of node + tsx), i.e. nothing is allocated for the claimed tensors (100 GB).
  assert.ok(growthMiB < 16, `peak RSS ${growthMiB} MiB above the start`);
});
