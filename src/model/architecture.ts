/**
 * An architecture is a description, not code: how its config.json maps to ModelConfig and
 * its BlockLayout (norm kind, activation, biases, positions, residual scheme), what its tensors
 * are called in Hugging Face checkpoints and how they map to the canonical (Llama) names used
 * everywhere inside ptqkit, and which shapes they must have. The forward pass (decoder.ts)
 * reads only the resolved ModelConfig; quantizers see every block linear as an [out, in]
 * matrix under its canonical name (BLOCK_LINEARS), whatever the checkpoint called it.
 */
import { ConfigError, ShapeError, UsageError } from '../errors.js';
import {
  BLOCK_LINEARS,
  type BlockLinear,
  biasOf,
  blockPrefix,
  type DenseLinear,
  EMBED,
  EXPERT_PROJECTIONS,
  type ExpertProjection,
  expertLinear,
  FINAL_NORM,
  LM_HEAD,
  POSITION_EMBED,
  ROUTER,
  SHARED_EXPERT_GATE,
  sharedExpertLinear,
} from '../formats/tensor-names.js';
import type { Tensor, TensorMap } from '../tensor.js';
import {
  type Activation,
  type BlockLayout,
  LLAMA_LAYOUT,
  type ModelConfig,
  type MoeLayout,
  type RopeScaling,
} from './config.js';

/** The block linears a model has (no gate_proj without a gated MLP), in execution order. */
export function blockLinears(config: ModelConfig): BlockLinear[] {
  return BLOCK_LINEARS.flatMap((l) => linearsInRole(config, l));
}

/**
 * The block linears of a model that play the role of the dense linear `role`: itself, none (no
 * gate_proj in a plain MLP) or, in a sparse MoE block, that projection of every expert then of
 * the shared expert. Methods name their groups by role (calibrate.ts expands them here), so one
 * recipe serves dense and MoE models alike.
 */
export function linearsInRole(config: ModelConfig, role: DenseLinear): BlockLinear[] {
  const L = config.layout ?? LLAMA_LAYOUT;
  if (role === 'mlp.gate_proj' && !L.gatedMlp) return [];
  if (!L.moe || !role.startsWith('mlp.')) return [role];
  const projection = role.slice('mlp.'.length) as ExpertProjection;
  const experts = Array.from({ length: L.moe.experts }, (_, e) => expertLinear(e, projection));
  return L.moe.sharedIntermediate ? [...experts, sharedExpertLinear(projection)] : experts;
}

/**
 * Refuse a sparse MoE model for a model-wide transform written for the dense block, whose folds
 * name mlp.gate_proj/up_proj/down_proj: it would fail on a missing tensor or, worse, leave the
 * experts untransformed. `option`: the CLI flag; `why`: what the experts would need.
 */
export function refuseMoe(config: ModelConfig, option: string, why: string): void {
  if (!config.layout?.moe) return;
  throw new UsageError(`${option} does not support sparse MoE models`, {
    field: option.replace(/^--/, ''),
    got: config.modelType,
    hint: why,
  });
}

export interface Architecture {
  readonly modelType: string;
  /**
   * Its Hugging Face checkpoints use the canonical (Llama) tensor names: a weight map written
   * back under them is a checkpoint of this model_type (false for phi3, gpt2, opt, gpt_neox).
   */
  readonly hfNamesAreCanonical: boolean;
  /** Normalize a Hugging Face config.json; `file` names it in errors. */
  parseConfig(json: Record<string, unknown>, file: string): ModelConfig;
  /** Every tensor the model needs, under its canonical name, with its [out,in] / [n] shape. */
  expectedShapes(config: ModelConfig): Map<string, number[]>;
  /**
   * The checkpoint's tensors under canonical names: renamed, Conv1D [in,out] weights transposed,
   * fused projections split, runtime buffers dropped. Canonical names pass unchanged, so a
   * checkpoint written by ptqkit (canonical names) reads back through the same call.
   */
  canonicalize(weights: TensorMap, config: ModelConfig, file: string): TensorMap;
}

/**
 * Upper bounds on hyper-parameters: generous (10-100x the largest published models) yet far
 * below what would make loops or allocations driven by config.json run away (1e12 layers).
 */
export const CONFIG_LIMITS = {
  vocab_size: 2 ** 24,
  hidden_size: 2 ** 17,
  intermediate_size: 2 ** 20,
  num_hidden_layers: 2 ** 12,
  num_attention_heads: 2 ** 12,
  num_key_value_heads: 2 ** 12,
  head_dim: 2 ** 12,
  max_position_embeddings: 2 ** 27,
  num_experts: 2 ** 12,
} as const;

type Limited = keyof typeof CONFIG_LIMITS;

