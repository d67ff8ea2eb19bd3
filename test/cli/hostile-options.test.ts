/**
 * Hostile option values and inputs (issue #14, items 8-10): each is refused with exit code 1 and
 * one line `ptq: <ErrorClass>: ...` naming the option or file and what was expected, no stack
 * trace, no help dump and no output left behind; never an untyped crash, never garbage with exit 0.
 */
import assert from 'node:assert/strict';
import { cpSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { REPO, tempDir } from '../helpers.js';
import { runCli } from './run-cli.js';

const MODEL = path.join(REPO, 'models/tinystories-656k');
const TEXT = path.join(REPO, 'data/tinystories-valid-slice.txt');
const work = tempDir('ptq-hostile-');
let outputs = 0;
const out = () => path.join(work, `out-${outputs++}`);

/** Exit code 1 and exactly one stderr line matching `pattern`, without a stack trace or help. */
function expectRefusal(args: string[], pattern: RegExp, output?: string): string {
  const r = runCli(args);
  assert.equal(r.code, 1, `exit code of ptq ${args.join(' ')}\n${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line on stderr, got:\n${r.stderr}`);
  assert.match(lines[0]!, pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at |Usage:/, 'no stack trace, no help');
  if (output) assert.ok(!existsSync(output), 'no output written');
  return lines[0]!;
}

test('--seqlen below 2 is refused before any work (was: Cannot read properties of undefined)', () => {
  for (const seqlen of ['0', '1', '-3']) {
    const o = out();
    expectRefusal(
      [
        'quantize',
        MODEL,
        '-o',
        o,
        '--method',
        'gptq',
        '--calib',
        TEXT,
        '--nsamples',
        '4',
        '--seqlen',
        seqlen,
      ],
      new RegExp(
        `^ptq: UsageError: 'seqlen': invalid calibration window length; expected an integer >= 2 \\(tokens per calibration window\\), got ${seqlen}$`,
      ),
      o,
    );
  }
  expectRefusal(
    ['compare', MODEL, '--text', TEXT, '-o', out(), '--methods', 'gptq', '--calib', TEXT, '--seqlen', '0'],
    /^ptq: UsageError: 'seqlen': invalid calibration window length/,
  );
});

test('calibration options out of range are refused even where nothing calibrates (were: ignored, exit 0)', () => {
  const o = out();
  expectRefusal(
    ['quantize', MODEL, '-o', o, '--nsamples', '-1'],
    /^ptq: UsageError: 'nsamples': invalid number of calibration samples; expected a positive integer, got -1$/,
    o,
  );
  expectRefusal(
    ['quantize', MODEL, '-o', o, '--seqlen', '0'],
    /^ptq: UsageError: 'seqlen': invalid calibration window length; expected an integer >= 2/,
    o,
  );
});

test('--nsamples whose activations cannot fit in memory is refused before allocating (was: Invalid typed array length)', () => {
  const o = out();
  expectRefusal(
    [
      'quantize',
      MODEL,
      '-o',
      o,
      '--method',
      'gptq',
      '--calib',
      TEXT,
      '--nsamples',
      '100000000',
      '--seqlen',
      '64',
    ],
    /^ptq: UsageError: 'nsamples': calibration activations do not fit in memory; expected --nsamples × --seqlen × hidden size 128 float32 values within .+, got 100000000 × 64 × 128 × 4 bytes = .+ GiB \(lower --nsamples or --seqlen\)$/,
    o,
  );
});

test('--group-size 0 and negatives other than -1 are refused (were: silently per channel)', () => {
  for (const g of ['0', '-5']) {
    const o = out();
    expectRefusal(
      ['quantize', MODEL, '-o', o, '--group-size', g],
      new RegExp(
        `^ptq: UsageError: option '--group-size <n>' argument '${g}' is invalid\\. expected a positive integer or -1 \\(one scale per output channel\\), got '${g}' \\(see ptq quantize --help\\)$`,
      ),
      o,
    );
  }
  expectRefusal(
    ['compare', MODEL, '--text', TEXT, '-o', out(), '--group-size', '-2'],
    /^ptq: UsageError: option '--group-size <n>' argument '-2' is invalid\..*\(see ptq compare --help\)$/,
  );
  // -1 is GPTQ's per-channel convention and still means one scale per output channel.
  const o = out();
  const r = runCli(['quantize', MODEL, '-o', o, '--bits', '8', '--group-size', '-1', '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).grid, 'int8-pc-sym');
});

/** A copy of the demo model with element 0 of `tensor` (float32) set to `value`. */
function modelWithWeight(name: string, tensor: string, value: number): string {
  const dir = path.join(work, name);
  cpSync(MODEL, dir, { recursive: true });
  const file = path.join(dir, 'model.safetensors');
  const bytes = readFileSync(file);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8'));
  assert.equal(header[tensor].dtype, 'F32');
  bytes.writeFloatLE(value, 8 + headerLength + header[tensor].data_offsets[0]);
  writeFileSync(file, bytes);
  return dir;
}

test('a finite 3e38 weight: eval refuses the NaN perplexity, naming the overflow (was: perplexity NaN, exit 0)', () => {
  const q = 'model.layers.0.self_attn.q_proj';
  const big = modelWithWeight('big-weight', `${q}.weight`, 3e38);
  const evalArgs = ['--text', TEXT, '--max-tokens', '1100'];
  const refusal = new RegExp(
    `^ptq: NumericError: 'window 1 of 2 \\(tokens 0\\.\\.511\\), token 0': model logits are not finite: float32 overflow in the forward pass; expected finite logits \\(a perplexity, not NaN\\), got NaN for vocabulary entry \\d+ \\(the first non-finite activations enter model\\.layers\\.0\\.self_attn\\.o_proj; largest \\|weight\\| (3\\.00|2\\.80)e\\+38 in ${q}\\.weight\\)$`,
  );
  // The float model itself overflows: q_proj's outputs reach ±Inf, attention turns them into NaN.
  expectRefusal(['eval', big, ...evalArgs], refusal);
  // With f32 scales the quantization is faithful (it computes the same overflowing function)...
  const o = out();
  const r = runCli(['quantize', big, '-o', o, '--scale-dtype', 'f32']);
  assert.equal(r.code, 0, r.stderr);
  // ...and its evaluation is refused the same way, with or without a reference.
  expectRefusal(['eval', o, ...evalArgs], refusal);
  expectRefusal(['eval', o, ...evalArgs, '--ref', MODEL], refusal);
  // The reference overflowing is named as such.
  expectRefusal(
    ['eval', MODEL, ...evalArgs, '--ref', big],
    /^ptq: NumericError: 'window 1 of 2 .+': reference model logits are not finite/,
  );
});

test('invalid UTF-8 in --text or --calib is refused with the file and byte offset (was: silently replaced)', () => {
  const file = path.join(work, 'latin1.txt');
  const text = readFileSync(TEXT, 'utf8').slice(0, 5000);
  // "café" in Latin-1: 0xE9 followed by a space is no UTF-8 sequence.
  const prefix = Buffer.from(text, 'utf8');
  writeFileSync(file, Buffer.concat([prefix, Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x20]), prefix]));
  const offset = prefix.length + 3;
  const message = new RegExp(
    `^ptq: FileError: ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} offset ${offset}: text is not valid UTF-8, got bytes e9 20 .+ \\(convert it from its encoding, e\\.g\\. iconv -f latin1 -t utf-8 .+\\)$`,
  );
  expectRefusal(['eval', MODEL, '--text', file], message);
  const o = out();
  expectRefusal(
    ['quantize', MODEL, '-o', o, '--method', 'gptq', '--calib', file, '--nsamples', '4'],
    message,
    o,
  );
  // A truncated multi-byte sequence at the very end is invalid too.
  const truncated = path.join(work, 'truncated.txt');
  writeFileSync(truncated, Buffer.concat([prefix, Buffer.from([0xe2, 0x82])]));
  expectRefusal(
    ['eval', MODEL, '--text', truncated],
    new RegExp(`offset ${prefix.length}: text is not valid UTF-8, got bytes e2 82 `),
  );
});

test('a bad option value prints one line and a pointer to the help, not the help (was: 1 + 127 lines)', () => {
  expectRefusal(
    ['quantize', MODEL, '-o', out(), '--bits', 'abc'],
    /^ptq: UsageError: option '--bits <n>' argument 'abc' is invalid\. expected an integer, got 'abc' \(see ptq quantize --help\)$/,
  );
  expectRefusal(
    ['quantize', MODEL, '-o', out(), '--bitz', '3'],
    /^ptq: UsageError: unknown option '--bitz' \(Did you mean --bits\?\) \(see ptq quantize --help\)$/,
  );
  expectRefusal(
    ['quantize', MODEL],
    /^ptq: UsageError: required option '-o, --output <dir>' not specified \(see ptq quantize --help\)$/,
  );
  expectRefusal(
    ['eval', MODEL, '--text', TEXT, '--ctx', '12x'],
    /^ptq: UsageError: option '--ctx <n>' argument '12x' is invalid\. expected an integer, got '12x' \(see ptq eval --help\)$/,
  );
  expectRefusal(['frobnicate'], /^ptq: UsageError: unknown command 'frobnicate' \(see ptq --help\)$/);
  // Asking for the help still prints it, with exit code 0.
  const help = runCli(['quantize', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^Usage: ptq quantize \[options\] <model>/);
});

test('an option the method or the input kind does not read is refused, naming what reads it (was: ignored)', () => {
  expectRefusal(
    ['quantize', MODEL, '-o', out(), '--damp', '0.1'],
    /--damp is an option of gptq, not of rtn \(drop --damp, or pass --method gptq\)/,
  );
  expectRefusal(
    ['quantize', MODEL, '-o', out(), '--method', 'asinq', '--calib', TEXT, '--hqq-iters', '3'],
    /--hqq-iters is an option of hqq, not of asinq/,
  );
  expectRefusal(['quantize', MODEL, '-o', out(), '--dtype', 'q4'], /--dtype applies to ONNX input only/);
  expectRefusal(
    ['quantize', MODEL, '-o', out(), '--block-size', '64'],
    /--block-size applies to ONNX input only/,
  );
  // Shared options are read by every method that declares them.
  const r = runCli(['quantize', MODEL, '-o', out(), '--method', 'sinq', '--sinq-iters', '4', '--json']);
  assert.equal(r.code, 0, r.stderr);
});

test("another exporter's option is refused (was: ignored)", () => {
  expectRefusal(
    ['export', MODEL, '--format', 'gguf', '--dtype', 'q4', '-o', path.join(work, 'x.gguf')],
    /--dtype is an option of --format onnx, not of gguf/,
  );
  expectRefusal(
    ['export', MODEL, '--format', 'onnx', '--type', 'q4_0', '-o', out()],
    /--type is an option of --format gguf, not of onnx/,
  );
});
