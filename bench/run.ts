/**
 * `npm run bench`: quantization time, CPU time and peak RSS on synthetic Llama-shaped models,
 * the time to just read their weights (read-*), eval throughput against llama.cpp (eval-*), and
 * `ptq compare` on the bundled demo model (compare-demo.ts) against the 2 minutes.
 * Each case runs in its own process so its peak RSS is its own. Prints a table (and the time
 * per phase of the calibrated cases) and writes bench/results.json (a case run alone replaces
 * its own entry and keeps the others).
 *
 *   npm run bench                 default cases (~15 min on 2 idle cores)
 *   npm run bench -- gptq-100M    these cases
 *   BENCH_HEAVY=1 npm run bench   also 500M and 1B (quantization, reading, eval-1B, eval-streamed-1B:
 *                                 ~1 h) and streaming-8b (streaming-8b.ts: a 16 GB FP16 model on
 *                                 disk, ~26 GB free in os.tmpdir() or BENCH_8B_DIR; tens of minutes)
 *   npm run bench -- eval-8B      opt-in: block-streamed eval of an 8B model's int4 result against
 *                                 it (eval-streamed.ts; ~26 GB of disk, tens of minutes)
 *
 * CPU time is user + system over all threads; on a shared machine compare runs by it, wall
 * time grows with every other process.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatTable } from '../src/cli/table.js';
import { type EvalSide, runEvalCase } from './eval-run.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));

const CASES = [
  'read-100M',
  'rtn-100M',
  'hqq-100M',
  'sinq-100M',
  'gptq-100M',
  'awq-100M',
  'eval-100M',
  'compare-demo',
];
const HEAVY = [
  'eval-1B',
  'eval-streamed-1B',
  ...['500M', '1B'].flatMap((s) => ['read', 'rtn', 'hqq', 'sinq'].map((m) => `${m}-${s}`)),
  'gptq-500M',
];
if (process.env.BENCH_HEAVY === '1') CASES.push(...HEAVY, 'streaming-8b');
/** Cases with a script of their own; the others run case.ts. */
const SCRIPTS: Record<string, string> = {
  'compare-demo': 'compare-demo.ts',
  'streaming-8b': 'streaming-8b.ts',
  'eval-streamed-1B': 'eval-streamed.ts',
  'eval-8B': 'eval-streamed.ts',
  tokenize: 'tokenize.ts', // npm run bench -- tokenize: piecewise tokenization at 1-50 MB (bench/tokenize.ts)
};

interface Phase {
  seconds: number;
  cpuSeconds: number;
}
interface Result {
  case: string;
  parameters: number;
  quantizedParameters: number;
  calibration: string;
  seconds: number;
  cpuSeconds: number;
  peakRssMiB: number;
  phases: Record<string, Phase>;
  /** compare-demo: the wall-time target, the load average at the start, time per run. */
  targetSeconds?: number;
  loadAverage?: number;
  runs?: { label: string; quantizeSeconds: number; evalSeconds: number }[];
  /** streaming-8b: seconds to just read the shards, and the quantize/read ratio. */
  readSeconds?: number;
  readRatio?: number;
  /** eval-*: ptqkit and llama.cpp side by side (tokens/s of perplexity), the load average of each run. */
  ctx?: number;
  threads?: number;
  sides?: EvalSide[];
  ratio?: number;
  grid?: string;
  /** eval-streamed-1B, eval-8B: each `ptq eval` run (streamed, in memory) with its peak RSS and tokens/s. */
  maxMemory?: string;
  targetRssMiB?: number;
  evalRuns?: {
    label: string;
    execution: { passes: number; windowsPerPass: number };
    tokens: number;
    perplexity: number;
    kld: number;
    top1Agreement: number;
    seconds: number;
    cpuSeconds: number;
    tokensPerSecond: number;
    peakRssMiB: number;
  }[];
}

const selected = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const results: Result[] = [];
for (const name of selected.length ? selected : CASES) {
  process.stderr.write(`bench ${name} ...\n`);
  if (name.startsWith('eval-') && !SCRIPTS[name]) {
    results.push((await runEvalCase(name.slice(5) as '100M')) as Result);
    continue;
  }
  const script = SCRIPTS[name] ?? 'case.ts';
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(HERE, script), name], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (r.status !== 0) throw new Error(`bench case ${name} failed`);
  results.push(JSON.parse(r.stdout));
}
// Quantization cases as a rate, and RTN against reading the same model's weights.
const rate = (r: Result) => (r.case.startsWith('read-') ? r.parameters : r.quantizedParameters) / r.seconds;
const file = path.join(HERE, 'results.json');
const kept: Result[] = existsSync(file)
  ? (JSON.parse(readFileSync(file, 'utf8')).results as Result[]).filter(
      (old) => !results.some((r) => r.case === old.case),
    )
  : [];
