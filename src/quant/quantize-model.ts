/**
 * Apply a weight quantization method to every block linear of a model (the layers GPTQ,
 * AWQ and llama.cpp quantize; embeddings, norms and the LM head stay in full precision).
 *
 * Calibration-free methods quantize each layer from its weights alone. Calibrated methods
 * run the sequential protocol of calibrate.ts: block i is quantized from the inputs produced
 * by the already-quantized blocks 0..i-1. With `resume`, each finished block is saved
 * (resume.ts) and an interrupted run continues from its last finished block, byte-identically.
 */
import { type ComputeEngine, getDefaultEngine } from '../compute/index.js';
import { UsageError } from '../errors.js';
import { type GridSpec, gridName, makeGrid } from '../formats/grid.js';
import { dequantize, type QuantizedTensor, storageSize, storedBits } from '../formats/quantized-tensor.js';
import { blockPrefix, linearWeightName } from '../formats/tensor-names.js';
import type { PtqQuantization } from '../io/ptq-checkpoint.js';
import { blockLinears } from '../model/architecture.js';
import type { ModelConfig } from '../model/config.js';
import { Decoder } from '../model/decoder.js';
import { type ActivationQuantSpec, checkActivationQuant } from '../model/input-ops.js';
import type { TensorMap } from '../tensor.js';
import { type ActivationDtype, DEFAULT_ACTIVATION_DTYPE } from './activation-store.js';
import { calibrationChunk, expertTokens, runSequential, type SequentialOptions } from './calibrate.js';
import { relativeOutputError } from './layer-error.js';
import { LORC_DEFAULTS, type LorcOptions, lowRankCorrection } from './lorc.js';
import { getMethod, methodGridSpec } from './methods/index.js';
import { type GroupJob, type LayerResult, methodOptions } from './methods/method.js';
import { assertFiniteQuantized, assertFiniteWeights } from './numerics.js';
import { quantizeWithOutliers, validateSideOptions } from './outliers.js';
import { fingerprint, openResumeState, type ResumeTarget, releaseResumeLock } from './resume.js';
import { ROTATIONS, type RotateOptions, type RotationKind, rotateModel, rotateOnline } from './rotate.js';
import { inputSecondMoments } from './sensitivity.js';
import { calibrateActivations, type SmoothQuantOptions, smoothQuant } from './smoothquant.js';

/** A registered method's name (methods/index.ts). */
export type MethodName = string;

export interface Calibration {
  /** Token windows, row-major [nsamples, seqlen]. */
  windows: Int32Array;
  seqlen: number;
  /** Recorded in the output's quantization_config. */
  description: Record<string, unknown>;
}

export interface QuantizeOptions {
  method: MethodName;
  grid: GridSpec;
  /**
   * A grid per block linear (by weight name) overriding `grid` for that layer: the mixed-precision
   * allocation of allocate.ts. AWQ still searches its block scales on `grid`.
   */
  perLayerGrid?: Map<string, GridSpec>;
  calibration?: Calibration;
  /** The method's own options (its record's `options`; defaults for those not given). */
  methodOptions?: Record<string, unknown>;
  /**
   * Replace the quantized layers in `weights` itself instead of a copy of the map: the fp32
   * originals are freed as their layers are quantized (peak memory one copy of the model).
   */
  inPlace?: boolean;
  /**
   * Rotate the model before quantizing it (rotate.ts: RMSNorm gains folded, residual stream
   * and attention values rotated by randomized Hadamard transforms, QuaRot arXiv:2404.00456).
   * The returned `config` then has untied embeddings.
   */
  rotate?: RotationKind;
  rotation?: Partial<RotateOptions>;
  /** SmoothQuant (smoothquant.ts): migrate activation outliers into the weights before the method. */
  smoothquant?: Partial<SmoothQuantOptions>;
  /** Activation quantization of every block linear's input (W8A8/W4A8), recorded in the returned config. */
  activations?: ActivationQuantSpec;
  engine?: ComputeEngine;
  onProgress?: (p: { layer: number; layers: number }) => void;
  /** SpQR-style outliers: this fraction of every quantized weight kept in FP16 (outliers.ts). */
  outliers?: number;
  /** LoRC: rank of the FP16 correction U Vᵀ of each layer's quantization error (lorc.ts). */
  lorcRank?: number;
  lorc?: Partial<LorcOptions>;
  /**
   * Calibrated methods: save the state after every finished block in `resume.dir`, and with
   * `resume.resume` continue from the state found there (resume.ts). The caller removes the
   * state once the output is written.
   */
  resume?: ResumeTarget;
  /**
   * Calibrated methods: precision of the stored calibration activations (activation-store.ts),
   * default float32; the block-streamed path (stream-calibrate.ts) gives the same bytes for the same one.
   */
  activationDtype?: ActivationDtype;
}

