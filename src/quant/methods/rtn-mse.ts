/**
 * RTN-MSE — round to nearest with a weighted least-squares scale search, as llama.cpp's
 * `make_qx_quants` (ggml-quants.c, rmse_type 1) chooses the scale of a block without an
 * importance matrix: for 19 candidate inverse scales iscale = (nmax + 0.1·k) / max|x|,
 * k = −9..9, the codes l_i = clamp(round(iscale·x_i), −nmax, nmax − 1) get their least-squares
 * scale d = Σ w_i x_i l_i / Σ w_i l_i² under the weights w_i = x_i², and the candidate with the
 * smallest weighted error Σ w_i (x_i − d·l_i)² (the largest d·Σ w_i x_i l_i) is kept. nmax is
 * 2^(b−1): the codes are those of a symmetric integer grid (zero point nmax). The stored scale is
 * d rounded to the grid's scale dtype; the codes stay those chosen, as llama.cpp keeps L.
 * No calibration data; symmetric integer grids only.
 */
import { UsageError } from '../../errors.js';
import { type Grid, type GridSpec, IntGrid, roundHalfEven } from '../../formats/grid.js';
import { fromCodes, type QuantizedTensor } from '../../formats/quantized-tensor.js';
import type { Tensor } from '../../tensor.js';
import type { QuantMethod } from './method.js';

/** The candidate offsets k of iscale = (nmax + 0.1·k) / max|x| (make_qx_quants: is = −9..9). */
const SEARCH_STEPS = 9;

export function quantizeRtnMse(weight: Tensor, grid: Grid, tensorName?: string): QuantizedTensor {
  if (!(grid instanceof IntGrid) || !grid.spec.symmetric)
    throw new UsageError('rtn-mse searches the scale of symmetric integer grids', {
      field: tensorName,
      expected: 'int, symmetric',
    });
  const [rows, cols] = weight.shape as [number, number];
  const [blockRows, blockCols] = grid.blockShape(rows, cols, tensorName);
  const w = weight.data;
  const nmax = (grid.maxq + 1) / 2;
  const numGroups = cols / blockCols;
  const scales = new Float32Array((rows / blockRows) * numGroups);
  const zeros = new Float32Array(scales.length).fill(nmax);
  const codes = new Uint8Array(rows * cols);
  const best = new Int8Array(blockRows * blockCols);
  const trial = new Int8Array(best.length);
  const x = new Float64Array(best.length);

  for (let br = 0, p = 0; br < rows; br += blockRows) {
    for (let c0 = 0; c0 < cols; c0 += blockCols, p++) {
      let amax = 0;
      for (let r = 0, i = 0; r < blockRows; r++)
        for (let c = 0; c < blockCols; c++, i++) {
          x[i] = w[(br + r) * cols + c0 + c]!;
          amax = Math.max(amax, Math.abs(x[i]!));
        }
      let d = 0;
      if (amax > 0) {
        let bestGain = -1;
        for (let k = -SEARCH_STEPS; k <= SEARCH_STEPS; k++) {
          const iscale = (nmax + 0.1 * k) / amax;
          let sumlx = 0;
          let suml2 = 0;
          for (let i = 0; i < x.length; i++) {
            const l = Math.min(nmax - 1, Math.max(-nmax, roundHalfEven(iscale * x[i]!)));
            trial[i] = l;
            const wi = x[i]! * x[i]!;
            sumlx += wi * x[i]! * l;
            suml2 += wi * l * l;
          }
          // Σw(x − d·l)² = Σwx² − d·Σwxl at the least-squares d: the largest d·Σwxl wins.
          if (suml2 > 0 && (sumlx * sumlx) / suml2 > bestGain) {
            bestGain = (sumlx * sumlx) / suml2;
            d = sumlx / suml2;
            best.set(trial);
          }
        }
      }
      // An all-zero block (or one below the scale dtype's resolution): RTN's parameters, codes at zero.
      const stored = grid.roundParam(d);
      if (!(stored > 0)) {
        scales[p] = grid.params(0, 0).scale;
        best.fill(0);
      } else scales[p] = stored;
      for (let r = 0, i = 0; r < blockRows; r++)
        for (let c = 0; c < blockCols; c++, i++) codes[(br + r) * cols + c0 + c] = best[i]! + nmax;
    }
  }
  return fromCodes(rows, cols, grid.spec, codes, scales, zeros);
}

export const rtnMse: QuantMethod<Record<string, never>> = {
  name: 'rtn-mse',
  description:
    "RTN with llama.cpp's weighted least-squares scale search per block (make_qx_quants; no data; symmetric int grids)",
  defaults: {},
  options: [],
  integerOnly: true,
  gridSpec(spec: GridSpec): GridSpec {
    if (!spec.symmetric)
      throw new UsageError('rtn-mse searches the scale of symmetric integer grids', {
        field: 'asym',
        hint: 'drop --asym, or use rtn or hqq',
      });
    return spec;
  },
  settings: () => ({}),
  outlierSelection: 'before quantization, leave-one-out error weighted by E[x_j^2] (1 without calibration)',
  quantizeWeight: (weight, grid, _options, name) => quantizeRtnMse(weight, grid, name),
};
