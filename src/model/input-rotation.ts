/**
 * Online rotation of block-linear inputs: QuaRot's online Hadamard transforms (Ashkboos et
 * al. 2024, arXiv:2404.00456 §4, R3/R4 "online Hadamard") and QuIP#'s input-side incoherence
 * processing (Tseng et al. 2024, arXiv:2402.04396 §3). For an input x of a linear W and an
 * orthogonal Q, x Wᵀ = (x Q)(W Q)ᵀ: the stored weights are W Q (rotate.ts, rotateOnline) and
 * the runtime rotates x ← x Q before the product, by a fast randomized Hadamard transform
 * (math/hadamard.ts, O(n log n) per row). No gain is folded and the residual stream is untouched,
 * so only the linears' inputs change basis.
 *
 * Q is a property of the model: it is rebuilt from (seed, layer, input) wherever the model
 * runs, so a runtime needs the seed, not n×n matrices.
 */
import { FormatError, UsageError } from '../errors.js';
import type { BlockLinear } from '../formats/tensor-names.js';
import { RandomizedHadamard } from '../math/hadamard.js';
import { mulberry32 } from '../random.js';
import type { LinearInputTransform } from './input-transform.js';

/** The four inputs of a block's linears: q/k/v share one, gate/up another. */
export const LINEAR_INPUTS = ['attention', 'o_proj', 'mlp', 'down_proj'] as const;
export type LinearInput = (typeof LINEAR_INPUTS)[number];

export interface InputRotationSpec {
  kind: 'hadamard';
  /** Seed of every Q (inputRotation). */
  seed: number;
  /** The inputs that are rotated. */
  inputs: LinearInput[];
}

/** The input a block linear reads. */
export function linearInputOf(linear: BlockLinear): LinearInput {
  if (linear === 'self_attn.o_proj') return 'o_proj';
  if (linear === 'mlp.down_proj') return 'down_proj';
  return linear.startsWith('self_attn.') ? 'attention' : 'mlp';
}

export function checkInputRotation(spec: InputRotationSpec): void {
  if (spec.kind !== 'hadamard' || !Number.isInteger(spec.seed) || spec.seed < 0 || spec.seed >= 2 ** 16)
    throw new UsageError('input rotation: kind must be hadamard and seed an integer in [0, 65536)', {
      got: JSON.stringify(spec),
    });
  for (const input of spec.inputs)
    if (!LINEAR_INPUTS.includes(input))
      throw new UsageError('input rotation: unknown input', {
        expected: LINEAR_INPUTS.join(', '),
        got: input,
      });
}

/**
 * The randomized Hadamard Q (n = the input's width) of `input` in `layer`: its signs (and any
 * random-orthogonal factor) drawn from mulberry32(seed · 2^16 + 4 · layer + index of input),
 * one independent stream per matrix, so any Q is rebuilt without the others.
 */
export function inputRotation(
  seed: number,
  layer: number,
  input: LinearInput,
  n: number,
): RandomizedHadamard {
  const stream = (seed * 2 ** 16 + 4 * layer + LINEAR_INPUTS.indexOf(input)) >>> 0;
  return new RandomizedHadamard(n, mulberry32(stream));
}

/** x ← x Q on the rotated inputs (in place, float64 per row), each Q built once per (layer, input). */
export function inputRotationTransform(spec: InputRotationSpec): LinearInputTransform {
  checkInputRotation(spec);
  const cache = new Map<string, RandomizedHadamard>();
  return (layer, readers, x, rows, cols) => {
    const input = linearInputOf(readers[0]!);
    if (!spec.inputs.includes(input)) return x;
    const key = `${layer}:${input}`;
    let Q = cache.get(key);
    if (!Q) {
      Q = inputRotation(spec.seed, layer, input, cols);
      cache.set(key, Q);
    }
    Q.applyRows(x, rows);
    return x;
  };
}

/**
 * The online rotation a ptqkit checkpoint's quantization_config.rotation records (written by
 * quantize-model.ts from rotate.ts rotateOnline), to put back into its config when it is
 * loaded: the saved weights hold W Q and compute nonsense without it. Undefined for any other
 * rotation (an absorbed one needs nothing at run time).
 */
export function onlineRotationOf(rotation: unknown, file: string): InputRotationSpec | undefined {
  const r = rotation as { method?: unknown; seed?: unknown; inputs?: unknown } | undefined;
  if (r?.method !== 'hadamard-online') return undefined;
  const spec = { kind: 'hadamard', seed: r.seed, inputs: r.inputs } as InputRotationSpec;
  try {
    if (!Array.isArray(spec.inputs)) throw new UsageError('inputs must be a list');
    checkInputRotation(spec);
  } catch (e) {
    throw new FormatError(`invalid online rotation: ${(e as Error).message}`, {
      file,
      field: 'quantization_config.rotation',
      got: JSON.stringify(rotation),
    });
  }
  return spec;
}

/**
 * Export formats store plain W x products (GGUF, GPTQ, compressed-tensors, ONNX's MatMulNBits):
 * weights W·Q without the runtime's x ← x·Q compute a different function, so refuse them.
 * `config`: a ModelConfig (only its rotation is read).
 */
export function refuseOnlineRotation(
  config: { linearInputOps?: { rotation?: InputRotationSpec } },
  file: string,
  format: string,
): void {
  const rotation = config.linearInputOps?.rotation;
  if (!rotation) return;
  throw new UsageError(
    `cannot export to ${format}: the model rotates its ${rotation.inputs.join(', ')} inputs online`,
    {
      file,
      hint: 'its weights hold W·Q and need x·Q at run time, which the format cannot express; quantize with --rotate hadamard (absorbed) to export',
    },
  );
}
