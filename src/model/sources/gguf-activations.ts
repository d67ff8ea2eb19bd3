/**
 * What llama.cpp's CPU backend does to the input of a matrix product, so that ptqkit's forward
 * over a GGUF's dequantized weights can reproduce llama.cpp's logits, not only its weights.
 *
 * ggml-cpu.c (`ggml_compute_forward_mul_mat`, table `type_traits_cpu`): before the dot products,
 * each float32 input row is converted to the weight type's `vec_dot_type` with that type's
 * `from_float`, and the kernel multiplies the weight blocks with the converted blocks:
 *
 *   weight type                         vec_dot_type  conversion of x (per row)
 *   F32                                 F32           none
 *   F16 / BF16                          F16 / BF16    round to nearest even
 *   Q4_0, Q5_0, Q8_0                    Q8_0          blocks of 32: d = amax/127 stored f16,
 *   Q4_1, Q5_1                          Q8_1            q = roundf(x · (1/d)), x̂ = f16(d) · q
 *   Q2_K..Q6_K, TQ1_0, TQ2_0            Q8_K          blocks of 256: max = the element of largest
 *                                                       |x| (the first one), iscale = −127/max,
 *                                                       q = min(127, nearest_int(iscale·x)),
 *                                                       x̂ = (1/iscale) · q, d kept float32
 *
 * (ggml-quants.c quantize_row_q8_0_ref / quantize_row_q8_1_ref / quantize_row_q8_K_ref; the
 * integer dot product then equals Σ w · x̂ up to float summation order.) The CPU backend runs
 * its own SIMD quantize_row_q8_0/q8_1, which differ from the reference in two details that
 * matter: a code one step off at a near-half moves a 656K-parameter model's log-probs by up to
 * 0.3 (measured), so the flavour is chosen to match the build (`GgmlQuantizer`):
 *   ref  id = 1/(amax/127), roundf (halves away from zero)      scalar builds
 *   x86  id = 127/amax,     _mm256_round_ps (halves to even)     arch/x86/quants.c (AVX, AVX2)
 *   arm  id = 1/(amax/127), vcvtnq_s32_f32 (halves to even)      arch/arm/quants.c (NEON)
 * quantize_row_q8_K is the reference on every architecture, and the x86 repack and AMX paths
 * quantize the same way (ggml_quantize_mat_q8_0_4x8 uses 127/amax, q8_K's sign choice gives the
 * same d·q). Q8_1 also stores s = f16(d · Σq) for the weight's offset term m·s; emulating it as
 * m · f16(d) · Σq differs by the f16 rounding of that one product per block (relative 2^−11).
 * On hosts with Intel AMX (node-llama-cpp then loads its sapphirerapids build), F16 weights
 * that the AMX buffer takes are multiplied with float32 inputs (amx/mmq.cpp: "f16 only has
 * avx512 kernels"), i.e. as F32 weights are (`amxMultipliesInFloat`). Without AMX (e.g. the
 * zen4 build on AVX-512 AMD EPYC) the input is first rounded by ggml_cpu_fp32_to_fp16 (nearest
 * even), then llamafile's tinyBLAS multiplies F16×F16 (its F16 case takes no F32 input on x86),
 * or ggml_vec_dot_f16 for one token: measured, llama.cpp's F16 matmul outputs equal W·f16(x)
 * to 1e-7 relative (W·x only to 1e-4). An f16 step is ~2^13 float32 ulps, so float summation
 * order flips such a rounding within the first positions (test/export/gguf.test.ts).
 */
import { readFileSync } from 'node:fs';
import { ConfigError } from '../../errors.js';
import { nearestInt, roundHalfAway, viaF16 } from '../../formats/ggml-math.js';
import { roundToBf16, roundToF16 } from '../../formats/half.js';
import { type BlockLinear, EMBED, LM_HEAD, linearWeightName } from '../../formats/tensor-names.js';
import type { LinearInputTransform } from '../input-transform.js';

export type GgmlVecDotType = 'F32' | 'F16' | 'BF16' | 'Q8_0' | 'Q8_1' | 'Q8_K';

/** ggml-cpu.c type_traits_cpu[type].vec_dot_type for the types ptqkit reads and writes. */
const VEC_DOT: Record<string, GgmlVecDotType> = {
  F32: 'F32',
  F16: 'F16',
  BF16: 'BF16',
  Q4_0: 'Q8_0',
  Q5_0: 'Q8_0',
  Q8_0: 'Q8_0',
  Q4_1: 'Q8_1',
  Q5_1: 'Q8_1',
  Q2_K: 'Q8_K',
  Q3_K: 'Q8_K',
  Q4_K: 'Q8_K',
  Q5_K: 'Q8_K',
  Q6_K: 'Q8_K',
  TQ1_0: 'Q8_K',
  TQ2_0: 'Q8_K',
};

export function vecDotType(weightType: string, tensor = 'tensor'): GgmlVecDotType {
  const v = VEC_DOT[weightType];
  if (!v) {
    throw new ConfigError('no llama.cpp matmul emulation for this weight type', {
      field: tensor,
      expected: Object.keys(VEC_DOT).join(', '),
      got: weightType,
    });
  }
  return v;
}

/** The activation quantizer flavour of a llama.cpp CPU build (see above). */
export type GgmlQuantizer = 'ref' | 'x86' | 'arm';

/** The flavour node-llama-cpp's prebuilt binaries run on this host. */
export function hostGgmlQuantizer(): GgmlQuantizer {
  return process.arch === 'x64' ? 'x86' : process.arch === 'arm64' ? 'arm' : 'ref';
}

