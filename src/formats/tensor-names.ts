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
/** A linear of a dense block, and the role an expert's linear plays (gate, up, down). */
export type DenseLinear = (typeof BLOCK_LINEARS)[number];

/**
 * Sparse MoE blocks (Mixtral, Qwen-MoE) replace the MLP with experts, each a gated MLP of its
 * own, and Qwen2-MoE adds one shared expert every token runs: `mlp.experts.E.up_proj`,
 * `mlp.shared_expert.up_proj` (Qwen's Hugging Face names; Mixtral's w1/w3/w2 are renamed on
 * load). The router `mlp.gate` and Qwen2-MoE's `mlp.shared_expert_gate` are [n, hidden] matrices
 * that stay float, like norms: routing decides which weights run at all (GPTQModel,
 * llm-compressor and llama-quantize keep them unquantized too).
 */
export const EXPERT_PROJECTIONS = ['gate_proj', 'up_proj', 'down_proj'] as const;
export type ExpertProjection = (typeof EXPERT_PROJECTIONS)[number];
export type ExpertLinear =
  | `mlp.experts.${number}.${ExpertProjection}`
  | `mlp.shared_expert.${ExpertProjection}`;
export type BlockLinear = DenseLinear | ExpertLinear;

export const expertLinear = (expert: number, projection: ExpertProjection): ExpertLinear =>
  `mlp.experts.${expert}.${projection}`;
export const sharedExpertLinear = (projection: ExpertProjection): ExpertLinear =>
  `mlp.shared_expert.${projection}`;
/** The router of a sparse MoE block, [experts, hidden], under blockPrefix(layer). */
export const ROUTER = 'mlp.gate.weight';
/** Qwen2-MoE's gate of the shared expert, [1, hidden], under blockPrefix(layer). */
export const SHARED_EXPERT_GATE = 'mlp.shared_expert_gate.weight';

const EXPERT_RE = /^mlp\.(?:experts\.(\d+)|shared_expert)\.(gate_proj|up_proj|down_proj)$/;

/** The expert a block linear belongs to ('shared' for Qwen2-MoE's), or undefined for a dense linear. */
export function expertOf(linear: BlockLinear): number | 'shared' | undefined {
  const m = EXPERT_RE.exec(linear);
  if (!m) return undefined;
  return m[1] === undefined ? 'shared' : Number(m[1]);
}

/**
 * The dense linear a block linear stands for: an expert's up_proj is read and quantized as the
 * block's mlp.up_proj is (same stage, same norm, same mixes and presets).
 */
export function roleOf(linear: BlockLinear): DenseLinear {
  const m = EXPERT_RE.exec(linear);
  return m ? (`mlp.${m[2]}` as DenseLinear) : (linear as DenseLinear);
}

/** A dense block linear or an expert's (not the router `mlp.gate`, not a norm). */
const BLOCK_LINEAR_RE =
  /^(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj|mlp\.(experts\.\d+|shared_expert)\.(gate|up|down)_proj)$/;
export const isBlockLinear = (module: string): module is BlockLinear => BLOCK_LINEAR_RE.test(module);

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
