/**
 * Shared set-up of the outlier and LoRC quality tests: W3 quantization of the assets' real models,
 * plain and with a side correction, evaluated against FP32 (KLD, perplexity) with the bits per
 * weight that are stored.
 */
import { before, describe } from 'node:test';
import type { GridSpec } from '../../src/formats/grid.js';
import type { LoadedModel } from '../../src/model/load.js';
import type { EvalResult } from '../../src/model/perplexity.js';
import {
  type MethodName,
  modelSize,
  type QuantizeOptions,
  quantizeModel,
} from '../../src/quant/quantize-model.js';
import { assetsPresent } from '../helpers.js';
import {
  type Calibration,
  calibrationWindows,
  evaluateAgainstFp,
  intGrid,
  loadWithValidTokens,
} from './quality-setup.js';

/** Evaluation tokens (chunks of 512) and calibration windows: smaller than quality.test.ts, for time. */
export const SIDE_EVAL_TOKENS = 16 * 1024;
export const SIDE_CALIB_WINDOWS = 32;

/** The W3 grid of each model: g32 where 32 divides every input (not stories260K's 172-wide FFN). */
export const W3: Record<string, GridSpec> = {
  'tinystories-656k': intGrid(3, 32, true),
  stories260k: intGrid(3, 0, true),
};

/**
 * Plain W3 [perplexity, KLD] under this set-up (asserted by outliers.test.ts, compared against
 * by lorc.test.ts) and its stored bits/weight.
 */
export const PLAIN_W3: Record<
  string,
  Record<'rtn' | 'gptq', { measured: [number, number]; bits: number }>
> = {
  'tinystories-656k': {
    rtn: { measured: [55.2455, 0.3979], bits: 3.5 },
    gptq: { measured: [47.7568, 0.23071], bits: 3.5 },
  },
  stories260k: {
    rtn: { measured: [12.686, 1.20496], bits: 3.2119 },
    gptq: { measured: [8.2911, 0.73067], bits: 3.2119 },
  },
};

/**
 * W3 with a side correction, [perplexity, KLD] under this set-up and stored bits/weight:
 * 1% SpQR outliers (asserted by outliers.test.ts) and LoRC rank 8 (lorc.test.ts).
 */
export const SIDE_W3: Record<
  'outliers' | 'lorc',
  Record<string, Record<'rtn' | 'gptq', { measured: [number, number]; bits: number }>>
> = {
  outliers: {
    'tinystories-656k': {
      rtn: { measured: [50.0163, 0.26992], bits: 3.925 },
      gptq: { measured: [43.9955, 0.16838], bits: 3.925 },
    },
    stories260k: {
      rtn: { measured: [9.0951, 0.8524], bits: 3.7454 },
      gptq: { measured: [6.6142, 0.52041], bits: 3.7454 },
    },
  },
  lorc: {
    'tinystories-656k': {
      rtn: { measured: [51.8277, 0.30276], bits: 5.0833 },
      gptq: { measured: [44.4351, 0.17953], bits: 5.0833 },
    },
    stories260k: {
      rtn: { measured: [7.6842, 0.66473], bits: 6.4774 },
      gptq: { measured: [6.122, 0.42736], bits: 6.4774 },
    },
  },
};

/** The W4 grid of each model (README's "wider grid" the side corrections are compared with). */
export const W4: Record<string, GridSpec> = {
  'tinystories-656k': intGrid(4, 32, true),
  stories260k: intGrid(4, 0, true),
};

export const SIDE_MODELS = [
  { key: 'tinystories-656k', path: 'models/tinystories-656k' },
  { key: 'stories260k', path: 'models/stories260k/stories260K.bin' },
];

export interface SideRun {
  result: EvalResult;
  bitsPerWeight: number;
  tensors: Awaited<ReturnType<typeof quantizeModel>>['quantization']['tensors'];
}

export interface SideBench {
  model: LoadedModel;
  calibration: Calibration;
  run(method: MethodName, extra?: Partial<QuantizeOptions>, grid?: GridSpec): Promise<SideRun>;
}

/**
 * One suite per real model (skipped without the assets), its SideBench loaded once before the
 * tests `body` declares.
 */
export function describeSideModels(title: string, body: (key: string, bench: () => SideBench) => void): void {
  describe(title, { skip: !assetsPresent && 'no ../shared/assets' }, () => {
    for (const { key, path: modelPath } of SIDE_MODELS) {
      describe(key, () => {
        let bench: SideBench;
        before(async () => {
          bench = await sideBench(key, modelPath);
        });
        body(key, () => bench);
      });
    }
  });
}

/** Load `modelPath`, its validation tokens and calibration windows; `run` quantizes at W3 and evaluates. */
export async function sideBench(key: string, modelPath: string): Promise<SideBench> {
  const { model, tokens } = await loadWithValidTokens(modelPath);
  const evalTokens = tokens.slice(0, SIDE_EVAL_TOKENS);
  const calibration = calibrationWindows(tokens, SIDE_CALIB_WINDOWS);
  return {
    model,
    calibration,
    async run(method, extra = {}, grid = W3[key]!) {
      const q = await quantizeModel(model.config, model.weights, { method, grid, calibration, ...extra });
      const result = await evaluateAgainstFp(model, q.weights, evalTokens);
      const bitsPerWeight = modelSize(q.weights, q.quantization.tensors).bitsPerWeight;
      console.log(
        `  ${key} ${method} ${JSON.stringify(extra)}: ${bitsPerWeight.toFixed(4)} bits/w, ppl ${result.perplexity.toFixed(4)}, KLD ${result.kld!.toFixed(5)}`,
      );
      return { result, bitsPerWeight, tensors: q.quantization.tensors };
    },
  };
}
