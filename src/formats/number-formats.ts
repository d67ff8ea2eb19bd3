/**
 * The number formats a grid can quantize to, one row each: this table drives `--format`
 * parsing, its help, grid names and validation (llama.cpp's QUANT_OPTIONS idea).
 *
 *   | format      | element  | block            | scale                  | bits/weight      |
 *   |-------------|----------|------------------|------------------------|------------------|
 *   | int         | int2..8  | tensor/chan/G    | f16/bf16/f32/e4m3      | b + 16/G (+ b/G) |
 *   | fp8-e4m3 …  | ExMy     | tensor/chan/G    | amax / max, f16…       | 8 + 16/G         |
 *   | nvfp4       | E2M1     | 16               | E4M3 + FP32 per tensor | 4.5 (+ 32/n)     |
 *   | mxfp4/6/8   | E2M1/…   | 32               | E8M0                   | 4.25 / 6.25 / 8.25 |
 *   | ternary     | {−1,0,1} | tensor/chan/G    | mean|w| (BitNet b1.58) | 1.6 + 16/G       |
 *   | binary      | {−1,1}   | tensor/chan/G    | mean|w| (XNOR-Net)     | 1 + 16/G         |
 *
 * GridSpec, a grid as it is stored (bits, symmetry, granularity, scale dtype, format), is
 * declared here with the formats it names; grid.ts builds the Grid that quantizes by it.
 */
import { UsageError } from '../errors.js';
import { ELEMENT_FORMATS, type ElementName, type ScaleFormatName } from './element-formats.js';

export type Granularity = 'tensor' | 'channel' | 'group';
export type ScaleDtype = ScaleFormatName;

export interface GridSpec {
  bits: number;
  symmetric: boolean;
  granularity: Granularity;
  /** Columns per group when granularity is 'group'. */
  groupSize: number;
  scaleDtype: ScaleDtype;
  /**
   * 'integer' (default): zero points are codes, stored packed like them (GPTQ/AWQ).
   * 'float': zero points are real numbers stored in `scaleDtype` (HQQ optimizes them freely).
   */
  zeroPoint?: 'integer' | 'float';
  /** Number format of the codes (QUANT_FORMATS below); absent means 'int'. */
  format?: FormatName;
  /**
   * NVFP4's per-tensor FP32 scale (set on the grid bound to one tensor, `Grid.forTensor`):
   * w = value(code) · s_block / globalScale.
   */
  globalScale?: number;
}

/**
 * How a block's scale is chosen:
 *  - minmax: integer grids (GPTQ find_params), grid.ts;
 *  - amax: s = amax / max(element), the llm-compressor / compressed-tensors FP8 rule;
 *  - nvfp4: two-level, E4M3 block scale relative to an FP32 per-tensor scale;
 *  - mx: E8M0 2^(floor(log2 amax) − emax_elem), OCP MX v1.0 §6.3;
 *  - absmean: s = mean|w| (BitNet b1.58 ternary, XNOR-Net binary).
 */
export type Scaling = 'minmax' | 'amax' | 'nvfp4' | 'mx' | 'absmean';

export interface FormatInfo {
  element?: ElementName;
  scaling: Scaling;
  /** A fixed group size (NVFP4 16, MX 32). */
  groupSize?: number;
  /** A fixed scale dtype (NVFP4 e4m3, MX e8m0). */
  scaleDtype?: ScaleDtype;
  description: string;
}

export const QUANT_FORMATS = {
  int: { scaling: 'minmax', description: 'integer codes, w = s·(q − z), --bits 2..8' },
  'fp8-e4m3': { element: 'fp8-e4m3', scaling: 'amax', description: 'FP8 E4M3 (max 448), s = amax/448' },
  'fp8-e5m2': { element: 'fp8-e5m2', scaling: 'amax', description: 'FP8 E5M2 (max 57344), s = amax/57344' },
  'fp6-e3m2': { element: 'fp6-e3m2', scaling: 'amax', description: 'FP6 E3M2 (max 28), s = amax/28' },
  'fp6-e2m3': { element: 'fp6-e2m3', scaling: 'amax', description: 'FP6 E2M3 (max 7.5), s = amax/7.5' },
  'fp4-e2m1': { element: 'fp4-e2m1', scaling: 'amax', description: 'FP4 E2M1 (max 6), s = amax/6' },
  nvfp4: {
    element: 'fp4-e2m1',
    scaling: 'nvfp4',
    groupSize: 16,
    scaleDtype: 'e4m3',
    description: 'NVFP4: E2M1, E4M3 scale per 16, FP32 scale per tensor (4.5 bits/w)',
  },
  mxfp4: {
    element: 'fp4-e2m1',
    scaling: 'mx',
    groupSize: 32,
    scaleDtype: 'e8m0',
    description: 'OCP MXFP4: E2M1, E8M0 scale per 32 (4.25 bits/w)',
  },
  'mxfp6-e3m2': {
    element: 'fp6-e3m2',
    scaling: 'mx',
    groupSize: 32,
    scaleDtype: 'e8m0',
    description: 'OCP MXFP6: E3M2, E8M0 scale per 32 (6.25 bits/w)',
  },
  'mxfp6-e2m3': {
    element: 'fp6-e2m3',
    scaling: 'mx',
    groupSize: 32,
    scaleDtype: 'e8m0',
    description: 'OCP MXFP6: E2M3, E8M0 scale per 32 (6.25 bits/w)',
  },
  mxfp8: {
    element: 'fp8-e4m3',
    scaling: 'mx',
    groupSize: 32,
    scaleDtype: 'e8m0',
    description: 'OCP MXFP8: E4M3, E8M0 scale per 32 (8.25 bits/w)',
  },
  ternary: {
    element: 'ternary',
    scaling: 'absmean',
    description: 'ternary {−1,0,+1} · mean|w| (BitNet b1.58 absmean), 5 trits per byte (1.6 bits)',
  },
  binary: {
    element: 'binary',
    scaling: 'absmean',
    description: 'binary sign(w) · mean|w| (XNOR-Net), 1 bit',
  },
} as const satisfies Record<string, FormatInfo>;
export type FormatName = keyof typeof QUANT_FORMATS;

