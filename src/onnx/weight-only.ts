/**
 * Weight-only quantization of any ONNX graph (the successor of onnxruntime's
 * `matmul_nbits_quantizer.py` and transformers.js' `scripts/quantize.py` q4 path):
 *
 *   MatMul(A, B)                 B an initializer [K, N]            → com.microsoft::MatMulNBits
 *   Gemm(A, B, C; α, β, transB)  B an initializer, transA = 0       → MatMulNBits (+ bias β·C)
 *   Gather(T, ids; axis 0)       T an initializer [V, D]            → com.microsoft::GatherBlockQuantized
 *
 * MatMulNBits (onnxruntime docs/ContribOperators.md): Y = A · dequant(B)ᵀ with the weight as
 * W = Bᵀ [N, K], blocks of `block_size` (a power of two ≥ 16) along K, codes LSB-first in
 * uint8 B [N, ⌈K/bs⌉, bs·bits/8], scales [N·⌈K/bs⌉] of A's type, zero points packed like B
 * ([N, ⌈⌈K/bs⌉·bits/8⌉]) or of A's type (HQQ's float zeros), absent = 2^(bits−1); K need not be a
 * multiple of bs (the last block is zero-padded, which leaves min/max grids unchanged since
 * their range always contains 0). Inputs: A, B, scales, zero_points, g_idx, bias.
 *
 * GatherBlockQuantized (CPU kernel contract, uint8 data): gather_axis 0, quantize_axis the last,
 * data uint8 [V, D·bits/8] (4 bits: low nibble first), scales [V, ⌈D/bs⌉] (the output's type),
 * zero_points packed like data, default 2^(bits−1); bits 4 or 8 here.
 *
 * Per weight matrix the method is any of ptqkit's grid-level methods on the integer grid
 * {bits, block_size, symmetric}: RTN, HQQ (float zeros, 2/4 bits), SINQ (its per-column scale t
 * becomes Mul(A, t) in front of the MatMulNBits, w = s·(q − z)·t), or GPTQ when the caller
 * supplies H = Σ xxᵀ of the node's input (onnx/calibrate.ts). Embedding tables take RTN.
 * Nodes are selected by name with include/exclude patterns; a weight shared by several nodes is
 * quantized once.
 */
import type { ComputeEngine } from '../compute/engine.js';
import { getDefaultEngine } from '../compute/index.js';
import { UsageError } from '../errors.js';
import { packBits } from '../formats/bitpack.js';
import { type GridSpec, IntGrid, type ScaleDtype } from '../formats/grid.js';
import { encodeF16 } from '../formats/half.js';
import { dequantize, type QuantizedTensor, unpackCodes } from '../formats/quantized-tensor.js';
import { getMethod, METHODS } from '../quant/methods/index.js';
import { methodOptions } from '../quant/methods/method.js';
import { quantizeRtn } from '../quant/methods/rtn.js';
import { assertFiniteQuantized, assertFiniteWeights } from '../quant/numerics.js';
import {
  attrNumber,
  GraphEditor,
  isInitializer,
  MS_DOMAIN,
  makeNode,
  type NodeFilter,
  selected,
} from './graph-edit.js';
import { encodeMatMulNBits, type MatMulNBitsWeight, planMatMulNBits } from './matmul-nbits.js';
import { DT, dimsOf, makeTensor, type NodeProto, type OnnxModel, type TensorProto } from './model-file.js';
import { assertWeightShapes } from './shape-infer.js';

export const NBITS_BITS = [2, 4, 8] as const;
const MIN_BLOCK = 16;
const MAX_BLOCK = 256;
export const GATHER_BITS = [4, 8] as const;
/** Methods that quantize one initializer: from its values, or from a Hessian onnxruntime measured (GPTQ). */
export const ONNX_METHODS = Object.values(METHODS)
  .filter((m) => m.quantizeWeight || m.quantizeWithHessian)
  .map((m) => m.name);
export type OnnxMethod = string;