/** json[key] (or json[hfKey], the model type's name for it) as a bounded positive integer. */
function integer(
  json: Record<string, unknown>,
  key: Limited,
  file: string,
  fallback?: number,
  hfKey: string = key,
): number {
  const v = json[hfKey] ?? fallback;
  const max = CONFIG_LIMITS[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0 || v > max) {
    throw new ConfigError(v === undefined ? 'missing hyper-parameter' : 'invalid hyper-parameter', {
      file,
      field: hfKey,
      expected: `a positive integer <= ${max}`,
      got: JSON.stringify(v),
    });
  }
  return v;
}

function positiveNumber(
  json: Record<string, unknown>,
  key: string,
  file: string,
  fallback: number,
  below = Infinity,
): number {
  const v = json[key] ?? fallback;
  if (typeof v !== 'number' || !(v > 0) || !(v < below)) {
    throw new ConfigError('invalid hyper-parameter', {
      file,
      field: key,
      expected: below === Infinity ? 'a finite positive number' : `a number in (0, ${below})`,
      got: JSON.stringify(v),
    });
  }
  return v;
}

/** A special token id: absent, a list (several EOS ids; not used here), or an id of the vocabulary. */
function tokenId(
  json: Record<string, unknown>,
  key: string,
  file: string,
  vocabSize: number,
): number | undefined {
  const v = json[key];
  if (typeof v !== 'number') return undefined;
  if (!Number.isInteger(v) || v < 0 || v >= vocabSize) {
    throw new ConfigError('invalid token id', {
      file,
      field: key,
      expected: `an integer in [0, ${vocabSize})`,
      got: JSON.stringify(v),
    });
  }
  return v;
}

/** Hugging Face config.json keys of the hyper-parameters, per model type. */
interface ConfigKeys {
  hidden: string;
  layers: string;
  heads: string;
  /** Absent: every head has its own keys and values (multi-head attention). */
  kvHeads?: string;
  /** Absent or null in the file: 4 × hidden (GPT-2's n_inner). */
  ffn: string;
  positions: string;
  /** Absent: the model type's fixed epsilon (OPT's nn.LayerNorm default). */
  normEps?: string;
  ropeTheta: string;
}

const LLAMA_KEYS: ConfigKeys = {
  hidden: 'hidden_size',
  layers: 'num_hidden_layers',
  heads: 'num_attention_heads',
  kvHeads: 'num_key_value_heads',
  ffn: 'intermediate_size',
  positions: 'max_position_embeddings',
  normEps: 'rms_norm_eps',
  ropeTheta: 'rope_theta',
};

/**
 * How one module of a checkpoint becomes canonical modules; applies to its `.weight` and
 * `.bias`. `{i}` stands for the layer index, `{e}` for the expert index.
 */
interface TensorRule {
  hf: string;
  /** One canonical module, or the parts of a fused projection split along its output rows. */
  to: string | readonly string[];
  /** GPT-2's Conv1D stores weights [in, out]: transposed to [out, in] on load. */
  conv1d?: boolean;
  /** Output rows of each part, per head when `perHead` (NeoX's [q_h; k_h; v_h] per head h), else in total. */
  split?: (c: ModelConfig) => number[];
  perHead?: boolean;
}

/** The declarative description of one Hugging Face model_type. */
interface Description {
  modelType: string;
  keys: ConfigKeys;
  /** HF defaults of the keys a config.json may omit. */
  defaults: { tiedEmbeddings: boolean; normEps: number; activation: string; maxPositions?: number };
  /** The config key naming the MLP activation. */
  activationKey: string;
  /** What every model of this type has; per-model parts come from `configure`. */
  layout: Partial<BlockLayout>;
  /** Per-model layout read from config.json (rope scaling, partial rotary, windows, soft caps). */
  configure?(json: Record<string, unknown>, file: string, c: ModelConfig, layout: BlockLayout): void;
  /** Prefixes of checkpoint names that the rules do not include (GPT2LMHeadModel's `transformer.`). */
  prefixes?: readonly string[];
  rules?: readonly TensorRule[];
  /** Runtime buffers some checkpoints carry (causal masks, inv_freq): not weights. */
  ignore?: RegExp;
}

const ACTIVATIONS: Record<string, Activation> = {
  silu: 'silu',
  swish: 'silu',
  gelu: 'gelu',
  gelu_new: 'gelu_tanh',
  gelu_fast: 'gelu_tanh',
  gelu_pytorch_tanh: 'gelu_tanh',
  relu: 'relu',
};

function activation(json: Record<string, unknown>, d: Description, file: string): Activation {
  const name = json[d.activationKey] ?? d.defaults.activation;
  const act = typeof name === 'string' ? ACTIVATIONS[name] : undefined;
  if (!act) {
    throw new ConfigError('unsupported activation', {
      file,
      field: d.activationKey,
      expected: `one of ${Object.keys(ACTIVATIONS).join(', ')}`,
      got: JSON.stringify(name),
    });
  }
  return act;
}

function refuse(file: string, field: string, expected: string, got: unknown): never {
  throw new ConfigError('unsupported configuration', { file, field, expected, got: JSON.stringify(got) });
}

