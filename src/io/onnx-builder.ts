/**
 * A small typed builder for ONNX ModelProto bytes (through the onnx-proto protobuf
 * binding). Used by the compute engine for its per-operation graphs and by exporters.
 */
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;

export type ElemType = 'float32' | 'float64' | 'int64' | 'uint8' | 'float16' | 'int32';

const ELEM_TYPES: Record<ElemType, number> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  float64: onnx.TensorProto.DataType.DOUBLE,
  int64: onnx.TensorProto.DataType.INT64,
  uint8: onnx.TensorProto.DataType.UINT8,
  float16: onnx.TensorProto.DataType.FLOAT16,
  int32: onnx.TensorProto.DataType.INT32,
};

/** A dimension: a fixed size or a symbolic name. */
export type Dim = number | string;

export interface ValueSpec {
  name: string;
  type: ElemType;
  dims: Dim[];
}

export interface NodeSpec {
  op: string;
  inputs: string[];
  outputs: string[];
  domain?: string;
  attributes?: Record<string, AttrValue>;
}

export interface GraphSpec {
  name: string;
  nodes: NodeSpec[];
  inputs: ValueSpec[];
  outputs: ValueSpec[];
  /** Constant float32 initializers. */
  constants?: { name: string; dims: number[]; values: Float32Array }[];
  opset?: number;
}

function valueInfo(v: ValueSpec) {
  return onnx.ValueInfoProto.create({
    name: v.name,
    type: {
      tensorType: {
        elemType: ELEM_TYPES[v.type],
        shape: { dim: v.dims.map((d) => (typeof d === 'string' ? { dimParam: d } : { dimValue: d })) },
      },
    },
  });
}

function attribute(name: string, value: number | number[] | string) {
  const A = onnx.AttributeProto.AttributeType;
  if (typeof value === 'string') return { name, type: A.STRING, s: new TextEncoder().encode(value) };
  if (Array.isArray(value)) return { name, type: A.INTS, ints: value };
  if (Number.isInteger(value)) return { name, type: A.INT, i: value };
  return { name, type: A.FLOAT, f: value };
}

/** Encode a per-operation graph: float32 constants inline, as buildOnnxModelExternal without a plan. */
export function buildOnnxModel(spec: GraphSpec): Uint8Array {
  return buildOnnxModelExternal({
    name: spec.name,
    nodes: spec.nodes,
    inputs: spec.inputs,
    outputs: spec.outputs,
    initializers: (spec.constants ?? []).map((c) => ({
      name: c.name,
      type: 'float32',
      dims: c.dims,
      data: c.values,
    })),
    opset: spec.opset,
  }).model;
}

// ---------- Models with typed initializers and external data (exporters) ----------

/** Attribute values of exported graphs; `{ f }` forces a FLOAT attribute even for integral values. */
export type AttrValue = number | number[] | string | { f: number } | { floats: number[] };

export interface ExportNodeSpec {
  op: string;
  inputs: string[];
  outputs: string[];
  domain?: string;
  name?: string;
  attributes?: Record<string, AttrValue>;
}

/** A constant tensor of any element type; `data` holds its little-endian bytes (row-major). */
export interface InitializerSpec {
  name: string;
  type: ElemType | 'bool';
  dims: number[];
  data: ArrayBufferView;
}

export interface ExportGraphSpec {
  name: string;
  nodes: ExportNodeSpec[];
  inputs: ValueSpec[];
  outputs: ValueSpec[];
  initializers: InitializerSpec[];
  /** Default-domain opset (default 17). */
  opset?: number;
  /** Key/value pairs stored as ModelProto.metadata_props. */
  metadata?: Record<string, string>;
  docString?: string;
}

/** Where initializers larger than `threshold` bytes go instead of the protobuf. */
export interface ExternalDataPlan {
  /** Base file name, e.g. `model.onnx_data`; chunks after the first get `_1`, `_2`, ... */
  location: string;
  /** Tensors of at least this many bytes are stored externally (onnx's default is 1024). */
  threshold: number;
  /** Largest chunk file; a tensor never straddles two chunks. */
  maxChunkBytes: number;
}

/** One external data file: the tensors in it and their byte offsets. */
export interface ExternalChunk {
  file: string;
  bytes: number;
  pieces: { offset: number; data: ArrayBufferView }[];
}

const EXPORT_ELEM_TYPES: Record<InitializerSpec['type'], number> = {
  ...ELEM_TYPES,
  bool: onnx.TensorProto.DataType.BOOL,
};

/**
 * Offsets of large external tensors are page-aligned so that onnxruntime can map them in
 * place (the onnx package's `save_model` aligns tensors above 1 MB to 4096 bytes likewise).
 */
const EXTERNAL_PAGE = 4096;
const EXTERNAL_SMALL_ALIGN = 64;

function exportAttribute(name: string, value: AttrValue) {
  const A = onnx.AttributeProto.AttributeType;
  if (typeof value === 'object' && !Array.isArray(value)) {
    return 'f' in value
      ? { name, type: A.FLOAT, f: value.f }
      : { name, type: A.FLOATS, floats: value.floats };
  }
  return attribute(name, value);
}

function bytesOf(v: ArrayBufferView): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

/**
 * Encode a ModelProto whose initializers may be of any element type, optionally moving the
 * large ones to external data files (ONNX external data: `data_location = EXTERNAL` with
 * `location`, `offset`, `length` entries, offsets relative to the start of the file).
 * Returns the protobuf bytes and, when external data is used, the chunk files to write.
 */
