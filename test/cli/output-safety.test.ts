/**
 * Nothing lost (src/io/atomic.ts): every command that writes is pointed at an output that is its
 * input, holds its input, lies inside its input, is a directory of someone else's files, or is `.`
 * in a git work tree. Each is refused with exit 1 and a message saying which, and afterwards the
 * SHA-256 of every file that existed before is unchanged and nothing new was left behind.
 * Then what is allowed: replacing ptq's own output, `--overwrite` into a foreign directory (its
 * other files kept), and the file rules of GGUF outputs.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { before, test } from 'node:test';
import { exportGguf } from '../../src/export/gguf.js';
import { exportOnnx } from '../../src/export/onnx.js';
import { loadModel } from '../../src/model/load.js';
import { llama2cBytes, tokenizerBinBytes } from '../fixtures/malformed/generate.js';
import { REPO, tempDir } from '../helpers.js';
import { runCli, runCliAsync } from './run-cli.js';

const work = tempDir('ptq-output-safety-');
const HF = path.join(work, 'models', 'hf');
const L2C_DIR = path.join(work, 'models', 'l2c');
const L2C = path.join(L2C_DIR, 'stories.bin');
const ONNX = path.join(work, 'models', 'onnx-model');
const GGUF = path.join(work, 'models', 'gguf', 'model.gguf');
const PTQ = path.join(work, 'models', 'ptq-q4');
const TEXT = path.join(work, 'text', 'valid.txt');
const FOREIGN = path.join(work, 'docs');
const PROJECT = path.join(work, 'project');

before(async () => {
  cpSync(path.join(REPO, 'models/tinystories-656k'), HF, { recursive: true });
  mkdirSync(L2C_DIR, { recursive: true });
  writeFileSync(L2C, llama2cBytes());
  writeFileSync(path.join(L2C_DIR, 'tokenizer.bin'), tokenizerBinBytes());
  writeFileSync(path.join(L2C_DIR, 'LICENSE'), 'MIT\n');
  mkdirSync(path.dirname(TEXT), { recursive: true });
  cpSync(path.join(REPO, 'data/tinystories-valid-slice.txt'), TEXT);
  const model = await loadModel(HF);
  await exportOnnx(model, ONNX, { dtypes: ['fp32'] });
  await exportGguf(model, GGUF, { type: 'f32' });
  const q = runCli(['quantize', HF, '-o', PTQ, '--bits', '4', '--json']);
  assert.equal(q.code, 0, q.stderr);
  mkdirSync(FOREIGN);
  writeFileSync(path.join(FOREIGN, 'notes.md'), '# my notes\n');
  writeFileSync(path.join(FOREIGN, 'config.json'), '{"mine": true}\n');
  mkdirSync(path.join(PROJECT, '.git', 'objects'), { recursive: true });
  writeFileSync(path.join(PROJECT, '.git', 'HEAD'), 'ref: refs/heads/main\n');
  mkdirSync(path.join(PROJECT, 'src'));
  writeFileSync(path.join(PROJECT, 'src', 'main.ts'), 'export {};\n');
});

/** path -> sha256 of every file below `root` (symlinks by their target text). */
function snapshot(root: string): Map<string, string> {
  const files = new Map<string, string>();
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else
        files.set(
          p,
          createHash('sha256')
            .update(e.isSymbolicLink() ? p : readFileSync(p))
            .digest('hex'),
        );
    }
  };
  walk(root);
  return files;
}

/** Every file of `before` unchanged, and no file added (a refused run writes nothing). */
function assertUntouched(before: Map<string, string>, label: string): void {
  const after = snapshot(work);
  for (const [file, hash] of before) {
    assert.ok(after.has(file), `${label}: ${path.relative(work, file)} was deleted`);
    assert.equal(after.get(file), hash, `${label}: ${path.relative(work, file)} was changed`);
  }
  const added = [...after.keys()].filter((f) => !before.has(f)).map((f) => path.relative(work, f));
  assert.deepEqual(added, [], `${label}: files left behind`);
}

interface WritingCommand {
  name: string;
  /** The input the output is placed against (a model directory or file). */
  input: () => string;
  output: 'directory' | 'file';
  argv: (out: string) => string[];
}