/** rope_scaling: null, 'default', 'linear' or 'llama3' (Llama 3.1+); other schemes are refused. */
function ropeScaling(json: Record<string, unknown>, file: string): RopeScaling | undefined {
  const r = json.rope_scaling;
  if (r == null) return undefined;
  if (typeof r !== 'object' || Array.isArray(r)) refuse(file, 'rope_scaling', 'an object or null', r);
  const o = r as Record<string, unknown>;
  const type = o.rope_type ?? o.type;
  const factorKey = () => positiveNumber(o, 'factor', file, Number.NaN);
  if (type === 'default') return undefined;
  if (type === 'linear') return { type: 'linear', factor: factorKey() };
  // 'su' is the name Phi-3 128k configs first shipped LongRoPE under.
  if (type === 'longrope' || type === 'su') {
    // Phi-3 keeps the pretrained context at the top level; the factor is then the context ratio.
    const original = json.original_max_position_embeddings ?? o.original_max_position_embeddings;
    const originalMaxPositions = positiveNumber({ original }, 'original', file, Number.NaN);
    const max = positiveNumber(json, 'max_position_embeddings', file, Number.NaN);
    const factor = json.original_max_position_embeddings != null ? max / originalMaxPositions : factorKey();
    const given = o.attention_factor;
    const attentionFactor =
      given != null
        ? positiveNumber(o, 'attention_factor', file, Number.NaN)
        : factor <= 1
          ? 1
          : Math.sqrt(1 + Math.log(factor) / Math.log(originalMaxPositions));
    const list = (key: string) => {
      const v = o[key];
      if (!Array.isArray(v) || !v.every((x) => typeof x === 'number' && x > 0))
        refuse(file, `rope_scaling.${key}`, 'an array of positive numbers', v);
      return v as number[];
    };
    return {
      type: 'longrope',
      shortFactor: list('short_factor'),
      longFactor: list('long_factor'),
      originalMaxPositions,
      attentionFactor,
    };
  }
  if (type === 'llama3') {
    const ropeScaling: RopeScaling = {
      type: 'llama3',
      factor: factorKey(),
      lowFreqFactor: positiveNumber(o, 'low_freq_factor', file, Number.NaN),
      highFreqFactor: positiveNumber(o, 'high_freq_factor', file, Number.NaN),
      originalMaxPositions: positiveNumber(o, 'original_max_position_embeddings', file, Number.NaN),
    };
    if (!(ropeScaling.highFreqFactor > ropeScaling.lowFreqFactor))
      refuse(file, 'rope_scaling.high_freq_factor', 'greater than low_freq_factor', o.high_freq_factor);
    return ropeScaling;
  }
  return refuse(file, 'rope_scaling.rope_type', 'default, linear, llama3 or longrope', type);
}

/** The rotating leading dimensions of each head: head_dim × fraction, even (rotate_half pairs i, i + r/2). */
function rotaryDim(
  json: Record<string, unknown>,
  key: string,
  fallback: number,
  c: ModelConfig,
  file: string,
) {
  const fraction = positiveNumber(json, key, file, fallback, 1 + Number.EPSILON);
  const dim = Math.floor(c.headDim * fraction);
  if (dim % 2 !== 0 || dim === 0) refuse(file, key, 'head_dim × fraction even and > 0', json[key]);
  return dim;
}

/** A window size from config.json, or undefined when the key is absent or null. */
function windowSize(json: Record<string, unknown>, key: string, file: string): number | undefined {
  if (json[key] == null) return undefined;
  return integer(json, 'max_position_embeddings', file, undefined, key);
}

/** A soft cap (Gemma-2), or undefined when null. */
function softcap(json: Record<string, unknown>, key: string, file: string, fallback: number) {
  return json[key] === null ? undefined : positiveNumber(json, key, file, fallback);
}

