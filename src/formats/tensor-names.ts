/**
 * ptqkit's canonical tensor names (Hugging Face's Llama names). Every checkpoint is renamed to
 * them on load (model/architecture.ts); quantizers, checkpoints and exporters see only them, and
 * the GGUF names (gguf-names.ts) and llama-quantize's mixes (gguf-mix.ts) are keyed by them.
 */

/** The linear layers of one decoder block, in execution order (the order of sequential calibration). */
export const BLOCK_LINEARS = [
  'self_attn.q_proj',
  'self_attn.k_proj',
  'self_attn.v_proj',
  'self_attn.o_proj',
  'mlp.gate_proj',
  'mlp.up_proj',
  'mlp.down_proj',
] as const;
export type BlockLinear = (typeof BLOCK_LINEARS)[number];

export const blockPrefix = (layer: number): string => `model.layers.${layer}.`;
export const linearWeightName = (layer: number, linear: BlockLinear): string =>
  `${blockPrefix(layer)}${linear}.weight`;

export const EMBED = 'model.embed_tokens.weight';
export const FINAL_NORM = 'model.norm.weight';
export const LM_HEAD = 'lm_head.weight';
/** Learned absolute positions (GPT-2 wpe, OPT embed_positions), [positions + offset, hidden]. */
export const POSITION_EMBED = 'model.embed_positions.weight';
/** The bias of a LayerNorm or linear stored as `<module>.weight`. */
export const biasOf = (weightName: string): string => weightName.replace(/\.weight$/, '.bias');
