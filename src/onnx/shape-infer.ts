/**
 * Static shapes of a graph's tensors, as far as the graph fixes them, and the check that every
 * weight product multiplies by an initializer of the shape its input asks for.
 *
 * Shapes come from the graph inputs (dim_value; dim_param is unknown), the initializers and the
 * common operators below, propagated in node order (ONNX graphs are topologically sorted);
 * value_info fills in what the operators leave unknown. A dimension is a number or undefined
 * (unknown), a shape is undefined when even its rank is unknown. Nothing here ever guesses: an
 * operator not listed gives unknown outputs, so a check on unknown dimensions passes.
 *
 * The check (assertWeightShapes): for MatMul(A, B) and Gemm(A, B) with B an initializer, A's
 * contracted dimension, when known, equals B's (MatMul: B [K, N] rows; Gemm: K by transA and
 * transB). onnxruntime refuses such a graph at load ("Incompatible dimensions for matrix
 * multiplication"); a weight whose dims were rewritten ([64, 256] stored as [256, 64]) would
 * otherwise be quantized into a MatMulNBits node with the wrong K and N.
 */
import { ShapeError } from '../errors.js';
import { attrNumber } from './graph-edit.js';
import { DT, dimsOf, type NodeProto, num, type OnnxModel, type TensorProto } from './model-file.js';

export type Dim = number | undefined;
export type Shape = Dim[];

/** Operators whose first output has their first input's shape. */
const SAME_SHAPE = new Set([
  'Identity',
  'Cast',
  'CastLike',
  'Relu',
  'LeakyRelu',
  'Elu',
  'Selu',
  'Celu',
  'Gelu',
  'FastGelu',
  'QuickGelu',
  'Sigmoid',
  'HardSigmoid',
  'HardSwish',
  'Tanh',
  'Erf',
  'Exp',
  'Log',
  'Sqrt',
  'Neg',
  'Abs',
  'Reciprocal',
  'Softplus',
  'Softsign',
  'Mish',
  'Sin',
  'Cos',
  'Floor',
  'Ceil',
  'Round',
  'Sign',
  'Not',
  'IsNaN',
  'IsInf',
  'Clip',
  'Softmax',
  'LogSoftmax',
  'Hardmax',
  'CumSum',
  'Dropout',
  'LayerNormalization',
  'SimplifiedLayerNormalization',
  'SkipLayerNormalization',
  'SkipSimplifiedLayerNormalization',
  'RMSNormalization',
  'InstanceNormalization',
  'BatchNormalization',
  'LpNormalization',
  'RotaryEmbedding',
  'QuantizeLinear',
  'DequantizeLinear',
]);

/** Element-wise operators with multidirectional (numpy) broadcasting over all their inputs. */
const BROADCAST = new Set([
  'Add',
  'Sub',
  'Mul',
  'Div',
  'Pow',
  'Mod',
  'PRelu',
  'BiasGelu',
  'Equal',
  'Less',
  'LessOrEqual',
  'Greater',
  'GreaterOrEqual',
  'And',
  'Or',
  'Xor',
  'Where',
  'Max',
  'Min',
  'Sum',
  'Mean',
]);

const REDUCE = new Set([
  'ReduceMean',
  'ReduceSum',
  'ReduceMax',
  'ReduceMin',
  'ReduceProd',
  'ReduceL1',
  'ReduceL2',
  'ReduceSumSquare',
  'ReduceLogSum',
  'ReduceLogSumExp',
]);

/** Integer values of a small inline int64/int32 initializer (shapes, axes), or undefined. */
function inlineInts(t: TensorProto | undefined): number[] | undefined {
  if (!t || t.dataLocation === 1) return undefined;
  let dims: number[];
  try {
    dims = dimsOf(t);
  } catch {
    return undefined;
  }
  if (dims.length > 1 || dims.some((d) => d < 0)) return undefined;
  const n = dims.length === 0 ? 1 : dims[0]!;
  const raw = t.rawData && t.rawData.byteLength > 0 ? t.rawData : undefined;
  const view = raw ? new DataView(raw.buffer, raw.byteOffset, raw.byteLength) : undefined;
  try {
    if (t.dataType === DT.INT64) {
      if (view)
        return view.byteLength === n * 8
          ? Array.from({ length: n }, (_, i) => Number(view.getBigInt64(i * 8, true)))
          : undefined;
      return t.int64Data.length === n ? t.int64Data.map((v) => num(v)) : undefined;
    }
    if (t.dataType === DT.INT32) {
      if (view)
        return view.byteLength === n * 4
          ? Array.from({ length: n }, (_, i) => view.getInt32(i * 4, true))
          : undefined;
      return t.int32Data.length === n ? [...t.int32Data] : undefined;
    }
  } catch {
    return undefined;
  }
  return undefined;
}