export interface WeightOnlyOptions extends NodeFilter {
  bits: number;
  /**
   * Block along K: a power of two from 16 to 256 (MatMulNBits' kernels), or 0 for one block per
   * row (per channel: the next power of two ≥ K, at most 256, zero-padded past K).
   */
  blockSize: number;
  symmetric: boolean;
  method: OnnxMethod;
  /** MatMulNBits accuracy_level (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute). */
  accuracyLevel?: number;
  /** Storage rounding of scales before codes are chosen (default f16: exact in fp32 and fp16 graphs). */
  scaleDtype?: Extract<ScaleDtype, 'f16' | 'f32'>;
  /** Also quantize Gather on embedding tables (default true). */
  gather?: boolean;
  /** GPTQ: H = Σ xxᵀ over calibration rows of a node's input tensor [K·K], from onnx/calibrate.ts. */
  hessian?: (inputName: string) => Float64Array | undefined;
  /** The method's own options (defaults for those not given). */
  methodOptions?: Record<string, unknown>;
  engine?: ComputeEngine;
  onProgress?: (done: number, total: number, node: string) => void;
}

export interface NodeReport {
  node: string;
  op: string;
  /** 'MatMulNBits b4 bs32', 'GatherBlockQuantized b4 bs32', or why it was kept. */
  result: string;
  K: number;
  N: number;
  method?: OnnxMethod | 'rtn (table)';
  /** ‖W − Ŵ‖² / ‖W‖² of the stored weight. */
  relativeError?: number;
  /** ‖(W − Ŵ)X‖² / ‖WX‖² on the calibration inputs, when their H is known. */
  outputError?: number;
}

export interface WeightOnlyReport {
  quantized: NodeReport[];
  skipped: { node: string; op: string; reason: string }[];
  /** Weights replaced and the bytes now stored for them (codes, scales, zeros, column scales). */
  weights: number;
  storedBytes: number;
}

export function validateWeightOnly(o: WeightOnlyOptions): void {
  if (!(NBITS_BITS as readonly number[]).includes(o.bits))
    throw new UsageError('MatMulNBits takes 2, 4 or 8-bit codes', { field: 'bits', got: String(o.bits) });
  if (
    o.blockSize !== 0 &&
    !(o.blockSize >= 16 && o.blockSize <= 256 && (o.blockSize & (o.blockSize - 1)) === 0)
  )
    throw new UsageError('invalid block size', {
      field: 'block-size',
      expected: 'a power of two from 16 to 256, or 0 (per channel)',
      got: String(o.blockSize),
    });
  const method = getMethod(o.method);
  const probe: GridSpec = {
    bits: o.bits,
    symmetric: o.symmetric,
    granularity: 'group',
    groupSize: 32,
    scaleDtype: 'f16',
  };
  if (o.bits === 8 && method.gridSpec?.(probe).zeroPoint === 'float')
    throw new UsageError(`MatMulNBits takes float zero points (${method.name}) at 2 and 4 bits only`, {
      field: 'method',
      got: `${method.name} at 8 bits`,
    });
  if (
    o.accuracyLevel !== undefined &&
    !(Number.isInteger(o.accuracyLevel) && o.accuracyLevel >= 0 && o.accuracyLevel <= 4)
  )
    throw new UsageError('invalid accuracy level', {
      field: 'accuracy-level',
      expected: '0..4',
      got: String(o.accuracyLevel),
    });
}

/** The [N, K] weight a node multiplies by, and how B stores it. */
interface WeightView {
  init: TensorProto;
  /** B is [K, N] (MatMul, Gemm transB = 0): W = Bᵀ. */
  transposed: boolean;
  alpha: number;
}

function candidate(model: OnnxModel, node: NodeProto): WeightView | string | undefined {
  if (node.domain && node.domain !== 'ai.onnx') return undefined;
  const isFloat = (t: TensorProto) => t.dataType === DT.FLOAT || t.dataType === DT.FLOAT16;
  if (node.opType === 'MatMul' || node.opType === 'Gemm') {
    const b = node.input[1] ? model.initializer(node.input[1]) : undefined;
    if (!b) return undefined;
    if (isInitializer(model, node.input[0]!)) return 'both inputs are constants';
    if (!isFloat(b)) return `B is not float (type ${b.dataType})`;
    if (b.dims.length !== 2) return `B has rank ${b.dims.length}, not 2`;
    if (dimsOf(b).includes(0)) return `B is empty [${dimsOf(b).join(', ')}]`;
    if (node.opType === 'MatMul') return { init: b, transposed: true, alpha: 1 };
    if (attrNumber(node, 'transA', 0) !== 0) return 'Gemm with transA = 1';
    return { init: b, transposed: attrNumber(node, 'transB', 0) === 0, alpha: attrNumber(node, 'alpha', 1) };
  }
  return undefined;
}

