/**
 * The import check (#15 item 3): the files of src/ import each other in layers, and never in a
 * circle. Layers, from the bottom (a file may import its own layer and the layers below it):
 *
 *   0  errors.ts, tensor.ts, random.ts     plain types and helpers
 *   1  formats/, math/                      storage types (grids, number formats, quantized
 *                                           tensors, GGML blocks, GGUF names/mixes), Hadamard
 *   2  io/                                  file readers and writers
 *   3  compute/                             engines
 *   4  model/                               configs, architectures, sources, the decoder
 *   5  quant/                               methods, calibration, the pipeline
 *   6  onnx/                                the ONNX wing: graph files, MatMulNBits layout, float16,
 *                                           quantizing existing ONNX models
 *   7  eval/, export/                       measuring, writing other formats (export/onnx.ts uses
 *                                           the ONNX wing)
 *   8  cli/                                 the command line
 *   9  index.ts                             the package's face
 *
 * Edges are every relative specifier of a static `import ... from`, `export ... from`, a bare
 * `import '...'` and `import('...')` with a literal, type-only imports included (a type-only
 * circle still ties the files together). The specifiers are read by TypeScript's own scanner
 * (ts.preProcessFile), so import-shaped text inside strings and comments is not taken for one.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import ts from 'typescript';
import { REPO } from '../helpers.js';

/** file (path relative to src/, '/' separated) -> the files of src/ it imports. */
export type ImportGraph = Map<string, string[]>;

/** Layer of a file of src/, by its first path segment (see the table above). */
export const LAYERS: Record<string, number> = {
  'errors.ts': 0,
  'tensor.ts': 0,
  'random.ts': 0,
  formats: 1,
  math: 1,
  io: 2,
  compute: 3,
  model: 4,
  quant: 5,
  onnx: 6,
  eval: 7,
  export: 7,
  cli: 8,
  'index.ts': 9,
};

export function layerOf(file: string): number | undefined {
  return LAYERS[file.split('/')[0]!];
}

/** The relative specifiers a source text imports or re-exports from. */
export function relativeSpecifiers(source: string): string[] {
  const info = ts.preProcessFile(source, true, true);
  return info.importedFiles.map((f) => f.fileName).filter((s) => s.startsWith('./') || s.startsWith('../'));
}

function listTs(dir: string, base = dir): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...listTs(p, base));
    else if (e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts'))
      out.push(path.relative(base, p).split(path.sep).join('/'));
  }
  return out.sort();
}

/** Reads every src/**\/*.ts and resolves its relative specifiers ('./x.js' -> 'x.ts'). */
export function readGraph(srcDir: string): { graph: ImportGraph; unresolved: string[] } {
  const files = listTs(srcDir);
  const known = new Set(files);
  const graph: ImportGraph = new Map();
  const unresolved: string[] = [];
  for (const file of files) {
    const targets = new Set<string>();
    for (const spec of relativeSpecifiers(readFileSync(path.join(srcDir, file), 'utf8'))) {
      const joined = path.posix.normalize(path.posix.join(path.posix.dirname(file), spec));
      const candidates = [joined.replace(/\.js$/, '.ts'), joined, `${joined}.ts`, `${joined}/index.ts`];
      const hit = candidates.find((c) => known.has(c));
      if (hit) targets.add(hit);
      else unresolved.push(`${file} -> ${spec}`);
    }
    graph.set(file, [...targets].sort());
  }
  return { graph, unresolved };
}

