/**
 * SmoothQuant (arXiv:2211.10438) and weight-activation quantization on the real models.
 * Smoothing factors are checked against Eq. 4 by hand, the folds against the float model's
 * logits, and W8A8 / W4A8 / W4A4 KLD against FP32 pinned to measured numbers (the README table):
 * evaluation on the first 4096 tokens of the TinyStories validation text (chunks of 512),
 * calibration 32 windows of 512 tokens from tokens 96K+ (quality-setup.ts), RTN weights per channel.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import { FormatError, UsageError } from '../../src/errors.js';
import { exportGguf } from '../../src/export/gguf.js';
import { readText } from '../../src/io/text.js';
import { LLAMA_LAYOUT, type ModelConfig } from '../../src/model/config.js';
import { Decoder } from '../../src/model/decoder.js';
import {
  type ActivationQuantSpec,
  activationQuantOf,
  fakeQuantizeActivations,
} from '../../src/model/input-ops.js';
import { type LoadedModel, loadModel } from '../../src/model/load.js';
import { type EvalResult, evaluate } from '../../src/model/perplexity.js';
import { sampleCalibrationWindows } from '../../src/quant/calibrate.js';
import { quantizeModel } from '../../src/quant/quantize-model.js';
import type { RotationKind } from '../../src/quant/rotate.js';
import { activationAbsMax, type SmoothQuantOptions, smoothModel } from '../../src/quant/smoothquant.js';
import type { TensorMap } from '../../src/tensor.js';
import { runCli } from '../cli/run-cli.js';
import { ASSETS, assetsPresent, tempDir } from '../helpers.js';
import { assertPrinted, readmeTable } from '../readme-figures.js';
import {
  assertMeasured,
  type Calibration,
  calibrationWindows,
  intGrid,
  loadWithValidTokens,
  PROTOCOL,
} from './quality-setup.js';

test('Eq. 4 by hand: s = max|X|^α / max|W|^(1−α), 1/s into the RMSNorm gain, s into the columns', () => {
  // One block, hidden 2: q/k/v read input_layernorm, max|W_j| over all three: [1, 4].
  const config: ModelConfig = {
    modelType: 'llama',
    vocabSize: 3,
    hiddenSize: 2,
    intermediateSize: 2,
    numLayers: 1,
    numHeads: 1,
    numKvHeads: 1,
    headDim: 2,
    maxPositions: 8,
    ropeTheta: 10000,
    normEps: 1e-5,
    tiedEmbeddings: true,
  };
  const p = 'model.layers.0.';
  const m = (...v: number[]) => ({ shape: [2, 2], data: Float32Array.from(v) });
  const weights: TensorMap = new Map([
    [`${p}input_layernorm.weight`, { shape: [2], data: Float32Array.of(1, 2) }],
    [`${p}self_attn.q_proj.weight`, m(1, 0.5, -0.25, 2)],
    [`${p}self_attn.k_proj.weight`, m(0.5, -4, 0, 0)],
    [`${p}self_attn.v_proj.weight`, m(0, 1, 0, 0)],
    [`${p}self_attn.o_proj.weight`, m(1, 0, 0, 1)],
    [`${p}post_attention_layernorm.weight`, { shape: [2], data: Float32Array.of(3, 1) }],
    [`${p}mlp.gate_proj.weight`, m(2, 0, 0, 1)],
    [`${p}mlp.up_proj.weight`, m(8, 0, 0, 1)],
    [`${p}mlp.down_proj.weight`, m(1, 0, 0, 1)],
  ]);
  // max|X_j|: [4, 1] into q/k/v, [16, 4] into gate/up (only the group's first reader is read).
  const absMax = new Map([
    [`${p}self_attn.q_proj.weight`, Float32Array.of(4, 1)],
    [`${p}mlp.gate_proj.weight`, Float32Array.of(16, 4)],
  ]);
  const get = (w: TensorMap, name: string) => Array.from(w.get(`${p}${name}`)!.data);
  // α = 0.5: q/k/v s = [√4/√1, √1/√4] = [2, 0.5]; gate/up (max|W| [8, 1]) s = [√16/√8, √4/√1] = [√2, 2].
  const half = smoothModel(config, weights, absMax, { alpha: 0.5 });
  assert.deepEqual(Array.from(half.scales.get(`${p}self_attn.q_proj.weight`)!), [2, 0.5]);
  assert.deepEqual(get(half.weights, 'input_layernorm.weight'), [0.5, 4]);
  assert.deepEqual(get(half.weights, 'self_attn.q_proj.weight'), [2, 0.25, -0.5, 1]);
  assert.deepEqual(get(half.weights, 'self_attn.k_proj.weight'), [1, -2, 0, 0]);
  assert.deepEqual(get(half.weights, 'post_attention_layernorm.weight'), [Math.fround(3 / Math.SQRT2), 0.5]);
  assert.deepEqual(get(half.weights, 'mlp.up_proj.weight'), [Math.fround(8 * Math.SQRT2), 0, 0, 2]);
  assert.deepEqual(get(half.weights, 'self_attn.o_proj.weight'), [1, 0, 0, 1], 'groups "norms": o untouched');
  // α = 1 moves all of max|X| into the weights (s = max|X|); α = 0 equalizes the weights (s = 1/max|W|).
  assert.deepEqual(
    Array.from(smoothModel(config, weights, absMax, { alpha: 1 }).scales.values().next().value!),
    [4, 1],
  );
  assert.deepEqual(
    Array.from(smoothModel(config, weights, absMax, { alpha: 0 }).scales.values().next().value!),
    [1, 0.25],
  );
  assert.equal(weights.get(`${p}input_layernorm.weight`)!.data[0], 1, 'the input map is not modified');
  assert.throws(() => smoothModel(config, weights, absMax, { alpha: 1.5 }), UsageError);
  // Gemma-style gains (offset + w): (1 + w)/s − 1 keeps the same function.
  const gemma = smoothModel({ ...config, layout: { ...LLAMA_LAYOUT, normOffset: 1 } }, weights, absMax, {
    alpha: 0.5,
  });
  assert.deepEqual(get(gemma.weights, 'input_layernorm.weight'), [0, 5]); // (1+1)/2 − 1, (1+2)/0.5 − 1
});

test('static per-tensor activations (O3): the calibrated max sets s, values beyond it saturate', () => {
  // absMax 2.54 -> s = 0.02: 0.011 -> 1·s, -1 -> -50·s, 3 (beyond the calibrated range) -> 127·s.
  const x = Float32Array.of(0.011, -1, 3, 0);
  fakeQuantizeActivations(x, 2, 2, { bits: 8, granularity: 'per-tensor-static' }, 2.54);
  const s = 2.54 / 127;
  assert.deepEqual(Array.from(x), [s, -50 * s, 127 * s, 0].map(Math.fround));
  // The checkpoint's record is distrusted: maxima go with per-tensor-static only, and are finite.
  const spec = { bits: 8, granularity: 'per-tensor-static', absMax: { 'a.weight': 2 } };
  assert.deepEqual(activationQuantOf(spec, 'config.json'), spec);
  assert.throws(
    () => activationQuantOf({ bits: 8, granularity: 'per-tensor-static' }, 'config.json'),
    FormatError,
  );
  assert.throws(
    () => activationQuantOf({ ...spec, absMax: { 'a.weight': -1 } }, 'config.json'),
    /config.json 'quantization_config.activations': invalid activation quantization: static activation max of a.weight must be a finite number >= 0, got -1/,
  );
  assert.throws(() => activationQuantOf({ bits: 9.5, granularity: 'per-token' }, 'config.json'), FormatError);
});

/** KLD of every evaluation against one reference: its logits computed once per batch. */
class CachedReference extends Decoder {
  private readonly cache = new Map<string, Float32Array>();
  override async forward(tokens: Int32Array, B: number, T: number): Promise<Float32Array> {
    const key = `${B}x${T}:${tokens.join(',')}`;
    let logits = this.cache.get(key);
    if (!logits) {
      logits = await super.forward(tokens, B, T);
      this.cache.set(key, logits);
    }
    return logits;
  }
}

