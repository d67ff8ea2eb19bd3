/**
 * GGUF export of sparse MoE models (#16 part 4) proven in llama.cpp: tiny random Mixtral
 * (general.architecture llama with experts), Qwen3-MoE (qwen3moe) and Qwen2-MoE (qwen2moe, shared
 * expert) checkpoints, with TinyStories-656K's vocabulary so that llama.cpp's "llama" tokenizer
 * holds it, exported F32 and as a ptqkit RTN checkpoint whose codes become Q4_0 blocks; llama.cpp
 * (node-llama-cpp) gives ptqkit's next-token log-probabilities and greedy tokens. llama.cpp's own
 * quantizer (llama_model_quantize, pure and with each K-quant mix) turns our F32 export into
 * exactly the bytes and tensor types of our quantized and mixed exports: the stacked
 * ffn_*_exps tensors and llama-quantize's expert rules (8 experts: attn_k/attn_v Q8_0, ...).
 *
 * Without llama.cpp a test skips with the reason, except under CI where it fails (skipOrFail).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { ConfigError } from '../../src/errors.js';
import { exportGguf } from '../../src/export/gguf.js';
import { GGUF_MIXES } from '../../src/formats/gguf-mix.js';
import { decodeF16, encodeF16 } from '../../src/formats/half.js';
import { ROUTER } from '../../src/formats/tensor-names.js';
import { GgufFile } from '../../src/io/gguf.js';
import { writePtqCheckpoint } from '../../src/io/ptq-checkpoint.js';
import { Decoder } from '../../src/model/decoder.js';
import { greedyGenerate } from '../../src/model/generate.js';
import { type LoadedModel, loadModel } from '../../src/model/load.js';
import { quantizeModel } from '../../src/quant/quantize-model.js';
import { ASSETS, assetsPresent, skipOrFail, tempDir } from '../helpers.js';
import { type HfConfig, llamaTensors, WeightMaker, writeCheckpoint } from '../model/arch-reference.js';
import {
  compareLogits,
  getLlamaRuntime,
  llamaGreedy,
  llamaLogProbs,
  logSoftmax,
  refHarness,
} from './llama-cpp.js';

const VOCAB_DIR = () => path.join(ASSETS, 'models/tinystories-656k');

const common = {
  vocab_size: 2048,
  bos_token_id: 1,
  eos_token_id: 2,
  num_hidden_layers: 2,
  max_position_embeddings: 256,
  hidden_size: 256,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  hidden_act: 'silu',
  torch_dtype: 'float32',
  tie_word_embeddings: false,
};

/** One tiny model per llama.cpp MoE architecture; widths of 256 so that K-quant rows are whole blocks. */
const MOE_CASES: { key: string; config: HfConfig }[] = [
  {
    // 8 experts: llama-quantize's `n_expert == 8` rules apply.
    key: 'mixtral',
    config: {
      ...common,
      model_type: 'mixtral',
      intermediate_size: 256,
      num_local_experts: 8,
      num_experts_per_tok: 2,
      rms_norm_eps: 1e-5,
      rope_theta: 1000000,
      sliding_window: null,
    },
  },
  {
    // head_dim × heads ≠ hidden: attention.key_length / value_length.
    key: 'qwen3_moe',
    config: {
      ...common,
      model_type: 'qwen3_moe',
      intermediate_size: 512,
      moe_intermediate_size: 256,
      head_dim: 32,
      num_experts: 6,
      num_experts_per_tok: 2,
      norm_topk_prob: true,
      rms_norm_eps: 1e-6,
      rope_theta: 1000000,
    },
  },
  {
    key: 'qwen2_moe',
    config: {
      ...common,
      model_type: 'qwen2_moe',
      intermediate_size: 512,
      moe_intermediate_size: 256,
      shared_expert_intermediate_size: 512,
      num_experts: 4,
      num_experts_per_tok: 2,
      norm_topk_prob: false,
      rms_norm_eps: 1e-6,
      rope_theta: 1000000,
      use_sliding_window: false,
    },
  },
];

