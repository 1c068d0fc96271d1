/*
 * multi_load.c - two DC-GGUF models in one process, and concurrent loads from several
 * threads, through dcgguf_llama_model_load. Usage:
 *   multi_load a.dc.gguf a.gguf b.dc.gguf b.gguf
 * Each DC model must match its original in parameter count and size; exits 0 on success.
 */
#include <llama.h>
#include <dcgguf.h>

#include <pthread.h>
#include <stdio.h>

static void quiet_log(enum ggml_log_level level, const char *text, void *user_data) {
    (void) user_data;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static const char *paths[4];
static uint64_t want_params[2], want_size[2];

static int check(struct llama_model *m, int k, const char *who) {
    if (m == NULL) {
        char msg[512];
        dcgguf_last_error(msg, sizeof msg);
        fprintf(stderr, "%s: load of %s failed: %s\n", who, paths[2 * k], msg);
        return 1;
    }
    if (llama_model_n_params(m) != want_params[k] || llama_model_size(m) != want_size[k]) {
        fprintf(stderr, "%s: %s differs from its original\n", who, paths[2 * k]);
        return 1;
    }
    return 0;
}

static void *worker(void *arg) {
    long id = (long) arg;
    int k = (int) (id % 2);
    struct llama_model_params p = llama_model_default_params();
    struct llama_model *m = dcgguf_llama_model_load(paths[2 * k], p);
    long bad = check(m, k, "thread");
    if (m) llama_model_free(m);
    return (void *) bad;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s a.dc.gguf a.gguf b.dc.gguf b.gguf\n", argv[0]);
        return 2;
    }
    for (int i = 0; i < 4; i++) paths[i] = argv[i + 1];
    llama_log_set(quiet_log, NULL);
    llama_backend_init();
    struct llama_model_params p = llama_model_default_params();
    for (int k = 0; k < 2; k++) {
        struct llama_model *orig = dcgguf_llama_model_load(paths[2 * k + 1], p); /* plain pass-through */
        if (!orig) { fprintf(stderr, "cannot load %s\n", paths[2 * k + 1]); return 1; }
        want_params[k] = llama_model_n_params(orig);
        want_size[k] = llama_model_size(orig);
        llama_model_free(orig);
    }
    /* Two DC models alive at once. */
    struct llama_model *a = dcgguf_llama_model_load(paths[0], p);
    struct llama_model *b = dcgguf_llama_model_load(paths[2], p);
    int bad = check(a, 0, "main") + check(b, 1, "main");
    if (a) llama_model_free(a);
    if (b) llama_model_free(b);
    /* Four concurrent loads. */
    pthread_t t[4];
    for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, (void *) i);
    for (int i = 0; i < 4; i++) {
        void *r = NULL;
        pthread_join(t[i], &r);
        bad += (int) (long) r;
    }
    llama_backend_free();
    printf("multi_load: %s\n", bad ? "FAILED" : "ok");
    return bad ? 1 : 0;
}
