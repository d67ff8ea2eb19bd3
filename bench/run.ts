/**
 * `npm run bench`: quantization time, CPU time and peak RSS on a synthetic Llama-shaped model.
 * Each case runs in its own process so its peak RSS is its own. Prints a table (and the time
 * per phase of the calibrated cases) and writes bench/results.json.
 *
 *   npm run bench                 all cases
 *   npm run bench -- gptq-100M    one case
 *
 * CPU time is user + system over all threads; on a shared machine compare runs by it, wall
 * time grows with every other process.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatTable } from '../src/cli/table.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));

const CASES = ['rtn-100M', 'hqq-100M', 'sinq-100M', 'gptq-100M', 'awq-100M'];

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
}

const selected = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const results: Result[] = [];
for (const name of selected.length ? selected : CASES) {
  process.stderr.write(`bench ${name} ...\n`);
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(HERE, 'case.ts'), name], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (r.status !== 0) throw new Error(`bench case ${name} failed`);
  results.push(JSON.parse(r.stdout));
}
writeFileSync(
  path.join(HERE, 'results.json'),
  `${JSON.stringify({ date: new Date().toISOString(), results }, null, 2)}\n`,
);
console.log(
  formatTable(
    ['case', 'params', 'calibration', 'seconds', 'CPU s', 's / M params', 'peak RSS MiB'],
    results.map((r) => [
      r.case,
      `${(r.parameters / 1e6).toFixed(1)}M`,
      r.calibration,
      r.seconds.toFixed(1),
      r.cpuSeconds.toFixed(1),
      (r.seconds / (r.quantizedParameters / 1e6)).toFixed(2),
      r.peakRssMiB.toFixed(0),
    ]),
  ),
);
for (const r of results.filter((r) => r.calibration !== 'none')) {
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
