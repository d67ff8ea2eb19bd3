/**
 * `ptq export --format onnx` on hostile or unusual config.json values (issue #14, "Nothing lost,
 * nothing outside"), on copies of the bundled TinyStories-656K Llama:
 *  - max_position_embeddings 2^27: the graph computes cos/sin of the positions it is fed, so the
 *    export takes the memory and bytes of the 512-position model (a cache initializer of
 *    max_position_embeddings rows took 8.4 GB of RSS at 2^27), and positions near 2^27 work;
 *  - rope_scaling linear / llama3: the graph's frequencies are the scaled ones ptqkit computes with;
 *  - what the Llama graph does not compute (hidden_act gelu, rope_scaling longrope) is refused with
 *    a ConfigError naming config.json and the key, instead of exported as something else.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdir, readFile, rename, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { ConfigError, FileError } from '../../src/errors.js';
import { exportOnnx } from '../../src/export/onnx.js';
import { OnnxCausalLM } from '../../src/export/onnx-session.js';
import { Decoder } from '../../src/model/decoder.js';
import { loadModel } from '../../src/model/load.js';
import { OnnxModel } from '../../src/onnx/model-file.js';
import { runCli } from '../cli/run-cli.js';
import { maxAbsDiff, REPO, tempDir } from '../helpers.js';

const BUNDLED = path.join(REPO, 'models/tinystories-656k');
/** ONNX graph vs ptqkit's forward of the same weights (test/export/onnx.test.ts' tolerance). */
const LOGIT_TOL = 1e-3;
const tmp = tempDir('ptq-onnx-export-hostile-');
const text = await readFile(path.join(REPO, 'data/tinystories-valid-slice.txt'), 'utf8');

/** The bundled model in `<tmp>/<parent>/tinystories-656k` with `edit` applied to its config.json. */
async function variant(parent: string, edit: (config: Record<string, unknown>) => void): Promise<string> {
  const dir = path.join(tmp, parent, 'tinystories-656k');
  await mkdir(path.dirname(dir), { recursive: true });
  await cp(BUNDLED, dir, { recursive: true });
  const config = JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8'));
  edit(config);
  await writeFile(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
  return dir;
}

/** Logits [T, vocab] of one window at the given positions, through the exported graph. */
async function logitsAt(lm: OnnxCausalLM, ids: Int32Array, positions: number[]): Promise<Float32Array> {
  const T = ids.length;
  const feeds: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor('int64', BigInt64Array.from(Array.from(ids, BigInt)), [1, T]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(T).fill(1n), [1, T]),
    position_ids: new ort.Tensor('int64', BigInt64Array.from(positions.map(BigInt)), [1, T]),
  };
  const c = lm.config;
  for (let i = 0; i < c.numLayers; i++)
    for (const kv of ['key', 'value'])
      feeds[`past_key_values.${i}.${kv}`] = new ort.Tensor('float32', new Float32Array(0), [
        1,
        c.numKvHeads,
        0,
        c.headDim,
      ]);
  return (await lm.session.run(feeds)).logits!.data as Float32Array;
}

test('max_position_embeddings 2^27: exported in the memory and bytes of the 512-position model; positions near 2^27 work', async () => {
  const MAX = 2 ** 27;
  const hostile = await variant('max-2-27', (c) => {
    c.max_position_embeddings = MAX;
  });
  const plain = await variant('max-512', () => {});
  const out = path.join(tmp, 'out-2-27');
  // In a child process: peak RSS measured, and a runaway allocation killed rather than the test runner.
  const script = `
    import { loadModel } from ${JSON.stringify(path.join(REPO, 'src/model/load.ts'))};
    import { exportOnnx } from ${JSON.stringify(path.join(REPO, 'src/export/onnx.ts'))};
    const t0 = performance.now();
    await exportOnnx(await loadModel(${JSON.stringify(hostile)}), ${JSON.stringify(out)}, { dtypes: ['fp32', 'q4'] });
    console.log(JSON.stringify({ seconds: (performance.now() - t0) / 1000, maxRSS: process.resourceUsage().maxRSS }));`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: REPO,
    encoding: 'utf8',
    timeout: 120_000,
    killSignal: 'SIGKILL',
  });
  assert.equal(
    r.status,
    0,
    `export of max_position_embeddings 2^27: status ${r.status} ${r.signal ?? ''} ${r.stderr}`,
  );
  const { seconds, maxRSS } = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
  const rssMiB = maxRSS / 1024;
  console.log(
    `  2^27 positions: exported fp32 + q4 in ${seconds.toFixed(1)} s at peak RSS ${rssMiB.toFixed(0)} MiB`,
  );
  assert.ok(rssMiB < 600, `peak RSS ${rssMiB} MiB`);

  // The graphs do not depend on max_position_embeddings: byte for byte those of the 512-position model.
  const reference = path.join(tmp, 'out-512');
  await exportOnnx(await loadModel(plain), reference, { dtypes: ['fp32', 'q4'] });
  for (const f of ['onnx/model.onnx', 'onnx/model_q4.onnx']) {
    const a = await readFile(path.join(out, f));
    assert.ok(a.equals(await readFile(path.join(reference, f))), f);
    assert.ok(a.byteLength < 4 * 2 ** 20, `${f}: ${a.byteLength} bytes`);
  }
  // No initializer has a dimension of max_position_embeddings rows.
  const graph = await OnnxModel.read(path.join(out, 'onnx/model.onnx'));
  assert.ok(graph.graph.initializer.every((t) => t.dims.every((d) => Number(d) < 4096)));

  // Positions 0..T−1 match ptqkit's forward; the same window at positions 2^27 − T..2^27 − 1 gives the
  // same logits up to rounding (RoPE attention depends on relative positions only).
  const model = await loadModel(hostile);
  const ids = Int32Array.from(model.tokenizer.encode(text).slice(0, 128));
  const T = ids.length;
  const lm = await OnnxCausalLM.load(out, 'fp32', 1);
  const start = await logitsAt(
    lm,
    ids,
    Array.from({ length: T }, (_, i) => i),
  );
  const ours = await new Decoder(model.config, model.weights).forward(ids, 1, T);
  const late = await logitsAt(
    lm,
    ids,
    Array.from({ length: T }, (_, i) => MAX - T + i),
  );
  const vsOurs = maxAbsDiff(start, ours);
  const shifted = maxAbsDiff(late, start);
  console.log(
    `  positions 0..${T - 1} vs ptqkit: ${vsOurs.toExponential(2)}; at ${MAX - T}.. vs at 0..: ${shifted.toExponential(2)}`,
  );
  assert.ok(vsOurs < LOGIT_TOL);
  assert.ok(shifted < LOGIT_TOL);
});