const EVAL_TOKENS = 4096;

/** Measured (perplexity, KLD) with the settings above; the README table. */
const MEASURED: Record<string, Record<string, [number, number]>> = {
  'tinystories-656k': {
    'W8A8 per-token': [37.5091, 0.00172],
    'W8A8 per-token SmoothQuant 0.5': [37.4015, 0.00168],
    'W8A8 static per-tensor': [38.1698, 0.01646],
    'W8A8 static per-tensor SmoothQuant 0.8 all': [37.5501, 0.00661],
    'W4A8 per-token': [40.6878, 0.13799],
    'W4A4 per-token': [61.2232, 0.53966],
    'W4A4 per-token SmoothQuant 0.5': [62.8001, 0.4837],
    'W4A4 per-token hadamard-online': [46.899, 0.34583],
    'W4A4 per-token hadamard': [64.3334, 0.50321],
  },
  'stories260K.bin': {
    'W8A8 per-token': [3.7739, 0.00118],
    'W8A8 per-token SmoothQuant 0.5': [3.7717, 0.0011],
    'W8A8 static per-tensor': [3.8235, 0.01083],
    'W8A8 static per-tensor SmoothQuant 0.8 all': [3.7781, 0.00382],
  },
};

/** README's table: its model cells carry the FP32 perplexity on these tokens, `<model> (<ppl>)`. */
const README_FP32 = new Map(
  readmeTable(
    'against FP32 on the first 4,096 tokens of `tinystories-valid-800k` (chunks of 512), calibration',
  )
    .slice(1)
    .flatMap(([model]) => {
      const m = /^(\S+) \(([\d.]+)\)$/.exec(model!);
      return m ? [[m[1]!, m[2]!] as const] : [];
    }),
);

