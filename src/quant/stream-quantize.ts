/**
 * Streaming quantization for the calibration-free methods (RTN, HQQ, SINQ): a Hugging Face
 * safetensors model is read, quantized and written one tensor at a time, so peak memory is
 * one tensor's working set, not the model (an 8B FP16 model, 16 GB on disk, stays under 4 GB:
 * bench/streaming-8b.ts).
 *
 *   1. Plan from the shard headers alone: every tensor's canonical name and shape (the
 *      architecture's renames, Conv1D transposes and fused splits applied to shape-only
 *      placeholders), tied embeddings normalized and shapes checked as `loadModel` does.
 *   2. The checkpoint's safetensors header is written up front: a quantized weight's stored
 *      tensors follow from its shape and grid (ptq-checkpoint.ts quantizedLayout). SINQ's
 *      column scales depend on the kurtosis gate (sinq.ts), so SINQ first reads each block
 *      linear once to evaluate the gate — the only method that reads weights twice.
 *   3. Tensors are appended in the in-memory path's order: a block linear is read (one
 *      positional read), quantized and its codes and parameters written; any other tensor is
 *      copied through in 64 MiB pieces converted to float32 (the format stores unquantized
 *      tensors as F32), so even a 128256 × 4096 embedding never sits in memory.
 *      RTN on a per-group or per-channel integer grid (the common case) never makes a float32
 *      copy of the weight: each row is decoded from F16/BF16/F32 straight into one row buffer,
 *      checked finite in the same loop and quantized and packed (rtn.ts RtnRows); its
 *      dequantization check is a proof on the scales (numerics.ts assertFiniteQuantizedParams).
 *      Other methods and grids read the weight as float32 and quantize it in memory.
 * The output is byte-identical to `quantizeModel` + `writePtqCheckpoint` of the same model
 * (test/quant/streaming.test.ts) and is written inside `writeDirectoryAtomically`.
 *
 * Memory: peak ≈ the largest block linear in its source dtype + two 64 MiB pieces, plus for
 * row-wise RTN the next weight's bytes (read while this one is quantized) and its packed codes,
 * otherwise a float32 copy, 1 byte of codes per weight and (for the grids without the proof) a
 * dequantized float32 copy; for Llama-3-8B's 14336 × 4096 MLP weights about 0.3 GB (row-wise
 * RTN, 612 MiB peak RSS measured with Node's own) to 0.7 GB.
 */
import path from 'node:path';
import { PtqError, UsageError } from '../errors.js';
import { type GridSpec, gridName, type IntGrid, makeGrid } from '../formats/grid.js';
import { decodeBf16Checked, decodeF16Checked } from '../formats/half.js';
import { type QuantizedTensor, storedBits } from '../formats/quantized-tensor.js';
import { linearWeightName } from '../formats/tensor-names.js';
import { type OutputOptions, writeDirectoryAtomically } from '../io/atomic.js';
import {
  CHECKPOINT_FILE,
  checkpointEntry,
  checkpointMetadata,
  finishCheckpointDirectory,
  quantizedLayout,
  quantizedTensorsToWrite,
  type TensorEntry,
} from '../io/ptq-checkpoint.js';
import {
  DTYPE_BYTES,
  type SafetensorsModel,
  SafetensorsWriter,
  type TensorHeader,
  toFloat32,
} from '../io/safetensors.js';
import { blockLinears } from '../model/architecture.js';
import type { ModelConfig } from '../model/config.js';
import { type LazyModel, type LoadOptions, openModelLazily } from '../model/load.js';
import { CanonicalReader, type Planned, planCanonical } from '../model/weight-source.js';
import type { Tensor } from '../tensor.js';
import { getMethod, METHODS, methodGridSpec } from './methods/index.js';
import { methodOptions } from './methods/method.js';
import { RtnRows } from './methods/rtn.js';
import {
  assertFiniteQuantizedParams,
  assertFiniteWeights,
  firstNonFinite,
  nonFiniteWeight,
} from './numerics.js';
import { untiedHfConfig } from './rotate.js';

/** The methods that stream: calibration-free, from each weight alone (their records' `quantizeWeight`). */
export const STREAMING_METHODS = Object.values(METHODS)
  .filter((m) => m.quantizeWeight)
  .map((m) => m.name);

