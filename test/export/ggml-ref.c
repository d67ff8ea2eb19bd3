/*
 * Test harness (ptqkit's own code, compiled at test time): runs llama.cpp's quantizers from the
 * libraries node-llama-cpp ships, against headers of the llama.cpp source it bundles.
 *   ggml-ref chunk <ggml_type> <n_per_row> <in.f32> <out.bin>   ggml_quantize_chunk, no imatrix
 *   ggml-ref dequant <ggml_type> <in.bin> <out.f32>             the type's to_float (dequantize_row_*)
 *   ggml-ref model <in.gguf> <out.gguf> <llama_ftype> [mix]      llama_model_quantize, pure (mix: not)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ggml.h"
#include "llama.h"

static int chunk(int type, long n_per_row, const char *in, const char *out) {
  FILE *fi = fopen(in, "rb");
  if (!fi) return 2;
  fseek(fi, 0, SEEK_END);
  long bytes = ftell(fi);
  fseek(fi, 0, SEEK_SET);
  long n = bytes / 4;
  float *src = malloc(bytes);
  if (fread(src, 4, n, fi) != (size_t)n) return 3;
  fclose(fi);
  long nrows = n / n_per_row;
  size_t row = ggml_row_size((enum ggml_type)type, n_per_row);
  void *dst = malloc(row * nrows);
  ggml_quantize_init((enum ggml_type)type);
  size_t written = ggml_quantize_chunk((enum ggml_type)type, src, dst, 0, nrows, n_per_row, NULL);
  FILE *fo = fopen(out, "wb");
  if (!fo || fwrite(dst, 1, written, fo) != written) return 4;
  fclose(fo);
  return 0;
}

static int dequant(int type, const char *in, const char *out) {
  FILE *fi = fopen(in, "rb");
  if (!fi) return 2;
  fseek(fi, 0, SEEK_END);
  long bytes = ftell(fi);
  fseek(fi, 0, SEEK_SET);
  void *src = malloc(bytes);
  if (fread(src, 1, bytes, fi) != (size_t)bytes) return 3;
  fclose(fi);
  const struct ggml_type_traits *t = ggml_get_type_traits((enum ggml_type)type);
  long n = bytes / t->type_size * t->blck_size;
  float *dst = malloc(n * 4);
  t->to_float(src, dst, n);
  FILE *fo = fopen(out, "wb");
  if (!fo || fwrite(dst, 4, n, fo) != (size_t)n) return 4;
  fclose(fo);
  return 0;
}

static int model(const char *in, const char *out, int ftype, int pure) {
  llama_backend_init();
  struct llama_model_quantize_params p = llama_model_quantize_default_params();
  p.ftype = (enum llama_ftype)ftype;
  p.pure = pure;
  p.nthread = 1;
  return llama_model_quantize(in, out, &p) == 0 ? 0 : 5;
}

int main(int argc, char **argv) {
  if (argc == 6 && strcmp(argv[1], "chunk") == 0) return chunk(atoi(argv[2]), atol(argv[3]), argv[4], argv[5]);
  if (argc == 5 && strcmp(argv[1], "dequant") == 0) return dequant(atoi(argv[2]), argv[3], argv[4]);
  if (argc == 5 && strcmp(argv[1], "model") == 0) return model(argv[2], argv[3], atoi(argv[4]), 1);
  if (argc == 6 && strcmp(argv[1], "model") == 0 && strcmp(argv[5], "mix") == 0)
    return model(argv[2], argv[3], atoi(argv[4]), 0);
  fprintf(stderr, "usage: ggml-ref chunk <type> <n_per_row> <in.f32> <out.bin> | dequant <type> <in.bin> <out.f32> | model <in.gguf> <out.gguf> <ftype> [mix]\n");
  return 1;
}