/** full: also the W4 cases, whose measurements are pinned above for TinyStories-656K only. */
const MODELS = [
  { modelPath: 'models/tinystories-656k', full: true, readme: 'tinystories-656k' },
  { modelPath: 'models/stories260k/stories260K.bin', full: false, readme: 'stories260K' },
];

for (const { modelPath, full, readme } of MODELS) {
  const key = path.basename(modelPath);
  describe(key, { skip: !assetsPresent && 'no ../shared/assets' }, () => {
    let model: LoadedModel;
    let evalTokens: number[];
    let calibration: Calibration;
    let reference: CachedReference;

    before(async () => {
      let tokens: number[];
      ({ model, tokens } = await loadWithValidTokens(modelPath));
      evalTokens = tokens.slice(0, EVAL_TOKENS);
      calibration = calibrationWindows(tokens, 32);
      reference = new CachedReference(model.config, model.weights);
    });

    const run = async (
      label: string,
      weightBits: number,
      activations: ActivationQuantSpec,
      smoothquant?: Partial<SmoothQuantOptions>,
      rotate?: RotationKind,
    ): Promise<EvalResult> => {
      const q = await quantizeModel(model.config, model.weights, {
        method: 'rtn',
        grid: intGrid(weightBits, 0, true),
        calibration,
        activations,
        smoothquant,
        rotate,
      });
      const r = await evaluate(new Decoder(q.config, q.weights), evalTokens, {
        protocol: PROTOCOL,
        reference,
      });
      console.log(`  ${label.padEnd(40)} ppl ${r.perplexity.toFixed(4)}  KLD ${r.kld!.toFixed(5)}`);
      const measured = MEASURED[key]![label];
      assertMeasured(label, r, measured!);
      return r;
    };

    // The reference's own logits, cached for the KLDs below: the FP32 row costs no extra forward.
    test("FP32 perplexity as README's table prints it", async () => {
      const fp = await evaluate(reference, evalTokens, { protocol: PROTOCOL });
      const printed = README_FP32.get(readme);
      assert.ok(printed, `README's table has no FP32 perplexity for ${readme}: ${[...README_FP32.keys()]}`);
      assertPrinted(fp.perplexity, printed, `${readme} FP32 perplexity`);
    });

    test('smoothing keeps the float model: logits within 1e-5 of their largest magnitude', async () => {
      const ids = Int32Array.from(evalTokens.slice(0, 512));
      const fp = await reference.forward(ids, 2, 256);
      const absMax = await activationAbsMax(
        new Decoder(model.config, model.weights),
        calibration.windows.subarray(0, 4 * 512),
        512,
      );
      let scale = 0;
      for (const v of fp) scale = Math.max(scale, Math.abs(v));
      for (const groups of ['norms', 'all'] as const) {
        const smoothed = smoothModel(model.config, model.weights, absMax, { alpha: 0.5, groups });
        const logits = await new Decoder(model.config, smoothed.weights).forward(ids, 2, 256);
        let diff = 0;
        for (let i = 0; i < fp.length; i++) diff = Math.max(diff, Math.abs(logits[i]! - fp[i]!));
        assert.ok(diff / scale < 1e-5, `${groups}: max |Δ logit| ${diff} vs max |logit| ${scale}`);
        // Smoothing does move something: the q/k/v columns of layer 0 are rescaled.
        const s = smoothed.scales.get('model.layers.0.self_attn.q_proj.weight')!;
        assert.ok(Math.max(...s) / Math.min(...s) > 1.5);
      }
    });

    test('W8A8: SmoothQuant lowers KLD vs naive, per-token (α 0.5, the paper) and static per-tensor (α 0.8, all inputs)', async () => {
      const perToken: ActivationQuantSpec = { bits: 8, granularity: 'per-token' };
      const naive = await run('W8A8 per-token', 8, perToken);
      const smooth = await run('W8A8 per-token SmoothQuant 0.5', 8, perToken, { alpha: 0.5 });
      assert.ok(smooth.kld! < naive.kld!, `per-token KLD ${smooth.kld} vs ${naive.kld}`);
      const perTensor: ActivationQuantSpec = { bits: 8, granularity: 'per-tensor-static' };
      const naiveStatic = await run('W8A8 static per-tensor', 8, perTensor);
      const smoothStatic = await run('W8A8 static per-tensor SmoothQuant 0.8 all', 8, perTensor, {
        alpha: 0.8,
        groups: 'all',
      });
      assert.ok(
        smoothStatic.kld! < 0.7 * naiveStatic.kld!,
        `static KLD ${smoothStatic.kld} vs ${naiveStatic.kld}`,
      );
      // Per-token scales lose far less than one static scale per tensor.
      assert.ok(naive.kld! < smoothStatic.kld!);
    });

    // Not registered (rather than skipped) for the other model: the case does not exist there.
    if (full)
      test('W4A8 and W4A4 (per-token), W4A4 with SmoothQuant and with Hadamard rotations: the online one best in both metrics', async () => {
        const a8: ActivationQuantSpec = { bits: 8, granularity: 'per-token' };
        const a4: ActivationQuantSpec = { bits: 4, granularity: 'per-token' };
        const w4a8 = await run('W4A8 per-token', 4, a8);
        const w4a4 = await run('W4A4 per-token', 4, a4);
        const smooth = await run('W4A4 per-token SmoothQuant 0.5', 4, a4, { alpha: 0.5 });
        const online = await run('W4A4 per-token hadamard-online', 4, a4, undefined, 'hadamard-online');
        const absorbed = await run('W4A4 per-token hadamard', 4, a4, undefined, 'hadamard');
        assert.ok(w4a8.kld! < w4a4.kld!);
        // README: SmoothQuant lowers KLD but not perplexity at W4A4; so does the absorbed rotation,
        // which cannot reach down_proj's input.
        for (const [name, r] of [
          ['SmoothQuant', smooth],
          ['absorbed rotation', absorbed],
        ] as const) {
          assert.ok(r.kld! < w4a4.kld!, `${name} KLD ${r.kld} vs ${w4a4.kld}`);
          assert.ok(r.perplexity > w4a4.perplexity, `${name} ppl ${r.perplexity} vs ${w4a4.perplexity}`);
        }
        // Rotating o_proj/down_proj inputs at run time spreads the SwiGLU outliers before int4: it
        // removes a third of the KLD (measured 36%) and is the best W4A4 row in both metrics.
        assert.ok(online.kld! < (2 / 3) * w4a4.kld!, `online rotation ${online.kld} vs ${w4a4.kld}`);
        for (const r of [w4a4, smooth, absorbed]) {
          assert.ok(online.kld! < r.kld! && online.perplexity < r.perplexity, `online rotation vs ${r.kld}`);
        }
      });
  });
}

