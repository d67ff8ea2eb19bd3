/**
 * Open a model as it is shipped and normalize it: a Hugging Face directory
 * (config.json + safetensors + tokenizer.json), a llama2.c checkpoint (+ tokenizer.bin),
 * or a ptqkit quantized directory (dequantized for evaluation, codes kept for export).
 */
import { constants, existsSync } from 'node:fs';
import { open, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, FileError, FormatError, PtqError } from '../errors.js';
import { dequantize, storageSize, storedBits } from '../formats/quantized-tensor.js';
import { isTemporaryOutput } from '../io/atomic.js';
import { checkRegularFile, fileKind } from '../io/confined-path.js';
import { GGUF_MAGIC } from '../io/gguf.js';
import { HfTokenizer } from '../io/hf-tokenizer.js';
import { readJsonObjectFile } from '../io/json.js';
import { Llama2cTokenizer } from '../io/llama2c-tokenizer.js';
import {
  CHECKPOINT_FILE,
  PtqCheckpointReader,
  type PtqQuantization,
  readPtqCheckpoint,
} from '../io/ptq-checkpoint.js';
import { checkDequantized, checkPtqCheckpoint } from '../io/ptq-checkpoint-checks.js';
import { DTYPE_BYTES, SafetensorsModel, toFloat32 } from '../io/safetensors.js';
import type { TextTokenizer } from '../io/tokenizer.js';
import type { TensorMap } from '../tensor.js';
import { type Architecture, architectureFor } from './architecture.js';
import type { ModelConfig } from './config.js';
import { activationQuantOf } from './input-ops.js';
import { onlineRotationOf } from './input-rotation.js';
import { ggufStorage, openGgufModel, readGgufModel } from './sources/gguf-model.js';
import { loadLlama2cCheckpoint, openLlama2cCheckpoint } from './sources/llama2c.js';
import {
  checkShapes,
  gatherRows,
  lazyWeights,
  normalizeTiedEmbeddings,
  type RawTensors,
  type WeightSource,
} from './weight-source.js';

/** config.json is a few KiB; anything past this is not a configuration. */
const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

export type ModelSource = 'huggingface' | 'llama2c' | 'ptqkit' | 'gguf';

export interface LoadedModel {
  path: string;
  source: ModelSource;
  arch: Architecture;
  config: ModelConfig;
  /** config.json as it will be written next to derived models. */
  hfConfig: Record<string, unknown>;
  /** Float32 weights under Hugging Face names; quantized layers hold their dequantized values. */
  weights: TensorMap;
  tokenizer: TextTokenizer;
  /** Tokenizer files to copy next to derived models. */
  tokenizerFiles: string[];
  /** Present when the model was saved by `ptq quantize`. */
  quantization?: PtqQuantization;
}

export interface LoadOptions {
  /** Tokenizer file to use instead of the one found next to the model. */
  tokenizer?: string;
}

export async function loadModel(modelPath: string, options: LoadOptions = {}): Promise<LoadedModel> {
  const info = await stat(modelPath).catch(() => {
    throw new FileError('model not found', {
      file: modelPath,
      expected: 'a Hugging Face directory or a llama2.c .bin file',
    });
  });
  // An unfinished output of `ptq quantize` (see io/atomic.ts) is never a model, whatever it holds.
  if (isTemporaryOutput(modelPath)) {
    throw new FileError('an unfinished output directory of ptq quantize, not a model', {
      file: modelPath,
      hint: 'the run writing it was interrupted; quantize again',
    });
  }
  // A FIFO or device would block or never end: refused from the stat, never opened.
  if (!info.isDirectory() && !info.isFile()) {
    throw new FileError('not a model: not a regular file or directory', {
      file: modelPath,
      expected: 'a Hugging Face directory, a GGUF file or a llama2.c .bin file',
      got: fileKind(info),
    });
  }
  // The format is the file's magic, not its name: a GGUF file named .bin is still GGUF.
  const model = await (info.isDirectory()
    ? loadDirectory(modelPath, options)
    : modelPath.endsWith('.gguf') || (await startsWithGgufMagic(modelPath))
      ? loadGguf(modelPath)
      : loadLlama2c(modelPath, options));
  checkTokenizerFits(model);
  return model;
}

/** True when the file's first 4 bytes are GGUF's magic (opened non-blocking: a regular file was stat'ed). */
async function startsWithGgufMagic(file: string): Promise<boolean> {
  const handle = await open(file, constants.O_RDONLY | constants.O_NONBLOCK).catch(() => undefined);
  if (!handle) return false; // the loader reports why it cannot open it
  try {
    const head = Buffer.alloc(4);
    const { bytesRead } = await handle.read(head, 0, 4, 0);
    return bytesRead === 4 && head.readUInt32LE(0) === GGUF_MAGIC;
  } finally {
    await handle.close();
  }
}

