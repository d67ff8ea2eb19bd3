/**
 * What a quantization method is to the rest of ptqkit: one record per method, kept in the
 * method's own module and registered in ./index.ts. The pipeline (quantize-model.ts), the
 * streamed path (stream-quantize.ts), the ONNX quantizer (onnx/weight-only.ts), `ptq compare`
 * and the CLI read these records; none of them names a method.
 *
 * A method is one of two kinds:
 *  - calibration-free (`quantizeWeight`): one weight on its grid, from its values alone — it can
 *    stream tensor by tensor and quantize ONNX initializers;
 *  - calibrated (`calibration`): the sequential protocol of calibrate.ts hands it each group of
 *    a block's linears with the statistics of their inputs through the already quantized blocks.
 */
import type { ComputeEngine } from '../../compute/index.js';
import type { Grid, GridSpec } from '../../formats/grid.js';
import type { QuantizedTensor } from '../../formats/quantized-tensor.js';
import type { BlockLinear } from '../../formats/tensor-names.js';
import type { ModelConfig } from '../../model/config.js';
import type { Tensor, TensorMap } from '../../tensor.js';
import type { LinearStats } from '../calibrate.js';

/** One command-line option of a method: `--hqq-iters <n>` sets the method option `iters`. */
export interface MethodOption {
  /** The flag as commander takes it: '--hqq-iters <n>', '--act-order', '--no-awq-clip'. */
  flag: string;
  /** The method option it sets. */
  key: string;
  /** The attribute commander gives it ('hqqIters', 'awqClip'). */
  cliKey: string;
  help: string;
  /** Value parser (integers, numbers); absent for switches. */
  parse?: 'integer' | 'number';
}

/** A group of one block's linears to quantize, with their input statistics (calibrated methods). */
export interface GroupJob {
  config: ModelConfig;
  /** The model's weights as far as quantized: the method reads and may rescale them (AWQ). */
  weights: TensorMap;
  layer: number;
  linears: BlockLinear[];
  stats: Map<BlockLinear, LinearStats>;
  /** The grid the method was given; `gridOf` the one of each layer (mixed precision). */
  grid: Grid;
  gridOf: (name: string) => Grid;
  engine: ComputeEngine;
  /** SpQR outliers: this fraction of every weight kept in FP16 (outliers.ts). */
  outliers?: number;
}

/** One quantized linear of a group, in the group's order. */
export interface LayerResult {
  name: string;
  quantized: QuantizedTensor;
  /** The weight it replaces (AWQ: the scaled weight before clipping): LoRC and the error use it. */
  target: Float32Array;
  /** The Hessian of the stored weight's inputs (AWQ: of the inputs scaled by 1/s). */
  hessian: Float64Array;
  /** AWQ: the chosen scaling exponent, reported per layer. */
  alpha?: number;
}

/** A calibrated method's part in the sequential protocol. */
export interface Calibrated<O> {
  /** Input rows sampled per linear for output-space searches (0: the Hessian alone). */
  sampleRows: number;
  /** Linears captured and quantized together; later groups see earlier groups quantized. */
  groups(options: O): BlockLinear[][];
  /** One run over a model: state shared across its groups (a factorization cache) lives here. */
  start(options: O, engine: ComputeEngine): (job: GroupJob) => Promise<LayerResult[]>;
}

export interface QuantMethod<O extends object = object> {
  readonly name: string;
  /** The help line: what it does and its paper. */
  readonly description: string;
  readonly defaults: O;
  readonly options: readonly MethodOption[];
  /** Optimizes integer scales and zero points: float number formats are refused. */
  readonly integerOnly: boolean;
  /** The grid it actually quantizes to (HQQ: always asymmetric with float zeros). */
  gridSpec?(spec: GridSpec): GridSpec;
  /** Its options as recorded in quantization_config (and in the resume fingerprint). */
  settings(options: O): Record<string, unknown>;
  /** How it picks SpQR outliers, as recorded in quantization_config. */
  readonly outlierSelection: string;
  /** Why it cannot run on this model or with this rotation, or undefined when it can. */
  unsupported?(context: { config?: ModelConfig; rotate?: string }): string | undefined;
  /** Calibration-free methods: one weight on its grid. */
  quantizeWeight?(weight: Tensor, grid: Grid, options: O, name: string): QuantizedTensor;
  /** Calibrated methods. */
  calibration?: Calibrated<O>;
  /** Whether the stored weight carries per-column scales (SINQ); the streamed writer lays it out first. */
  storesColumnScales?(weight: Float32Array, options: O): boolean;
  /** Row by row from the stored bytes (RTN on integer grids): the streamed path's fast kernel. */
  readonly rowWise?: boolean;
  /**
   * One weight from a Hessian measured elsewhere (the ONNX quantizer's onnxruntime statistics);
   * `paddedColumns`: the weight's last columns are padding (MatMulNBits blocks).
   */
  quantizeWithHessian?(
    weight: Tensor,
    grid: Grid,
    hessian: Float64Array,
    options: O,
    engine: ComputeEngine,
    name: string,
    paddedColumns: number,
  ): Promise<QuantizedTensor>;
}

/** A method's options: its defaults, then the given ones (undefined values ignored). */
export function methodOptions<O extends object>(method: QuantMethod<O>, given: Partial<O> = {}): O {
  const set = Object.fromEntries(Object.entries(given).filter(([, v]) => v !== undefined));
  return { ...method.defaults, ...set } as O;
}

/** The method options among parsed command-line options (commander's attributes). */
export function optionsFromCli(method: QuantMethod, cli: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(
    method.options.filter((o) => cli[o.cliKey] !== undefined).map((o) => [o.key, cli[o.cliKey]]),
  );
}
