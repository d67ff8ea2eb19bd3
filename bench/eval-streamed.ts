/**
 * Block-streamed evaluation (#16 item 2): `ptq eval <int4> --ref <original>` of a synthetic
 * Llama-shaped FP16 model, perplexity, KLD and top-1 of its streamed RTN int4 g128 result
 * against it, in a child under `/usr/bin/time` (peak RSS of the child), with `--max-memory`:
 *
 *   eval-streamed-1B   TinyLlama-1.1B's shape (bench/synthetic.ts 1B, 2.2 GB FP16), streamed
 *                      under --max-memory 1GiB (acceptance: peak RSS <= 1.5 GB), then the same
 *                      evaluation in memory (default budget) for its time and RSS; the two runs'
 *                      numbers must be equal. Files kept in synthetic.ts CACHE between runs.
 *   eval-8B            Llama-3-8B's shape (streaming-8b.ts: 16 GB FP16), streamed under
 *                      --max-memory 5GiB (acceptance: peak RSS <= 6 GB); ~24 GB of disk in
 *                      os.tmpdir() (or BENCH_8B_DIR), deleted afterwards (BENCH_KEEP=1 keeps).
 *
 * The text is BENCH_EVAL_WINDOWS (default 4 for 1B, 2 for 8B) windows of 512 random words of
 * the models' 1000-word vocabulary. Prints one JSON line (bench/run.ts).
 */
import { existsSync, mkdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { mulberry32 } from '../src/random.js';
import { CACHE, syntheticFp16HfConfig, writeSyntheticFp16Model } from './synthetic.js';
import { timedPtq } from './timed-ptq.js';

const GiB = 2 ** 30;
const CTX = 512;

const name = process.argv[2] as 'eval-streamed-1B' | 'eval-8B';
const eightB = name === 'eval-8B';
const HF_CONFIG = syntheticFp16HfConfig(eightB ? '8B' : '1B');
const windows = Number(process.env.BENCH_EVAL_WINDOWS ?? (eightB ? 2 : 4));
const maxMemory = eightB ? '5GiB' : '1GiB';
const root = eightB
  ? (process.env.BENCH_8B_DIR ?? path.join(os.tmpdir(), `ptq-bench-eval-8b-${process.pid}`))
  : path.join(CACHE, 'eval-streamed-1B');
const modelDir = path.join(root, 'fp16');
const quantDir = path.join(root, 'rtn-int4-g128');
const textFile = path.join(root, `words-${windows}x${CTX}.txt`);

if (eightB) {
  const { bavail, bsize } = statfsSync(path.dirname(root));
  if (bavail * bsize < 26 * GiB)
    throw new Error(
      `${path.dirname(root)}: ${((bavail * bsize) / GiB).toFixed(1)} GiB free, eval-8B needs 26`,
    );
}
mkdirSync(root, { recursive: true });

/** `ptq <args> --json` under /usr/bin/time (timed-ptq.ts). */
const ptq = (args: string[]) => timedPtq([...args, '--json'], { timeFile: path.join(root, 'time.txt') });

try {
  const t0 = performance.now();
  if (!existsSync(path.join(modelDir, 'config.json'))) {
    mkdirSync(modelDir, { recursive: true });
    await writeSyntheticFp16Model(modelDir, HF_CONFIG);
  }
  const generateSeconds = (performance.now() - t0) / 1000;
  if (!existsSync(path.join(quantDir, 'config.json')))
    ptq(['quantize', modelDir, '-o', quantDir, '--method', 'rtn', '--bits', '4', '--group-size', '128']);
  if (!existsSync(textFile)) {
    const rand = mulberry32(3);
    const words = Array.from({ length: windows * CTX }, () => `w${Math.floor(rand() * 1000)}`);
    writeFileSync(textFile, words.join(' '));
  }
  const evalArgs = ['eval', quantDir, '--ref', modelDir, '--text', textFile, '--ctx', String(CTX)];
  const run = (label: string, extra: string[]) => {
    process.stderr.write(`  ${name}: ${label} ...\n`);
    const r = ptq([...evalArgs, ...extra]);
    const o = r.out;
    process.stderr.write(
      `  ${label}: ${r.seconds.toFixed(0)} s, peak RSS ${r.peakRssMiB.toFixed(0)} MiB, ${o.execution.path}, ${o.execution.passes} passes\n`,
    );
    return {
      label,
      path: o.execution.path,
      execution: o.execution,
      tokens: o.windows * CTX,
      perplexity: o.perplexity,
      kld: o.kld,
      top1Agreement: o.top1Agreement,
      referencePerplexity: o.referencePerplexity,
      seconds: r.seconds,
      cpuSeconds: r.cpuSeconds,
      evalSeconds: o.seconds,
      tokensPerSecond: o.tokensPerSecond,
      peakRssMiB: r.peakRssMiB,
    };
  };
  const runs = [run('streamed', ['--max-memory', maxMemory])];
  if (!eightB) {
    runs.push(run('in memory', []));
    const [s, m] = runs as [(typeof runs)[0], (typeof runs)[0]];
    for (const key of ['perplexity', 'kld', 'top1Agreement', 'referencePerplexity'] as const)
      if (s[key] !== m[key]) throw new Error(`${name}: ${key} streamed ${s[key]} != in memory ${m[key]}`);
  }
  const parameters = estimateParameters();
  console.log(
    JSON.stringify({
      case: name,
      parameters,
      quantizedParameters: 0,
      calibration: 'none',
      grid: `eval of rtn int4 g128 against fp16, ${windows} x ${CTX} tokens`,
      seconds: runs[0]!.seconds,
      cpuSeconds: runs[0]!.cpuSeconds,
      peakRssMiB: runs[0]!.peakRssMiB,
      phases: {},
      maxMemory,
      targetRssMiB: eightB ? 6000 / 1.048576 : 1500 / 1.048576,
      generateSeconds,
      evalRuns: runs,
      loadAverage: os.loadavg()[0],
    }),
  );
} finally {
  if (eightB && process.env.BENCH_KEEP !== '1') rmSync(root, { recursive: true, force: true });
}

/** Parameters of the Llama shape (embedding, lm_head, blocks, norms). */
function estimateParameters(): number {
  const c = HF_CONFIG;
  const D = c.hidden_size;
  const kv = (D / c.num_attention_heads) * c.num_key_value_heads;
  const block = 2 * D * D + 2 * D * kv + 3 * D * c.intermediate_size + 2 * D;
  return 2 * c.vocab_size * D + c.num_hidden_layers * block + D;
}