const CALIB = () => ['--calib', TEXT, '--nsamples', '2', '--seqlen', '32'];
const COMMANDS: WritingCommand[] = [
  {
    name: 'quantize (streamed rtn)',
    input: () => HF,
    output: 'directory',
    argv: (o) => ['quantize', HF, '-o', o],
  },
  {
    name: 'quantize llama2.c checkpoint',
    input: () => L2C,
    output: 'directory',
    argv: (o) => ['quantize', L2C, '--group-size', '-1', '-o', o],
  },
  {
    name: 'quantize gptq',
    input: () => HF,
    output: 'directory',
    argv: (o) => ['quantize', HF, '--method', 'gptq', ...CALIB(), '-o', o],
  },
  {
    name: 'quantize gptq --resume',
    input: () => HF,
    output: 'directory',
    argv: (o) => ['quantize', HF, '--method', 'gptq', ...CALIB(), '--resume', '-o', o],
  },
  {
    name: 'quantize --export gguf --export-out',
    input: () => HF,
    output: 'file',
    argv: (o) => ['quantize', HF, '-o', path.join(work, 'fresh-q'), '--export', 'gguf', '--export-out', o],
  },
  {
    name: 'quantize --export onnx --export-out',
    input: () => HF,
    output: 'directory',
    argv: (o) => ['quantize', HF, '-o', path.join(work, 'fresh-q'), '--export', 'onnx', '--export-out', o],
  },
  {
    name: 'export gguf',
    input: () => GGUF,
    output: 'file',
    argv: (o) => ['export', GGUF, '--format', 'gguf', '--type', 'q8_0', '-o', o],
  },
  {
    name: 'export onnx',
    input: () => HF,
    output: 'directory',
    argv: (o) => ['export', HF, '--format', 'onnx', '-o', o],
  },
  {
    name: 'export gptq',
    input: () => PTQ,
    output: 'directory',
    argv: (o) => ['export', PTQ, '--format', 'gptq', '-o', o],
  },
  {
    name: 'export compressed-tensors',
    input: () => PTQ,
    output: 'directory',
    argv: (o) => ['export', PTQ, '--format', 'compressed-tensors', '-o', o],
  },
  {
    name: 'compare',
    input: () => HF,
    output: 'directory',
    argv: (o) => [
      'compare',
      HF,
      '--text',
      TEXT,
      '--methods',
      'rtn',
      '--bits',
      '4',
      '--max-tokens',
      '256',
      '-o',
      o,
    ],
  },
  {
    name: 'quantize ONNX',
    input: () => ONNX,
    output: 'directory',
    argv: (o) => ['quantize', ONNX, '--dtype', 'q4', '-o', o],
  },
];

interface Placement {
  name: string;
  /** The output path, or undefined when the placement does not apply to this input. */
  out: (c: WritingCommand) => string | undefined;
  cwd?: string;
  /** What the one-line error must say. */
  message: (c: WritingCommand) => RegExp;
}

const PLACEMENTS: Placement[] = [
  { name: 'output = input', out: (c) => c.input(), message: () => /the output is an input/ },
  {
    name: 'output contains the input',
    out: (c) => path.dirname(c.input()),
    message: () => /the output contains an input/,
  },
  {
    name: 'output inside the input',
    out: (c) => (lstatSync(c.input()).isDirectory() ? path.join(c.input(), 'quantized') : undefined),
    message: () => /the output is inside an input/,
  },
  {
    name: 'output = a directory of files ptq did not write',
    out: () => FOREIGN,
    message: (c) =>
      c.output === 'file'
        ? /output exists and is a directory/
        : /holds files ptq did not write: config\.json, notes\.md/,
  },
  {
    name: "output = '.' in a git work tree",
    out: () => '.',
    cwd: PROJECT,
    message: (c) =>
      c.output === 'file' ? /output exists and is a directory/ : /holds files ptq did not write: \.git\/HEAD/,
  },
];

for (const placement of PLACEMENTS) {
  test(`every writing command refuses: ${placement.name}; every existing file unchanged`, async () => {
    const before = snapshot(work);
    const runs = COMMANDS.flatMap((command) => {
      const out = placement.out(command);
      return out === undefined ? [] : [{ command, argv: command.argv(out) }];
    });
    // Refused runs write nothing, so they may run side by side (three at a time).
    const results: { code: number | null; stderr: string }[] = [];
    for (let i = 0; i < runs.length; i += 3)
      results.push(
        ...(await Promise.all(runs.slice(i, i + 3).map((r) => runCliAsync(r.argv, { cwd: placement.cwd })))),
      );
    for (const [i, { command }] of runs.entries()) {
      const r = results[i]!;
      const label = `${command.name}, ${placement.name}`;
      assert.equal(r.code, 1, `${label}: exit code\n${r.stderr}`);
      assert.match(r.stderr, placement.message(command), label);
      assert.equal(r.stderr.trim().split('\n').length, 1, `${label}: one line\n${r.stderr}`);
    }
    assertUntouched(before, placement.name);
  });
}