const isEmbeddingGather = (model: OnnxModel, node: NodeProto) =>
  (!node.domain || node.domain === 'ai.onnx') &&
  node.opType === 'Gather' &&
  attrNumber(node, 'axis', 0) === 0 &&
  model.initializer(node.input[0]!)?.dims.length === 2;

/** W [rows, cols] zero-padded to `cols2` columns. */
function padColumns(w: Float32Array, rows: number, cols: number, cols2: number): Float32Array {
  if (cols2 === cols) return w;
  const out = new Float32Array(rows * cols2);
  for (let r = 0; r < rows; r++) out.set(w.subarray(r * cols, (r + 1) * cols), r * cols2);
  return out;
}

function transpose(b: Float32Array, K: number, N: number): Float32Array {
  const w = new Float32Array(K * N);
  for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) w[n * K + k] = b[k * N + n]!;
  return w;
}

/**
 * ‖(W − Ŵ)X‖² / ‖WX‖² = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) with H = Σ x xᵀ (GPTQ's objective, Eq. 1),
 * over the first `cols` columns of the padded quantized tensor.
 */
function outputError(
  w: Float32Array,
  q: QuantizedTensor,
  d: Float32Array,
  cols: number,
  H: Float64Array,
): number {
  const delta = new Float64Array(cols);
  let num = 0;
  let den = 0;
  for (let r = 0; r < q.rows; r++) {
    for (let c = 0; c < cols; c++) delta[c] = w[r * cols + c]! - d[r * q.cols + c]!;
    for (let i = 0; i < cols; i++) {
      let hd = 0;
      let hw = 0;
      for (let j = 0; j < cols; j++) {
        hd += H[i * cols + j]! * delta[j]!;
        hw += H[i * cols + j]! * w[r * cols + j]!;
      }
      num += delta[i]! * hd;
      den += w[r * cols + i]! * hw;
    }
  }
  return den === 0 ? 0 : num / den;
}

/** ‖W − Ŵ‖² / ‖W‖² over the first `cols` columns of the padded quantized tensor. */
function relativeError(w: Float32Array, q: QuantizedTensor, d: Float32Array, cols: number): number {
  let num = 0;
  let den = 0;
  for (let r = 0; r < q.rows; r++) {
    for (let c = 0; c < cols; c++) {
      const x = w[r * cols + c]!;
      const e = x - d[r * q.cols + c]!;
      num += e * e;
      den += x * x;
    }
  }
  return den === 0 ? 0 : num / den;
}

/** Typed bytes of float values in the graph's float type. */
function floatBytes(values: Float32Array, dataType: number): ArrayBufferView {
  return dataType === DT.FLOAT16 ? encodeF16(values) : values;
}

