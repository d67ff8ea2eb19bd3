#!/usr/bin/env node
/**
 * `ptq`: the command line. Options are parsed here and handed to commands.ts.
 * User errors print one line and exit 1; `--debug` adds the stack trace.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { PtqError, UsageError } from '../errors.js';
import { EXPORTER_NAMES, EXPORTERS } from '../export/registry.js';
import type { GridSpec, ScaleDtype } from '../formats/grid.js';
import { FORMAT_NAMES, type FormatName, gridSpecFor, QUANT_FORMATS } from '../formats/number-formats.js';
import { isOnnxModelPath, ONNX_QUANT_DTYPES } from '../onnx/quantize-onnx.js';
import { CALIBRATION_DEFAULTS, checkCalibrationOptions, MIN_SEQLEN } from '../quant/calibrate.js';
import { METHOD_NAMES, METHODS } from '../quant/methods/index.js';
import { ROTATE_DEFAULTS, ROTATIONS } from '../quant/rotate.js';
import {
  compareCommand,
  consoleOutput,
  evalCommand,
  exportCommand,
  inspectCommand,
  quantizeCommand,
} from './commands.js';
import { demoCommand } from './demo.js';
import { onnxEvalCommand, quantizeOnnxCommand } from './onnx-commands.js';

function integer(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isInteger(n)) {
    throw new InvalidArgumentError(`expected an integer, got '${value}'`);
  }
  return n;
}

/** `--group-size`: a positive number of input columns, or -1 (GPTQ's convention) for one scale per output channel. */
function groupSize(value: string): number {
  const n = integer(value);
  if (n !== -1 && n < 1) {
    throw new InvalidArgumentError(
      `expected a positive integer or -1 (one scale per output channel), got '${value}'`,
    );
  }
  return n;
}

interface GridOptions {
  format: FormatName;
  bits: number;
  groupSize: number;
  asym?: boolean;
  perTensor?: boolean;
  scaleDtype: ScaleDtype;
}

/**
 * `--group-size -1` (GPTQ's convention) means one scale per output channel. Formats fix some
 * options (formats/number-formats.ts): only options given on the command line can disagree with them.
 */
function gridFromOptions(o: GridOptions, given: (option: keyof GridOptions) => boolean): GridSpec {
  const int = o.format === 'int';
  return gridSpecFor(o.format, {
    bits: int || given('bits') ? o.bits : undefined,
    groupSize: int || given('groupSize') ? o.groupSize : undefined,
    perTensor: o.perTensor,
    asym: o.asym,
    scaleDtype: int || given('scaleDtype') ? o.scaleDtype : undefined,
  });
}

const FORMAT_HELP = Object.entries(QUANT_FORMATS)
  .map(([k, f]) => `${k}: ${f.description}`)
  .join('; ');

/** The calibration options of every command that runs calibrated methods (quantize, compare). */
function withCalibrationOptions(command: Command): Command {
  return command
    .option('--calib <file>', 'calibration text (gptq, awq); keep it disjoint from the evaluation text')
    .option('--nsamples <n>', 'calibration windows', integer, CALIBRATION_DEFAULTS.nsamples)
    .option(
      '--seqlen <n>',
      `tokens per calibration window, at least ${MIN_SEQLEN} (capped at the model context)`,
      integer,
      CALIBRATION_DEFAULTS.seqlen,
    )
    .option('--seed <n>', 'seed of the calibration sampling', integer, CALIBRATION_DEFAULTS.seed);
}

const program = new Command('ptq')
  .description('Post-training quantization for transformer language models')
  .option('--debug', 'print stack traces of errors');

program
  .command('inspect <model>')
  .description('architecture, parameters, tensors and size of a model')
  .option('--tokenizer <file>', 'tokenizer to use instead of the one next to the model')
  .option('--json', 'print JSON')
  .action((model, o) => inspectCommand(model, o, consoleOutput(!!o.json)));

/** Every registered method's own options (quant/methods), each flag once (SINQ and A-SINQ share one). */
function withMethodOptions(command: Command): Command {
  const seen = new Set<string>();
  for (const method of Object.values(METHODS)) {
    for (const o of method.options) {
      if (seen.has(o.flag)) continue;
      seen.add(o.flag);
      if (o.parse === 'integer') command.option(o.flag, o.help, integer);
      else if (o.parse === 'number') command.option(o.flag, o.help, Number);
      else command.option(o.flag, o.help);
    }
  }
  return command;
}

