/**
 * `ptq quantize <model.onnx | dir>`: quantize existing ONNX models into the files transformers.js
 * selects by dtype (utils/dtypes.js DEFAULT_DTYPE_SUFFIX_MAPPING):
 *
 *   dtype   file                     what
 *   q4      <name>_q4.onnx           MatMulNBits 4-bit (+ GatherBlockQuantized tables)
 *   q4f16   <name>_q4f16.onnx        q4, then the graph in float16 (scales too; inputs/outputs kept)
 *   q2      <name>_q2.onnx           MatMulNBits 2-bit
 *   q2f16   <name>_q2f16.onnx        q2 + float16
 *   q8      <name>_quantized.onnx    dynamic int8: DynamicQuantizeLinear + MatMulInteger (quantize_dynamic)
 *   fp16    <name>_fp16.onnx         float16 conversion only
 *
 * Input: one .onnx file (outputs beside each other in `<out>/onnx/`), or a model directory
 * (transformers.js layout: `onnx/*.onnx` + config/tokenizer files). Every fp32 graph of the
 * directory (a name without a dtype suffix) is quantized; the other files are copied and
 * config.json's `transformers.js_config.use_external_data_format` lists the new files written
 * with external data. The output directory is written atomically (io/atomic.ts).
 */
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { FileError, UsageError } from '../errors.js';
import { type OutputOptions, writeDirectoryAtomically } from '../io/atomic.js';
import { type DynamicQ8Report, quantizeDynamicQ8 } from './dynamic-q8.js';
import { convertToFloat16, type Fp16Report } from './fp16.js';
import { OnnxModel, resolveInside, writeOnnxModel } from './model-file.js';
import { assertWeightShapes } from './shape-infer.js';
import { quantizeWeightsToNBits, type WeightOnlyOptions, type WeightOnlyReport } from './weight-only.js';

export const ONNX_QUANT_DTYPES = {
  q4: { suffix: '_q4', bits: 4, fp16: false, description: '4-bit MatMulNBits' },
  q4f16: { suffix: '_q4f16', bits: 4, fp16: true, description: '4-bit MatMulNBits, float16 graph' },
  q2: { suffix: '_q2', bits: 2, fp16: false, description: '2-bit MatMulNBits' },
  q2f16: { suffix: '_q2f16', bits: 2, fp16: true, description: '2-bit MatMulNBits, float16 graph' },
  q8: { suffix: '_quantized', bits: 8, fp16: false, description: 'dynamic int8 (MatMulInteger)' },
  fp16: { suffix: '_fp16', bits: 0, fp16: true, description: 'float16 graph' },
} as const;
export type OnnxQuantDtype = keyof typeof ONNX_QUANT_DTYPES;

/** Every suffix transformers.js maps a dtype to: files carrying one are not fp32 sources. */
const DTYPE_SUFFIXES = [
  '_fp16',
  '_int8',
  '_uint8',
  '_quantized',
  '_q4',
  '_q4f16',
  '_bnb4',
  '_q2',
  '_q2f16',
  '_q1',
  '_q1f16',
];

export function isOnnxModelPath(p: string): boolean {
  if (p.endsWith('.onnx')) return true;
  return (
    existsSync(path.join(p, 'onnx')) &&
    !existsSync(path.join(p, 'model.safetensors')) &&
    !existsSync(path.join(p, 'model.safetensors.index.json'))
  );
}

export interface OnnxQuantizeOptions extends Omit<WeightOnlyOptions, 'bits'>, OutputOptions {
  dtypes: OnnxQuantDtype[];
  externalData?: boolean | 'auto';
  onWarning?: (m: string) => void;
  /** Called before each graph × dtype with a label. */
  onStage?: (label: string) => void;
}

export interface OnnxGraphReport {
  source: string;
  dtype: OnnxQuantDtype;
  file: string;
  bytes: number;
  sourceBytes: number;
  externalFiles: string[];
  weightOnly?: WeightOnlyReport;
  dynamic?: DynamicQ8Report;
  fp16?: Fp16Report;
  seconds: number;
}

export interface OnnxQuantizeReport {
  output: string;
  graphs: OnnxGraphReport[];
  copied: string[];
}

/** The fp32 graphs to quantize: the file itself, or `onnx/*.onnx` without a dtype suffix. */
async function sourceGraphs(input: string): Promise<{ files: string[]; root?: string }> {
  const info = await stat(input).catch(() => {
    throw new FileError('no such ONNX model or directory', { file: input });
  });
  if (info.isFile()) return { files: [input] };
  const onnxDir = path.join(input, 'onnx');
  const names = (await readdir(onnxDir).catch(() => [] as string[])).filter(
    (f) => f.endsWith('.onnx') && !DTYPE_SUFFIXES.some((s) => f.endsWith(`${s}.onnx`)),
  );
  if (names.length === 0)
    throw new FileError('no fp32 .onnx graph in the directory', {
      file: onnxDir,
      hint: 'expected onnx/model.onnx',
    });
  const files = names.sort().map((n) => path.join(onnxDir, n));
  // Each graph's real path lies inside the model directory (a symlink out of it, or to a device, is refused).
  for (const file of files) await resolveInside(input, path.relative(input, file), 'ONNX graph', { file });
  return { files, root: input };
}

