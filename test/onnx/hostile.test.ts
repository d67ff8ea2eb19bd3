/**
 * Hostile ONNX inputs to `ptq quantize <model.onnx | dir>` (issue #14, "Nothing lost, nothing
 * outside"), each refused with a typed one-line error naming the file and the tensor, before any
 * output is written:
 *  - external data or model files reached through a symlink out of the model directory (the
 *    location itself, or a directory on the way), or a FIFO; symlinks inside the directory, and a
 *    Hugging Face cache snapshot's links into its blobs/, work;
 *  - initializer dims that are negative ([-128, -128], [-1, -16384]: their products are plausible
 *    element counts), or that disagree with the data the tensor holds;
 *  - a weight whose dims were rewritten ([64, 256] stored as [256, 64]): onnxruntime refuses the
 *    source graph and would refuse its quantized graph; ptq says which weight and why, for every
 *    dtype (q4, q8, fp16).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { FileError, FormatError, ShapeError } from '../../src/errors.js';
import { buildOnnxModelExternal, GraphAssembler } from '../../src/io/onnx-builder.js';
import { OnnxModel, onnx, writeOnnxModel } from '../../src/onnx/model-file.js';
import { type OnnxQuantDtype, quantizeOnnx } from '../../src/onnx/quantize-onnx.js';
import { quantizeWeightsToNBits } from '../../src/onnx/weight-only.js';
import { mulberry32 } from '../../src/random.js';
import { runCli } from '../cli/run-cli.js';
import { tempDir } from '../helpers.js';
import { buildEncoder } from './encoder-fixture.js';

const tmp = tempDir('ptq-onnx-hostile-');
let outputs = 0;
/** A fresh output path outside every input directory. */
const outPath = () => path.join(tmp, 'out', `o${outputs++}`);
await mkdir(path.join(tmp, 'out'));

const Q4 = { blockSize: 32, symmetric: true, method: 'rtn' as const };
const quantize = (input: string, dtype: OnnxQuantDtype = 'q4', out = outPath()) =>
  quantizeOnnx(input, out, { dtypes: [dtype], ...Q4 });

/**
 * y = x · W with x [batch, K] and W an initializer stored with `dims` and `values` (the data of a
 * [K, N] weight unless a test rewrites the dims), written to `<dir>/<name>.onnx`.
 */
async function matmulModel(
  dir: string,
  name: string,
  opts: { K: number; N: number; dims?: number[]; externalData?: boolean },
): Promise<string> {
  const { K, N } = opts;
  const rand = mulberry32(K * 7 + N);
  const w = Float32Array.from({ length: K * N }, () => rand() - 0.5);
  const g = new GraphAssembler();
  g.op('MatMul', ['x', g.initializer('w', 'float32', opts.dims ?? [K, N], w)], {}, { outputs: ['y'] });
  const bytes = buildOnnxModelExternal({
    name,
    nodes: g.nodes,
    initializers: g.initializers,
    inputs: [{ name: 'x', type: 'float32', dims: ['batch', K] }],
    outputs: [{ name: 'y', type: 'float32', dims: ['batch', 'n'] }],
  }).model;
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, `${name}.onnx`);
  await writeFile(file, bytes);
  if (opts.externalData) {
    const model = await OnnxModel.read(file);
    await writeOnnxModel(model, file, { externalData: true });
    await model.close();
  }
  return file;
}

