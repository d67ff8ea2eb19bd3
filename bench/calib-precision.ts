/**
 * Calibration activation precision (quant/activation-store.ts): GPTQ and AWQ perplexity and KLD
 * with float32, fp16 and bf16 calibration activations, on the settings and pins of
 * test/quant/quality.test.ts (which holds each to 1%). The measurement behind
 * DEFAULT_ACTIVATION_DTYPE.   node --import tsx bench/calib-precision.ts
 */
import path from 'node:path';
import { quantizeModel } from '../src/quant/quantize-model.js';
import {
  calibrationWindows,
  evaluateAgainstFp,
  intGrid,
  loadWithValidTokens,
} from '../test/quant/quality-setup.js';

const CASES = [
  {
    model: 'models/tinystories-656k',
    runs: [
      ['gptq', 4, 32],
      ['gptq', 3, 32],
      ['awq', 4, 32],
      ['awq', 3, 32],
    ],
  },
  {
    model: 'models/stories260k/stories260K.bin',
    runs: [
      ['gptq', 4, 0],
      ['gptq', 3, 0],
      ['awq', 4, 0],
    ],
  },
] as const;

for (const c of CASES) {
  const { model, tokens } = await loadWithValidTokens(c.model);
  const evalTokens = tokens.slice(0, 48 * 1024);
  const calibration = calibrationWindows(tokens, 128);
  for (const [method, bits, g] of c.runs) {
    const row: string[] = [];
    for (const dtype of ['f32', 'f16', 'bf16'] as const) {
      const q = await quantizeModel(model.config, model.weights, {
        method,
        grid: intGrid(bits, g, true),
        calibration,
        activationDtype: dtype,
      });
      const r = await evaluateAgainstFp(model, q.weights, evalTokens);
      row.push(`${dtype} ppl ${r.perplexity.toFixed(4)} KLD ${r.kld!.toFixed(5)}`);
    }
    console.log(`${path.basename(c.model)} ${method} int${bits} ${g ? `g${g}` : 'pc'}: ${row.join(' | ')}`);
  }
}
