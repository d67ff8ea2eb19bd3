/**
 * Block-streamed calibrated quantization (GPTQ, Frantar et al. arXiv:2210.17323; AWQ, Lin et al.
 * arXiv:2306.00978; A-SINQ): the sequential protocol of calibrate.ts on a model that is never
 * loaded whole. Weights are read block by block from where they are stored (model/weight-source.ts,
 * model/streamed-decoder.ts: safetensors shards, a ptqkit checkpoint, GGUF, llama2.c); the
 * calibration activations live in an ActivationStore (activation-store.ts) in memory up to the
 * budget and in a temporary file inside the output's temporary directory past it; each finished
 * block's stored tensors (codes, parameters, side tensors, its other tensors as float32) are
 * appended to a staging file in that directory and the block is dropped. Once every block is
 * done the checkpoint is written tensor by tensor in the order `writePtqCheckpoint` writes it:
 * unquantized tensors read one at a time from the source, block tensors copied from the staging
 * file in pieces. The whole write happens inside `writeDirectoryAtomically`: an error or a signal
 * removes the temporary directory and with it the spill and staging files.
 *
 * The quantization itself is quantizeModel's (the same runSequential, groupQuantizer and
 * settings): for the same activation precision the output is byte-identical to
 * `quantizeModel` + `writePtqCheckpoint` (test/quant/streamed-calibration.test.ts).
 *
 * Memory (bytes):
 *   weights      one block as float32 (+ AWQ's scaled copies of a group's weights) and, at the
 *                end, the largest unquantized tensor (the embedding) as float32
 *   statistics   the Hessians of one group: Σ cols² × 8 over its distinct inputs
 *                (down_proj: intermediate² × 8)
 *   work         one chunk (~4096 tokens) × (hidden + widest stage input) floats, a few times
 *   activations  min(budget left, nsamples × seqlen × (hidden + widest) × bytes per value);
 *                the rest is in the spill file
 */
import { open, rm } from 'node:fs/promises';
import path from 'node:path';
import type { ComputeEngine } from '../compute/engine.js';
import { getDefaultEngine } from '../compute/index.js';
import { PtqError, UsageError } from '../errors.js';
import { type GridSpec, gridName, makeGrid } from '../formats/grid.js';
import { type QuantizedTensor, storedBits } from '../formats/quantized-tensor.js';
import { linearWeightName } from '../formats/tensor-names.js';
import { type OutputOptions, writeDirectoryAtomically } from '../io/atomic.js';
import {
  CHECKPOINT_FILE,
  checkpointEntry,
  checkpointMetadata,
  finishCheckpointDirectory,
  quantizedTensorsToWrite,
  type TensorEntry,
} from '../io/ptq-checkpoint.js';
import { SafetensorsWriter, type TensorHeader } from '../io/safetensors.js';
import { blockLinears } from '../model/architecture.js';
import type { ModelConfig } from '../model/config.js';
import type { OpenedModel } from '../model/load.js';
import { StreamedDecoder, type StreamStats } from '../model/streamed-decoder.js';
import { blockTensorNames, float32Bytes } from '../model/weight-source.js';
import type { TensorMap } from '../tensor.js';
import { type ActivationDtype, DEFAULT_ACTIVATION_DTYPE, dtypeBytes } from './activation-store.js';
import { calibrationChunk, runSequential, type SequentialReport } from './calibrate.js';
import { getMethod, methodGridSpec } from './methods/index.js';
import { methodOptions } from './methods/method.js';
import { assertFiniteWeights } from './numerics.js';
import { validateSideOptions } from './outliers.js';
import {
  type Calibration,
  groupQuantizer,
  type LayerReport,
  lorcCompensation,
  type QuantizeOptions,
} from './quantize-model.js';

export interface StreamCalibrateOptions
  extends OutputOptions,
    Pick<QuantizeOptions, 'methodOptions' | 'outliers' | 'lorcRank' | 'lorc'> {
  /** A calibrated method (its record has `calibration`). */
  method: string;
  grid: GridSpec;
  calibration: Calibration;
  /** config.json as written (the caller unties it when needed). */
  hfConfig: Record<string, unknown>;
  /** Bytes of memory the run may use (--max-memory): what weights and work leave goes to activations. */
  maxMemory: number;
  activationDtype?: ActivationDtype;
  engine?: ComputeEngine;
  onProgress?: (p: { layer: number; layers: number }) => void;
}

export interface StreamCalibrateResult {
  config: ModelConfig;
  settings: Record<string, unknown>;
  layers: LayerReport[];
  bitsPerWeight: number;
  totalBytes: number;
  /** Activations: precision, chunks in memory and spilled bytes. */
  activations: SequentialReport;
  /** Weights: float32 bytes resident at most, blocks at once. */
  weights: StreamStats;
  /** Bytes given to the activations out of maxMemory. */
  activationBudget: number;
  seconds: number;
}