export interface StreamQuantizeOptions extends OutputOptions {
  /** A calibration-free method (its record has `quantizeWeight`). */
  method: string;
  grid: GridSpec;
  /** The method's own options (defaults for those not given). */
  methodOptions?: Record<string, unknown>;
  /** Tokenizer file instead of the model's own (load.ts LoadOptions). */
  tokenizer?: LoadOptions['tokenizer'];
  onProgress?: (p: { layer: number; layers: number }) => void;
  /** Bytes per piece when copying unquantized tensors (tests use small pieces to cross boundaries). */
  copyPieceBytes?: number;
}

export interface StreamQuantizeResult {
  config: ModelConfig;
  hfConfig: Record<string, unknown>;
  settings: Record<string, unknown>;
  /** Bits per weight of the quantized linears, and the stored size (modelSize's accounting). */
  bitsPerWeight: number;
  totalBytes: number;
  parameters: number;
  quantizedParameters: number;
  /** Wall time of the whole run: reading, quantizing and writing. */
  seconds: number;
}

/** Bytes of source data read per piece when an unquantized tensor is copied through. */
const COPY_PIECE_BYTES = 64 * 1024 * 1024;

/** Source dtypes quantizeRtnRows decodes row by row. */
const ROW_DTYPES = new Set(['F16', 'BF16', 'F32']);

