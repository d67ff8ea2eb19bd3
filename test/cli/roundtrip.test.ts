/**
 * `ptq quantize` then `ptq eval` of the saved directory reproduces the in-memory numbers
 * exactly: the checkpoint stores the codes, scales and zeros that were evaluated.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { evaluate } from '../../src/eval/perplexity.js';
import { Decoder } from '../../src/model/decoder.js';
import { loadModel } from '../../src/model/load.js';
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
    const grid = { bits: Number(bits), symmetric: !extra.includes('--asym' as never), granularity: 'group' as const, groupSize: Number(extra[1]), scaleDtype: 'f16' as const };
    const inMemory = await quantizeModel(fp.config, fp.weights, { method: 'rtn', grid });
    const tokens = fp.tokenizer.encode(readFileSync(TEXT, 'utf8'));
    const r = await evaluate(new Decoder(fp.config, inMemory.weights), tokens, {
      protocol: { ctx: 512, stride: 512, dropPartial: true },
      reference: new Decoder(fp.config, fp.weights),
    });
    console.log(`  W${bits}: ppl ${fromDisk.perplexity} (disk) vs ${r.perplexity} (memory), KLD ${fromDisk.kld}, bpw ${quantizeReport.bitsPerWeight}`);
    assert.equal(fromDisk.perplexity, r.perplexity);
    assert.equal(fromDisk.kld, r.kld);
    assert.equal(fromDisk.top1Agreement, r.top1Agreement);
    assert.equal(fromDisk.bitsPerWeight, quantizeReport.bitsPerWeight);
    assert.equal(quantizeReport.bitsPerWeight, Number(bits) + (16 + (extra.includes('--asym' as never) ? Number(bits) : 0)) / Number(extra[1]));
  });
}
