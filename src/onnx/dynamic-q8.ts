/**
 * q8 as transformers.js' `model_quantized.onnx` (scripts/quantize.py → onnxruntime
 * `quantize_dynamic`): int8 weights, activations quantized at run time.
 *
 *   MatMul(A, B) → DynamicQuantizeLinear(A) → (A_q uint8, a_s, a_z)
 *                  MatMulInteger(A_q, B_q, a_z) → int32 → Cast(float) → · (a_s · b_s[n]) → Y
 *
 * DynamicQuantizeLinear (ONNX spec): a_s = (max(0, max A) − min(0, min A)) / 255,
 * a_z = saturate(round(−min(0, min A) / a_s)), A_q = saturate(round(A / a_s) + a_z).
 * MatMulInteger (ONNX spec): Y[m, n] = Σ_k (A_q[m, k] − a_z) · (B_q[k, n] − b_z), b_z = 0 here.
 * Weights: symmetric int8 per output column n (b_s[n] = max_k |B[k, n]| / 127, codes in
 * [−127, 127], round half to even), the per-channel option of quantize_dynamic; onnxruntime fuses
 * the chain into DynamicQuantizeMatMul. Gemm is handled the same way with α folded into B, B
 * transposed when transB = 1 and β·C added after. Only float32 activations (DynamicQuantizeLinear
 * takes float32); Gather tables stay float.
 */
import { roundHalfEven } from '../formats/grid.js';
import { assertFiniteWeights } from '../quant/numerics.js';
import { attrNumber, GraphEditor, isInitializer, makeNode, type NodeFilter, selected } from './graph-edit.js';
import { DT, dimsOf, makeTensor, type NodeProto, type OnnxModel } from './model-file.js';
import { assertWeightShapes, inferShapes } from './shape-infer.js';

export interface DynamicQ8Report {
  quantized: { node: string; op: string; K: number; N: number; relativeError: number }[];
  skipped: { node: string; op: string; reason: string }[];
  weights: number;
  storedBytes: number;
}

/** Symmetric per-column int8 codes of B [K, N]: B ≈ q · s[n]. */
export function quantizeColumnsInt8(
  B: Float32Array,
  K: number,
  N: number,
): { q: Int8Array; s: Float32Array } {
  const s = new Float32Array(N);
  for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) s[n] = Math.max(s[n]!, Math.abs(B[k * N + n]!));
  for (let n = 0; n < N; n++) s[n] = s[n]! === 0 ? 1 : Math.fround(s[n]! / 127);
  const q = new Int8Array(K * N);
  for (let k = 0; k < K; k++)
    for (let n = 0; n < N; n++)
      q[k * N + n] = Math.max(-127, Math.min(127, roundHalfEven(B[k * N + n]! / s[n]!)));
  return { q, s };
}

