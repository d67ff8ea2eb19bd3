/**
 * Hugging Face Llama tensor names <-> llama.cpp's GGUF names (gguf-py tensor_mapping.py,
 * MODEL_TENSOR.* for MODEL_ARCH.LLAMA), and the Q/K row order of llama.cpp's rope.
 */
import { FormatError } from '../errors.js';

const BLOCK: Record<string, string> = {
  'input_layernorm.weight': 'attn_norm.weight',
  'self_attn.q_proj.weight': 'attn_q.weight',
  'self_attn.k_proj.weight': 'attn_k.weight',
  'self_attn.v_proj.weight': 'attn_v.weight',
  'self_attn.o_proj.weight': 'attn_output.weight',
  'post_attention_layernorm.weight': 'ffn_norm.weight',
  'mlp.gate_proj.weight': 'ffn_gate.weight',
  'mlp.up_proj.weight': 'ffn_up.weight',
  'mlp.down_proj.weight': 'ffn_down.weight',
};
const GLOBAL: Record<string, string> = {
  'model.embed_tokens.weight': 'token_embd.weight',
  'model.norm.weight': 'output_norm.weight',
  'lm_head.weight': 'output.weight',
};
const BLOCK_BACK = Object.fromEntries(Object.entries(BLOCK).map(([k, v]) => [v, k]));
const GLOBAL_BACK = Object.fromEntries(Object.entries(GLOBAL).map(([k, v]) => [v, k]));

export function ggufTensorName(hf: string): string {
  const g = GLOBAL[hf];
  if (g) return g;
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(hf);
  const b = m && BLOCK[m[2]!];
  if (!b) throw new FormatError('no GGUF name for this tensor', { field: hf });
  return `blk.${m[1]}.${b}`;
}

export function hfTensorName(gguf: string, file?: string): string {
  const g = GLOBAL_BACK[gguf];
  if (g) return g;
  const m = /^blk\.(\d+)\.(.+)$/.exec(gguf);
  const b = m && BLOCK_BACK[m[2]!];
  if (!b) throw new FormatError('unknown Llama tensor in GGUF', { file, field: gguf });
  return `model.layers.${m[1]}.${b}`;
}

/**
 * convert_hf_to_gguf's LlamaModel.permute as a row order (new row r = HF row order[r]):
 * within each head of d rows, HF's rotate_half halves (i, i + d/2) become llama.cpp's
 * adjacent pairs (2i, 2i + 1). K uses the KV head count. Undefined for other tensors.
 * `c`: the head counts of a ModelConfig.
 */
export function qkRowOrder(
  hfName: string,
  c: { numHeads: number; numKvHeads: number; headDim: number },
): Int32Array | undefined {
  const heads = hfName.endsWith('self_attn.q_proj.weight')
    ? c.numHeads
    : hfName.endsWith('self_attn.k_proj.weight')
      ? c.numKvHeads
      : 0;
  if (!heads) return undefined;
  const d = c.headDim;
  const order = new Int32Array(heads * d);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < d / 2; i++) {
      order[h * d + 2 * i] = h * d + i;
      order[h * d + 2 * i + 1] = h * d + d / 2 + i;
    }
  }
  return order;
}

/** The inverse order (GGUF row -> HF row), to read a GGUF back into HF layout. */
export function inverseOrder(order: Int32Array): Int32Array {
  const inv = new Int32Array(order.length);
  order.forEach((from, to) => {
    inv[from] = to;
  });
  return inv;
}