function parseWith(d: Description, json: Record<string, unknown>, file: string): ModelConfig {
  const k = d.keys;
  const hiddenSize = integer(json, 'hidden_size', file, undefined, k.hidden);
  const numHeads = integer(json, 'num_attention_heads', file, undefined, k.heads);
  const numKvHeads = k.kvHeads ? integer(json, 'num_key_value_heads', file, numHeads, k.kvHeads) : numHeads;
  const headDim = integer(json, 'head_dim', file, Math.floor(hiddenSize / numHeads));
  if (numHeads % numKvHeads !== 0 || (json.head_dim == null && hiddenSize % numHeads !== 0)) {
    throw new ConfigError('inconsistent attention heads', {
      file,
      expected:
        'hidden_size divisible by num_attention_heads (or head_dim given), divisible by num_key_value_heads',
      got: `${hiddenSize}/${numHeads}/${numKvHeads}`,
    });
  }
  const vocabSize = integer(json, 'vocab_size', file);
  const layout: BlockLayout = { ...LLAMA_LAYOUT, ...d.layout, activation: activation(json, d, file) };
  // attention_bias / mlp_bias (Llama, Qwen3, Gemma configs) add biases to a bias-free layout.
  if (json.attention_bias === true) Object.assign(layout, { qkvBias: true, oBias: true });
  if (json.mlp_bias === true) layout.mlpBias = true;
  const c: ModelConfig = {
    modelType: d.modelType,
    vocabSize,
    hiddenSize,
    intermediateSize: integer(
      json,
      'intermediate_size',
      file,
      json[k.ffn] == null ? 4 * hiddenSize : undefined,
      k.ffn,
    ),
    numLayers: integer(json, 'num_hidden_layers', file, undefined, k.layers),
    numHeads,
    numKvHeads,
    headDim,
    maxPositions: integer(
      json,
      'max_position_embeddings',
      file,
      d.defaults.maxPositions ?? 2048,
      k.positions,
    ),
    ropeTheta: positiveNumber(json, k.ropeTheta, file, 10000),
    normEps: k.normEps ? positiveNumber(json, k.normEps, file, d.defaults.normEps, 1) : d.defaults.normEps,
    tiedEmbeddings:
      typeof json.tie_word_embeddings === 'boolean' ? json.tie_word_embeddings : d.defaults.tiedEmbeddings,
    bosTokenId: tokenId(json, 'bos_token_id', file, vocabSize),
    eosTokenId: tokenId(json, 'eos_token_id', file, vocabSize),
    layout,
  };
  if (layout.positions === 'rope') {
    layout.ropeScaling = ropeScaling(json, file);
    // rotate_half pairs column i with i + d/2 of each head.
    if (headDim % 2 !== 0) refuse(file, 'head_dim', 'an even integer (rotary embeddings)', headDim);
  }
  d.configure?.(json, file, c, layout);
  const r = layout.ropeScaling;
  const half = (layout.rotaryDim ?? headDim) / 2;
  if (r?.type === 'longrope' && (r.shortFactor.length !== half || r.longFactor.length !== half))
    refuse(
      file,
      'rope_scaling.short_factor',
      `${half} factors (one per rotary frequency)`,
      r.shortFactor.length,
    );
  return c;
}

/** Canonical module names of block `i`: `model.layers.{i}.<module>`. */
const inBlock = (module: string) => `model.layers.{i}.${module}`;

function expectedShapesOf(c: ModelConfig): Map<string, number[]> {
  const L = c.layout ?? LLAMA_LAYOUT;
  const D = c.hiddenSize;
  const shapes = new Map<string, number[]>();
  const qDim = c.numHeads * c.headDim;
  const kvDim = c.numKvHeads * c.headDim;
  const norm = (name: string, n = D) => {
    shapes.set(name, [n]);
    if (L.norm === 'layer') shapes.set(biasOf(name), [n]);
  };
  const linear = (name: string, out: number, inDim: number, bias: boolean) => {
    shapes.set(name, [out, inDim]);
    if (bias) shapes.set(biasOf(name), [out]);
  };
  shapes.set(EMBED, [c.vocabSize, D]);
  if (L.positions === 'learned') shapes.set(POSITION_EMBED, [c.maxPositions + L.positionOffset, D]);
  for (let i = 0; i < c.numLayers; i++) {
    const p = blockPrefix(i);
    norm(`${p}input_layernorm.weight`);
    norm(`${p}post_attention_layernorm.weight`);
    if (L.postNorms) {
      norm(`${p}pre_feedforward_layernorm.weight`);
      norm(`${p}post_feedforward_layernorm.weight`);
    }
    linear(`${p}self_attn.q_proj.weight`, qDim, D, L.qkvBias);
    linear(`${p}self_attn.k_proj.weight`, kvDim, D, L.qkvBias);
    linear(`${p}self_attn.v_proj.weight`, kvDim, D, L.qkvBias);
    linear(`${p}self_attn.o_proj.weight`, D, qDim, L.oBias);
    if (L.qkNorm) {
      shapes.set(`${p}self_attn.q_norm.weight`, [c.headDim]);
      shapes.set(`${p}self_attn.k_norm.weight`, [c.headDim]);
    }
    if (L.moe) {
      // Router and shared-expert gate: float [n, hidden] matrices, not block linears.
      shapes.set(`${p}${ROUTER}`, [L.moe.experts, D]);
      if (L.moe.sharedIntermediate) shapes.set(`${p}${SHARED_EXPERT_GATE}`, [1, D]);
      for (const projection of EXPERT_PROJECTIONS) {
        for (const l of linearsInRole(c, `mlp.${projection}`)) {
          const F = l.startsWith('mlp.shared_expert.') ? L.moe.sharedIntermediate! : L.moe.expertIntermediate;
          if (projection === 'down_proj') linear(`${p}${l}.weight`, D, F, false);
          else linear(`${p}${l}.weight`, F, D, false);
        }
      }
      continue;
    }
    if (L.gatedMlp) linear(`${p}mlp.gate_proj.weight`, c.intermediateSize, D, L.mlpBias);
    linear(`${p}mlp.up_proj.weight`, c.intermediateSize, D, L.mlpBias);
    linear(`${p}mlp.down_proj.weight`, D, c.intermediateSize, L.mlpBias);
  }
  norm(FINAL_NORM);
  if (!c.tiedEmbeddings) shapes.set(LM_HEAD, [c.vocabSize, D]);
  return shapes;
}

