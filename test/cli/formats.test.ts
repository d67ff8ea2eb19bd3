/**
 * `ptq quantize --format`: GPTQ × NVFP4 from the command line, saved and evaluated from disk
 * exactly like in memory; options a format fixes are refused with one line.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { gridSpecFor } from '../../src/formats/number-formats.js';
import { Decoder } from '../../src/model/decoder.js';
import { loadModel } from '../../src/model/load.js';
import { evaluate } from '../../src/model/perplexity.js';
import { sampleCalibrationWindows } from '../../src/quant/calibrate.js';
import { quantizeModel } from '../../src/quant/quantize-model.js';
import { REPO } from '../helpers.js';
import { runCli } from './run-cli.js';

const MODEL = path.join(REPO, 'models/tinystories-656k');
const TEXT = path.join(REPO, 'data/tinystories-valid-slice.txt');
const work = mkdtempSync(path.join(os.tmpdir(), 'ptq-formats-cli-'));
after(() => rmSync(work, { recursive: true, force: true }));

test('ptq quantize --method gptq --format nvfp4: saved codes evaluate exactly like the in-memory model', async () => {
  const out = path.join(work, 'nvfp4');
  const calib = ['--calib', TEXT, '--nsamples', '16', '--seqlen', '128', '--seed', '1'];
  const q = runCli([
    'quantize',
    MODEL,
    '--method',
    'gptq',
    '--format',
    'nvfp4',
    ...calib,
    '-o',
    out,
    '--json',
  ]);
  assert.equal(q.code, 0, q.stderr);
  const report = JSON.parse(q.stdout);
  assert.equal(report.grid, 'nvfp4');
  // 393,216 weights in 14 linears: E2M1 codes, an E4M3 scale per 16, an FP32 scale per tensor.
  assert.equal(report.bitsPerWeight, 4.5 + (14 * 32) / 393216);
  const config = JSON.parse(readFileSync(path.join(out, 'config.json'), 'utf8'));
  assert.deepEqual(config.quantization_config.grid, gridSpecFor('nvfp4', {}));

  const e = runCli(['eval', out, '--text', TEXT, '--ref', MODEL, '--json']);
  assert.equal(e.code, 0, e.stderr);
  const fromDisk = JSON.parse(e.stdout);
  const fp = await loadModel(MODEL);
  const tokens = fp.tokenizer.encode(readFileSync(TEXT, 'utf8'));
  const windows = sampleCalibrationWindows(tokens, { nsamples: 16, seqlen: 128, seed: 1 });
  const inMemory = await quantizeModel(fp.config, fp.weights, {
    method: 'gptq',
    grid: gridSpecFor('nvfp4', {}),
    calibration: { windows, seqlen: 128, description: {} },
  });
  const r = await evaluate(new Decoder(fp.config, inMemory.weights), tokens, {
    protocol: { ctx: 512, stride: 512, dropPartial: true },
    reference: new Decoder(fp.config, fp.weights),
  });
  console.log(
    `  GPTQ NVFP4: ppl ${r.perplexity.toFixed(4)}, KLD ${r.kld!.toFixed(5)}, ${report.bitsPerWeight.toFixed(4)} bits/weight`,
  );
  assert.equal(fromDisk.perplexity, r.perplexity);
  assert.equal(fromDisk.kld, r.kld);
  assert.equal(fromDisk.bitsPerWeight, report.bitsPerWeight);
});

test('options a format fixes are refused before any work, naming the option', () => {
  const cases: [string[], RegExp][] = [
    [
      ['--format', 'mxfp4', '--bits', '8'],
      /'bits': --bits disagrees with --format mxfp4; expected 4 or no --bits, got 8/,
    ],
    [['--format', 'nvfp4', '--group-size', '32'], /'group-size': nvfp4 uses blocks of 16/],
    [['--format', 'mxfp8', '--scale-dtype', 'f16'], /'scale-dtype': mxfp8 stores e8m0 scales/],
    [['--format', 'ternary', '--asym'], /'asym': ternary grids are symmetric/],
    [['--format', 'fp5'], /argument 'fp5' is invalid/],
  ];
  for (const [args, message] of cases) {
    const r = runCli(['quantize', MODEL, ...args, '-o', path.join(work, 'never')]);
    assert.equal(r.code, 1, args.join(' '));
    assert.match(r.stderr, message);
  }
});
