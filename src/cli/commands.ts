/**
 * The work behind each `ptq` command, separate from argument parsing so that tests and the
 * library API call the same code. Commands print a table, or one JSON object with --json.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { UsageError } from '../errors.js';
import { type CompareResults, runCompare } from '../eval/compare.js';
import { renderReport } from '../eval/report.js';
import type { Exporter, SummaryText } from '../export/exporter.js';
import { exporterNamed } from '../export/registry.js';
import { type GridSpec, gridName, validateGrid } from '../formats/grid.js';
import type { FormatName } from '../formats/number-formats.js';
import { rejectSideExport } from '../formats/quantized-tensor.js';
import { checkOutput, type OutputOptions, writeDirectoryAtomically } from '../io/atomic.js';
import { writePtqCheckpoint } from '../io/ptq-checkpoint.js';
import { readText } from '../io/text.js';
import { blockLinears } from '../model/architecture.js';
import { Decoder } from '../model/decoder.js';
import { batchRows, describeExecution, type EvalModel, fitsInMemory } from '../model/eval-passes.js';
import { type ActivationQuantSpec, checkActivationQuant } from '../model/input-ops.js';
import {
  isPlainHfDirectory,
  type LoadedModel,
  loadModel,
  type OpenedModel,
  openModel,
} from '../model/load.js';
import { defaultMemoryBudget, formatBytes, parseSize } from '../model/memory.js';
import { type EvalResult, evaluate, llamaCppProtocol, type WindowProtocol } from '../model/perplexity.js';
import { emulateLlamaCpp, ggufStorage } from '../model/sources/gguf-model.js';
import { StreamedDecoder } from '../model/streamed-decoder.js';
import { float32Bytes } from '../model/weight-source.js';
import {
  type ActivationDtype,
  checkActivationDtype,
  DEFAULT_ACTIVATION_DTYPE,
} from '../quant/activation-store.js';
import { type AllocationPlan, planAllocation, presetGrids } from '../quant/allocate.js';
import {
  checkCalibrationMemory,
  checkCalibrationOptions,
  sampleCalibrationWindows,
} from '../quant/calibrate.js';
import { getMethod, isCalibrated } from '../quant/methods/index.js';
import { optionsFromCli } from '../quant/methods/method.js';
import { type Calibration, type MethodName, modelSize, quantizeModel } from '../quant/quantize-model.js';
import { acquireResumeLock, assertResumable, removeResumeState, resumeDirFor } from '../quant/resume.js';
import { type RotationKind, untiedHfConfig } from '../quant/rotate.js';
import { DEFAULT_PALETTE } from '../quant/sensitivity.js';
import {
  checkSmoothQuantOptions,
  SMOOTHQUANT_DEFAULTS,
  type SmoothQuantOptions,
} from '../quant/smoothquant.js';
import {
  calibrationActivationBytes,
  calibrationFixedBytes,
  streamCalibrate,
} from '../quant/stream-calibrate.js';
import { streamQuantize } from '../quant/stream-quantize.js';
import { createProgress } from './progress.js';
import { fmt, formatTable } from './table.js';

export interface Output {
  json: boolean;
  log(text: string): void;
}

export const consoleOutput = (json: boolean): Output => ({ json, log: (t) => console.log(t) });

/** Every writing command's output options: `--overwrite` and what the output must stay clear of. */
export interface OutputArgs {
  output: string;
  /** Write into an existing output ptq did not write (io/atomic.ts: its other files are kept). */
  overwrite?: boolean;
}

/**
 * Check `args.output` before any long work (io/atomic.ts checkOutput: not an input, not inside or
 * around one, replaces nothing ptq did not write) and return the options the writer enforces again.
 * A file output may replace a file `replaceable` says ptq wrote (an exporter's record).
 */
export async function guardOutput(
  args: OutputArgs,
  inputs: (string | undefined)[],
  kind: 'directory' | 'file' = 'directory',
  replaceable?: (file: string) => Promise<boolean>,
): Promise<OutputOptions> {
  await checkOutput(args.output, { kind, inputs, overwrite: args.overwrite, replaceable });
  return { overwrite: args.overwrite, inputs };
}

export function peakRssMiB(): number {
  return process.resourceUsage().maxRSS / 1024;
}

// ---------- inspect ----------

export async function inspectCommand(modelPath: string, opts: { tokenizer?: string }, out: Output) {
  const m = await loadModel(modelPath, opts);
  const params = [...m.weights.values()].reduce((n, t) => n + t.data.length, 0);
  const size = modelSize(m.weights, m.quantization?.tensors);
  const summary = {
    path: m.path,
    source: m.source,
    architecture: m.arch.modelType,
    config: m.config,
    parameters: params,
    bytes: size.totalBytes,
    quantization: m.quantization && {
      method: m.quantization.method,
      ...m.quantization.settings,
      bitsPerWeight: size.bitsPerWeight,
    },
    tensors: [...m.weights].map(([name, t]) => ({
      name,
      shape: t.shape,
      storage: m.quantization?.tensors.get(name) ? gridName(m.quantization.tensors.get(name)!.spec) : 'f32',
    })),
  };
  if (out.json) return out.log(JSON.stringify(summary, null, 2));
  const c = m.config;
  out.log(`${m.path} (${m.source}, ${m.arch.modelType})`);
  out.log(
    `  layers ${c.numLayers}, hidden ${c.hiddenSize}, ffn ${c.intermediateSize}, heads ${c.numHeads}/${c.numKvHeads} kv, ` +
      `head_dim ${c.headDim}, vocab ${c.vocabSize}, ctx ${c.maxPositions}, rope_theta ${c.ropeTheta}, tied ${c.tiedEmbeddings}`,
  );
  out.log(`  ${params.toLocaleString('en-US')} parameters, ${fmt.bytes(size.totalBytes)}`);
  if (summary.quantization)
    out.log(`  quantized: ${m.quantization!.method}, ${size.bitsPerWeight.toFixed(3)} bits/weight`);
  out.log(
    formatTable(
      ['tensor', 'shape', 'storage'],
      summary.tensors.map((t) => [t.name, `[${t.shape}]`, t.storage]),
    ),
  );
}

