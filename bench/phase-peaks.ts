/**
 * Preload (`node --import tsx --import ./bench/phase-peaks.ts ...`) that says which profile phase
 * (compute/profile.ts: forward, hessian, quantize, gptq, cholesky, layer error, ...) raised the
 * process's peak RSS, and by how much. It reads VmHWM from /proc/self/status when each phase is
 * entered and left: timers cannot do it, since the big allocations happen inside long
 * synchronous loops where no timer fires. The rise is charged to the innermost phase, with the
 * heap and ArrayBuffer bytes of that moment; written as JSON to $BENCH_PHASE_PEAKS at exit.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { profile } from '../src/compute/profile.js';

const out = process.env.BENCH_PHASE_PEAKS;

const hwmKiB = () => Number(/VmHWM:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? 0);

interface PhasePeak {
  /** KiB of peak RSS this phase added, summed over its calls. */
  raisedKiB: number;
  /** Peak RSS (KiB) at the end of the call that set the highest mark, with heap and ArrayBuffer MiB then. */
  peakKiB: number;
  heapMiB: number;
  arrayBuffersMiB: number;
}

if (out) {
  const peaks = new Map<string, PhasePeak>();
  const stack: string[] = [];
  let mark = hwmKiB();
  // Charge the rise since the last reading to the phase that was running (the innermost one).
  const charge = () => {
    const now = hwmKiB();
    if (now > mark) {
      const name = stack.at(-1) ?? '(outside phases)';
      const m = process.memoryUsage();
      const p = peaks.get(name) ?? { raisedKiB: 0, peakKiB: 0, heapMiB: 0, arrayBuffersMiB: 0 };
      p.raisedKiB += now - mark;
      p.peakKiB = now;
      p.heapMiB = m.heapUsed / 2 ** 20;
      p.arrayBuffersMiB = m.arrayBuffers / 2 ** 20;
      peaks.set(name, p);
      mark = now;
    }
  };
  const phase = profile.phase.bind(profile);
  profile.enabled = true;
  profile.phase = async (name, fn) => {
    charge();
    stack.push(name);
    try {
      return await phase(name, fn);
    } finally {
      charge();
      stack.pop();
    }
  };
  process.on('exit', () => {
    charge();
    writeFileSync(out, JSON.stringify({ peakKiB: mark, phases: Object.fromEntries(peaks) }, null, 2));
  });
}