/** Rewrite the selected MatMul/Gemm/Gather nodes of `model` in place; returns what was done. */
export async function quantizeWeightsToNBits(
  model: OnnxModel,
  o: WeightOnlyOptions,
): Promise<WeightOnlyReport> {
  validateWeightOnly(o);
  const method = getMethod(o.method);
  const options = methodOptions(method, o.methodOptions);
  const edit = new GraphEditor(model);
  const engine = o.engine ?? getDefaultEngine();
  /** The grid of a matrix whose rows are `cols` wide (per channel: one block of the next power of two). */
  const gridFor = (cols: number) => {
    const bs = o.blockSize || Math.max(MIN_BLOCK, 2 ** Math.ceil(Math.log2(cols)));
    if (bs > MAX_BLOCK) return undefined;
    const spec: GridSpec = {
      bits: o.bits,
      symmetric: o.symmetric,
      granularity: 'group',
      groupSize: bs,
      scaleDtype: o.scaleDtype ?? 'f16',
    };
    return new IntGrid(spec);
  };
  const report: WeightOnlyReport = { quantized: [], skipped: [], weights: 0, storedBytes: 0 };
  /**
   * Quantized weights by (initializer, layout, α): shared weights are quantized and stored once
   * (GPTQ from the first reader's inputs, whose errors the report gives for every reader).
   */
  const cache = new Map<string, StoredNBits>();
  const nodes = model.graph.node;
  const todo = new Set(
    nodes.filter(
      (n) =>
        selected(n, o) &&
        (candidate(model, n) !== undefined || (o.gather !== false && isEmbeddingGather(model, n))),
    ),
  );
  // Each weight's dims as its node reads them: a reshaped weight is refused, not quantized to a wrong K × N.
  assertWeightShapes(model, [...todo]);
  let done = 0;

  for (let index = 0; index < nodes.length; index++) {
    const node = nodes[index]!;
    if (!todo.has(node)) continue;
    o.onProgress?.(done++, todo.size, node.name);
    const name = node.name || node.output[0]!;
    if (node.opType === 'Gather') {
      const r = await gatherToBlockQuantized(model, edit, node, gridFor, o);
      if (typeof r === 'string') report.skipped.push({ node: name, op: node.opType, reason: r });
      else {
        nodes[index] = r.node;
        report.quantized.push(r.report);
        report.weights += r.report.K * r.report.N;
        report.storedBytes += r.bytes;
      }
      continue;
    }
    const view = candidate(model, node);
    if (typeof view === 'string' || !view) {
      report.skipped.push({ node: name, op: node.opType, reason: view ?? 'not a weight product' });
      continue;
    }
    const dims = dimsOf(view.init);
    const [K, N] = view.transposed ? [dims[0]!, dims[1]!] : [dims[1]!, dims[0]!];
    const key = `${view.init.name}|${view.transposed}|${view.alpha}`;
    const grid = gridFor(K);
    if (!grid) {
      report.skipped.push({
        node: name,
        op: node.opType,
        reason: `per-channel block of ${K} columns exceeds ${MAX_BLOCK}`,
      });
      continue;
    }
    const bs = grid.spec.groupSize;
    let entry = cache.get(key);
    if (!entry) {
      let w = await model.floatData(view.init);
      assertFiniteWeights(new Map([[view.init.name, { shape: dims, data: w }]]));
      if (view.transposed) w = transpose(w, K, N);
      if (view.alpha !== 1) w = w.map((x) => x * view.alpha);
      const K2 = Math.ceil(K / bs) * bs;
      const padded = { shape: [N, K2], data: padColumns(w, N, K, K2) };
      let q: QuantizedTensor;
      if (method.quantizeWeight) q = method.quantizeWeight(padded, grid, options, name);
      else {
        const H = o.hessian?.(node.input[0]!);
        if (!H) {
          report.skipped.push({
            node: name,
            op: node.opType,
            reason: 'no calibration statistics for its input',
          });
          continue;
        }
        const Hp = K2 === K ? H : padHessian(H, K, K2);
        q = await method.quantizeWithHessian!(padded, grid, Hp, options, engine, name, K2 - K);
      }
      const plan = planMatMulNBits(q, o.bits);
      if (!plan.ok)
        throw new UsageError(`cannot store ${name} as MatMulNBits: ${plan.reason}`, { field: name });
      const nb = encodeMatMulNBits(q, plan);
      // What is stored is what is measured: finite parameters, errors of the dequantized codes.
      const deq = dequantize(q);
      assertFiniteQuantized(view.init.name, q, deq);
      const relErr = relativeError(w, q, deq, K);
      const H = o.hessian?.(node.input[0]!);
      const outErr = H ? outputError(w, q, deq, K, H) : undefined;
      w = new Float32Array(0);
      entry = storeNBits(edit, view.init, nb, K, o);
      entry.relErr = relErr;
      entry.outErr = outErr;
      cache.set(key, entry);
    }
    let a = node.input[0]!;
    const pre: NodeProto[] = [];
    if (entry.permutation) {
      const ordered = edit.fresh(`${name}/input_ordered`);
      pre.push(
        makeNode('Gather', [a, entry.permutation], [ordered], edit.fresh(`${name}/InputOrder`), { axis: -1 }),
      );
      a = ordered;
    }
    if (entry.columnScales) {
      const scaled = edit.fresh(`${name}/input_scaled`);
      pre.push(makeNode('Mul', [a, entry.columnScales], [scaled], edit.fresh(`${name}/InputScale`)));
      a = scaled;
    }
    const inputs = [a, ...entry.inputs];
    const post: NodeProto[] = [];
    let output = node.output[0]!;
    if (node.opType === 'Gemm' && node.input[2]) {
      const beta = attrNumber(node, 'beta', 1);
      const c = model.initializer(node.input[2]);
      if (c && dimsOf(c).reduce((x, y) => x * y, 1) === N && c.dims.length <= 2) {
        // A constant C with N elements adds the same vector to every row: β·C is MatMulNBits' bias.
        const bias =
          c.dims.length === 1 && beta === 1
            ? c.name
            : edit.addInitializer(
                makeTensor(
                  edit.fresh(`${c.name}_bias`),
                  c.dataType,
                  [N],
                  floatBytes(
                    (await model.floatData(c)).map((x) => beta * x),
                    c.dataType,
                  ),
                ),
              );
        while (inputs.length < 5) inputs.push('');
        inputs.push(bias);
      } else {
        output = edit.fresh(`${name}/product`);
        let bias = node.input[2];
        if (beta !== 1) {
          // β in the graph's float type (B's), which C and the product share.
          const type = view.init.dataType;
          const betaInit = edit.addInitializer(
            makeTensor(edit.fresh(`${name}/beta`), type, [], floatBytes(Float32Array.of(beta), type)),
          );
          const scaled = edit.fresh(`${name}/beta_C`);
          post.push(makeNode('Mul', [bias, betaInit], [scaled], edit.fresh(`${name}/Beta`)));
          bias = scaled;
        }
        post.push(makeNode('Add', [output, bias], [node.output[0]!], edit.fresh(`${name}/Bias`)));
      }
    }
    const nbits = makeNode('MatMulNBits', inputs, [output], name, entry.attrs, MS_DOMAIN);
    nodes.splice(index, 1, ...pre, nbits, ...post);
    index += pre.length + post.length;
    edit.importMicrosoftDomain();
    report.quantized.push({
      node: name,
      op: node.opType,
      result: `MatMulNBits b${o.bits} bs${bs}${entry.inputs[2] ? ' zp' : ''}${entry.columnScales ? ' +column scales' : ''}`,
      K,
      N,
      method: o.method,
      relativeError: entry.relErr,
      outputError: entry.outErr,
    });
    report.weights += K * N;
    report.storedBytes += entry.bytes;
    entry.bytes = 0; // a shared weight is stored once
  }
  edit.pruneInitializers();
  return report;
}