// ---------- quantize ----------

export interface QuantizeArgs extends OutputArgs {
  method: string;
  grid: GridSpec;
  tokenizer?: string;
  calib?: string;
  nsamples: number;
  seqlen: number;
  seed: number;
  rotate?: string;
  rotateSeed?: number;
  /** Exporter run right after quantizing (export/registry.ts). */
  export?: string;
  /** Where the export goes; default: `<output><extension>` for a file exporter, `<output>-<format>` otherwise. */
  exportOut?: string;
  /** Mixed precision (allocate.ts): a budget in bits/weight of the quantized linears... */
  targetBpw?: number;
  /** ...or as the whole stored model's size (`800MB`, `2.5MiB`). */
  targetSize?: string;
  /** Comma-separated palette grids (sensitivity.ts parseGridName). */
  palette?: string;
  sensitivity?: 'measured' | 'proxy';
  /** Tokens of each one-layer KLD measurement. */
  sensitivityTokens?: number;
  /** A fixed llama.cpp-like mix (allocate.ts PRESETS) instead of a budget. */
  preset?: string;
  /** SpQR outliers: fraction of every quantized weight kept in FP16 (quant/outliers.ts). */
  outliers?: number;
  /** LoRC: rank of the FP16 error correction (quant/lorc.ts). */
  lorcRank?: number;
  /** Continue an interrupted gptq/awq run from its last finished block (state in <output>.ptq-resume). */
  resume?: boolean;
  /** Calibrated methods: memory the run may use (`8GiB`); past it the run is block-streamed (stream-calibrate.ts). */
  maxMemory?: string;
  /** Calibrated methods: precision of the stored calibration activations (f32, f16, bf16). */
  calibDtype?: string;
  /** Activation bits of every block linear's input (W8A8... simulation), and their scale granularity. */
  actBits?: number;
  actGranularity?: string;
  /** SmoothQuant's α (`--smoothquant` alone: true, α = 0.5) and which inputs it smooths. */
  smoothquant?: number | true;
  smoothquantGroups?: string;
  /** The methods' own options, by their command-line attribute (quant/methods: `options`). */
  [methodOption: string]: unknown;
}

