/**
 * RTN — round-to-nearest: each block's scale and zero point come from its own values
 * (the grid's rule: min/max for integers, amax or mean|w| for the number formats) and every
 * weight rounds to the nearest grid point, independently.
 * The baseline every PTQ paper reports (e.g. GPTQ, Frantar et al. 2022, Table 3).
 */
import type { Tensor } from '../tensor.js';
import type { Grid } from './grid.js';
import { fromCodes, type QuantizedTensor } from './quantized-tensor.js';

export function quantizeRtn(weight: Tensor, grid: Grid, tensorName?: string): QuantizedTensor {
  const [rows, cols] = weight.shape as [number, number];
  const w = weight.data;
  grid = grid.forTensor(w);
  const [blockRows, blockCols] = grid.blockShape(rows, cols, tensorName);
  const numGroups = cols / blockCols;
  const scales = new Float32Array((rows / blockRows) * numGroups);
  const zeros = new Float32Array(scales.length);
  const codes = new Uint8Array(rows * cols);

  for (let br = 0; br < rows; br += blockRows) {
    for (let g = 0; g < numGroups; g++) {
      const c0 = g * blockCols;
      const { scale, zero } = grid.blockParams(w, cols, br, br + blockRows, c0, c0 + blockCols);
      const p = (br / blockRows) * numGroups + g;
      scales[p] = scale;
      zeros[p] = zero;
      for (let r = br; r < br + blockRows; r++) {
        for (let c = c0; c < c0 + blockCols; c++)
          codes[r * cols + c] = grid.encode(w[r * cols + c]!, scale, zero);
      }
    }
  }
  return fromCodes(rows, cols, grid.spec, codes, scales, zeros);
}