export interface LayerReport {
  name: string;
  /** ‖WX − QX‖² / ‖WX‖² on the calibration inputs of this layer. */
  relativeError: number;
  /** AWQ: the chosen scaling exponent. */
  alpha?: number;
  /** An expert's down_proj (MoE): tokens the router picked the expert for (calibrate.ts routedTokens). */
  routedTokens?: number;
  /** ... and the calibration tokens its statistics cover: all of them, whatever the routing. */
  calibrationTokens?: number;
}

export interface QuantizedModel {
  /** The configuration of `weights`: the input's, with untied embeddings after a rotation. */
  config: ModelConfig;
  /** Weights with every quantized layer replaced by its dequantized values (and AWQ scales folded). */
  weights: TensorMap;
  quantization: PtqQuantization;
  layers: LayerReport[];
  seconds: number;
  /** With `resume.resume`: the blocks the interrupted run had finished (and this run skipped). */
  resumedBlocks?: number;
}

export async function quantizeModel(
  config: ModelConfig,
  weights: TensorMap,
  options: QuantizeOptions,
): Promise<QuantizedModel> {
  const t0 = performance.now();
  assertFiniteWeights(weights);
  // Rotation first: the method then quantizes the rotated weights (QuaRot §4 runs RTN or GPTQ on them).
  if (options.rotate !== undefined && !ROTATIONS.includes(options.rotate)) {
    throw new UsageError('unknown rotation', {
      field: 'rotate',
      expected: ROTATIONS.join(', '),
      got: String(options.rotate),
    });
  }
  const method = getMethod(options.method);
  const methodSettings = methodOptions(method, options.methodOptions);
  const refusal = method.unsupported?.({ rotate: options.rotate });
  if (refusal)
    throw new UsageError(refusal, {
      field: 'rotate',
      hint: `use --rotate hadamard with ${method.name}, or another method`,
    });
  const rotated =
    options.rotate === 'hadamard-online'
      ? rotateOnline(config, weights, { seed: options.rotation?.seed })
      : options.rotate
        ? rotateModel(config, weights, options.rotation)
        : undefined;
  if (rotated) {
    config = rotated.config;
    if (!options.inPlace) weights = rotated.weights;
    else for (const [name, t] of rotated.weights) weights.set(name, t);
  }
  const engine = options.engine ?? getDefaultEngine();
  if (options.activations) checkActivationQuant(options.activations);
  // SmoothQuant after any rotation and before the method, which quantizes the smoothed weights
  // (arXiv:2211.10438 §4); static activation maxima then come from the smoothed float model.
  const smoothed = options.smoothquant
    ? await smoothQuant(config, weights, options.calibration, options.smoothquant, engine)
    : undefined;
  if (smoothed) {
    if (!options.inPlace) weights = smoothed.weights;
    else for (const [name, t] of smoothed.weights) weights.set(name, t);
  }
  const activations =
    options.activations &&
    (await calibrateActivations(config, weights, options.activations, options.calibration, engine));
  // Integer-only methods optimize an integer grid's scales and zero points; formats have none.
  const spec = methodGridSpec(method, options.grid);
  // Any number format: the grid is the methods' plug-in (formats/grid.ts, number-formats.ts).
  const grid = makeGrid(spec);
  // Mixed precision: each layer's own grid (HQQ's made asymmetric like the base one).
  const layerGrids = new Map<string, ReturnType<typeof makeGrid>>();
  for (const [name, g] of options.perLayerGrid ?? [])
    layerGrids.set(name, makeGrid(methodGridSpec(method, g, name)));
  const gridOf = (name: string) => layerGrids.get(name) ?? grid;
  const out: TensorMap = options.inPlace ? weights : new Map(weights);
  const tensors = new Map<string, QuantizedTensor>();
  const layers: LayerReport[] = [];
  let resumedBlocks: number | undefined;
  const store = (name: string, q: QuantizedTensor) => storeQuantized(out, tensors, name, q);
  // Fail on a grid that does not fit before any work.
  for (const linear of blockLinears(config)) {
    const w = weights.get(linearWeightName(0, linear))!;
    grid.blockShape(w.shape[0]!, w.shape[1]!, linearWeightName(0, linear));
  }
  for (const [name, g] of layerGrids) {
    const w = weights.get(name);
    if (!w) throw new UsageError('per-layer grid for a layer the model does not have', { field: name });
    g.blockShape(w.shape[0]!, w.shape[1]!, name);
  }

  const settings: Record<string, unknown> = { grid: spec, grid_name: gridName(spec) };
  Object.assign(settings, validateSideOptions(options, weights, method.outlierSelection));
  // LoRC on the error of the finished layer against the weight it replaces (ZeroQuant-V2 §5).
  const compensate = lorcCompensation(options);
  if (layerGrids.size)
    settings.per_layer_grid = Object.fromEntries(
      [...options.perLayerGrid!].map(([n, g]) => [n, gridName(g)]),
    );
  if (rotated) settings.rotation = rotated.description;
  if (smoothed) settings.smoothquant = smoothed.description;
  if (activations) settings.activations = activations;
  if (method.quantizeWeight) {
    Object.assign(settings, method.settings(methodSettings));
    // Outlier scores weight column j by E[x_j²] when calibration text is given (one fp forward).
    const cal = options.outliers ? options.calibration : undefined;
    const hdiag = cal
      ? await inputSecondMoments(new Decoder(config, out, engine), Array.from(cal.windows), cal.seqlen)
      : undefined;
    for (let layer = 0; layer < config.numLayers; layer++) {
      for (const linear of blockLinears(config)) {
        const name = linearWeightName(layer, linear);
        const w = weights.get(name)!;
        const quantizeOne = (t: typeof w) => method.quantizeWeight!(t, gridOf(name), methodSettings, name);
        const q = options.outliers
          ? quantizeWithOutliers(w, gridOf(name), options.outliers, hdiag?.get(name), quantizeOne, name)
          : quantizeOne(w);
        store(name, compensate(q, w.data));
      }
      options.onProgress?.({ layer: layer + 1, layers: config.numLayers });
    }
  } else {
    const calibrated = method.calibration!;
    const cal = options.calibration;
    if (!cal)
      throw new UsageError(`${method.name} needs calibration data`, {
        field: 'calib',
        hint: 'pass --calib <text file>',
      });
    Object.assign(settings, { calibration: cal.description }, method.settings(methodSettings));
    // Resume state: restore the finished blocks exactly as the interrupted run left them.
    const resumed = options.resume
      ? await openResumeState<LayerReport>(
          options.resume,
          fingerprint(config, out, cal.windows, cal.seqlen, engine.name, settings),
          config.numLayers,
        )
      : undefined;
    if (resumed?.replacing) {
      process.emitWarning(`replacing the resume state of an earlier run in ${options.resume!.dir}`, {
        type: 'PtqWarning',
        code: 'PTQ_RESUME_REPLACED',
        detail: 'pass --resume to continue an interrupted run instead',
      });
    }
    for (const block of resumed?.blocks ?? []) {
      for (const [name, t] of block.tensors) out.set(name, t);
      for (const [name, q] of block.quantized) store(name, q);
      layers.push(...block.reports);
    }
    resumedBlocks = options.resume?.resume ? resumed!.blocks.length : undefined;
    const decoder = new Decoder(config, out, engine);
    const quantizeGroup = calibrated.start(methodSettings, engine);
    if (resumedBlocks) options.onProgress?.({ layer: resumedBlocks, layers: config.numLayers });
    // A failed run gives up its resume lock at once (an in-process caller may run again).
    await runSequential(decoder, cal.windows, cal.seqlen, {
      groups: calibrated.groups(methodSettings),
      start: resumedBlocks ? { layer: resumedBlocks, x: resumed!.activations } : undefined,
      // Everything block `layer` changed: its quantized linears, its other tensors, its reports.
      onBlockDone:
        resumed &&
        (async (layer, residual) => {
          const prefix = blockPrefix(layer);
          const inBlock = <T>(m: Map<string, T>) =>
            new Map([...m].filter(([name]) => name.startsWith(prefix)));
          const quantized = inBlock(tensors);
          const others = new Map([...inBlock(out)].filter(([name]) => !quantized.has(name)));
          const reports = layers.filter((l) => l.name.startsWith(prefix));
          const next = layer + 1 < config.numLayers ? await residual() : undefined;
          return resumed.state.commit({ layer, quantized, tensors: others, reports }, next);
        }),
      chunk: calibrationChunk(cal.seqlen),
      activations: {
        dtype: options.activationDtype ?? DEFAULT_ACTIVATION_DTYPE,
        budgetBytes: Number.POSITIVE_INFINITY,
      },
      sampleRows: calibrated.sampleRows,
      onProgress: (layer, total) => options.onProgress?.({ layer, layers: total }),
      quantizeGroup: groupQuantizer({
        config,
        weights: out,
        tensors,
        layers,
        quantizeGroup,
        grid,
        gridOf,
        engine,
        outliers: options.outliers,
        compensate,
      }),
    }).catch((e) => {
      if (options.resume) releaseResumeLock(options.resume.dir);
      throw e;
    });
  }
  if (layers.length) settings.layer_errors = Object.fromEntries(layers.map((l) => [l.name, l.relativeError]));
  return {
    config: activations ? { ...config, linearInputOps: { ...config.linearInputOps, activations } } : config,
    weights: out,
    quantization: { method: options.method, settings, tensors },
    layers,
    seconds: (performance.now() - t0) / 1000,
    ...(resumedBlocks !== undefined && { resumedBlocks }),
  };
}