export async function quantizeCommand(modelPath: string, args: QuantizeArgs, out: Output) {
  const record = getMethod(args.method);
  const method = record.name;
  const methodOptions = optionsFromCli(record, args);
  validateGrid(args.grid);
  const exporter = args.export ? exporterNamed(args.export, 'export') : undefined;
  const exportTo = exporter && exportTarget(exporter, args.output, args.exportOut);
  // Refused before any work: weight-only formats have no x ← x·Q step (input-rotation.ts).
  if (exporter?.weightOnly && args.rotate === 'hadamard-online')
    throw new UsageError(
      `cannot export to ${args.export}: --rotate hadamard-online rotates inputs at run time`,
      {
        field: 'export',
        hint: 'drop --export, or use --rotate hadamard (absorbed into the weights)',
      },
    );
  if (exporter?.weightOnly && (args.outliers || args.lorcRank)) rejectSideExport(exporter.name);
  if (isCalibrated(record) && !args.calib) {
    throw new UsageError(`${method} needs calibration text`, {
      field: 'calib',
      hint: 'pass --calib <text file>, disjoint from the evaluation text',
    });
  }
  const { activations, smoothquant } = activationOptions(args);
  const inputs = [modelPath, args.tokenizer, args.calib];
  const output = await guardOutput(args, inputs);
  if (exporter && exportTo)
    await guardOutput(
      { ...args, output: exportTo },
      [...inputs, args.output],
      exporter.output,
      exporter.replaceable,
    );
  // Calibrated runs save their state block by block beside the output (quant/resume.ts).
  const resume = isCalibrated(record) ? { dir: resumeDirFor(args.output), resume: !!args.resume } : undefined;
  if (args.resume && !resume) {
    throw new UsageError(`nothing to resume: ${method} does not calibrate block by block`, {
      field: 'resume',
      expected: 'gptq or awq',
      got: method,
      hint: 'run without --resume',
    });
  }
  if (resume?.resume) await assertResumable(resume.dir);
  // Calibration-free and nothing model-wide: read, quantize and write one tensor at a time.
  if (record.quantizeWeight && streamable(args) && (await isPlainHfDirectory(modelPath))) {
    return streamQuantizeCommand(modelPath, args, methodOptions, output, exportTo, out);
  }
  const calibDtype = args.calibDtype === undefined ? undefined : checkActivationDtype(args.calibDtype);
  if ((args.maxMemory !== undefined || calibDtype) && !isCalibrated(record)) {
    throw new UsageError(
      `${args.maxMemory !== undefined ? '--max-memory' : '--calib-dtype'} is for calibrated methods`,
      {
        field: args.maxMemory !== undefined ? 'max-memory' : 'calib-dtype',
        hint: `${method} quantizes each weight alone and streams without calibration activations`,
      },
    );
  }
  const maxMemory =
    args.maxMemory === undefined ? defaultMemoryBudget() : parseSize(args.maxMemory, 'max-memory');
  // Calibrated and nothing model-wide: block-streamed when the model and its activations do not fit.
  if (isCalibrated(record) && streamableCalibration(args)) {
    const opened = await openModel(modelPath, { tokenizer: args.tokenizer });
    let handed = false;
    try {
      const calibration = await calibrationFor(opened, args);
      const n = calibration.windows.length / calibration.seqlen;
      const needed =
        float32Bytes(opened.weights) +
        calibrationActivationBytes(
          opened.config,
          n,
          calibration.seqlen,
          calibDtype ?? DEFAULT_ACTIVATION_DTYPE,
        ) +
        calibrationFixedBytes(opened, calibration.seqlen);
      if (needed > maxMemory) {
        if (resume?.resume)
          throw new UsageError('--resume is not available on the block-streamed path yet', {
            field: 'resume',
            got: `needs ${formatBytes(needed)} in memory, --max-memory ${formatBytes(maxMemory)}`,
            hint: 'quantize again without --resume, or raise --max-memory to run in memory',
          });
        handed = true;
        return await streamCalibrateCommand(opened, args, {
          methodOptions,
          calibration,
          calibDtype,
          maxMemory,
          output,
          exportTo,
          out,
        });
      }
    } finally {
      if (!handed) await opened.weights.close();
    }
  }
  const model = await loadModel(modelPath, { tokenizer: args.tokenizer });
  const calibration = args.calib ? await calibrationFor(model, args) : undefined;
  // One run per resume state, refused before the calibration forward passes. Taken only once the
  // model and text have loaded: a run refused for its inputs creates nothing beside -o.
  if (resume) await acquireResumeLock(resume.dir);
  const mixed = await mixedPrecisionPlan(model, args, out);
  const progress = createProgress('quantize: layer', !out.json);
  const q = await quantizeModel(model.config, model.weights, {
    method,
    grid: args.grid,
    perLayerGrid: mixed?.perLayerGrid,
    calibration,
    methodOptions,
    rotate: args.rotate as RotationKind | undefined,
    rotation: { seed: args.rotateSeed },
    outliers: args.outliers,
    lorcRank: args.lorcRank,
    resume,
    // One copy of the weights: the fp32 originals are freed as their layers are quantized
    // (a measured allocation still compares against them).
    inPlace: !mixed?.measure,
    activations,
    smoothquant,
    activationDtype: calibDtype,
    onProgress: (p) => progress.update(p.layer, p.layers),
  });
  progress.finish();
  // A rotation unties the embeddings: config.json must say so, or the loader drops lm_head.
  const hfConfig = q.config.tiedEmbeddings ? model.hfConfig : untiedHfConfig(model.hfConfig);
  await writePtqCheckpoint(args.output, { ...model, hfConfig, weights: q.weights }, q.quantization, output);
  // Only now is the state no longer needed: a kill before this line resumes to the same output.
  if (resume) await removeResumeState(resume.dir);
  const size = modelSize(q.weights, q.quantization.tensors);
  const result = {
    model: model.path,
    output: path.resolve(args.output),
    method,
    // The grid the method used (HQQ's is always asymmetric).
    grid: String(q.quantization.settings.grid_name ?? gridName(args.grid)),
    calibration: calibration?.description,
    rotation: q.quantization.settings.rotation,
    ...(activations && { activations }),
    ...(smoothquant && { smoothquant: q.quantization.settings.smoothquant }),
    bitsPerWeight: size.bitsPerWeight,
    bytes: size.totalBytes,
    seconds: q.seconds,
    ...(q.resumedBlocks !== undefined && { resumedBlocks: q.resumedBlocks }),
    peakRssMiB: peakRssMiB(),
    layers: q.layers,
    ...(mixed && {
      allocation: {
        ...mixed.report,
        // The whole quantized model's KLD next to the allocation's predicted (summed) loss.
        ...(mixed.measure && (await mixed.measure({ config: q.config, weights: q.weights }))),
        achievedBits: size.bitsPerWeight * quantizedWeightCount(q.quantization.tensors),
      },
    }),
  };
  const exportLines = await exportAfterQuantize(args, exportTo, out);
  if (out.json) return out.log(jsonWithExport(result, exportLines));
  if (mixed) printAllocation(result.allocation as MixedReport, result.allocation!.achievedBits, out);
  const rotated =
    (args.rotate ? `, ${args.rotate}-rotated` : '') +
    (smoothquant ? `, SmoothQuant α ${smoothquant.alpha ?? SMOOTHQUANT_DEFAULTS.alpha}` : '') +
    (activations ? `, activations int${activations.bits} ${activations.granularity}` : '');
  if (q.resumedBlocks !== undefined) {
    out.log(`resumed: ${q.resumedBlocks} of ${model.config.numLayers} blocks from the interrupted run`);
  }
  if (q.layers.length) {
    out.log(
      formatTable(
        ['layer', 'rel. output error', 'awq alpha'],
        q.layers.map((l) => [l.name, l.relativeError.toExponential(3), fmt.fixed(l.alpha, 2)]),
      ),
    );
  }
  out.log(
    `quantized ${model.path} with ${method} ${mixed ? `per-layer grids (others ${result.grid})` : result.grid}${rotated}: ${result.bitsPerWeight.toFixed(3)} bits/weight, ` +
      `${fmt.bytes(result.bytes)}, ${result.seconds.toFixed(2)} s -> ${result.output}`,
  );
  for (const line of exportLines) out.log(line);
}

