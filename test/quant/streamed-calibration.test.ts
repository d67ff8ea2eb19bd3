/**
 * Block-streamed calibration (stream-calibrate.ts) writes the same checkpoint, byte for byte, as
 * the in-memory path (loadModel -> quantizeModel -> writePtqCheckpoint) for the same precision of
 * the calibration activations, on both real models: with everything in memory, and with a
 * budget so small that every chunk of activations but none goes to the spill file (the spilled
 * bytes are asserted, as is the float32 weight memory: never more than one block and the
 * largest other tensor). 16-bit activations round the stored values and change the output; the
 * budget never does.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import type { GridSpec } from '../../src/formats/grid.js';
import { writePtqCheckpoint } from '../../src/io/ptq-checkpoint.js';
import { readText } from '../../src/io/text.js';
import { loadModel, openModel } from '../../src/model/load.js';
import { blockTensorNames, float32Bytes } from '../../src/model/weight-source.js';
import type { ActivationDtype } from '../../src/quant/activation-store.js';
import { sampleCalibrationWindows } from '../../src/quant/calibrate.js';
import { type Calibration, quantizeModel } from '../../src/quant/quantize-model.js';
import { untiedHfConfig } from '../../src/quant/rotate.js';
import { calibrationActivationBytes, streamCalibrate } from '../../src/quant/stream-calibrate.js';
import { runCli } from '../cli/run-cli.js';
import { ASSETS, assetsPresent, REPO, tempDir } from '../helpers.js';

const work = tempDir('ptq-streamcal-');
const CALIB = path.join(REPO, 'data/tinystories-valid-slice.txt');
const TINY = path.join(REPO, 'models/tinystories-656k');

const MODELS = [
  {
    key: 'tinystories',
    path: () => path.join(REPO, 'models/tinystories-656k'),
    grid: { bits: 4, symmetric: true, granularity: 'group', groupSize: 32, scaleDtype: 'f16' } as GridSpec,
  },
  {
    key: 'stories260k',
    path: () => path.join(ASSETS, 'models/stories260k/stories260K.bin'),
    grid: { bits: 4, symmetric: true, granularity: 'channel', groupSize: -1, scaleDtype: 'f16' } as GridSpec,
  },
];

async function calibrationOf(modelPath: string): Promise<Calibration> {
  const model = await loadModel(modelPath);
  const tokens = model.tokenizer.encode(await readText(CALIB));
  const options = { nsamples: 24, seqlen: 256, seed: 0 };
  return {
    windows: sampleCalibrationWindows(tokens, options),
    seqlen: 256,
    description: { file: 'x', ...options },
  };
}

async function inMemory(
  modelPath: string,
  out: string,
  method: string,
  grid: GridSpec,
  cal: Calibration,
  dtype: ActivationDtype,
) {
  const model = await loadModel(modelPath);
  const q = await quantizeModel(model.config, model.weights, {
    method,
    grid,
    calibration: cal,
    inPlace: true,
    activationDtype: dtype,
  });
  const hfConfig = q.config.tiedEmbeddings ? model.hfConfig : untiedHfConfig(model.hfConfig);
  await writePtqCheckpoint(out, { ...model, hfConfig, weights: q.weights }, q.quantization);
}

async function streamed(
  modelPath: string,
  out: string,
  method: string,
  grid: GridSpec,
  cal: Calibration,
  dtype: ActivationDtype,
  maxMemory: number,
) {
  const model = await openModel(modelPath);
  try {
    const hfConfig = model.config.tiedEmbeddings ? model.hfConfig : untiedHfConfig(model.hfConfig);
    const r = await streamCalibrate(model, out, {
      method,
      grid,
      calibration: cal,
      hfConfig,
      maxMemory,
      activationDtype: dtype,
    });
    return { r, model };
  } finally {
    await model.weights.close();
  }
}

const same = (a: string, b: string, label: string) => {
  assert.deepEqual(readdirSync(b).sort(), readdirSync(a).sort(), `${label}: files`);
  for (const file of ['model.safetensors', 'config.json']) {
    const [x, y] = [readFileSync(path.join(a, file)), readFileSync(path.join(b, file))];
    if (!(x.length > 0 && x.equals(y))) {
      const at = x.findIndex((v, i) => v !== y[i]);
      assert.fail(
        `${label}: ${file} differs (${x.length} vs ${y.length} bytes, first at ${at}: ${x.subarray(at - 80, at + 40)} vs ${y.subarray(at - 80, at + 40)})`,
      );
    }
  }
};

for (const m of MODELS) {
  for (const method of m.key === 'tinystories' ? ['gptq', 'awq', 'asinq'] : ['gptq', 'awq']) {
    test(`${m.key} ${method}: streamed = in memory byte for byte (f32 and f16 activations; all resident and all spilled)`, {
      skip: m.key === 'stories260k' && !assetsPresent && 'no ../shared/assets',
    }, async () => {
      const cal = await calibrationOf(m.path());
      const outputs: Record<string, string> = {};
      for (const dtype of ['f32', 'f16'] as const) {
        const mem = path.join(work, `${m.key}-${method}-${dtype}-memory`);
        await inMemory(m.path(), mem, method, m.grid, cal, dtype);
        outputs[dtype] = mem;
        // Everything in memory.
        const all = path.join(work, `${m.key}-${method}-${dtype}-resident`);
        const a = await streamed(m.path(), all, method, m.grid, cal, dtype, Number.POSITIVE_INFINITY);
        assert.equal(a.r.activations.spilledBytes, 0);
        assert.equal(a.r.activations.residentChunks, a.r.activations.chunks);
        same(mem, all, `${method} ${dtype} resident`);
        // No budget at all: every chunk is spilled, written and read back at every pass.
        const spill = path.join(work, `${m.key}-${method}-${dtype}-spilled`);
        const s = await streamed(m.path(), spill, method, m.grid, cal, dtype, 0);
        assert.equal(s.r.activations.residentChunks, 0);
        assert.ok(s.r.activations.chunks > 1, 'several chunks');
        const all16 = calibrationActivationBytes(s.model.config, 24, 256, dtype);
        assert.ok(s.r.activations.spillFileBytes > 0 && s.r.activations.spillFileBytes <= all16);
        // Every block saves at least the residual stream of every window to the file.
        const { hiddenSize, numLayers } = s.model.config;
        const residual = 24 * 256 * hiddenSize * (dtype === 'f32' ? 4 : 2);
        assert.ok(
          s.r.activations.spilledBytes >= residual * (numLayers + 1),
          `${s.r.activations.spilledBytes} bytes spilled`,
        );
        assert.equal(s.r.activations.peakActivationBytes, 0);
        // Weights: one block at a time, and at most one block plus the embedding rows in float32.
        const w = s.model.weights;
        const block = Math.max(
          ...Array.from({ length: s.model.config.numLayers }, (_, l) =>
            float32Bytes(w, blockTensorNames(w, l)),
          ),
        );
        assert.equal(s.r.weights.maxResidentBlocks, 1);
        assert.equal(s.r.weights.blockLoads, s.model.config.numLayers);
        assert.ok(s.r.weights.peakResidentBytes <= block, `${s.r.weights.peakResidentBytes} > ${block}`);
        same(mem, spill, `${method} ${dtype} spilled`);
      }
      // 16-bit activations are a different computation: the output differs from float32's.
      assert.ok(
        !readFileSync(path.join(outputs.f32!, 'model.safetensors')).equals(
          readFileSync(path.join(outputs.f16!, 'model.safetensors')),
        ),
      );
    });
  }
}

test('ptq quantize --max-memory: past the budget the run is block-streamed, spills, and writes what the in-memory run writes', async () => {
  const common = [
    '--method',
    'gptq',
    '--calib',
    CALIB,
    '--nsamples',
    '16',
    '--seqlen',
    '128',
    '--bits',
    '4',
    '--group-size',
    '32',
    '--json',
  ];
  const mem = path.join(work, 'cli-memory');
  const streamedOut = path.join(work, 'cli-streamed');
  const a = runCli(['quantize', TINY, '-o', mem, ...common]);
  assert.equal(a.code, 0, a.stderr);
  assert.equal(JSON.parse(a.stdout).streamed, undefined);
  const b = runCli(['quantize', TINY, '-o', streamedOut, '--max-memory', '1MB', ...common]);
  assert.equal(b.code, 0, b.stderr);
  const r = JSON.parse(b.stdout);
  assert.equal(r.streamed, true);
  assert.equal(r.memory.residentChunks, 0);
  assert.ok(r.memory.spilledBytes > 0);
  same(mem, streamedOut, 'cli');
  // No temporary file is left beside the output.
  assert.deepEqual(
    readdirSync(work).filter((f) => f.startsWith('.ptq')),
    [],
  );
});
