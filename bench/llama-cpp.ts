/**
 * Builds bench/llama-perplexity.c against the llama.cpp that node-llama-cpp ships: its prebuilt
 * linux-x64 libraries (libllama, libggml and the CPU backends it loads at run time) and the
 * headers of the llama.cpp release it bundles (a shallow clone of its git bundle, once).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const MODULES = path.join(HERE, '..', 'node_modules');
export const LLAMA_LIBS = path.join(MODULES, '@node-llama-cpp', 'linux-x64', 'bins', 'linux-x64');

/** The compiled harness in `cacheDir`; throws when the libraries or a C compiler are missing. */
export function buildLlamaPerplexity(cacheDir: string): string {
  if (!existsSync(LLAMA_LIBS))
    throw new Error(`node-llama-cpp's prebuilt libraries not found in ${LLAMA_LIBS}`);
  const bundled = path.join(MODULES, 'node-llama-cpp', 'llama');
  const { tag } = JSON.parse(readFileSync(path.join(bundled, 'llama.cpp.info.json'), 'utf8')) as {
    tag: string;
  };
  const src = path.join(cacheDir, `llama.cpp-${tag}`);
  if (!existsSync(path.join(src, 'include', 'llama.h'))) {
    mkdirSync(cacheDir, { recursive: true });
    execFileSync('git', ['clone', '-q', '--depth', '1', path.join(bundled, 'gitRelease.bundle'), src], {
      stdio: 'pipe',
    });
  }
  const exe = path.join(cacheDir, `llama-perplexity-${tag}`);
  const lib = (prefix: string) => {
    const f = readdirSync(LLAMA_LIBS).find((f) => f.startsWith(prefix) && f.endsWith('.so'));
    if (!f) throw new Error(`no ${prefix}*.so in ${LLAMA_LIBS}`);
    return `-l:${f}`;
  };
  execFileSync(
    'cc',
    [
      '-O2',
      '-o',
      exe,
      path.join(HERE, 'llama-perplexity.c'),
      `-I${path.join(src, 'ggml', 'include')}`,
      `-I${path.join(src, 'include')}`,
      `-L${LLAMA_LIBS}`,
      lib('libggml-base'),
      lib('libllama.'),
      lib('libggml.'),
      '-lm',
      `-Wl,-rpath,${LLAMA_LIBS}`,
    ],
    { stdio: 'pipe' },
  );
  return exe;
}