/** A rule's module pattern as a regular expression: `{i}` captures the layer, `{e}` the expert. */
function escapeRegExp(s: string): string {
  return s
    .replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
    .replace('\\{i\\}', '(?<i>\\d+)')
    .replace('\\{e\\}', '(?<e>\\d+)');
}

function transposed(t: Tensor): Tensor {
  const [rows, cols] = t.shape as [number, number];
  const data = new Float32Array(t.data.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) data[c * rows + r] = t.data[r * cols + c]!;
  return { shape: [cols, rows], data };
}

/** The parts of a fused projection t (rows = outputs), as `rule.split` lays them out. */
function splitRows(t: Tensor, rule: TensorRule, c: ModelConfig, name: string, file: string): Tensor[] {
  const sizes = rule.split!(c);
  const per = sizes.reduce((a, b) => a + b, 0);
  const blocks = rule.perHead ? c.numHeads : 1;
  const rows = t.shape[0]!;
  const cols = t.shape.length === 2 ? t.shape[1]! : 1;
  if (rows !== per * blocks || t.shape.length > 2) {
    throw new ShapeError('fused tensor does not split as the configuration says', {
      file,
      field: name,
      expected: `${per * blocks} rows (${blocks} × [${sizes}])`,
      got: `[${t.shape}]`,
    });
  }
  let offset = 0;
  return sizes.map((size) => {
    const data = new Float32Array(blocks * size * cols);
    for (let b = 0; b < blocks; b++) {
      const from = (b * per + offset) * cols;
      data.set(t.data.subarray(from, from + size * cols), b * size * cols);
    }
    offset += size;
    return { shape: t.shape.length === 2 ? [blocks * size, cols] : [blocks * size], data };
  });
}

function describe(d: Description): Architecture {
  const rules = (d.rules ?? []).map((rule) => ({
    rule,
    re: new RegExp(`^${escapeRegExp(rule.hf)}\\.(weight|bias)$`),
  }));
  const prefixes = ['', ...(d.prefixes ?? [])];
  return {
    modelType: d.modelType,
    hfNamesAreCanonical: rules.length === 0,
    parseConfig: (json, file) => parseWith(d, json, file),
    expectedShapes: expectedShapesOf,
    canonicalize(weights, c, file) {
      if (!rules.length && !d.ignore) return weights;
      const out: TensorMap = new Map();
      for (const [name, t] of weights) {
        const mapped = prefixes.some((prefix) => {
          if (!name.startsWith(prefix)) return false;
          const rest = name.slice(prefix.length);
          if (d.ignore?.test(rest)) return true;
          for (const { rule, re } of rules) {
            const m = re.exec(rest);
            if (!m) continue;
            const suffix = m.at(-1)!;
            const target = (module: string) =>
              `${module.replace('{i}', m.groups?.i ?? '').replace('{e}', m.groups?.e ?? '')}.${suffix}`;
            const tensor = rule.conv1d && t.shape.length === 2 ? transposed(t) : t;
            if (typeof rule.to === 'string') out.set(target(rule.to), tensor);
            else
              for (const [j, part] of splitRows(tensor, rule, c, name, file).entries())
                out.set(target(rule.to[j]!), part);
            return true;
          }
          return false;
        });
        if (!mapped) out.set(name, t);
      }
      return out;
    },
  };
}

const QKV_MODULES = ['q_proj', 'k_proj', 'v_proj'].map((m) => inBlock(`self_attn.${m}`));
const qkvSizes = (c: ModelConfig) => [c.numHeads, c.numKvHeads, c.numKvHeads].map((h) => h * c.headDim);

/** A model type of Llama's config keys and defaults, with what `d` changes. */
const llamaLike = (d: Pick<Description, 'modelType'> & Partial<Description>): Architecture =>
  describe({
    keys: LLAMA_KEYS,
    defaults: { tiedEmbeddings: false, normEps: 1e-6, activation: 'silu' },
    activationKey: 'hidden_act',
    layout: {},
    ...d,
  });

/** Llama and the models that share its layout (RMSNorm, RoPE, GQA, SwiGLU). */
export const LLAMA = llamaLike({
  modelType: 'llama',
  // llama2.c-converted checkpoints omit tie_word_embeddings and share the matrix.
  defaults: { tiedEmbeddings: true, normEps: 1e-6, activation: 'silu' },
});

/** Mistral: Llama with a sliding attention window on every layer. */
const MISTRAL = llamaLike({
  modelType: 'mistral',
  configure(json, file, c, layout) {
    const w = windowSize(json, 'sliding_window', file);
    if (w) layout.windows = Array(c.numLayers).fill(w);
  },
});

