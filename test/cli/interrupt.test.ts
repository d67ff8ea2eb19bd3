/**
 * Interrupting a file export (src/io/atomic.ts writeFileAtomically, src/export/gguf.ts): Ctrl-C
 * (SIGINT) or SIGTERM in the middle of encoding a GGUF is handled within a second and leaves no
 * temporary file; what kill -9 leaves is removed by the next export into the same directory; a
 * symlink planted at a temporary name is never followed.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { before, test } from 'node:test';
import { writeFileAtomically } from '../../src/io/atomic.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { REPO, seededRandom, tempDir } from '../helpers.js';
import { runCli, TSX } from './run-cli.js';

const work = tempDir('ptq-interrupt-');
const MODEL = path.join(work, 'wide');

/** The demo model's tokenizer with wide random blocks: ~25M parameters, seconds of Q4_K encoding. */
before(async () => {
  const source = path.join(REPO, 'models/tinystories-656k');
  mkdirSync(MODEL);
  for (const f of ['tokenizer.json', 'tokenizer_config.json'])
    cpSync(path.join(source, f), path.join(MODEL, f));
  const config = JSON.parse(readFileSync(path.join(source, 'config.json'), 'utf8'));
  const [hidden, ffn, vocab, layers] = [1024, 2816, config.vocab_size as number, 2];
  writeFileSync(
    path.join(MODEL, 'config.json'),
    JSON.stringify({ ...config, hidden_size: hidden, intermediate_size: ffn, num_hidden_layers: layers }),
  );
  const random = seededRandom(3);
  const tensor = (name: string, shape: number[]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = shape.length === 1 ? 1 : (random() - 0.5) * 0.1;
    return { name, dtype: 'F32' as const, shape, data };
  };
  const kv = (hidden / config.num_attention_heads) * config.num_key_value_heads;
  const tensors = [
    tensor('model.embed_tokens.weight', [vocab, hidden]),
    tensor('model.norm.weight', [hidden]),
  ];
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}.`;
    tensors.push(
      tensor(`${p}input_layernorm.weight`, [hidden]),
      tensor(`${p}post_attention_layernorm.weight`, [hidden]),
      tensor(`${p}self_attn.q_proj.weight`, [hidden, hidden]),
      tensor(`${p}self_attn.k_proj.weight`, [kv, hidden]),
      tensor(`${p}self_attn.v_proj.weight`, [kv, hidden]),
      tensor(`${p}self_attn.o_proj.weight`, [hidden, hidden]),
      tensor(`${p}mlp.gate_proj.weight`, [ffn, hidden]),
      tensor(`${p}mlp.up_proj.weight`, [ffn, hidden]),
      tensor(`${p}mlp.down_proj.weight`, [hidden, ffn]),
    );
  }
  await writeSafetensors(path.join(MODEL, 'model.safetensors'), tensors, { format: 'pt' });
});

/** Start `ptq export` to Q4_K and resolve once its temporary GGUF holds data (encoding under way). */
function startExport(outDir: string) {
  mkdirSync(outDir, { recursive: true });
  const child = spawn(
    process.execPath,
    [
      '--import',
      TSX,
      path.join(REPO, 'src/cli/main.ts'),
      'export',
      MODEL,
      '--format',
      'gguf',
      '--type',
      'q4_k',
      '-o',
      path.join(outDir, 'wide.gguf'),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  const writing = new Promise<void>((resolve, reject) => {
    const poll = setInterval(() => {
      if (readdirSync(outDir).some((f) => f.startsWith('.ptq-tmp-'))) {
        clearInterval(poll);
        // Past the header: the encoder loop of the first large tensors is running.
        setTimeout(resolve, 300);
      }
    }, 20);
    exited.then(() => {
      clearInterval(poll);
      reject(new Error(`export ended before it was interrupted: ${stderr}`));
    });
  });
  return { child, exited, writing, stderr: () => stderr };
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  test(`${signal} while a GGUF is encoded: handled within a second, no temporary file left`, async () => {
    const dir = path.join(work, signal);
    const run = startExport(dir);
    await run.writing;
    const t0 = performance.now();
    run.child.kill(signal);
    const { code } = await run.exited;
    const ms = performance.now() - t0;
    assert.equal(code, signal === 'SIGINT' ? 130 : 143, run.stderr());
    assert.ok(ms < 1500, `exited ${ms.toFixed(0)} ms after ${signal}`);
    assert.deepEqual(readdirSync(dir), []);
  });
}

test('kill -9 leaves a temporary file; the next export into the directory removes it', async () => {
  const dir = path.join(work, 'kill9');
  const run = startExport(dir);
  await run.writing;
  run.child.kill('SIGKILL');
  await run.exited;
  const left = readdirSync(dir);
  assert.equal(left.length, 1);
  assert.match(left[0]!, /^\.ptq-tmp-\d+-[0-9a-f]{8}-wide\.gguf$/);
  // Also the name earlier versions used.
  writeFileSync(path.join(dir, '.wide.gguf.ptq-tmp-999999'), 'left by an older ptq');
  const r = runCli([
    'export',
    path.join(REPO, 'models/tinystories-656k'),
    '--format',
    'gguf',
    '-o',
    path.join(dir, 'small.gguf'),
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(readdirSync(dir), ['small.gguf']);
});

test('a symlink planted where earlier versions put the temporary file is not followed', async () => {
  const dir = path.join(work, 'planted');
  mkdirSync(dir);
  const victim = path.join(work, 'victim.txt');
  writeFileSync(victim, 'precious');
  // The old predictable name, `.<file>.ptq-tmp-<pid>`, for this very process.
  symlinkSync(victim, path.join(dir, `.out.gguf.ptq-tmp-${process.pid}`));
  await writeFileAtomically(path.join(dir, 'out.gguf'), async (h) => {
    await h.write(Buffer.from('new bytes'));
  });
  assert.equal(readFileSync(victim, 'utf8'), 'precious');
  assert.equal(readFileSync(path.join(dir, 'out.gguf'), 'utf8'), 'new bytes');
  assert.ok(
    existsSync(path.join(dir, `.out.gguf.ptq-tmp-${process.pid}`)),
    'a live process’s name is left alone',
  );
});
