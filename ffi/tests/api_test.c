/*
 * api_test.c - exercises every declaration of dcgguf.h (built with -Wall -Wextra -Werror by
 * tests/ffi_c_api.rs). Usage: api_test model.dc.gguf original.gguf corrupt.dc.gguf SCRATCH_DIR
 * (model.dc.gguf is original.gguf compressed; the conversions write into SCRATCH_DIR).
 * $DCGGUF_CACHE must hold a valid machine profile (profile.json) for the cost-model checks,
 * so that they measure nothing and write nothing outside SCRATCH_DIR.
 * Exits 0 when all checks pass; prints the failing check otherwise.
 */
#include <dcgguf.h>

#include "proc_status.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int failures = 0;
#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            char msg_[512];                                                          \
            dcgguf_last_error(msg_, sizeof msg_);                                    \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__,  \
                    __LINE__, #cond, msg_);                                          \
            failures++;                                                              \
        }                                                                            \
    } while (0)

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t) n);
    if (buf && fread(buf, 1, (size_t) n, f) != (size_t) n) { free(buf); buf = NULL; }
    fclose(f);
    *len = (size_t) n;
    return buf;
}

/* The thread that makes the calls: progress callbacks must come on it, whatever threads the
 * library works on. */
static pthread_t caller;

/* What a progress callback saw. cancel_at: return non-zero on that call (0: never). */
struct progress {
    unsigned calls, cancel_at;
    uint64_t done, total;
    int backwards, over, off_thread;
};

static int on_progress(uint64_t done, uint64_t total, void *user) {
    struct progress *p = user;
    p->calls++;
    if (!pthread_equal(pthread_self(), caller)) p->off_thread = 1;
    if (done < p->done || (p->calls > 1 && total != p->total)) p->backwards = 1;
    if (done > total) p->over = 1;
    p->done = done;
    p->total = total;
    return p->cancel_at != 0 && p->calls >= p->cancel_at;
}

/* A progress run that ended where it should: monotonic, done == total == expected, every
 * call on the calling thread. */
static int progress_ok(const struct progress *p, uint64_t expected) {
    return p->calls > 0 && !p->backwards && !p->over && !p->off_thread && p->done == expected &&
           p->total == expected;
}

/* Waits up to 5 s for the thread count to come down to `want` (a freed pool's threads exit
 * on their own, just after the call that dropped it); returns the last count seen. */
static long threads_back_to(long want) {
    long n = thread_count();
    for (int i = 0; i < 500 && n != want; i++) {
        struct timespec ten_ms = {0, 10 * 1000 * 1000};
        nanosleep(&ten_ms, NULL);
        n = thread_count();
    }
    return n;
}

static int exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
}

static uint64_t file_size(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fclose(f);
    return n < 0 ? 0 : (uint64_t) n;
}

/* The calling thread's last conversion report (malloc'd; "" when there is none). */
static char *last_report(void) {
    size_t need = 0, got = 0;
    if (dcgguf_last_report_json(NULL, 0, &need) != DCGGUF_OK) return NULL;
    char *json = malloc(need + 1);
    if (dcgguf_last_report_json(json, need + 1, &got) != DCGGUF_OK || got != need) {
        free(json);
        return NULL;
    }
    return json;
}

/* The first unsigned number after "key": in json (0 if absent). */
static uint64_t json_u64(const char *json, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *at = json ? strstr(json, pat) : NULL;
    return at ? strtoull(at + strlen(pat), NULL, 10) : 0;
}

/* The size a compress with options o writes to path, checked against its report (0 on
 * failure). Removes path first. */
static uint64_t compressed_size(const char *original, const char *path, const dcgguf_options *o) {
    remove(path);
    if (dcgguf_compress(original, path, o, NULL, NULL) != DCGGUF_OK) return 0;
    char *rep = last_report();
    uint64_t n = file_size(path);
    CHECK(rep && json_u64(rep, "output_bytes") == n && strstr(rep, "\"command\":\"compress\""));
    free(rep);
    return n;
}

