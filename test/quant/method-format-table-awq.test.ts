/**
 * Method × format on tinystories-656k, the AWQ and GPTQ + online-rotation rows (the other rows:
 * method-format-table.test.ts, same columns).
 */
import { methodFormatTable, TINYSTORIES_COLUMNS } from './method-format-table.js';

/** Measured (perplexity, KLD) per `model | row | column`, pinned to 1%; FP32 perplexity 36.7854. */
const MEASURED: Record<string, [number, number]> = {
  'tinystories-656k | gptq + hadamard-online | int4 g32': [39.3027, 0.05532],
  'tinystories-656k | gptq + hadamard-online | int4 g32 asym': [37.8905, 0.03808],
  'tinystories-656k | gptq + hadamard-online | int4 g128': [39.1616, 0.07299],
  'tinystories-656k | gptq + hadamard-online | nvfp4': [39.1787, 0.05523],
  'tinystories-656k | gptq + hadamard-online | mxfp4': [41.4342, 0.09073],
  'tinystories-656k | gptq + hadamard-online | fp4-e2m1 g32': [38.2471, 0.05947],
  'tinystories-656k | gptq + hadamard-online | int3 g32': [47.0579, 0.2566],
  'tinystories-656k | gptq + hadamard-online | int3 g64': [48.6946, 0.3096],
  'tinystories-656k | gptq + hadamard-online | ternary g32': [470.5178, 2.907],
  'tinystories-656k | gptq + hadamard-online | binary g32': [898.6646, 3.478],
  'tinystories-656k | awq | int4 g32': [40.4772, 0.07394],
  'tinystories-656k | awq | int4 g32 asym': [37.7194, 0.05366],
  'tinystories-656k | awq | int4 g128': [40.4424, 0.09593],
  'tinystories-656k | awq | nvfp4': [39.1338, 0.07206],
  'tinystories-656k | awq | mxfp4': [40.5881, 0.1084],
  'tinystories-656k | awq | fp4-e2m1 g32': [39.6728, 0.07281],
  'tinystories-656k | awq | int3 g32': [49.1368, 0.3168],
  'tinystories-656k | awq | int3 g64': [50.698, 0.3661],
  'tinystories-656k | awq | ternary g32': [1163.9048, 3.712],
  'tinystories-656k | awq | binary g32': [2641.7159, 4.791],
};

methodFormatTable('tinystories-656k', 'models/tinystories-656k', TINYSTORIES_COLUMNS, MEASURED, [
  'gptq + hadamard-online',
  'awq',
]);
