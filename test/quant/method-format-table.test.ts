/**
 * Method × format on tinystories-656k (method-format-table.ts): every method on int4 g32 sym/asym,
 * int4 g128, NVFP4, MXFP4, FP4 E2M1 g32, int3 g32/g64, ternary and binary g32 (the AWQ and
 * GPTQ + online-rotation rows: method-format-table-awq.test.ts).
 */

import { TINYSTORIES_PINS } from './method-format-pins.js';
import { methodFormatTable, TINYSTORIES_COLUMNS } from './method-format-table.js';

methodFormatTable('tinystories-656k', 'models/tinystories-656k', TINYSTORIES_COLUMNS, TINYSTORIES_PINS, [
  'rtn',
  'rtn + hadamard',
  'rtn + hadamard-online',
  'gptq',
  'hqq',
  'sinq',
]);
