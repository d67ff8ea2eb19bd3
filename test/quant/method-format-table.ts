/**
 * The README's method × format table at ~4 and ~3 bits (and the ternary/binary low end), shared
 * by method-format-table.test.ts (tinystories-656k) and method-format-table-260k.test.ts
 * (stories260K, per-channel grids only: its 172-wide down_proj rows tile no block of 16, 32, 64 or
 * 128): every method (RTN, GPTQ, AWQ, HQQ, SINQ, and RTN/GPTQ with a rotation) on every grid it
 * can use. Perplexity and KLD against FP32 on the first 2048 tokens of tinystories-valid-800k
 * (chunks of 512), calibration 8 × 512 tokens sampled (seed 0) from tokens 96K+; every cell
 * pinned to its measurement (1%, method-format-pins.ts), every impossible cell to its reason, and
 * README's orderings over the table (method-format-claims.ts) checked on the cells measured, with
 * the pins for the rows another file measures. (A-SINQ: asinq.test.ts.)
 */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { type FormatName, gridSpecFor } from '../../src/formats/number-formats.js';
import { Decoder } from '../../src/model/decoder.js';
import type { LoadedModel } from '../../src/model/load.js';
import { type EvalResult, evaluate } from '../../src/model/perplexity.js';
import { type MethodName, modelSize, quantizeModel } from '../../src/quant/quantize-model.js';
import type { RotationKind } from '../../src/quant/rotate.js';
import { assetsPresent } from '../helpers.js';
import { type Cell, checkClaims, tableOf } from './method-format-claims.js';
import type { TablePins } from './method-format-pins.js';
import {
  assertMeasured,
  type Calibration,
  calibrationWindows,
  loadWithValidTokens,
  PROTOCOL,
} from './quality-setup.js';

const EVAL_TOKENS = 2048;
const CALIB_WINDOWS = 8;

export interface Column {
  label: string;
  format: FormatName;
  options: Parameters<typeof gridSpecFor>[1];
}
interface Row {
  label: string;
  method: MethodName;
  rotate?: RotationKind;
}

export const int = (bits: number, groupSize: number, asym = false): Column => ({
  label: `int${bits} ${groupSize > 0 ? `g${groupSize}` : 'pc'}${asym ? ' asym' : ''}`,
  format: 'int',
  options: { bits, groupSize, asym },
});

/** tinystories-656k's columns (its rows are split over two test files). */
export const TINYSTORIES_COLUMNS: Column[] = [
  int(4, 32),
  int(4, 32, true),
  int(4, 128),
  { label: 'nvfp4', format: 'nvfp4', options: {} },
  { label: 'mxfp4', format: 'mxfp4', options: {} },
  { label: 'fp4-e2m1 g32', format: 'fp4-e2m1', options: { groupSize: 32 } },
  int(3, 32),
  int(3, 64),
  { label: 'ternary g32', format: 'ternary', options: {} },
  { label: 'binary g32', format: 'binary', options: {} },
];
const ROWS: Row[] = [
  { label: 'rtn', method: 'rtn' },
  { label: 'rtn + hadamard', method: 'rtn', rotate: 'hadamard' },
  { label: 'rtn + hadamard-online', method: 'rtn', rotate: 'hadamard-online' },
  { label: 'gptq', method: 'gptq' },
  { label: 'gptq + hadamard-online', method: 'gptq', rotate: 'hadamard-online' },
  { label: 'awq', method: 'awq' },
  { label: 'hqq', method: 'hqq' },
  { label: 'sinq', method: 'sinq' },
];
/** PTQ_TABLE_ROWS=hqq,asinq: only those rows (measuring new cells without re-running the rest). */
const onlyRows = process.env.PTQ_TABLE_ROWS?.split(',');

/** Why a cell does not exist, or undefined when it does. */
function impossible(row: Row, col: Column, columns: Column[]): string | undefined {
  if ((row.method === 'hqq' || row.method === 'sinq' || row.method === 'asinq') && col.format !== 'int')
    return `${row.method} optimizes integer scales`;
  // HQQ's grid is always asymmetric (float zeros): in the other columns it runs asymmetric.
  const asym = columns.find(
    (c) =>
      c.format === 'int' &&
      c.options.asym &&
      c.options.bits === col.options.bits &&
      c.options.groupSize === col.options.groupSize,
  );
  if (row.method === 'hqq' && col.format === 'int' && !col.options.asym && asym)
    return `always asymmetric: = ${asym.label}`;
  return undefined;
}

/** The FP32 model's logits per window, computed once for all cells. */
function cachedReference(decoder: Decoder): Decoder {
  const cache = new Map<string, Float32Array>();
  const cached = Object.create(decoder) as Decoder;
  cached.forward = async (ids: Int32Array, B: number, T: number) => {
    const key = `${B}x${T}:${ids.join(',')}`;
    let logits = cache.get(key);
    if (!logits) {
      logits = await decoder.forward(ids, B, T);
      cache.set(key, logits);
    }
    return logits;
  };
  return cached;
}

