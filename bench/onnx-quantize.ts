/**
 * `node --import tsx bench/onnx-quantize.ts [MiB] [dtype]`: quantize a synthetic ONNX model of
 * ~MiB (default 512) whose weights live in external data, and report time and peak RSS.
 *
 * The model: ids → Gather(embedding [V, 2048]) → 24 × MatMul(·, W_i [2048, 2048]) → y, the
 * embedding taking the rest of the size; seeded N(0, 1/2048) weights written to
 * `model.onnx_data` one tensor at a time (never all in memory). The quantization runs in a child
 * process so its peak RSS is its own: `ptq quantize`'s path (src/onnx/quantize-onnx.ts) reading
 * each initializer by offset and streaming the output's external data.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { open, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DT, onnx } from '../src/onnx/model-file.js';
import { type OnnxQuantDtype, quantizeOnnx } from '../src/onnx/quantize-onnx.js';
import { mulberry32 } from '../src/random.js';

const D = 2048;
const LAYERS = 24;

async function generate(dir: string, mib: number): Promise<string> {
  const layerBytes = D * D * 4;
  const vocab = Math.max(1024, Math.floor((mib * 2 ** 20 - LAYERS * layerBytes) / (D * 4)));
  const rand = mulberry32(1);
  const fh = await open(path.join(dir, 'model.onnx_data'), 'w');
  let offset = 0;
  const initializer: onnxProtoTensor[] = [];
  const add = async (name: string, dims: number[]) => {
    const n = dims.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    const std = 1 / Math.sqrt(D);
    for (let i = 0; i < n; i++) data[i] = std * (rand() + rand() + rand() - 1.5) * 2; // ≈ N(0, std²), cheap
    await fh.write(new Uint8Array(data.buffer), 0, data.byteLength, offset);
    initializer.push(
      onnx.TensorProto.create({
        name,
        dataType: DT.FLOAT,
        dims,
        dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
        externalData: [
          { key: 'location', value: 'model.onnx_data' },
          { key: 'offset', value: String(offset) },
          { key: 'length', value: String(data.byteLength) },
        ],
      }),
    );
    offset += Math.ceil(data.byteLength / 4096) * 4096;
  };
  await add('embedding', [vocab, D]);
  const node = [
    onnx.NodeProto.create({ name: 'embed', opType: 'Gather', input: ['embedding', 'ids'], output: ['x0'] }),
  ];
  for (let i = 0; i < LAYERS; i++) {
    await add(`w${i}`, [D, D]);
    node.push(
      onnx.NodeProto.create({
        name: `layer${i}/MatMul`,
        opType: 'MatMul',
        input: [`x${i}`, `w${i}`],
        output: [i === LAYERS - 1 ? 'y' : `x${i + 1}`],
      }),
    );
  }
  await fh.close();
  const tensorType = (elemType: number, dims: (number | string)[]) => ({
    tensorType: {
      elemType,
      shape: { dim: dims.map((d) => (typeof d === 'string' ? { dimParam: d } : { dimValue: d })) },
    },
  });
  const model = onnx.ModelProto.create({
    irVersion: 8,
    opsetImport: [{ domain: '', version: 17 }],
    graph: {
      name: 'synthetic',
      node,
      initializer,
      input: [{ name: 'ids', type: tensorType(DT.INT64, ['batch', 'sequence']) }],
      output: [{ name: 'y', type: tensorType(DT.FLOAT, ['batch', 'sequence', D]) }],
    },
  });
  const file = path.join(dir, 'model.onnx');
  await writeFile(file, onnx.ModelProto.encode(model).finish());
  return file;
}
type onnxProtoTensor = ReturnType<typeof onnx.TensorProto.create>;

const [mode, ...rest] = process.argv.slice(2);
if (mode === 'case') {
  // Child: quantize and print one JSON line.
  const [file, out, dtype] = rest as [string, string, OnnxQuantDtype];
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const report = await quantizeOnnx(file, out, {
    dtypes: [dtype],
    blockSize: 32,
    symmetric: true,
    method: 'rtn',
  });
  const cpu = process.cpuUsage(cpu0);
  const g = report.graphs[0]!;
  console.log(
    JSON.stringify({
      dtype,
      sourceBytes: g.sourceBytes,
      outputBytes: g.bytes,
      seconds: (performance.now() - t0) / 1000,
      cpuSeconds: (cpu.user + cpu.system) / 1e6,
      peakRssMiB: process.resourceUsage().maxRSS / 1024,
    }),
  );
} else {
  const mib = Number(mode ?? 512);
  const dtype = (rest[0] ?? 'q4') as OnnxQuantDtype;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ptq-bench-onnx-'));
  try {
    const file = await generate(dir, mib);
    const bytes = (await stat(file)).size + (await stat(path.join(dir, 'model.onnx_data'))).size;
    process.stderr.write(
      `synthetic model: ${(bytes / 2 ** 20).toFixed(0)} MiB (external data), quantizing to ${dtype} ...\n`,
    );
    const here = fileURLToPath(import.meta.url);
    const r = spawnSync(
      process.execPath,
      ['--import', 'tsx', here, 'case', file, path.join(dir, 'out'), dtype],
      {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    if (r.status !== 0) throw new Error('bench case failed');
    console.log(r.stdout.trim());
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