test('rope_scaling linear and llama3: the graph rotates by the scaled frequencies', async () => {
  const scalings = {
    linear: { rope_type: 'linear', factor: 4 },
    // original 64 < the 256-token window: low frequencies divided by 8, a ramp between.
    llama3: {
      rope_type: 'llama3',
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 64,
    },
  };
  for (const [name, scaling] of Object.entries(scalings)) {
    const dir = await variant(`rope-${name}`, (c) => {
      c.rope_scaling = scaling;
    });
    const model = await loadModel(dir);
    const out = path.join(tmp, `out-rope-${name}`);
    await exportOnnx(model, out, { dtypes: ['fp32'] });
    const ids = Int32Array.from(model.tokenizer.encode(text).slice(0, 256));
    const lm = await OnnxCausalLM.load(out, 'fp32', 1);
    const diff = maxAbsDiff(
      await lm.forward(ids, 1, ids.length),
      await new Decoder(model.config, model.weights).forward(ids, 1, ids.length),
    );
    console.log(`  rope_scaling ${name}: max |logit diff| vs ptqkit forward ${diff.toExponential(2)}`);
    assert.ok(diff < LOGIT_TOL, `${name}: ${diff}`);
  }
});

test('what the Llama graph does not compute is refused: hidden_act gelu, rope_scaling longrope', async () => {
  const gelu = await variant('gelu', (c) => {
    c.hidden_act = 'gelu';
  });
  const model = await loadModel(gelu);
  await assert.rejects(
    exportOnnx(model, path.join(tmp, 'out-gelu'), { dtypes: ['fp32'] }),
    (e: Error) =>
      e instanceof ConfigError &&
      e.message ===
        `${path.join(gelu, 'config.json')} 'hidden_act': the ONNX exporter does not write this Llama variant; expected silu (SwiGLU), got gelu`,
  );
  const longrope = await variant('longrope', (c) => {
    c.rope_scaling = {
      rope_type: 'longrope',
      factor: 2,
      short_factor: new Array(8).fill(1),
      long_factor: new Array(8).fill(2),
      original_max_position_embeddings: 256,
    };
  });
  const out = path.join(tmp, 'out-longrope');
  const r = runCli(['export', longrope, '--format', 'onnx', '-o', out]);
  assert.equal(r.code, 1, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(
    lines[0]!,
    /^ptq: ConfigError: .*config\.json 'rope_scaling': the ONNX exporter does not write this Llama variant; expected null, linear or llama3, got longrope$/,
  );
  console.log(`  ${lines[0]}`);
});

test('tokenizer or generation config linked from outside the model directory: refused, not copied into the output', async () => {
  for (const name of ['tokenizer.json', 'generation_config.json']) {
    // A valid file moved out and linked back: read, it is a fine file; copied, it would leak.
    const dir = await variant(`link-${name}`, () => {});
    const outside = path.join(tmp, `outside-${name}`);
    await rename(path.join(dir, name), outside);
    await symlink(outside, path.join(dir, name));
    const out = path.join(tmp, `out-link-${name}`);
    // Refused by the loader when it reads the file, else by the exporter when it copies it.
    await assert.rejects(
      (async () => exportOnnx(await loadModel(dir), out, { dtypes: ['fp32'] }))(),
      (e: Error) =>
        e instanceof FileError &&
        e.message.startsWith(`${path.join(dir, name)}: `) &&
        /resolves outside/.test(e.message),
    );
    assert.equal(existsSync(out), false);
  }
});
