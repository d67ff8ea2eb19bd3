/** Run the `ptq` CLI from source in a child process, as a user would. */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { REPO } from '../helpers.js';

export function runCli(args: string[]) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(REPO, 'src/cli/main.ts'), ...args], {
    cwd: REPO,
    encoding: 'utf8',
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}