/** The table of one model: a describe with one test that measures, pins and prints every cell. */
export function methodFormatTable(
  name: string,
  modelPath: string,
  columns: Column[],
  pins: TablePins,
  /** The rows of this test file (a model's rows split across files keeps each under a minute of CPU). */
  rowLabels: string[] = ROWS.map((r) => r.label),
): void {
  const rows = ROWS.filter((r) => rowLabels.includes(r.label) && (!onlyRows || onlyRows.includes(r.label)));
  describe(`method × format on ${name}: ${rowLabels.join(', ')}`, {
    skip: !assetsPresent && 'no ../shared/assets',
  }, () => {
    let model: LoadedModel;
    let tokens: number[];
    let reference: Decoder;
    let calibration: Calibration;

    before(async () => {
      let all: number[];
      ({ model, tokens: all } = await loadWithValidTokens(modelPath));
      tokens = all.slice(0, EVAL_TOKENS);
      calibration = calibrationWindows(all, CALIB_WINDOWS);
      reference = cachedReference(new Decoder(model.config, model.weights));
      const fp = await evaluate(reference, tokens, { protocol: PROTOCOL });
      console.log(`  ${name} fp32 ppl ${fp.perplexity.toFixed(4)}`);
      // README's FP32 perplexity of these tokens, which the claims compare GPTQ's low end with.
      assert.ok(Math.abs(fp.perplexity / pins.fp32 - 1) < 1e-5, `fp32 ${fp.perplexity} vs ${pins.fp32}`);
    });

    test('every method × grid: pinned perplexity / KLD; the markdown table', async () => {
      const cells = new Map<string, (EvalResult & { bitsPerWeight: number }) | string>();
      const missing: Record<string, [number, number]> = {};
      for (const row of rows) {
        for (const col of columns) {
          const key = `${name} | ${row.label} | ${col.label}`;
          const reason = impossible(row, col, columns);
          if (reason) {
            cells.set(key, reason);
            continue;
          }
          const t0 = performance.now();
          const q = await quantizeModel(model.config, model.weights, {
            method: row.method,
            grid: gridSpecFor(col.format, col.options),
            calibration,
            rotate: row.rotate,
          });
          const r = await evaluate(new Decoder(q.config, q.weights), tokens, {
            protocol: PROTOCOL,
            reference,
          });
          const { bitsPerWeight } = modelSize(q.weights, q.quantization.tensors);
          cells.set(key, { ...r, bitsPerWeight });
          console.log(
            `  ${key.padEnd(52)} ${bitsPerWeight.toFixed(3)} b/w  ppl ${r.perplexity.toFixed(4)}  KLD ${r.kld!.toFixed(5)}  ${((performance.now() - t0) / 1000).toFixed(1)} s`,
          );
          const pinned = pins.cells[key];
          if (pinned) assertMeasured(key, r, pinned);
          else missing[key] = [Number(r.perplexity.toFixed(4)), Number(r.kld!.toPrecision(4))];
        }
      }
      // The table as the README shows it.
      const lines = [
        `| method | ${columns.map((c) => c.label).join(' | ')} |`,
        `|---|${columns.map(() => '---|').join('')}`,
      ];
      for (const row of rows) {
        const cellText = (col: Column) => {
          const c = cells.get(`${name} | ${row.label} | ${col.label}`)!;
          return typeof c === 'string' ? `— (${c})` : `${c.perplexity.toFixed(2)} / ${c.kld!.toFixed(4)}`;
        };
        lines.push(`| ${row.label} | ${columns.map(cellText).join(' | ')} |`);
      }
      const bits = columns.map((col) => {
        const c = cells.get(`${name} | rtn | ${col.label}`);
        return typeof c === 'object' ? c.bitsPerWeight.toFixed(3) : '';
      });
      lines.push(`| bits/w (rtn) | ${bits.join(' | ')} |`);
      console.log(lines.join('\n'));
      assert.deepEqual(missing, {}, `unpinned cells:\n${JSON.stringify(missing, null, 2)}`);
      // README's orderings on this run's cells; the rows of the model's other test file as pinned.
      const values = new Map<string, Cell>(
        Object.entries(pins.cells).map(([k, [perplexity, kld]]) => [k, { perplexity, kld }]),
      );
      for (const [key, c] of cells)
        if (typeof c === 'object') values.set(key, { perplexity: c.perplexity, kld: c.kld! });
      assert.deepEqual(checkClaims(tableOf(name, pins.fp32, values)), []);
    });
  });
}