/** Token ids the tokenizer can produce must index the embedding matrix. */
function checkTokenizerFits(m: Pick<LoadedModel, 'tokenizer' | 'config' | 'tokenizerFiles' | 'path'>): void {
  if (m.tokenizer.vocabSize > m.config.vocabSize) {
    throw new ConfigError('tokenizer has more tokens than the model embeds', {
      file: m.tokenizerFiles[0] ?? m.path,
      expected: `<= ${m.config.vocabSize} tokens (vocab_size)`,
      got: `${m.tokenizer.vocabSize}`,
    });
  }
}

async function loadDirectory(dir: string, options: LoadOptions): Promise<LoadedModel> {
  const configFile = path.join(dir, 'config.json');
  const hfConfig = await readConfig(configFile);
  const arch = architectureFor(hfConfig.model_type, configFile);
  let config = arch.parseConfig(hfConfig, configFile);
  const isPtq =
    (hfConfig.quantization_config as { quant_method?: string } | undefined)?.quant_method === 'ptqkit';

  let weights: TensorMap;
  let quantization: PtqQuantization | undefined;
  if (isPtq) {
    ({ weights, quantization } = await readCheckedPtqCheckpoint(dir));
    config = withQuantizedInputOps(config, quantization.settings, configFile);
  } else {
    weights = await readSafetensorsWeights(dir);
  }
  // Checkpoint names -> canonical names (renames, Conv1D transposes, fused splits): architecture.ts.
  weights = arch.canonicalize(weights, config, dir);
  normalizeTiedEmbeddings(weights, config, dir);
  checkShapes(weights, arch, config, dir);

  const { tokenizer, files } = await openTokenizer(dir, config, options);
  return {
    path: dir,
    source: isPtq ? 'ptqkit' : 'huggingface',
    arch,
    config,
    hfConfig,
    weights,
    tokenizer,
    tokenizerFiles: files,
    quantization,
  };
}

/**
 * What a ptqkit checkpoint's settings make part of the model: an online rotation (the saved
 * weights hold W·Q, input-rotation.ts) and its activation quantization (W8A8/W4A8 simulation):
 * `ptq eval` measures the same model.
 */
function withQuantizedInputOps(
  config: ModelConfig,
  settings: Record<string, unknown>,
  configFile: string,
): ModelConfig {
  const rotation = onlineRotationOf(settings.rotation, configFile);
  if (rotation) config = { ...config, linearInputOps: { ...config.linearInputOps, rotation } };
  const activations = activationQuantOf(settings.activations, configFile);
  if (activations) config = { ...config, linearInputOps: { ...config.linearInputOps, activations } };
  return config;
}

/** A model opened without reading its weights: `weights` reads canonical tensors on demand. */
export interface OpenedModel extends Omit<LoadedModel, 'weights' | 'quantization'> {
  weights: WeightSource;
  /**
   * Bits per weight and bytes as stored (modelSize's accounting; a GGUF: its file's). A ptqkit
   * checkpoint's quantized weights not read yet are read for it (codes only).
   */
  storage(): Promise<{ bitsPerWeight: number; totalBytes: number }>;
}

/**
 * `loadModel`'s inputs opened for block-streamed use (model/weight-source.ts): the same
 * configuration, tokenizer, canonical names and shape checks, and weights that decode to the
 * same float32 values, one tensor at a time. The caller closes `weights`.
 */
