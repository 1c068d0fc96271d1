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
 * every entry queued before it.
 *
 * But pause() queues its end marker without waiting for room (common/log.cpp of the pinned
 * llama.cpp, 0.3.36): if the queue is full then (511 of its 512 entries waiting, as when a
 * tool has just printed thousands of embedding values faster than the worker writes them),
 * the marker makes tail == head, the worker sees an empty queue and waits forever, and so
 * does pause(). A CI run hung there (llama-embedding, 2026-12-05). So the handler first waits,
 * up to 10 s, until the queue has room: the tool's main thread, which runs this handler, is
 * the only one still adding entries, so room once seen stays until pause() takes its lock.
 * The queue is a private member of a class of log.cpp, read here at its offsets in that
 * version's layout (x86-64 libstdc++), and only if the bytes there look like that layout;
 * otherwise the handler pauses at once, as before. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct common_log;

/* C++ functions of libllama-common, named by their mangled symbols. */
struct common_log *common_log_main(void) __asm__("_Z15common_log_mainv");
void common_log_pause(struct common_log *log) __asm__("_Z16common_log_pauseP10common_log");

/* struct common_log of common/log.cpp: std::mutex (40 bytes), std::thread (8), two
 * std::condition_variable (48 each), FILE *, three bools, int64_t t_start, then
 * std::vector<common_log_entry> queue (begin, end, capacity end) and size_t head, tail. */
enum {
    QUEUE_BEGIN = 168,
    QUEUE_END = 176,
    HEAD = 192,
    TAIL = 200,
    RUNNING = 154,
    /* sizeof(common_log_entry): level, std::vector<char>, int64_t, four bools. */
    ENTRY_SIZE = 48,
};

static size_t load(const char *log, size_t offset) {
    return __atomic_load_n((const size_t *)(log + offset), __ATOMIC_ACQUIRE);
}

/* Whether the logger's queue is full, or -1 where the memory does not look like the
 * layout above. */
static int queue_full(const char *log) {
    uintptr_t begin = load(log, QUEUE_BEGIN), end = load(log, QUEUE_END);
    unsigned char running = *(volatile const unsigned char *)(log + RUNNING);
    if (running > 1 || end <= begin || (end - begin) % ENTRY_SIZE != 0) return -1;
    size_t len = (end - begin) / ENTRY_SIZE;
    size_t head = load(log, HEAD), tail = load(log, TAIL);
    if (len < 2 || head >= len || tail >= len) return -1;
    return running && (tail + 1) % len == head;
}

static void drain_log(void) {
    struct common_log *log = common_log_main();
    /* For the test that this wait is not silently skipped on the pinned llama.cpp. */
    if (getenv("DCGGUF_DRAIN_LOG_CHECK"))
        fprintf(stderr, "drain_log: logger queue layout %s\n",
                queue_full((const char *)log) < 0 ? "not recognised" : "recognised");
    const struct timespec tick = {0, 1000000};
    for (int waited_ms = 0; waited_ms < 10000 && queue_full((const char *)log) == 1; waited_ms++)
        nanosleep(&tick, NULL);
    common_log_pause(log);
}

__attribute__((constructor)) static void register_drain_log(void) { atexit(drain_log); }
