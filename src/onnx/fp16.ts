/**
 * Float16 conversion of an ONNX graph, as transformers.js' fp16 / q4f16 files were made
 * (scripts/quantize.py → onnxconverter-common `convert_float_to_float16(keep_io_types=True)`):
 *
 *  - every FLOAT initializer and Constant becomes FLOAT16 (values beyond ±65504 saturate to it,
 *    onnxconverter's clamp, so −FLT_MAX attention biases stay finite; nonzero values below the
 *    smallest f16 subnormal become ±1e-7 → f16, as its `min_positive_val` does), Cast(to=FLOAT) and
 *    ConstantOfShape values follow;
 *  - graph inputs and outputs keep their types (keep_io_types): a Cast to f16 after each float
 *    input, a Cast to f32 before each float output. A decoder's past_key_values/present stay
 *    float32 at the interface, which is what transformers.js v4 feeds: it allocates the empty
 *    cache with the dtype the session reports for each past_key_values input
 *    (models/modeling_utils.js `addPastKeyValues`, from `session.inputMetadata`);
 *  - ops in BLOCKED_OPS run in fp32 between Casts (onnxconverter's default op block list, the
 *    ops without fp16 kernels).
 * Which tensors are float is inferred from the graph (types of inputs, initializers and the op
 * rules below), before anything is converted.
 */
import { f32ToF16 } from '../formats/half.js';
import { attrNumber, GraphEditor, makeNode } from './graph-edit.js';
import {
  type AttributeProto,
  DT,
  dimsOf,
  makeTensor,
  type NodeProto,
  type OnnxModel,
  onnx,
  type TensorProto,
} from './model-file.js';

/** onnxconverter-common's DEFAULT_OP_BLOCK_LIST (ops kept in fp32). */
export const BLOCKED_OPS = new Set([
  'ArrayFeatureExtractor',
  'Binarizer',
  'CastMap',
  'CategoryMapper',
  'DictVectorizer',
  'FeatureVectorizer',
  'Imputer',
  'LabelEncoder',
  'LinearClassifier',
  'LinearRegressor',
  'Normalizer',
  'OneHotEncoder',
  'RandomUniformLike',
  'SVMClassifier',
  'SVMRegressor',
  'Scaler',
  'TreeEnsembleClassifier',
  'TreeEnsembleRegressor',
  'ZipMap',
  'NonMaxSuppression',
  'TopK',
  'RoiAlign',
  'Range',
  'CumSum',
  'Min',
  'Max',
  'Upsample',
  // Float-only inputs in the ONNX spec regardless of the data type.
  'Resize',
  'DynamicQuantizeLinear',
]);

const F16_MAX = 65504;
/** onnxconverter-common's min_positive_val. */
const MIN_POSITIVE = 1e-7;

/** f16 bit pattern of x, saturated to ±65504, tiny nonzeros lifted to ±1e-7. */
function toF16Bits(x: number): number {
  let v = x;
  if (v > F16_MAX) v = F16_MAX;
  else if (v < -F16_MAX) v = -F16_MAX;
  else if (v !== 0 && Math.abs(v) < MIN_POSITIVE) v = Math.sign(v) * MIN_POSITIVE;
  return f32ToF16(v);
}

async function tensorToF16(model: OnnxModel, t: TensorProto): Promise<TensorProto> {
  const values = await model.floatData(t);
  const bits = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) bits[i] = toF16Bits(values[i]!);
  const out = makeTensor(t.name, DT.FLOAT16, dimsOf(t), bits);
  return out;
}

function tensorAttribute(name: string, t: TensorProto): AttributeProto {
  return onnx.AttributeProto.create({
    name,
    type: onnx.AttributeProto.AttributeType.TENSOR,
    t,
  }) as unknown as AttributeProto;
}

/** Element type of every tensor the graph computes (inputs, initializers, node outputs). */
export function inferElementTypes(model: OnnxModel): Map<string, number> {
  const g = model.graph;
  const types = new Map<string, number>();
  for (const i of g.input) if (i.type?.tensorType?.elemType) types.set(i.name, i.type.tensorType.elemType);
  for (const t of g.initializer) types.set(t.name, t.dataType);
  const first = (n: NodeProto, from = 0) => {
    for (const i of n.input.slice(from)) if (i && types.has(i)) return types.get(i)!;
    return undefined;
  };
  for (const n of g.node) {
    const set = (i: number, t: number | undefined) => {
      if (n.output[i] && t !== undefined) types.set(n.output[i]!, t);
    };
    switch (n.opType) {
      case 'Shape':
      case 'Size':
      case 'NonZero':
      case 'ArgMax':
      case 'ArgMin':
        set(0, DT.INT64);
        break;
      case 'Equal':
      case 'Less':
      case 'LessOrEqual':
      case 'Greater':
      case 'GreaterOrEqual':
      case 'And':
      case 'Or':
      case 'Xor':
      case 'Not':
      case 'IsNaN':
      case 'IsInf':
        set(0, DT.BOOL);
        break;
      case 'Cast':
        set(0, attrNumber(n, 'to', DT.FLOAT));
        break;
      case 'Constant': {
        const a = n.attribute[0];
        set(
          0,
          a?.t ? a.t.dataType : a?.name === 'value_float' || a?.name === 'value_floats' ? DT.FLOAT : DT.INT64,
        );
        break;
      }
      case 'ConstantOfShape':
        set(0, n.attribute.find((a) => a.name === 'value')?.t?.dataType ?? DT.FLOAT);
        break;
      case 'Where':
        set(0, first(n, 1));
        break;
      case 'DynamicQuantizeLinear':
        set(0, DT.UINT8);
        set(1, DT.FLOAT);
        set(2, DT.UINT8);
        break;
      case 'MatMulInteger':
        set(0, DT.INT32);
        break;
      case 'GatherBlockQuantized':
        set(0, types.get(n.input[2]!));
        break;
      case 'TopK':
        set(0, first(n));
        set(1, DT.INT64);
        break;
      default:
        for (let i = 0; i < n.output.length; i++) set(i, first(n));
    }
  }
  return types;
}