/** --act-bits/--act-granularity and --smoothquant, validated before any work. */
function activationOptions(args: QuantizeArgs): {
  activations?: ActivationQuantSpec;
  smoothquant?: Partial<SmoothQuantOptions>;
} {
  if (args.actBits === undefined && args.actGranularity !== undefined) {
    throw new UsageError('--act-granularity needs --act-bits', {
      field: 'act-granularity',
      hint: 'pass --act-bits 8',
    });
  }
  const activations =
    args.actBits === undefined
      ? undefined
      : ({ bits: args.actBits, granularity: args.actGranularity ?? 'per-token' } as ActivationQuantSpec);
  if (activations) checkActivationQuant(activations);
  if (activations?.granularity === 'per-tensor-static' && !args.calib) {
    throw new UsageError('static activation scales are measured on calibration text', {
      field: 'calib',
      hint: 'pass --calib <text file>, or --act-granularity per-token',
    });
  }
  if (activations && args.export && exporterNamed(args.export, 'export').weightOnly) {
    throw new UsageError(
      `cannot export to ${args.export}: the format holds weights only, not activation quantization`,
      { field: 'export', hint: 'drop --export, or quantize without --act-bits' },
    );
  }
  if (args.smoothquant === undefined) {
    if (args.smoothquantGroups !== undefined)
      throw new UsageError('--smoothquant-groups needs --smoothquant', { field: 'smoothquant-groups' });
    return { activations };
  }
  const smoothquant: Partial<SmoothQuantOptions> = {
    ...(args.smoothquant !== true && { alpha: args.smoothquant }),
    ...(args.smoothquantGroups !== undefined && {
      groups: args.smoothquantGroups as SmoothQuantOptions['groups'],
    }),
  };
  checkSmoothQuantOptions({ ...SMOOTHQUANT_DEFAULTS, ...smoothquant });
  if (!args.calib) {
    throw new UsageError('SmoothQuant measures activation maxima on calibration text', {
      field: 'calib',
      hint: 'pass --calib <text file>',
    });
  }
  return { activations, smoothquant };
}

/** `--export` right after quantizing: the checkpoint just written, through the same code as `ptq export`. */
async function exportAfterQuantize(args: QuantizeArgs, exportTo: string | undefined, out: Output) {
  const lines: string[] = [];
  if (exportTo) {
    const capture = { json: out.json, log: (t: string) => lines.push(t) };
    const exportArgs = {
      format: args.export!,
      output: exportTo,
      tokenizer: args.tokenizer,
      overwrite: args.overwrite,
    };
    await exportCommand(args.output, exportArgs, capture);
  }
  return lines;
}

/** The --json result of `ptq quantize`, with the export's own JSON under `export`. */
function jsonWithExport(result: object, exportLines: string[]): string {
  const exported = exportLines.length ? { export: JSON.parse(exportLines.join('\n')) } : {};
  return JSON.stringify({ ...result, ...exported }, null, 2);
}

/** Options that need the whole model in memory (rotation, calibration, mixed precision, side corrections...). */
const WHOLE_MODEL_OPTIONS = [
  'calib',
  'rotate',
  'outliers',
  'lorcRank',
  'targetBpw',
  'targetSize',
  'preset',
  'actBits',
  'smoothquant',
] as const;

/** Whether none of `options` is set (absent, false or 0) in the parsed arguments. */
function noneSet(args: QuantizeArgs, options: readonly string[]): boolean {
  const set = args as Record<string, unknown>;
  return options.every((k) => set[k] === undefined || set[k] === false || set[k] === 0);
}

/** Whether `ptq quantize` of a calibration-free method streams (quant/stream-quantize.ts): none of the above. */
const streamable = (args: QuantizeArgs) => noneSet(args, WHOLE_MODEL_OPTIONS);

/** Whether a calibrated `ptq quantize` can run block-streamed (quant/stream-calibrate.ts): nothing model-wide. */
const streamableCalibration = (args: QuantizeArgs) => noneSet(args, STREAMED_CALIBRATION_REFUSES);

/** What block-streamed calibration does not do yet (each needs the whole model or a whole-model pass). */
const STREAMED_CALIBRATION_REFUSES = [
  'rotate',
  'targetBpw',
  'targetSize',
  'preset',
  'actBits',
  'smoothquant',
] as const;

