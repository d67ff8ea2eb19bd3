/**
 * Streaming RTN of an 8B Llama-3-shaped FP16 model (issue #8 acceptance: peak RSS < 4 GB).
 *
 * 1. Generates on disk (default os.tmpdir(), or BENCH_8B_DIR) a Llama-3-8B-shaped model:
 *    hidden 4096, 32 layers, 32 heads / 8 KV heads, intermediate 14336, vocab 128256, untied;
 *    deterministic random FP16 weights (xorshift32 bits made into FP16 of magnitude
 *    2^-7..2^-3 with random signs), written piece by piece in ~5 GB shards with
 *    model.safetensors.index.json, as Hugging Face shards them (16 GB in all).
 * 2. Times a plain sequential read of every shard (the floor any quantizer pays).
 * 3. Runs `ptq quantize --method rtn --bits 4 --group-size 128` on it in a child process under
 *    `nice -n 10 /usr/bin/time`: wall, CPU and peak RSS (max resident set of the child).
 * 4. Checks one layer of the output against quantizeRtn of the same source tensor in memory
 *    (codes and scales byte-equal), then deletes model and output (BENCH_KEEP=1 keeps them).
 * Prints one JSON line (bench/run.ts: `BENCH_HEAVY=1 npm run bench` or `npm run bench -- streaming-8b`).
 * Needs ~26 GB free: 16 GB of input and ~8.7 GB of output (embedding and lm_head stay F32).
 */
import { mkdirSync, rmSync, statfsSync } from 'node:fs';
import { open } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { makeGrid } from '../src/formats/grid.js';
import { linearWeightName } from '../src/formats/tensor-names.js';
import { CHECKPOINT_FILE, encodeParams } from '../src/io/ptq-checkpoint.js';
import { SafetensorsModel } from '../src/io/safetensors.js';
import { quantizeRtn } from '../src/quant/methods/rtn.js';
import { syntheticFp16HfConfig, writeSyntheticFp16Model } from './synthetic.js';
import { timedPtq } from './timed-ptq.js';

const GiB = 2 ** 30;

const HF_CONFIG = syntheticFp16HfConfig('8B');
const PIECE_BYTES = 64 * 1024 * 1024;

const root = process.env.BENCH_8B_DIR ?? path.join(os.tmpdir(), `ptq-bench-8b-${process.pid}`);
const modelDir = path.join(root, 'llama3-8b-shaped');
const outDir = path.join(root, 'llama3-8b-rtn-int4-g128');
const { bavail, bsize } = statfsSync(path.dirname(root));
if (bavail * bsize < 26 * GiB) {
  throw new Error(
    `${path.dirname(root)}: ${((bavail * bsize) / GiB).toFixed(1)} GiB free, the bench needs 26 GiB`,
  );
}
mkdirSync(modelDir, { recursive: true });

try {
  const t0 = performance.now();
  const { parameters, quantizedParameters, shards } = await writeSyntheticFp16Model(modelDir, HF_CONFIG);
  const generateSeconds = (performance.now() - t0) / 1000;
  process.stderr.write(
    `  generated ${(parameters / 1e9).toFixed(2)}B params in ${generateSeconds.toFixed(0)} s\n`,
  );

  const readSeconds = await readAll(shards);
  process.stderr.write(`  read all shards in ${readSeconds.toFixed(1)} s\n`);

  const timeFile = path.join(root, 'time.txt');
  const r = timedPtq(
    ['quantize', modelDir, '--method', 'rtn', '--bits', '4', '--group-size', '128', '-o', outDir, '--json'],
    { timeFile, nice: 10 },
  );
  const cli = r.out;
  const checked = await checkOneLayer(modelDir, outDir);
  const outputBytes = (await SafetensorsModel.open(outDir).then(async (st) => {
    const names = st.names();
    const bytes = names.reduce((s, n) => s + (st.info(n).end - st.info(n).begin), 0);
    await st.close();
    return bytes;
  })) as number;
  console.log(
    JSON.stringify({
      case: 'streaming-8b',
      parameters,
      quantizedParameters,
      calibration: 'none',
      grid: 'int4 g128 sym (rtn, streamed)',
      seconds: r.seconds,
      cpuSeconds: r.cpuSeconds,
      peakRssMiB: r.peakRssMiB,
      phases: {},
      streamed: cli.streamed === true,
      inputBytes: shards.reduce((s, x) => s + x.bytes, 0),
      outputBytes,
      generateSeconds,
      readSeconds,
      readRatio: r.seconds / readSeconds,
      paramsPerSecond: parameters / r.seconds,
      loadAverage: os.loadavg()[0],
      checked,
    }),
  );
} finally {
  if (process.env.BENCH_KEEP !== '1') rmSync(root, { recursive: true, force: true });
}

/** Seconds to read every byte of the shards sequentially in 64 MiB pieces. */
async function readAll(shards: { file: string }[]): Promise<number> {
  const t0 = performance.now();
  const buf = Buffer.alloc(PIECE_BYTES);
  for (const { file } of shards) {
    const h = await open(file, 'r');
    let at = 0;
    for (;;) {
      const { bytesRead } = await h.read(buf, 0, buf.length, at);
      if (!bytesRead) break;
      at += bytesRead;
    }
    await h.close();
  }
  return (performance.now() - t0) / 1000;
}

/** The last block's down_proj [4096, 14336]: streamed codes and scales equal quantizeRtn of the source in memory. */
async function checkOneLayer(model: string, out: string): Promise<string> {
  const name = linearWeightName(HF_CONFIG.num_hidden_layers - 1, 'mlp.down_proj');
  const src = await SafetensorsModel.open(model);
  const dst = await SafetensorsModel.open(out);
  try {
    const w = { shape: [...src.info(name).shape], data: await src.readFloat32(name) };
    const grid = makeGrid({
      bits: 4,
      symmetric: true,
      granularity: 'group',
      groupSize: 128,
      scaleDtype: 'f16',
    });
    const q = quantizeRtn(w, grid, name);
    const base = name.replace(/\.weight$/, '');
    const codes = await dst.readRaw(`${base}.qweight`);
    const scales = await dst.readRaw(`${base}.scales`);
    const expectedScales = encodeParams(q.scales, 'f16').data as Uint16Array;
    const same = (a: Uint8Array, b: ArrayBufferView) =>
      Buffer.from(a).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
    if (!same(codes, q.qweight) || !same(scales, expectedScales)) {
      throw new Error(`${out}/${CHECKPOINT_FILE}: ${name} differs from quantizeRtn of the source`);
    }
    return `${name}: codes and scales byte-equal to in-memory quantizeRtn`;
  } finally {
    await Promise.all([src.close(), dst.close()]);
  }
}