/** Whether the host has AMX-INT8 (Linux /proc/cpuinfo), so that llama.cpp uses its AMX buffer. */
export function hostHasAmx(): boolean {
  if (process.platform !== 'linux' || process.arch !== 'x64') return false;
  try {
    const flags = /^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? '';
    return /\bamx_int8\b/.test(flags) && /\bavx512_vnni\b/.test(flags);
  } catch {
    return false;
  }
}

/**
 * An F16 matrix [out, in] the AMX buffer takes (amx.cpp supports_op: in % 16, out % 32 == 0):
 * llama.cpp then multiplies it with float32 inputs, as it does F32 weights.
 */
export const amxMultipliesInFloat = (type: string, inDim: number, outDim: number): boolean =>
  type === 'F16' && inDim % 16 === 0 && outDim % 32 === 0;

/** Q8_1's x̂ is Q8_0's (same d, same rounding): one conversion serves both. */
const conversionOf = (v: GgmlVecDotType): GgmlVecDotType => (v === 'Q8_1' ? 'Q8_0' : v);

/** x [rows, cols] converted in place as llama.cpp converts a matmul input for `vecDot`. */
export function ggmlConvertInput(
  x: Float32Array,
  rows: number,
  cols: number,
  vecDot: GgmlVecDotType,
  quantizer: GgmlQuantizer = hostGgmlQuantizer(),
): Float32Array {
  const kind = conversionOf(vecDot);
  if (kind === 'F32') return x;
  if (kind === 'F16' || kind === 'BF16') {
    const round = kind === 'F16' ? roundToF16 : roundToBf16;
    for (let i = 0; i < x.length; i++) x[i] = round(x[i]!);
    return x;
  }
  const block = kind === 'Q8_0' ? 32 : 256;
  if (cols % block !== 0) {
    throw new ConfigError(`a ${vecDot} matmul input needs rows of whole blocks of ${block}`, {
      got: String(cols),
    });
  }
  for (let start = 0; start < rows * cols; start += block) {
    if (kind === 'Q8_0') quantizeQ8_0Block(x, start, block, quantizer);
    else quantizeQ8_KBlock(x, start, block);
  }
  return x;
}

/** quantize_row_q8_0 on x[start, start + n), dequantized: f16(d) · round(x · id), d = amax/127. */
function quantizeQ8_0Block(x: Float32Array, start: number, n: number, quantizer: GgmlQuantizer): void {
  let amax = 0;
  for (let j = start; j < start + n; j++) amax = Math.max(amax, Math.abs(x[j]!));
  const d = Math.fround(amax / 127);
  const id = quantizer === 'x86' ? (amax ? Math.fround(127 / amax) : 0) : d ? Math.fround(1 / d) : 0;
  // |x·id| <= 127 (+ an ulp), inside nearestInt's exact range: its float add rounds halves to even.
  const round = quantizer === 'ref' ? roundHalfAway : nearestInt;
  const dStored = viaF16(d);
  for (let j = start; j < start + n; j++) x[j] = dStored * round(Math.fround(x[j]! * id));
}

/** quantize_row_q8_K_ref on x[start, start + n), dequantized: (1/iscale) · q with d in float32. */
function quantizeQ8_KBlock(x: Float32Array, start: number, n: number): void {
  let amax = 0;
  let max = 0;
  for (let j = start; j < start + n; j++) {
    const ax = Math.abs(x[j]!);
    if (ax > amax) {
      amax = ax;
      max = x[j]!;
    }
  }
  if (amax === 0) {
    x.fill(0, start, start + n);
    return;
  }
  const iscale = Math.fround(-127 / max);
  const d = Math.fround(1 / iscale);
  for (let j = start; j < start + n; j++) x[j] = d * Math.min(127, nearestInt(Math.fround(iscale * x[j]!)));
}

/**
 * The forward-pass transform that converts every block linear's input as llama.cpp's matmul
 * for its stored type does. `weightTypes`: ggml type name per Hugging Face weight name (absent:
 * F32). Linears that share an input must agree on its conversion (they do in every file
 * llama-quantize or ptqkit writes: q/k/v and gate/up have the same input width, hence the same
 * fallbacks, and the mixes give them types with the same vec_dot_type).
 */
export function ggmlLinearInputTransform(
  weightTypes: Readonly<Record<string, string>>,
  quantizer: GgmlQuantizer = hostGgmlQuantizer(),
): LinearInputTransform {
  const typeOf = (layer: number, linear: BlockLinear) =>
    weightTypes[linearWeightName(layer, linear)] ?? 'F32';
  return (layer, readers, x, rows, cols) => {
    const kinds = new Set(
      readers.map((l) => conversionOf(vecDotType(typeOf(layer, l), linearWeightName(layer, l)))),
    );
    if (kinds.size > 1) {
      throw new ConfigError('linears sharing an input need one llama.cpp input conversion', {
        field: `layer ${layer} ${readers.join('/')}`,
        got: readers.map((l) => typeOf(layer, l)).join('/'),
      });
    }
    return ggmlConvertInput(x, rows, cols, [...kinds][0]!, quantizer);
  };
}

/** The conversion of the lm_head input (the output matrix, or token_embd when tied), if any. */
export function ggmlHeadInputTransform(
  weightTypes: Readonly<Record<string, string>>,
  tiedEmbeddings: boolean,
  quantizer: GgmlQuantizer = hostGgmlQuantizer(),
): ((x: Float32Array, rows: number, cols: number) => Float32Array) | undefined {
  const name = tiedEmbeddings ? EMBED : LM_HEAD;
  const vecDot = conversionOf(vecDotType(weightTypes[name] ?? 'F32', name));
  return vecDot === 'F32' ? undefined : (x, rows, cols) => ggmlConvertInput(x, rows, cols, vecDot, quantizer);
}