/** Options of `ptq quantize` read for one kind of input only: given for the other, they are refused. */
const INPUT_KIND_OPTIONS: Record<'onnx' | 'model', readonly string[]> = {
  onnx: ['dtype', 'blockSize', 'include', 'exclude', 'accuracyLevel', 'gather'],
  model: [
    'maxMemory',
    'calibDtype',
    'rotate',
    'rotateSeed',
    'actBits',
    'actGranularity',
    'smoothquant',
    'smoothquantGroups',
    'export',
    'exportOut',
    'targetBpw',
    'targetSize',
    'palette',
    'sensitivity',
    'sensitivityTokens',
    'preset',
    'outliers',
    'lorcRank',
    'resume',
    'perTensor',
    'scaleDtype',
    'format',
  ],
};

/**
 * One meaning per flag: an option given on the command line that the input kind or the chosen
 * method does not read is refused (it would be silently ignored), naming what does read it.
 */
function refuseUnreadOptions(cmd: Command, kind: 'onnx' | 'model', method: string): void {
  const given = (key: string) => cmd.getOptionValueSource(key) === 'cli';
  const flag = (key: string) => cmd.options.find((o) => o.attributeName() === key)?.long ?? key;
  const other = kind === 'onnx' ? 'model' : 'onnx';
  for (const key of INPUT_KIND_OPTIONS[other]) {
    if (given(key))
      throw new UsageError(`${flag(key)} applies to ${other === 'onnx' ? 'ONNX' : 'model'} input only`, {
        field: flag(key).replace(/^--/, ''),
        hint: `drop ${flag(key)}`,
      });
  }
  const chosen = METHODS[method];
  for (const m of Object.values(METHODS)) {
    for (const o of m.options) {
      if (!given(o.cliKey) || chosen?.options.some((c) => c.cliKey === o.cliKey)) continue;
      const owners = Object.values(METHODS)
        .filter((x) => x.options.some((c) => c.cliKey === o.cliKey))
        .map((x) => x.name);
      throw new UsageError(`${flag(o.cliKey)} is an option of ${owners.join(', ')}, not of ${method}`, {
        field: flag(o.cliKey).replace(/^--/, ''),
        hint: `drop ${flag(o.cliKey)}, or pass --method ${owners[0]}`,
      });
    }
  }
}