export async function streamQuantize(
  modelDir: string,
  outDir: string,
  options: StreamQuantizeOptions,
): Promise<StreamQuantizeResult> {
  const t0 = performance.now();
  const method = getMethod(options.method);
  if (!method.quantizeWeight) {
    throw new UsageError('streaming quantizes with calibration-free methods only', {
      field: 'method',
      expected: STREAMING_METHODS.join(', '),
      got: options.method,
    });
  }
  const spec = methodGridSpec(method, options.grid);
  const grid = makeGrid(spec);
  const o = methodOptions(method, options.methodOptions);
  // quantization_config exactly as quantizeModel records it (same keys, same order).
  const settings: Record<string, unknown> = { grid: spec, grid_name: gridName(spec), ...method.settings(o) };

  const model = await openModelLazily(modelDir, { tokenizer: options.tokenizer });
  // As `ptq quantize` writes it: config.json states untied embeddings explicitly when they are.
  const hfConfig = model.config.tiedEmbeddings ? model.hfConfig : untiedHfConfig(model.hfConfig);
  try {
    const plan = planTensors(model);
    // The block linears, by their layer (the progress count).
    const quantized = new Map<string, number>();
    for (let l = 0; l < model.config.numLayers; l++)
      for (const linear of blockLinears(model.config)) quantized.set(linearWeightName(l, linear), l);
    // Fail on a grid that does not fit before any work, naming the layer quantizeModel names.
    for (const linear of blockLinears(model.config)) {
      const [rows, cols] = plan.get(linearWeightName(0, linear))!.shape as [number, number];
      grid.blockShape(rows, cols, linearWeightName(0, linear));
    }
    const st = model.tensors;
    const reader = new CanonicalReader(
      { readFloat32: (n) => st.readFloat32(n), shape: (n) => st.info(n).shape },
      model.arch,
      model.config,
      model.path,
    );
    // RTN row by row from the source bytes (rtn.ts RtnRows) when the weight is stored as is.
    const rowWise = (t: Planned) =>
      method.rowWise &&
      t.passThrough &&
      RtnRows.fits(grid, grid.blockShape(t.shape[0]!, t.shape[1]!)[0]) &&
      ROW_DTYPES.has(model.tensors.info(t.source).dtype);
    const quantizeOne = (name: string, w: Tensor): QuantizedTensor =>
      method.quantizeWeight!(w, grid, o, name);
    // Methods whose weights may carry column scales (SINQ's kurtosis gate) decide each one first:
    // the header lays out every tensor before any is written.
    const columnScales = new Map<string, boolean>();
    if (method.storesColumnScales) {
      for (const name of quantized.keys()) {
        const w = await reader.read(name, plan.get(name)!);
        columnScales.set(name, method.storesColumnScales(w.data, o));
      }
    }
    const headers: TensorHeader[] = [];
    const entries: Record<string, TensorEntry> = {};
    for (const [name, t] of plan) {
      if (!quantized.has(name)) {
        headers.push({ name, dtype: 'F32', shape: t.shape });
        continue;
      }
      const [rows, cols] = t.shape as [number, number];
      const { globalScale, ...entryGrid } = spec;
      entries[name] = { rows, cols, grid: entryGrid };
      headers.push(...quantizedLayout(name, rows, cols, spec, columnScales.get(name) ?? false));
    }

    let quantizedBits = 0;
    let quantizedParameters = 0;
    let otherBytes = 0;
    let parameters = 0;
    const pieceBytes = options.copyPieceBytes ?? COPY_PIECE_BYTES;
    const remaining = Array.from({ length: model.config.numLayers }, () => blockLinears(model.config).length);
    await writeDirectoryAtomically(
      outDir,
      async (tmp) => {
        const file = path.join(tmp, CHECKPOINT_FILE);
        const writer = await SafetensorsWriter.create(file, headers, checkpointMetadata(entries));
        try {
          const order = [...plan];
          // The next row-wise RTN weight's bytes, read while the current one is quantized.
          let prefetch: { name: string; raw: Promise<Uint8Array> } | undefined;
          for (let i = 0; i < order.length; i++) {
            const [name, t] = order[i]!;
            const count = t.shape.reduce((a, b) => a * b, 1);
            parameters += count;
            if (!quantized.has(name)) {
              otherBytes += count * 4;
              if (t.passThrough) await copyAsFloat32(model.tensors, t.source, name, writer, pieceBytes);
              else await writer.write(name, checked(name, await reader.read(name, t)).data);
              continue;
            }
            let q: QuantizedTensor;
            if (rowWise(t)) {
              const raw = prefetch?.name === name ? prefetch.raw : model.tensors.readRaw(t.source);
              prefetch = undefined;
              const [nextName, next] = order[i + 1] ?? [];
              if (next && quantized.has(nextName!) && rowWise(next)) {
                prefetch = { name: nextName!, raw: model.tensors.readRaw(next.source) };
                prefetch.raw.catch(() => {}); // awaited when its turn comes; no unhandled rejection before
              }
              q = quantizeRtnRows(model.tensors.info(t.source), await raw, name, grid as IntGrid);
            } else {
              q = quantizeOne(name, checked(name, await reader.read(name, t)));
            }
            // numerics.ts: the check of quantizeModel's store(), without dequantizing.
            assertFiniteQuantizedParams(name, q);
            if (JSON.stringify(checkpointEntry(q)) !== JSON.stringify(entries[name])) {
              throw new PtqError(`internal: ${name} was quantized on another grid than the header announced`);
            }
            for (const piece of quantizedTensorsToWrite(name, q)) {
              const next = writer.next;
              if (
                next?.name !== piece.name ||
                next.dtype !== piece.dtype ||
                `${next.shape}` !== `${piece.shape}`
              ) {
                throw new PtqError(
                  `internal: ${piece.name} ${piece.dtype} [${piece.shape}] differs from the header's ${next?.name} ${next?.dtype} [${next?.shape}]`,
                );
              }
              await writer.write(piece.name, piece.data);
            }
            quantizedBits += storedBits(q);
            quantizedParameters += count;
            const layer = quantized.get(name)!;
            if (--remaining[layer]! === 0)
              options.onProgress?.({ layer: layer + 1, layers: model.config.numLayers });
          }
          await writer.finish();
        } catch (e) {
          await writer.abort();
          throw e;
        }
        await finishCheckpointDirectory(
          tmp,
          { hfConfig, tokenizerFiles: model.tokenizerFiles },
          { method: method.name, settings },
        );
      },
      { overwrite: options.overwrite, inputs: [modelDir, options.tokenizer, ...(options.inputs ?? [])] },
    );
    return {
      config: model.config,
      hfConfig,
      settings,
      bitsPerWeight: quantizedParameters ? quantizedBits / quantizedParameters : 32,
      totalBytes: Math.ceil(quantizedBits / 8) + otherBytes,
      parameters,
      quantizedParameters,
      seconds: (performance.now() - t0) / 1000,
    };
  } finally {
    await model.tensors.close();
  }
}

