/**
 * Method quality on the real models: the orderings every PTQ paper reports, asserted on
 * measured perplexity and KLD. Evaluation: the first 48K tokens of the TinyStories
 * validation text (chunks of 512); calibration: 128 windows of 512 tokens sampled (seed 0)
 * from tokens 96K+ of the same file — disjoint from the evaluation tokens.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import { readText } from '../../src/cli/commands.js';
import { type EvalResult, evaluate } from '../../src/eval/perplexity.js';
import { Decoder } from '../../src/model/decoder.js';
import { type LoadedModel, loadModel } from '../../src/model/load.js';
import { sampleCalibrationWindows } from '../../src/quant/calibrate.js';
import type { GridSpec } from '../../src/quant/grid.js';
import { type MethodName, quantizeModel } from '../../src/quant/quantize-model.js';
import { ASSETS, assetsPresent } from '../helpers.js';

const EVAL_TOKENS = 48 * 1024;
const CALIB_FROM = 96 * 1024;

const grid = (bits: number, groupSize: number): GridSpec => ({
  bits,
  symmetric: true,
  granularity: groupSize ? 'group' : 'channel',
  groupSize,
  scaleDtype: 'f16',
});

for (const modelPath of ['models/tinystories-656k', 'models/stories260k/stories260K.bin']) {
  describe(path.basename(modelPath), { skip: !assetsPresent && 'no ../shared/assets' }, () => {
    let model: LoadedModel;
    let evalTokens: number[];
    let calibration: { windows: Int32Array; seqlen: number; description: Record<string, unknown> };
    let fp: EvalResult;
    const results = new Map<string, EvalResult>();

    const run = async (method: MethodName, g: GridSpec, extra: { actOrder?: boolean } = {}) => {
      const key = `${method} int${g.bits} ${g.granularity === 'group' ? `g${g.groupSize}` : 'pc'}${extra.actOrder ? ' act-order' : ''}`;
      const q = await quantizeModel(model.config, model.weights, { method, grid: g, calibration, gptq: extra });
      const r = await evaluate(new Decoder(model.config, q.weights), evalTokens, {
        protocol: { ctx: 512, stride: 512, dropPartial: true },
        reference: new Decoder(model.config, model.weights),
      });
      console.log(`  ${key.padEnd(26)} ppl ${r.perplexity.toFixed(4)}  KLD ${r.kld!.toFixed(5)}  top-1 ${(100 * r.top1Agreement!).toFixed(2)}%  (${q.seconds.toFixed(1)} s)`);
      results.set(key, r);
      return r;
    };

    before(async () => {
      model = await loadModel(path.join(ASSETS, modelPath));
      const tokens = model.tokenizer.encode(await readText(path.join(ASSETS, 'text/tinystories-valid-800k.txt')));
      evalTokens = tokens.slice(0, EVAL_TOKENS);
      const options = { nsamples: 128, seqlen: 512, seed: 0 };
      calibration = { windows: sampleCalibrationWindows(tokens.slice(CALIB_FROM), options), seqlen: 512, description: options };
      fp = await evaluate(new Decoder(model.config, model.weights), evalTokens, { protocol: { ctx: 512, stride: 512, dropPartial: true } });
      console.log(`  fp32 ppl ${fp.perplexity.toFixed(4)}`);
    });

    test('RTN: W8 per-channel within 0.5% of FP32; FP < W8 < W4 < W3 in perplexity and KLD', async () => {
      const w8 = await run('rtn', grid(8, 0));
      const w4 = await run('rtn', grid(4, 32));
      const w3 = await run('rtn', grid(3, 32));
      assert.ok(Math.abs(w8.perplexity / fp.perplexity - 1) < 0.005);
      assert.ok(fp.perplexity < w8.perplexity && w8.perplexity < w4.perplexity && w4.perplexity < w3.perplexity);
      assert.ok(w8.kld! < w4.kld! && w4.kld! < w3.kld!);
      assert.ok(w8.top1Agreement! > w4.top1Agreement! && w4.top1Agreement! > w3.top1Agreement!);
    });

    for (const [bits, groupSize] of [
      [4, 32],
      [3, 32],
      [4, 0],
      [3, 0],
    ] as const) {
      test(`GPTQ beats RTN at int${bits} ${groupSize ? `g${groupSize}` : 'per-channel'}`, async () => {
        const rtn = results.get(`rtn int${bits} ${groupSize ? `g${groupSize}` : 'pc'}`) ?? (await run('rtn', grid(bits, groupSize)));
        const gptq = await run('gptq', grid(bits, groupSize));
        assert.ok(gptq.perplexity < rtn.perplexity, `ppl ${gptq.perplexity} vs ${rtn.perplexity}`);
        assert.ok(gptq.kld! < rtn.kld!, `KLD ${gptq.kld} vs ${rtn.kld}`);
      });
    }

    test('AWQ beats RTN at int4 g32', async () => {
      const rtn = results.get('rtn int4 g32')!;
      const awq = await run('awq', grid(4, 32));
      assert.ok(awq.perplexity < rtn.perplexity, `ppl ${awq.perplexity} vs ${rtn.perplexity}`);
      assert.ok(awq.kld! < rtn.kld!, `KLD ${awq.kld} vs ${rtn.kld}`);
    });
  });
}