/** Qwen2 windows only with use_sliding_window, on layers from max_window_layers on. */
function qwenWindows(json: Record<string, unknown>, file: string, c: ModelConfig, layout: BlockLayout) {
  if (json.use_sliding_window !== true) return;
  const w = windowSize(json, 'sliding_window', file);
  const from = typeof json.max_window_layers === 'number' ? json.max_window_layers : 28;
  if (w) layout.windows = Array.from({ length: c.numLayers }, (_, i) => (i >= from ? w : 0));
}

/** Qwen2 / Qwen2.5: Llama with biases on q, k and v. */
const QWEN2 = llamaLike({
  modelType: 'qwen2',
  layout: { qkvBias: true },
  configure: qwenWindows,
});

/** Qwen3: Llama with an RMSNorm over each head of q and k (no q/k/v bias). */
const QWEN3 = llamaLike({
  modelType: 'qwen3',
  layout: { qkNorm: true },
  configure: qwenWindows,
});

/**
 * A sparse MoE MLP from config.json (MoeLayout in config.ts). `experts`/`ffn`: the keys of the
 * expert count and of each expert's width; `normTopK`: Mixtral renormalizes always, Qwen-MoE as
 * norm_topk_prob says (false by default in Qwen2MoeConfig and Qwen3MoeConfig).
 */
function moeLayout(
  json: Record<string, unknown>,
  file: string,
  keys: { experts: string; ffn: string; shared?: string },
  normTopK: boolean,
): MoeLayout {
  const experts = integer(json, 'num_experts', file, undefined, keys.experts);
  const topK = integer(json, 'num_experts', file, undefined, 'num_experts_per_tok');
  if (topK > experts) refuse(file, 'num_experts_per_tok', `at most ${keys.experts} (${experts})`, topK);
  const moe: MoeLayout = {
    experts,
    topK,
    normTopK,
    expertIntermediate: integer(json, 'intermediate_size', file, undefined, keys.ffn),
  };
  if (keys.shared) moe.sharedIntermediate = integer(json, 'intermediate_size', file, undefined, keys.shared);
  return moe;
}

/**
 * Qwen-MoE can interleave dense MLP layers (mlp_only_layers, decoder_sparse_step); every layer
 * sparse is what the published checkpoints use and what llama.cpp's qwen2moe/qwen3moe load.
 */
function everyLayerSparse(json: Record<string, unknown>, file: string) {
  const step = json.decoder_sparse_step ?? 1;
  if (step !== 1) refuse(file, 'decoder_sparse_step', '1 (every layer sparse)', step);
  const dense = json.mlp_only_layers ?? [];
  if (!Array.isArray(dense) || dense.length > 0)
    refuse(file, 'mlp_only_layers', '[] (every layer sparse)', dense);
}

/** Mixtral: Mistral with a sparse MoE of SwiGLU experts (w1 gate, w3 up, w2 down), top-k renormalized. */
const MIXTRAL = llamaLike({
  modelType: 'mixtral',
  rules: [
    { hf: inBlock('block_sparse_moe.gate'), to: inBlock('mlp.gate') },
    ...(
      [
        ['w1', 'gate_proj'],
        ['w3', 'up_proj'],
        ['w2', 'down_proj'],
      ] as const
    ).map(([w, projection]) => ({
      hf: inBlock(`block_sparse_moe.experts.{e}.${w}`),
      to: inBlock(`mlp.experts.{e}.${projection}`),
    })),
  ],
  configure(json, file, c, layout) {
    layout.moe = moeLayout(json, file, { experts: 'num_local_experts', ffn: 'intermediate_size' }, true);
    const w = windowSize(json, 'sliding_window', file);
    if (w) layout.windows = Array(c.numLayers).fill(w);
  },
});

/** Qwen2-MoE: Qwen2 with sparse MoE experts plus a shared expert gated by sigmoid(shared_expert_gate). */
const QWEN2_MOE = llamaLike({
  modelType: 'qwen2_moe',
  layout: { qkvBias: true },
  configure(json, file, c, layout) {
    everyLayerSparse(json, file);
    layout.moe = moeLayout(
      json,
      file,
      { experts: 'num_experts', ffn: 'moe_intermediate_size', shared: 'shared_expert_intermediate_size' },
      json.norm_topk_prob === true,
    );
    if (json.qkv_bias === false) layout.qkvBias = false;
    qwenWindows(json, file, c, layout);
  },
});

/** Qwen3-MoE: Qwen3 (q/k norms) with sparse MoE experts. */
const QWEN3_MOE = llamaLike({
  modelType: 'qwen3_moe',
  layout: { qkNorm: true },
  configure(json, file, c, layout) {
    everyLayerSparse(json, file);
    layout.moe = moeLayout(
      json,
      file,
      { experts: 'num_experts', ffn: 'moe_intermediate_size' },
      json.norm_topk_prob === true,
    );
    qwenWindows(json, file, c, layout);
  },
});

