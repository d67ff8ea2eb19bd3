import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PhaseProfile } from '../../src/compute/profile.js';

const spin = (ms: number) => {
  const end = performance.now() + ms;
  while (performance.now() < end);
};

test('phases: time goes to the innermost phase and the totals add up to the time inside', async () => {
  const p = new PhaseProfile();
  assert.equal(await p.phase('off', () => 7), 7);
  assert.equal(p.totals.size, 0, 'a disabled profile records nothing');

  p.enabled = true;
  const t0 = performance.now();
  await p.phase('outer', async () => {
    spin(20);
    for (let i = 0; i < 2; i++) await p.phase('inner', () => spin(30));
  });
  const elapsed = (performance.now() - t0) / 1000;
  const outer = p.totals.get('outer')!;
  const inner = p.totals.get('inner')!;
  console.log(
    `  outer ${outer.wallSeconds.toFixed(4)} s, inner ${inner.wallSeconds.toFixed(4)} s of ${elapsed.toFixed(4)} s`,
  );
  assert.deepEqual([outer.calls, inner.calls], [1, 2]);
  // Wall time is exclusive: outer's own 20 ms, inner's 2 × 30 ms; together all of it.
  assert.ok(inner.wallSeconds >= 0.06 && outer.wallSeconds >= 0.02);
  assert.ok(Math.abs(outer.wallSeconds + inner.wallSeconds - elapsed) < 0.002);
  assert.ok(inner.cpuSeconds > 0 && inner.cpuSeconds <= inner.wallSeconds * 2 + 0.01);
  // A phase that throws is still closed.
  await assert.rejects(p.phase('fails', () => Promise.reject(new Error('x'))));
  await p.phase('after', () => spin(1));
  assert.equal(p.totals.get('fails')!.calls, 1);
  assert.ok(p.totals.get('after')!.wallSeconds >= 0.001);
});
