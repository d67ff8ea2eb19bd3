/**
 * One benchmark case in its own process; prints one JSON line (time, CPU time and peak RSS, per phase).
 *   case.ts <method>-<shape>   quantize the synthetic model in memory (int4 g128)
 *   case.ts read-<shape>       read its F32 safetensors file (written first when missing), the
 *                              baseline of "RTN within 3x of just reading the weights"
 *   case.ts write-<shape>      write that file (read-<shape> runs it in a process of its own)
 */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { profile } from '../src/compute/profile.js';
import { BLOCK_LINEARS, linearWeightName } from '../src/formats/tensor-names.js';
import { writeSafetensors } from '../src/io/safetensors.js';
import { LLAMA } from '../src/model/architecture.js';
import { getMethod, isCalibrated } from '../src/quant/methods/index.js';
import { type MethodName, quantizeModel } from '../src/quant/quantize-model.js';
import { mulberry32 } from '../src/random.js';
import type { TensorMap } from '../src/tensor.js';
import { CACHE, type ShapeName, syntheticConfig, syntheticWeights } from './synthetic.js';

const [method, shape] = process.argv[2]!.split('-') as [MethodName | 'read' | 'write', ShapeName];
const config = syntheticConfig(shape);
const shapes = LLAMA.expectedShapes(config);
const count = (name: string) => shapes.get(name)!.reduce((a, b) => a * b, 1);
const parameters = [...shapes.keys()].reduce((n, name) => n + count(name), 0);
let quantizedParameters = 0;
for (let l = 0; l < config.numLayers; l++)
  for (const lin of BLOCK_LINEARS) quantizedParameters += count(linearWeightName(l, lin));
const safetensorsFile = path.join(CACHE, `synthetic-${shape}.safetensors`);
if (method === 'write') {
  mkdirSync(CACHE, { recursive: true });
  const tensors = [...syntheticWeights(config)].map(([name, t]) => ({
    name,
    dtype: 'F32' as const,
    shape: t.shape,
    data: t.data,
  }));
  await writeSafetensors(safetensorsFile, tensors);
  process.exit(0);
}
if (method === 'read') {
  const file = safetensorsFile;
  // Written by a process of its own: this one's peak RSS is the read's.
  if (!existsSync(file)) {
    const w = spawnSync(
      process.execPath,
      ['--import', 'tsx', fileURLToPath(import.meta.url), `write-${shape}`],
      {
        stdio: 'inherit',
      },
    );
    if (w.status !== 0) throw new Error(`cannot write ${file}`);
  }
  // Every byte of the file through one reused 64 MiB buffer: the page cache is warm (the file
  // was just written or read), so this is the fastest any loader could get the weights.
  const piece = Buffer.allocUnsafe(64 * 2 ** 20);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const fd = openSync(file, 'r');
  let bytes = 0;
  for (;;) {
    const n = readSync(fd, piece, 0, piece.length, bytes);
    if (n === 0) break;
    bytes += n;
  }
  closeSync(fd);
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  console.log(
    JSON.stringify({
      case: `read-${shape}`,
      parameters,
      quantizedParameters,
      calibration: 'none',
      grid: `${(bytes / 2 ** 30).toFixed(2)} GiB F32 safetensors, page cache warm`,
      seconds,
      cpuSeconds: (cpu.user + cpu.system) / 1e6,
      peakRssMiB: process.resourceUsage().maxRSS / 1024,
      phases: {},
    }),
  );
  process.exit(0);
}
const nsamples = 128;
const seqlen = 512;
const rand = mulberry32(7);
const windows = Int32Array.from({ length: nsamples * seqlen }, () => Math.floor(rand() * config.vocabSize));

let weights: TensorMap | undefined = syntheticWeights(config);
profile.enabled = true;
const cpu0 = process.cpuUsage();
const t0 = performance.now();
// In place, and no second reference here: the fp32 originals are freed as layers are quantized.
const done = quantizeModel(config, weights, {
  method,
  grid: { bits: 4, symmetric: true, granularity: 'group', groupSize: 128, scaleDtype: 'f16' },
  calibration: !isCalibrated(getMethod(method)) ? undefined : { windows, seqlen, description: {} },
  inPlace: true,
  onProgress: (p) =>
    process.stderr.write(
      `  layer ${p.layer}/${p.layers} ${((performance.now() - t0) / 1000).toFixed(1)} s, RSS ${(process.memoryUsage.rss() / 2 ** 20).toFixed(0)} MiB\n`,
    ),
});
weights = undefined;
await done;
const seconds = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
const cpuSeconds = (cpu.user + cpu.system) / 1e6;
const phases = Object.fromEntries(
  [...profile.totals].map(([name, t]) => [name, { seconds: t.wallSeconds, cpuSeconds: t.cpuSeconds }]),
);
const inPhases = [...profile.totals.values()];
phases.other = {
  seconds: seconds - inPhases.reduce((s, t) => s + t.wallSeconds, 0),
  cpuSeconds: cpuSeconds - inPhases.reduce((s, t) => s + t.cpuSeconds, 0),
};
console.log(
  JSON.stringify({
    case: `${method}-${shape}`,
    parameters,
    quantizedParameters,
    calibration: !isCalibrated(getMethod(method)) ? 'none' : `${nsamples} x ${seqlen}`,
    grid: 'int4 g128 sym',
    seconds,
    cpuSeconds,
    peakRssMiB: process.resourceUsage().maxRSS / 1024,
    phases,
  }),
);
