/**
 * A small BERT-style encoder as an ONNX graph (not an LM, and not one ptqkit's exporter writes):
 * token embedding (Gather) + LayerNormalization, one post-norm transformer block with 4-head
 * self-attention (Q/K/V MatMul + bias Add, output projection as Gemm with transB = 1 and a bias),
 * an erf-GELU MLP, and a classifier Gemm with α = 0.5, β = 2 on the flattened states.
 *
 *   inputs   input_ids [batch, sequence] int64
 *   outputs  last_hidden_state [batch, sequence, D], logits [batch·sequence, C]
 *
 * Weights are seeded Gaussians N(0, 1/fan_in) (biases N(0, 0.02²)), so every matrix has the
 * light tails of trained transformer weights at initialization.
 */
import { buildOnnxModelExternal, GraphAssembler } from '../../src/io/onnx-builder.js';
import { mulberry32 } from '../../src/random.js';

export const ENCODER = { vocab: 1000, hidden: 256, heads: 4, ffn: 512, classes: 16 };

export function buildEncoder(seed = 0): Uint8Array {
  const { vocab: V, hidden: D, heads: H, ffn: F, classes: C } = ENCODER;
  const d = D / H;
  const rand = mulberry32(seed);
  const gauss = (n: number, std: number) => {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++)
      out[i] = std * Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());
    return out;
  };
  const g = new GraphAssembler();
  const w = (name: string, dims: number[], std: number) =>
    g.initializer(
      name,
      'float32',
      dims,
      gauss(
        dims.reduce((a, b) => a * b),
        std,
      ),
    );
  const ones = (name: string) => g.initializer(name, 'float32', [D], new Float32Array(D).fill(1));
  const zeros = (name: string) => g.initializer(name, 'float32', [D], new Float32Array(D));
  const layerNorm = (x: string, p: string) =>
    g.op1('LayerNormalization', [x, ones(`${p}.gamma`), zeros(`${p}.beta`)], {
      axis: -1,
      epsilon: { f: 1e-12 },
    });
  const dense = (x: string, p: string, i: number, o: number) =>
    g.op1('Add', [
      g.op1('MatMul', [x, w(`${p}.weight`, [i, o], 1 / Math.sqrt(i))]),
      w(`${p}.bias`, [o], 0.02),
    ]);

  g.scope = '/embeddings';
  let x = layerNorm(g.op1('Gather', [w('embeddings.word', [V, D], 1), 'input_ids']), 'embeddings.norm');
  g.scope = '/encoder/attention';
  const heads = (t: string, perm: number[]) =>
    g.op1('Transpose', [g.op1('Reshape', [t, g.int64([0, 0, H, d])])], { perm });
  const q = heads(dense(x, 'attention.query', D, D), [0, 2, 1, 3]);
  const k = heads(dense(x, 'attention.key', D, D), [0, 2, 3, 1]);
  const v = heads(dense(x, 'attention.value', D, D), [0, 2, 1, 3]);
  const probs = g.op1(
    'Softmax',
    [g.op1('Mul', [g.op1('MatMul', [q, k]), g.float32([1 / Math.sqrt(d)], [])])],
    { axis: -1 },
  );
  const ctx = g.op1('Reshape', [
    g.op1('Transpose', [g.op1('MatMul', [probs, v])], { perm: [0, 2, 1, 3] }),
    g.int64([-1, D]),
  ]);
  // Output projection as Gemm(transB = 1): weight stored [out, in] as in PyTorch's Linear.
  const proj = g.op1(
    'Gemm',
    [ctx, w('attention.output.weight', [D, D], 1 / Math.sqrt(D)), w('attention.output.bias', [D], 0.02)],
    { transB: 1 },
  );
  x = layerNorm(g.op1('Add', [x, g.op1('Reshape', [proj, g.op1('Shape', [x])])]), 'attention.norm');
  g.scope = '/encoder/mlp';
  const h = dense(x, 'mlp.up', D, F);
  // GELU(h) = h · Φ(h) = 0.5 · h · (1 + erf(h / √2))
  const gelu = g.op1('Mul', [
    g.op1('Mul', [h, g.float32([0.5], [])]),
    g.op1('Add', [g.op1('Erf', [g.op1('Mul', [h, g.float32([Math.SQRT1_2], [])])]), g.float32([1], [])]),
  ]);
  x = layerNorm(g.op1('Add', [x, dense(gelu, 'mlp.down', F, D)]), 'mlp.norm');
  g.op('Identity', [x], {}, { outputs: ['last_hidden_state'] });
  g.scope = '/classifier';
  const flat = g.op1('Reshape', [x, g.int64([-1, D])]);
  g.op(
    'Gemm',
    [flat, w('classifier.weight', [D, C], 1 / Math.sqrt(D)), w('classifier.bias', [C], 0.02)],
    { alpha: { f: 0.5 }, beta: { f: 2 } },
    { outputs: ['logits'] },
  );
  return buildOnnxModelExternal({
    name: 'encoder fixture',
    nodes: g.nodes,
    initializers: g.initializers,
    inputs: [{ name: 'input_ids', type: 'int64', dims: ['batch', 'sequence'] }],
    outputs: [
      { name: 'last_hidden_state', type: 'float32', dims: ['batch', 'sequence', D] },
      { name: 'logits', type: 'float32', dims: ['rows', C] },
    ],
  }).model;
}