/** `ptq quantize` of a calibrated method block by block; output byte-identical to the in-memory path. */
async function streamCalibrateCommand(
  model: OpenedModel,
  args: QuantizeArgs,
  run: {
    methodOptions: Record<string, unknown>;
    calibration: Calibration;
    calibDtype?: ActivationDtype;
    maxMemory: number;
    output: OutputOptions;
    exportTo?: string;
    out: Output;
  },
) {
  const { out } = run;
  const progress = createProgress('quantize: layer', !out.json);
  let r: Awaited<ReturnType<typeof streamCalibrate>>;
  try {
    const hfConfig = model.config.tiedEmbeddings ? model.hfConfig : untiedHfConfig(model.hfConfig);
    r = await streamCalibrate(model, args.output, {
      method: args.method,
      grid: args.grid,
      methodOptions: run.methodOptions,
      calibration: run.calibration,
      hfConfig,
      maxMemory: run.maxMemory,
      activationDtype: run.calibDtype,
      outliers: args.outliers,
      lorcRank: args.lorcRank,
      onProgress: (p) => progress.update(p.layer, p.layers),
      ...run.output,
    });
  } finally {
    await model.weights.close();
  }
  progress.finish();
  const result = {
    model: model.path,
    output: path.resolve(args.output),
    method: args.method,
    grid: String(r.settings.grid_name),
    calibration: run.calibration.description,
    streamed: true,
    bitsPerWeight: r.bitsPerWeight,
    bytes: r.totalBytes,
    seconds: r.seconds,
    memory: {
      budget: run.maxMemory,
      activationBudget: r.activationBudget,
      activationDtype: r.activations.dtype,
      chunks: r.activations.chunks,
      residentChunks: r.activations.residentChunks,
      spilledBytes: r.activations.spilledBytes,
      spillFileBytes: r.activations.spillFileBytes,
      peakWeightBytes: r.weights.peakResidentBytes,
    },
    peakRssMiB: peakRssMiB(),
    layers: r.layers,
  };
  const exportLines = await exportAfterQuantize(args, run.exportTo, out);
  if (out.json) return out.log(jsonWithExport(result, exportLines));
  out.log(
    formatTable(
      ['layer', 'rel. output error', 'awq alpha'],
      r.layers.map((l) => [l.name, l.relativeError.toExponential(3), fmt.fixed(l.alpha, 2)]),
    ),
  );
  const m = result.memory;
  out.log(
    `block-streamed: weights ${formatBytes(m.peakWeightBytes)} at most, activations ${m.activationDtype} ` +
      `${m.residentChunks}/${m.chunks} chunks in memory, ${formatBytes(m.spilledBytes)} written to the spill file; peak RSS ${result.peakRssMiB.toFixed(0)} MiB`,
  );
  out.log(
    `quantized ${model.path} with ${args.method} ${result.grid}: ${result.bitsPerWeight.toFixed(3)} bits/weight, ` +
      `${fmt.bytes(result.bytes)}, ${result.seconds.toFixed(2)} s -> ${result.output}`,
  );
  for (const line of exportLines) out.log(line);
}

/** `ptq quantize` of a Hugging Face directory, one tensor at a time; output byte-identical to the in-memory path. */
async function streamQuantizeCommand(
  modelPath: string,
  args: QuantizeArgs,
  methodOptions: Record<string, unknown>,
  output: OutputOptions,
  exportTo: string | undefined,
  out: Output,
) {
  const progress = createProgress('quantize: layer', !out.json);
  const r = await streamQuantize(modelPath, args.output, {
    method: args.method,
    grid: args.grid,
    methodOptions,
    tokenizer: args.tokenizer,
    onProgress: (p) => progress.update(p.layer, p.layers),
    ...output,
  });
  progress.finish();
  const result = {
    model: modelPath,
    output: path.resolve(args.output),
    method: args.method,
    grid: String(r.settings.grid_name),
    streamed: true,
    bitsPerWeight: r.bitsPerWeight,
    bytes: r.totalBytes,
    parameters: r.parameters,
    seconds: r.seconds,
    peakRssMiB: peakRssMiB(),
    layers: [],
  };
  const exportLines = await exportAfterQuantize(args, exportTo, out);
  if (out.json) return out.log(jsonWithExport(result, exportLines));
  out.log(
    `quantized ${modelPath} with ${args.method} ${result.grid} (streamed): ${result.bitsPerWeight.toFixed(3)} bits/weight, ` +
      `${fmt.bytes(result.bytes)}, ${result.seconds.toFixed(2)} s, peak RSS ${result.peakRssMiB.toFixed(0)} MiB -> ${result.output}`,
  );
  for (const line of exportLines) out.log(line);
}