/** Gemma: (1 + w) RMSNorm, embeddings × sqrt(hidden), GeGLU. */
const GEMMA_LAYOUT: Partial<BlockLayout> = { normOffset: 1 };
const gemmaEmbedScale = (c: ModelConfig, layout: BlockLayout) => {
  // Hugging Face casts sqrt(hidden) to the activations' dtype (float32 here).
  layout.embedScale = Math.fround(Math.sqrt(c.hiddenSize));
};
const GEMMA = llamaLike({
  modelType: 'gemma',
  defaults: { tiedEmbeddings: true, normEps: 1e-6, activation: 'gelu_pytorch_tanh' },
  // gemma-2b/7b configs say hidden_act "gelu" but the model uses hidden_activation (tanh GELU).
  activationKey: 'hidden_activation',
  layout: GEMMA_LAYOUT,
  configure: (_json, _file, c, layout) => gemmaEmbedScale(c, layout),
});

/** Gemma-2: Gemma + post-norms, soft-capping, query_pre_attn_scalar, sliding window on even layers. */
const GEMMA2 = llamaLike({
  modelType: 'gemma2',
  defaults: { tiedEmbeddings: true, normEps: 1e-6, activation: 'gelu_pytorch_tanh' },
  activationKey: 'hidden_activation',
  layout: { ...GEMMA_LAYOUT, postNorms: true },
  configure(json, file, c, layout) {
    gemmaEmbedScale(c, layout);
    layout.attentionScale = positiveNumber(json, 'query_pre_attn_scalar', file, 256) ** -0.5;
    layout.attentionSoftcap = softcap(json, 'attn_logit_softcapping', file, 50);
    layout.finalSoftcap = softcap(json, 'final_logit_softcapping', file, 30);
    // Layers 0, 2, 4, ... attend locally (Gemma2's layer_types / is_sliding = not layer_idx % 2).
    const w = windowSize(json, 'sliding_window', file) ?? 4096;
    layout.windows = Array.from({ length: c.numLayers }, (_, i) => (i % 2 === 0 ? w : 0));
  },
});

/** Phi-3: Llama with fused qkv_proj and gate_up_proj, optional partial rotary and sliding window. */
const PHI3 = llamaLike({
  modelType: 'phi3',
  defaults: { tiedEmbeddings: false, normEps: 1e-5, activation: 'silu' },
  rules: [
    { hf: inBlock('self_attn.qkv_proj'), to: QKV_MODULES, split: qkvSizes },
    // gate_up_proj's first half is the gate (Phi3MLP: gate, up = chunk(2)).
    {
      hf: inBlock('mlp.gate_up_proj'),
      to: [inBlock('mlp.gate_proj'), inBlock('mlp.up_proj')],
      split: (c) => [c.intermediateSize, c.intermediateSize],
    },
  ],
  configure(json, file, c, layout) {
    const r = rotaryDim(json, 'partial_rotary_factor', 1, c, file);
    if (r !== c.headDim) layout.rotaryDim = r;
    const w = windowSize(json, 'sliding_window', file);
    if (w) layout.windows = Array(c.numLayers).fill(w);
  },
});

/** LayerNorm with bias, biases everywhere, plain MLP act(up(h)): GPT-2, OPT, NeoX. */
const PRE_LN: Partial<BlockLayout> = {
  norm: 'layer',
  gatedMlp: false,
  qkvBias: true,
  oBias: true,
  mlpBias: true,
};

/** GPT-2: learned positions, Conv1D weights, fused c_attn, tanh GELU. */
const GPT2 = describe({
  modelType: 'gpt2',
  keys: {
    hidden: 'n_embd',
    layers: 'n_layer',
    heads: 'n_head',
    ffn: 'n_inner',
    positions: 'n_positions',
    normEps: 'layer_norm_epsilon',
    ropeTheta: 'rope_theta',
  },
  defaults: { tiedEmbeddings: true, normEps: 1e-5, activation: 'gelu_new', maxPositions: 1024 },
  activationKey: 'activation_function',
  layout: { ...PRE_LN, positions: 'learned' },
  prefixes: ['transformer.'],
  ignore: /^h\.\d+\.attn\.(bias|masked_bias)$/,
  rules: [
    { hf: 'wte', to: 'model.embed_tokens' },
    { hf: 'wpe', to: 'model.embed_positions' },
    { hf: 'ln_f', to: 'model.norm' },
    { hf: 'h.{i}.ln_1', to: inBlock('input_layernorm') },
    { hf: 'h.{i}.ln_2', to: inBlock('post_attention_layernorm') },
    { hf: 'h.{i}.attn.c_attn', to: QKV_MODULES, conv1d: true, split: qkvSizes },
    { hf: 'h.{i}.attn.c_proj', to: inBlock('self_attn.o_proj'), conv1d: true },
    { hf: 'h.{i}.mlp.c_fc', to: inBlock('mlp.up_proj'), conv1d: true },
    { hf: 'h.{i}.mlp.c_proj', to: inBlock('mlp.down_proj'), conv1d: true },
  ],
  configure(json, file) {
    if (json.scale_attn_by_inverse_layer_idx === true)
      refuse(file, 'scale_attn_by_inverse_layer_idx', 'false', true);
    if (json.scale_attn_weights === false) refuse(file, 'scale_attn_weights', 'true', false);
  },
});

