/**
 * Bench case `tokenize` (`npm run bench -- tokenize`): tokenizing long texts in bounded pieces
 * (issue #14 item 6) at 1, 4, 16 and 50 MB, with
 *   - the bundled TinyStories-656K tokenizer.json (no pre-tokenizer: for the library the whole
 *     text is one BPE word; one call took 89 s and 1.4 GB at 4 MB),
 *   - GPT-2's BPE as a tokenizer.json with Llama-3's Split regex (runs in the regex sandbox's
 *     worker thread),
 *   - llama2.c's Llama-2 tokenizer.bin.
 * The text is built in memory by repeating the asset texts (TinyStories then WikiText-2; the
 * repository's data/ slice when ../shared/assets is absent, with the bundled tokenizer only):
 * nothing is written to disk. Each tokenizer and size runs in its own process, so its peak RSS
 * is its own. `--whole` adds the library's one call at 1 and 4 MB, the "before" (minutes).
 * Prints a table on stderr and one JSON line (the Result of run.ts) on stdout.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatTable } from '../src/cli/table.js';
import { HfTokenizer } from '../src/io/hf-tokenizer.js';
import { Llama2cTokenizer } from '../src/io/llama2c-tokenizer.js';
import type { TextTokenizer } from '../src/io/tokenizer.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ASSETS = path.resolve(REPO, '..', 'shared', 'assets');
const HAVE_ASSETS = existsSync(ASSETS);
const SIZES_MB = [1, 4, 16, 50];
const WHOLE_MB = [1, 4];
const LLAMA3_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

const TOKENIZERS: Record<string, () => Promise<TextTokenizer>> = {
  'tinystories-656k tokenizer.json': () => HfTokenizer.load(path.join(REPO, 'models', 'tinystories-656k')),
  'gpt2 tokenizer.json (Split regex)': async () => {
    const dir = path.join(ASSETS, 'tokenizers', 'gpt2');
    const json = {
      added_tokens: [{ id: 50256, content: '<|endoftext|>', special: true, normalized: false }],
      normalizer: null,
      pre_tokenizer: {
        type: 'Sequence',
        pretokenizers: [
          { type: 'Split', pattern: { Regex: LLAMA3_PATTERN }, behavior: 'Isolated', invert: false },
          { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
        ],
      },
      post_processor: null,
      decoder: { type: 'ByteLevel' },
      model: {
        type: 'BPE',
        vocab: JSON.parse(readFileSync(path.join(dir, 'vocab.json'), 'utf8')),
        merges: readFileSync(path.join(dir, 'merges.txt'), 'utf8')
          .split('\n')
          .filter((l) => l.length > 0 && !l.startsWith('#version')),
      },
    };
    return HfTokenizer.fromJson(json, {}, 'gpt2/tokenizer.json');
  },
  'llama2-32k tokenizer.bin': () =>
    Llama2cTokenizer.load(path.join(ASSETS, 'tokenizers', 'llama2-32k', 'tokenizer.bin'), 32000),
};

/** Real text repeated to `chars` characters. */
function text(chars: number): string {
  const base = HAVE_ASSETS
    ? ['tinystories-valid-800k.txt', 'wikitext-2-raw-test.txt']
        .map((f) => readFileSync(path.join(ASSETS, 'text', f), 'utf8'))
        .join('\n\n')
    : readFileSync(path.join(REPO, 'data', 'tinystories-valid-slice.txt'), 'utf8');
  return base.repeat(Math.ceil(chars / base.length)).slice(0, chars);
}

interface Row {
  tokenizer: string;
  mb: number;
  mode: 'pieces' | 'whole';
  tokens: number;
  seconds: number;
  cpuSeconds: number;
  peakRssMiB: number;
}

if (process.argv[2] === '--child') {
  const [name, mb, mode] = [process.argv[3]!, Number(process.argv[4]), process.argv[5] as Row['mode']];
  const tokenizer = await TOKENIZERS[name]!();
  const t = text(Math.round(mb * 1e6));
  tokenizer.encode('Warm up (the regex sandbox starts its worker and probes its patterns).');
  const cpu = process.cpuUsage();
  const start = performance.now();
  const ids = tokenizer.encode(t, { whole: mode === 'whole' });
  const used = process.cpuUsage(cpu);
  const row: Row = {
    tokenizer: name,
    mb,
    mode,
    tokens: ids.length,
    seconds: (performance.now() - start) / 1000,
    cpuSeconds: (used.user + used.system) / 1e6,
    peakRssMiB: process.resourceUsage().maxRSS / 1024,
  };
  console.log(JSON.stringify(row));
  process.exit(0);
}

const rows: Row[] = [];
const names = HAVE_ASSETS ? Object.keys(TOKENIZERS) : ['tinystories-656k tokenizer.json'];
const whole = process.argv.includes('--whole');
for (const name of names) {
  const runs: [number, Row['mode']][] = [
    ...(whole ? WHOLE_MB.map((mb) => [mb, 'whole'] as [number, Row['mode']]) : []),
    ...SIZES_MB.map((mb) => [mb, 'pieces'] as [number, Row['mode']]),
  ];
  for (const [mb, mode] of runs) {
    process.stderr.write(`tokenize: ${name}, ${mb} MB, ${mode} ...\n`);
    const r = spawnSync(
      process.execPath,
      ['--import', 'tsx', fileURLToPath(import.meta.url), '--child', name, String(mb), mode],
      { cwd: REPO, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 20 },
    );
    if (r.status !== 0) throw new Error(`tokenize ${name} ${mb} MB ${mode} failed`);
    rows.push(JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Row);
  }
}
process.stderr.write(
  `${formatTable(
    ['tokenizer', 'MB', 'mode', 'tokens', 'seconds', 'CPU s', 'MB/s', 'MB per CPU s', 'peak RSS MiB'],
    rows.map((r) => [
      r.tokenizer,
      String(r.mb),
      r.mode,
      String(r.tokens),
      r.seconds.toFixed(2),
      r.cpuSeconds.toFixed(2),
      (r.mb / r.seconds).toFixed(2),
      (r.mb / r.cpuSeconds).toFixed(2),
      r.peakRssMiB.toFixed(0),
    ]),
  )}\n`,
);
const pieces = rows.filter((r) => r.mode === 'pieces');
const chars = pieces.reduce((n, r) => n + r.mb * 1e6, 0);
console.log(
  JSON.stringify({
    case: 'tokenize',
    // For run.ts's table: characters tokenized, so its "M params/s" column reads M characters/s.
    parameters: chars,
    quantizedParameters: chars,
    calibration: 'none',
    seconds: pieces.reduce((s, r) => s + r.seconds, 0),
    cpuSeconds: pieces.reduce((s, r) => s + r.cpuSeconds, 0),
    peakRssMiB: Math.max(...pieces.map((r) => r.peakRssMiB)),
    phases: {},
    tokenize: rows,
  }),
);
