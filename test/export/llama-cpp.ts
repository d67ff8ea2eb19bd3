/**
 * Access to the real llama.cpp for the GGUF tests: node-llama-cpp's runtime (its prebuilt
 * linux-x64 binary, or a local build made by `npx --no node-llama-cpp source download`), and
 * `ggml-ref` (ggml-ref.c next to this file), compiled at test time against the headers of the
 * llama.cpp source node-llama-cpp bundles and the libraries it ships, to run llama.cpp's own
 * quantizers (ggml_quantize_chunk, llama_model_quantize). Nothing of llama.cpp is committed.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO } from '../helpers.js';

const NLC = path.join(REPO, 'node_modules', 'node-llama-cpp');

type Llama = Awaited<ReturnType<typeof import('node-llama-cpp').getLlama>>;
let llamaPromise: Promise<Llama | string> | undefined;

/** The llama.cpp runtime, or the reason it is unavailable (the tests then skip with it). */
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

/**
 * Compile the C file `source` into `<cacheDir>/<name>-<tag>` against the llama.cpp node-llama-cpp
 * ships: the first of libraryDirs() and the headers of the release it bundles (a shallow clone of
 * its git bundle, a few seconds, once per release tag in `cacheDir`; llama.cpp.info.json names the
 * tag). Throws with the reason when the libraries, git or a C compiler are missing.
 */
export function buildAgainstLlamaCpp(
  source: string,
  name: string,
  cacheDir: string,
): { exe: string; libDir: string } {
  const libDir = libraryDirs()[0];
  if (!libDir) throw new Error('no llama.cpp libraries under node_modules');
  const lib = (prefix: string) => {
    const f = readdirSync(libDir).find((f) => f.startsWith(prefix) && f.endsWith('.so'));
    if (!f) throw new Error(`no ${prefix}*.so in ${libDir}`);
    return `-l:${f}`;
  };
  const { tag } = JSON.parse(readFileSync(path.join(NLC, 'llama', 'llama.cpp.info.json'), 'utf8')) as {
    tag: string;
  };
  const src = path.join(cacheDir, `llama.cpp-${tag}`);
  if (!existsSync(path.join(src, 'include', 'llama.h'))) {
    mkdirSync(cacheDir, { recursive: true });
    execFileSync('git', ['clone', '-q', '--depth', '1', path.join(NLC, 'llama', 'gitRelease.bundle'), src], {
      stdio: 'pipe',
    });
  }
  const exe = path.join(cacheDir, `${name}-${tag}`);
  execFileSync(
    'cc',
    [
      '-O2',
      '-o',
      exe,
      source,
      `-I${path.join(src, 'ggml', 'include')}`,
      `-I${path.join(src, 'include')}`,
      `-L${libDir}`,
      lib('libggml-base'),
      lib('libllama.'),
      lib('libggml.'),
      '-lm',
      `-Wl,-rpath,${libDir}`,
    ],
    { stdio: 'pipe' },
  );
  return { exe, libDir };
}

let harness: string | { reason: string } | undefined;

/** Path of the compiled ggml-ref harness, or why it could not be built. */
export function refHarness(): string | { reason: string } {
  if (harness) return harness;
  try {
    const cacheDir = path.join(os.tmpdir(), `ptq-ggml-ref-${process.getuid?.() ?? 0}`);
    harness = buildAgainstLlamaCpp(path.join(REPO, 'test', 'export', 'ggml-ref.c'), 'ggml-ref', cacheDir).exe;
  } catch (e) {
    harness = { reason: `cannot build the ggml-ref harness: ${(e as Error).message.split('\n')[0]}` };
  }
  return harness;
}
