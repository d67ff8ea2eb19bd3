// main() of the llama-perplexity the tests build (test/export/llama-cpp.ts), in place of the
// tool's own tools/perplexity/main.cpp: the same call, then a drain of llama.cpp's log.
//
// common/log.cpp writes every LOG() line from a worker thread and deliberately never frees its
// logger (llama.cpp issue 22142), so lines still queued when main returns are lost: about 2 runs
// in 5 here ended without the last chunk and the "Final estimate" / "Mean KLD" summary the tests
// read, with exit status 0. common_log_pause() drains the queue and joins the worker.
#include "log.h"

int llama_perplexity(int argc, char ** argv);

int main(int argc, char ** argv) {
    const int status = llama_perplexity(argc, argv);
    common_log_pause(common_log_main());
    return status;
}
