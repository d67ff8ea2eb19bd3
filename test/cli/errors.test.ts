/**
 * Bad input: one line on stderr naming the file/tensor and what was expected, exit code 1,
 * no stack trace, and no output directory left behind.
 */
import assert from 'node:assert/strict';
import {
  cpSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { REPO } from '../helpers.js';
import { runCli } from './run-cli.js';

const MODEL = path.join(REPO, 'models/tinystories-656k');
const work = mkdtempSync(path.join(os.tmpdir(), 'ptq-errors-'));
after(() => rmSync(work, { recursive: true, force: true }));

/** A copy of the demo model with one thing broken. */
function brokenModel(name: string, breakIt: (dir: string) => void): string {
  const dir = path.join(work, name);
  cpSync(MODEL, dir, { recursive: true });
  breakIt(dir);
  return dir;
}

function editConfig(dir: string, edit: (c: Record<string, unknown>) => void) {
  const file = path.join(dir, 'config.json');
  const c = JSON.parse(readFileSync(file, 'utf8'));
  edit(c);
  writeFileSync(file, JSON.stringify(c));
}

function expectCleanFailure(args: string[], pattern: RegExp, output?: string) {
  const r = runCli(args);
  assert.notEqual(r.code, 0, 'exit code');
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line on stderr, got:\n${r.stderr}`);
  assert.match(lines[0]!, pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  if (output) {
    assert.ok(!existsSync(output), 'no output directory');
    assert.deepEqual(
      readdirSync(path.dirname(output)).filter((f) => f.includes('ptq-tmp')),
      [],
      'no temp directory',
    );
  }
}

const out = () => path.join(work, `out-${Math.random().toString(36).slice(2)}`);

test('truncated safetensors file', () => {
  const dir = brokenModel('truncated', (d) => truncateSync(path.join(d, 'model.safetensors'), 100_000));
  const o = out();
  expectCleanFailure(
    ['quantize', dir, '-o', o],
    /model\.safetensors '.+': tensor data outside the file; expected offsets within \[0, \d+\], got/,
    o,
  );
});

test('safetensors header length larger than the file', () => {
  const dir = brokenModel('bad-header', (d) => {
    const f = path.join(d, 'model.safetensors');
    const bytes = readFileSync(f);
    bytes.writeBigUInt64LE(BigInt(1e12), 0);
    writeFileSync(f, bytes);
  });
  expectCleanFailure(
    ['eval', dir, '--text', path.join(REPO, 'data/tinystories-valid-slice.txt')],
    /model\.safetensors offset 0: header length larger than the file/,
  );
});

test('tensor shape disagrees with config.json', () => {
  const dir = brokenModel('shape', (d) => editConfig(d, (c) => (c.intermediate_size = 256)));
  const o = out();
  expectCleanFailure(
    ['quantize', dir, '-o', o],
    /'model\.layers\.0\.mlp\.gate_proj\.weight': tensor shape disagrees with the model configuration; expected \[256,128\], got \[384,128\]/,
    o,
  );
});

test('unknown architecture', () => {
  const dir = brokenModel('arch', (d) => editConfig(d, (c) => (c.model_type = 'mamba')));
  expectCleanFailure(
    ['inspect', dir],
    /config\.json 'model_type': unknown architecture; expected one of llama, mistral, mixtral, qwen2, qwen2_moe, qwen3, qwen3_moe, gemma, gemma2, phi3, gpt2, opt, gpt_neox, got "mamba"/,
  );
});

test('bits out of range', () => {
  for (const bits of ['1', '9']) {
    const o = out();
    expectCleanFailure(
      ['quantize', MODEL, '--bits', bits, '-o', o],
      new RegExp(`'bits': bits out of range; expected an integer from 2 to 8, got ${bits}`),
      o,
    );
  }
});

test('missing tokenizer', () => {
  const dir = brokenModel('no-tokenizer', (d) => rmSync(path.join(d, 'tokenizer.json')));
  expectCleanFailure(
    ['eval', dir, '--text', path.join(REPO, 'data/tinystories-valid-slice.txt')],
    /tokenizer\.json: cannot read the tokenizer \(a Hugging Face model directory needs tokenizer\.json/,
  );
});

test('unwritable output directory', () => {
  const file = path.join(work, 'a-file');
  writeFileSync(file, 'x');
  expectCleanFailure(
    ['quantize', MODEL, '-o', path.join(file, 'out')],
    /a-file\/out: output location is not writable, got E(NOTDIR|EXIST)/,
  );
});

test('group size that does not divide the input dimension', () => {
  const o = out();
  expectCleanFailure(
    ['quantize', MODEL, '--group-size', '48', '-o', o],
    /'model\.layers\.0\.self_attn\.q_proj\.weight': group size does not divide the input dimension; expected in_features divisible by 48, got 128/,
    o,
  );
});

test('--debug prints the stack trace', () => {
  const r = runCli(['--debug', 'inspect', path.join(work, 'does-not-exist')]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /\n\s+at /);
});

test('calibrated methods: missing, empty or too short calibration text, --nsamples 0', () => {
  const empty = path.join(work, 'empty.txt');
  writeFileSync(empty, '');
  const o = out();
  expectCleanFailure(
    ['quantize', MODEL, '--method', 'gptq', '-o', o],
    /'calib': gptq needs calibration text/,
    o,
  );
  expectCleanFailure(
    ['quantize', MODEL, '--method', 'gptq', '--calib', empty, '-o', o],
    /'calib': calibration text too short; expected more than 512 tokens \(one window of --seqlen\), got 1 tokens/,
    o,
  );
  expectCleanFailure(
    [
      'quantize',
      MODEL,
      '--method',
      'awq',
      '--calib',
      path.join(REPO, 'data/tinystories-valid-slice.txt'),
      '--nsamples',
      '0',
      '-o',
      o,
    ],
    /'nsamples': invalid number of calibration samples; expected a positive integer, got 0/,
    o,
  );
});
