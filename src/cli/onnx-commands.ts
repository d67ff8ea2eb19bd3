/**
 * `ptq quantize` and `ptq eval` when the model is an ONNX file or a transformers.js-style
 * directory (`onnx/*.onnx`); the CLI (cli/main.ts) routes here by `isOnnxModelPath`.
 *
 *   ptq quantize <model.onnx | dir> -o <dir> [--bits 4] [--block-size 32 | --group-size 32] [--asym]
 *       [--method rtn|hqq|sinq|gptq] [--dtype q4,q4f16,q8,fp16,q2,q2f16] [--include re,..] [--exclude re,..]
 *       [--accuracy-level 0..4] [--no-gather] [--calib text --nsamples n --seqlen n (gptq, LM dirs)]
 *   ptq eval <quantized.onnx> --ref <original.onnx> [--text file (LM dirs: perplexity, KLD)]
 */

import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { FileError, UsageError } from '../errors.js';
import { ONNX_DTYPES, type OnnxDtype } from '../export/onnx.js';
import { OnnxCausalLM } from '../export/onnx-session.js';
import { checkOutput } from '../io/atomic.js';
import { HfTokenizer } from '../io/hf-tokenizer.js';
import { readText } from '../io/text.js';
import type { Decoder } from '../model/decoder.js';
import { evaluate } from '../model/perplexity.js';
import { collectInputStats, decoderFeeds } from '../onnx/calibrate.js';
import { compareOnnxFiles } from '../onnx/compare.js';
import { parsePatterns } from '../onnx/graph-edit.js';
import { OnnxModel } from '../onnx/model-file.js';
import { ONNX_QUANT_DTYPES, type OnnxQuantDtype, quantizeOnnx } from '../onnx/quantize-onnx.js';
import { ONNX_METHODS, type OnnxMethod } from '../onnx/weight-only.js';
import { sampleCalibrationWindows } from '../quant/calibrate.js';
import { getMethod } from '../quant/methods/index.js';
import { optionsFromCli } from '../quant/methods/method.js';

interface Output {
  json: boolean;
  log(text: string): void;
}

export interface OnnxQuantizeArgs {
  output: string;
  /** Write into an existing output ptq did not write (io/atomic.ts). */
  overwrite?: boolean;
  method: string;
  bits: number;
  groupSize: number;
  /** MatMulNBits block size when given on the command line (else --group-size). */
  onnxBlockSize?: number;
  asym?: boolean;
  dtype?: string;
  include?: string;
  exclude?: string;
  accuracyLevel?: number;
  gather?: boolean;
  externalData?: boolean;
  calib?: string;
  nsamples: number;
  seqlen: number;
  seed: number;
  /** The methods' own options, by their command-line attribute (quant/methods: `options`). */
  [methodOption: string]: unknown;
}

const DEFAULT_DTYPE: Record<number, OnnxQuantDtype> = { 2: 'q2', 4: 'q4', 8: 'q8' };

/** The model directory of an ONNX file inside `<dir>/onnx/`, or the directory itself. */
function modelRoot(p: string): string {
  if (!p.endsWith('.onnx')) return p;
  const parent = path.dirname(p);
  return path.basename(parent) === 'onnx' ? path.dirname(parent) : parent;
}

