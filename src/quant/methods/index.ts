/**
 * The method registry: every quantization method of ptqkit, one record each (method.ts), kept in
 * its own module. Adding a method = its module (algorithm + record) + one line here.
 */
import { UsageError } from '../../errors.js';
import type { GridSpec } from '../../formats/grid.js';
import { asinq } from './asinq.js';
import { awq } from './awq.js';
import { gptq } from './gptq.js';
import { hqq } from './hqq.js';
import type { QuantMethod } from './method.js';
import { rtn } from './rtn.js';
import { rtnMse } from './rtn-mse.js';
import { sinq } from './sinq.js';

export type { QuantMethod } from './method.js';

// biome-ignore lint/suspicious/noExplicitAny: each record has its own options type.
export const METHODS: Record<string, QuantMethod<any>> = {
  rtn,
  'rtn-mse': rtnMse,
  gptq,
  awq,
  hqq,
  sinq,
  asinq,
};

export const METHOD_NAMES = Object.keys(METHODS);

/** The record of `name`, or a UsageError naming the methods there are. */
// biome-ignore lint/suspicious/noExplicitAny: callers pass options through methodOptions().
export function getMethod(name: string, field = 'method'): QuantMethod<any> {
  const method = METHODS[name];
  if (!method)
    throw new UsageError('unknown method', { field, expected: METHOD_NAMES.join(', '), got: name });
  return method;
}

/** Calibrated methods need calibration text (their records have a `calibration` part). */
export const isCalibrated = (method: QuantMethod): boolean => method.calibration !== undefined;

/**
 * The grid `method` quantizes to: integer-only methods refuse number formats; some change the
 * grid itself (HQQ: always asymmetric with float zeros).
 */
export function methodGridSpec(method: QuantMethod, grid: GridSpec, field = 'format'): GridSpec {
  if (method.integerOnly && (grid.format ?? 'int') !== 'int') {
    throw new UsageError(`${method.name} quantizes to integer grids`, {
      field,
      expected: 'int',
      got: grid.format,
    });
  }
  return method.gridSpec ? method.gridSpec(grid) : grid;
}
