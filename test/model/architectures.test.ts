/**
 * Forward equivalence per architecture: a tiny random checkpoint in each Hugging Face model
 * type's exact layout is loaded by ptqkit (loadModel: name mapping, transposes, fused splits)
 * and run by the Decoder; the same files run as an independent ONNX graph in onnxruntime
 * (arch-reference.ts). Logits must agree to 1e-4 of their range.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { JsEngine } from '../../src/compute/js-engine.js';
import { OrtEngine } from '../../src/compute/ort-engine.js';
import { blockLinears, linearWeightName } from '../../src/model/architecture.js';
import { Decoder } from '../../src/model/decoder.js';
import { loadModel } from '../../src/model/load.js';
import { maxAbsDiff, seededRandom, tempDir } from '../helpers.js';
import { CASES, Ref, WeightMaker, writeCheckpoint } from './arch-reference.js';

const B = 2;
const T = 12;

for (const [i, arch] of CASES.entries()) {
  test(`${arch.name}: ptqkit forward equals the reference ONNX graph`, async () => {
    const dir = tempDir('ptq-arch-');
    const w = new WeightMaker(100 + i);
    arch.tensors(w);
    await writeCheckpoint(dir, arch.config, w.map);
    const rand = seededRandom(7 + i);
    const V = arch.config.vocab_size as number;
    const tokens = Int32Array.from({ length: B * T }, () => Math.floor(rand() * V));

    const model = await loadModel(dir);
    // Quantizers see every block linear as [out, in] under its canonical name.
    for (const linear of blockLinears(model.config)) {
      const t = model.weights.get(linearWeightName(1, linear));
      assert.ok(t && t.shape.length === 2, `${linearWeightName(1, linear)} present`);
    }
    const ours = await new Decoder(model.config, model.weights).forward(tokens, B, T);
    const g = new Ref(w.map, B, T);
    const reference = await g.run(arch.graph(g, arch.config, T), tokens, V);
    const range = reference.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const diff = maxAbsDiff(ours, reference);
    console.log(
      `  ${arch.config.model_type}: max |Δlogit| ${diff.toExponential(2)} of max |logit| ${range.toFixed(3)}`,
    );
    assert.ok(range > 0.5, 'logits are not trivially small');
    assert.ok(diff <= 1e-4 * range, `max |Δlogit| ${diff} > 1e-4 × ${range}`);
  });
}

test('sliding window and soft cap: onnxruntime attention equals the plain-loop reference', async () => {
  const rand = seededRandom(3);
  const shape = { batch: 2, seqLen: 9, heads: 4, kvHeads: 2, headDim: 8, scale: 0.3 };
  const r = (n: number) => Float32Array.from({ length: n }, () => rand() * 4 - 2);
  const [q, k, v] = [r(2 * 9 * 32), r(2 * 9 * 16), r(2 * 9 * 16)];
  for (const extra of [{ window: 1 }, { window: 3 }, { softcap: 2 }, { window: 4, softcap: 50 }]) {
    const fast = await new OrtEngine().causalAttention(q!, k!, v!, { ...shape, ...extra });
    const slow = await new JsEngine().causalAttention(q!, k!, v!, { ...shape, ...extra });
    assert.ok(maxAbsDiff(fast, slow) < 1e-5, JSON.stringify(extra));
  }
  // window 1: every position attends to itself only, so the output is its own value row.
  const own = await new OrtEngine().causalAttention(q!, k!, v!, { ...shape, window: 1 });
  assert.deepEqual(own.subarray(0, 8), v!.subarray(0, 8));
  assert.deepEqual(own.subarray(8, 16), v!.subarray(0, 8)); // query head 1 reads KV head 0
});