test('a symbolic link as output is refused; so is --export-out naming the source weights', () => {
  const link = path.join(work, 'link-to-docs');
  symlinkSync(FOREIGN, link);
  const before = snapshot(work);
  const viaLink = runCli(['quantize', HF, '-o', link, '--overwrite']);
  assert.equal(viaLink.code, 1);
  assert.match(viaLink.stderr, /the output is a symbolic link/);
  // The link resolves to the input: refused as the input itself, even with --overwrite.
  const hfLink = path.join(work, 'link-to-hf');
  symlinkSync(HF, hfLink);
  const intoInput = runCli(['quantize', HF, '-o', hfLink, '--overwrite']);
  assert.match(intoInput.stderr, /the output is an input/);
  const weights = path.join(HF, 'model.safetensors');
  const exportOut = runCli([
    'quantize',
    HF,
    '-o',
    path.join(work, 'q-new'),
    '--export',
    'gguf',
    '--export-out',
    weights,
  ]);
  assert.equal(exportOut.code, 1);
  assert.match(exportOut.stderr, /the output is inside an input/);
  assertUntouched(new Map([...before, [hfLink, snapshot(work).get(hfLink)!]]), 'symlinks');
});

test("replacing ptq's own output works; a file added to it makes it the user's", () => {
  const out = path.join(work, 'own');
  for (const bits of ['4', '8']) {
    const r = runCli(['quantize', HF, '-o', out, '--bits', bits, '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).grid, `int${bits}-g32-sym`);
  }
  assert.deepEqual(JSON.parse(readFileSync(path.join(out, '.ptq-output.json'), 'utf8')).files, [
    'config.json',
    'model.safetensors',
    'special_tokens_map.json',
    'tokenizer.json',
    'tokenizer_config.json',
  ]);
  writeFileSync(path.join(out, 'README.md'), 'my model card\n');
  const before = snapshot(work);
  const refused = runCli(['quantize', HF, '-o', out]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /holds files ptq did not write: README\.md/);
  assertUntouched(before, 'own output with a README');
});

test('--overwrite writes into a foreign directory: same-named files replaced, every other file kept', () => {
  const dir = path.join(work, 'overwrite-into');
  mkdirSync(path.join(dir, 'notes'), { recursive: true });
  writeFileSync(path.join(dir, 'notes', 'todo.md'), 'keep me\n');
  writeFileSync(path.join(dir, 'config.json'), '{"replaced": "yes"}\n');
  const kept = readFileSync(path.join(dir, 'notes', 'todo.md'));
  const r = runCli(['quantize', HF, '-o', dir, '--overwrite', '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(readFileSync(path.join(dir, 'notes', 'todo.md')), kept);
  assert.equal(JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')).model_type, 'llama');
  assert.ok(existsSync(path.join(dir, 'model.safetensors')));
  // Written into, not replaced: the next run still needs --overwrite (notes/ is the user's).
  assert.match(runCli(['quantize', HF, '-o', dir]).stderr, /holds files ptq did not write: notes\/todo\.md/);
  // No temporary left beside it.
  assert.deepEqual(
    readdirSync(work).filter((e) => e.startsWith('.ptq-')),
    [],
  );
});

test('GGUF output: a GGUF ptq wrote is replaced, any other file needs --overwrite', () => {
  const out = path.join(work, 'gguf-out', 'model-q8.gguf');
  for (let i = 0; i < 2; i++) {
    const r = runCli(['export', HF, '--format', 'gguf', '--type', 'q8_0', '-o', out, '--json']);
    assert.equal(r.code, 0, r.stderr);
  }
  const foreign = path.join(work, 'gguf-out', 'weights.gguf');
  cpSync(path.join(REPO, 'data/tinystories-valid-slice.txt'), foreign);
  const before = snapshot(work);
  const refused = runCli(['export', HF, '--format', 'gguf', '--type', 'q8_0', '-o', foreign]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /output file exists and was not written by ptq.*--overwrite/);
  assertUntouched(before, 'foreign file');
  const forced = runCli(['export', HF, '--format', 'gguf', '--type', 'q8_0', '-o', foreign, '--overwrite']);
  assert.equal(forced.code, 0, forced.stderr);
  assert.equal(readFileSync(foreign).subarray(0, 4).toString('latin1'), 'GGUF');
});

test('a failed deep -o leaves no empty parent directories behind', () => {
  const deep = path.join(work, 'deep', 'a', 'b', 'out');
  const r = runCli(['quantize', HF, '-o', deep, '--method', 'nosuch']);
  assert.equal(r.code, 1);
  const badText = runCli([
    'quantize',
    HF,
    '-o',
    deep,
    '--method',
    'gptq',
    '--calib',
    path.join(work, 'missing.txt'),
  ]);
  assert.equal(badText.code, 1);
  assert.equal(existsSync(path.join(work, 'deep')), false);
});

test('a legal 250-character output name is written (the temporary name stays within 255 bytes)', () => {
  const name = 'q'.repeat(250);
  const r = runCli(['quantize', HF, '-o', path.join(work, name), '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(existsSync(path.join(work, name, 'model.safetensors')));
  const gguf = `${'g'.repeat(245)}.gguf`;
  const e = runCli(['export', HF, '--format', 'gguf', '--type', 'q8_0', '-o', path.join(work, gguf)]);
  assert.equal(e.code, 0, e.stderr);
});