/* The cost model (profile, storage_bps, target_size) and the structs of older headers. */
static void cost_model(dcgguf_file *f, const char *original, const char *dir) {
    char out[4096], profile[4096];
    snprintf(out, sizeof out, "%s/cost.dc.gguf", dir);
    const char *cache = getenv("DCGGUF_CACHE");
    CHECK(cache != NULL);
    if (!cache) return;
    snprintf(profile, sizeof profile, "%s/profile.json", cache);
    CHECK(exists(profile));

    dcgguf_options o;
    CHECK(dcgguf_options_init(&o) == DCGGUF_OK);
    CHECK(o.profile == NULL && o.storage_bps == 0 && o.target_size == 0);
    o.level = 3;

    /* storage_bps alone implies profile "auto" ($DCGGUF_CACHE/profile.json). Storage far
     * faster than decoding: every tensor is stored raw; far slower: all are compressed. */
    uint64_t plain = compressed_size(original, out, &o);
    o.storage_bps = 1e15;
    uint64_t fast = compressed_size(original, out, &o);
    o.storage_bps = 1e3;
    uint64_t slow = compressed_size(original, out, &o);
    CHECK(plain > 0 && fast > slow && slow == plain);

    /* target_size: just enough compressed to fit between the two. */
    o.storage_bps = 1e15;
    o.target_size = (fast + slow) / 2;
    uint64_t fitted = compressed_size(original, out, &o);
    CHECK(fitted > 0 && fitted <= o.target_size && fitted > slow);
    printf("cost model: default %llu bytes, all raw %llu, all compressed %llu, target %llu -> "
           "%llu\n", (unsigned long long) plain, (unsigned long long) fast,
           (unsigned long long) slow, (unsigned long long) o.target_size,
           (unsigned long long) fitted);
    /* Unreachable: refused (the smallest size in the message), nothing written. */
    o.target_size = slow / 2;
    remove(out);
    CHECK(dcgguf_compress(original, out, &o, NULL, NULL) == DCGGUF_ERR_INVALID_ARGUMENT);
    char msg[512];
    dcgguf_last_error(msg, sizeof msg);
    CHECK(strstr(msg, "smallest") != NULL && !exists(out));
    char *rep = last_report();
    CHECK(rep && rep[0] == 0); /* a failed conversion leaves no report */
    free(rep);
    o.target_size = 0;

    /* An explicit profile path; bad bandwidths are refused before anything is written. */
    o.profile = profile;
    o.storage_bps = 1e15;
    CHECK(compressed_size(original, out, &o) == fast);
    o.profile = NULL;
    double bad[] = {-1.0, NAN, INFINITY};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o.storage_bps = bad[i];
        remove(out);
        CHECK(dcgguf_compress(original, out, &o, NULL, NULL) == DCGGUF_ERR_INVALID_ARGUMENT);
        CHECK(!exists(out));
    }
    o.profile = "";
    o.storage_bps = 0;
    CHECK(dcgguf_compress(original, out, &o, NULL, NULL) == DCGGUF_ERR_INVALID_ARGUMENT);
    o.profile = NULL;

    /* inspect with the model: the CLI's predicted load times; without, dcgguf_inspect_json. */
    size_t need = 0, got = 0;
    o.storage_bps = 1e9;
    CHECK(dcgguf_inspect_json_opts(f, &o, NULL, 0, &need) == DCGGUF_OK && need > 0);
    char *json = malloc(need + 1);
    CHECK(dcgguf_inspect_json_opts(f, &o, json, need + 1, &got) == DCGGUF_OK && got == need);
    CHECK(strstr(json, "\"predicted_load_seconds\":[") && strstr(json, "\"tensors\""));
    CHECK(strstr(json, "\"storage_bps\":1000000000.0") != NULL);
    free(json);
    o.storage_bps = -1;
    CHECK(dcgguf_inspect_json_opts(f, &o, NULL, 0, &need) == DCGGUF_ERR_INVALID_ARGUMENT);
    size_t plain_n = 0;
    CHECK(dcgguf_inspect_json(f, NULL, 0, &plain_n) == DCGGUF_OK);
    CHECK(dcgguf_inspect_json_opts(f, NULL, NULL, 0, &need) == DCGGUF_OK && need == plain_n);

    /* A struct from the first header (104 bytes on 64-bit targets, ending at gptq), filled
     * by its initializer (the real function, not the macro): accepted, and nothing past its
     * size is read, so the bad bandwidth there is not seen. */
    dcgguf_options v1;
    memset(&v1, 0, sizeof v1);
    CHECK((dcgguf_options_init)(&v1) == DCGGUF_OK);
    CHECK(v1.size == offsetof(dcgguf_options, profile) && v1.size < sizeof v1);
    v1.level = 3;
    v1.storage_bps = -1;
    CHECK(compressed_size(original, out, &v1) == plain);
    /* Sizes: one ending inside a field is refused; a newer (longer) header's struct is
     * initialized with zeros past our fields and accepted while they stay zero. */
    CHECK(dcgguf_options_init_size(&o, offsetof(dcgguf_options, profile) + 4) ==
          DCGGUF_ERR_INVALID_ARGUMENT);
    struct { dcgguf_options o; uint64_t later; } newer;
    memset(&newer, 0xff, sizeof newer);
    CHECK(dcgguf_options_init_size(&newer.o, sizeof newer) == DCGGUF_OK);
    CHECK(newer.o.size == sizeof newer && newer.later == 0 &&
          newer.o.level == DCGGUF_LEVEL_DEFAULT);
    newer.o.level = 3;
    CHECK(compressed_size(original, out, &newer.o) == plain);
    newer.later = 1;
    CHECK(dcgguf_compress(original, out, &newer.o, NULL, NULL) == DCGGUF_ERR_INVALID_ARGUMENT);
    remove(out);
}

