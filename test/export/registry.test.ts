/**
 * The exporter registry (src/export/registry.ts): every record carries what `ptq export`,
 * `ptq quantize --export` and the CLI read from it, and the CLI's help lists every exporter,
 * its description and its own options.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UsageError } from '../../src/errors.js';
import { EXPORTER_NAMES, EXPORTERS, exporterNamed } from '../../src/export/registry.js';
import { architectureFor } from '../../src/model/architecture.js';
import { runCli } from '../cli/run-cli.js';

const MODEL_TYPES = [
  'llama',
  'mistral',
  'mixtral',
  'qwen2',
  'qwen2_moe',
  'qwen3',
  'qwen3_moe',
  'gemma',
  'gemma2',
  'phi3',
  'gpt2',
  'opt',
  'gpt_neox',
];
/**
 * The README's limits: GGUF export is Llama and the MoE models llama.cpp runs, ONNX Llama-only,
 * GPTQ/compressed-tensors need Llama tensor names.
 */
const WRITES: Record<string, string[]> = {
  gguf: ['llama', 'mixtral', 'qwen2_moe', 'qwen3_moe'],
  onnx: ['llama'],
  gptq: ['llama', 'mistral', 'qwen2', 'qwen2_moe', 'qwen3', 'qwen3_moe', 'gemma', 'gemma2'],
  'compressed-tensors': ['llama', 'mistral', 'qwen2', 'qwen2_moe', 'qwen3', 'qwen3_moe', 'gemma', 'gemma2'],
};

/** Help text with commander's line wrapping undone. */
const unwrapped = (text: string) => text.replace(/\s+/g, ' ');
const choices = () => `(choices: ${EXPORTER_NAMES.map((n) => `"${n}"`).join(', ')})`;

test('every registered exporter has the fields the CLI reads', () => {
  assert.deepEqual(EXPORTER_NAMES, ['gguf', 'onnx', 'gptq', 'compressed-tensors']);
  const flags = new Set<string>();
  for (const e of EXPORTERS) {
    assert.match(e.name, /^[a-z][a-z0-9-]*$/, `${e.name}: name`);
    assert.ok(e.description.length > 10, `${e.name}: description`);
    assert.ok(e.output === 'file' || e.output === 'directory', `${e.name}: output kind`);
    if (e.output === 'file') {
      assert.match(e.extension ?? '', /^\.[a-z0-9]+$/, `${e.name}: default target's extension`);
      assert.equal(typeof e.replaceable, 'function', `${e.name}: which existing files ptq wrote`);
    }
    assert.equal(typeof e.weightOnly, 'boolean', `${e.name}: weightOnly`);
    for (const f of ['writes', 'run', 'summarize'] as const) {
      assert.equal(typeof e[f], 'function', `${e.name}: ${f}`);
    }
    if (e.check !== undefined) assert.equal(typeof e.check, 'function', `${e.name}: check`);
    for (const o of e.options) {
      assert.match(o.flag, /^--[a-z-]+( <[a-z]+>)?$/, `${e.name}: option flag ${o.flag}`);
      assert.ok(o.key && o.help, `${e.name}: option ${o.flag} has a key and help`);
      assert.ok(!flags.has(o.flag), `${o.flag} belongs to one exporter`);
      flags.add(o.flag);
    }
  }
  // Today's four store weights only: `ptq quantize --export` refuses what they cannot hold.
  assert.ok(EXPORTERS.every((e) => e.weightOnly));
  assert.deepEqual(
    EXPORTERS.map((e) => [e.name, e.output, e.extension]),
    [
      ['gguf', 'file', '.gguf'],
      ['onnx', 'directory', undefined],
      ['gptq', 'directory', undefined],
      ['compressed-tensors', 'directory', undefined],
    ],
  );
});

test('each exporter writes the model types the README says', () => {
  for (const e of EXPORTERS) {
    const writes = MODEL_TYPES.filter((t) => e.writes(architectureFor(t, 'config.json')));
    assert.deepEqual(writes, WRITES[e.name], e.name);
  }
});

test('an unknown exporter is refused naming the option and the registered ones', () => {
  for (const field of ['format', 'export']) {
    assert.throws(
      () => exporterNamed('safetensors', field),
      (e: unknown) =>
        e instanceof UsageError &&
        e.message.includes('export format not available') &&
        e.context.field === field &&
        e.context.expected === 'gguf, onnx, gptq, compressed-tensors',
    );
  }
  assert.equal(exporterNamed('onnx').name, 'onnx');
});

test('ptq export --help and ptq quantize --help list every exporter', () => {
  const exportHelp = runCli(['export', '--help']);
  assert.equal(exportHelp.code, 0, exportHelp.stderr);
  const help = unwrapped(exportHelp.stdout);
  for (const e of EXPORTERS) {
    assert.ok(help.includes(`${e.name}: ${e.description}`), `--format help describes ${e.name}`);
    for (const o of e.options) {
      assert.ok(
        help.includes(`${o.flag} ${e.name}: ${unwrapped(o.help)}`),
        `${o.flag} is listed for ${e.name}`,
      );
    }
  }
  assert.ok(help.includes(choices()), help);
  assert.ok(help.includes('output directory (onnx, gptq, compressed-tensors) or file (gguf)'), help);

  const quantizeHelp = runCli(['quantize', '--help']);
  assert.equal(quantizeHelp.code, 0, quantizeHelp.stderr);
  const qhelp = unwrapped(quantizeHelp.stdout);
  assert.ok(qhelp.includes(choices()), qhelp);
  assert.ok(qhelp.includes('(default: <output>.gguf, or <output>-<format>)'), qhelp);
});