/** OPT: learned positions offset by 2, ReLU, pre-LayerNorm (do_layer_norm_before). */
const OPT = describe({
  modelType: 'opt',
  keys: { ...LLAMA_KEYS, kvHeads: undefined, ffn: 'ffn_dim', normEps: undefined },
  defaults: { tiedEmbeddings: true, normEps: 1e-5, activation: 'relu' },
  activationKey: 'activation_function',
  layout: { ...PRE_LN, positions: 'learned', positionOffset: 2 },
  prefixes: ['model.'],
  rules: [
    { hf: 'decoder.embed_tokens', to: 'model.embed_tokens' },
    { hf: 'decoder.embed_positions', to: 'model.embed_positions' },
    { hf: 'decoder.final_layer_norm', to: 'model.norm' },
    ...['q_proj', 'k_proj', 'v_proj'].map((m) => ({
      hf: `decoder.layers.{i}.self_attn.${m}`,
      to: inBlock(`self_attn.${m}`),
    })),
    { hf: 'decoder.layers.{i}.self_attn.out_proj', to: inBlock('self_attn.o_proj') },
    { hf: 'decoder.layers.{i}.self_attn_layer_norm', to: inBlock('input_layernorm') },
    { hf: 'decoder.layers.{i}.final_layer_norm', to: inBlock('post_attention_layernorm') },
    { hf: 'decoder.layers.{i}.fc1', to: inBlock('mlp.up_proj') },
    { hf: 'decoder.layers.{i}.fc2', to: inBlock('mlp.down_proj') },
  ],
  configure(json, file, c) {
    if (json.do_layer_norm_before === false) refuse(file, 'do_layer_norm_before', 'true', false);
    if (json.layer_norm_elementwise_affine === false)
      refuse(file, 'layer_norm_elementwise_affine', 'true', false);
    if (json.enable_bias === false) refuse(file, 'enable_bias', 'true', false);
    const proj = json.word_embed_proj_dim;
    if (proj != null && proj !== c.hiddenSize) refuse(file, 'word_embed_proj_dim', `${c.hiddenSize}`, proj);
  },
});

/** GPT-NeoX / Pythia: parallel residual, partial rotary, fused per-head query_key_value. */
const GPT_NEOX = describe({
  modelType: 'gpt_neox',
  keys: { ...LLAMA_KEYS, kvHeads: undefined, normEps: 'layer_norm_eps', ropeTheta: 'rotary_emb_base' },
  defaults: { tiedEmbeddings: false, normEps: 1e-5, activation: 'gelu' },
  activationKey: 'hidden_act',
  layout: PRE_LN,
  prefixes: ['gpt_neox.'],
  ignore: /^layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)$/,
  rules: [
    { hf: 'embed_in', to: 'model.embed_tokens' },
    { hf: 'final_layer_norm', to: 'model.norm' },
    { hf: 'embed_out', to: 'lm_head' },
    { hf: 'layers.{i}.input_layernorm', to: inBlock('input_layernorm') },
    { hf: 'layers.{i}.post_attention_layernorm', to: inBlock('post_attention_layernorm') },
    // [3·hidden, hidden] viewed as [heads, 3, head_dim]: q, k, v of head h are consecutive.
    {
      hf: 'layers.{i}.attention.query_key_value',
      to: QKV_MODULES,
      perHead: true,
      split: (c) => [c.headDim, c.headDim, c.headDim],
    },
    { hf: 'layers.{i}.attention.dense', to: inBlock('self_attn.o_proj') },
    { hf: 'layers.{i}.mlp.dense_h_to_4h', to: inBlock('mlp.up_proj') },
    { hf: 'layers.{i}.mlp.dense_4h_to_h', to: inBlock('mlp.down_proj') },
  ],
  configure(json, file, c, layout) {
    layout.parallelResidual = json.use_parallel_residual !== false;
    const r = rotaryDim(json, 'rotary_pct', 0.25, c, file);
    if (r !== c.headDim) layout.rotaryDim = r;
    if (json.attention_bias === false) refuse(file, 'attention_bias', 'true', false);
  },
});

const REGISTRY = new Map<string, Architecture>(
  [LLAMA, MISTRAL, MIXTRAL, QWEN2, QWEN2_MOE, QWEN3, QWEN3_MOE, GEMMA, GEMMA2, PHI3, GPT2, OPT, GPT_NEOX].map(
    (a) => [a.modelType, a],
  ),
);

export function architectureFor(modelType: unknown, file: string): Architecture {
  const arch = typeof modelType === 'string' ? REGISTRY.get(modelType) : undefined;
  if (!arch) {
    throw new ConfigError('unknown architecture', {
      file,
      field: 'model_type',
      expected: `one of ${[...REGISTRY.keys()].join(', ')}`,
      got: JSON.stringify(modelType),
    });
  }
  return arch;
}