export interface Fp16Report {
  convertedInitializers: number;
  /** Nodes left in fp32 between Casts. */
  blockedNodes: string[];
}

/** Convert `model` to float16 in place, keeping its input and output types. */
export async function convertToFloat16(
  model: OnnxModel,
  blocked: ReadonlySet<string> = BLOCKED_OPS,
): Promise<Fp16Report> {
  const g = model.graph;
  const types = inferElementTypes(model);
  const edit = new GraphEditor(model);
  const isFloat = (name: string) => types.get(name) === DT.FLOAT;
  let convertedInitializers = 0;
  for (let i = 0; i < g.initializer.length; i++) {
    const t = g.initializer[i]!;
    if (t.dataType !== DT.FLOAT) continue;
    g.initializer[i] = await tensorToF16(model, t);
    convertedInitializers++;
  }
  model.invalidate();

  const head: NodeProto[] = [];
  const tail: NodeProto[] = [];
  // keep_io_types: graph inputs stay float32 and are cast once; every reader uses the cast.
  const renamedInputs = new Map<string, string>();
  for (const input of g.input) {
    if (!isFloat(input.name) || model.initializer(input.name)) continue;
    const cast = edit.fresh(`${input.name}_fp16`);
    head.push(
      makeNode('Cast', [input.name], [cast], edit.fresh(`${input.name}_CastToFp16`), { to: DT.FLOAT16 }),
    );
    renamedInputs.set(input.name, cast);
  }
  const outputs = new Set(g.output.filter((o) => isFloat(o.name)).map((o) => o.name));
  const renamedOutputs = new Map<string, string>();
  for (const name of outputs) {
    if (renamedInputs.has(name)) continue;
    const inner = edit.fresh(`${name}_fp16`);
    renamedOutputs.set(name, inner);
    tail.push(makeNode('Cast', [inner], [name], edit.fresh(`${name}_CastToFp32`), { to: DT.FLOAT }));
  }

  const body: NodeProto[] = [];
  const blockedNodes: string[] = [];
  for (const n of g.node) {
    n.input = n.input.map((i) => renamedInputs.get(i) ?? renamedOutputs.get(i) ?? i);
    n.output = n.output.map((o) => renamedOutputs.get(o) ?? o);
    if (n.opType === 'Cast' && attrNumber(n, 'to', 0) === DT.FLOAT) {
      for (const a of n.attribute) if (a.name === 'to') a.i = DT.FLOAT16;
    }
    for (const a of n.attribute) {
      if ((n.opType === 'Constant' || n.opType === 'ConstantOfShape') && a.t?.dataType === DT.FLOAT)
        a.t = await tensorToF16(model, a.t);
    }
    const scalar = n.opType === 'Constant' ? n.attribute.findIndex((a) => a.name === 'value_float') : -1;
    if (scalar >= 0) {
      n.attribute[scalar] = tensorAttribute(
        'value',
        makeTensor('', DT.FLOAT16, [], Uint16Array.of(toF16Bits(n.attribute[scalar]!.f))),
      );
    }
    if (n.opType === 'ConstantOfShape' && !n.attribute.some((a) => a.name === 'value')) {
      // The default value is a float32 zero; an fp16 graph needs an fp16 one.
      n.attribute.push(tensorAttribute('value', makeTensor('', DT.FLOAT16, [1], Uint16Array.of(0))));
    }
    if (!blocked.has(n.opType)) {
      body.push(n);
      continue;
    }
    // Blocked op: its float inputs go back to fp32 and its float outputs come back as fp16.
    const original = { input: [...n.input], output: [...n.output] };
    n.input = original.input.map((i, k) => {
      const source = [...renamedInputs].find(([, v]) => v === i)?.[0] ?? i;
      if (!i || (!isFloat(source) && !isFloat(i))) return i;
      const cast = edit.fresh(`${n.name}/input_${k}_fp32`);
      body.push(makeNode('Cast', [i], [cast], edit.fresh(`${n.name}/CastInput${k}`), { to: DT.FLOAT }));
      return cast;
    });
    const after: NodeProto[] = [];
    n.output = original.output.map((o, k) => {
      const source = [...renamedOutputs].find(([, v]) => v === o)?.[0] ?? o;
      if (!o || !isFloat(source)) return o;
      const raw = edit.fresh(`${n.name}/output_${k}_fp32`);
      after.push(makeNode('Cast', [raw], [o], edit.fresh(`${n.name}/CastOutput${k}`), { to: DT.FLOAT16 }));
      return raw;
    });
    if (after.length > 0 || n.input.some((i, k) => i !== original.input[k])) blockedNodes.push(n.name);
    body.push(n, ...after);
  }
  g.node = [...head, ...body, ...tail];
  // Intermediate value_info types are now stale; they are optional shape hints.
  g.valueInfo = [];
  return { convertedInitializers, blockedNodes };
}