/** Canonical names and shapes from the shard headers (weight-source.ts planCanonical). */
function planTensors(model: LazyModel): Map<string, Planned> {
  const st = model.tensors;
  return planCanonical(st.names(), (n) => st.info(n).shape, model.arch, model.config, model.path);
}

/**
 * An unquantized tensor copied through in pieces, each converted to float32 and checked finite
 * (F16/BF16/F32 in one pass into one reused buffer, as quantizeRtnRows decodes its rows).
 */
async function copyAsFloat32(
  st: SafetensorsModel,
  source: string,
  name: string,
  writer: SafetensorsWriter,
  pieceBytes: number,
) {
  const info = st.info(source);
  const total = info.end - info.begin;
  // Whole elements per piece (at least one).
  const elementBytes = DTYPE_BYTES[info.dtype];
  const step = Math.max(elementBytes, pieceBytes - (pieceBytes % elementBytes));
  const buffer = ROW_DTYPES.has(info.dtype) ? new Float32Array(step / elementBytes) : undefined;
  const read = (at: number) => st.readRawRange(source, at, Math.min(step, total - at));
  let pending = read(0);
  for (let at = 0; at < total; at += step) {
    let raw = await pending;
    // The next piece is read while this one is converted and written.
    if (at + step < total) {
      pending = read(at + step);
      pending.catch(() => {}); // awaited in the next iteration; no unhandled rejection before
    }
    let data: Float32Array;
    let finite: boolean;
    if (buffer) {
      if (raw.byteOffset % 4 !== 0) raw = raw.slice(); // typed views need aligned offsets
      data = buffer.subarray(0, raw.length / elementBytes);
      finite = decodeChecked(raw, info.dtype, 0, data);
    } else {
      data = toFloat32(raw, info.dtype);
      finite = firstNonFinite(data) < 0;
    }
    if (!finite) {
      const i = firstNonFinite(data);
      throw nonFiniteWeight(name, info.shape, at / elementBytes + i, data[i]!);
    }
    await writer.write(name, data);
  }
}

/**
 * RTN of a [rows, cols] weight from the bytes of its source tensor (`info`: dtype, shape): each row
 * decoded into a float32 row buffer (FP16 by table lookup, BF16 by a 16-bit shift), checked
 * finite in the same loop and quantized. Same codes, parameters and errors as
 * `quantizeRtn(checked(readFloat32(source)))`: rows are processed in order and the first
 * non-finite weight (row-major) is reported before its row is used.
 */
function quantizeRtnRows(
  info: { dtype: string; shape: readonly number[] },
  raw: Uint8Array,
  name: string,
  grid: IntGrid,
): QuantizedTensor {
  const [rows, cols] = info.shape as [number, number];
  if (raw.byteOffset % 4 !== 0) raw = raw.slice(); // typed views need aligned offsets
  const q = new RtnRows(grid, rows, cols, grid.blockShape(rows, cols, name)[1]);
  const x = new Float32Array(cols);
  for (let r = 0; r < rows; r++) {
    if (!decodeChecked(raw, info.dtype, r * cols, x)) {
      const c = firstNonFinite(x);
      throw nonFiniteWeight(name, [rows, cols], r * cols + c, x[c]!);
    }
    q.row(r, x);
  }
  return q.result();
}

/**
 * Elements [begin, begin + dst.length) of raw F16/BF16/F32 bytes (4-byte aligned) into dst as
 * float32; false when one of them is NaN or ±Inf (half.ts: decoded and checked in one pass).
 */
function decodeChecked(raw: Uint8Array, dtype: string, begin: number, dst: Float32Array): boolean {
  if (dtype === 'F32') {
    dst.set(new Float32Array(raw.buffer, raw.byteOffset + begin * 4, dst.length));
    return firstNonFinite(dst) < 0;
  }
  const half = new Uint16Array(raw.buffer, raw.byteOffset + begin * 2, dst.length);
  return dtype === 'F16' ? decodeF16Checked(half, 0, dst) : decodeBf16Checked(half, 0, dst);
}

function checked(name: string, t: Tensor): Tensor {
  assertFiniteWeights(new Map([[name, t]]));
  return t;
}
