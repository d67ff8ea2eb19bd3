/** One benchmark case in its own process; prints one JSON line. */
import { BLOCK_LINEARS, linearWeightName } from '../src/model/architecture.js';
import { mulberry32 } from '../src/random.js';
import { type MethodName, quantizeModel } from '../src/quant/quantize-model.js';
import { parameterCount, syntheticConfig, syntheticWeights } from './synthetic.js';

const [method, shape] = process.argv[2]!.split('-') as [MethodName, '100M'];
const config = syntheticConfig(shape);
const weights = syntheticWeights(config);
const nsamples = 128;
const seqlen = 512;
const rand = mulberry32(7);
const windows = Int32Array.from({ length: nsamples * seqlen }, () => Math.floor(rand() * config.vocabSize));
let quantizedParameters = 0;
for (let l = 0; l < config.numLayers; l++) for (const lin of BLOCK_LINEARS) quantizedParameters += weights.get(linearWeightName(l, lin))!.data.length;

const t0 = performance.now();
await quantizeModel(config, weights, {
  method,
  grid: { bits: 4, symmetric: true, granularity: 'group', groupSize: 128, scaleDtype: 'f16' },
  calibration: method === 'rtn' ? undefined : { windows, seqlen, description: {} },
  onProgress: (p) => process.stderr.write(`  layer ${p.layer}/${p.layers} ${((performance.now() - t0) / 1000).toFixed(1)} s\n`),
});
const seconds = (performance.now() - t0) / 1000;
console.log(
  JSON.stringify({
    case: `${method}-${shape}`,
    parameters: parameterCount(weights),
    quantizedParameters,
    calibration: method === 'rtn' ? 'none' : `${nsamples} x ${seqlen}`,
    grid: 'int4 g128 sym',
    seconds,
    peakRssMiB: process.resourceUsage().maxRSS / 1024,
  }),
);