/** Per-layer grids of --target-bpw / --target-size (budgeted allocation) or --preset; undefined without them. */
async function mixedPrecisionPlan(model: LoadedModel, args: QuantizeArgs, out: Output) {
  const budgeted = args.targetBpw !== undefined || args.targetSize !== undefined;
  if (args.targetBpw !== undefined && args.targetSize !== undefined) {
    throw new UsageError('give one budget', {
      field: 'target-bpw',
      hint: 'pass --target-bpw or --target-size, not both',
    });
  }
  if (args.preset !== undefined) {
    if (budgeted) {
      throw new UsageError('--preset is a fixed mix, not a budget', {
        field: 'preset',
        hint: 'drop --target-bpw/--target-size',
      });
    }
    const perLayerGrid = presetGrids(args.preset, model.config.numLayers, blockLinears(model.config));
    const layers = [...perLayerGrid].map(([name, g]) => ({ name, grid: gridName(g) }));
    return { perLayerGrid, report: { preset: args.preset, layers } as MixedReport };
  }
  if (!budgeted) return undefined;
  if (!args.calib) {
    throw new UsageError('a budgeted allocation measures layer sensitivity on calibration text', {
      field: 'calib',
      hint: 'pass --calib <text file>',
    });
  }
  const progress = createProgress('sensitivity: layer×grid', !out.json);
  const plan = await planAllocation(model.config, model.weights, {
    target:
      args.targetBpw !== undefined
        ? { bpw: args.targetBpw }
        : { bytes: parseSize(args.targetSize!, 'target-size') },
    palette: (args.palette ?? DEFAULT_PALETTE.join(','))
      .split(',')
      .map((g) => g.trim())
      .filter(Boolean),
    sensitivity: args.sensitivity ?? 'measured',
    tokens: model.tokenizer.encode(await readText(args.calib)),
    measureTokens: args.sensitivityTokens,
    onProgress: (done, total) => progress.update(done, total),
  });
  progress.finish();
  return { perLayerGrid: plan.perLayerGrid, report: plan.report as MixedReport, measure: plan.measure };
}

type MixedReport = Partial<AllocationPlan['report']> & {
  preset?: string;
  measuredLoss?: number;
  measuredTokens?: number;
  layers: { name: string; grid: string; bits?: number; loss?: number }[];
};

function quantizedWeightCount(tensors: Map<string, { rows: number; cols: number }>): number {
  let n = 0;
  for (const t of tensors.values()) n += t.rows * t.cols;
  return n;
}

function printAllocation(r: MixedReport, achievedBits: number, out: Output): void {
  const rows = r.layers.map((l) => [
    l.name,
    l.grid,
    String(l.bits ?? ''),
    l.loss === undefined ? '' : l.loss.toExponential(3),
  ]);
  out.log(formatTable(['layer', 'grid', 'bits', 'predicted loss'], rows));
  if (r.preset) {
    out.log(`preset ${r.preset}: ${achievedBits} bits stored`);
    return;
  }
  const rho = r.spearman === undefined ? '' : `, proxy/measured Spearman ρ ${r.spearman.toFixed(3)}`;
  out.log(
    `allocation (${r.solver}, ${r.sensitivity} sensitivity${rho}): budget ${r.budgetBits} bits, ` +
      `predicted ${r.predictedBits} bits (${r.predictedBitsPerWeight!.toFixed(3)} bits/weight), achieved ${achievedBits} bits; ` +
      `predicted loss ${r.predictedLoss!.toPrecision(4)}, measured KLD ${r.measuredLoss!.toPrecision(4)} on ${r.measuredTokens} calibration tokens`,
  );
}

/** The path `ptq quantize --export` writes to: `--export-out`, or `<output><extension>` (a file) / `<output>-<name>`. */
function exportTarget(exporter: Exporter, output: string, exportOut?: string): string {
  if (exportOut) return exportOut;
  const base = path.resolve(output);
  return exporter.output === 'file' ? `${base}${exporter.extension ?? ''}` : `${base}-${exporter.name}`;
}

/** Calibration windows from a text file; the window length is capped at the model's context. */
export async function calibrationFor(
  model: Pick<LoadedModel, 'config' | 'tokenizer'>,
  args: Pick<QuantizeArgs, 'calib' | 'nsamples' | 'seqlen' | 'seed'>,
): Promise<Calibration> {
  checkCalibrationOptions(args);
  const seqlen = Math.min(args.seqlen, model.config.maxPositions);
  const options = { nsamples: args.nsamples, seqlen, seed: args.seed };
  // The residual stream of all windows, before the text is read and anything allocated.
  checkCalibrationMemory(options, model.config.hiddenSize);
  const tokens = model.tokenizer.encode(await readText(args.calib!));
  return {
    windows: sampleCalibrationWindows(tokens, options),
    seqlen,
    description: { file: path.basename(args.calib!), ...options },
  };
}

// ---------- eval ----------

export interface EvalArgs {
  text: string;
  ctx?: number;
  stride?: number;
  keepPartial?: boolean;
  /** llama-perplexity's windows (llamaCppProtocol): second half of each ctx chunk, BOS at its start. */
  llamaCppWindows?: boolean;
  ref?: string;
  maxTokens?: number;
  tokenizer?: string;
  /** GGUF input: convert every matmul input as llama.cpp's CPU backend does (model/sources/gguf-activations.ts). */
  emulateLlamaCpp?: boolean;
  /** Memory the evaluation may use (`8GiB`); default model/memory.ts defaultMemoryBudget. Beyond it: block-streamed. */
  maxMemory?: string;
}

/**
 * The evaluation windows the options ask for. `firstToken` is the evaluated text's first token:
 * llama-perplexity writes BOS over every chunk's first token when its vocabulary adds BOS, which
 * ptqkit's tokenizer did exactly when the text's tokens start with it.
 */
