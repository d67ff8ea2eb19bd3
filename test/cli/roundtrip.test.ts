/**
 * `ptq quantize` then `ptq eval` of the saved directory reproduces the in-memory numbers
 * exactly: the checkpoint stores the codes, scales and zeros that were evaluated.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { Decoder } from '../../src/model/decoder.js';
import { loadModel } from '../../src/model/load.js';
import { evaluate } from '../../src/model/perplexity.js';
import { sampleCalibrationWindows } from '../../src/quant/calibrate.js';
import { quantizeModel } from '../../src/quant/quantize-model.js';
import { REPO } from '../helpers.js';
import { runCli } from './run-cli.js';

const MODEL = path.join(REPO, 'models/tinystories-656k');
const TEXT = path.join(REPO, 'data/tinystories-valid-slice.txt');
const work = mkdtempSync(path.join(os.tmpdir(), 'ptq-roundtrip-'));
after(() => rmSync(work, { recursive: true, force: true }));

for (const [bits, extra] of [
  ['4', ['--group-size', '32']],
  ['3', ['--group-size', '64', '--asym']],
] as const) {
  test(`W${bits} ${extra.join(' ')}: saved model evaluates exactly like the in-memory one`, async () => {
    const out = path.join(work, `w${bits}`);
    const q = runCli(['quantize', MODEL, '--bits', bits, ...extra, '-o', out, '--json']);
    assert.equal(q.code, 0, q.stderr);
    const quantizeReport = JSON.parse(q.stdout);

    const e = runCli(['eval', out, '--text', TEXT, '--ref', MODEL, '--json']);
    assert.equal(e.code, 0, e.stderr);
    const fromDisk = JSON.parse(e.stdout);

    const fp = await loadModel(MODEL);
    const grid = {
      bits: Number(bits),
      symmetric: !extra.includes('--asym' as never),
      granularity: 'group' as const,
      groupSize: Number(extra[1]),
      scaleDtype: 'f16' as const,
    };
    const inMemory = await quantizeModel(fp.config, fp.weights, { method: 'rtn', grid });
    const tokens = fp.tokenizer.encode(readFileSync(TEXT, 'utf8'));
    const r = await evaluate(new Decoder(fp.config, inMemory.weights), tokens, {
      protocol: { ctx: 512, stride: 512, dropPartial: true },
      reference: new Decoder(fp.config, fp.weights),
    });
    console.log(
      `  W${bits}: ppl ${fromDisk.perplexity} (disk) vs ${r.perplexity} (memory), KLD ${fromDisk.kld}, bpw ${quantizeReport.bitsPerWeight}`,
    );
    assert.equal(fromDisk.perplexity, r.perplexity);
    assert.equal(fromDisk.kld, r.kld);
    assert.equal(fromDisk.top1Agreement, r.top1Agreement);
    assert.equal(fromDisk.bitsPerWeight, quantizeReport.bitsPerWeight);
    assert.equal(
      quantizeReport.bitsPerWeight,
      Number(bits) + (16 + (extra.includes('--asym' as never) ? Number(bits) : 0)) / Number(extra[1]),
    );
  });
}

test('GPTQ with act-order: g_idx and per-layer errors are saved, and the saved model evaluates like the in-memory one', async () => {
  const out = path.join(work, 'gptq');
  const calib = ['--calib', TEXT, '--nsamples', '16', '--seqlen', '128', '--seed', '1'];
  const q = runCli([
    'quantize',
    MODEL,
    '--method',
    'gptq',
    '--bits',
    '4',
    '--group-size',
    '32',
    '--act-order',
    ...calib,
    '-o',
    out,
    '--json',
  ]);
  assert.equal(q.code, 0, q.stderr);
  const report = JSON.parse(q.stdout);
  assert.equal(report.layers.length, 14);
  const config = JSON.parse(readFileSync(path.join(out, 'config.json'), 'utf8'));
  assert.equal(config.quantization_config.method, 'gptq');
  assert.equal(config.quantization_config.gptq.actOrder, true);
  assert.equal(Object.keys(config.quantization_config.layer_errors).length, 14);

  const saved = await loadModel(out);
  const qt = saved.quantization!.tensors.get('model.layers.0.mlp.down_proj.weight')!;
  assert.ok(qt.groupIndex, 'g_idx stored');
  assert.deepEqual(
    [...new Set(qt.groupIndex)].sort((a, b) => a - b),
    Array.from({ length: 384 / 32 }, (_, i) => i),
  );
  // 4-bit codes + f16 scale per 32 + int32 g_idx per input column.
  assert.equal(report.bitsPerWeight > 4.5, true);

  const e = runCli(['eval', out, '--text', TEXT, '--ref', MODEL, '--json']);
  assert.equal(e.code, 0, e.stderr);
  const fp = await loadModel(MODEL);
  const tokens = fp.tokenizer.encode(readFileSync(TEXT, 'utf8'));
  const windows = sampleCalibrationWindows(tokens, { nsamples: 16, seqlen: 128, seed: 1 });
  const inMemory = await quantizeModel(fp.config, fp.weights, {
    method: 'gptq',
    grid: { bits: 4, symmetric: true, granularity: 'group', groupSize: 32, scaleDtype: 'f16' },
    calibration: { windows, seqlen: 128, description: {} },
    methodOptions: { actOrder: true },
  });
  const r = await evaluate(new Decoder(fp.config, inMemory.weights), tokens, {
    protocol: { ctx: 512, stride: 512, dropPartial: true },
    reference: new Decoder(fp.config, fp.weights),
  });
  assert.equal(JSON.parse(e.stdout).perplexity, r.perplexity);
  console.log(
    `  GPTQ act-order W4 g32: ppl ${r.perplexity.toFixed(4)}, KLD ${r.kld!.toFixed(5)}, ${report.bitsPerWeight.toFixed(3)} bits/weight`,
  );
});
