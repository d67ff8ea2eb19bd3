/*
 * llama.cpp's side of the eval benchmark (ptqkit's own code, compiled at bench time against the
 * headers of the llama.cpp source node-llama-cpp bundles and the libraries it ships): the work
 * of llama.cpp's `llama-perplexity` on non-overlapping windows. Each window of n_ctx tokens is
 * decoded from an empty KV cache (positions 0..n_ctx-1) with logits at every position, and
 * the next-token log-likelihoods are summed from a log-softmax of those logits in double.
 *
 *   llama-perplexity <backend-dir> <model.gguf> <tokens.i32> <n_ctx> <threads>
 *
 * Prints one JSON line: windows, predictions, mean nll, seconds and CPU seconds of the windows
 * (decode + log-softmax; model loading excluded), load seconds, peak RSS (getrusage, KiB).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include "ggml-backend.h"
#include "llama.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpuSeconds(const struct rusage *ru) {
  return ru->ru_utime.tv_sec + ru->ru_utime.tv_usec * 1e-6 + ru->ru_stime.tv_sec + ru->ru_stime.tv_usec * 1e-6;
}

static bool no_progress(float progress, void *data) {
  (void)progress;
  (void)data;
  return true;
}

static void quiet(enum ggml_log_level level, const char *text, void *data) {
  (void)data;
  if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: llama-perplexity <backend-dir> <model.gguf> <tokens.i32> <n_ctx> <threads>\n");
    return 1;
  }
  const int n_ctx = atoi(argv[4]);
  const int threads = atoi(argv[5]);
  FILE *f = fopen(argv[3], "rb");
  if (!f) return 2;
  fseek(f, 0, SEEK_END);
  long n_tokens = ftell(f) / 4;
  fseek(f, 0, SEEK_SET);
  int32_t *tokens = malloc(n_tokens * 4);
  if (fread(tokens, 4, n_tokens, f) != (size_t)n_tokens) return 3;
  fclose(f);

  llama_log_set(quiet, NULL);
  // The CPU backend is a dynamically loaded library (the variant matching this CPU's features).
  ggml_backend_load_all_from_path(argv[1]);
  llama_backend_init();
  double t0 = now();
  struct llama_model_params mp = llama_model_default_params();
  mp.progress_callback = no_progress;  // the default prints dots to stderr
  struct llama_model *model = llama_model_load_from_file(argv[2], mp);
  if (!model) return 4;
  struct llama_context_params cp = llama_context_default_params();
  cp.n_ctx = n_ctx;
  cp.n_batch = n_ctx;
  cp.n_ubatch = n_ctx;
  cp.n_seq_max = 1;
  cp.n_threads = threads;
  cp.n_threads_batch = threads;
  // F32 KV cache: attention in float32, as ptqkit's (the default F16 cache would round K and V).
  cp.type_k = GGML_TYPE_F32;
  cp.type_v = GGML_TYPE_F32;
  struct llama_context *ctx = llama_init_from_model(model, cp);
  if (!ctx) return 5;
  const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  double load = now() - t0;

  struct llama_batch batch = llama_batch_init(n_ctx, 0, 1);
  const long windows = n_tokens / n_ctx;
  double nll = 0;
  long predictions = 0;
  double t1 = now();
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  const double cpu1 = cpuSeconds(&ru);
  for (long w = 0; w < windows; w++) {
    const int32_t *win = tokens + w * n_ctx;
    llama_memory_clear(llama_get_memory(ctx), 1);
    batch.n_tokens = n_ctx;
    for (int t = 0; t < n_ctx; t++) {
      batch.token[t] = win[t];
      batch.pos[t] = t;
      batch.n_seq_id[t] = 1;
      batch.seq_id[t][0] = 0;
      batch.logits[t] = 1;
    }
    if (llama_decode(ctx, batch) != 0) return 6;
    // −log p(win[t+1] | win[..t]) = logsumexp(logits_t) − logits_t[win[t+1]].
    for (int t = 0; t + 1 < n_ctx; t++) {
      const float *lg = llama_get_logits_ith(ctx, t);
      float max = lg[0];
      for (int v = 1; v < n_vocab; v++)
        if (lg[v] > max) max = lg[v];
      double sum = 0;
      for (int v = 0; v < n_vocab; v++) sum += exp((double)lg[v] - max);
      nll += max + log(sum) - lg[win[t + 1]];
      predictions++;
    }
  }
  double seconds = now() - t1;
  getrusage(RUSAGE_SELF, &ru);
  printf("{\"windows\":%ld,\"predictions\":%ld,\"nll\":%.9f,\"seconds\":%.6f,\"loadSeconds\":%.6f,"
         "\"cpuSeconds\":%.6f,\"maxRssKiB\":%ld,\"vocab\":%d}\n",
         windows, predictions, nll / predictions, seconds, load,
         cpuSeconds(&ru) - cpu1,
         ru.ru_maxrss, n_vocab);
  llama_batch_free(batch);
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}