/** H [K, K] embedded in [K2, K2] with zero rows/columns for the padding (GPTQ treats them as dead inputs). */
function padHessian(H: Float64Array, K: number, K2: number): Float64Array {
  const out = new Float64Array(K2 * K2);
  for (let i = 0; i < K; i++) out.set(H.subarray(i * K, (i + 1) * K), i * K2);
  return out;
}

interface StoredNBits {
  /** Inputs after A: B, scales, zero points when stored. */
  inputs: string[];
  attrs: Record<string, number>;
  /** SINQ's t: A is multiplied by it first. */
  columnScales?: string;
  /** Act-order: A's columns are gathered in this order first. */
  permutation?: string;
  bytes: number;
  relErr: number;
  outErr?: number;
}

/** Add the MatMulNBits initializers of `nb`; returns the node inputs after A and its attributes. */
function storeNBits(
  edit: GraphEditor,
  source: TensorProto,
  nb: MatMulNBitsWeight,
  K: number,
  o: WeightOnlyOptions,
): StoredNBits {
  const base = source.name;
  const type = source.dataType;
  const B = edit.addInitializer(
    makeTensor(
      edit.fresh(`${base}_Q${nb.bits}`),
      DT.UINT8,
      [nb.N, nb.kBlocks, (nb.blockSize * nb.bits) / 8],
      nb.B,
    ),
  );
  const scales = edit.addInitializer(
    makeTensor(edit.fresh(`${base}_scales`), type, [nb.N * nb.kBlocks], floatBytes(nb.scales, type)),
  );
  const inputs = [B, scales];
  const floatSize = type === DT.FLOAT16 ? 2 : 4;
  let bytes = nb.B.byteLength + nb.scales.length * floatSize;
  if (nb.zeroPoints) {
    const zp = nb.zeroPoints;
    const stored = zp instanceof Uint8Array ? zp : floatBytes(zp, type);
    inputs.push(
      edit.addInitializer(
        makeTensor(edit.fresh(`${base}_zp`), zp instanceof Uint8Array ? DT.UINT8 : type, [zp.length], stored),
      ),
    );
    bytes += stored.byteLength;
  }
  let columnScales: string | undefined;
  if (nb.inputScales) {
    const t = nb.inputScales.slice(0, K);
    columnScales = edit.addInitializer(
      makeTensor(edit.fresh(`${base}_column_scales`), type, [K], floatBytes(t, type)),
    );
    bytes += K * floatSize;
  }
  let permutation: string | undefined;
  if (nb.inputPermutation) {
    // Act-order: MatMulNBits' g_idx is deprecated, so A's columns are gathered into the packed order.
    permutation = edit.addInitializer(
      makeTensor(
        edit.fresh(`${base}_input_order`),
        DT.INT64,
        [K],
        BigInt64Array.from(nb.inputPermutation, BigInt),
      ),
    );
    bytes += K * 8;
  }
  return { inputs, attrs: nbitsAttrs(nb, K, o), columnScales, permutation, bytes, relErr: 0 };
}