withMethodOptions(
  withCalibrationOptions(
    program
      .command('quantize <model>')
      .description('quantize the linear layers of a model and save it')
      .requiredOption('-o, --output <dir>', 'output directory')
      .addOption(
        new Option(
          '--method <name>',
          Object.values(METHODS)
            .map((m) => `${m.name}: ${m.description}`)
            .join('; '),
        )
          .choices(METHOD_NAMES)
          .default('rtn'),
      )
      .addOption(new Option('--format <name>', FORMAT_HELP).choices(FORMAT_NAMES).default('int'))
      .option('--bits <n>', 'bits per weight code (int: 2..8; other formats fix it)', integer, 4)
      .option('--group-size <n>', 'input columns per scale; -1 = per output channel', groupSize, 32)
      .option('--per-tensor', 'one scale for the whole tensor')
      .option('--asym', 'asymmetric grid with zero points (default symmetric)')
      .addOption(
        new Option('--scale-dtype <dtype>', 'storage dtype of scales')
          .choices(['f16', 'bf16', 'f32', 'e4m3'])
          .default('f16'),
      ),
  ),
)
  .addOption(
    new Option(
      '--rotate <kind>',
      'rotate before quantizing (QuaRot, arXiv:2404.00456): hadamard absorbed into the weights, any method; hadamard-online rotates o_proj/down_proj inputs at run time (not with awq)',
    ).choices([...ROTATIONS]),
  )
  .option('--rotate-seed <n>', "seed of the rotation's random signs", integer, ROTATE_DEFAULTS.seed)
  .option(
    '--act-bits <n>',
    'also quantize every block linear input at run time to n-bit integers (W8A8/W4A8/W4A4 simulation, 2..16; saved in the model)',
    integer,
  )
  .option(
    '--act-granularity <g>',
    'with --act-bits: per-token (one dynamic scale per row, SmoothQuant O1, default), per-tensor (one dynamic scale per input matrix, O2) or per-tensor-static (one scale per input from --calib, O3)',
  )
  .option(
    '--smoothquant [alpha]',
    'SmoothQuant (arXiv:2211.10438): migrate activation outliers into the weights, s = max|X|^α/max|W|^(1−α) folded into the norms; α default 0.5; needs --calib',
    Number,
  )
  .option(
    '--smoothquant-groups <g>',
    'with --smoothquant: norms (q/k/v and gate/up, the paper) or all (also o_proj via v_proj and down_proj via up_proj)',
  )
  .addOption(
    new Option('--export <format>', 'also export the quantized model (as ptq export --format)').choices(
      EXPORTER_NAMES,
    ),
  )
  .option('--export-out <path>', `where --export writes (default: ${defaultExportTargets()})`)
  .option(
    '--target-bpw <x>',
    'mixed precision: per-layer grids within x bits/weight over the quantized linears',
    Number,
  )
  .option(
    '--target-size <size>',
    'mixed precision: per-layer grids within this stored model size (800MB, 2.5MiB)',
  )
  .option(
    '--palette <grids>',
    'candidate grids of --target-*, comma-separated (int<b>-g<G>, int<b>-ch, nvfp4, mxfp4)',
  )
  .addOption(
    new Option(
      '--sensitivity <kind>',
      'loss the allocation minimizes: one-layer KLD on --calib, or the Hessian proxy',
    )
      .choices(['measured', 'proxy'])
      .default('measured'),
  )
  .option('--sensitivity-tokens <n>', 'tokens of each one-layer KLD measurement', integer, 512)
  .option('--preset <name>', 'a fixed llama.cpp-like mix instead of a budget: q4_k_m-like, q3_k_m-like')
  .option(
    '--outliers <fraction>',
    'SpQR: keep this fraction (0..0.1, e.g. 0.01) of every quantized weight in FP16 as a sparse side matrix',
    Number,
  )
  .option(
    '--lorc-rank <r>',
    "LoRC: add a rank-r FP16 correction U Vᵀ of each layer's quantization error",
    integer,
  )
  .option(
    '--max-memory <size>',
    'calibrated methods: memory the run may use, e.g. 8GiB (default: 3/4 of the free memory); a model whose ' +
      'float32 weights and calibration activations do not fit is calibrated block by block, one block of ' +
      'weights read at a time, activations past the budget in a temporary file',
  )
  .option(
    '--calib-dtype <dtype>',
    'calibrated methods: precision of the stored calibration activations, f32 (default), f16 or bf16 (half the memory and spill)',
  )
  .option(
    '--resume',
    'gptq, awq: continue an interrupted run from its last finished block (state saved in <output>.ptq-resume); same command otherwise',
  )
  .option(
    '--dtype <list>',
    `ONNX input: files to write, comma-separated: ${Object.keys(ONNX_QUANT_DTYPES).join(',')} (default from --bits; --block-size or --group-size is the MatMulNBits block)`,
  )
  .option('--block-size <n>', 'ONNX input: MatMulNBits block size (default: --group-size)', integer)
  .option(
    '--include <patterns>',
    'ONNX input: quantize only nodes whose name matches one of these regular expressions',
  )
  .option(
    '--exclude <patterns>',
    'ONNX input: leave nodes whose name matches one of these regular expressions',
  )
  .option('--accuracy-level <n>', 'ONNX input: MatMulNBits accuracy_level (0-4; 4 = int8 compute)', integer)
  .option('--no-gather', 'ONNX input: keep Gather embedding tables float (default: GatherBlockQuantized)')
  .option(
    '--overwrite',
    'replace an existing output that ptq did not write (its files are kept; only files of the same names are replaced)',
  )
  .option('--tokenizer <file>', 'tokenizer to use instead of the one next to the model')
  .option('--json', 'print JSON')
  .action((model, o, cmd: Command) => {
    // Before the model loads: calibration options are checked whether or not --calib is given.
    checkCalibrationOptions(o);
    refuseUnreadOptions(cmd, isOnnxModelPath(model) ? 'onnx' : 'model', o.method);
    if (isOnnxModelPath(model)) {
      return quantizeOnnxCommand(
        model,
        { ...o, onnxBlockSize: o.blockSize, overwrite: !!o.overwrite },
        consoleOutput(!!o.json),
      );
    }
    const grid = gridFromOptions(o, (k) => cmd.getOptionValueSource(k) === 'cli');
    return quantizeCommand(model, { ...o, grid, overwrite: !!o.overwrite }, consoleOutput(!!o.json));
  });