export function protocolFor(
  model: Pick<LoadedModel, 'config' | 'tokenizer'>,
  args: Pick<EvalArgs, 'ctx' | 'stride' | 'keepPartial' | 'llamaCppWindows'>,
  firstToken?: number,
): WindowProtocol {
  const ctx = args.ctx ?? Math.min(model.config.maxPositions, 2048);
  if (ctx > model.config.maxPositions) {
    throw new UsageError('context longer than the model was trained for', {
      field: 'ctx',
      expected: `<= ${model.config.maxPositions}`,
      got: String(ctx),
    });
  }
  if (args.llamaCppWindows) {
    // Its windows are fixed (non-overlapping, last partial dropped): another choice is refused, not ignored.
    const other = args.stride !== undefined ? '--stride' : args.keepPartial ? '--keep-partial' : undefined;
    if (other)
      throw new UsageError(`${other} does not combine with --llama-cpp-windows`, {
        hint: "llama-perplexity's windows are non-overlapping chunks of --ctx tokens, the last partial one dropped",
      });
    const bos = model.tokenizer.bosId;
    return llamaCppProtocol(ctx, bos !== undefined && firstToken === bos ? bos : undefined);
  }
  return { ctx, stride: args.stride ?? ctx, dropPartial: !args.keepPartial };
}

export async function evalCommand(modelPath: string, args: EvalArgs, out: Output) {
  const maxMemory =
    args.maxMemory === undefined ? defaultMemoryBudget() : parseSize(args.maxMemory, 'max-memory');
  const load = { tokenizer: args.tokenizer };
  // Opened lazily first: the headers say whether the float32 weights fit the budget.
  const opened = [await openModel(modelPath, load)];
  try {
    if (args.ref) opened.push(await openModel(args.ref, load));
    const [model, ref] = opened as [OpenedModel, OpenedModel | undefined];
    if (args.emulateLlamaCpp) await emulateLlamaCpp(model);
    let tokens = model.tokenizer.encode(await readText(args.text));
    if (args.maxTokens) tokens = tokens.slice(0, args.maxTokens);
    const protocol = protocolFor(model, args, tokens[0]);
    const configs = opened.map((o) => o.config);
    const whole = fitsInMemory(
      opened.reduce((s, o) => s + float32Bytes(o.weights), 0),
      configs,
      batchRows(protocol.ctx, model.config.vocabSize),
      maxMemory,
    );
    let evaluated: { model: EvalModel; reference?: EvalModel; size: () => Promise<StoredSize> };
    if (whole) {
      for (const o of opened) await o.weights.close();
      opened.length = 0;
      const m = await loadModel(modelPath, load);
      if (args.emulateLlamaCpp) await emulateLlamaCpp(m);
      const r = args.ref ? await loadModel(args.ref, load) : undefined;
      evaluated = {
        model: new Decoder(m.config, m.weights),
        reference: r && new Decoder(r.config, r.weights),
        // A GGUF's weights load dequantized: its size is what the file stores.
        size: async () =>
          m.source === 'gguf' ? ggufStorage(m.path) : modelSize(m.weights, m.quantization?.tensors),
      };
    } else {
      evaluated = {
        model: new StreamedDecoder(model.config, model.weights),
        reference: ref && new StreamedDecoder(ref.config, ref.weights),
        size: () => model.storage(),
      };
    }
    const progress = createProgress('eval: window', !out.json);
    const result = await evaluate(evaluated.model, tokens, {
      protocol,
      reference: evaluated.reference,
      maxMemory,
      onProgress: (p) => progress.update(p.windowsDone, p.windowsTotal, `${p.tokensDone} tokens`),
    });
    progress.finish();
    const size = await evaluated.size();
    const report = {
      model: model.path,
      text: args.text,
      ...result,
      bitsPerWeight: size.bitsPerWeight,
      bytes: size.totalBytes,
      peakRssMiB: peakRssMiB(),
    };
    if (out.json) return out.log(JSON.stringify(report, null, 2));
    out.log(
      `protocol: ${result.protocol}; ${result.tokens} tokens, ${result.windows} windows, ${result.predictions} predictions`,
    );
    out.log(`memory: ${describeExecution(result.execution)}, peak RSS ${report.peakRssMiB.toFixed(0)} MiB`);
    out.log(resultTable([{ label: path.basename(model.path), ...size, result }]));
  } finally {
    for (const o of opened) await o.weights.close();
  }
}

type StoredSize = { bitsPerWeight: number; totalBytes: number };

export interface ResultRow {
  label: string;
  bitsPerWeight: number;
  totalBytes: number;
  result: EvalResult;
  quantizeSeconds?: number;
}

export function resultTable(rows: ResultRow[]): string {
  return formatTable(
    ['model', 'bits/w', 'size', 'perplexity', 'KLD', 'top-1 agree', 'quantize s', 'eval tok/s'],
    rows.map((r) => [
      r.label,
      r.bitsPerWeight.toFixed(2),
      fmt.bytes(r.totalBytes),
      r.result.perplexity.toFixed(4),
      fmt.fixed(r.result.kld, 5),
      fmt.percent(r.result.top1Agreement),
      fmt.fixed(r.quantizeSeconds, 2),
      r.result.tokensPerSecond.toFixed(0),
    ]),
  );
}

// ---------- export ----------

