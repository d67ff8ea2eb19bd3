/**
 * `ptq demo`: the bundled TinyStories-656K model quantized with RTN at 8, 4 and 3 bits,
 * each evaluated against the full-precision model on the bundled text.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { GridSpec } from '../formats/grid.js';
import { gridName } from '../formats/grid.js';
import { readText } from '../io/text.js';
import { Decoder } from '../model/decoder.js';
import { loadModel } from '../model/load.js';
import { evaluate } from '../model/perplexity.js';
import { modelSize, quantizeModel } from '../quant/quantize-model.js';
import { type Output, peakRssMiB, protocolFor, type ResultRow, resultTable } from './commands.js';
import { createProgress } from './progress.js';

const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const DEMO_MODEL = path.join(PACKAGE_ROOT, 'models', 'tinystories-656k');
export const DEMO_TEXT = path.join(PACKAGE_ROOT, 'data', 'tinystories-valid-slice.txt');

export const DEMO_GRIDS: GridSpec[] = [
  { bits: 8, symmetric: true, granularity: 'channel', groupSize: 0, scaleDtype: 'f16' },
  { bits: 4, symmetric: true, granularity: 'group', groupSize: 32, scaleDtype: 'f16' },
  { bits: 3, symmetric: true, granularity: 'group', groupSize: 32, scaleDtype: 'f16' },
];

export async function demoCommand(out: Output) {
  const model = await loadModel(DEMO_MODEL);
  const tokens = model.tokenizer.encode(await readText(DEMO_TEXT));
  const protocol = protocolFor(model, {});
  const reference = new Decoder(model.config, model.weights);
  const rows: ResultRow[] = [];
  const progress = createProgress('demo:', !out.json);

  const fp = await evaluate(reference, tokens, { protocol });
  rows.push({ label: 'fp32', ...modelSize(model.weights), result: fp });
  for (const [i, grid] of DEMO_GRIDS.entries()) {
    progress.update(i, DEMO_GRIDS.length, `rtn ${gridName(grid)}`);
    const q = await quantizeModel(model.config, model.weights, { method: 'rtn', grid });
    const result = await evaluate(new Decoder(model.config, q.weights), tokens, { protocol, reference });
    rows.push({
      label: `rtn ${gridName(grid)}`,
      ...modelSize(q.weights, q.quantization.tensors),
      result,
      quantizeSeconds: q.seconds,
    });
  }
  progress.finish();

  if (out.json) {
    return out.log(
      JSON.stringify(
        { model: DEMO_MODEL, text: DEMO_TEXT, protocol: fp.protocol, rows, peakRssMiB: peakRssMiB() },
        null,
        2,
      ),
    );
  }
  out.log(
    `ptq demo: ${path.basename(DEMO_MODEL)} on ${path.basename(DEMO_TEXT)} (${tokens.length} tokens; ${fp.protocol})\n`,
  );
  out.log(resultTable(rows));
  out.log(`\nbits/w counts the quantized linear layers (codes + scales); size is the whole model as stored.`);
  out.log(
    `Next: ptq quantize ${path.relative(process.cwd(), DEMO_MODEL)} --bits 4 --group-size 32 -o out-w4 && ptq eval out-w4 --text <file> --ref <fp-model>`,
  );
}
