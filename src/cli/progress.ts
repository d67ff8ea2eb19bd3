/**
 * Progress lines for long work (layer i/N, tokens/s, ETA) on stderr, only when stderr is a
 * terminal and the command is not in --json mode; redrawn at most every 100 ms.
 */
export interface Progress {
  update(done: number, total: number, detail?: string): void;
  finish(): void;
}

export function createProgress(label: string, enabled: boolean): Progress {
  const active = enabled && process.stderr.isTTY === true;
  const t0 = performance.now();
  let last = 0;
  return {
    update(done, total, detail) {
      if (!active) return;
      const now = performance.now();
      if (now - last < 100 && done < total) return;
      last = now;
      const elapsed = (now - t0) / 1000;
      const eta = done > 0 ? (elapsed / done) * (total - done) : 0;
      const line = `${label} ${done}/${total}${detail ? ` ${detail}` : ''} | ${elapsed.toFixed(1)}s, ETA ${eta.toFixed(1)}s`;
      process.stderr.write(`\r\x1b[2K${line}`);
    },
    finish() {
      if (active) process.stderr.write('\r\x1b[2K');
    },
  };
}