/** The CLI on `args`: exit 1, one line `ptq: <ErrorClass>: ...` matching `pattern`, no stack, nothing written. */
function assertCliRefuses(args: string[], errorClass: string, pattern: RegExp) {
  const out = args[args.indexOf('-o') + 1]!;
  const r = runCli(args);
  assert.equal(r.code, 1, `exit code; stderr ${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.ok(lines[0]!.startsWith(`ptq: ${errorClass}: `), lines[0]);
  assert.match(lines[0]!, pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
  assert.equal(existsSync(out), false, 'no output written');
  return lines[0]!;
}

test('external data through a symlink out of the model directory: refused, nothing read or written', async () => {
  // The data file is moved out and linked back: same bytes, so reading it would "work".
  const dir = path.join(tmp, 'in-symlink');
  const file = await matmulModel(dir, 'model', { K: 64, N: 64, externalData: true });
  const outside = path.join(tmp, 'secret-outside');
  await mkdir(outside);
  await rename(path.join(dir, 'model.onnx_data'), path.join(outside, 'data.bin'));
  await symlink(path.join('..', 'secret-outside', 'data.bin'), path.join(dir, 'model.onnx_data'));
  const out = outPath();
  await assert.rejects(quantize(file, 'q4', out), (e: Error) => {
    assert.ok(e instanceof FileError, `${e.constructor.name}: ${e.message}`);
    assert.match(e.message, /model\.onnx 'w': external data resolves outside the model directory/);
    assert.ok(e.message.includes(path.join(outside, 'data.bin')), e.message);
    assert.ok(!e.message.includes('\n'));
    return true;
  });
  assert.equal(existsSync(out), false);
  // Every dtype reads the weights: fp16 and q8 refuse the same way, as does the CLI.
  for (const dtype of ['q8', 'fp16'] as const)
    await assert.rejects(quantize(file, dtype), /external data resolves outside the model directory/);
  const line = assertCliRefuses(
    ['quantize', file, '-o', outPath(), '--dtype', 'q4'],
    'FileError',
    /'w': external data resolves outside the model directory; expected a file inside .*in-symlink, got model\.onnx_data -> .*secret-outside\/data\.bin/,
  );
  console.log(`  ${line}`);
  // onnxruntime refuses the same file for the same reason.
  await assert.rejects(ort.InferenceSession.create(file), /escapes model directory/);
});

test('external data under a symlinked directory, or a FIFO: refused; a symlink inside the directory is followed', async () => {
  // location "weights/model.onnx_data" whose "weights" directory links outside: the text stays inside.
  const dir = path.join(tmp, 'in-dirlink');
  const file = await matmulModel(dir, 'model', { K: 64, N: 32, externalData: true });
  const model = await OnnxModel.read(file);
  const w = model.initializer('w')!;
  const outsideDir = path.join(tmp, 'outside-dir');
  await mkdir(outsideDir);
  await rename(path.join(dir, 'model.onnx_data'), path.join(outsideDir, 'model.onnx_data'));
  await symlink(outsideDir, path.join(dir, 'weights'));
  for (const e of w.externalData) if (e.key === 'location') e.value = 'weights/model.onnx_data';
  await writeFile(file, onnx.ModelProto.encode(model.proto).finish());
  await model.close();
  await assert.rejects(
    quantize(file),
    (e: Error) =>
      e instanceof FileError && /external data resolves outside the model directory/.test(e.message),
  );
  await assert.rejects(
    (async () => {
      const m = await OnnxModel.read(file);
      try {
        return await m.tensorBytes(m.initializer('w')!);
      } finally {
        await m.close();
      }
    })(),
    /'w': external data resolves outside the model directory/,
  );

  // A FIFO as the data file: refused without blocking on it.
  const fifoDir = path.join(tmp, 'in-fifo');
  const fifoFile = await matmulModel(fifoDir, 'model', { K: 64, N: 32, externalData: true });
  const fifo = spawnSync('mkfifo', [path.join(fifoDir, 'pipe')]);
  if (fifo.status === 0) {
    const m = await OnnxModel.read(fifoFile);
    for (const e of m.initializer('w')!.externalData) if (e.key === 'location') e.value = 'pipe';
    await writeFile(fifoFile, onnx.ModelProto.encode(m.proto).finish());
    await m.close();
    await assert.rejects(
      quantize(fifoFile),
      (e: Error) => e instanceof FileError && /'w': external data is not a regular file/.test(e.message),
    );
  }

  // A missing data file: a FileError naming it.
  const goneDir = path.join(tmp, 'in-missing');
  const gone = await matmulModel(goneDir, 'model', { K: 64, N: 32, externalData: true });
  await rename(path.join(goneDir, 'model.onnx_data'), path.join(goneDir, 'elsewhere'));
  await assert.rejects(
    quantize(gone),
    (e: Error) =>
      e instanceof FileError && /model\.onnx_data.*cannot open external data \(ENOENT\)/.test(e.message),
  );

  // Symlinks that stay inside the model directory are real paths inside it: accepted.
  const okDir = path.join(tmp, 'in-inner-link');
  const ok = await matmulModel(okDir, 'model', { K: 64, N: 32, externalData: true });
  await mkdir(path.join(okDir, 'blobs'));
  await rename(path.join(okDir, 'model.onnx_data'), path.join(okDir, 'blobs', 'abc'));
  await symlink(path.join('blobs', 'abc'), path.join(okDir, 'model.onnx_data'));
  const r = await quantize(ok);
  assert.equal(r.graphs[0]!.weightOnly!.quantized.length, 1);

  // A Hugging Face cache snapshot: files are links into the repo's blobs/ (io/confined-path.ts); onnxruntime loads it.
  const repo = path.join(tmp, 'hub', 'models--org--tiny');
  const snapshot = path.join(repo, 'snapshots', 'rev0', 'onnx');
  await matmulModel(path.join(tmp, 'hub-src'), 'model', { K: 64, N: 32, externalData: true });
  await mkdir(path.join(repo, 'blobs'), { recursive: true });
  await mkdir(snapshot, { recursive: true });
  for (const [name, blob] of [
    ['model.onnx', 'aaa'],
    ['model.onnx_data', 'bbb'],
  ] as const) {
    await rename(path.join(tmp, 'hub-src', name), path.join(repo, 'blobs', blob));
    await symlink(path.join('..', '..', '..', 'blobs', blob), path.join(snapshot, name));
  }
  await ort.InferenceSession.create(path.join(snapshot, 'model.onnx'));
  assert.equal(
    (await quantize(path.join(snapshot, 'model.onnx'))).graphs[0]!.weightOnly!.quantized.length,
    1,
  );
});

test('a model directory whose graph or tokenizer links outside it: refused, nothing copied out', async () => {
  const secret = path.join(tmp, 'outside-files');
  await mkdir(secret);
  await writeFile(path.join(secret, 'id_rsa'), 'PRIVATE KEY\n');
  // A transformers.js-style directory: onnx/model.onnx, config.json, tokenizer.json.
  const make = async (name: string) => {
    const dir = path.join(tmp, name);
    await matmulModel(path.join(dir, 'onnx'), 'model', { K: 64, N: 32 });
    await writeFile(path.join(dir, 'config.json'), '{"model_type": "bert"}\n');
    await writeFile(path.join(dir, 'tokenizer.json'), '{}\n');
    return dir;
  };
  const tok = await make('in-dir-tokenizer-link');
  await rm(path.join(tok, 'tokenizer.json'));
  await symlink(path.join(secret, 'id_rsa'), path.join(tok, 'tokenizer.json'));
  const out = outPath();
  await assert.rejects(quantize(tok, 'q4', out), (e: Error) => {
    assert.ok(e instanceof FileError, e.message);
    assert.match(e.message, /tokenizer\.json: model file resolves outside the model directory/);
    return true;
  });
  assert.equal(existsSync(out), false);

  const graph = await make('in-dir-graph-link');
  await matmulModel(secret, 'private', { K: 64, N: 32 });
  await rm(path.join(graph, 'onnx', 'model.onnx'));
  await symlink(path.join(secret, 'private.onnx'), path.join(graph, 'onnx', 'model.onnx'));
  assertCliRefuses(
    ['quantize', graph, '-o', outPath(), '--dtype', 'q4'],
    'FileError',
    /onnx\/model\.onnx: ONNX graph resolves outside the model directory/,
  );

  // The same directory with real files quantizes and copies both files.
  const fine = await make('in-dir-fine');
  const r = await quantize(fine);
  assert.deepEqual(r.copied.sort(), ['config.json', 'tokenizer.json']);
});

test('negative initializer dims ([-128, -128], [-1, -16384]): a FormatError naming the tensor, not an output failure', async () => {
  const dir = path.join(tmp, 'in-negative');
  for (const dims of [
    [-128, -128],
    [-1, -16384],
  ]) {
    // 16384 float32 values: the products of the dims match the data, only their signs are wrong.
    const file = await matmulModel(dir, `neg${-dims[1]!}`, { K: 128, N: 128, dims });
    // onnxruntime: "Out of bounds dimensions".
    await assert.rejects(ort.InferenceSession.create(file), /Out of bounds dimensions/);
    for (const dtype of ['q4', 'q8', 'fp16'] as const) {
      const out = outPath();
      await assert.rejects(quantize(file, dtype, out), (e: Error) => {
        assert.ok(e instanceof FormatError, `${dtype}: ${e.constructor.name}: ${e.message}`);
        assert.equal(
          e.message,
          `${file} 'w': negative tensor dimension; expected dims >= 0, got [${dims.join(', ')}]`,
        );
        return true;
      });
      assert.equal(existsSync(out), false);
    }
    const line = assertCliRefuses(
      ['quantize', file, '-o', outPath(), '--dtype', 'q4'],
      'FormatError',
      /'w': negative tensor dimension; expected dims >= 0, got \[-/,
    );
    assert.doesNotMatch(line, /writing the output failed/);
    console.log(`  ${line}`);
  }
});

test('dims that disagree with the data the tensor holds: refused when the model is read', async () => {
  const dir = path.join(tmp, 'in-length');
  const file = await matmulModel(dir, 'model', { K: 64, N: 32 });
  const model = await OnnxModel.read(file);
  const w = model.initializer('w')!;
  // [64, 64] over the bytes of a [64, 32] weight.
  w.dims = [64, 64];
  await writeFile(file, onnx.ModelProto.encode(model.proto).finish());
  await assert.rejects(
    OnnxModel.read(file),
    (e: Error) =>
      e instanceof FormatError &&
      e.message ===
        `${file} 'w': raw_data length disagrees with the tensor shape [64, 64]; expected 16384 bytes, got 8192`,
  );
  // float_data with one value too few; dims past 2^53 elements.
  w.dims = [2];
  w.rawData = new Uint8Array(0);
  w.floatData = [1];
  await writeFile(file, onnx.ModelProto.encode(model.proto).finish());
  await assert.rejects(
    OnnxModel.read(file),
    /'w': float_data count disagrees with the tensor shape \[2\]; expected 2 values, got 1/,
  );
  w.dims = [2 ** 30, 2 ** 30];
  await writeFile(file, onnx.ModelProto.encode(model.proto).finish());
  await assert.rejects(
    OnnxModel.read(file),
    /'w': tensor size beyond 2\^53 bytes, got \[1073741824, 1073741824\]/,
  );
});

test('a weight with rewritten dims ([64, 256] stored as [256, 64]): a ShapeError naming it, for every dtype', async () => {
  const dir = path.join(tmp, 'in-reshaped');
  // x [batch, 64] · W: the data of a [64, 256] weight, stored with dims [256, 64].
  const file = await matmulModel(dir, 'model', { K: 64, N: 256, dims: [256, 64] });
  await assert.rejects(
    ort.InferenceSession.create(file),
    /Incompatible dimensions for matrix multiplication/,
  );
  for (const dtype of ['q4', 'q8', 'fp16'] as const) {
    await assert.rejects(quantize(file, dtype), (e: Error) => {
      assert.ok(e instanceof ShapeError, `${dtype}: ${e.constructor.name}: ${e.message}`);
      assert.equal(
        e.message,
        `${file} 'w': MatMul node '/MatMul_0' multiplies its input 'x' [?, 64] by this weight; ` +
          "expected [64, N] (rows = the input's last dimension), got [256, 64]",
      );
      return true;
    });
  }
  // The library pass refuses too (callers that skip quantizeOnnx).
  const model = await OnnxModel.read(file);
  await assert.rejects(quantizeWeightsToNBits(model, { bits: 4, ...Q4 }), ShapeError);
  const line = assertCliRefuses(
    ['quantize', file, '-o', outPath(), '--dtype', 'q4'],
    'ShapeError',
    /'w': MatMul node .* expected \[64, N\]/,
  );
  console.log(`  ${line}`);

  // Deep in a real graph: the encoder's MLP down projection [512, 256] stored as [256, 512]. Its input's
  // width (512) follows from the embedding table through LayerNormalization, MatMul, Add and GELU.
  const encDir = path.join(tmp, 'in-encoder');
  await mkdir(encDir);
  const enc = path.join(encDir, 'encoder.onnx');
  await writeFile(enc, buildEncoder(0));
  const m = await OnnxModel.read(enc);
  m.initializer('mlp.down.weight')!.dims = [256, 512];
  await writeFile(enc, onnx.ModelProto.encode(m.proto).finish());
  await assert.rejects(ort.InferenceSession.create(enc), /Incompatible dimensions/);
  await assert.rejects(
    quantize(enc),
    (e: Error) =>
      e instanceof ShapeError &&
      /'mlp\.down\.weight': MatMul node .* \[\?, \?, 512\] by this weight; expected \[512, N\].*got \[256, 512\]/.test(
        e.message,
      ),
  );
  // Gemm: the classifier's B [256, 16] stored as [16, 256], its input the flattened states [?, 256].
  m.initializer('mlp.down.weight')!.dims = [512, 256];
  m.initializer('classifier.weight')!.dims = [16, 256];
  await writeFile(enc, onnx.ModelProto.encode(m.proto).finish());
  await assert.rejects(
    quantize(enc, 'q8'),
    (e: Error) =>
      e instanceof ShapeError &&
      /'classifier\.weight': Gemm node '\/classifier\/Gemm_\d+' multiplies its input '.*' \[\?, 256\] by this weight; expected \[256, N\]/.test(
        e.message,
      ),
  );
  // Restored, the encoder quantizes: the check passes every product of a valid graph.
  m.initializer('classifier.weight')!.dims = [256, 16];
  await writeFile(enc, onnx.ModelProto.encode(m.proto).finish());
  assert.equal((await quantize(enc)).graphs[0]!.weightOnly!.quantized.length, 8);
  await m.close();
  await model.close();
});
