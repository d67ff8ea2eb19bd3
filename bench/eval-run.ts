/**
 * The eval-<shape> bench case: ptqkit's perplexity (eval-case.ts) and llama.cpp's
 * (llama-perplexity.c) on the same synthetic weights, tokens, context and thread count, each in
 * its own process (peak RSS its own), alternated ROUNDS times so both see the same machine
 * load; the best run of each counts. llama.cpp's Q8_0 and Q4_0 run once, for information.
 */
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { LLAMA } from '../src/model/architecture.js';
import { CTX, ggufPath, THREADS, tokensPath } from './eval-case.js';
import { buildLlamaPerplexity } from './llama-cpp.js';
import { CACHE, type ShapeName, syntheticConfig } from './synthetic.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROUNDS = Number(process.env.PTQ_BENCH_ROUNDS ?? 2);

export interface EvalSide {
  engine: 'ptqkit' | 'llama.cpp';
  weights: string;
  tokens: number;
  nll: number;
  seconds: number;
  cpuSeconds: number;
  tokensPerSecond: number;
  tokensPerCpuSecond: number;
  peakRssMiB: number;
  /** 1-minute load average, mean of before and after the run (2 cores: 2 is a busy machine). */
  loadAverage: number;
}

function run(command: string, args: string[], engine: EvalSide['engine'], weights: string): EvalSide {
  const load0 = os.loadavg()[0]!;
  const r = spawnSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (r.status !== 0) throw new Error(`${engine} ${weights}: exit ${r.status}`);
  const o = JSON.parse(r.stdout) as {
    windows: number;
    nll: number;
    seconds: number;
    cpuSeconds: number;
    maxRssKiB: number;
  };
  const tokens = o.windows * CTX;
  const side: EvalSide = {
    engine,
    weights,
    tokens,
    nll: o.nll,
    seconds: o.seconds,
    cpuSeconds: o.cpuSeconds,
    tokensPerSecond: tokens / o.seconds,
    tokensPerCpuSecond: tokens / o.cpuSeconds,
    peakRssMiB: o.maxRssKiB / 1024,
    loadAverage: (load0 + os.loadavg()[0]!) / 2,
  };
  process.stderr.write(
    `  ${engine} ${weights}: ${side.tokensPerSecond.toFixed(1)} tokens/s, ${side.tokensPerCpuSecond.toFixed(1)} / CPU s, load ${side.loadAverage.toFixed(1)}\n`,
  );
  return side;
}

export async function runEvalCase(shape: ShapeName) {
  const tsx = (...args: string[]): [string, string[]] => [
    process.execPath,
    ['--import', 'tsx', path.join(HERE, 'eval-case.ts'), ...args],
  ];
  for (const type of ['f32', 'q8_0', 'q4_0']) {
    const [cmd, args] = tsx('prepare', shape, type);
    if (spawnSync(cmd, args, { stdio: 'inherit' }).status !== 0)
      throw new Error(`cannot write ${ggufPath(shape, type)}`);
  }
  const { exe, libDir } = buildLlamaPerplexity(CACHE);
  const llama = (type: string) =>
    run(
      exe,
      [libDir, ggufPath(shape, type), tokensPath(shape), String(CTX), String(THREADS)],
      'llama.cpp',
      type.toUpperCase(),
    );
  const ours: EvalSide[] = [];
  const theirs: EvalSide[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    ours.push(run(...tsx('ptqkit', shape), 'ptqkit', 'F32'));
    theirs.push(llama('f32'));
  }
  const best = (s: EvalSide[]) => s.reduce((a, b) => (b.tokensPerSecond > a.tokensPerSecond ? b : a));
  const [p, l] = [best(ours), best(theirs)];
  // Both sides computed the same thing: their perplexities agree to float32 rounding.
  if (Math.abs(p.nll - l.nll) > 1e-3)
    throw new Error(`eval-${shape}: nll ${p.nll} (ptqkit) vs ${l.nll} (llama.cpp)`);
  const config = syntheticConfig(shape);
  const parameters = [...LLAMA.expectedShapes(config).values()].reduce(
    (n, s) => n + s.reduce((a, b) => a * b, 1),
    0,
  );
  return {
    case: `eval-${shape}`,
    parameters,
    quantizedParameters: 0,
    calibration: 'none',
    grid: `perplexity, ctx ${CTX}, ${THREADS} threads`,
    seconds: p.seconds,
    cpuSeconds: p.cpuSeconds,
    peakRssMiB: p.peakRssMiB,
    phases: {},
    ctx: CTX,
    threads: THREADS,
    sides: [p, l, llama('q8_0'), llama('q4_0')],
    runs: undefined,
    allRuns: [...ours, ...theirs],
    ratio: p.tokensPerSecond / l.tokensPerSecond,
  };
}
