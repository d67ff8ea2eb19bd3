/**
 * Block-streamed GPTQ (quant/stream-calibrate.ts) on the synthetic TinyLlama-shaped FP16 model
 * (bench/synthetic.ts): `ptq quantize --method gptq --bits 4 --group-size 128 --max-memory`, in a
 * child under /usr/bin/time for its peak RSS, with BENCH_CAL_SAMPLES (default 128) windows of 512
 * random words. Prints wall/CPU seconds, peak RSS, the run's memory report (JSON `memory`) and
 * which profile phases raised the peak RSS (bench/phase-peaks.ts).
 *
 *   BENCH_CAL_SAMPLES=16 node --import tsx bench/gptq-streamed.ts [maxMemory=1GiB]
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { mulberry32 } from '../src/random.js';
import { CACHE, syntheticFp16HfConfig, writeSyntheticFp16Model } from './synthetic.js';
import { timedPtq } from './timed-ptq.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SEQLEN = 512;
const samples = Number(process.env.BENCH_CAL_SAMPLES ?? 128);
const maxMemory = process.argv[2] ?? '1GiB';
const root = path.join(CACHE, 'eval-streamed-1B');
const modelDir = path.join(root, 'fp16');
const textFile = path.join(root, `calib-words-${samples}x${SEQLEN}.txt`);
const outDir = path.join(root, `gptq-int4-g128-${samples}`);
mkdirSync(root, { recursive: true });
if (!existsSync(path.join(modelDir, 'config.json'))) {
  mkdirSync(modelDir, { recursive: true });
  await writeSyntheticFp16Model(modelDir, syntheticFp16HfConfig('1B'));
}
if (!existsSync(textFile)) {
  const rand = mulberry32(5);
  // Twice the windows' tokens: windows start anywhere in the text.
  writeFileSync(
    textFile,
    Array.from({ length: 2 * samples * SEQLEN + 1 }, () => `w${Math.floor(rand() * 1000)}`).join(' '),
  );
}
const timeFile = path.join(root, 'gptq-time.txt');
const peaksFile = path.join(root, `gptq-phase-peaks-${samples}.json`);
const args = [
  'quantize',
  modelDir,
  '-o',
  outDir,
  '--overwrite',
  '--method',
  'gptq',
  '--bits',
  '4',
  '--group-size',
  '128',
];
args.push(
  '--calib',
  textFile,
  '--nsamples',
  String(samples),
  '--seqlen',
  String(SEQLEN),
  '--max-memory',
  maxMemory,
  '--json',
);
const r = timedPtq(args, {
  timeFile,
  preload: [path.join(HERE, 'phase-peaks.ts')],
  env: { ...process.env, BENCH_PHASE_PEAKS: peaksFile },
});
const o = r.out;
console.log(
  JSON.stringify(
    {
      samples,
      seqlen: SEQLEN,
      maxMemory,
      streamed: o.streamed,
      seconds: r.seconds,
      cpuSeconds: r.cpuSeconds,
      peakRssMiB: r.peakRssMiB,
      memory: o.memory,
      phasePeaks: JSON.parse(readFileSync(peaksFile, 'utf8')).phases,
    },
    null,
    2,
  ),
);