export interface ExportArgs extends OutputArgs {
  /** An exporter's name (export/registry.ts). */
  format: string;
  tokenizer?: string;
  // The exporters' own options (their records' `options`), by key:
  /** onnx: comma-separated dtypes (fp32, q8, q4, q2); default: the checkpoint's own width, or fp32. */
  dtype?: string;
  /** onnx: weights in .onnx_data files: 'auto' (above 1 GiB), true, false. */
  externalData?: boolean | 'auto';
  /** gguf: ggml type of the matrices, a llama-quantize mix (q4_k_m...), or 'auto'. */
  type?: string;
  /** gguf: a mix's base type for every matrix (llama-quantize --pure). */
  pure?: boolean;
}

/** `ptq export`: the exporter `--format` names (export/registry.ts), on the loaded model. */
export async function exportCommand(modelPath: string, args: ExportArgs, out: Output) {
  const exporter = exporterNamed(args.format);
  const options = exporterOptions(exporter, args);
  exporter.check?.(options);
  const output = await guardOutput(args, [modelPath, args.tokenizer], exporter.output, exporter.replaceable);
  const model = await loadModel(modelPath, { tokenizer: args.tokenizer });
  const report = await exporter.run(model, args.output, {
    ...options,
    ...output,
    onWarning: out.json ? undefined : (m) => console.error(`ptq: warning: ${m}`),
  });
  if (out.json) return out.log(JSON.stringify(report, null, 2));
  for (const line of exporter.summarize(report, model.path, SUMMARY_TEXT)) out.log(line);
}

/** What exporters' summaries print with: sizes, and one table of how many went out as each storage kind. */
const SUMMARY_TEXT: SummaryText = {
  bytes: fmt.bytes,
  counts(header, kinds) {
    const counts = new Map<string, number>();
    for (const k of kinds) counts.set(k, (counts.get(k) ?? 0) + 1);
    return formatTable(
      [header, 'storage'],
      [...counts].map(([k, n]) => [String(n), k]),
    );
  },
};

/** The given options the exporter reads (its records' `options` keys). */
function exporterOptions(exporter: Exporter, args: ExportArgs): Record<string, unknown> {
  const given = args as unknown as Record<string, unknown>;
  return Object.fromEntries(
    exporter.options.filter((o) => given[o.key] !== undefined).map((o) => [o.key, given[o.key]]),
  );
}

// ---------- compare ----------

export interface CompareArgs
  extends Pick<
      EvalArgs,
      'text' | 'ctx' | 'stride' | 'keepPartial' | 'llamaCppWindows' | 'maxTokens' | 'tokenizer'
    >,
    OutputArgs {
  methods: string[];
  bits: number[];
  formats: string[];
  groupSize: number;
  calib?: string;
  nsamples: number;
  seqlen: number;
  seed: number;
}

/** `ptq compare`: the method × format × bits grid, written as results.json + report.html. */
export async function compareCommand(
  modelPath: string,
  args: CompareArgs,
  out: Output,
): Promise<CompareResults> {
  const output = await guardOutput(args, [modelPath, args.tokenizer, args.text, args.calib]);
  const model = await loadModel(modelPath, { tokenizer: args.tokenizer });
  let tokens = model.tokenizer.encode(await readText(args.text));
  if (args.maxTokens) tokens = tokens.slice(0, args.maxTokens);
  const needsCalibration = args.methods.some((m) => isCalibrated(getMethod(m, 'methods')));
  const calibration =
    args.calib && needsCalibration ? await calibrationFor(model, { ...args, calib: args.calib }) : undefined;
  const progress = createProgress('compare: run', !out.json);
  const results = await runCompare(model, tokens, {
    methods: args.methods as MethodName[],
    bits: args.bits,
    formats: args.formats as FormatName[],
    groupSize: args.groupSize,
    protocol: protocolFor(model, args, tokens[0]),
    text: args.text,
    calibration,
    onProgress: (p) => progress.update(p.run, p.runs, p.label),
  });
  progress.finish();
  await writeDirectoryAtomically(
    args.output,
    async (dir) => {
      await writeFile(path.join(dir, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
      await writeFile(path.join(dir, 'report.html'), renderReport(results));
    },
    output,
  );
  const summary = { output: path.resolve(args.output), ...results, peakRssMiB: peakRssMiB() };
  if (out.json) {
    out.log(JSON.stringify(summary, null, 2));
    return results;
  }
  out.log(
    `ptq compare: ${path.basename(model.path)} on ${path.basename(args.text)} (${results.tokens} tokens; ${results.protocol})\n`,
  );
  out.log(compareTable(results));
  for (const s of results.skipped) out.log(`skipped ${s.method} ${s.format} ${s.bits}-bit: ${s.reason}`);
  out.log(`wrote ${path.join(summary.output, 'results.json')} and report.html`);
  return results;
}

/** The terminal table of a comparison: the fp reference, then every run. */
export function compareTable(results: CompareResults): string {
  const ref = results.reference;
  return resultTable([
    { label: 'fp32', bitsPerWeight: ref.bitsPerWeight, totalBytes: ref.bytes, result: ref.evaluation },
    ...results.runs.map((r) => ({
      label: r.label,
      bitsPerWeight: r.bitsPerWeight,
      totalBytes: r.bytes,
      result: r.evaluation,
      quantizeSeconds: r.quantizeSeconds,
    })),
  ]);
}
