/**
 * Fault injection for the crash-safety tests (test/cli/crash-safety.test.ts, resume.test.ts,
 * interrupt.test.ts): with `PTQ_FAULT=<signal>@<point>[#<n>]` in its environment, the process sends
 * itself <signal> (SIGKILL, SIGINT or SIGTERM) the n-th time (default the first) it reaches the
 * named point of an output write. A test can then stop a
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
 * A resume-state commit (src/quant/resume.ts), once per finished block:
 *   resume:tmp-synced            a state file (block, activations, then state.json) is written and
 *                                fsynced under its temporary name, not yet renamed
 *   resume:block-renamed         the block file is in place; state.json still the previous one
 *   resume:act-renamed           the next block's activations are in place (not after the last block)
 *   resume:committed             state.json names the new block; older files not yet removed
 * Signal-only (faultSignal: the signal is sent and the code goes on, so what is tested is that it
 * is handled where the code lets it be):
 *   gguf:piece-encoded           a piece of a large tensor is encoded (src/export/gguf.ts), before
 *                                the loop's yieldToSignals; later passes are announced on stderr
 */
import { writeSync } from 'node:fs';

/** The steps of an output write (test/cli/crash-safety.test.ts stops each). */
export const OUTPUT_FAULT_POINTS = [
  'output:tmp-created',
  'safetensors:header-written',
  'output:filled',
  'output:old-aside',
  'output:swapped',
] as const;
/** The steps of a resume-state commit (test/cli/resume.test.ts). */
export const RESUME_FAULT_POINTS = [
  'resume:tmp-synced',
  'resume:block-renamed',
  'resume:act-renamed',
  'resume:committed',
] as const;
export const FAULT_POINTS = [...OUTPUT_FAULT_POINTS, ...RESUME_FAULT_POINTS, 'gguf:piece-encoded'] as const;
export type FaultPoint = (typeof FAULT_POINTS)[number];

export const FAULT_SIGNALS = ['SIGKILL', 'SIGINT', 'SIGTERM'] as const;
export type FaultSignal = (typeof FAULT_SIGNALS)[number];

/** How long a point waits for SIGINT/SIGTERM's handler before calling the injection a failure. */
const HANDLER_WAIT_MS = 10_000;

const armed = parse(process.env.PTQ_FAULT);

/** Passes of the armed point so far. */
let passes = 0;

function parse(
  spec: string | undefined,
): { signal: FaultSignal; point: FaultPoint; pass: number } | undefined {
  if (spec === undefined || spec === '') return undefined;
  const m = /^(\w+)@([\w:-]+)(?:#(\d+))?$/.exec(spec);
  const [signal, point, pass] = [m?.[1] as FaultSignal, m?.[2] as FaultPoint, Number(m?.[3] ?? 1)];
  if (!FAULT_SIGNALS.includes(signal) || !FAULT_POINTS.includes(point) || !(pass >= 1)) {
    throw new Error(
      `PTQ_FAULT must be <signal>@<point>[#<n>] with signal ${FAULT_SIGNALS.join('|')}, point ` +
        `${FAULT_POINTS.join('|')} and n >= 1, got '${spec}'`,
    );
  }
  return { signal, point, pass };
}

/**
 * Mark `point` of a write. Armed for it, the process announces the fault on stderr (written
 * synchronously: SIGKILL leaves no later chance) and signals itself. SIGKILL ends it inside
 * kill(2). SIGINT and SIGTERM are handled on a later turn of the event loop (atomic.ts's
 * handler, or Node's default action), so the point waits for that instead of returning: nothing
 * after the point runs first, which is what makes the resulting state exact.
 */
export async function faultPoint(point: FaultPoint): Promise<void> {
  if (armed?.point !== point || ++passes !== armed.pass) return;
  writeSync(2, `ptq: fault injection: ${armed.signal} at ${point}\n`);
  process.kill(process.pid, armed.signal);
  await new Promise((resolve) => setTimeout(resolve, HANDLER_WAIT_MS));
  throw new Error(`fault injection: ${armed.signal} at ${point} did not end the process`);
}

/**
 * Mark `point` where the signal must be handled by the code that follows (a loop's yield to
 * signals), not by the point: armed for it, the n-th pass announces the fault and sends the signal
 * without waiting; every later pass is announced too (synchronously), so a test counts how far
 * the code ran on before the handler ended it.
 */
export function faultSignal(point: FaultPoint): void {
  if (armed?.point !== point) return;
  passes++;
  if (passes === armed.pass) {
    writeSync(2, `ptq: fault injection: ${armed.signal} at ${point}\n`);
    process.kill(process.pid, armed.signal);
  } else if (passes > armed.pass) writeSync(2, `ptq: fault injection: ${point} passed again\n`);
}