export async function quantizeDynamicQ8(model: OnnxModel, filter: NodeFilter = {}): Promise<DynamicQ8Report> {
  const edit = new GraphEditor(model);
  const report: DynamicQ8Report = { quantized: [], skipped: [], weights: 0, storedBytes: 0 };
  const out: NodeProto[] = [];
  const cache = new Map<string, { q: string; s: string; K: number; N: number; relErr: number }>();
  const shapes = inferShapes(model);
  for (const node of model.graph.node) {
    const name = node.name || node.output[0]!;
    const isProduct =
      (!node.domain || node.domain === 'ai.onnx') && (node.opType === 'MatMul' || node.opType === 'Gemm');
    const b = isProduct && node.input[1] ? model.initializer(node.input[1]) : undefined;
    if (!b || !selected(node, filter) || isInitializer(model, node.input[0]!)) {
      out.push(node);
      continue;
    }
    const skip = (reason: string) => {
      report.skipped.push({ node: name, op: node.opType, reason });
      out.push(node);
    };
    if (b.dataType !== DT.FLOAT) {
      skip(`B is not float32 (type ${b.dataType})`);
      continue;
    }
    if (b.dims.length !== 2) {
      skip(`B has rank ${b.dims.length}`);
      continue;
    }
    if (dimsOf(b).includes(0)) {
      skip(`B is empty [${dimsOf(b).join(', ')}]`);
      continue;
    }
    // B as the node reads it: a reshaped weight is refused, not quantized to a wrong K × N.
    assertWeightShapes(model, [node], shapes);
    if (node.opType === 'Gemm' && attrNumber(node, 'transA', 0) !== 0) {
      skip('Gemm with transA = 1');
      continue;
    }
    const transB = node.opType === 'Gemm' && attrNumber(node, 'transB', 0) !== 0;
    const alpha = node.opType === 'Gemm' ? attrNumber(node, 'alpha', 1) : 1;
    const key = `${b.name}|${transB}|${alpha}`;
    let w = cache.get(key);
    if (!w) {
      const data = await model.floatData(b);
      const [r, c] = dimsOf(b) as [number, number];
      assertFiniteWeights(new Map([[b.name, { shape: [r, c], data }]]));
      const [K, N] = transB ? [c, r] : [r, c];
      const B = new Float32Array(K * N);
      for (let k = 0; k < K; k++)
        for (let n = 0; n < N; n++) B[k * N + n] = alpha * (transB ? data[n * K + k]! : data[k * N + n]!);
      const { q, s } = quantizeColumnsInt8(B, K, N);
      let num = 0;
      let den = 0;
      for (let i = 0; i < B.length; i++) {
        const e = B[i]! - q[i]! * s[i % N]!;
        num += e * e;
        den += B[i]! * B[i]!;
      }
      w = {
        q: edit.addInitializer(makeTensor(edit.fresh(`${b.name}_quantized`), DT.INT8, [K, N], q)),
        s: edit.addInitializer(makeTensor(edit.fresh(`${b.name}_scale`), DT.FLOAT, [N], s)),
        K,
        N,
        relErr: den === 0 ? 0 : num / den,
      };
      cache.set(key, w);
      report.storedBytes += K * N + N * 4;
    }
    const A = node.input[0]!;
    const [aq, as, az] = ['quantized', 'scale', 'zero_point'].map((x) => edit.fresh(`${A}_${x}`)) as [
      string,
      string,
      string,
    ];
    const yInt = edit.fresh(`${name}/output_int32`);
    const yF = edit.fresh(`${name}/output_cast`);
    const scale = edit.fresh(`${name}/output_scale`);
    const product = node.opType === 'Gemm' && node.input[2] ? edit.fresh(`${name}/product`) : node.output[0]!;
    out.push(
      makeNode('DynamicQuantizeLinear', [A], [aq, as, az], edit.fresh(`${name}/DynamicQuantizeLinear`)),
      makeNode('MatMulInteger', [aq, w.q, az], [yInt], edit.fresh(`${name}/MatMulInteger`)),
      makeNode('Cast', [yInt], [yF], edit.fresh(`${name}/Cast`), { to: DT.FLOAT }),
      makeNode('Mul', [as, w.s], [scale], edit.fresh(`${name}/ScaleProduct`)),
      makeNode('Mul', [yF, scale], [product], edit.fresh(`${name}/Rescale`)),
    );
    if (product !== node.output[0]) {
      const beta = attrNumber(node, 'beta', 1);
      let bias = node.input[2]!;
      if (beta !== 1) {
        const betaInit = edit.addInitializer(
          makeTensor(edit.fresh(`${name}/beta`), DT.FLOAT, [], Float32Array.of(beta)),
        );
        const scaled = edit.fresh(`${name}/beta_C`);
        out.push(makeNode('Mul', [bias, betaInit], [scaled], edit.fresh(`${name}/Beta`)));
        bias = scaled;
      }
      out.push(makeNode('Add', [product, bias], [node.output[0]!], edit.fresh(`${name}/Bias`)));
    }
    report.quantized.push({ node: name, op: node.opType, K: w.K, N: w.N, relativeError: w.relErr });
    report.weights += w.K * w.N;
  }
  model.graph.node = out;
  edit.pruneInitializers();
  return report;
}
