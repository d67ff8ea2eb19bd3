/**
 * What an exporter is to the rest of ptqkit: one record per runtime format, kept in the
 * exporter's own module and registered in ./registry.ts. `ptq export`, `ptq quantize --export`
 * (its default target, its output checks, its refusals before any work) and the CLI's
 * `--format` / `--export` choices and help read these records; none of them names a format.
 *
 * The library functions (exportGguf, exportOnnx, exportGptq, exportCompressedTensors) stay the
 * API: a record's `run` calls one of them with the options the CLI parsed.
 */
import type { OutputOptions } from '../io/atomic.js';
import type { Architecture } from '../model/architecture.js';
import type { LoadedModel } from '../model/load.js';

/** One command-line option of `ptq export` that only this exporter reads: `--dtype <list>` sets `dtype`. */
export interface ExporterOption {
  /** The flag as commander takes it: '--dtype <list>', '--pure', '--no-external-data'. */
  flag: string;
  /** The attribute commander gives it, and the key of the exporter's options ('dtype', 'externalData'). */
  key: string;
  /** The help text; `ptq export --help` prefixes it with the exporter's name. */
  help: string;
  default?: string;
}

/** What every exporter is given besides its own options: io/atomic.ts' output options and warnings. */
export interface ExportRunOptions extends OutputOptions {
  onWarning?(message: string): void;
}

export interface Exporter<O extends object = object, R = unknown> {
  /** `--format` / `--export` value. */
  readonly name: string;
  /** The `--format` help line: what it writes, for which runtimes. */
  readonly description: string;
  /**
   * One file (output checks replace only what ptq wrote: io/atomic.ts) or a directory; the
   * default `ptq quantize --export` target is `<output><extension>` for a file, else `<output>-<name>`.
   */
  readonly output: 'file' | 'directory';
  /** File outputs: the default target's extension ('.gguf'). */
  readonly extension?: string;
  /** File outputs: whether an existing file is one ptq wrote, which an export replaces without --overwrite. */
  replaceable?(file: string): Promise<boolean>;
  /** Its own `ptq export` options (flags are shared by all exporters: each flag belongs to one). */
  readonly options: readonly ExporterOption[];
  /**
   * It stores weights only: a model that also needs run-time ops on its linears' inputs
   * (activation quantization, an online rotation) or side corrections (SpQR outliers, LoRC) is
   * refused, by the library function at its entry (weight-only.ts) and by `ptq quantize --export`
   * before any work.
   */
  readonly weightOnly: boolean;
  /** The model types it writes (others are refused by the library function with a ConfigError). */
  writes(arch: Architecture): boolean;
  /** Refuse bad options before any work (before the output is checked and the model loaded). */
  check?(options: O): void;
  /** Write `model` to `output`; the report is what `--json` prints. */
  run(model: LoadedModel, output: string, options: O & ExportRunOptions): Promise<R>;
  /** The lines `ptq export` prints for the report; `model` is the exported model's path. */
  summarize(report: R, model: string, text: SummaryText): string[];
}

/** The command line's text helpers (cli/table.ts), handed to `summarize`: export/ sits below cli/. */
export interface SummaryText {
  /** `1.26 MiB`, `912.0 KiB`. */
  bytes(n: number): string;
  /**
   * How many tensors/linears went out as each storage kind ("Q4_0 from codes", "int4-g32-sym
   * from requantized"), in order of first appearance, as a two-column table.
   */
  counts(header: 'tensors' | 'linears', kinds: readonly string[]): string;
}
