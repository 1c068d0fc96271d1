/*
 * heap_at_rest.c - a C host of libdcgguf for tests/llama_c_example.rs: loads a model through
 * the C API (dcgguf_llama_model_load: a .dc.gguf through dcgguf, a .gguf straight to
 * llama.cpp's mmap load), creates a context, decodes a prompt and generates 8 tokens, then
 * prints the resident KiB of its heap ("[heap]" in /proc/self/smaps) at that point, at rest,
 * the number of its threads then ("Threads:" in /proc/self/status), and the generated token
 * ids.
 *
 *   ./heap_at_rest model.(dc.)gguf
 */
#include <llama.h>
#include <dcgguf.h>

#include "proc_status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void quiet_log(enum ggml_log_level level, const char *text, void *user_data) {
    (void) user_data;
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

/* The Rss of the [heap] mapping, KiB; -1 if there is none. */
static long heap_rss_kib(void) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (f == NULL) {
        return -1;
    }
    char line[512];
    int in_heap = 0;
    long kib = -1;
    while (fgets(line, sizeof line, f) != NULL) {
        size_t n = strlen(line);
        if (n > 7 && strcmp(line + n - 7, "[heap]\n") == 0) {
            in_heap = 1;
        } else if (in_heap && sscanf(line, "Rss: %ld kB", &kib) == 1) {
            break;
        }
    }
    fclose(f);
    return kib;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s model.(dc.)gguf\n", argv[0]);
        return 2;
    }
    llama_log_set(quiet_log, NULL);
    llama_backend_init();
    struct llama_model *model = dcgguf_llama_model_load(argv[1], llama_model_default_params());
    if (model == NULL) {
        char msg[512];
        dcgguf_last_error(msg, sizeof msg);
        fprintf(stderr, "heap_at_rest: cannot load %s: %s\n", argv[1], msg);
        return 1;
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    const char *prompt = "You are a terse assistant. The capital of France is";
    llama_token tokens[64];
    int n_prompt = llama_tokenize(vocab, prompt, (int32_t) strlen(prompt), tokens, 64, true, true);
    if (n_prompt < 0) {
        fprintf(stderr, "heap_at_rest: cannot tokenize\n");
        return 1;
    }
    struct llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = 256;
    cparams.n_threads = 2;
    cparams.n_threads_batch = 2;
    struct llama_context *ctx = dcgguf_llama_init_from_model(model, cparams);
    if (ctx == NULL) {
        fprintf(stderr, "heap_at_rest: cannot create a context\n");
        return 1;
    }
    struct llama_sampler *smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(smpl, llama_sampler_init_greedy());
    struct llama_batch batch = llama_batch_get_one(tokens, n_prompt);
    llama_token next;
    printf("tokens");
    for (int n = 0; n < 8; n++) {
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "heap_at_rest: decode failed\n");
            return 1;
        }
        next = llama_sampler_sample(smpl, ctx, -1);
        printf(" %d", (int) next);
        batch = llama_batch_get_one(&next, 1);
    }
    printf("\nheap_rss_kib %ld\n", heap_rss_kib());
    printf("threads %ld\n", thread_count());
    llama_sampler_free(smpl);
    dcgguf_llama_free(ctx);
    dcgguf_llama_model_free(model);
    llama_backend_free();
    return 0;
}