/** A random checkpoint of `config` with TinyStories-656K's tokenizer files. */
async function writeMoeModel(config: HfConfig, dir: string, seed = 5): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const w = new WeightMaker(seed);
  llamaTensors(config, w);
  await writeCheckpoint(dir, config, w.map);
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'])
    copyFileSync(path.join(VOCAB_DIR(), f), path.join(dir, f));
}

/** The eval text without CR (the 656K vocabulary has no "\r"). */
const text = () =>
  readFileSync(path.join(ASSETS, 'text/tinystories-valid-slice.txt'), 'utf8').replaceAll('\r', '');

/** F32 weights: float32 on both sides, summation order apart (measured max 2.9e-6 here). */
const F32_LOGPROB_TOL = 5e-4;
/**
 * F16 weights (ptqkit's side: the same weights rounded to f16): llama.cpp's CPU matmul also rounds
 * the activations to f16 (or multiplies in float32 with AMX); measured max |Δlog-prob| 8.6e-3 to
 * 2.5e-2 (libggml-cpu-zen4), 1.7e-3 to 2.1e-3 at position 0.
 */
const F16_LOGPROB_TOL = 5e-2;
/**
 * Q4_0 weights, identical on both sides (asserted value by value): llama.cpp quantizes each
 * matmul's input to Q8_0 (a ~0.4% perturbation) and a token whose two best experts nearly tie is
 * then routed to another expert, which moves its output by far more than in a dense layer
 * (measured max |Δlog-prob| 0.47-2.65 over the window, 0.04-0.09 at position 0, top-1 51-60/64;
 * greedy tokens equal for 20 tokens on Mixtral and Qwen2-MoE, 6 on Qwen3-MoE). ptqkit's llama.cpp
 * emulation (llamaCppInputOps) does not cover expert inputs; asserted here: position 0 and top-1
 * agreement (greedy equality is asserted for F32 and F16).
 */
const Q4_0_FIRST_TOL = 0.2;
const Q4_0_TOP1_MIN = 0.75;
const WINDOW = 64;
const GREEDY_STEPS = 20;
const GREEDY_MIN = 16;

type Llama = Exclude<Awaited<ReturnType<typeof getLlamaRuntime>>, string>;

/**
 * `file` in llama.cpp against ptqkit's forward of `model` (the weights the file holds): the
 * tokenization, every log-probability of one window within `tol`, and 16+ greedy tokens equal.
 */
async function assertRunsLikePtqkit(
  llama: Llama,
  file: string,
  model: LoadedModel,
  label: string,
  bounds: { tol: number } | { firstTol: number; top1Min: number },
) {
  const V = model.config.vocabSize;
  const ids = model.tokenizer.encode(text());
  const window = ids.slice(0, WINDOW);
  const prompt = model.tokenizer.encode('Once upon a time');
  const decoder = new Decoder(model.config, model.weights);
  const lm = await llama.loadModel({ modelPath: file });
  try {
    assert.deepEqual(
      [lm.tokens.bos!, ...lm.tokenize(text())],
      ids,
      `${label}: llama.cpp tokenizes like ptqkit`,
    );
    const ours = logSoftmax(await decoder.forward(Int32Array.from(window), 1, WINDOW), WINDOW, V);
    const theirs = await llamaLogProbs(lm, window, V);
    const { maxDiff, agree } = compareLogits(theirs, ours, WINDOW, V);
    const first = compareLogits(theirs, ours, 1, V).maxDiff;
    const greedyOurs = await greedyGenerate(decoder, prompt, GREEDY_STEPS, model.config.eosTokenId);
    const greedyLlama = await llamaGreedy(lm, prompt, V, GREEDY_STEPS, model.config.eosTokenId);
    const same = greedyOurs.findIndex((tok, i) => tok !== greedyLlama[i]);
    console.log(
      `${label}: max|Δlog-prob| ${maxDiff.toExponential(2)} (position 0: ${first.toExponential(2)}) top-1 ${agree}/${WINDOW},` +
        ` greedy ${greedyOurs.length - prompt.length} tokens, equal for ${same < 0 ? greedyOurs.length - prompt.length : same - prompt.length}`,
    );
    if ('tol' in bounds) {
      assert.ok(maxDiff <= bounds.tol, `${label}: max |Δlog-prob| ${maxDiff} > ${bounds.tol}`);
      assert.deepEqual(greedyLlama, greedyOurs, `${label}: greedy tokens`);
      assert.ok(
        greedyOurs.length - prompt.length >= GREEDY_MIN,
        `${label}: ${greedyOurs.length - prompt.length} greedy tokens`,
      );
    } else {
      assert.ok(
        first <= bounds.firstTol,
        `${label}: position 0's max |Δlog-prob| ${first} > ${bounds.firstTol}`,
      );
      assert.ok(agree >= bounds.top1Min * WINDOW, `${label}: top-1 ${agree}/${WINDOW}`);
    }
  } finally {
    await lm.dispose();
  }
}