function nbitsAttrs(nb: MatMulNBitsWeight, K: number, o: WeightOnlyOptions): Record<string, number> {
  return {
    K,
    N: nb.N,
    bits: nb.bits,
    block_size: nb.blockSize,
    ...(o.accuracyLevel !== undefined && { accuracy_level: o.accuracyLevel }),
  };
}

/** Gather(T, ids) on a [V, D] float table → GatherBlockQuantized with RTN codes on the same grid. */
async function gatherToBlockQuantized(
  model: OnnxModel,
  edit: GraphEditor,
  node: NodeProto,
  gridFor: (cols: number) => IntGrid | undefined,
  o: WeightOnlyOptions,
): Promise<{ node: NodeProto; report: NodeReport; bytes: number } | string> {
  const table = model.initializer(node.input[0]!)!;
  if (table.dataType !== DT.FLOAT && table.dataType !== DT.FLOAT16)
    return `table is not float (type ${table.dataType})`;
  const bits = o.bits;
  if (!(GATHER_BITS as readonly number[]).includes(bits))
    return `GatherBlockQuantized is used at 4 and 8 bits here, not ${bits}`;
  const [V, D] = dimsOf(table) as [number, number];
  if (V === 0 || D === 0) return `table is empty [${V}, ${D}]`;
  if ((D * bits) % 8 !== 0) return `row width ${D} does not fill whole bytes at ${bits} bits`;
  const grid = gridFor(D);
  if (!grid) return `per-channel block of ${D} columns exceeds ${MAX_BLOCK}`;
  const bs = grid.spec.groupSize;
  const D2 = Math.ceil(D / bs) * bs;
  const w = await model.floatData(table);
  assertFiniteWeights(new Map([[table.name, { shape: [V, D], data: w }]]));
  const q = quantizeRtn({ shape: [V, D2], data: padColumns(w, V, D, D2) }, grid, node.name);
  const deq = dequantize(q);
  assertFiniteQuantized(table.name, q, deq);
  const codes = unpackCodes(q);
  const nb = D2 / bs;
  const rowBytes = (D * bits) / 8;
  const data = new Uint8Array(V * rowBytes);
  for (let v = 0; v < V; v++) data.set(packBits(codes.subarray(v * D2, v * D2 + D), bits), v * rowBytes);
  const base = table.name;
  const inputs = [
    edit.addInitializer(makeTensor(edit.fresh(`${base}_Q${bits}`), DT.UINT8, [V, rowBytes], data)),
    node.input[1]!,
    edit.addInitializer(
      makeTensor(edit.fresh(`${base}_scales`), table.dataType, [V, nb], floatBytes(q.scales, table.dataType)),
    ),
  ];
  let bytes = data.byteLength + q.scales.length * (table.dataType === DT.FLOAT16 ? 2 : 4);
  if (!o.symmetric) {
    const zRow = Math.ceil((nb * bits) / 8);
    const zp = new Uint8Array(V * zRow);
    for (let v = 0; v < V; v++) zp.set(packBits(q.zeros.subarray(v * nb, (v + 1) * nb), bits), v * zRow);
    inputs.push(edit.addInitializer(makeTensor(edit.fresh(`${base}_zp`), DT.UINT8, [V, zRow], zp)));
    bytes += zp.byteLength;
  }
  edit.importMicrosoftDomain();
  const name = node.name || node.output[0]!;
  return {
    node: makeNode(
      'GatherBlockQuantized',
      inputs,
      [node.output[0]!],
      name,
      { gather_axis: 0, quantize_axis: 1, block_size: bs, bits },
      MS_DOMAIN,
    ),
    report: {
      node: name,
      op: 'Gather',
      result: `GatherBlockQuantized b${bits} bs${bs}${o.symmetric ? '' : ' zp'}`,
      K: D,
      N: V,
      method: 'rtn (table)',
      relativeError: relativeError(w, q, deq, D),
    },
    bytes,
  };
}
