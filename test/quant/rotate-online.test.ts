/**
 * Online Hadamard rotation of block-linear inputs (`--rotate hadamard-online`, rotate.ts
 * rotateOnline + model/input-rotation.ts): on both real models the FP32 model with every input
 * rotated gives the original's logits; the stored weights are W·Q with Q rebuilt from the seed;
 * RTN W4 with o_proj/down_proj rotated beats plain RTN W4 in perplexity and KLD; the other
 * input choices are measured (and lose); a saved checkpoint restores the rotation and
 * reproduces the logits bit for bit; AWQ and the exporters refuse it.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import { evalCommand, exportCommand } from '../../src/cli/commands.js';
import { UsageError } from '../../src/errors.js';
import { exportCompressedTensors } from '../../src/export/compressed-tensors.js';
import { exportGguf } from '../../src/export/gguf.js';
import { exportGptq } from '../../src/export/gptq-safetensors.js';
import { exportOnnx } from '../../src/export/onnx.js';
import type { GridSpec } from '../../src/formats/grid.js';
import { gridSpecFor } from '../../src/formats/number-formats.js';
import { BLOCK_LINEARS, linearWeightName } from '../../src/formats/tensor-names.js';
import { writePtqCheckpoint } from '../../src/io/ptq-checkpoint.js';
import { Decoder } from '../../src/model/decoder.js';
import { inputRotation, type LinearInput, linearInputOf } from '../../src/model/input-rotation.js';
import { type LoadedModel, loadModel } from '../../src/model/load.js';
import { type EvalResult, evaluate } from '../../src/model/perplexity.js';
import { quantizeModel } from '../../src/quant/quantize-model.js';
import { rotateOnline } from '../../src/quant/rotate.js';
import { ASSETS, assetsPresent, maxAbsDiff, tempDir } from '../helpers.js';
import { matmul } from './dense-reference.js';
import { assertMeasured, loadWithValidTokens, PROTOCOL } from './quality-setup.js';

const LOGIT_REL_TOL = 1e-4;
const EVAL_TOKENS = 8192;
/** `ptq eval` of the saved checkpoint against the in-memory model: exact equality needs few tokens. */
const SAVED_TOKENS = 2048;
const ALL: LinearInput[] = ['attention', 'o_proj', 'mlp', 'down_proj'];
const SEEDS = [0, 1, 2, 3, 4, 5];

const grid = (bits: number, groupSize: number): GridSpec => gridSpecFor('int', { bits, groupSize });
/** The grid of each model (stories260K's FFN width 172 admits no group of 32). */
const MODELS = {
  'tinystories-656k': { path: 'models/tinystories-656k', grid: grid(4, 32), label: 'int4 g32' },
  'stories260K.bin': { path: 'models/stories260k/stories260K.bin', grid: grid(4, 0), label: 'int4 pc' },
} as const;

/**
 * Measured (first 8192 tokens of tinystories-valid-800k, chunks of 512, rotation seed 0 unless
 * named): RTN perplexity / KLD against FP32, pinned to 1%. `plain` is rotate.test.ts's number.
 */
const MEASURED: Record<string, Record<string, [number, number]>> = {
  'tinystories-656k': {
    plain: [41.4059, 0.08252],
    'o_proj+down_proj seed 0': [41.01, 0.07992],
    'o_proj+down_proj seed 1': [41.1847, 0.08022],
    'o_proj+down_proj seed 2': [40.2728, 0.08121],
    'o_proj+down_proj seed 3': [41.7917, 0.08692],
    'o_proj+down_proj seed 4': [40.9809, 0.08435],
    'o_proj+down_proj seed 5': [41.0161, 0.08086],
    'attention+o_proj+mlp+down_proj seed 0': [42.7016, 0.07931],
  },
  'stories260K.bin': {
    plain: [4.6431, 0.14957],
    'o_proj+down_proj seed 0': [4.6063, 0.14442],
    'o_proj+down_proj seed 1': [4.6518, 0.14344],
    'o_proj+down_proj seed 2': [4.6054, 0.14296],
    'o_proj+down_proj seed 3': [4.6704, 0.14441],
    'o_proj+down_proj seed 4': [4.5641, 0.14023],
    'o_proj+down_proj seed 5': [4.6412, 0.14407],
    'attention+o_proj+mlp+down_proj seed 0': [4.7568, 0.17486],
  },
};