writeFileSync(
  file,
  `${JSON.stringify({ date: new Date().toISOString(), results: [...kept, ...results] }, null, 2)}\n`,
);
const quantCases = results.filter((r) => r.sides === undefined && r.evalRuns === undefined);
if (quantCases.length)
  console.log(
    formatTable(
      ['case', 'params', 'calibration', 'seconds', 'CPU s', 'M params/s', 'peak RSS MiB'],
      quantCases.map((r) => [
        r.case,
        `${(r.parameters / 1e6).toFixed(1)}M`,
        r.calibration,
        r.seconds.toFixed(1),
        r.cpuSeconds.toFixed(1),
        // compare-demo quantizes 15 times and evaluates 16 times: a rate per parameter means nothing.
        r.targetSeconds === undefined ? (rate(r) / 1e6).toFixed(1) : '-',
        r.peakRssMiB.toFixed(0),
      ]),
    ),
  );
for (const rtn of quantCases.filter((r) => r.case.startsWith('rtn-'))) {
  const read = [...kept, ...results].find((r) => r.case === rtn.case.replace('rtn-', 'read-'));
  if (read) {
    console.log(
      `\n${rtn.case}: ${rtn.seconds.toFixed(2)} s, ${(rtn.seconds / read.seconds).toFixed(1)}x the ${read.seconds.toFixed(2)} s to read its weights (target <= 3x)`,
    );
  }
}
for (const r of results.filter((r) => r.sides)) {
  console.log(
    `\n${r.case}: perplexity of ${r.sides![0]!.tokens} tokens, ctx ${r.ctx}, ${r.threads} threads; ptqkit / llama.cpp F32 = ${r.ratio!.toFixed(2)} (target >= 1.0)`,
  );
  console.log(
    formatTable(
      ['engine', 'weights', 'tokens/s', 'tokens / CPU s', 'perplexity', 'peak RSS MiB', 'load avg'],
      r.sides!.map((s) => [
        s.engine,
        s.weights,
        s.tokensPerSecond.toFixed(1),
        s.tokensPerCpuSecond.toFixed(1),
        Math.exp(s.nll).toFixed(1),
        s.peakRssMiB.toFixed(0),
        s.loadAverage.toFixed(1),
      ]),
    ),
  );
}
for (const r of results.filter((r) => r.calibration !== 'none' && Object.keys(r.phases).length)) {
  console.log(`\n${r.case} by phase`);
  console.log(
    formatTable(
      ['phase', 'seconds', 'CPU s', 'share of CPU'],
      Object.entries(r.phases)
        .sort((a, b) => b[1].cpuSeconds - a[1].cpuSeconds)
        .map(([name, p]) => [
          name,
          p.seconds.toFixed(1),
          p.cpuSeconds.toFixed(1),
          `${((100 * p.cpuSeconds) / r.cpuSeconds).toFixed(0)}%`,
        ]),
    ),
  );
}
for (const r of results.filter((r) => r.targetSeconds !== undefined)) {
  const verdict = r.seconds <= r.targetSeconds! ? 'within' : 'OVER';
  console.log(
    `\n${r.case}: ${r.seconds.toFixed(1)} s wall (${verdict} the ${r.targetSeconds} s target), ${r.cpuSeconds.toFixed(1)} CPU s, ` +
      `load average ${r.loadAverage!.toFixed(1)} at the start`,
  );
  console.log(
    formatTable(
      ['run', 'quantize s', 'eval s'],
      r.runs!.map((x) => [x.label, x.quantizeSeconds.toFixed(2), x.evalSeconds.toFixed(2)]),
    ),
  );
}
for (const r of results.filter((r) => r.readRatio !== undefined)) {
  console.log(
    `\n${r.case}: ${r.seconds.toFixed(0)} s wall at ${r.peakRssMiB.toFixed(0)} MiB peak RSS (target < 4096), ` +
      `${(r.parameters / r.seconds / 1e6).toFixed(1)}M params/s; reading the shards alone ${r.readSeconds!.toFixed(0)} s ` +
      `(${r.readRatio!.toFixed(1)}x, target within 3x)`,
  );
}
for (const r of results.filter((r) => r.evalRuns)) {
  const verdict = r.peakRssMiB <= r.targetRssMiB! ? 'within' : 'OVER';
  console.log(
    `\n${r.case}: ${r.grid}; streamed with --max-memory ${r.maxMemory}: peak RSS ${r.peakRssMiB.toFixed(0)} MiB (${verdict} the ${r.targetRssMiB!.toFixed(0)} MiB target)`,
  );
  console.log(
    formatTable(
      [
        'run',
        'passes',
        'tokens',
        'perplexity',
        'KLD',
        'top-1',
        'eval tokens/s',
        'wall s',
        'CPU s',
        'peak RSS MiB',
      ],
      r.evalRuns!.map((x) => [
        x.label,
        String(x.execution.passes),
        String(x.tokens),
        x.perplexity.toFixed(3),
        x.kld.toExponential(3),
        x.top1Agreement.toFixed(4),
        x.tokensPerSecond.toFixed(1),
        x.seconds.toFixed(0),
        x.cpuSeconds.toFixed(0),
        x.peakRssMiB.toFixed(0),
      ]),
    ),
  );
}
