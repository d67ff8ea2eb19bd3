/**
 * Calibration statistics of an ONNX graph for GPTQ (Frantar et al. 2022, arXiv:2210.17323):
 * the input X of every selected MatMul/Gemm is made an extra graph output, the fp32 graph runs
 * in onnxruntime-node on the calibration feeds, and per input tensor
 *
 *   H = 2/N · Σ_batches Xᵀ X      (X flattened to [rows, K]; N = rows seen)
 *
 * is accumulated in float64 (each batch's Gram matrix in float32 on the compute engine, as
 * ptqkit's own calibration does). Nodes reading the same tensor (q/k/v projections) share H.
 *
 * Supported graphs: any graph whose selected weight products take a float32 activation A whose
 * last axis is K (MatMul with A of rank ≥ 2, Gemm with transA = 0), run whole on the calibration
 * inputs. Unlike ptqkit's sequential pipeline on Llama models (quant/calibrate.ts), every layer
 * sees the inputs of the *float* model: the statistics come from one pass, not block by block
 * from already-quantized predecessors (GPTQ's "true sequential" needs the graph split by block,
 * which a generic ONNX graph does not give). The modified graph is written beside the source
 * (same directory, so external data resolves) and removed afterwards.
 */
import { randomBytes } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import type { ComputeEngine } from '../compute/engine.js';
import { getDefaultEngine } from '../compute/index.js';
import { UsageError } from '../errors.js';
import { type NodeFilter, selected } from './graph-edit.js';
import { DT, num, OnnxModel, onnx } from './model-file.js';
import { assertWeightShapes } from './shape-infer.js';

export interface InputStats {
  K: number;
  rows: number;
  /** H = 2/N · Σ x xᵀ, [K, K] row-major. */
  H: Float64Array;
}

/** Names of the activations feeding the MatMul/Gemm nodes with a constant B that `filter` selects. */
export function weightProductInputs(model: OnnxModel, filter: NodeFilter): string[] {
  const names = new Set<string>();
  for (const n of model.graph.node) {
    if ((n.domain && n.domain !== 'ai.onnx') || (n.opType !== 'MatMul' && n.opType !== 'Gemm')) continue;
    if (!n.input[1] || !model.initializer(n.input[1]) || model.initializer(n.input[0]!)) continue;
    if (selected(n, filter)) names.add(n.input[0]!);
  }
  return [...names];
}

export async function collectInputStats(
  file: string,
  feedsList: Record<string, ort.Tensor>[],
  filter: NodeFilter = {},
  engine: ComputeEngine = getDefaultEngine(),
  onProgress?: (done: number, total: number) => void,
): Promise<Map<string, InputStats>> {
  const model = await OnnxModel.read(file);
  // A weight whose dims contradict its input: refused by name here, not by onnxruntime's session below.
  assertWeightShapes(model);
  const inputs = weightProductInputs(model, filter);
  if (inputs.length === 0)
    throw new UsageError('no MatMul/Gemm with a constant weight to calibrate', { file });
  const graphOutputs = new Set(model.graph.output.map((o) => o.name));
  for (const name of inputs)
    if (!graphOutputs.has(name)) model.graph.output.push(onnx.ValueInfoProto.create({ name }) as never);
  const bytes = onnx.ModelProto.encode(model.proto).finish();
  // The probe graph runs from memory; only external data (located relative to the graph) needs
  // it written beside the model, created exclusively under a random name and removed after.
  const probe = model.sourceExternal
    ? path.join(model.dir, `.ptq-calibration-${process.pid}-${randomBytes(4).toString('hex')}.onnx`)
    : undefined;
  if (probe) await writeFile(probe, bytes, { flag: 'wx' });
  const stats = new Map<string, InputStats>();
  let session: ort.InferenceSession | undefined;
  try {
    const options = { graphOptimizationLevel: 'disabled' } as const;
    session = await (probe
      ? ort.InferenceSession.create(probe, options)
      : ort.InferenceSession.create(bytes, options));
    for (let b = 0; b < feedsList.length; b++) {
      onProgress?.(b, feedsList.length);
      const out = await session.run(feedsList[b]!, inputs);
      for (const name of inputs) {
        const t = out[name]!;
        if (t.type !== 'float32')
          throw new UsageError('GPTQ calibrates float32 activations', { field: name, got: t.type });
        const K = t.dims.at(-1)!;
        const rows = (t.data as Float32Array).length / K;
        const gram = await engine.matmulTransA(t.data as Float32Array, t.data as Float32Array, rows, K, K);
        let s = stats.get(name);
        if (!s) {
          s = { K, rows: 0, H: new Float64Array(K * K) };
          stats.set(name, s);
        }
        for (let i = 0; i < K * K; i++) s.H[i]! += gram[i]!;
        s.rows += rows;
      }
    }
  } finally {
    await session?.release();
    if (probe) await rm(probe, { force: true });
    await model.close();
  }
  for (const s of stats.values()) for (let i = 0; i < s.H.length; i++) s.H[i] = (2 / s.rows) * s.H[i]!;
  return stats;
}

/**
 * Calibration feeds for a decoder graph: windows of `seqlen` tokens as input_ids, attention_mask
 * all ones, position_ids 0..S−1, empty past_key_values (declared dims, past length 0).
 */
export function decoderFeeds(model: OnnxModel, windows: Int32Array, seqlen: number) {
  const tensor = ort.Tensor;
  const feeds: Record<string, ort.Tensor>[] = [];
  for (let w = 0; w * seqlen < windows.length; w++) {
    const ids = windows.subarray(w * seqlen, (w + 1) * seqlen);
    const f: Record<string, ort.Tensor> = {};
    for (const input of model.graph.input) {
      if (model.initializer(input.name)) continue;
      const tt = input.type?.tensorType;
      const big = (f: (i: number) => number) =>
        new tensor(
          'int64',
          BigInt64Array.from({ length: seqlen }, (_, i) => BigInt(f(i))),
          [1, seqlen],
        );
      if (input.name === 'input_ids') f[input.name] = big((i) => ids[i]!);
      else if (input.name === 'attention_mask') f[input.name] = big(() => 1);
      else if (input.name === 'position_ids') f[input.name] = big((i) => i);
      else if (input.name === 'token_type_ids') f[input.name] = big(() => 0);
      else if (/past/.test(input.name) && tt?.elemType === DT.FLOAT) {
        const dims = (tt.shape?.dim ?? []).map((d, i) => (i === 0 ? 1 : d.dimValue ? num(d.dimValue) : 0));
        f[input.name] = new tensor('float32', new Float32Array(0), dims);
      } else {
        throw new UsageError(
          'GPTQ calibration feeds decoder graphs (input_ids, attention_mask, position_ids, past_key_values)',
          {
            field: input.name,
            hint: 'use --method rtn, hqq or sinq for this graph',
          },
        );
      }
    }
    feeds.push(f);
  }
  return feeds;
}