describe('online rotation on the real models', { skip: !assetsPresent && 'no ../shared/assets' }, () => {
  for (const [name, m] of Object.entries(MODELS)) {
    describe(name, () => {
      let model: LoadedModel;
      let tokens: number[];
      let reference: Decoder;
      const evalRtn = async (inputs: LinearInput[] | undefined, seed = 0): Promise<EvalResult> => {
        const r = inputs ? rotateOnline(model.config, model.weights, { seed, inputs }) : model;
        const q = await quantizeModel(r.config, r.weights, { method: 'rtn', grid: m.grid });
        return evaluate(new Decoder(q.config, q.weights), tokens, { protocol: PROTOCOL, reference });
      };
      const log = (key: string, e: EvalResult) =>
        console.log(
          `  rtn ${m.label} ${key.padEnd(32)} ppl ${e.perplexity.toFixed(4)}  KLD ${e.kld!.toFixed(5)}`,
        );

      before(async () => {
        ({ model, tokens } = await loadWithValidTokens(m.path));
        tokens = tokens.slice(0, EVAL_TOKENS);
        reference = new Decoder(model.config, model.weights);
      });

      test('FP32 with every input rotated online: same logits; weights are W·Q with Q rebuilt from the seed', async () => {
        const rotated = rotateOnline(model.config, model.weights, { seed: 7, inputs: ALL });
        assert.deepEqual(rotated.config.linearInputOps?.rotation, { kind: 'hadamard', seed: 7, inputs: ALL });
        assert.equal(rotated.config.tiedEmbeddings, model.config.tiedEmbeddings, 'nothing untied');
        const ids = Int32Array.from(tokens.slice(0, 1024));
        const x = await reference.forward(ids, 2, 512);
        const y = await new Decoder(rotated.config, rotated.weights).forward(ids, 2, 512);
        let maxLogit = 0;
        for (const v of x) maxLogit = Math.max(maxLogit, Math.abs(v));
        const rel = maxAbsDiff(x, y) / maxLogit;
        console.log(`  max relative logit change ${rel.toExponential(2)}`);
        assert.ok(rel < LOGIT_REL_TOL, `${rel}`);
        // Layer 1's linears against the dense product W Q (float64), Q from (seed, layer, input) alone.
        for (const linear of BLOCK_LINEARS) {
          const w = model.weights.get(linearWeightName(1, linear))!;
          const [rows, cols] = w.shape as [number, number];
          const Q = inputRotation(7, 1, linearInputOf(linear), cols).matrix();
          const err = maxAbsDiff(
            rotated.weights.get(linearWeightName(1, linear))!.data,
            matmul(w.data, Q, rows, cols, cols),
          );
          assert.ok(err < 1e-6, `${linear}: ${err}`);
        }
      });

      test('RTN W4: o_proj + down_proj rotated online beats plain RTN in perplexity and KLD with seed 0 and on average over seeds 0–5', async () => {
        const r: Record<string, EvalResult> = {};
        const variants: [string, LinearInput[] | undefined, number][] = [
          ['plain', undefined, 0],
          ...SEEDS.map((seed): [string, LinearInput[], number] => [
            `o_proj+down_proj seed ${seed}`,
            ['o_proj', 'down_proj'],
            seed,
          ]),
          ['attention+o_proj+mlp+down_proj seed 0', ALL, 0],
        ];
        for (const [key, inputs, seed] of variants) {
          r[key] = await evalRtn(inputs, seed);
          log(key, r[key]!);
        }
        for (const [key] of variants) assertMeasured(`${name} ${key}`, r[key]!, MEASURED[name]![key]!);
        // The default seed wins in both; single seeds scatter around plain RTN (tinystories seed 3
        // loses in both), so the claim is the seed-0 result and the mean over seeds 0–5.
        const online = SEEDS.map((seed) => r[`o_proj+down_proj seed ${seed}`]!);
        assert.ok(online[0]!.perplexity < r.plain!.perplexity && online[0]!.kld! < r.plain!.kld!, 'seed 0');
        const mean = (f: (e: EvalResult) => number) => online.reduce((a, e) => a + f(e), 0) / online.length;
        assert.ok(mean((e) => e.perplexity) < r.plain!.perplexity, 'mean perplexity');
        assert.ok(mean((e) => e.kld!) < r.plain!.kld!, 'mean KLD');
        // Rotating the RMSNorm-fed inputs (q/k/v, gate/up) too raises perplexity on both models.
        assert.ok(r['attention+o_proj+mlp+down_proj seed 0']!.perplexity > r.plain!.perplexity);
      });

      test('quantize → save → load: the rotation comes back from quantization_config; ptq eval reproduces the numbers; AWQ and exports refuse', async () => {
        const q = await quantizeModel(model.config, model.weights, {
          method: 'rtn',
          grid: m.grid,
          rotate: 'hadamard-online',
          rotation: { seed: 1 },
        });
        assert.deepEqual(q.quantization.settings.rotation, {
          method: 'hadamard-online',
          seed: 1,
          inputs: ['o_proj', 'down_proj'],
        });
        const dir = path.join(tempDir('ptq-rotate-online-'), 'q');
        await writePtqCheckpoint(dir, { ...model, weights: q.weights }, q.quantization);
        const loaded = await loadModel(dir);
        assert.deepEqual(loaded.config.linearInputOps?.rotation, {
          kind: 'hadamard',
          seed: 1,
          inputs: ['o_proj', 'down_proj'],
        });
        const ids = Int32Array.from(tokens.slice(0, 512));
        const a = await new Decoder(q.config, q.weights).forward(ids, 1, 512);
        const b = await new Decoder(loaded.config, loaded.weights).forward(ids, 1, 512);
        assert.equal(maxAbsDiff(a, b), 0);
        // `ptq eval <dir> --ref <model>` gives the in-memory numbers (seed 1 above) exactly.
        const lines: string[] = [];
        await evalCommand(
          dir,
          {
            text: path.join(ASSETS, 'text/tinystories-valid-800k.txt'),
            ctx: 512,
            stride: 512,
            maxTokens: SAVED_TOKENS,
            ref: path.join(ASSETS, m.path),
          },
          { json: true, log: (t) => lines.push(t) },
        );
        const report = JSON.parse(lines.join('\n'));
        const direct = await evaluate(new Decoder(q.config, q.weights), tokens.slice(0, SAVED_TOKENS), {
          protocol: PROTOCOL,
          reference,
        });
        assert.equal(report.perplexity, direct.perplexity);
        assert.equal(report.kld, direct.kld);
        // A runtime without the x ← x·Q step would compute another function.
        for (const format of ['gguf', 'gptq', 'compressed-tensors', 'onnx'])
          await assert.rejects(
            exportCommand(
              dir,
              { format, output: path.join(path.dirname(dir), format) },
              { json: true, log: () => {} },
            ),
            (e) => e instanceof UsageError && /rotates its o_proj, down_proj inputs online/.test(e.message),
            format,
          );
        // The library's exporters refuse it themselves, not only the CLI.
        const saved = await loadModel(dir);
        const out = (f: string) => path.join(path.dirname(dir), `lib-${f}`);
        const libraryExports = {
          gguf: () => exportGguf(saved, out('gguf'), { type: 'auto' }),
          gptq: () => exportGptq(saved, out('gptq')),
          'compressed-tensors': () => exportCompressedTensors(saved, out('ct')),
          onnx: () => exportOnnx(saved, out('onnx'), { dtypes: ['q4'] }),
        };
        for (const [format, run] of Object.entries(libraryExports))
          await assert.rejects(
            run(),
            (e) =>
              e instanceof UsageError &&
              new RegExp(`cannot export to ${format}: the model rotates`).test(e.message),
            format,
          );
        await assert.rejects(
          quantizeModel(model.config, model.weights, {
            method: 'awq',
            grid: m.grid,
            rotate: 'hadamard-online',
          }),
          UsageError,
        );
      });
    });
  }
});
