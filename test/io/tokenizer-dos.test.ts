/**
 * Hostile corpus, tokenizer denial of service (issue #14 item 6). Each case runs in a child
 * process with a time limit, so that a regression fails instead of hanging the suite:
 *   - a tokenizer.json whose Split pattern is (▁?a+)+$: `ptq eval` of a 40-character text hung
 *     (exponential backtracking); now a FormatError naming tokenizer.json and the pattern,
 *     found by the probes before tokenizing, within seconds;
 *   - a pattern the probes pass, ((abc)+)+$, catastrophic on the text itself: the time budget
 *     of each step stops it;
 *   - the bundled tokenizer on 0.8, 1.6 and 4 MB of TinyStories: 11.7 s; 32.5 s and 0.74 GB;
 *     89 s and 1.4 GB in one call. Now CPU time and memory linear in the size, far under those,
 *     with the one-call ids (digests of the library's one call, computed once: minutes each).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { ASSETS, assetsPresent, REPO } from '../helpers.js';
import { BUNDLED } from './tokenizer-cases.js';

const TSX = pathToFileURL(path.join(REPO, 'node_modules/tsx/dist/loader.mjs')).href;
const work = mkdtempSync(path.join(os.tmpdir(), 'ptq-tokenizer-dos-'));
after(() => rmSync(work, { recursive: true, force: true }));

/** Run `node --import tsx <args>` with a time limit; the seconds it took. */
function run(args: string[], limitSeconds: number) {
  const start = performance.now();
  const r = spawnSync(process.execPath, ['--import', TSX, ...args], {
    cwd: REPO,
    encoding: 'utf8',
    timeout: limitSeconds * 1000,
    killSignal: 'SIGKILL',
  });
  const seconds = (performance.now() - start) / 1000;
  assert.ok(r.signal === null, `killed after ${seconds.toFixed(0)} s (limit ${limitSeconds} s): hangs`);
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, seconds };
}

/** A copy of the bundled model whose tokenizer.json pre-tokenizes with `pattern`. */
function hostileModel(name: string, pattern: string): string {
  const dir = path.join(work, name);
  cpSync(BUNDLED, dir, { recursive: true });
  const file = path.join(dir, 'tokenizer.json');
  const json = JSON.parse(readFileSync(file, 'utf8'));
  json.pre_tokenizer = { type: 'Split', pattern: { Regex: pattern }, behavior: 'Isolated', invert: false };
  writeFileSync(file, JSON.stringify(json));
  return dir;
}

for (const c of [
  {
    name: 'split-nested',
    pattern: '(\u2581?a+)+$',
    text: `${'a'.repeat(39)}!`,
    when: 'on a short probe text',
    what: 'the probes find it before tokenizing',
  },
  {
    name: 'split-abc',
    pattern: '((abc)+)+$',
    text: `${'abc'.repeat(30)}!`,
    when: 'while tokenizing',
    what: 'the probes pass it, the time budget stops it',
  },
]) {
  test(`hostile tokenizer.json, Split ${c.pattern}: ptq eval of ${c.text.length} characters fails with a FormatError within seconds (${c.what})`, () => {
    const dir = hostileModel(c.name, c.pattern);
    const text = path.join(work, `${c.name}.txt`);
    writeFileSync(text, c.text);
    const r = run([path.join(REPO, 'src/cli/main.ts'), 'eval', dir, '--text', text], 120);
    console.log(`  ${c.pattern}: exit ${r.code} after ${r.seconds.toFixed(1)} s: ${r.stderr.trim()}`);
    assert.equal(r.code, 1, r.stderr);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, /a regular expression of the tokenizer ran for more than [\d.]+ s/);
    assert.ok(lines[0]!.includes(c.when), lines[0]);
    assert.ok(lines[0]!.includes(path.join(dir, 'tokenizer.json')), 'names the file');
    assert.ok(lines[0]!.includes('pre_tokenizer.pattern.Regex'), 'names the field');
    assert.ok(lines[0]!.includes(JSON.stringify(c.pattern)), 'names the pattern');
    // Worker start-up (tsx compiles this module in the worker), then the probes' 3 s budget or
    // a tokenizing step's 10 s.
    assert.ok(r.seconds < 45, `${r.seconds.toFixed(1)} s`);
  });
}

