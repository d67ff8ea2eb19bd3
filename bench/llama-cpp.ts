/**
 * Builds bench/llama-perplexity.c against the llama.cpp that node-llama-cpp ships (its prebuilt
 * libraries and the headers of the release it bundles), through the GGUF tests' builder.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildAgainstLlamaCpp } from '../test/export/llama-cpp.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** The compiled harness in `cacheDir` and the library directory it loads its CPU backends from. */
export function buildLlamaPerplexity(cacheDir: string): { exe: string; libDir: string } {
  return buildAgainstLlamaCpp(path.join(HERE, 'llama-perplexity.c'), 'llama-perplexity', cacheDir);
}