export const FORMAT_NAMES = Object.keys(QUANT_FORMATS) as FormatName[];

export function formatInfo(format: FormatName | undefined): FormatInfo {
  const info = (QUANT_FORMATS as Record<string, FormatInfo>)[format ?? 'int'];
  if (!info) {
    throw new UsageError('unknown number format', {
      field: 'format',
      expected: FORMAT_NAMES.join('|'),
      got: String(format),
    });
  }
  return info;
}

/** Bits of one element code of a format (undefined for int: --bits chooses). */
export function formatBits(format: FormatName): number | undefined {
  const { element } = formatInfo(format);
  return element && ELEMENT_FORMATS[element].bits;
}

/** Options as the CLI gives them; undefined = not given on the command line. */
export interface FormatOptions {
  bits?: number;
  /** Input columns per scale; -1 (GPTQ's convention, the CLI's) or 0 = per output channel. */
  groupSize?: number;
  perTensor?: boolean;
  asym?: boolean;
  scaleDtype?: ScaleDtype;
}

/** Defaults of the integer grid options (the CLI's defaults). */
export const GRID_DEFAULTS = { bits: 4, groupSize: 32, scaleDtype: 'f16' } as const;

/**
 * The grid of `format` with the given options. Options a format fixes (NVFP4's group 16 and E4M3
 * scales, MX's group 32 and E8M0 scales, the element width) are errors when given otherwise.
 * Integer grids come out exactly as before formats existed (no `format` field).
 */
export function gridSpecFor(format: FormatName, o: FormatOptions): GridSpec {
  const info = formatInfo(format);
  const groupSize = o.groupSize ?? info.groupSize ?? GRID_DEFAULTS.groupSize;
  if (!Number.isInteger(groupSize) || groupSize < -1) {
    throw new UsageError('invalid group size', {
      field: 'group-size',
      expected: 'a positive integer, or -1 for one scale per output channel',
      got: String(groupSize),
    });
  }
  const granularity: Granularity = o.perTensor ? 'tensor' : groupSize <= 0 ? 'channel' : 'group';
  const base = { granularity, groupSize: Math.max(0, groupSize) };
  if (format === 'int') {
    return {
      bits: o.bits ?? GRID_DEFAULTS.bits,
      symmetric: !o.asym,
      ...base,
      scaleDtype: o.scaleDtype ?? GRID_DEFAULTS.scaleDtype,
    };
  }
  const bits = formatBits(format)!;
  if (o.bits !== undefined && o.bits !== bits) {
    throw new UsageError(`--bits disagrees with --format ${format}`, {
      field: 'bits',
      expected: `${bits} or no --bits`,
      got: String(o.bits),
    });
  }
  if (o.asym) {
    throw new UsageError(`${format} grids are symmetric`, { field: 'asym', hint: 'drop --asym' });
  }
  if (
    info.groupSize !== undefined &&
    (o.perTensor || (o.groupSize !== undefined && o.groupSize !== info.groupSize))
  ) {
    throw new UsageError(`${format} uses blocks of ${info.groupSize}`, {
      field: 'group-size',
      expected: `${info.groupSize} or no --group-size/--per-tensor`,
      got: o.perTensor ? 'per-tensor' : String(o.groupSize),
    });
  }
  if (info.scaleDtype !== undefined && o.scaleDtype !== undefined && o.scaleDtype !== info.scaleDtype) {
    throw new UsageError(`${format} stores ${info.scaleDtype} scales`, {
      field: 'scale-dtype',
      expected: info.scaleDtype,
      got: o.scaleDtype,
    });
  }
  return {
    bits,
    symmetric: true,
    ...base,
    scaleDtype: info.scaleDtype ?? o.scaleDtype ?? GRID_DEFAULTS.scaleDtype,
    format,
  };
}
