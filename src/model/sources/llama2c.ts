/**
 * llama2.c checkpoints (Karpathy, llama2.c `run.c`, legacy format "version 0").
 *
 * Layout: 7 × int32 header {dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
 * seq_len} (vocab_size < 0: the classifier is stored separately), then float32 arrays in
 * run.c `memory_map_weights` order:
 *   token_embedding [vocab, dim], rms_att [L, dim], wq [L, dim, dim], wk [L, kv_dim, dim],
 *   wv [L, kv_dim, dim], wo [L, dim, dim], rms_ffn [L, dim], w1 [L, hidden, dim],
 *   w2 [L, dim, hidden], w3 [L, hidden, dim], rms_final [dim],
 *   freq_cis_real, freq_cis_imag [seq_len, head_size/2] (unused), wcls [vocab, dim] if not shared.
 * Matrices are [out, in] like Hugging Face's. run.c rotates adjacent pairs (2i, 2i+1) of each
 * head; Hugging Face's rotate_half rotates (i, i + d/2). The rows of wq and wk are permuted on
 * load (the `permute` of HF's convert_llama_weights_to_hf) so the one decoder serves both.
 */
import type { FileHandle } from 'node:fs/promises';
import { FormatError } from '../../errors.js';
import { openRegularFile } from '../../io/confined-path.js';
import { numel, type TensorMap } from '../../tensor.js';
import type { ModelConfig } from '../config.js';
import { gatherRows, type RawTensors } from '../weight-source.js';

const HEADER_BYTES = 7 * 4;

export async function loadLlama2cCheckpoint(
  file: string,
): Promise<{ config: ModelConfig; tensors: TensorMap }> {
  const { config, raw } = await openLlama2cCheckpoint(file);
  try {
    const tensors: TensorMap = new Map();
    for (const name of raw.names())
      tensors.set(name, { shape: [...raw.shape(name)], data: await raw.readFloat32(name) });
    return { config, tensors };
  } finally {
    await raw.close();
  }
}

/**
 * The checkpoint's header checked and its tensors located, none read: `raw` reads one tensor (a
 * block's slice of its array) at a time, in the file's order. The caller closes it.
 */
export async function openLlama2cCheckpoint(file: string): Promise<{ config: ModelConfig; raw: RawTensors }> {
  // A regular file (a FIFO would block the read forever).
  const handle = await openRegularFile(file, 'cannot open the llama2.c checkpoint');
  try {
    const config = await readHeader(handle, file);
    const located = new Map<string, Located>();
    let offset = HEADER_BYTES;
    for (const segment of weightLayout(config)) {
      for (const t of segment.tensors()) located.set(t.name, { ...t, offset: offset + t.at * 4 });
      offset += segment.count * 4;
    }
    const at = (name: string) => {
      const t = located.get(name);
      if (!t) throw new FormatError('no such tensor', { file, field: name });
      return t;
    };
    const read = async (offset: number, count: number) => {
      // The size check of readHeader bounds every allocation here by the file's own size.
      const data = new Float32Array(count);
      const { bytesRead } = await handle.read(new Uint8Array(data.buffer), 0, data.byteLength, offset);
      if (bytesRead !== data.byteLength)
        throw new FormatError('checkpoint truncated while reading', { file, offset: offset + bytesRead });
      return data;
    };
    const raw: RawTensors = {
      names: () => [...located.keys()],
      shape: (name) => at(name).shape,
      async readFloat32(name) {
        const t = at(name);
        const data = await read(t.offset, numel(t.shape));
        return t.transform ? t.transform(data) : data;
      },
      async readRows(name, rows) {
        const t = at(name);
        const cols = t.shape[1]!;
        if (t.transform || t.shape.length !== 2) return gatherRows(await raw.readFloat32(name), cols, rows);
        const out = new Float32Array(rows.length * cols);
        for (let i = 0; i < rows.length; i++)
          out.set(await read(t.offset + rows[i]! * cols * 4, cols), i * cols);
        return out;
      },
      close: () => handle.close(),
    };
    return { config, raw };
  } catch (e) {
    await handle.close();
    throw e;
  }
}

