/**
 * The exporters, in `--format` order. Each record (exporter.ts `Exporter`) lives in its
 * exporter's module, next to the library function it runs.
 *
 * Adding an exporter = its module + one line below. The module provides the library function
 * (`exportX(model, output, options)` returning a report) and a record with:
 *   name         the `--format` / `--export` value
 *   description  its `--format` help line
 *   output       'file' or 'directory' (output checks, the default `--export` target:
 *                `<output><extension>` for a file, `<output>-<name>` for a directory);
 *                a file exporter also says which existing files ptq wrote (`replaceable`)
 *   options      its own `ptq export` flags (help, default), read into the options `run` gets
 *   weightOnly   refuses activation quantization, online rotations, outliers and LoRC
 *                (its library function calls weight-only.ts' assertWeightOnly at its entry)
 *   writes       the model types it writes (its library function refuses the others)
 *   check        optional: refuse bad options before any work
 *   run          calls the library function; its report is what `--json` prints
 *   summarize    the lines `ptq export` prints for that report
 */
import { UsageError } from '../errors.js';
import { COMPRESSED_TENSORS_EXPORTER } from './compressed-tensors.js';
import type { Exporter } from './exporter.js';
import { GGUF_EXPORTER } from './gguf.js';
import { GPTQ_EXPORTER } from './gptq-safetensors.js';
import { ONNX_EXPORTER } from './onnx.js';

export const EXPORTERS: readonly Exporter[] = [
  GGUF_EXPORTER,
  ONNX_EXPORTER,
  GPTQ_EXPORTER,
  COMPRESSED_TENSORS_EXPORTER,
];

export const EXPORTER_NAMES: readonly string[] = EXPORTERS.map((e) => e.name);

/** The exporter of a `--format` / `--export` value; `field` names the option in the refusal. */
export function exporterNamed(name: string, field = 'format'): Exporter {
  const exporter = EXPORTERS.find((e) => e.name === name);
  if (!exporter) {
    throw new UsageError('export format not available', {
      field,
      expected: EXPORTER_NAMES.join(', '),
      got: name,
    });
  }
  return exporter;
}
