/**
 * Opt-in accounting of where quantization spends its time: wall-clock and process CPU time
 * (user + system, all threads: onnxruntime's pool included) per named phase. Phases nest;
 * time is charged to the innermost one, so the totals add up to the time spent inside
 * phases. Disabled (the default), `phase` only calls its function.
 *
 * CPU time is the measure to compare runs by on a shared machine: wall-clock time grows with
 * every other process, CPU time much less.
 */

export interface PhaseTotals {
  calls: number;
  wallSeconds: number;
  cpuSeconds: number;
}

/** Wall-clock and process CPU time in seconds, from any fixed origin. */
export type ProfileClock = () => { wall: number; cpu: number };

/** performance.now() and process.cpuUsage() (user + system, all threads). */
const processClock: ProfileClock = () => {
  const { user, system } = process.cpuUsage();
  return { wall: performance.now() / 1000, cpu: (user + system) / 1e6 };
};

export class PhaseProfile {
  enabled = false;
  readonly totals = new Map<string, PhaseTotals>();
  private readonly stack: string[] = [];
  private lastWall = 0;
  private lastCpu = 0;

  /** `clock` is replaceable so the accounting can be tested against known times. */
  constructor(private readonly clock: ProfileClock = processClock) {}

  /** Run fn as phase `name` (inside the current phase, if any). */
  async phase<T>(name: string, fn: () => Promise<T> | T): Promise<T> {
    if (!this.enabled) return fn();
    this.charge();
    this.stack.push(name);
    this.entry(name).calls++;
    try {
      return await fn();
    } finally {
      this.charge();
      this.stack.pop();
    }
  }

  reset(): void {
    this.totals.clear();
    this.stack.length = 0;
  }

  /** Charge the time since the last mark to the innermost open phase. */
  private charge(): void {
    const { wall, cpu } = this.clock();
    const top = this.stack.at(-1);
    if (top !== undefined) {
      const t = this.entry(top);
      t.wallSeconds += wall - this.lastWall;
      t.cpuSeconds += cpu - this.lastCpu;
    }
    this.lastWall = wall;
    this.lastCpu = cpu;
  }

  private entry(name: string): PhaseTotals {
    let t = this.totals.get(name);
    if (!t) {
      t = { calls: 0, wallSeconds: 0, cpuSeconds: 0 };
      this.totals.set(name, t);
    }
    return t;
  }
}

/** The process-wide profile that calibration and GPTQ report to (bench/ enables it). */
export const profile = new PhaseProfile();

/** `fn` as a phase of the process-wide profile. */
export function profiled<A extends unknown[], R>(name: string, fn: (...args: A) => Promise<R> | R) {
  return (...args: A): Promise<R> => profile.phase(name, () => fn(...args));
}
