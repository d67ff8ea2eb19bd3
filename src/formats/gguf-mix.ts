/**
 * llama-quantize's K-quant mixes (llama.cpp src/llama-quant.cpp, `llama_tensor_get_type` with
 * `pure` off, no importance matrix, no overrides) for a Llama model: the ftype's base type
 * everywhere, except
 *
 *   output (token_embd when tied)  Q6_K; Q8_0 when its rows are not whole 256-blocks
 *   attn_v      Q2_K: Q3_K (Q4_K if n_head/n_head_kv >= 4)   Q2_K_S: Q4_K if that ratio >= 4
 *               Q3_K_M: Q5_K in the first two blocks, Q4_K after   Q3_K_L: Q5_K
 *               Q4_K_M, Q5_K_M: Q6_K where useMoreBits   Q4_K_S: Q5_K in the first four blocks
 *   ffn_down    Q2_K: Q3_K   Q2_K_S: Q4_K in the first n/8 blocks
 *               Q3_K_M: Q5_K in the first n/16 blocks, Q4_K after   Q3_K_L: Q5_K
 *               Q4_K_M, Q5_K_M: Q6_K where useMoreBits   Q4_K_S: Q5_K in the first n/8 blocks
 *   attn_output Q2_K: Q3_K   Q3_K_M: Q4_K   Q3_K_L: Q5_K
 *
 * (n/8 and n/16 are C integer divisions; the 70B special case does not apply to the models
 * ptqkit loads.) With exactly 8 experts (Mixtral-8x7B's count, llama-quant.cpp's `n_expert == 8`):
 * attn_k and attn_v Q8_0, attn_output Q5_K under Q2_K, Q3_K_S, Q3_K_M, Q4_K_S, Q4_K_M (and the
 * base type under the other mixes: the dense attn_output rules are skipped). Experts follow their
 * role: ffn_down_exps and ffn_down_shexp are "ffn_down" to llama-quantize (it matches names by
 * substring and reads the layer from the name), so an expert's down_proj takes the block's
 * ffn_down type; the router (ffn_gate_inp) is never quantized (gguf-names.ts staysFloat).
 * The row-length fallback (typeForRow) comes after, as in llama-quantize.
 */
import { type GgmlType, ggmlType } from './ggml.js';
import { type BlockLinear, type DenseLinear, EMBED, isBlockLinear, LM_HEAD, roleOf } from './tensor-names.js';

/** `--type` names of the mixes, with llama.h's llama_ftype and the base type. */
export const GGUF_MIXES: Readonly<Record<string, { ftype: number; base: string }>> = {
  q2_k: { ftype: 10, base: 'Q2_K' },
  q2_k_s: { ftype: 21, base: 'Q2_K' },
  q3_k_s: { ftype: 11, base: 'Q3_K' },
  q3_k_m: { ftype: 12, base: 'Q3_K' },
  q3_k_l: { ftype: 13, base: 'Q3_K' },
  q4_k_s: { ftype: 14, base: 'Q4_K' },
  q4_k_m: { ftype: 15, base: 'Q4_K' },
  q5_k_s: { ftype: 16, base: 'Q5_K' },
  q5_k_m: { ftype: 17, base: 'Q5_K' },
  q6_k: { ftype: 18, base: 'Q6_K' },
};

/**
 * llama.cpp's "more bits" rule for attn_v / ffn_down (`use_more_bits`): the first and last
 * eighth of the blocks and every third block in between, with C's integer divisions
 * (2 blocks: block 1 only, as llama-quantize chooses).
 */
export function useMoreBits(layer: number, numLayers: number): boolean {
  const eighth = Math.floor(numLayers / 8);
  return layer < eighth || layer >= Math.floor((7 * numLayers) / 8) || (layer - eighth) % 3 === 2;
}

/**
 * The mix's type of one matrix (before the row-length fallback); `config`: a ModelConfig's counts,
 * `experts` its MoE expert count (0 or absent: dense).
 */
export function mixTensorType(
  mix: string,
  hfName: string,
  inDim: number,
  config: {
    numLayers: number;
    numHeads: number;
    numKvHeads: number;
    tiedEmbeddings: boolean;
    experts?: number;
  },
): GgmlType {
  const { base } = GGUF_MIXES[mix]!;
  const isOutput = hfName === LM_HEAD || (config.tiedEmbeddings && hfName === EMBED);
  if (isOutput) return ggmlType(inDim % ggmlType(base).blockSize !== 0 ? 'Q8_0' : 'Q6_K');
  const m = /^model\.layers\.(\d+)\.(.+)\.weight$/.exec(hfName);
  if (!m || !isBlockLinear(m[2]!)) return ggmlType(base); // token_embd (untied) keeps the base type
  const linear: BlockLinear = m[2];
  const gqa = config.numHeads / config.numKvHeads;
  return ggmlType(mixBlockLinearType(mix, Number(m[1]), config.numLayers, linear, gqa, config.experts));
}

/**
 * The mix's type name for a block linear of layer `layer` of `numLayers` (gqa: n_head / n_head_kv,
 * used by Q2_K's attn_v only). quant/allocate.ts's llama.cpp-like presets read the same rules.
 */
export function mixBlockLinearType(
  mix: string,
  layer: number,
  numLayers: number,
  linear: BlockLinear,
  gqa = 1,
  experts = 0,
): string {
  const { base } = GGUF_MIXES[mix]!;
  const n = numLayers;
  const pick = (rules: Record<string, string | undefined>) => rules[mix] ?? base;
  const role: DenseLinear = roleOf(linear);
  if (experts === 8) {
    // llama-quant.cpp: "for the 8-expert model, bumping this to Q8_0 trades just ~128MB".
    if (role === 'self_attn.v_proj' || role === 'self_attn.k_proj') return 'Q8_0';
    if (role === 'self_attn.o_proj')
      return ['q2_k', 'q3_k_s', 'q3_k_m', 'q4_k_s', 'q4_k_m'].includes(mix) ? 'Q5_K' : base;
  }
  switch (role) {
    case 'self_attn.v_proj':
      return pick({
        q2_k: gqa >= 4 ? 'Q4_K' : 'Q3_K',
        q2_k_s: gqa >= 4 ? 'Q4_K' : undefined,
        q3_k_m: layer < 2 ? 'Q5_K' : 'Q4_K',
        q3_k_l: 'Q5_K',
        q4_k_m: useMoreBits(layer, n) ? 'Q6_K' : undefined,
        q5_k_m: useMoreBits(layer, n) ? 'Q6_K' : undefined,
        q4_k_s: layer < 4 ? 'Q5_K' : undefined,
      });
    case 'mlp.down_proj':
      return pick({
        q2_k: 'Q3_K',
        q2_k_s: layer < Math.floor(n / 8) ? 'Q4_K' : undefined,
        q3_k_m: layer < Math.floor(n / 16) ? 'Q5_K' : 'Q4_K',
        q3_k_l: 'Q5_K',
        q4_k_m: useMoreBits(layer, n) ? 'Q6_K' : undefined,
        q5_k_m: useMoreBits(layer, n) ? 'Q6_K' : undefined,
        q4_k_s: layer < Math.floor(n / 8) ? 'Q5_K' : undefined,
      });
    case 'self_attn.o_proj':
      return pick({ q2_k: 'Q3_K', q3_k_m: 'Q4_K', q3_k_l: 'Q5_K' });
    default:
      return base;
  }
}