/** One option of `ptq eval` and `ptq compare`: llama-perplexity's windows (model/perplexity.ts llamaCppProtocol). */
const LLAMA_CPP_WINDOWS = '--llama-cpp-windows';
const LLAMA_CPP_WINDOWS_HELP =
  "windows as llama.cpp's llama-perplexity (and its --kl-divergence) cuts them, to reproduce its numbers: " +
  'non-overlapping chunks of --ctx tokens (its -c, 512 by default there), each starting with BOS when the ' +
  'tokenizer adds one, only the predictions from position ctx/2 on scored; not with --stride or --keep-partial';

program
  .command('eval <model>')
  .description(
    'perplexity on a text; KLD and top-1 agreement against --ref; ONNX files: output error against --ref',
  )
  .option('--text <file>', 'text file to evaluate on (required, except to compare two .onnx graphs)')
  .option('--ctx <n>', 'tokens per window (default: the model context, at most 2048)', integer)
  .option('--stride <n>', 'window step (default: ctx, non-overlapping)', integer)
  .option('--keep-partial', 'also score the last, shorter window')
  .option(LLAMA_CPP_WINDOWS, LLAMA_CPP_WINDOWS_HELP)
  .option('--ref <model>', 'full-precision model to compare against')
  .option('--max-tokens <n>', 'evaluate only the first n tokens', integer)
  .option('--tokenizer <file>', 'tokenizer to use instead of the one next to the model')
  .option(
    '--emulate-llama-cpp',
    "GGUF input: quantize each matmul's input as llama.cpp's CPU backend does (Q8_0/Q8_K/F16)",
  )
  .option(
    '--max-memory <size>',
    'memory the evaluation may use, e.g. 8GiB (default: 3/4 of the free memory); models whose float32 ' +
      'weights do not fit are evaluated block by block, reading one block at a time',
  )
  .option('--json', 'print JSON')
  .action((model, o) => {
    if (model.endsWith('.onnx')) {
      // onnxEvalCommand cuts its own windows: the option would be ignored there.
      if (o.llamaCppWindows)
        throw new UsageError('--llama-cpp-windows is for models, not .onnx files', {
          hint: 'evaluate the GGUF or checkpoint the ONNX files were exported from',
        });
      // ONNX graphs run whole in onnxruntime: there is no block to stream.
      if (o.maxMemory !== undefined)
        throw new UsageError('--max-memory is for models, not .onnx files', {
          field: 'max-memory',
          hint: 'ONNX graphs are evaluated whole in onnxruntime',
        });
      return onnxEvalCommand(model, o, consoleOutput(!!o.json));
    }
    if (!o.text)
      throw new UsageError('--text is required', { field: 'text', hint: 'ptq eval <model> --text <file>' });
    return evalCommand(model, o, consoleOutput(!!o.json));
  });

/** The exporters' own options (export/registry.ts), each help prefixed with its exporter's name. */
function withExporterOptions(command: Command): Command {
  for (const e of EXPORTERS) {
    for (const o of e.options) {
      const option = new Option(o.flag, `${e.name}: ${o.help}`);
      command.addOption(o.default === undefined ? option : option.default(o.default));
    }
  }
  return command;
}

/** Names of the exporters writing one file or a directory, for the -o help. */
function exportersWriting(kind: 'file' | 'directory'): string {
  return EXPORTERS.filter((e) => e.output === kind)
    .map((e) => e.name)
    .join(', ');
}

/** `ptq quantize --export`'s default targets: `<output><extension>` for file exporters, else `<output>-<format>`. */
function defaultExportTargets(): string {
  const files = EXPORTERS.filter((e) => e.output === 'file').map((e) => `<output>${e.extension ?? ''}`);
  return [...files, '<output>-<format>'].join(', or ');
}

withExporterOptions(
  program
    .command('export <model>')
    .description('write a model (float or quantized) in a runtime format')
    .addOption(
      new Option('--format <name>', EXPORTERS.map((e) => `${e.name}: ${e.description}`).join('; '))
        .choices(EXPORTER_NAMES)
        .makeOptionMandatory(),
    )
    .requiredOption(
      '-o, --output <path>',
      `output directory (${exportersWriting('directory')}) or file (${exportersWriting('file')})`,
    ),
)
  .option(
    '--overwrite',
    'replace an existing output that ptq did not write (its files are kept; only files of the same names are replaced)',
  )
  .option('--tokenizer <file>', 'tokenizer to use instead of the one next to the model')
  .option('--json', 'print JSON')
  .action((model, o, cmd: Command) => {
    // One meaning per flag: another exporter's option would be silently ignored.
    for (const e of EXPORTERS) {
      if (e.name === o.format) continue;
      for (const option of e.options) {
        if (cmd.getOptionValueSource(option.key) !== 'cli') continue;
        const flag = cmd.options.find((x) => x.attributeName() === option.key)?.long ?? option.key;
        throw new UsageError(`${flag} is an option of --format ${e.name}, not of ${o.format}`, {
          field: flag.replace(/^--/, ''),
          hint: `drop ${flag}`,
        });
      }
    }
    return exportCommand(model, { ...o, overwrite: !!o.overwrite }, consoleOutput(!!o.json));
  });