export async function openModel(
  modelPath: string,
  options: LoadOptions & {
    /** Bytes per read of a large safetensors tensor (tests use small pieces to cross their boundaries). */
    pieceBytes?: number;
  } = {},
): Promise<OpenedModel> {
  const info = await stat(modelPath).catch(() => undefined);
  if (!info?.isFile() && !info?.isDirectory()) return loadModel(modelPath, options).then(unreachable);
  if (isTemporaryOutput(modelPath)) return loadModel(modelPath, options).then(unreachable);
  let raw: RawTensors | undefined;
  try {
    let opened: OpenedModel;
    if (info.isDirectory()) {
      const configFile = path.join(modelPath, 'config.json');
      const hfConfig = await readConfig(configFile);
      const arch = architectureFor(hfConfig.model_type, configFile);
      let config = arch.parseConfig(hfConfig, configFile);
      const isPtq =
        (hfConfig.quantization_config as { quant_method?: string } | undefined)?.quant_method === 'ptqkit';
      let storedBitsOf: (name: string) => Promise<number | undefined> = async () => undefined;
      if (isPtq) {
        const ptq = await openCheckedPtqCheckpoint(modelPath);
        raw = ptq.raw;
        storedBitsOf = ptq.storedBitsOf;
        config = withQuantizedInputOps(config, ptq.settings, configFile);
      } else {
        raw = safetensorsTensors(await SafetensorsModel.open(modelPath), options.pieceBytes);
      }
      const weights = lazyWeights(raw, arch, config, modelPath);
      const { tokenizer, files } = await openTokenizer(modelPath, config, options);
      opened = {
        path: modelPath,
        source: isPtq ? 'ptqkit' : 'huggingface',
        arch,
        config,
        hfConfig,
        weights,
        tokenizer,
        tokenizerFiles: files,
        async storage() {
          const bits = new Map<string, number | undefined>();
          for (const name of weights.shapes.keys()) bits.set(name, await storedBitsOf(name));
          return storageSize(weights.shapes, (name) => bits.get(name));
        },
      };
    } else if (modelPath.endsWith('.gguf') || (await startsWithGgufMagic(modelPath))) {
      const gguf = await openGgufModel(modelPath);
      raw = gguf.raw;
      const arch = architectureFor(gguf.config.modelType, modelPath);
      opened = {
        path: modelPath,
        source: 'gguf',
        arch,
        config: gguf.config,
        hfConfig: toHfConfig(gguf.config),
        weights: lazyWeights(raw, arch, gguf.config, modelPath),
        tokenizer: gguf.tokenizer,
        tokenizerFiles: [modelPath],
        storage: () => ggufStorage(modelPath),
      };
    } else {
      const llama2c = await openLlama2cCheckpoint(modelPath);
      raw = llama2c.raw;
      const arch = architectureFor(llama2c.config.modelType, modelPath);
      const weights = lazyWeights(raw, arch, llama2c.config, modelPath);
      const tokFile = options.tokenizer ?? findLlama2cTokenizer(modelPath, llama2c.config.vocabSize);
      const beside = options.tokenizer
        ? undefined
        : [path.dirname(modelPath), path.dirname(await realpath(modelPath).catch(() => modelPath))];
      await checkRegularFile(tokFile, 'cannot read the llama2.c tokenizer', beside);
      opened = {
        path: modelPath,
        source: 'llama2c',
        arch,
        config: llama2c.config,
        hfConfig: toHfConfig(llama2c.config),
        weights,
        tokenizer: await Llama2cTokenizer.load(tokFile, llama2c.config.vocabSize),
        tokenizerFiles: [tokFile],
        storage: async () => storageSize(weights.shapes, () => undefined),
      };
    }
    checkTokenizerFits(opened);
    return opened;
  } catch (e) {
    await raw?.close();
    throw e;
  }
}

/** loadModel refuses what openModel cannot open, with the same error; it never returns for those. */
function unreachable(): never {
  throw new FileError('not a model');
}

/** A safetensors model's tensors as float32, big ones read in pieces (no second copy of a whole F16 tensor). */
function safetensorsTensors(st: SafetensorsModel, pieceBytes = 64 * 1024 * 1024): RawTensors {
  return {
    names: () => st.names(),
    shape: (name) => st.info(name).shape,
    async readFloat32(name) {
      const info = st.info(name);
      const total = info.end - info.begin;
      if (total <= pieceBytes) return st.readFloat32(name);
      const elementBytes = DTYPE_BYTES[info.dtype];
      const step = Math.max(elementBytes, pieceBytes - (pieceBytes % elementBytes));
      const out = new Float32Array(total / elementBytes);
      for (let at = 0; at < total; at += step)
        out.set(
          toFloat32(await st.readRawRange(name, at, Math.min(step, total - at)), info.dtype),
          at / elementBytes,
        );
      return out;
    },
    async readRows(name, rows) {
      const info = st.info(name);
      const cols = info.shape[1]!;
      const rowBytes = cols * DTYPE_BYTES[info.dtype];
      const out = new Float32Array(rows.length * cols);
      for (let i = 0; i < rows.length; i++)
        out.set(toFloat32(await st.readRawRange(name, rows[i]! * rowBytes, rowBytes), info.dtype), i * cols);
      return out;
    },
    close: () => st.close(),
  };
}

/**
 * A ptqkit checkpoint checked as readCheckedPtqCheckpoint checks it, read one tensor at a time:
 * each quantized weight dequantized and checked finite when read, its stored bits kept for
 * `storedBitsOf`.
 */