/** Bytes per piece when a staged tensor is copied into the checkpoint. */
const COPY_PIECE_BYTES = 64 * 1024 * 1024;
const STAGING_FILE = '.ptq-staging-blocks.tmp';

/**
 * Memory of a streamed calibration besides its activations (see the top of this file): two
 * float32 copies of the largest block, the Hessians of the widest group, 8 chunk-sized buffers.
 */
export function calibrationFixedBytes(
  model: Pick<OpenedModel, 'config' | 'weights'>,
  seqlen: number,
): number {
  const c = model.config;
  let block = 0;
  for (let l = 0; l < c.numLayers; l++)
    block = Math.max(block, float32Bytes(model.weights, blockTensorNames(model.weights, l)));
  const widest = Math.max(c.hiddenSize, c.numHeads * c.headDim, c.intermediateSize);
  const hessians = Math.max(c.hiddenSize ** 2, c.intermediateSize ** 2, (c.numHeads * c.headDim) ** 2) * 8;
  const chunkRows = calibrationChunk(seqlen) * seqlen;
  return 2 * block + hessians + 8 * chunkRows * (c.hiddenSize + widest) * 4;
}

/** Bytes of all the calibration activations at `dtype` (the slots of every chunk). */
export function calibrationActivationBytes(
  config: ModelConfig,
  nsamples: number,
  seqlen: number,
  dtype: ActivationDtype,
): number {
  const widest = Math.max(config.hiddenSize, config.numHeads * config.headDim, config.intermediateSize);
  const chunk = calibrationChunk(seqlen);
  return Math.ceil(nsamples / chunk) * chunk * seqlen * (config.hiddenSize + widest) * dtypeBytes(dtype);
}