/** A comma-separated list, each item one of `choices` (or any integer when choices is absent). */
function listOf(choices?: readonly string[]) {
  return (value: string): string[] => {
    const items = value
      .split(',')
      .map((v) => v.trim())
      .filter(Boolean);
    const bad = items.find((v) => (choices ? !choices.includes(v) : !Number.isInteger(Number(v))));
    if (bad !== undefined || items.length === 0) {
      throw new InvalidArgumentError(
        `expected a comma-separated list of ${choices ? choices.join('|') : 'integers'}, got '${value}'`,
      );
    }
    return items;
  };
}

withCalibrationOptions(
  program
    .command('compare <model>')
    .description(
      'quantize with every method × format × bits, evaluate each against the model; write results.json + report.html',
    )
    .requiredOption('--text <file>', 'text file to evaluate on')
    .requiredOption('-o, --output <dir>', 'report directory (results.json, report.html)')
    .addOption(
      new Option('--methods <list>', `methods, comma-separated: ${Object.keys(METHODS).join(',')}`)
        .argParser(listOf(Object.keys(METHODS)))
        .default(['rtn'], 'rtn'),
    )
    .addOption(
      new Option('--bits <list>', 'integer bits, comma-separated (formats with fixed widths run at theirs)')
        .argParser(listOf())
        .default(['3', '4', '8'], '3,4,8'),
    )
    .addOption(
      new Option('--formats <list>', `formats, comma-separated: ${FORMAT_NAMES.join(',')}`)
        .argParser(listOf(FORMAT_NAMES))
        .default(['int'], 'int'),
    )
    .option(
      '--group-size <n>',
      'input columns per scale of int grids; -1 = per output channel',
      groupSize,
      32,
    ),
)
  .option('--ctx <n>', 'tokens per window (default: the model context, at most 2048)', integer)
  .option('--stride <n>', 'window step (default: ctx, non-overlapping)', integer)
  .option('--keep-partial', 'also score the last, shorter window')
  .option(LLAMA_CPP_WINDOWS, LLAMA_CPP_WINDOWS_HELP)
  .option('--max-tokens <n>', 'evaluate only the first n tokens', integer)
  .option('--tokenizer <file>', 'tokenizer to use instead of the one next to the model')
  .option(
    '--overwrite',
    'replace an existing output that ptq did not write (its files are kept; only files of the same names are replaced)',
  )
  .option('--json', 'print JSON')
  .action(async (model, o) => {
    checkCalibrationOptions(o);
    await compareCommand(
      model,
      { ...o, bits: o.bits.map(Number), overwrite: !!o.overwrite },
      consoleOutput(!!o.json),
    );
  });

program
  .command('demo')
  .description('quantize the bundled model at 8/4/3 bits with RTN and print the quality table')
  .option('--json', 'print JSON')
  .action((o) => demoCommand(consoleOutput(!!o.json)));

/**
 * A bad option value, unknown option or missing argument: commander's message becomes one
 * UsageError line with a pointer to the command's help (not the whole help after it).
 * Help and version output (exit code 0, or `ptq` alone) exit as commander would.
 */
for (const command of [program, ...program.commands]) {
  const name = command === program ? 'ptq' : `ptq ${command.name()}`;
  command.configureOutput({ outputError: () => {} }).exitOverride((e) => {
    if (e.exitCode === 0 || e.code === 'commander.help' || e.code === 'commander.helpDisplayed') {
      process.exit(e.exitCode);
    }
    const message = e.message.replace(/^error: /, '').replace(/\s*\n\s*/g, ' ');
    throw new UsageError(message, { hint: `see ${name} --help` });
  });
}

try {
  await program.parseAsync();
} catch (e) {
  const debug = program.opts().debug || process.argv.includes('--debug');
  if (e instanceof PtqError && !debug) {
    console.error(`ptq: ${e.name}: ${e.message}`);
  } else if (!debug) {
    console.error(`ptq: unexpected error: ${(e as Error).message} (run with --debug for the stack trace)`);
  } else {
    console.error(e);
  }
  process.exitCode = 1;
}