for (const { key, config } of MOE_CASES) {
  test(`${key}: GGUF export (F32, F16, and an RTN checkpoint's codes as Q4_0) runs in llama.cpp with ptqkit's logits and greedy tokens`, async (t) => {
    if (!assetsPresent) return t.skip('shared assets not present (TinyStories-656K vocabulary)');
    const llama = await getLlamaRuntime();
    if (typeof llama === 'string') return skipOrFail(t, llama);
    const dir = tempDir('ptq-gguf-moe-', t);
    await writeMoeModel(config, path.join(dir, 'hf'));
    const model = await loadModel(path.join(dir, 'hf'));

    const f32 = path.join(dir, 'f32.gguf');
    const report = await exportGguf(model, f32, { type: 'f32' });
    const E = (config.num_local_experts ?? config.num_experts) as number;
    const exps = report.tensors.filter((x) => x.name.endsWith('_exps.weight'));
    assert.equal(exps.length, 3 * 2, 'gate/up/down stacked per layer');
    for (const x of exps) assert.equal(x.dims[2], E, `${x.name}: ne[2] = experts`);
    const gateInp = report.tensors.find((x) => x.name === 'blk.0.ffn_gate_inp.weight');
    assert.deepEqual([gateInp?.type, gateInp?.dims], ['F32', [256, E]], 'router F32, ne = [hidden, experts]');
    await assertRunsLikePtqkit(llama, f32, model, `${key} f32`, { tol: F32_LOGPROB_TOL });

    // F16: ptqkit's forward of the same weights rounded to f16.
    const f16 = path.join(dir, 'f16.gguf');
    await exportGguf(model, f16, { type: 'f16' });
    const rounded = new Map(
      [...model.weights].map(([n, w]) => [
        n,
        { ...w, data: w.shape.length === 2 && !n.endsWith(ROUTER) ? decodeF16(encodeF16(w.data)) : w.data },
      ]),
    );
    await assertRunsLikePtqkit(llama, f16, { ...model, weights: rounded }, `${key} f16`, {
      tol: F16_LOGPROB_TOL,
    });

    // Symmetric 4-bit g32 f16 codes are Q4_0 blocks: the GGUF holds exactly the checkpoint's weights.
    const q = await quantizeModel(model.config, model.weights, {
      method: 'rtn',
      grid: { bits: 4, symmetric: true, granularity: 'group', groupSize: 32, scaleDtype: 'f16' },
    });
    await writePtqCheckpoint(path.join(dir, 'ckpt'), { ...model, weights: q.weights }, q.quantization);
    const ckpt = await loadModel(path.join(dir, 'ckpt'));
    const q40 = path.join(dir, 'q4_0.gguf');
    const qReport = await exportGguf(ckpt, q40, { type: 'auto' });
    const stacked = qReport.tensors.filter((x) => x.name.endsWith('_exps.weight'));
    assert.ok(
      stacked.every((x) => x.type === 'Q4_0' && x.source === 'codes'),
      JSON.stringify(stacked.map((x) => [x.name, x.type, x.source])),
    );
    // Each stacked tensor is its experts' checkpoint weights, in expert order.
    const file = await GgufFile.open(q40);
    try {
      for (const x of stacked) {
        const [layer, proj] = /^blk\.(\d+)\.ffn_(\w+)_exps/.exec(x.name)!.slice(1);
        const experts = Array.from(
          { length: E },
          (_, e) => ckpt.weights.get(`model.layers.${layer}.mlp.experts.${e}.${proj}_proj.weight`)!.data,
        );
        const want = new Float32Array(experts.reduce((n, d) => n + d.length, 0));
        for (const [e, d] of experts.entries()) want.set(d, e * d.length);
        assert.deepEqual(
          await file.readFloat32(x.name),
          want,
          `${x.name}: the checkpoint's experts in order`,
        );
      }
    } finally {
      await file.close();
    }
    await assertRunsLikePtqkit(llama, q40, ckpt, `${key} q4_0 (RTN codes)`, {
      firstTol: Q4_0_FIRST_TOL,
      top1Min: Q4_0_TOP1_MIN,
    });
  });

  test(`${key}: llama-quantize of our F32 GGUF gives our pure and mixed exports byte for byte (stacked experts, expert rules)`, async (t) => {
    if (!assetsPresent) return t.skip('shared assets not present (TinyStories-656K vocabulary)');
    const exe = refHarness();
    if (typeof exe !== 'string') return skipOrFail(t, exe.reason);
    const dir = tempDir('ptq-gguf-moe-q-', t);
    await writeMoeModel(config, path.join(dir, 'hf'));
    const model = await loadModel(path.join(dir, 'hf'));
    const f32 = path.join(dir, 'f32.gguf');
    await exportGguf(model, f32, { type: 'f32' });
    // Q2_K_S is left out: llama-quantize refuses it without an importance matrix for these
    // rows of 256 (whole Q2_K blocks), and ptqkit's export needs none.
    const runs: [string, number, boolean][] = [
      ['q8_0', 7, false],
      ['q4_k', 15, false],
      ...Object.entries(GGUF_MIXES)
        .filter(([mix]) => mix !== 'q2_k_s')
        .map(([mix, { ftype }]): [string, number, boolean] => [mix, ftype, true]),
    ];
    for (const [type, ftype, mix] of runs) {
      const ours = path.join(dir, `ours-${type}.gguf`);
      const theirs = path.join(dir, `llama-${type}.gguf`);
      await exportGguf(model, ours, { type });
      execFileSync(exe, ['model', f32, theirs, String(ftype), ...(mix ? ['mix'] : [])], { stdio: 'pipe' });
      const [a, b] = [await GgufFile.open(ours), await GgufFile.open(theirs)];
      try {
        assert.deepEqual(
          a.tensors.map((x) => `${x.name} ${x.type.name} ${x.dims}`).sort(),
          b.tensors.map((x) => `${x.name} ${x.type.name} ${x.dims}`).sort(),
          `${type}: every tensor's type and dims`,
        );
        for (const info of a.tensors)
          assert.deepEqual(await a.readRaw(info.name), await b.readRaw(info.name), `${type}: ${info.name}`);
      } finally {
        await a.close();
        await b.close();
      }
    }
  });
}

test('GGUF export refuses MoE routing llama.cpp does not compute', async (t) => {
  if (!assetsPresent) return t.skip('shared assets not present (TinyStories-656K vocabulary)');
  const dir = tempDir('ptq-gguf-moe-refuse-', t);
  const cases: [string, HfConfig, string][] = [
    ['qwen3', { ...MOE_CASES[1]!.config, norm_topk_prob: false }, 'norm_topk_prob'],
    ['qwen2', { ...MOE_CASES[2]!.config, norm_topk_prob: true }, 'norm_topk_prob'],
    ['mixtral', { ...MOE_CASES[0]!.config, sliding_window: 16 }, 'sliding_window'],
  ];
  for (const [name, config, field] of cases) {
    await writeMoeModel(config, path.join(dir, name));
    const model = await loadModel(path.join(dir, name));
    const out = path.join(dir, `${name}.gguf`);
    await assert.rejects(
      exportGguf(model, out, { type: 'f32' }),
      (e: unknown) =>
        e instanceof ConfigError && e.context.field === field && e.message.includes('llama.cpp'),
      name,
    );
    assert.throws(() => readFileSync(out), /ENOENT/, `${name}: no partial output`);
  }
});