/** A quantized weight kept: its codes in `tensors`, its dequantized values in `weights` (checked finite). */
export function storeQuantized(
  weights: TensorMap,
  tensors: Map<string, QuantizedTensor>,
  name: string,
  q: QuantizedTensor,
): void {
  const data = dequantize(q);
  assertFiniteQuantized(name, q, data); // numerics.ts: never a NaN/Inf in a finished quantization
  tensors.set(name, q);
  weights.set(name, { shape: [q.rows, q.cols], data });
}

/** LoRC on the error of the finished layer against the weight it replaces (ZeroQuant-V2 §5), or nothing. */
export function lorcCompensation(
  options: Pick<QuantizeOptions, 'lorcRank' | 'lorc'>,
): (q: QuantizedTensor, target: Float32Array) => QuantizedTensor {
  const lorc = { ...LORC_DEFAULTS, ...options.lorc };
  return (q, target) =>
    options.lorcRank
      ? { ...q, lowRank: lowRankCorrection(target, dequantize(q), q.rows, q.cols, options.lorcRank, lorc) }
      : q;
}

/**
 * runSequential's quantizeGroup for a calibrated method: the method's group job on `weights`
 * (the whole model, or the block resident in a streamed run), each result corrected, stored
 * and its output error reported. One function for the in-memory and streamed paths.
 */