function broadcast(shapes: (Shape | undefined)[]): Shape | undefined {
  if (shapes.some((s) => !s)) return undefined;
  const all = shapes as Shape[];
  const rank = Math.max(0, ...all.map((s) => s.length));
  const out: Shape = [];
  for (let i = 0; i < rank; i++) {
    let known: number | undefined;
    let unknown = false;
    let conflict = false;
    for (const s of all) {
      const j = s.length - rank + i;
      if (j < 0) continue; // absent: broadcasts as 1
      const d = s[j];
      if (d === undefined) unknown = true;
      else if (d !== 1) {
        if (known !== undefined && known !== d) conflict = true;
        known = d;
      }
    }
    // An unknown dim against a known d ≠ 1 is d (or the graph is invalid); against only 1s it is unknown.
    out.push(conflict ? undefined : known !== undefined ? known : unknown ? undefined : 1);
  }
  return out;
}

const normAxis = (axis: number, rank: number) => (axis < 0 ? axis + rank : axis);

/** The product of known dims, or undefined when one is unknown. */
function product(dims: Shape): number | undefined {
  let p = 1;
  for (const d of dims) {
    if (d === undefined) return undefined;
    p *= d;
  }
  return p;
}

/** A declared dimension: dim_value when positive, else unknown (dim_param, or not set). */
function declaredDim(d: { dimValue?: number | { toNumber(): number } | null }): Dim {
  try {
    const v = num(d.dimValue);
    return v > 0 ? v : undefined;
  } catch {
    return undefined;
  }
}

function intsAttr(node: NodeProto, name: string): number[] | undefined {
  const a = node.attribute.find((x) => x.name === name);
  return a ? a.ints.map((v) => num(v)) : undefined;
}

/** Shapes of the top-level graph's tensors (see the file comment for what is known). */
export function inferShapes(model: OnnxModel): Map<string, Shape> {
  const g = model.graph;
  const shapes = new Map<string, Shape>();
  /** Values of small integer tensors (shapes, axes): constants, and Shape outputs with their unknown dims. */
  const values = new Map<string, Dim[]>();
  for (const input of g.input) {
    const shape = input.type?.tensorType?.shape;
    if (!shape) continue;
    shapes.set(input.name, (shape.dim ?? []).map(declaredDim));
  }
  for (const t of g.initializer) {
    try {
      shapes.set(t.name, dimsOf(t));
    } catch {
      shapes.delete(t.name);
    }
  }
  const hints = new Map<string, Shape>();
  for (const v of [...g.valueInfo, ...g.output]) {
    const shape = v.type?.tensorType?.shape;
    if (shape) hints.set(v.name, (shape.dim ?? []).map(declaredDim));
  }
  const valuesOf = (name: string | undefined) =>
    name ? (values.get(name) ?? inlineInts(model.initializer(name))) : undefined;

  for (const n of g.node) {
    const s = (i: number) => (n.input[i] ? shapes.get(n.input[i]!) : undefined);
    let out: Shape | undefined;
    try {
      out = nodeShape(n, s, valuesOf);
      const v = nodeValues(n, s, valuesOf);
      if (v && n.output[0]) values.set(n.output[0], v);
    } catch {
      out = undefined;
    }
    const name = n.output[0];
    if (!name) continue;
    const shape = out ?? hints.get(name);
    if (shape) shapes.set(name, shape);
    // Outputs after the first: value_info only.
    for (const o of n.output.slice(1)) {
      const h = hints.get(o);
      if (o && h) shapes.set(o, h);
    }
  }
  return shapes;
}

/**
 * The values of a node's first output when it computes a small integer tensor from shapes and
 * constants (onnxruntime's data propagation, the usual ops around a dynamic Reshape).
 */
