/**
 * `ptq <args>` in a child process under `/usr/bin/time`, for the bench cases that measure a whole
 * command: its JSON output, wall and CPU seconds, and peak RSS (the child's own, which an
 * in-process measurement cannot separate from the bench's).
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/main.ts');

export interface TimedPtqOptions {
  /** Where /usr/bin/time writes its figures. */
  timeFile: string;
  /** Modules preloaded with --import besides tsx (e.g. bench/phase-peaks.ts). */
  preload?: string[];
  env?: NodeJS.ProcessEnv;
  /** Run under `nice -n <n>`. */
  nice?: number;
}

export function timedPtq(args: string[], options: TimedPtqOptions) {
  const command = [
    '/usr/bin/time',
    '-f',
    '%e %U %S %M',
    '-o',
    options.timeFile,
    process.execPath,
    '--import',
    'tsx',
    ...(options.preload ?? []).flatMap((m) => ['--import', m]),
    CLI,
    ...args,
  ];
  if (options.nice !== undefined) command.unshift('nice', '-n', String(options.nice));
  const r = spawnSync(command[0]!, command.slice(1), {
    env: options.env ?? process.env,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 64 * 1024 * 1024,
  });
  if (r.status !== 0) throw new Error(`ptq ${args[0]} failed (status ${r.status})`);
  const [wall, user, sys, maxRssKiB] = readFileSync(options.timeFile, 'utf8')
    .trim()
    .split(/\s+/)
    .map(Number) as [number, number, number, number];
  return { out: JSON.parse(r.stdout), seconds: wall, cpuSeconds: user + sys, peakRssMiB: maxRssKiB / 1024 };
}