async function readConfig(dir: string): Promise<Record<string, unknown> | undefined> {
  try {
    return JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

export async function quantizeOnnxCommand(input: string, args: OnnxQuantizeArgs, out: Output) {
  if (!(ONNX_METHODS as readonly string[]).includes(args.method))
    throw new UsageError('method not available for ONNX graphs', {
      field: 'method',
      expected: ONNX_METHODS.join(', '),
      got: args.method,
    });
  const method = args.method as OnnxMethod;
  const record = getMethod(method);
  // A model directory (or a graph in its onnx/) is one input as a whole: the output may not be
  // it, hold it or sit inside it. A bare .onnx file is an input of its own (with its data files).
  const inModelDir = !input.endsWith('.onnx') || path.basename(path.dirname(input)) === 'onnx';
  const inputs = [input, inModelDir ? modelRoot(input) : undefined, args.calib];
  await checkOutput(args.output, { kind: 'directory', inputs, overwrite: args.overwrite });
  // --dtype names the files (and their bits); --bits only picks the default dtype.
  const dtypes = (args.dtype ?? DEFAULT_DTYPE[args.bits] ?? '')
    .split(',')
    .map((d) => d.trim()) as OnnxQuantDtype[];
  for (const d of dtypes)
    if (!(d in ONNX_QUANT_DTYPES))
      throw new UsageError('unknown ONNX dtype', {
        field: 'dtype',
        expected: Object.keys(ONNX_QUANT_DTYPES).join(', '),
        got: d || `(none for --bits ${args.bits})`,
      });
  // --group-size -1 (or 0) is ptq's per-channel grid: one MatMulNBits block per row.
  const blockSize = args.onnxBlockSize ?? Math.max(0, args.groupSize);
  const filter = {
    include: parsePatterns(args.include, 'include'),
    exclude: parsePatterns(args.exclude, 'exclude'),
  };

  let hessian: ((name: string) => Float64Array | undefined) | undefined;
  // A method that quantizes from a Hessian (GPTQ) measures it on calibration text through onnxruntime.
  if (record.quantizeWithHessian) {
    if (!args.calib) throw new UsageError(`${method} needs calibration text`, { field: 'calib' });
    const root = modelRoot(input);
    const config = await readConfig(root);
    const tokenizer = await HfTokenizer.load(root, config?.bos_token_id as number | undefined);
    const tokens = tokenizer.encode(await readText(args.calib));
    const windows = sampleCalibrationWindows(tokens, {
      nsamples: args.nsamples,
      seqlen: args.seqlen,
      seed: args.seed,
    });
    const file = input.endsWith('.onnx') ? input : path.join(input, 'onnx', 'model.onnx');
    const model = await OnnxModel.read(file);
    const feeds = decoderFeeds(model, windows, args.seqlen);
    await model.close();
    const stats = await collectInputStats(file, feeds, filter);
    hessian = (name) => stats.get(name)?.H;
  }
  const report = await quantizeOnnx(input, args.output, {
    overwrite: args.overwrite,
    inputs,
    dtypes,
    blockSize,
    symmetric: !args.asym,
    method,
    accuracyLevel: args.accuracyLevel,
    gather: args.gather,
    externalData: args.externalData,
    ...filter,
    hessian,
    methodOptions: optionsFromCli(record, args),
  });
  if (out.json) return out.log(JSON.stringify(report, null, 2));
  for (const g of report.graphs) {
    const w = g.weightOnly ?? g.dynamic;
    const nodes = w ? `, ${w.quantized.length} nodes quantized, ${w.skipped.length} kept` : '';
    const bpw =
      w && w.weights > 0 ? `, ${((w.storedBytes * 8) / w.weights).toFixed(2)} bits/weight in them` : '';
    out.log(
      `${g.dtype}: ${g.file} ${(g.bytes / 2 ** 20).toFixed(2)} MiB (source ${(g.sourceBytes / 2 ** 20).toFixed(2)} MiB)${nodes}${bpw}, ${g.seconds.toFixed(1)} s`,
    );
    for (const s of w?.skipped ?? []) out.log(`  kept ${s.node} (${s.op}): ${s.reason}`);
  }
  out.log(`wrote ${report.output}`);
}

export interface OnnxEvalArgs {
  ref?: string;
  text?: string;
  ctx?: number;
  stride?: number;
  keepPartial?: boolean;
  maxTokens?: number;
  json?: boolean;
}

/** `<dir>/onnx/model<suffix>.onnx` → (dir, dtype) when the suffix is one OnnxCausalLM loads. */
function lmFile(file: string): { dir: string; dtype: OnnxDtype } | undefined {
  const base = path.basename(file, '.onnx');
  const dtype = (Object.keys(ONNX_DTYPES) as OnnxDtype[]).find(
    (d) => `model${ONNX_DTYPES[d].suffix}` === base,
  );
  return dtype && path.basename(path.dirname(file)) === 'onnx'
    ? { dir: path.dirname(path.dirname(file)), dtype }
    : undefined;
}

export async function onnxEvalCommand(file: string, args: OnnxEvalArgs, out: Output) {
  if (!file.endsWith('.onnx') || !args.ref?.endsWith('.onnx'))
    throw new UsageError('ONNX evaluation compares two .onnx files', {
      field: 'ref',
      hint: 'ptq eval <quantized.onnx> --ref <original.onnx>',
    });
  const report: Record<string, unknown> = { model: file, ref: args.ref };
  report.outputs = await compareOnnxFiles(args.ref, file);
  if (args.text) {
    const lm = lmFile(file);
    const ref = lmFile(args.ref);
    if (!lm || !ref)
      throw new FileError('perplexity needs decoder files named as transformers.js does in <dir>/onnx/', {
        file,
        hint: 'model.onnx, model_q4.onnx, ...',
      });
    const model = await OnnxCausalLM.load(lm.dir, lm.dtype, 1);
    const reference = await OnnxCausalLM.load(ref.dir, ref.dtype, 1);
    const tokenizer = await HfTokenizer.load(lm.dir, model.config.bosTokenId);
    let tokens = tokenizer.encode(await readText(args.text));
    if (args.maxTokens) tokens = tokens.slice(0, args.maxTokens);
    const ctx = args.ctx ?? Math.min(model.config.maxPositions, 2048);
    report.perplexity = await evaluate(model as unknown as Decoder, tokens, {
      protocol: { ctx, stride: args.stride ?? ctx, dropPartial: !args.keepPartial },
      reference: reference as unknown as Decoder,
    });
  }
  if (args.json) return out.log(JSON.stringify(report, null, 2));
  for (const c of report.outputs as Awaited<ReturnType<typeof compareOnnxFiles>>)
    out.log(
      `${c.name}: cosine ${c.cosine.toFixed(6)}, max |Δ| ${c.maxAbs.toExponential(3)}, mean |Δ| ${c.meanAbs.toExponential(3)} (${c.elements} values)`,
    );
  const p = report.perplexity as Awaited<ReturnType<typeof evaluate>> | undefined;
  if (p)
    out.log(
      `${p.protocol}; ${p.tokens} tokens: perplexity ${p.perplexity.toFixed(4)} (ref ${p.referencePerplexity?.toFixed(4)}), KLD ${p.kld?.toFixed(5)}, top-1 ${(100 * p.top1Agreement!).toFixed(2)}%`,
    );
}