async function readHeader(handle: FileHandle, file: string): Promise<ModelConfig> {
  const { size } = await handle.stat();
  if (size < HEADER_BYTES)
    throw new FormatError('file too short for a llama2.c header', {
      file,
      expected: `>= ${HEADER_BYTES} bytes`,
      got: `${size}`,
    });
  const header = new Int32Array(7);
  await handle.read(new Uint8Array(header.buffer), 0, HEADER_BYTES, 0);
  const [dim, hidden, layers, heads, kvHeads, signedVocab, seqLen] = header as unknown as number[];
  const vocab = Math.abs(signedVocab!);
  const shared = signedVocab! > 0;
  // Rotary pairs need an even head size (run.c rotates pairs (2i, 2i+1) of each head).
  if (
    [dim, hidden, layers, heads, kvHeads, vocab, seqLen].some((v) => !(v! > 0)) ||
    dim! % heads! !== 0 ||
    heads! % kvHeads! !== 0 ||
    (dim! / heads!) % 2 !== 0
  ) {
    throw new FormatError('invalid llama2.c header', {
      file,
      offset: 0,
      expected: 'positive sizes, dim divisible by n_heads, n_heads by n_kv_heads, an even head size',
      got: `[${[...header]}]`,
    });
  }
  const config: ModelConfig = {
    modelType: 'llama',
    vocabSize: vocab,
    hiddenSize: dim!,
    intermediateSize: hidden!,
    numLayers: layers!,
    numHeads: heads!,
    numKvHeads: kvHeads!,
    headDim: dim! / heads!,
    maxPositions: seqLen!,
    ropeTheta: 10000,
    normEps: 1e-5,
    tiedEmbeddings: shared,
    bosTokenId: 1,
    eosTokenId: 2,
  };
  // Compared before any allocation; products of int32 sizes are at most ~2^93, inexact but never
  // equal to a real file size, so absurd headers fail here.
  const floats = weightLayout(config).reduce((n, w) => n + w.count, 0);
  const expected = HEADER_BYTES + floats * 4;
  if (size !== expected) {
    throw new FormatError(size < expected ? 'checkpoint truncated' : 'unexpected bytes after the weights', {
      file,
      expected: `${expected} bytes for the header's shapes`,
      got: `${size}`,
    });
  }
  return config;
}

/** A tensor of the file: its slice of a segment (`at`, in floats) and its row reordering. */
interface Slice {
  name: string;
  shape: number[];
  at: number;
  transform?: (w: Float32Array) => Float32Array;
}

interface Located extends Slice {
  offset: number;
}

interface Segment {
  count: number;
  /** Listed only once the header's sizes matched the file (a fuzzed layer count would list billions). */
  tensors(): Slice[];
}

/** The arrays of the file in order, each with the tensors it holds. */
function weightLayout(c: ModelConfig): Segment[] {
  const { hiddenSize: dim, intermediateSize: hidden, numLayers: L, headDim } = c;
  const kvDim = c.numKvHeads * headDim;
  const perLayer = (
    suffix: string,
    shape: number[],
    transform?: (w: Float32Array) => Float32Array,
  ): Segment => {
    const n = numel(shape);
    return {
      count: L * n,
      tensors: () =>
        Array.from({ length: L }, (_, l) => ({
          name: `model.layers.${l}.${suffix}`,
          shape,
          at: l * n,
          transform,
        })),
    };
  };
  const single = (name: string, shape: number[]): Segment => ({
    count: numel(shape),
    tensors: () => [{ name, shape, at: 0 }],
  });
  const skip = (count: number): Segment => ({ count, tensors: () => [] });
  const segments = [
    single('model.embed_tokens.weight', [c.vocabSize, dim]),
    perLayer('input_layernorm.weight', [dim]),
    perLayer('self_attn.q_proj.weight', [dim, dim], (w) => interleavedToHalves(w, c.numHeads, headDim, dim)),
    perLayer('self_attn.k_proj.weight', [kvDim, dim], (w) =>
      interleavedToHalves(w, c.numKvHeads, headDim, dim),
    ),
    perLayer('self_attn.v_proj.weight', [kvDim, dim]),
    perLayer('self_attn.o_proj.weight', [dim, dim]),
    perLayer('post_attention_layernorm.weight', [dim]),
    perLayer('mlp.gate_proj.weight', [hidden, dim]),
    perLayer('mlp.down_proj.weight', [dim, hidden]),
    perLayer('mlp.up_proj.weight', [hidden, dim]),
    single('model.norm.weight', [dim]),
    skip(c.maxPositions * headDim), // freq_cis_real and freq_cis_imag, [seq_len, head_size/2] each
  ];
  if (!c.tiedEmbeddings) segments.push(single('lm_head.weight', [c.vocabSize, dim]));
  return segments;
}

/**
 * Reorder each head's output rows from run.c's interleaved rotary pairs (2i, 2i+1) to
 * rotate_half's (i, i + d/2): new row i ← old row 2i, new row i + d/2 ← old row 2i + 1.
 * This is HF convert_llama_weights_to_hf's permute: w.view(h, d/2, 2, in).transpose(1, 2).
 */
export function interleavedToHalves(
  w: Float32Array,
  heads: number,
  headDim: number,
  inDim: number,
): Float32Array {
  const out = new Float32Array(w.length);
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (const parity of [0, 1]) {
        const from = (h * headDim + 2 * i + parity) * inDim;
        const to = (h * headDim + i + parity * half) * inDim;
        out.set(w.subarray(from, from + inDim), to);
      }
    }
  }
  return out;
}
