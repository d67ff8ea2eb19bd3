/**
 * Access to the real llama.cpp for the GGUF tests: node-llama-cpp's runtime (its prebuilt
 * linux-x64 binary, or a local build made by `npx --no node-llama-cpp source download`),
 * `ggml-ref` (ggml-ref.c next to this file), compiled at test time against the headers of the
 * llama.cpp source node-llama-cpp bundles and the libraries it ships, to run llama.cpp's own
 * quantizers (ggml_quantize_chunk, llama_model_quantize), and llama.cpp's own `llama-perplexity`
 * tool built from that source. Nothing of llama.cpp is committed.
 *
 * Each returns the reason when it is unavailable; the tests pass it to skipOrFail (helpers.ts):
 * a skip on a developer's machine, a failure under CI.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Token } from 'node-llama-cpp';
import { REPO } from '../helpers.js';

/**
 * Where the shallow clone of the bundled llama.cpp source and the compiled tools live. A deliberate
 * cache, kept between runs (the clone takes seconds, and a tool built from a release's fixed source
 * is rebuilt only when missing); not a temporary directory of one test, so no test removes it.
 */
export const LLAMA_CPP_CACHE = path.join(os.tmpdir(), `ptq-ggml-ref-${process.getuid?.() ?? 0}`);

const NLC = path.join(REPO, 'node_modules', 'node-llama-cpp');

type Llama = Awaited<ReturnType<typeof import('node-llama-cpp').getLlama>>;
let llamaPromise: Promise<Llama | string> | undefined;

/** The llama.cpp runtime, or the reason it is unavailable (for skipOrFail). */
export function getLlamaRuntime(): Promise<Llama | string> {
  llamaPromise ??= (async () => {
    try {
      const { getLlama, LlamaLogLevel } = await import('node-llama-cpp');
      return await getLlama({
        gpu: false,
        build: 'never',
        logLevel: LlamaLogLevel.error,
        progressLogs: false,
      });
    } catch (e) {
      return `llama.cpp binary not available (${(e as Error).message.split('\n')[0]}); run \`npx --no node-llama-cpp source download --gpu false\``;
    }
  })();
  return llamaPromise;
}

/** Directories holding libggml-base.so / libllama*.so: the prebuilt package, then local builds. */
function libraryDirs(): string[] {
  const dirs: string[] = [];
  const prebuilt = path.join(REPO, 'node_modules', '@node-llama-cpp', 'linux-x64', 'bins', 'linux-x64');
  if (existsSync(prebuilt)) dirs.push(prebuilt);
  const local = path.join(NLC, 'llama', 'localBuilds');
  if (existsSync(local)) {
    for (const d of readdirSync(local)) {
      for (const sub of ['Release', path.join('bin', 'Release'), 'bin']) {
        const p = path.join(local, d, sub);
        if (existsSync(p) && readdirSync(p).some((f) => f.startsWith('libggml-base'))) dirs.push(p);
      }
    }
  }
  return dirs;
}

/** The release tag of the llama.cpp node-llama-cpp bundles (llama.cpp.info.json). */
function bundledTag(): string {
  return (JSON.parse(readFileSync(path.join(NLC, 'llama', 'llama.cpp.info.json'), 'utf8')) as { tag: string })
    .tag;
}

/**
 * The bundled llama.cpp source, shallow-cloned from node-llama-cpp's git bundle into
 * `<cacheDir>/llama.cpp-<tag>` once per release (a few seconds). Two test files run at once may
 * both clone: each clones into a directory of its own and renames it into place, and the loser of
 * the rename uses the winner's (identical) clone.
 */