function nodeValues(
  n: NodeProto,
  s: (i: number) => Shape | undefined,
  valuesOf: (name: string | undefined) => Dim[] | undefined,
): Dim[] | undefined {
  if (n.domain && n.domain !== 'ai.onnx') return undefined;
  switch (n.opType) {
    case 'Constant': {
      const t = n.attribute.find((a) => a.name === 'value')?.t;
      return t ? inlineInts(t) : undefined;
    }
    case 'Shape': {
      const x = s(0);
      if (!x) return undefined;
      const start = normAxis(attrNumber(n, 'start', 0), x.length);
      const end = n.attribute.some((a) => a.name === 'end')
        ? normAxis(attrNumber(n, 'end', 0), x.length)
        : x.length;
      return x.slice(Math.max(0, start), Math.min(x.length, end));
    }
    case 'Identity':
    case 'Cast':
    case 'Squeeze':
    case 'Unsqueeze':
      return valuesOf(n.input[0]);
    case 'Concat': {
      const parts = n.input.map((i) => valuesOf(i));
      return parts.every((p) => p) ? (parts as Dim[][]).flat() : undefined;
    }
    case 'Gather': {
      const data = valuesOf(n.input[0]);
      const idx = valuesOf(n.input[1]);
      if (!data || !idx || attrNumber(n, 'axis', 0) !== 0 || idx.some((i) => i === undefined))
        return undefined;
      return idx.map((i) => data[normAxis(i!, data.length)]);
    }
    default:
      return undefined;
  }
}

/** The first output's shape of one node from its inputs' shapes, or undefined. */
function nodeShape(
  n: NodeProto,
  s: (i: number) => Shape | undefined,
  valuesOf: (name: string | undefined) => Dim[] | undefined,
): Shape | undefined {
  if (n.domain && n.domain !== 'ai.onnx' && n.domain !== 'com.microsoft') return undefined;
  /** Values that are all known (axes). */
  const ints = (name: string | undefined) => {
    const v = valuesOf(name);
    return v?.every((d) => d !== undefined) ? (v as number[]) : undefined;
  };
  const op = n.opType;
  if (SAME_SHAPE.has(op)) return s(0) && [...s(0)!];
  if (BROADCAST.has(op)) return broadcast(n.input.map((_, i) => s(i)));
  switch (op) {
    case 'MatMul': {
      const a = s(0);
      const b = s(1);
      if (!a || !b || a.length === 0 || b.length === 0) return undefined;
      const A = a.length === 1 ? [1, a[0]] : a;
      const B = b.length === 1 ? [b[0], 1] : b;
      const batch = broadcast([A.slice(0, -2), B.slice(0, -2)]);
      if (!batch) return undefined;
      return [...batch, ...(a.length === 1 ? [] : [A.at(-2)]), ...(b.length === 1 ? [] : [B.at(-1)])];
    }
    case 'Gemm': {
      const a = s(0);
      const b = s(1);
      if (!a || !b || a.length !== 2 || b.length !== 2) return undefined;
      const M = attrNumber(n, 'transA', 0) ? a[1] : a[0];
      const N = attrNumber(n, 'transB', 0) ? b[0] : b[1];
      return [M, N];
    }
    case 'MatMulNBits': {
      const a = s(0);
      return a && a.length > 0 ? [...a.slice(0, -1), attrNumber(n, 'N', 0)] : undefined;
    }
    case 'Gather':
    case 'GatherBlockQuantized': {
      const data = s(0);
      const idx = s(1);
      if (!data || !idx) return undefined;
      const axis = normAxis(attrNumber(n, op === 'Gather' ? 'axis' : 'gather_axis', 0), data.length);
      if (op === 'GatherBlockQuantized') return undefined; // packed data: the last dim is not the output's
      return [...data.slice(0, axis), ...idx, ...data.slice(axis + 1)];
    }
    case 'Transpose': {
      const x = s(0);
      if (!x) return undefined;
      const perm = intsAttr(n, 'perm') ?? x.map((_, i) => x.length - 1 - i);
      return perm.length === x.length ? perm.map((p) => x[p]) : undefined;
    }
    case 'Reshape': {
      const x = s(0);
      // Unknown entries come from Shape: actual dims, never the 0 / −1 placeholders' meaning.
      const target = valuesOf(n.input[1]);
      if (!target) return undefined;
      const allowZero = attrNumber(n, 'allowzero', 0) !== 0;
      const out: Shape = target.map((d, i) => (d === 0 && !allowZero ? x?.[i] : d === -1 ? undefined : d));
      const minus = target.indexOf(-1);
      if (minus >= 0 && x?.every((d) => d !== undefined)) {
        const total = product(x);
        const rest = product(out.filter((_, i) => i !== minus));
        if (total !== undefined && rest !== undefined && rest > 0 && total % rest === 0)
          out[minus] = total / rest;
      }
      return out.every((d) => d === undefined || d >= 0) ? out : undefined;
    }
    case 'Flatten': {
      const x = s(0);
      if (!x) return undefined;
      const axis = normAxis(attrNumber(n, 'axis', 1), x.length);
      return [product(x.slice(0, axis)), product(x.slice(axis))];
    }
    case 'Unsqueeze': {
      const x = s(0);
      const axes = ints(n.input[1]) ?? intsAttr(n, 'axes');
      if (!x || !axes) return undefined;
      const rank = x.length + axes.length;
      const set = new Set(axes.map((a) => normAxis(a, rank)));
      const out: Shape = [];
      let j = 0;
      for (let i = 0; i < rank; i++) out.push(set.has(i) ? 1 : x[j++]);
      return out;
    }
    case 'Squeeze': {
      const x = s(0);
      const axes = ints(n.input[1]) ?? intsAttr(n, 'axes');
      if (!x || !axes) return undefined;
      const set = new Set(axes.map((a) => normAxis(a, x.length)));
      return x.filter((_, i) => !set.has(i));
    }
    case 'Concat': {
      const parts = n.input.map((_, i) => s(i));
      if (parts.length === 0 || parts.some((p) => !p)) return undefined;
      const all = parts as Shape[];
      const axis = normAxis(attrNumber(n, 'axis', 0), all[0]!.length);
      if (all.some((x) => x.length !== all[0]!.length)) return undefined;
      return all[0]!.map((_, i) =>
        i === axis
          ? all.reduce((p: Dim, x) => (p === undefined || x[i] === undefined ? undefined : p + x[i]!), 0)
          : all.find((x) => x[i] !== undefined)?.[i],
      );
    }
    default:
      if (REDUCE.has(op)) {
        const x = s(0);
        if (!x) return undefined;
        const axes = ints(n.input[1]) ?? intsAttr(n, 'axes');
        const keep = attrNumber(n, 'keepdims', 1) !== 0;
        if (!axes || axes.length === 0) {
          if (attrNumber(n, 'noop_with_empty_axes', 0)) return [...x];
          return keep ? x.map(() => 1) : [];
        }
        const set = new Set(axes.map((a) => normAxis(a, x.length)));
        return keep ? x.map((d, i) => (set.has(i) ? 1 : d)) : x.filter((_, i) => !set.has(i));
      }
      return undefined;
  }
}