export function groupQuantizer(
  run: Omit<GroupJob, 'layer' | 'linears' | 'stats'> & {
    tensors: Map<string, QuantizedTensor>;
    layers: LayerReport[];
    quantizeGroup: (job: GroupJob) => Promise<LayerResult[]>;
    compensate: (q: QuantizedTensor, target: Float32Array) => QuantizedTensor;
  },
): SequentialOptions['quantizeGroup'] {
  const { tensors, layers, quantizeGroup, compensate, ...job } = run;
  return async (layer, linears, stats) => {
    const results = await quantizeGroup({ ...job, layer, linears, stats });
    for (const r of results) {
      storeQuantized(job.weights, tensors, r.name, compensate(r.quantized, r.target));
      const relativeError = await relativeOutputError(
        r.target,
        job.weights.get(r.name)!.data,
        r.hessian,
        r.quantized.rows,
        r.quantized.cols,
        job.engine,
      );
      layers.push({
        name: r.name,
        relativeError,
        ...(r.alpha !== undefined && { alpha: r.alpha }),
        ...expertTokens(stats.get(linears[results.indexOf(r)]!)),
      });
    }
  };
}

/** Size accounting from what is stored: quantized tensors at their packed size, the rest as float32. */
export function modelSize(weights: TensorMap, quantized?: Map<string, QuantizedTensor>) {
  const shapes = [...weights].map(([name, t]): [string, number[]] => [name, t.shape]);
  return storageSize(shapes, (name) => {
    const q = quantized?.get(name);
    return q && storedBits(q);
  });
}
