/**
 * Fault injection for the crash-safety tests (test/cli/crash-safety.test.ts): with
 * `PTQ_FAULT=<signal>@<point>` in its environment, the process sends itself <signal> (SIGKILL,
 * SIGINT or SIGTERM) when it reaches the named point of an output write. A test can then stop a
 * write at an exact step and know which state the files must be in, where a kill aimed in time
 * lands wherever the machine's load puts it (or after the process has finished).
 *
 * Inert unless the variable is set: it is read once, when this module loads, and an unarmed
 * `faultPoint` only compares one string. A malformed value is an error at load, so a misspelt
 * point in a test fails loudly instead of never firing.
 *
 * The points, in the order a directory write passes them (src/io/atomic.ts, src/io/safetensors.ts):
 *   output:tmp-created           the temporary output directory exists, still empty
 *   safetensors:header-written   a safetensors file's header is written, none of its tensors yet
 *   output:filled                the temporary directory is complete, its marker included
 *   output:old-aside             the existing output was renamed aside: the target path is absent
 *   output:swapped               the new output is at the target, the old one not yet removed
 */
import { writeSync } from 'node:fs';

export const FAULT_POINTS = [
  'output:tmp-created',
  'safetensors:header-written',
  'output:filled',
  'output:old-aside',
  'output:swapped',
] as const;
export type FaultPoint = (typeof FAULT_POINTS)[number];

export const FAULT_SIGNALS = ['SIGKILL', 'SIGINT', 'SIGTERM'] as const;
export type FaultSignal = (typeof FAULT_SIGNALS)[number];

/** How long a point waits for SIGINT/SIGTERM's handler before calling the injection a failure. */
const HANDLER_WAIT_MS = 10_000;

const armed = parse(process.env.PTQ_FAULT);

function parse(spec: string | undefined): { signal: FaultSignal; point: FaultPoint } | undefined {
  if (spec === undefined || spec === '') return undefined;
  const [signal, point] = spec.split('@') as [FaultSignal, FaultPoint];
  if (!FAULT_SIGNALS.includes(signal) || !FAULT_POINTS.includes(point)) {
    throw new Error(
      `PTQ_FAULT must be <signal>@<point> with signal ${FAULT_SIGNALS.join('|')} and point ` +
        `${FAULT_POINTS.join('|')}, got '${spec}'`,
    );
  }
  return { signal, point };
}

/**
 * Mark `point` of a write. Armed for it, the process announces the fault on stderr (written
 * synchronously: SIGKILL leaves no later chance) and signals itself. SIGKILL ends it inside
 * kill(2). SIGINT and SIGTERM are handled on a later turn of the event loop (atomic.ts's
 * handler, or Node's default action), so the point waits for that instead of returning: nothing
 * after the point runs first, which is what makes the resulting state exact.
 */
export async function faultPoint(point: FaultPoint): Promise<void> {
  if (armed?.point !== point) return;
  writeSync(2, `ptq: fault injection: ${armed.signal} at ${point}\n`);
  process.kill(process.pid, armed.signal);
  await new Promise((resolve) => setTimeout(resolve, HANDLER_WAIT_MS));
  throw new Error(`fault injection: ${armed.signal} at ${point} did not end the process`);
}
