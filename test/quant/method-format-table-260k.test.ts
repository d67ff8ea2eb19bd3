/**
 * Method × format on stories260K (method-format-table.ts): per-channel grids only, as its FFN
 * width 172 tiles no group of 16 (NVFP4), 32 (MXFP4, g32), 64 or 128.
 */

import { STORIES260K_PINS } from './method-format-pins.js';
import { type Column, int, methodFormatTable } from './method-format-table.js';

const COLUMNS: Column[] = [
  int(4, 0),
  int(4, 0, true),
  { label: 'fp4-e2m1 pc', format: 'fp4-e2m1', options: { groupSize: 0 } },
  int(3, 0),
  int(3, 0, true),
  { label: 'ternary pc', format: 'ternary', options: { groupSize: 0 } },
];

methodFormatTable('stories260K.bin', 'models/stories260k/stories260K.bin', COLUMNS, STORIES260K_PINS);