test('hostile tokenizer.json, decoder Replace (a+)+$: decoding fails with a FormatError within seconds', () => {
  const dir = hostileModel('decoder', '\\s+');
  const file = path.join(dir, 'tokenizer.json');
  const json = JSON.parse(readFileSync(file, 'utf8'));
  json.decoder = { type: 'Replace', pattern: { Regex: '(a+)+$' }, content: '' };
  writeFileSync(file, JSON.stringify(json));
  const code = `
import { HfTokenizer } from ${JSON.stringify(pathToFileURL(path.join(REPO, 'src/io/hf-tokenizer.ts')).href)};
const tokenizer = await HfTokenizer.load(${JSON.stringify(dir)});
try {
  tokenizer.decode(tokenizer.encode('a'.repeat(40) + '!'));
  console.log('decoded');
} catch (e) {
  console.log(e.constructor.name + ': ' + e.message);
}`;
  const r = run(['--input-type=module', '-e', code], 120);
  console.log(`  decoder (a+)+$: ${r.seconds.toFixed(1)} s: ${r.stdout.trim()}`);
  assert.match(r.stdout, /^FormatError: .*tokenizer\.json 'decoder\.pattern\.Regex': a regular expression/m);
  assert.ok(r.stdout.includes('"(a+)+$"'), r.stdout);
  assert.ok(r.seconds < 30, `${r.seconds.toFixed(1)} s`);
});

/** One-call digests (tokenizer-cases.ts's digest) of the TinyStories text repeated to n MB. */
const ONE_CALL: Record<string, string> = {
  // One call on this machine, loaded: 51.5 s, 432 MiB peak; 249 s, 594 MiB; 466 s, 1473 MiB.
  '0.8': '194750:2598f4adbc4a9cb8',
  '1.6': '389526:6ff856e03e58aa2a',
  '4': '973934:79684e5b6a7014e8',
};

const MEASURE = `
import { readFileSync } from 'node:fs';
import { HfTokenizer } from ${JSON.stringify(pathToFileURL(path.join(REPO, 'src/io/hf-tokenizer.ts')).href)};
import { digest } from ${JSON.stringify(pathToFileURL(path.join(REPO, 'test/io/tokenizer-cases.ts')).href)};
const [chars, whole] = [Number(process.argv[1]), process.argv[2] === 'whole'];
const tokenizer = await HfTokenizer.load(${JSON.stringify(BUNDLED)});
const base = readFileSync(${JSON.stringify(path.join(ASSETS, 'text/tinystories-valid-800k.txt'))}, 'utf8');
const text = base.repeat(Math.ceil(chars / base.length)).slice(0, chars);
const rss = process.resourceUsage().maxRSS;
const cpu = process.cpuUsage();
const start = performance.now();
const ids = tokenizer.encode(text, { whole });
const used = process.cpuUsage(cpu);
console.log(JSON.stringify({
  seconds: (performance.now() - start) / 1000,
  cpuSeconds: (used.user + used.system) / 1e6,
  rssBeforeMiB: rss / 1024,
  peakRssMiB: process.resourceUsage().maxRSS / 1024,
  digest: digest(ids),
}));
`;

/** Tokenize the text repeated to `mb` MB in a child; its CPU seconds, peak RSS and digest. */
function measure(mb: number, limitSeconds: number, whole = false) {
  const r = run(
    ['--input-type=module', '-e', MEASURE, String(Math.round(mb * 1e6)), whole ? 'whole' : 'pieces'],
    limitSeconds,
  );
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as {
    seconds: number;
    cpuSeconds: number;
    rssBeforeMiB: number;
    peakRssMiB: number;
    digest: string;
  };
}

for (const [mb, before] of [
  [0.8, '11.7 s'],
  [1.6, '32.5 s, 0.74 GB'],
  [4, '89 s, 1.4 GB'],
] as const) {
  test(`${mb} MB of TinyStories (one call: ${before}): CPU and memory linear, ids of the one call`, {
    skip: !assetsPresent && 'needs ../shared/assets',
  }, () => {
    const m = measure(mb, 180);
    const grown = m.peakRssMiB - m.rssBeforeMiB;
    console.log(
      `  ${mb} MB: ${m.seconds.toFixed(2)} s, ${m.cpuSeconds.toFixed(2)} CPU s, ${(mb / m.cpuSeconds).toFixed(2)} MB per CPU s, ` +
        `peak RSS ${m.peakRssMiB.toFixed(0)} MiB (+${grown.toFixed(0)} over the loaded tokenizer), ${m.digest}`,
    );
    // About 1 CPU s per MB on an idle machine; one call took 15-22.
    assert.ok(m.cpuSeconds < 8 * mb, `${m.cpuSeconds.toFixed(1)} CPU s for ${mb} MB`);
    // Text, its normalized copy, the ids and one batch: tens of MiB per MB; one call, ~350.
    assert.ok(grown < 60 + 40 * mb, `+${grown.toFixed(0)} MiB for ${mb} MB`);
    assert.equal(m.digest, ONE_CALL[String(mb)]);
  });
}