async function openCheckedPtqCheckpoint(dir: string) {
  const file = path.join(dir, CHECKPOINT_FILE);
  await checkPtqCheckpoint(dir);
  const reader = await reportedAgainst(file, () => PtqCheckpointReader.open(dir));
  const bits = new Map<string, number>();
  const quantized = (name: string) =>
    reportedAgainst(file, async () => {
      const q = await reader.readQuantized(name);
      bits.set(name, storedBits(q));
      return q;
    });
  const names = [...reader.quantizedNames(), ...reader.plainNames()];
  const raw: RawTensors = {
    names: () => names,
    shape: (name) => reader.shape(name),
    async readFloat32(name) {
      if (!reader.isQuantized(name)) return reader.readPlain(name);
      const q = await quantized(name);
      const data = await reportedAgainst(file, async () => dequantize(q));
      checkDequantized(
        new Map([[name, { shape: [q.rows, q.cols], data }]]),
        { tensors: new Map([[name, q]]) },
        file,
      );
      return data;
    },
    readRows: (name, rows) =>
      reader.isQuantized(name)
        ? raw.readFloat32(name).then((data) => gatherRows(data, reader.shape(name)[1]!, rows))
        : reader.readPlainRows(name, rows),
    close: () => reader.close(),
  };
  const storedBitsOf = async (name: string) =>
    reader.isQuantized(name) ? (bits.get(name) ?? storedBits(await quantized(name))) : undefined;
  return { raw, settings: reader.settings, storedBitsOf };
}

/** What the grid code refuses, or a malformed entry it trips on, reported against the checkpoint file. */
async function reportedAgainst<T>(file: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (e) {
    if (e instanceof FormatError || e instanceof FileError) throw e;
    if (e instanceof PtqError || e instanceof TypeError || e instanceof RangeError) {
      throw new FormatError(`inconsistent quantized tensor: ${e.message}`, { file });
    }
    throw e;
  }
}

/** A Hugging Face safetensors directory opened without reading its weights (quant/stream-quantize.ts). */
export interface LazyModel extends Omit<LoadedModel, 'weights' | 'quantization' | 'source'> {
  /** The shards, read one tensor (or one piece of one) at a time; the caller closes them. */
  tensors: SafetensorsModel;
}

/** True for what `openModelLazily` opens: a Hugging Face directory that is not a ptqkit checkpoint. */
export async function isPlainHfDirectory(modelPath: string): Promise<boolean> {
  const info = await stat(modelPath).catch(() => undefined);
  const configFile = path.join(modelPath, 'config.json');
  if (!info?.isDirectory() || isTemporaryOutput(modelPath) || !existsSync(configFile)) return false;
  const hfConfig = await readConfig(configFile);
  return (hfConfig.quantization_config as { quant_method?: string } | undefined)?.quant_method === undefined;
}

export async function openModelLazily(dir: string, options: LoadOptions = {}): Promise<LazyModel> {
  if (!(await isPlainHfDirectory(dir))) {
    throw new FileError('not an unquantized Hugging Face model directory', {
      file: dir,
      expected: 'config.json without quantization_config, and safetensors weights',
    });
  }
  const configFile = path.join(dir, 'config.json');
  const hfConfig = await readConfig(configFile);
  const arch = architectureFor(hfConfig.model_type, configFile);
  const config = arch.parseConfig(hfConfig, configFile);
  const { tokenizer, files } = await openTokenizer(dir, config, options);
  const tensors = await SafetensorsModel.open(dir);
  const model = { path: dir, arch, config, hfConfig, tokenizer, tokenizerFiles: files, tensors };
  try {
    checkTokenizerFits(model);
  } catch (e) {
    await tensors.close();
    throw e;
  }
  return model;
}

async function loadLlama2c(file: string, options: LoadOptions): Promise<LoadedModel> {
  const { config, tensors } = await loadLlama2cCheckpoint(file);
  const arch = architectureFor(config.modelType, file);
  checkShapes(tensors, arch, config, file);
  const tokFile = options.tokenizer ?? findLlama2cTokenizer(file, config.vocabSize);
  // The tokenizer found beside the checkpoint (its link or, for a symlinked checkpoint, its
  // target) must resolve there; one named by --tokenizer is the user's choice.
  const beside = options.tokenizer
    ? undefined
    : [path.dirname(file), path.dirname(await realpath(file).catch(() => file))];
  await checkRegularFile(tokFile, 'cannot read the llama2.c tokenizer', beside);
  const tokenizer = await Llama2cTokenizer.load(tokFile, config.vocabSize);
  return {
    path: file,
    source: 'llama2c',
    arch,
    config,
    hfConfig: toHfConfig(config),
    weights: tensors,
    tokenizer,
    tokenizerFiles: [tokFile],
  };
}

