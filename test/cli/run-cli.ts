/** Run the `ptq` CLI from source in a child process, as a user would. */
import { spawn, spawnSync } from 'node:child_process';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { REPO } from '../helpers.js';

/** tsx's loader by URL: `--import tsx` would resolve from the child's working directory. */
export const TSX = pathToFileURL(path.join(REPO, 'node_modules/tsx/dist/loader.mjs')).href;

/** `timeoutMs`: a run that may hang is killed (SIGKILL) after it; `signal` then says so. */
export function runCli(args: string[], options: { cwd?: string; timeoutMs?: number } = {}) {
  const r = spawnSync(process.execPath, ['--import', TSX, path.join(REPO, 'src/cli/main.ts'), ...args], {
    cwd: options.cwd ?? REPO,
    encoding: 'utf8',
    ...(options.timeoutMs !== undefined && { timeout: options.timeoutMs, killSignal: 'SIGKILL' as const }),
  });
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** `runCli` without blocking: several refused runs at once (each mostly waits on its start-up). */
export function runCliAsync(
  args: string[],
  options: { cwd?: string } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', TSX, path.join(REPO, 'src/cli/main.ts'), ...args], {
    cwd: options.cwd ?? REPO,
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}
