/**
 * Calibrated quantization of sparse MoE models (#16 part 4). Every expert must get statistics
 * from every calibration token, whatever the router picks (as GPTQModel and llm-compressor
 * calibrate MoE models): the report says per expert how many tokens the router picked it for and
 * how many its statistics cover, and an expert the router never picks is still calibrated and
 * quantized, never skipped and never a failure.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { UsageError } from '../../src/errors.js';
import type { BlockLinear } from '../../src/formats/tensor-names.js';
import { blockLinears } from '../../src/model/architecture.js';
import { Decoder } from '../../src/model/decoder.js';
import { loadModel } from '../../src/model/load.js';
import { type LinearStats, runSequential, TRUE_SEQUENTIAL } from '../../src/quant/calibrate.js';
import { quantizeModel } from '../../src/quant/quantize-model.js';
import { runCli } from '../cli/run-cli.js';
import { seededRandom, tempDir } from '../helpers.js';
import { CASES, type HfConfig, WeightMaker, writeCheckpoint } from '../model/arch-reference.js';

const GRID = { bits: 4, symmetric: false, granularity: 'group', groupSize: 16, scaleDtype: 'f32' } as const;

async function writeMoeCase(type: string, edit?: (config: HfConfig, w: WeightMaker) => void) {
  const arch = CASES.find((c) => c.config.model_type === type)!;
  const config = { ...arch.config };
  const w = new WeightMaker(300);
  arch.tensors(w);
  edit?.(config, w);
  const dir = tempDir('ptq-moe-');
  await writeCheckpoint(dir, config, w.map);
  return { dir, config, w };
}

/** A text of word-level tokens w0..w95 (the tiny checkpoints' vocabulary). */
async function calibrationText(dir: string, words: number): Promise<string> {
  const rand = seededRandom(17);
  const file = path.join(dir, 'calib.txt');
  await writeFile(file, Array.from({ length: words }, () => `w${Math.floor(rand() * 96)}`).join(' '));
  return file;
}

interface ExpertReport {
  name: string;
  relativeError: number;
  routedTokens?: number;
  calibrationTokens?: number;
}