/** Every circle of the graph, one per strongly connected component, as a closed path of files. */
export function findCycles(graph: ImportGraph): string[][] {
  // Tarjan's strongly connected components, then one concrete loop through each component.
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const components: string[][] = [];
  const strong = (v: string): void => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        strong(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const comp: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        comp.push(w);
      } while (w !== v);
      if (comp.length > 1 || (graph.get(v) ?? []).includes(v)) components.push(comp.sort());
    }
  };
  for (const v of [...graph.keys()].sort()) if (!idx.has(v)) strong(v);
  // A loop from the component's first file back to it, staying inside the component (BFS).
  return components.map((comp) => {
    const inside = new Set(comp);
    const start = comp[0]!;
    const prev = new Map<string, string>();
    const queue = [start];
    let last: string | undefined;
    while (queue.length > 0 && last === undefined) {
      const v = queue.shift()!;
      for (const w of graph.get(v) ?? []) {
        if (!inside.has(w)) continue;
        if (w === start) {
          last = v;
          break;
        }
        if (!prev.has(w)) {
          prev.set(w, v);
          queue.push(w);
        }
      }
    }
    const loop = [start];
    for (let v = last!; v !== start; v = prev.get(v)!) loop.splice(1, 0, v);
    loop.push(start);
    return loop;
  });
}

/** Imports from a lower layer to a higher one, as 'file -> file', and files with no layer. */
export function findWrongWay(graph: ImportGraph): string[] {
  const out: string[] = [];
  for (const [file, targets] of graph) {
    const from = layerOf(file);
    if (from === undefined) {
      out.push(`${file}: not in any layer (add its folder to LAYERS)`);
      continue;
    }
    for (const t of targets) {
      const to = layerOf(t);
      if (to !== undefined && to > from) out.push(`${file} (layer ${from}) -> ${t} (layer ${to})`);
    }
  }
  return out.sort();
}

test('the checker finds a circle and a wrong-way import in a synthetic graph', () => {
  const graph: ImportGraph = new Map([
    ['formats/a.ts', ['formats/b.ts']],
    ['formats/b.ts', ['formats/c.ts']],
    ['formats/c.ts', ['formats/a.ts', 'errors.ts']],
    ['errors.ts', []],
    ['io/r.ts', ['quant/m.ts', 'formats/a.ts']],
    ['quant/m.ts', ['io/r.ts']],
    ['cli/x.ts', ['io/r.ts']],
    ['stray/y.ts', []],
  ]);
  assert.deepEqual(findCycles(graph), [
    ['formats/a.ts', 'formats/b.ts', 'formats/c.ts', 'formats/a.ts'],
    ['io/r.ts', 'quant/m.ts', 'io/r.ts'],
  ]);
  assert.deepEqual(findWrongWay(graph), [
    'io/r.ts (layer 2) -> quant/m.ts (layer 5)',
    'stray/y.ts: not in any layer (add its folder to LAYERS)',
  ]);
  assert.deepEqual(findCycles(new Map([['a.ts', ['a.ts']]])), [['a.ts', 'a.ts']]);
});

test('the specifier reader takes imports, re-exports, dynamic imports; not strings or comments', () => {
  const source = [
    "import { a } from './a.js';",
    "import type { B } from '../b.js';",
    "import './side.js';",
    "export { c } from './c.js';",
    "export * from './d.js';",
    'import {',
    '  e,',
    "} from './e.js';",
    "const f = await import('./f.js');",
    "import path from 'node:path';",
    "// import { g } from './g.js';",
    "const code = `import { h } from './h.js';`;",
  ].join('\n');
  assert.deepEqual(relativeSpecifiers(source).sort(), [
    '../b.js',
    './a.js',
    './c.js',
    './d.js',
    './e.js',
    './f.js',
    './side.js',
  ]);
});

test('src/ imports run downwards through the layers and in no circle', () => {
  const { graph, unresolved } = readGraph(path.join(REPO, 'src'));
  assert.ok(graph.size > 50, `read ${graph.size} files of src/`);
  assert.deepEqual(unresolved, [], 'relative imports that name no file of src/');
  const cycles = findCycles(graph).map((loop) => loop.join(' -> '));
  assert.deepEqual(cycles, [], `import circles:\n  ${cycles.join('\n  ')}`);
  const wrong = findWrongWay(graph);
  assert.deepEqual(wrong, [], `imports from a lower layer to a higher one:\n  ${wrong.join('\n  ')}`);
});