describe('ptq quantize --act-bits --smoothquant: saved, evaluated and refused by exporters', {
  skip: !assetsPresent && 'no ../shared/assets',
}, () => {
  const MODEL = path.join(ASSETS, 'models/tinystories-656k');
  const TEXT = path.join(ASSETS, 'text/tinystories-valid-slice.txt');
  const work = tempDir('ptq-smoothquant-');

  test('ptq eval of the saved directory reproduces the in-memory W8A8 model exactly', async () => {
    const out = path.join(work, 'w8a8');
    const flags = [
      '--bits',
      '8',
      '--group-size',
      '-1',
      '--act-bits',
      '8',
      '--act-granularity',
      'per-tensor-static',
    ];
    const sq = ['--smoothquant', '0.8', '--smoothquant-groups', 'all'];
    const calib = ['--calib', TEXT, '--nsamples', '4', '--seqlen', '256'];
    const q = runCli(['quantize', MODEL, ...flags, ...sq, ...calib, '-o', out, '--json']);
    assert.equal(q.code, 0, q.stderr);
    const report = JSON.parse(q.stdout);
    assert.equal(report.activations.granularity, 'per-tensor-static');
    assert.deepEqual(report.smoothquant, { alpha: 0.8, groups: 'all' });
    const evalArgs = ['--text', TEXT, '--ref', MODEL, '--ctx', '256', '--max-tokens', '2048', '--json'];
    const e = runCli(['eval', out, ...evalArgs]);
    assert.equal(e.code, 0, e.stderr);
    const fromDisk = JSON.parse(e.stdout);

    const fp = await loadModel(MODEL);
    const tokens = fp.tokenizer.encode(await readText(TEXT));
    const options = { nsamples: 4, seqlen: 256, seed: 0 };
    const q2 = await quantizeModel(fp.config, fp.weights, {
      method: 'rtn',
      grid: { bits: 8, symmetric: true, granularity: 'channel', groupSize: 0, scaleDtype: 'f16' },
      calibration: { windows: sampleCalibrationWindows(tokens, options), seqlen: 256, description: options },
      activations: { bits: 8, granularity: 'per-tensor-static' },
      smoothquant: { alpha: 0.8, groups: 'all' },
    });
    const saved = await loadModel(out);
    assert.deepEqual(saved.config.linearInputOps, q2.config.linearInputOps);
    const inMemory = await evaluate(new Decoder(q2.config, q2.weights), tokens.slice(0, 2048), {
      protocol: { ctx: 256, stride: 256, dropPartial: true },
      reference: new Decoder(fp.config, fp.weights),
    });
    assert.equal(fromDisk.perplexity, inMemory.perplexity);
    assert.equal(fromDisk.kld, inMemory.kld);
    // Without its activation quantization the saved model would be another (better) model.
    const weightsOnly = await evaluate(new Decoder(fp.config, q2.weights), tokens.slice(0, 2048), {
      protocol: { ctx: 256, stride: 256, dropPartial: true },
      reference: new Decoder(fp.config, fp.weights),
    });
    assert.ok(weightsOnly.kld! < inMemory.kld!);

    // Exporters hold weights only: refused with the reason, from the library and the CLI.
    await assert.rejects(exportGguf(saved, path.join(work, 'x.gguf'), { type: 'auto' }), (err: Error) => {
      assert.ok(err instanceof UsageError);
      assert.match(
        err.message,
        /cannot export to gguf: the model quantizes its activations \(int8 per-tensor-static\)/,
      );
      return true;
    });
    const x = runCli(['export', out, '--format', 'gptq', '-o', path.join(work, 'gptq')]);
    assert.equal(x.code, 1);
    assert.match(x.stderr, /cannot export to gptq: the model quantizes its activations/);
  });

  test('usage errors name the option', () => {
    const o = path.join(work, 'bad');
    const cases: [string[], RegExp][] = [
      [['--act-bits', '1'], /activation bits must be an integer in 2\.\.16, got 1/],
      [
        ['--act-bits', '8', '--act-granularity', 'per-row'],
        /activation granularity must be per-token, per-tensor or per-tensor-static, got per-row/,
      ],
      [['--act-granularity', 'per-token'], /'act-granularity': --act-granularity needs --act-bits/],
      [['--smoothquant', '0.5'], /'calib': SmoothQuant measures activation maxima on calibration text/],
      [
        ['--smoothquant', '2', '--calib', TEXT],
        /'smoothquant': SmoothQuant migration strength out of range; expected alpha in \[0, 1\], got 2/,
      ],
      [
        ['--act-bits', '8', '--act-granularity', 'per-tensor-static'],
        /'calib': static activation scales are measured on calibration text/,
      ],
      [['--act-bits', '8', '--export', 'gguf'], /'export': cannot export to gguf/],
    ];
    for (const [args, message] of cases) {
      const r = runCli(['quantize', MODEL, ...args, '-o', o]);
      assert.equal(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message);
    }
  });
});
