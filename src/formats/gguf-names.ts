/**
 * Hugging Face Llama tensor names <-> llama.cpp's GGUF names (gguf-py tensor_mapping.py,
 * MODEL_TENSOR.* for MODEL_ARCH.LLAMA, QWEN2MOE and QWEN3MOE), the llama.cpp architecture each
 * model type is written as, and the Q/K row order of llama.cpp's rope.
 */
import { FormatError } from '../errors.js';
import { EXPERT_PROJECTIONS, type ExpertProjection } from './tensor-names.js';

/**
 * How llama.cpp runs a model type (src/models/<arch>.cpp): `arch` is general.architecture and
 * the prefix of its hyper-parameter keys; `permuteQK`: its rope pairs adjacent rows (LLAMA_ROPE_TYPE_NORM)
 * where Hugging Face rotates halves, so Q/K rows are interleaved (qkRowOrder), while NEOX-rope
 * architectures (the Qwens) rotate halves like Hugging Face; `normTopK`: whether its MoE FFN
 * renormalizes the top-k router weights (build_moe_ffn's norm_w: true for llama and qwen3moe,
 * false for qwen2moe, whatever the checkpoint's norm_topk_prob says); `expertWidthKey`: the
 * expert width is expert_feed_forward_length (Qwen-MoE) rather than feed_forward_length (llama).
 */
export interface GgufArchitecture {
  arch: 'llama' | 'qwen2moe' | 'qwen3moe';
  permuteQK: boolean;
  normTopK?: boolean;
  expertWidthKey?: boolean;
}

/** ptqkit model types the GGUF exporter writes, by model_type. */
export const GGUF_ARCHITECTURES: Readonly<Record<string, GgufArchitecture>> = {
  llama: { arch: 'llama', permuteQK: true },
  mixtral: { arch: 'llama', permuteQK: true, normTopK: true },
  qwen2_moe: { arch: 'qwen2moe', permuteQK: false, normTopK: false, expertWidthKey: true },
  qwen3_moe: { arch: 'qwen3moe', permuteQK: false, normTopK: true, expertWidthKey: true },
};

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
  'self_attn.q_proj.bias': 'attn_q.bias',
  'self_attn.k_proj.bias': 'attn_k.bias',
  'self_attn.v_proj.bias': 'attn_v.bias',
  'self_attn.q_norm.weight': 'attn_q_norm.weight',
  'self_attn.k_norm.weight': 'attn_k_norm.weight',
  // Sparse MoE: the router (llama-quantize keeps ffn_gate_inp unquantized), Qwen2-MoE's shared
  // expert and its gate ([1, hidden] here, a [hidden] vector in llama.cpp).
  'mlp.gate.weight': 'ffn_gate_inp.weight',
  'mlp.shared_expert_gate.weight': 'ffn_gate_inp_shexp.weight',
  'mlp.shared_expert.gate_proj.weight': 'ffn_gate_shexp.weight',
  'mlp.shared_expert.up_proj.weight': 'ffn_up_shexp.weight',
  'mlp.shared_expert.down_proj.weight': 'ffn_down_shexp.weight',
};
/** The stacked tensor of every expert's projection: ne = [in, out, experts], expert e's rows e-th. */
const EXPERTS: Record<ExpertProjection, string> = {
  gate_proj: 'ffn_gate_exps.weight',
  up_proj: 'ffn_up_exps.weight',
  down_proj: 'ffn_down_exps.weight',
};
const GLOBAL: Record<string, string> = {
  'model.embed_tokens.weight': 'token_embd.weight',
  'model.norm.weight': 'output_norm.weight',
  'lm_head.weight': 'output.weight',
};
const BLOCK_BACK = Object.fromEntries(Object.entries(BLOCK).map(([k, v]) => [v, k]));
const GLOBAL_BACK = Object.fromEntries(Object.entries(GLOBAL).map(([k, v]) => [v, k]));

/**
 * Where an expert's weight goes: the stacked GGUF tensor of its layer and projection and its
 * index along the third dimension; undefined for every other tensor.
 */
export function ggufExpertSlot(
  hf: string,
): { name: string; layer: number; expert: number; projection: ExpertProjection } | undefined {
  const m = /^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(\w+)\.weight$/.exec(hf);
  const projection = m?.[3] as ExpertProjection | undefined;
  if (!m || !projection || !EXPERT_PROJECTIONS.includes(projection)) return undefined;
  return {
    name: `blk.${m[1]}.${EXPERTS[projection]}`,
    layer: Number(m[1]),
    expert: Number(m[2]),
    projection,
  };
}

/** llama-quantize leaves the router unquantized (llama-quant.cpp: "do not quantize expert gating tensors"). */
export const staysFloat = (ggufName: string): boolean => ggufName.endsWith('.ffn_gate_inp.weight');

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
  // A bias is one value per row: it moves with its rows.
  const heads = /self_attn\.q_proj\.(weight|bias)$/.test(hfName)
    ? c.numHeads
    : /self_attn\.k_proj\.(weight|bias)$/.test(hfName)
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