/** Apply one dtype's passes to a freshly read graph. */
async function applyDtype(model: OnnxModel, dtype: OnnxQuantDtype, o: OnnxQuantizeOptions) {
  const d = ONNX_QUANT_DTYPES[dtype];
  const out: Pick<OnnxGraphReport, 'weightOnly' | 'dynamic' | 'fp16'> = {};
  // Every dtype, fp16 too: a graph onnxruntime would refuse is refused here first, naming the weight.
  assertWeightShapes(model);
  if (dtype === 'q8') out.dynamic = await quantizeDynamicQ8(model, o);
  else if (d.bits > 0) out.weightOnly = await quantizeWeightsToNBits(model, { ...o, bits: d.bits });
  if (d.fp16) out.fp16 = await convertToFloat16(model);
  return out;
}

export async function quantizeOnnx(
  input: string,
  outDir: string,
  o: OnnxQuantizeOptions,
): Promise<OnnxQuantizeReport> {
  if (o.dtypes.length === 0) throw new UsageError('no dtype to write', { field: 'dtype' });
  for (const d of o.dtypes)
    if (!(d in ONNX_QUANT_DTYPES))
      throw new UsageError('unknown ONNX dtype', {
        field: 'dtype',
        expected: Object.keys(ONNX_QUANT_DTYPES).join(', '),
        got: d,
      });
  const { files, root } = await sourceGraphs(input);
  const graphs: OnnxGraphReport[] = [];
  const copied: string[] = [];
  await writeDirectoryAtomically(
    outDir,
    async (tmp) => {
      const onnxOut = path.join(tmp, 'onnx');
      await mkdir(onnxOut);
      for (const file of files) {
        const base = path.basename(file, '.onnx');
        for (const dtype of o.dtypes) {
          o.onStage?.(`${path.basename(file)} → ${dtype}`);
          const t0 = performance.now();
          // Each dtype starts from the source graph: the passes edit the model in place.
          const model = await OnnxModel.read(file);
          try {
            const passes = await applyDtype(model, dtype, o);
            const target = path.join(onnxOut, `${base}${ONNX_QUANT_DTYPES[dtype].suffix}.onnx`);
            const written = await writeOnnxModel(model, target, { externalData: o.externalData ?? 'auto' });
            graphs.push({
              source: file,
              dtype,
              file: path.relative(tmp, target),
              bytes: written.bytes,
              sourceBytes: await graphBytes(file),
              externalFiles: written.externalFiles,
              ...passes,
              seconds: (performance.now() - t0) / 1000,
            });
          } finally {
            await model.close();
          }
        }
      }
      if (root) {
        for (const name of await readdir(root)) {
          const from = path.join(root, name);
          // Directories, FIFOs and dangling links are not model files; a regular file is copied from its
          // real path, which must lie inside the model directory (a symlink out of it is refused).
          if (name === 'onnx' || !(await stat(from).catch(() => undefined))?.isFile()) continue;
          await copyFile(await resolveInside(root, name, 'model file', { file: from }), path.join(tmp, name));
          copied.push(name);
        }
        if (copied.includes('config.json'))
          await updateConfig(path.join(tmp, 'config.json'), graphs, o.dtypes[0]!);
      }
    },
    { overwrite: o.overwrite, inputs: [input, ...(o.inputs ?? [])] },
  );
  return { output: path.resolve(outDir), graphs, copied };
}

/** .onnx bytes plus the external data files it references. */
async function graphBytes(file: string): Promise<number> {
  let bytes = (await stat(file)).size;
  const dir = path.dirname(file);
  const base = path.basename(file);
  for (const name of await readdir(dir))
    if (name.startsWith(`${base}_data`)) bytes += (await stat(path.join(dir, name))).size;
  return bytes;
}

/** transformers.js_config: the default dtype and the external data chunks of the new files. */
async function updateConfig(file: string, graphs: OnnxGraphReport[], dtype: OnnxQuantDtype) {
  const config = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
  const tjs = { ...((config['transformers.js_config'] as Record<string, unknown>) ?? {}) };
  const previous = tjs.use_external_data_format;
  const external: Record<string, unknown> =
    previous && typeof previous === 'object' ? { ...(previous as Record<string, unknown>) } : {};
  for (const g of graphs)
    if (g.externalFiles.length > 0) external[path.basename(g.file)] = g.externalFiles.length;
  if (previous !== undefined && typeof previous !== 'object' && previous) {
    // A global true/count applied to the source files: keep it for them by name.
    for (const g of graphs) external[path.basename(g.source)] ??= previous;
  }
  if (Object.keys(external).length > 0) tjs.use_external_data_format = external;
  tjs.dtype = dtype;
  config['transformers.js_config'] = tjs;
  await writeFile(file, `${JSON.stringify(config, null, 2)}\n`);
}