export async function streamCalibrate(
  model: OpenedModel,
  outDir: string,
  options: StreamCalibrateOptions,
): Promise<StreamCalibrateResult> {
  const t0 = performance.now();
  const method = getMethod(options.method);
  if (!method.calibration) {
    throw new UsageError('block-streamed calibration runs calibrated methods only', {
      field: 'method',
      got: options.method,
    });
  }
  const { config, weights: source } = model;
  const engine = options.engine ?? getDefaultEngine();
  const o = methodOptions(method, options.methodOptions);
  const spec = methodGridSpec(method, options.grid);
  const grid = makeGrid(spec);
  const cal = options.calibration;
  // Shapes of every tensor (no data): the grid and side options are checked as quantizeModel checks them.
  const shapesOnly: TensorMap = new Map(
    [...source.shapes].map(([name, shape]) => [name, { shape: [...shape], data: new Float32Array(0) }]),
  );
  for (const linear of blockLinears(config)) {
    const [rows, cols] = source.shapes.get(linearWeightName(0, linear))!;
    grid.blockShape(rows!, cols!, linearWeightName(0, linear));
  }
  // quantization_config exactly as quantizeModel records it (same keys, same order).
  const settings: Record<string, unknown> = { grid: spec, grid_name: gridName(spec) };
  Object.assign(settings, validateSideOptions(options, shapesOnly, method.outlierSelection));
  Object.assign(settings, { calibration: cal.description }, method.settings(o));
  const dtype = options.activationDtype ?? DEFAULT_ACTIVATION_DTYPE;
  const activationBudget = Math.max(0, options.maxMemory - calibrationFixedBytes(model, cal.seqlen));

  const decoder = new StreamedDecoder(config, source, engine);
  const resident = decoder.decoder.weights;
  const tensors = new Map<string, QuantizedTensor>();
  const layers: LayerReport[] = [];
  /** Staged tensors of finished blocks: the file pieces of each canonical tensor. */
  const staged = new Map<string, { header: TensorHeader; offset: number; bytes: number }[]>();
  const entries = new Map<string, TensorEntry>();
  let quantizedBits = 0;
  let quantizedParameters = 0;
  let report: SequentialReport | undefined;

  await writeDirectoryAtomically(
    outDir,
    async (tmp) => {
      const stagingFile = path.join(tmp, STAGING_FILE);
      const staging = await open(stagingFile, 'wx+');
      let stagedBytes = 0;
      const append = async (data: ArrayBufferView) => {
        const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
        let done = 0;
        while (done < bytes.length)
          done += (await staging.write(bytes, done, bytes.length - done, stagedBytes + done)).bytesWritten;
        const offset = stagedBytes;
        stagedBytes += bytes.length;
        return offset;
      };
      try {
        report = await runSequential(decoder.decoder, cal.windows, cal.seqlen, {
          groups: method.calibration!.groups(o),
          chunk: calibrationChunk(cal.seqlen),
          sampleRows: method.calibration!.sampleRows,
          activations: { dtype, budgetBytes: activationBudget, spillDir: tmp },
          blocks: {
            embed: (ids, T) => decoder.embed(ids, T),
            load: async (layer) => {
              await decoder.loadBlock(layer);
              const names = blockTensorNames(source, layer);
              assertFiniteWeights(new Map(names.map((n) => [n, resident.get(n)!])));
            },
            finish: async (layer) => {
              // The block as it is stored: quantized linears' tensors, its other tensors as float32.
              for (const name of blockTensorNames(source, layer)) {
                const q = tensors.get(name);
                const pieces = q
                  ? quantizedTensorsToWrite(name, q)
                  : [
                      {
                        name,
                        dtype: 'F32' as const,
                        shape: resident.get(name)!.shape,
                        data: resident.get(name)!.data,
                      },
                    ];
                const list = [];
                for (const p of pieces) {
                  const offset = await append(p.data);
                  list.push({
                    header: { name: p.name, dtype: p.dtype, shape: p.shape },
                    offset,
                    bytes: p.data.byteLength,
                  });
                }
                staged.set(name, list);
                if (q) {
                  entries.set(name, checkpointEntry(q));
                  quantizedBits += storedBits(q);
                  quantizedParameters += q.rows * q.cols;
                  tensors.delete(name); // its codes are staged: not kept in memory
                }
              }
              decoder.dropBlock(layer);
            },
          },
          onProgress: (layer, total) => options.onProgress?.({ layer, layers: total }),
          quantizeGroup: groupQuantizer({
            config,
            weights: resident,
            tensors,
            layers,
            quantizeGroup: method.calibration!.start(o, engine),
            grid,
            gridOf: () => grid,
            engine,
            outliers: options.outliers,
            compensate: lorcCompensation(options),
          }),
        });
        if (layers.length)
          settings.layer_errors = Object.fromEntries(layers.map((l) => [l.name, l.relativeError]));
        // The checkpoint, in writePtqCheckpoint's order and layout.
        const headers: TensorHeader[] = [];
        const metadata: Record<string, TensorEntry> = {};
        for (const [name, shape] of source.shapes) {
          const pieces = staged.get(name);
          if (!pieces) headers.push({ name, dtype: 'F32', shape: [...shape] });
          else headers.push(...pieces.map((p) => p.header));
          const entry = entries.get(name);
          if (entry) metadata[name] = entry;
        }
        const writer = await SafetensorsWriter.create(
          path.join(tmp, CHECKPOINT_FILE),
          headers,
          checkpointMetadata(metadata),
        );
        try {
          const piece = new Uint8Array(COPY_PIECE_BYTES);
          for (const name of source.shapes.keys()) {
            const pieces = staged.get(name);
            if (!pieces) {
              const t = await source.read(name);
              assertFiniteWeights(new Map([[name, t]]));
              await writer.write(name, t.data);
              continue;
            }
            for (const p of pieces) {
              for (let at = 0; at < p.bytes; at += piece.length) {
                const n = Math.min(piece.length, p.bytes - at);
                let done = 0;
                while (done < n) {
                  const { bytesRead } = await staging.read(piece, done, n - done, p.offset + at + done);
                  if (bytesRead === 0) throw new PtqError(`internal: staging file of ${outDir} truncated`);
                  done += bytesRead;
                }
                await writer.write(p.header.name, piece.subarray(0, n));
              }
            }
          }
          await writer.finish();
        } catch (e) {
          await writer.abort();
          throw e;
        }
      } finally {
        await staging.close();
        await rm(stagingFile, { force: true });
      }
      await finishCheckpointDirectory(
        tmp,
        { hfConfig: options.hfConfig, tokenizerFiles: model.tokenizerFiles },
        { method: options.method, settings },
      );
    },
    { overwrite: options.overwrite, inputs: [model.path, ...(options.inputs ?? [])] },
  );
  const otherBytes = [...source.shapes]
    .filter(([name]) => !entries.has(name))
    .reduce((n, [, shape]) => n + shape.reduce((a, b) => a * b, 1) * 4, 0);
  return {
    config,
    settings,
    layers,
    bitsPerWeight: quantizedParameters ? quantizedBits / quantizedParameters : 32,
    totalBytes: Math.ceil(quantizedBits / 8) + otherBytes,
    activations: report!,
    weights: decoder.stats,
    activationBudget,
    seconds: (performance.now() - t0) / 1000,
  };
}