/** A llama.cpp GGUF file: weights dequantized to float32, its own vocabulary (sources/gguf-model.ts). */
async function loadGguf(file: string): Promise<LoadedModel> {
  const { config, weights, tokenizer } = await readGgufModel(file);
  const arch = architectureFor(config.modelType, file);
  checkShapes(weights, arch, config, file);
  return {
    path: file,
    source: 'gguf',
    arch,
    config,
    hfConfig: toHfConfig(config),
    weights,
    tokenizer,
    tokenizerFiles: [file],
  };
}

async function readConfig(file: string): Promise<Record<string, unknown>> {
  if (!existsSync(file)) {
    throw new FileError('cannot read the model configuration', {
      file,
      hint: 'a Hugging Face model directory needs config.json',
    });
  }
  return readJsonObjectFile(file, 'model configuration', {
    maxBytes: MAX_CONFIG_BYTES,
    maxDepth: 32,
    within: path.dirname(file),
  });
}

/**
 * A ptqkit checkpoint, distrusted: metadata and component tensors are checked before reading
 * (ptq-checkpoint-checks.ts); what the grid code then refuses, or a malformed entry it trips on,
 * is reported against the file, and every dequantized weight must be finite.
 */
export async function readCheckedPtqCheckpoint(dir: string) {
  const file = path.join(dir, CHECKPOINT_FILE);
  await checkPtqCheckpoint(dir);
  const read = await reportedAgainst(file, () => readPtqCheckpoint(dir));
  checkDequantized(read.weights, read.quantization, file);
  return read;
}

async function readSafetensorsWeights(dir: string): Promise<TensorMap> {
  const st = await SafetensorsModel.open(dir);
  try {
    const weights: TensorMap = new Map();
    for (const name of st.names()) {
      weights.set(name, { shape: [...st.info(name).shape], data: await st.readFloat32(name) });
    }
    return weights;
  } finally {
    await st.close();
  }
}

async function openTokenizer(dir: string, config: ModelConfig, options: LoadOptions) {
  const llama2cFile = options.tokenizer ?? path.join(dir, 'tokenizer.bin');
  if (options.tokenizer?.endsWith('.json') || (!options.tokenizer && !existsSync(llama2cFile))) {
    const tokDir = options.tokenizer ? path.dirname(options.tokenizer) : dir;
    const tokenizer = await HfTokenizer.load(tokDir, config.bosTokenId);
    const files = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json']
      .map((f) => path.join(tokDir, f))
      .filter((f) => existsSync(f));
    // These are copied next to derived models: none may be a link out of the directory.
    for (const f of files) await checkRegularFile(f, 'cannot read the tokenizer', tokDir);
    return { tokenizer: tokenizer as TextTokenizer, files };
  }
  await checkRegularFile(
    llama2cFile,
    'cannot read the llama2.c tokenizer',
    options.tokenizer ? undefined : dir,
  );
  return { tokenizer: await Llama2cTokenizer.load(llama2cFile, config.vocabSize), files: [llama2cFile] };
}

/** llama2.c ships `tokenizer.bin` (32k) or `tok<vocab>.bin` next to the checkpoint. */
function findLlama2cTokenizer(checkpoint: string, vocabSize: number): string {
  const dir = path.dirname(checkpoint);
  const candidates = [`tok${vocabSize}.bin`, 'tokenizer.bin'].map((f) => path.join(dir, f));
  const found = candidates.find((f) => existsSync(f));
  if (!found) {
    throw new FileError('no tokenizer next to the llama2.c checkpoint', {
      file: checkpoint,
      expected: candidates.map((c) => path.basename(c)).join(' or '),
      hint: 'pass --tokenizer <tokenizer.bin>',
    });
  }
  return found;
}

/** A Hugging Face config.json describing a normalized config (for models read from llama2.c). */
export function toHfConfig(c: ModelConfig): Record<string, unknown> {
  if (c.modelType !== 'llama')
    throw new ConfigError('cannot describe this architecture as config.json', { got: c.modelType });
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    head_dim: c.headDim,
    max_position_embeddings: c.maxPositions,
    rope_theta: c.ropeTheta,
    rms_norm_eps: c.normEps,
    tie_word_embeddings: c.tiedEmbeddings,
    hidden_act: 'silu',
    bos_token_id: c.bosTokenId,
    eos_token_id: c.eosTokenId,
    torch_dtype: 'float32',
  };
}