for (const type of ['mixtral', 'qwen3_moe', 'qwen2_moe']) {
  test(`${type}: ptq quantize --method gptq --json reports every expert's routed and calibration tokens`, async () => {
    const { dir, config } = await writeMoeCase(type);
    const out = path.join(tempDir('ptq-moe-out-'), 'q');
    const nsamples = 6;
    const seqlen = 16;
    const r = runCli([
      'quantize',
      dir,
      '-o',
      out,
      '--method',
      'gptq',
      '--bits',
      '4',
      '--group-size',
      '8',
      '--calib',
      await calibrationText(dir, 400),
      '--nsamples',
      String(nsamples),
      '--seqlen',
      String(seqlen),
      '--json',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const layers = JSON.parse(r.stdout).layers as ExpertReport[];
    const E = (config.num_local_experts ?? config.num_experts) as number;
    const k = config.num_experts_per_tok as number;
    const tokens = nsamples * seqlen;
    const model = await loadModel(dir);
    // Every block linear of every expert was quantized: 2 layers × (4 attention + 3 per expert (+ shared)).
    assert.deepEqual(
      layers.map((l) => l.name).sort(),
      [0, 1]
        .flatMap((layer) => blockLinears(model.config).map((l) => `model.layers.${layer}.${l}.weight`))
        .sort(),
    );
    for (const layer of [0, 1]) {
      const downs = Array.from(
        { length: E },
        (_, e) => layers.find((l) => l.name === `model.layers.${layer}.mlp.experts.${e}.down_proj.weight`)!,
      );
      for (const d of downs) {
        assert.equal(d.calibrationTokens, tokens, `${d.name}: statistics of every calibration token`);
        assert.ok(Number.isInteger(d.routedTokens) && d.routedTokens! > 0, `${d.name}: ${d.routedTokens}`);
        assert.ok(d.relativeError > 0 && d.relativeError < 0.1, `${d.name}: ${d.relativeError}`);
      }
      // Each token picks k distinct experts.
      assert.equal(
        downs.reduce((s, d) => s + d.routedTokens!, 0),
        tokens * k,
      );
    }
    // The shared expert runs on every token: no routing count.
    if (type === 'qwen2_moe') {
      const shared = layers.find((l) => l.name === 'model.layers.0.mlp.shared_expert.down_proj.weight')!;
      assert.equal(shared.routedTokens, undefined);
    }
  });
}

/*
 * A router that never picks expert 2: with top-2 of five rows [r, −r, 0, s, −s], each token's
 * |r·h| and |s·h| are positive and beat expert 2's logit 0, whatever h is.
 */
test('mixtral: an expert the router never picks still gets statistics of every token and is quantized', async () => {
  const D = 32;
  const { dir } = await writeMoeCase('mixtral', (config, w) => {
    config.num_local_experts = 5;
    for (let layer = 0; layer < 2; layer++) {
      const p = `model.layers.${layer}.block_sparse_moe.`;
      const router = w.map.get(`${p}gate.weight`)!;
      const [r, s] = [router.data.slice(0, D), router.data.slice(D, 2 * D)];
      const rows = [r, r.map((v) => -v), new Float32Array(D), s, s.map((v) => -v)];
      w.map.set(`${p}gate.weight`, { shape: [5, D], data: Float32Array.from(rows.flatMap((x) => [...x])) });
      // The case has four experts: the fifth is expert 0 negated.
      for (const proj of ['w1', 'w2', 'w3']) {
        const src = w.map.get(`${p}experts.0.${proj}.weight`)!;
        w.map.set(`${p}experts.4.${proj}.weight`, { shape: src.shape, data: src.data.map((v) => -v) });
      }
    }
  });
  const model = await loadModel(dir);
  const rand = seededRandom(23);
  const seqlen = 16;
  const windows = Int32Array.from({ length: 6 * seqlen }, () => Math.floor(rand() * 96));
  const original = new Map([...model.weights].map(([n, t]) => [n, t.data.slice()]));

  // The statistics as the sequential protocol hands them to the method.
  const stats = new Map<string, LinearStats>();
  await runSequential(new Decoder(model.config, model.weights), windows, seqlen, {
    groups: TRUE_SEQUENTIAL,
    chunk: 2,
    sampleRows: 0,
    quantizeGroup: async (layer, linears: BlockLinear[], s) => {
      for (const l of linears) stats.set(`${layer} ${l}`, s.get(l)!);
    },
  });
  for (const layer of [0, 1]) {
    const never = stats.get(`${layer} mlp.experts.2.down_proj`)!;
    assert.equal(never.routedTokens, 0, 'the router never picks expert 2');
    assert.equal(never.count, windows.length, 'yet its statistics cover every token');
    assert.ok(never.hessian.some((v) => v !== 0));
    for (const e of [0, 1, 3, 4])
      assert.ok(stats.get(`${layer} mlp.experts.${e}.down_proj`)!.routedTokens! > 0);
    // gate/up of every expert read the same MLP input: one statistics object over every token.
    assert.equal(stats.get(`${layer} mlp.experts.2.up_proj`), stats.get(`${layer} mlp.experts.0.gate_proj`));
  }

  const q = await quantizeModel(model.config, model.weights, {
    method: 'gptq',
    grid: GRID,
    calibration: { windows, seqlen, description: {} },
  });
  for (const layer of [0, 1]) {
    for (const proj of ['gate_proj', 'up_proj', 'down_proj']) {
      const name = `model.layers.${layer}.mlp.experts.2.${proj}.weight`;
      const t = q.quantization.tensors.get(name);
      assert.ok(t, `${name} quantized`);
      const report = q.layers.find((l) => l.name === name)!;
      assert.ok(report.relativeError > 0 && report.relativeError < 0.1, `${name}: ${report.relativeError}`);
      assert.notDeepEqual(q.weights.get(name)!.data, original.get(name));
    }
    const down = q.layers.find((l) => l.name === `model.layers.${layer}.mlp.experts.2.down_proj.weight`)!;
    assert.deepEqual([down.routedTokens, down.calibrationTokens], [0, windows.length]);
  }
});

test('mixtral: AWQ, whose norm scales the float router would also have to absorb, is refused with a UsageError', async () => {
  const model = await loadModel((await writeMoeCase('mixtral')).dir);
  const windows = Int32Array.from({ length: 2 * 8 }, (_, i) => i % 96);
  await assert.rejects(
    quantizeModel(model.config, model.weights, {
      method: 'awq',
      grid: GRID,
      calibration: { windows, seqlen: 8, description: {} },
    }),
    (e: Error) => e instanceof UsageError && /awq cannot fold/.test(e.message),
  );
});