function llamaCppSource(cacheDir: string, tag: string): string {
  const src = path.join(cacheDir, `llama.cpp-${tag}`);
  if (existsSync(path.join(src, 'include', 'llama.h'))) return src;
  mkdirSync(cacheDir, { recursive: true });
  const tmp = mkdtempSync(path.join(cacheDir, `clone-${tag}-`));
  try {
    execFileSync('git', ['clone', '-q', '--depth', '1', path.join(NLC, 'llama', 'gitRelease.bundle'), tmp], {
      stdio: 'pipe',
    });
    renameSync(tmp, src);
  } catch (e) {
    if (!existsSync(path.join(src, 'include', 'llama.h'))) throw e;
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return src;
}

/** `-l:<file>` for the first `<prefix>*.so` in `libDir`. */
function libFlag(libDir: string, prefix: string): string {
  const f = readdirSync(libDir).find((f) => f.startsWith(prefix) && f.endsWith('.so'));
  if (!f) throw new Error(`no ${prefix}*.so in ${libDir}`);
  return `-l:${f}`;
}

/**
 * Run `compiler` to produce `exe`: into a name of this process first, then renamed over `exe`, so
 * that a test file running the tool never sees a half-written one from another file's build.
 */
function compile(compiler: string, args: string[], exe: string): void {
  const tmp = `${exe}.${process.pid}.tmp`;
  try {
    execFileSync(compiler, ['-o', tmp, ...args], { stdio: 'pipe' });
    renameSync(tmp, exe);
  } finally {
    rmSync(tmp, { force: true });
  }
}

/** The first line of a failed command's own error output (a compiler's first error), else of its message. */
function firstLine(e: unknown): string {
  const { code, path: command } = e as NodeJS.ErrnoException;
  if (code === 'ENOENT' && command) return `${command} is not installed (.ci/run installs it with apt-get)`;
  const stderr = String((e as { stderr?: Buffer }).stderr ?? '');
  const line = stderr.split('\n').find((l) => /error/i.test(l)) ?? (e as Error).message.split('\n')[0];
  return line!.trim();
}

/**
 * Compile the C file `source` into `<cacheDir>/<name>-<tag>` against the llama.cpp node-llama-cpp
 * ships: the first of libraryDirs() and the headers of the release it bundles (llamaCppSource).
 * Throws with the reason when the libraries, git or a C compiler are missing.
 */
export function buildAgainstLlamaCpp(
  source: string,
  name: string,
  cacheDir: string,
): { exe: string; libDir: string } {
  const libDir = libraryDirs()[0];
  if (!libDir) throw new Error('no llama.cpp libraries under node_modules');
  const tag = bundledTag();
  const src = llamaCppSource(cacheDir, tag);
  const exe = path.join(cacheDir, `${name}-${tag}`);
  compile(
    'cc',
    [
      '-O2',
      source,
      `-I${path.join(src, 'ggml', 'include')}`,
      `-I${path.join(src, 'include')}`,
      `-L${libDir}`,
      libFlag(libDir, 'libggml-base'),
      libFlag(libDir, 'libllama.'),
      libFlag(libDir, 'libggml.'),
      '-lm',
      `-Wl,-rpath,${libDir}`,
    ],
    exe,
  );
  return { exe, libDir };
}

/** llama.cpp's llama-perplexity, ready to run, or why it could not be built. */
export type LlamaPerplexity =
  | {
      exe: string;
      /** Runs it with `args`; its whole output (stdout then stderr); throws when it exits non-zero. */
      run(args: string[]): string;
    }
  | { reason: string };

let perplexityTool: LlamaPerplexity | undefined;

/** The tool's main(), ours: llama-perplexity-main.cpp (drains llama.cpp's asynchronous log before exit). */
const MAIN = path.join(REPO, 'test', 'export', 'llama-perplexity-main.cpp');

/**
 * llama.cpp's own `llama-perplexity` (tools/perplexity/perplexity.cpp of the bundled source, with
 * llama-perplexity-main.cpp as its main), compiled with g++ against node-llama-cpp's libllama-common, libllama and libggml: the
 * tool's two files only, about 5 s, and only when `<cache>/llama-perplexity-<tag>-<libs>` is missing
 * (the source is fixed per release; <libs> hashes the library directory it links and our main()).
 * The libraries load their CPU backend (libggml-cpu-<variant>.so) from the executable's directory
 * or the working directory: run() starts it in the library directory.
 */
export function llamaPerplexity(): LlamaPerplexity {
  perplexityTool ??= (() => {
    try {
      const libDir = libraryDirs()[0];
      if (!libDir) throw new Error('no llama.cpp libraries under node_modules');
      const tag = bundledTag();
      // The cached build is keyed by the libraries it links and by our main() (a changed main is a new build).
      const libs = createHash('sha256').update(libDir).update(readFileSync(MAIN)).digest('hex').slice(0, 8);
      const exe = path.join(LLAMA_CPP_CACHE, `llama-perplexity-${tag}-${libs}`);
      if (!existsSync(exe)) {
        const src = llamaCppSource(LLAMA_CPP_CACHE, tag);
        const tool = path.join(src, 'tools', 'perplexity');
        compile(
          'g++',
          [
            '-std=c++17',
            '-O2',
            path.join(tool, 'perplexity.cpp'),
            MAIN,
            `-I${path.join(src, 'common')}`,
            `-I${path.join(src, 'include')}`,
            `-I${path.join(src, 'ggml', 'include')}`,
            `-L${libDir}`,
            // libllama-common is common/ (argument parsing, batching, tokenizing), built by node-llama-cpp.
            libFlag(libDir, 'libllama-common'),
            libFlag(libDir, 'libllama.'),
            libFlag(libDir, 'libggml.'),
            libFlag(libDir, 'libggml-base'),
            '-pthread',
            `-Wl,-rpath,${libDir}`,
          ],
          exe,
        );
      }
      return {
        exe,
        run(args: string[]): string {
          const r = spawnSync(exe, args, { cwd: libDir, encoding: 'utf8', maxBuffer: 1 << 28 });
          const output = `${r.stdout ?? ''}${r.stderr ?? ''}`;
          if (r.error) throw r.error;
          if (r.status !== 0)
            throw new Error(
              `llama-perplexity ${args.join(' ')} exited with ${r.status ?? r.signal}:\n${output}`,
            );
          return output;
        },
      };
    } catch (e) {
      return { reason: `cannot build llama.cpp's llama-perplexity: ${firstLine(e)}` };
    }
  })();
  return perplexityTool;
}

let harness: string | { reason: string } | undefined;

/** Path of the compiled ggml-ref harness, or why it could not be built. */
export function refHarness(): string | { reason: string } {
  if (harness) return harness;
  try {
    harness = buildAgainstLlamaCpp(
      path.join(REPO, 'test', 'export', 'ggml-ref.c'),
      'ggml-ref',
      LLAMA_CPP_CACHE,
    ).exe;
  } catch (e) {
    harness = { reason: `cannot build the ggml-ref harness: ${firstLine(e)}` };
  }
  return harness;
}

// ---------- Running a GGUF in llama.cpp and comparing with ptqkit's forward ----------

/** A model loaded by node-llama-cpp. */
export type LlamaModel = Awaited<ReturnType<Llama['loadModel']>>;

/** F32 KV cache, no flash attention, one thread: llama.cpp's attention then stays in float32 like ptqkit's. */
export const EXACT_CONTEXT = {
  threads: 1,
  flashAttention: false,
  experimentalKvCacheKeyType: 'F32',
  experimentalKvCacheValueType: 'F32',
} as const;

/**
 * Sampler options under which node-llama-cpp's `probabilities` are the plain softmax of the
 * logits: temperature 1, no top-k / top-p / min-p truncation (node-llama-cpp 3.21 returns
 * probabilities, not raw logits).
 */
const SOFTMAX = { temperature: 1, topK: 0, topP: 1, minP: 0 } as const;
const NEXT = { generateNext: { probabilities: true, options: SOFTMAX } } as const;

/** llama.cpp's next-token log-probabilities at every position of `window`, [T, V]. */
export async function llamaLogProbs(lm: LlamaModel, window: number[], V: number): Promise<Float64Array> {
  // A context larger than the window: node-llama-cpp shifts a full context, which would move positions.
  const ctx = await lm.createContext({
    contextSize: 2 * window.length,
    batchSize: window.length,
    ...EXACT_CONTEXT,
  });
  try {
    // node-llama-cpp brands token ids (Token); ours are the same integers.
    const out = await ctx.getSequence().controlledEvaluate(window.map((tok) => [tok as Token, NEXT]));
    const lp = new Float64Array(window.length * V).fill(Number.NEGATIVE_INFINITY);
    out.forEach((o, i) => {
      for (const [v, p] of o!.next!.probabilities!) lp[i * V + v] = Math.log(p);
    });
    return lp;
  } finally {
    await ctx.dispose();
  }
}

/** llama.cpp's greedy continuation of `prompt` by up to `steps` tokens, stopping at `eos`: prompt + new tokens. */
export async function llamaGreedy(
  lm: LlamaModel,
  prompt: number[],
  V: number,
  steps: number,
  eos?: number,
): Promise<number[]> {
  const ctx = await lm.createContext({ contextSize: 64, ...EXACT_CONTEXT });
  try {
    const seq = ctx.getSequence();
    const ids = [...prompt];
    let res = await seq.controlledEvaluate(
      prompt.map((tok, i) => (i === prompt.length - 1 ? [tok as Token, NEXT] : (tok as Token))),
    );
    for (let s = 0; s < steps; s++) {
      const p = res.at(-1)!.next!.probabilities!;
      const best = argmax(Float64Array.from({ length: V }, (_, v) => p.get(v as Token) ?? 0));
      if (best === eos) break;
      ids.push(best);
      res = await seq.controlledEvaluate([[best as Token, NEXT]]);
    }
    return ids;
  } finally {
    await ctx.dispose();
  }
}

/** Row-wise log-softmax of [T, V] logits, in float64. */
export function logSoftmax(logits: ArrayLike<number>, T: number, V: number): Float64Array {
  const out = new Float64Array(T * V);
  for (let i = 0; i < T; i++) {
    let max = Number.NEGATIVE_INFINITY;
    for (let v = 0; v < V; v++) max = Math.max(max, logits[i * V + v]!);
    let sum = 0;
    for (let v = 0; v < V; v++) sum += Math.exp(logits[i * V + v]! - max);
    const lse = max + Math.log(sum);
    for (let v = 0; v < V; v++) out[i * V + v] = logits[i * V + v]! - lse;
  }
  return out;
}

/** Index of the largest of a[from .. from + n), relative to `from` (ties: the first). */
export function argmax(a: ArrayLike<number>, from = 0, n = a.length): number {
  let best = from;
  for (let i = from + 1; i < from + n; i++) if (a[i]! > a[best]!) best = i;
  return best - from;
}

/** Max |a − b| over [T, V] scores and the number of positions whose argmax agrees. */
export function compareLogits(a: ArrayLike<number>, b: ArrayLike<number>, T: number, V: number) {
  let maxDiff = 0;
  let agree = 0;
  for (let i = 0; i < T; i++) {
    for (let v = 0; v < V; v++) maxDiff = Math.max(maxDiff, Math.abs(a[i * V + v]! - b[i * V + v]!));
    if (argmax(a, i * V, V) === argmax(b, i * V, V)) agree++;
  }
  return { maxDiff, agree };
}
