/**
 * Small graph-editing helpers shared by the rewrite passes: node attributes, fresh names,
 * new nodes and initializers, pattern selection of nodes and pruning of initializers no node
 * reads any more. Passes edit the ModelProto in place, top-level graph only (subgraphs of
 * If/Loop/Scan are left as they are).
 */
import { UsageError } from '../errors.js';
import {
  type AttributeProto,
  type NodeProto,
  num,
  type OnnxModel,
  onnx,
  type TensorProto,
} from './model-file.js';

export const MS_DOMAIN = 'com.microsoft';

type AttrValue = number | number[] | string | { f: number };

export function attribute(name: string, value: AttrValue): AttributeProto {
  const A = onnx.AttributeProto.AttributeType;
  const make = (p: onnxProtoAttr) => onnx.AttributeProto.create(p) as unknown as AttributeProto;
  if (typeof value === 'string') return make({ name, type: A.STRING, s: new TextEncoder().encode(value) });
  if (Array.isArray(value)) return make({ name, type: A.INTS, ints: value });
  if (typeof value === 'object') return make({ name, type: A.FLOAT, f: value.f });
  return make({ name, type: A.INT, i: value });
}

type onnxProtoAttr = Parameters<typeof onnx.AttributeProto.create>[0];

/** An INT or FLOAT attribute's value, or `fallback` when absent. */
export function attrNumber(node: NodeProto, name: string, fallback: number): number {
  const a = node.attribute.find((x) => x.name === name);
  if (!a) return fallback;
  return a.type === onnx.AttributeProto.AttributeType.FLOAT ? a.f : num(a.i);
}

export function makeNode(
  opType: string,
  inputs: string[],
  outputs: string[],
  name: string,
  attributes: Record<string, AttrValue> = {},
  domain = '',
): NodeProto {
  return onnx.NodeProto.create({
    opType,
    input: inputs,
    output: outputs,
    name,
    domain,
    attribute: Object.entries(attributes).map(([k, v]) => attribute(k, v)),
  }) as unknown as NodeProto;
}

/** Node selection by name: a node is rewritten when it matches an include pattern (or none are given) and no exclude pattern. */
export interface NodeFilter {
  include?: RegExp[];
  exclude?: RegExp[];
}

export function selected(node: NodeProto, filter: NodeFilter): boolean {
  const name = node.name ?? '';
  if (filter.include?.length && !filter.include.some((r) => r.test(name))) return false;
  return !filter.exclude?.some((r) => r.test(name));
}

/** `--include`/`--exclude` values: comma-separated regular expressions on node names. */
export function parsePatterns(value: string | undefined, field: string): RegExp[] | undefined {
  if (!value) return undefined;
  return value.split(',').map((p) => {
    try {
      return new RegExp(p);
    } catch (e) {
      throw new UsageError(`invalid node-name pattern: ${(e as Error).message}`, { field, got: p });
    }
  });
}

/** Fresh names and node/initializer bookkeeping over one model. */
export class GraphEditor {
  private readonly used = new Set<string>();

  constructor(readonly model: OnnxModel) {
    const g = model.graph;
    for (const n of g.node) {
      if (n.name) this.used.add(n.name);
      for (const o of n.output) this.used.add(o);
    }
    for (const t of g.initializer) this.used.add(t.name);
    for (const v of [...g.input, ...g.output]) this.used.add(v.name);
  }

  /** `base`, or `base_1`, `base_2`, ... if taken. */
  fresh(base: string): string {
    let name = base;
    for (let i = 1; this.used.has(name); i++) name = `${base}_${i}`;
    this.used.add(name);
    return name;
  }

  addInitializer(t: TensorProto): string {
    this.model.graph.initializer.push(t);
    this.model.invalidate();
    return t.name;
  }

  /** Make sure the model imports com.microsoft (version 1) for contrib operators. */
  importMicrosoftDomain(): void {
    const p = this.model.proto;
    if (!p.opsetImport.some((o) => o.domain === MS_DOMAIN))
      p.opsetImport.push(onnx.OperatorSetIdProto.create({ domain: MS_DOMAIN, version: 1 }));
  }

  /** Drop initializers that no node, graph output or subgraph reads (the float weights a pass replaced). */
  pruneInitializers(): number {
    const g = this.model.graph;
    const read = new Set<string>(g.output.map((o) => o.name));
    const visit = (nodes: NodeProto[]) => {
      for (const n of nodes) {
        for (const i of n.input) read.add(i);
        for (const a of n.attribute) {
          if (a.g) visit(a.g.node);
          for (const sg of a.graphs) visit(sg.node);
        }
      }
    };
    visit(g.node);
    const before = g.initializer.length;
    const removed = new Set(g.initializer.filter((t) => !read.has(t.name)).map((t) => t.name));
    g.initializer = g.initializer.filter((t) => !removed.has(t.name));
    // Graph inputs that shadowed a removed initializer (IR < 4 models list initializers as inputs) go too.
    g.input = g.input.filter((i) => !removed.has(i.name));
    this.model.invalidate();
    return before - g.initializer.length;
  }
}

/** Names of the graph's tensors that come from initializers (constant inputs of nodes). */
export function isInitializer(model: OnnxModel, name: string): boolean {
  return name !== '' && model.initializer(name) !== undefined;
}