export function buildOnnxModelExternal(
  spec: ExportGraphSpec,
  external?: ExternalDataPlan,
): { model: Uint8Array; chunks: ExternalChunk[] } {
  const chunks: ExternalChunk[] = [];
  const place = (data: ArrayBufferView) => {
    const align = data.byteLength >= 1 << 20 ? EXTERNAL_PAGE : EXTERNAL_SMALL_ALIGN;
    let chunk = chunks.at(-1);
    const offsetIn = (c: ExternalChunk) => Math.ceil(c.bytes / align) * align;
    if (!chunk || (chunk.pieces.length > 0 && offsetIn(chunk) + data.byteLength > external!.maxChunkBytes)) {
      const file = chunks.length === 0 ? external!.location : `${external!.location}_${chunks.length}`;
      chunk = { file, bytes: 0, pieces: [] };
      chunks.push(chunk);
    }
    const offset = offsetIn(chunk);
    chunk.pieces.push({ offset, data });
    chunk.bytes = offset + data.byteLength;
    return { file: chunk.file, offset };
  };
  const initializer = spec.initializers.map((t) => {
    const base = { name: t.name, dims: t.dims, dataType: EXPORT_ELEM_TYPES[t.type] };
    if (!external || t.data.byteLength < external.threshold)
      return onnx.TensorProto.create({ ...base, rawData: bytesOf(t.data) });
    const { file, offset } = place(t.data);
    return onnx.TensorProto.create({
      ...base,
      dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
      externalData: [
        { key: 'location', value: file },
        { key: 'offset', value: String(offset) },
        { key: 'length', value: String(t.data.byteLength) },
      ],
    });
  });
  const graph = onnx.GraphProto.create({
    name: spec.name,
    node: spec.nodes.map((n, i) =>
      onnx.NodeProto.create({
        name: n.name ?? `${n.op}_${i}`,
        opType: n.op,
        domain: n.domain ?? '',
        input: n.inputs,
        output: n.outputs,
        attribute: Object.entries(n.attributes ?? {}).map(([k, v]) => exportAttribute(k, v)),
      }),
    ),
    input: spec.inputs.map(valueInfo),
    output: spec.outputs.map(valueInfo),
    initializer,
  });
  const model = onnx.ModelProto.create({
    irVersion: 8,
    producerName: 'ptqkit',
    docString: spec.docString ?? '',
    opsetImport: [
      { domain: '', version: spec.opset ?? 17 },
      // Contrib operators (MatMulNBits, GroupQueryAttention, ...) live in com.microsoft, version 1.
      ...(spec.nodes.some((n) => n.domain === 'com.microsoft')
        ? [{ domain: 'com.microsoft', version: 1 }]
        : []),
    ],
    metadataProps: Object.entries(spec.metadata ?? {}).map(([key, value]) => ({ key, value })),
    graph,
  });
  return { model: onnx.ModelProto.encode(model).finish(), chunks };
}

/**
 * Accumulates the nodes and initializers of an exported graph with unique, scoped names
 * (`/model/layers.0/attn/MatMul_12`), so graph code reads as a sequence of operations.
 */
export class GraphAssembler {
  readonly nodes: ExportNodeSpec[] = [];
  readonly initializers: InitializerSpec[] = [];
  /** Prefix of the names of nodes added next, e.g. `/model/layers.0/attn`. */
  scope = '';
  private counter = 0;
  private readonly constants = new Map<string, string>();

  /** Add a node with `outputs` fresh outputs (or the given names); returns the output names. */
  op(
    op: string,
    inputs: string[],
    attributes: Record<string, AttrValue> = {},
    options: { domain?: string; outputs?: number | string[] } = {},
  ): string[] {
    const name = `${this.scope}/${op}_${this.counter++}`;
    const outputs = Array.isArray(options.outputs)
      ? options.outputs
      : Array.from({ length: options.outputs ?? 1 }, (_, i) => `${name}/output_${i}`);
    this.nodes.push({ op, name, inputs, outputs, attributes, domain: options.domain });
    return outputs;
  }

  /** A node with one output. */
  op1(op: string, inputs: string[], attributes: Record<string, AttrValue> = {}, domain?: string): string {
    return this.op(op, inputs, attributes, { domain })[0]!;
  }

  initializer(name: string, type: InitializerSpec['type'], dims: number[], data: ArrayBufferView): string {
    this.initializers.push({ name, type, dims, data });
    return name;
  }

  /** A small int64 constant (shapes, axes), shared by every node that needs the same values. */
  int64(values: number[], dims: number[] = [values.length]): string {
    return this.constant('int64', dims, values, () => BigInt64Array.from(values.map(BigInt)));
  }

  /** A small float32 constant, shared like `int64`. */
  float32(values: number[], dims: number[] = [values.length]): string {
    return this.constant('float32', dims, values, () => Float32Array.from(values));
  }

  private constant(
    type: 'int64' | 'float32',
    dims: number[],
    values: number[],
    data: () => ArrayBufferView,
  ): string {
    const key = `${type}:${dims}:${values}`;
    let name = this.constants.get(key);
    if (!name) {
      name = this.initializer(`/const/${type}_${this.constants.size}`, type, dims, data());
      this.constants.set(key, name);
    }
    return name;
  }
}
