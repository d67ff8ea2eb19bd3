/**
 * Bench case `compare-demo`: `ptq compare` on the bundled TinyStories-656K with the grid
 * (--methods rtn,gptq,awq,hqq,sinq --bits 3,4,8, the CLI's calibration defaults: 128 windows of
 * the model's 512-token context) on the bundled text, timed against the 2-minute target.
 *
 * The CLI runs as a child process, exactly as a user starts it (through tsx, the repository's
 * sources); its CPU time is read from /proc/self/stat (cutime + cstime: reaped children), its
 * peak RSS from its own --json summary. Prints one JSON line like case.ts.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '../src/model/load.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const MODEL = path.join(REPO, 'models', 'tinystories-656k');
const TEXT = path.join(REPO, 'data', 'tinystories-valid-slice.txt');
export const TARGET_SECONDS = 120;

/** User + system seconds of the reaped children (proc(5): fields 16 and 17, in clock ticks). */
function childCpuSeconds(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  // Fields after the command name (which is in parentheses and may hold spaces) start at field 3.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
  return (Number(fields[16 - 3]) + Number(fields[17 - 3])) / ticks;
}

const out = mkdtempSync(path.join(os.tmpdir(), 'ptq-bench-compare-'));
const args = [
  '--import',
  'tsx',
  path.join(REPO, 'src', 'cli', 'main.ts'),
  'compare',
  MODEL,
  '--methods',
  'rtn,gptq,awq,hqq,sinq',
  '--bits',
  '3,4,8',
  // The only bundled text: GPTQ/AWQ calibrate on it too (the time does not depend on which text).
  '--calib',
  TEXT,
  '--text',
  TEXT,
  '-o',
  path.join(out, 'report'),
  '--json',
];
// Parameter counts for the table: all tensors, and the block linears that get quantized.
const model = await loadModel(MODEL);
let parameters = 0;
let quantizedParameters = 0;
for (const [name, t] of model.weights) {
  parameters += t.data.length;
  if (/\.(self_attn|mlp)\.\w+_proj\.weight$/.test(name)) quantizedParameters += t.data.length;
}
try {
  const cpu0 = childCpuSeconds();
  const load = os.loadavg()[0]!;
  const t0 = performance.now();
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  const seconds = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`ptq compare exited with ${r.status}`);
  const cpuSeconds = childCpuSeconds() - cpu0;
  const summary = JSON.parse(r.stdout);
  const runs = summary.runs as { label: string; quantizeSeconds: number; evalTokensPerSecond: number }[];
  const evalSeconds = (tokensPerSecond: number) => summary.tokens / tokensPerSecond;
  console.log(
    JSON.stringify({
      case: 'compare-demo',
      parameters,
      quantizedParameters,
      calibration: '128 x 512',
      grid: `${runs.length} runs: rtn,gptq,awq,hqq,sinq x int3,int4,int8 g32`,
      seconds,
      cpuSeconds,
      peakRssMiB: summary.peakRssMiB,
      targetSeconds: TARGET_SECONDS,
      loadAverage: load,
      evalTokens: summary.tokens,
      runs: [
        {
          label: 'fp32 reference',
          quantizeSeconds: 0,
          evalSeconds: evalSeconds(summary.reference.evaluation.tokensPerSecond),
        },
        ...runs.map((run) => ({
          label: run.label,
          quantizeSeconds: run.quantizeSeconds,
          evalSeconds: evalSeconds(run.evalTokensPerSecond),
        })),
      ],
      phases: {},
    }),
  );
} finally {
  rmSync(out, { recursive: true, force: true });
}
