import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PhaseProfile } from '../../src/compute/profile.js';

/**
 * A clock the test moves by hand, in binary fractions of a second (exact in float64), so every
 * total is known exactly whatever the machine's load.
 */
function manualClock() {
  const now = { wall: 0, cpu: 0, reads: 0 };
  return {
    read: () => {
      now.reads++;
      return { wall: now.wall, cpu: now.cpu };
    },
    advance: (wall: number, cpu: number) => {
      now.wall += wall;
      now.cpu += cpu;
    },
    now,
  };
}

test('phases: time goes to the innermost phase, time outside phases to none, totals exact', async () => {
  const clock = manualClock();
  const p = new PhaseProfile(clock.read);
  assert.equal(await p.phase('off', () => 7), 7);
  assert.equal(p.totals.size, 0, 'a disabled profile records nothing');
  assert.equal(clock.now.reads, 0, 'a disabled profile does not read the clock');

  p.enabled = true;
  clock.advance(8, 8); // before any phase: charged to nothing
  await p.phase('outer', async () => {
    clock.advance(1, 0.5);
    for (let i = 0; i < 2; i++) await p.phase('inner', () => clock.advance(2, 1.5));
    clock.advance(0.25, 0.25);
  });
  clock.advance(16, 16); // after the phases: charged to nothing
  assert.deepEqual(Object.fromEntries(p.totals), {
    outer: { calls: 1, wallSeconds: 1.25, cpuSeconds: 0.75 },
    inner: { calls: 2, wallSeconds: 4, cpuSeconds: 3 },
  });

  // A phase that throws is still closed: its time is its own, the next phase starts clean.
  await assert.rejects(
    p.phase('fails', () => {
      clock.advance(0.5, 0.125);
      return Promise.reject(new Error('x'));
    }),
  );
  clock.advance(32, 32);
  await p.phase('after', () => clock.advance(0.0625, 0.0625));
  assert.deepEqual(p.totals.get('fails'), { calls: 1, wallSeconds: 0.5, cpuSeconds: 0.125 });
  assert.deepEqual(p.totals.get('after'), { calls: 1, wallSeconds: 0.0625, cpuSeconds: 0.0625 });

  p.reset();
  assert.equal(p.totals.size, 0);
});

test('the process clock: a phase holds at least the wall time spent in it, the phases no more than the whole', async () => {
  const spin = (ms: number) => {
    const end = performance.now() + ms;
    while (performance.now() < end);
  };
  const p = new PhaseProfile();
  p.enabled = true;
  const t0 = performance.now();
  await p.phase('outer', async () => {
    spin(5);
    for (let i = 0; i < 2; i++) await p.phase('inner', () => spin(10));
  });
  const elapsed = (performance.now() - t0) / 1000;
  const outer = p.totals.get('outer')!;
  const inner = p.totals.get('inner')!;
  console.log(
    `  outer ${outer.wallSeconds.toFixed(4)} s, inner ${inner.wallSeconds.toFixed(4)} s of ${elapsed.toFixed(4)} s`,
  );
  // Both bounds hold under any load: the phase marks are taken inside [t0, t0 + elapsed] and
  // around each spin, which lasts at least its time on the same clock (1e-9: float rounding of
  // the differences).
  assert.ok(inner.wallSeconds >= 0.02 - 1e-9 && outer.wallSeconds >= 0.005 - 1e-9);
  assert.ok(outer.wallSeconds + inner.wallSeconds <= elapsed + 1e-9);
  // Spinning costs CPU; how much of the wall time it gets depends on the machine's load.
  assert.ok(inner.cpuSeconds > 0);
});
