/* Test-only LD_PRELOAD shim: drains llama.cpp's asynchronous logger before a tool exits.
 *
 * llama.cpp's tools print their results (generated text, embeddings, the perplexity) through
 * common_log, a queue written out by a worker thread. The logger is leaked on purpose and its
 * worker is never joined at exit (upstream issue #22142), so the last lines of a tool's output
 * are sometimes lost, more often when the CPUs are busy. The integration tests compare those
 * lines, so they preload this shim into every tool they run, with and without libdcgguf.so.
 *
 * It links libllama-common, so its constructor runs after that library is initialised, and the
 * exit handler it registers runs before that library's static destructors. The handler pauses
 * the logger: common_log::pause() queues an end marker and joins the worker once it has written
 * every entry queued before it. */
#include <stdlib.h>

struct common_log;

/* C++ functions of libllama-common, named by their mangled symbols. */
struct common_log *common_log_main(void) __asm__("_Z15common_log_mainv");
void common_log_pause(struct common_log *log) __asm__("_Z16common_log_pauseP10common_log");

static void drain_log(void) { common_log_pause(common_log_main()); }

__attribute__((constructor)) static void register_drain_log(void) { atexit(drain_log); }
