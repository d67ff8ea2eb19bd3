/**
 * Model-wide options on sparse MoE models (#16 part 4): each either processes every expert or
 * refuses the model naming the option, never a result whose experts were silently left out.
 * Rotations and SmoothQuant are written for the dense block (their folds name the dense MLP's
 * linears) and refuse MoE models (refuseMoe in model/architecture.ts); outliers and LoRC run on
 * every block linear, experts included; ONNX export is Llama-only.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { loadModel } from '../../src/model/load.js';
import { runCli } from '../cli/run-cli.js';
import { seededRandom, tempDir } from '../helpers.js';
import { CASES, WeightMaker, writeCheckpoint } from '../model/arch-reference.js';

async function mixtral() {
  const arch = CASES.find((c) => c.config.model_type === 'mixtral')!;
  const w = new WeightMaker(300);
  arch.tensors(w);
  const dir = tempDir('ptq-moe-opt-');
  await writeCheckpoint(dir, arch.config, w.map);
  const rand = seededRandom(17);
  const calib = path.join(dir, 'calib.txt');
  await writeFile(calib, Array.from({ length: 400 }, () => `w${Math.floor(rand() * 96)}`).join(' '));
  return { dir, calib, experts: arch.config.num_local_experts as number };
}

const CALIB = ['--nsamples', '4', '--seqlen', '16'];

test('--rotate and --smoothquant refuse MoE models with a UsageError naming the option, and write nothing', async () => {
  const { dir, calib } = await mixtral();
  const cases: [string, string[]][] = [
    ['--rotate', ['--method', 'rtn', '--rotate', 'hadamard']],
    ['--rotate', ['--method', 'rtn', '--rotate', 'hadamard-online']],
    ['--rotate', ['--method', 'gptq', '--rotate', 'hadamard', '--calib', calib, ...CALIB]],
    ['--smoothquant', ['--method', 'rtn', '--smoothquant', '--calib', calib, ...CALIB]],
  ];
  for (const [option, args] of cases) {
    const out = path.join(tempDir('ptq-moe-opt-out-'), 'q');
    const r = runCli(['quantize', dir, '-o', out, '--bits', '4', '--group-size', '8', ...args]);
    assert.equal(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.match(
      r.stderr,
      new RegExp(`${option} does not support sparse MoE models.*mixtral`),
      args.join(' '),
    );
    assert.equal(existsSync(out), false, `${args.join(' ')}: no output`);
  }
});

test('--outliers and --lorc-rank process every expert linear of a MoE model', async () => {
  const { dir, calib, experts } = await mixtral();
  const out = path.join(tempDir('ptq-moe-opt-out-'), 'q');
  const r = runCli([
    'quantize',
    dir,
    '-o',
    out,
    '--method',
    'rtn',
    '--bits',
    '3',
    '--group-size',
    '8',
    '--outliers',
    '0.02',
    '--lorc-rank',
    '2',
    '--calib',
    calib,
    ...CALIB,
  ]);
  assert.equal(r.code, 0, r.stderr);
  const q = (await loadModel(out)).quantization!.tensors;
  for (let layer = 0; layer < 2; layer++) {
    for (let e = 0; e < experts; e++) {
      for (const p of ['gate_proj', 'up_proj', 'down_proj']) {
        const name = `model.layers.${layer}.mlp.experts.${e}.${p}.weight`;
        const t = q.get(name);
        assert.ok(t, `${name} quantized`);
        assert.ok((t.outliers?.values.length ?? 0) > 0, `${name}: outliers kept`);
        assert.equal(t.lowRank?.rank, 2, `${name}: LoRC factors of rank 2`);
      }
    }
  }
  // LoRC's rank limit reads every block linear of layer 0, the experts' too (here k_proj [16, 32] is the smallest).
  const tooBig = runCli([
    'quantize',
    dir,
    '-o',
    `${out}2`,
    '--method',
    'rtn',
    '--group-size',
    '8',
    '--lorc-rank',
    '16',
  ]);
  assert.equal(tooBig.code, 1, tooBig.stderr);
  assert.match(tooBig.stderr, /LoRC rank out of range.*1 to 15.*k_proj/);
});

test('ONNX export refuses a MoE model (Llama-only), naming the architecture', async () => {
  const { dir } = await mixtral();
  const r = runCli(['export', dir, '--format', 'onnx', '-o', path.join(tempDir('ptq-moe-onnx-'), 'm')]);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /onnx|ONNX/);
  assert.match(r.stderr, /mixtral/);
});