const show = (s: Shape) => `[${s.map((d) => (d === undefined ? '?' : String(d))).join(', ')}]`;

/**
 * The weight products whose inputs contradict their initializer weights, refused before a pass
 * rewrites them: MatMul(A, B) with A [..., K'] and B [K, N], K' ≠ K; Gemm likewise (by transA,
 * transB). `nodes` limits the check (default: every node of the top-level graph).
 */
export function assertWeightShapes(
  model: OnnxModel,
  nodes: readonly NodeProto[] = model.graph.node,
  shapes: Map<string, Shape> = inferShapes(model),
): void {
  for (const n of nodes) {
    if (n.domain && n.domain !== 'ai.onnx') continue;
    if (n.opType !== 'MatMul' && n.opType !== 'Gemm') continue;
    const b = n.input[1] ? model.initializer(n.input[1]) : undefined;
    const a = shapes.get(n.input[0]!);
    if (!b || !a || a.length === 0 || b.dims.length !== 2) continue;
    const dims = dimsOf(b);
    const gemm = n.opType === 'Gemm';
    const transB = gemm && attrNumber(n, 'transB', 0) !== 0;
    const K = transB ? dims[1]! : dims[0]!;
    const Ka = gemm && attrNumber(n, 'transA', 0) !== 0 ? a[0] : a.at(-1);
    if (Ka === undefined || Ka === K) continue;
    const name = n.name || n.output[0]!;
    throw new ShapeError(
      `${n.opType} node '${name}' multiplies its input '${n.input[0]}' ${show(a)} by this weight`,
      {
        file: model.file,
        field: b.name,
        expected: transB ? `[N, ${Ka}] (transB = 1)` : `[${Ka}, N] (rows = the input's last dimension)`,
        got: `[${dims.join(', ')}]`,
      },
    );
  }
}