/* compress / verify / decompress / inspect / metadata / type names. */
static void conversions(dcgguf_file *f, const char *original, const unsigned char *orig,
                        size_t orig_len, const char *corrupt, const char *dir) {
    char dc[4096], back[4096], cancelled[4096], lossy[4096];
    snprintf(dc, sizeof dc, "%s/conv.dc.gguf", dir);
    snprintf(back, sizeof back, "%s/conv.back.gguf", dir);
    snprintf(cancelled, sizeof cancelled, "%s/cancelled.dc.gguf", dir);
    snprintf(lossy, sizeof lossy, "%s/lossy.dc.gguf", dir);
    remove(dc);
    remove(back);
    remove(cancelled);
    remove(lossy);

    dcgguf_options o;
    CHECK(dcgguf_options_init(NULL) == DCGGUF_ERR_NULL_POINTER);
    CHECK(dcgguf_options_init(&o) == DCGGUF_OK);
    CHECK(o.size == sizeof o && o.level == DCGGUF_LEVEL_DEFAULT && o.chunk_size == 1u << 20 &&
          o.force == 0);
    CHECK(o.quantize == DCGGUF_QUANTIZE_NONE && o.step != o.step && o.imatrix == NULL);
    o.level = 3;
    o.threads = 2;

    struct progress p = {0};
    CHECK(dcgguf_compress(original, dc, &o, on_progress, &p) == DCGGUF_OK);
    CHECK(progress_ok(&p, orig_len));
    /* Its report: what `dcgguf compress --json` prints. */
    char *rep = last_report();
    CHECK(rep && strstr(rep, "\"command\":\"compress\"") && strstr(rep, "\"ratio\":"));
    CHECK(json_u64(rep, "output_bytes") == file_size(dc) && json_u64(rep, "original_bytes") == orig_len);
    free(rep);
    CHECK(dcgguf_last_report_json(NULL, 0, NULL) == DCGGUF_ERR_NULL_POINTER);
    CHECK(dcgguf_compress(original, dc, &o, NULL, NULL) == DCGGUF_ERR_OUTPUT_REFUSED);
    rep = last_report();
    CHECK(rep && rep[0] == 0);
    free(rep);
    CHECK(dcgguf_compress(original, NULL, &o, NULL, NULL) == DCGGUF_ERR_NULL_POINTER);
    CHECK(dcgguf_compress("/nonexistent/x.gguf", back, NULL, NULL, NULL) == DCGGUF_ERR_IO);
    CHECK(dcgguf_compress(corrupt, back, &o, NULL, NULL) == DCGGUF_ERR_INVALID_ARGUMENT);
    o.force = 1;
    CHECK(dcgguf_compress(original, dc, &o, NULL, NULL) == DCGGUF_OK);
    o.force = 0;

    struct progress v = {0};
    CHECK(dcgguf_verify(dc, original, &o, on_progress, &v) == DCGGUF_OK);
    CHECK(progress_ok(&v, orig_len));
    rep = last_report();
    CHECK(rep && strstr(rep, "\"command\":\"verify\"") && strstr(rep, "\"ok\":true"));
    CHECK(json_u64(rep, "original_bytes") == orig_len);
    free(rep);
    CHECK(dcgguf_verify(dc, NULL, NULL, NULL, NULL) == DCGGUF_OK);
    CHECK(dcgguf_verify(corrupt, NULL, NULL, NULL, NULL) == DCGGUF_ERR_CORRUPT);
    CHECK(dcgguf_verify(original, NULL, NULL, NULL, NULL) == DCGGUF_ERR_NOT_DC);

    struct progress d = {0};
    CHECK(dcgguf_decompress(dc, back, &o, on_progress, &d) == DCGGUF_OK);
    CHECK(progress_ok(&d, orig_len));
    rep = last_report();
    CHECK(rep && strstr(rep, "\"command\":\"decompress\"") && json_u64(rep, "bytes") == orig_len);
    free(rep);
    size_t back_len = 0;
    unsigned char *b = slurp(back, &back_len);
    CHECK(b != NULL && back_len == orig_len && memcmp(b, orig, orig_len) == 0);
    free(b);
    CHECK(dcgguf_decompress(dc, back, &o, NULL, NULL) == DCGGUF_ERR_OUTPUT_REFUSED);

    /* A non-zero return cancels and leaves no output. */
    struct progress c = {0};
    c.cancel_at = 2;
    CHECK(dcgguf_compress(original, cancelled, &o, on_progress, &c) == DCGGUF_ERR_CANCELLED);
    CHECK(c.calls == 2 && !c.off_thread && !exists(cancelled));
    struct progress c2 = {0};
    c2.cancel_at = 1;
    CHECK(dcgguf_decompress(dc, cancelled, &o, on_progress, &c2) == DCGGUF_ERR_CANCELLED);
    CHECK(!exists(cancelled));

    /* The named best-ratio level is accepted and compresses. */
    o.level = DCGGUF_LEVEL_MAX;
    CHECK(dcgguf_compress(original, cancelled, &o, NULL, NULL) == DCGGUF_OK);
    CHECK(exists(cancelled) && remove(cancelled) == 0);
    o.level = 3;

    /* Options the CLI would refuse. */
    o.level = 23;
    CHECK(dcgguf_compress(original, cancelled, &o, NULL, NULL) == DCGGUF_ERR_INVALID_ARGUMENT);
    o.level = 3;
    o.step = 1.0f;
    CHECK(dcgguf_compress(original, cancelled, &o, NULL, NULL) == DCGGUF_ERR_INVALID_ARGUMENT);
    o.size = 8;
    CHECK(dcgguf_compress(original, cancelled, &o, NULL, NULL) == DCGGUF_ERR_INVALID_ARGUMENT);
    o.size = sizeof o;
    CHECK(!exists(cancelled));

    /* Lossy: Q8_0 requantized; progress counts the quantized model twice (as it is written,
     * a call per tensor, then as it is compressed). */
    o.quantize = DCGGUF_QUANTIZE_INT8;
    struct progress q = {0};
    CHECK(dcgguf_compress(original, lossy, &o, on_progress, &q) == DCGGUF_OK);
    CHECK(q.calls > 0 && !q.backwards && !q.off_thread && q.done == q.total && q.total > 0);
    rep = last_report();
    CHECK(rep && strstr(rep, "\"quantize\":{") && json_u64(rep, "quantized_tensors") > 0);
    CHECK(json_u64(rep, "output_bytes") == file_size(lossy));
    CHECK(q.total == 2 * json_u64(rep, "original_bytes"));
    free(rep);
    CHECK(dcgguf_verify(lossy, NULL, NULL, NULL, NULL) == DCGGUF_OK);

    /* JSON getters: sized with len == 0, then copied whole. */
    size_t need = 0, got = 0;
    CHECK(dcgguf_inspect_json(f, NULL, 0, &need) == DCGGUF_OK && need > 0);
    char *json = malloc(need + 1);
    CHECK(dcgguf_inspect_json(f, json, need + 1, &got) == DCGGUF_OK && got == need);
    CHECK(strlen(json) == need && strstr(json, "\"tensors\"") && strstr(json, "\"ratio\""));
    free(json);
    CHECK(dcgguf_inspect_json(f, NULL, 0, NULL) == DCGGUF_ERR_NULL_POINTER);
    CHECK(dcgguf_metadata_json(f, NULL, 0, &need) == DCGGUF_OK && need > 0);
    json = malloc(need + 1);
    CHECK(dcgguf_metadata_json(f, json, need + 1, &got) == DCGGUF_OK && got == need);
    CHECK(strstr(json, "\"general.architecture\"") && strstr(json, "\"elem_type\""));
    free(json);

    const char *tn = NULL;
    CHECK(dcgguf_type_name(8, &tn) == DCGGUF_OK && tn && strcmp(tn, "Q8_0") == 0);
    CHECK(dcgguf_type_name(0, &tn) == DCGGUF_OK && strcmp(tn, "F32") == 0);
    CHECK(dcgguf_type_name(4, &tn) == DCGGUF_ERR_INVALID_ARGUMENT); /* retired Q4_2 */
    CHECK(dcgguf_type_name(8, NULL) == DCGGUF_ERR_NULL_POINTER);
    CHECK(dcgguf_error_message(DCGGUF_ERR_CANCELLED, NULL, 0, &need) == DCGGUF_OK && need > 0);

    cost_model(f, original, dir);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s model.dc.gguf original.gguf corrupt.dc.gguf SCRATCH_DIR\n",
                argv[0]);
        return 2;
    }
    size_t orig_len = 0;
    unsigned char *orig = slurp(argv[2], &orig_len);
    CHECK(orig != NULL);
    if (!orig) return 1;

    caller = pthread_self();
    CHECK(strlen(dcgguf_version()) > 0);
    dcgguf_free(NULL);

    /* Error paths: outputs untouched, codes and messages. */
    dcgguf_file *f = (dcgguf_file *) (void *) 0x1;
    CHECK(dcgguf_open(NULL, &f) == DCGGUF_ERR_NULL_POINTER && f == (dcgguf_file *) (void *) 0x1);
    CHECK(dcgguf_open(argv[1], NULL) == DCGGUF_ERR_NULL_POINTER);
    CHECK(dcgguf_open("/nonexistent/x.dc.gguf", &f) == DCGGUF_ERR_IO);
    CHECK(f == (dcgguf_file *) (void *) 0x1);
    CHECK(dcgguf_last_error(NULL, 0) > 0);
    CHECK(dcgguf_open(argv[2], &f) == DCGGUF_ERR_NOT_DC);
    char msg[256];
    size_t n_msg = 0;
    CHECK(dcgguf_error_message(DCGGUF_ERR_CORRUPT, msg, sizeof msg, &n_msg) == DCGGUF_OK);
    CHECK(n_msg == strlen(msg) && strstr(msg, "corrupt") != NULL);
    CHECK(dcgguf_error_message(9999, msg, sizeof msg, &n_msg) == DCGGUF_ERR_INVALID_ARGUMENT);
    char tiny[4];
    CHECK(dcgguf_error_message(DCGGUF_ERR_CORRUPT, tiny, sizeof tiny, NULL) == DCGGUF_OK);
    CHECK(strlen(tiny) == 3);
    /* Memory budget: malformed specs are refused with a message; NULL and "0" turn it off. */
    CHECK(dcgguf_set_memory_budget("lots") == DCGGUF_ERR_INVALID_ARGUMENT);
    dcgguf_last_error(msg, sizeof msg);
    CHECK(strstr(msg, "memory budget") != NULL);
    CHECK(dcgguf_set_memory_budget("60%,file,noprefetch") == DCGGUF_OK);
    CHECK(dcgguf_set_memory_budget("60%,disk") == DCGGUF_ERR_INVALID_ARGUMENT);
    CHECK(dcgguf_set_memory_budget(NULL) == DCGGUF_OK);
    CHECK(dcgguf_llama_check() == DCGGUF_ERR_LLAMA_UNAVAILABLE); /* not linked to llama here */
    size_t need = dcgguf_last_error(NULL, 0);
    CHECK(need > 0);
    dcgguf_last_error(msg, sizeof msg);
    CHECK(strstr(msg, "llama") != NULL);

    /* A handle's decode threads are its own: reading every tensor (the larger ones decode
     * their chunks in parallel) and closing the handle leaves as many threads as before. */
    {
        long before = thread_count();
        dcgguf_file *t = NULL;
        CHECK(dcgguf_open(argv[1], &t) == DCGGUF_OK && t != NULL);
        size_t n = 0;
        if (t != NULL && dcgguf_tensor_count(t, &n) == DCGGUF_OK) {
            for (size_t i = 0; i < n; i++) {
                uint64_t raw = 0;
                CHECK(dcgguf_tensor_raw_size(t, i, &raw) == DCGGUF_OK);
                void *b = malloc(raw ? raw : 1);
                CHECK(dcgguf_read_tensor(t, i, b, raw) == DCGGUF_OK);
                free(b);
            }
        }
        dcgguf_free(t);
        long after = threads_back_to(before);
        if (after != before) {
            fprintf(stderr, "api_test: %ld threads before a handle's reads, %ld after it closed\n",
                    before, after);
        }
        CHECK(before >= 1 && after == before);
    }

    /* Open and inspect. */
    f = NULL;
    CHECK(dcgguf_open(argv[1], &f) == DCGGUF_OK && f != NULL);
    if (!f) return 1;
    uint64_t osize = 0, ssize = 0;
    CHECK(dcgguf_original_size(f, &osize) == DCGGUF_OK && osize == orig_len);
    CHECK(dcgguf_stored_size(f, &ssize) == DCGGUF_OK && ssize > 0);
    CHECK(dcgguf_original_size(NULL, &osize) == DCGGUF_ERR_NULL_POINTER);
    CHECK(dcgguf_original_size(f, NULL) == DCGGUF_ERR_NULL_POINTER);
    size_t count = 0;
    CHECK(dcgguf_tensor_count(f, &count) == DCGGUF_OK && count > 0);
    CHECK(dcgguf_set_threads(f, 1) == DCGGUF_OK);

    uint64_t total_raw = 0;
    for (size_t i = 0; i < count; i++) {
        const char *name = NULL;
        uint32_t type = 999;
        uint64_t dims[8], raw = 0, stored = 0, off = 0;
        size_t nd = 0, found = 0;
        CHECK(dcgguf_tensor_name(f, i, &name) == DCGGUF_OK && name && name[0]);
        CHECK(dcgguf_find_tensor(f, name, &found) == DCGGUF_OK && found == i);
        CHECK(dcgguf_tensor_type(f, i, &type) == DCGGUF_OK && type < 64);
        CHECK(dcgguf_tensor_shape(f, i, dims, 8, &nd) == DCGGUF_OK && nd >= 1 && nd <= 4);
        CHECK(dcgguf_tensor_raw_size(f, i, &raw) == DCGGUF_OK);
        CHECK(dcgguf_tensor_stored_size(f, i, &stored) == DCGGUF_OK);
        CHECK(dcgguf_tensor_offset(f, i, &off) == DCGGUF_OK && off + raw <= orig_len);
        total_raw += raw;
        unsigned char *buf = malloc(raw ? raw : 1);
        CHECK(dcgguf_read_tensor(f, i, buf, raw) == DCGGUF_OK);
        CHECK(memcmp(buf, orig + off, raw) == 0);
        if (raw > 16) {
            CHECK(dcgguf_read_tensor(f, i, buf, raw - 1) == DCGGUF_ERR_BUFFER_TOO_SMALL);
            memset(buf, 0, raw);
            CHECK(dcgguf_read_tensor_range(f, i, 5, buf, 11) == DCGGUF_OK);
            CHECK(memcmp(buf, orig + off + 5, 11) == 0);
            CHECK(dcgguf_read_tensor_range(f, i, raw - 4, buf, 8) == DCGGUF_ERR_OUT_OF_RANGE);
        }
        free(buf);
    }
    CHECK(total_raw > 0 && total_raw <= orig_len);
    CHECK(dcgguf_set_threads(f, 0) == DCGGUF_OK);

    /* Index and shape errors write nothing. */
    const char *name = "untouched";
    CHECK(dcgguf_tensor_name(f, count, &name) == DCGGUF_ERR_NO_SUCH_TENSOR);
    CHECK(strcmp(name, "untouched") == 0);
    size_t found = 12345;
    CHECK(dcgguf_find_tensor(f, "no.such.tensor", &found) == DCGGUF_ERR_NO_SUCH_TENSOR && found == 12345);
    uint64_t d1[1];
    size_t nd = 77;
    uint64_t dims0[4];
    size_t nd0 = 0;
    CHECK(dcgguf_tensor_shape(f, 0, dims0, 4, &nd0) == DCGGUF_OK);
    if (nd0 > 1) {
        CHECK(dcgguf_tensor_shape(f, 0, d1, 1, &nd) == DCGGUF_ERR_BUFFER_TOO_SMALL && nd == 77);
    }

    /* The whole original file through read_at, in odd-sized pieces. */
    unsigned char *all = malloc(orig_len + 100);
    size_t pos = 0, got = 0;
    while (pos < orig_len) {
        size_t want = 100003;
        CHECK(dcgguf_read_at(f, pos, all + pos, want, &got) == DCGGUF_OK && got > 0);
        if (got == 0) break;
        pos += got;
    }
    CHECK(pos == orig_len && memcmp(all, orig, orig_len) == 0);
    CHECK(dcgguf_read_at(f, orig_len, all, 10, &got) == DCGGUF_OK && got == 0);
    free(all);
    /* A conversion's threads are its own (those with threads 0, one per core, too): after
     * them the process has as many threads as before. */
    long before_conversions = thread_count();
    conversions(f, argv[2], orig, orig_len, argv[3], argv[4]);
    long after_conversions = threads_back_to(before_conversions);
    if (after_conversions != before_conversions) {
        fprintf(stderr, "api_test: %ld threads before the conversions, %ld after them\n",
                before_conversions, after_conversions);
    }
    CHECK(before_conversions >= 1 && after_conversions == before_conversions);
    dcgguf_free(f);

    /* Corrupt data: the error names tensor and chunk. */
    dcgguf_file *bad = NULL;
    dcgguf_result r = dcgguf_open(argv[3], &bad);
    if (r == DCGGUF_OK) {
        size_t bc = 0;
        dcgguf_tensor_count(bad, &bc);
        for (size_t i = 0; i < bc && r == DCGGUF_OK; i++) {
            uint64_t raw = 0;
            dcgguf_tensor_raw_size(bad, i, &raw);
            void *b = malloc(raw ? raw : 1);
            r = dcgguf_read_tensor(bad, i, b, raw);
            free(b);
        }
        dcgguf_free(bad);
    }
    CHECK(r == DCGGUF_ERR_CORRUPT);
    dcgguf_last_error(msg, sizeof msg);
    CHECK(strstr(msg, "tensor") != NULL && strstr(msg, "chunk") != NULL);
    printf("api_test: %s (%zu tensors, last corrupt error: %s)\n", failures ? "FAILED" : "ok", count, msg);
    free(orig);
    return failures ? 1 : 0;
}
