/**
 * Method × format on stories260K (method-format-table.ts): per-channel grids only, as its FFN
 * width 172 tiles no group of 16 (NVFP4), 32 (MXFP4, g32), 64 or 128.
 */
import { type Column, int, methodFormatTable } from './method-format-table.js';

const COLUMNS: Column[] = [
  int(4, 0),
  int(4, 0, true),
  { label: 'fp4-e2m1 pc', format: 'fp4-e2m1', options: { groupSize: 0 } },
  int(3, 0),
  int(3, 0, true),
  { label: 'ternary pc', format: 'ternary', options: { groupSize: 0 } },
];

/** Measured (perplexity, KLD) per `model | row | column`, pinned to 1%; FP32 perplexity 3.8574. */
const MEASURED: Record<string, [number, number]> = {
  'stories260K.bin | rtn | int4 pc': [4.5367, 0.1538],
  'stories260K.bin | rtn | int4 pc asym': [4.3384, 0.1245],
  'stories260K.bin | rtn | fp4-e2m1 pc': [4.4737, 0.1627],
  'stories260K.bin | rtn | int3 pc': [11.8872, 1.24],
  'stories260K.bin | rtn | int3 pc asym': [10.1169, 1.009],
  'stories260K.bin | rtn | ternary pc': [387.6686, 4.731],
  'stories260K.bin | rtn + hadamard | int4 pc': [4.3915, 0.1682],
  'stories260K.bin | rtn + hadamard | int4 pc asym': [4.4521, 0.161],
  'stories260K.bin | rtn + hadamard | fp4-e2m1 pc': [4.9044, 0.2129],
  'stories260K.bin | rtn + hadamard | int3 pc': [19.4507, 1.558],
  'stories260K.bin | rtn + hadamard | int3 pc asym': [13.3078, 1.192],
  'stories260K.bin | rtn + hadamard | ternary pc': [1046.5771, 5.789],
  'stories260K.bin | rtn + hadamard-online | int4 pc': [4.5052, 0.1466],
  'stories260K.bin | rtn + hadamard-online | int4 pc asym': [4.2815, 0.1254],
  'stories260K.bin | rtn + hadamard-online | fp4-e2m1 pc': [4.5729, 0.1715],
  'stories260K.bin | rtn + hadamard-online | int3 pc': [10.1475, 1.076],
  'stories260K.bin | rtn + hadamard-online | int3 pc asym': [9.2647, 0.8765],
  'stories260K.bin | rtn + hadamard-online | ternary pc': [473.2041, 4.955],
  'stories260K.bin | gptq | int4 pc': [4.3082, 0.1029],
  'stories260K.bin | gptq | int4 pc asym': [4.1265, 0.07358],
  'stories260K.bin | gptq | fp4-e2m1 pc': [4.2732, 0.1076],
  'stories260K.bin | gptq | int3 pc': [8.3188, 0.8106],
  'stories260K.bin | gptq | int3 pc asym': [6.4329, 0.5288],
  'stories260K.bin | gptq | ternary pc': [84.7746, 3.192],
  'stories260K.bin | gptq + hadamard-online | int4 pc': [4.2375, 0.08798],
  'stories260K.bin | gptq + hadamard-online | int4 pc asym': [4.1483, 0.07415],
  'stories260K.bin | gptq + hadamard-online | fp4-e2m1 pc': [4.2561, 0.1141],
  'stories260K.bin | gptq + hadamard-online | int3 pc': [7.9241, 0.7125],
  'stories260K.bin | gptq + hadamard-online | int3 pc asym': [6.3279, 0.5331],
  'stories260K.bin | gptq + hadamard-online | ternary pc': [85.7988, 3.203],
  'stories260K.bin | awq | int4 pc': [4.2522, 0.1053],
  'stories260K.bin | awq | int4 pc asym': [4.2778, 0.08651],
  'stories260K.bin | awq | fp4-e2m1 pc': [4.3371, 0.1317],
  'stories260K.bin | awq | int3 pc': [6.8634, 0.5987],
  'stories260K.bin | awq | int3 pc asym': [6.7113, 0.5707],
  'stories260K.bin | awq | ternary pc': [396.6131, 4.774],
  'stories260K.bin | hqq | int4 pc asym': [4.3525, 0.1064],
  'stories260K.bin | hqq | int3 pc asym': [8.3134, 0.7712],
  'stories260K.bin | sinq | int4 pc': [4.3993, 0.1447],
  'stories260K.bin | sinq | int4 pc asym': [4.2118, 0.09919],
  'stories260K.bin | sinq | int3 pc': [10.1644, 1.052],
  'stories260K.bin | sinq | int3 pc asym': [7.7633, 0.7131],
};

methodFormatTable('stories260K.bin', 'models/stories260k/stories260K.bin', COLUMNS, MEASURED);
