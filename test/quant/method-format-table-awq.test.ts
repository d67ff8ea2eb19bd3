/**
 * Method × format on tinystories-656k, the AWQ and GPTQ + online-rotation rows (the other rows:
 * method-format-table.test.ts, same columns).
 */

import { TINYSTORIES_PINS } from './method-format-pins.js';
import { methodFormatTable, TINYSTORIES_COLUMNS } from './method-format-table.js';

methodFormatTable('tinystories-656k', 'models/tinystories-656k', TINYSTORIES_COLUMNS, TINYSTORIES_PINS, [
  'gptq + hadamard-online',
  'awq',
]);
