/*
 * generate.c - load a .dc.gguf (or .gguf) with llama.cpp through libdcgguf and generate text
 * greedily.
 *
 *   cc generate.c $(pkg-config --cflags --libs dcgguf llama) -o generate
 *   ./generate model.dc.gguf [n_predict] [prompt...]
 *
 * Linking libdcgguf is enough to load .dc.gguf files. For a memory budget also preload the
 * interposers:  DCGGUF_MEM_BUDGET=60% LD_PRELOAD=libdcgguf_preload.so ./generate ...
 *
 * Prints the prompt and the generated text to stdout, diagnostics to stderr.
 */
#include <llama.h>
#include <dcgguf.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void quiet_log(enum ggml_log_level level, const char *text, void *user_data) {
    (void) user_data;
    if (level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s model.dc.gguf [n_predict] [prompt...]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    int n_predict = argc > 2 ? atoi(argv[2]) : 32;
    char prompt[4096] = "The capital of France is";
    if (argc > 3) {
        prompt[0] = '\0';
        for (int i = 3; i < argc; i++) {
            if (i > 3) {
                strncat(prompt, " ", sizeof(prompt) - strlen(prompt) - 1);
            }
            strncat(prompt, argv[i], sizeof(prompt) - strlen(prompt) - 1);
        }
    }

    llama_log_set(quiet_log, NULL);
    llama_backend_init();
    if (dcgguf_llama_check() != DCGGUF_OK) {
        char msg[512];
        dcgguf_last_error(msg, sizeof msg);
        fprintf(stderr, "generate: %s\n", msg);
        return 1;
    }

    struct llama_model_params mparams = llama_model_default_params();
    struct llama_model *model = dcgguf_llama_model_load(path, mparams);
    if (model == NULL) {
        char msg[512];
        dcgguf_last_error(msg, sizeof msg);
        fprintf(stderr, "generate: cannot load %s: %s\n", path, msg);
        return 1;
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);

    int n_prompt = -llama_tokenize(vocab, prompt, (int32_t) strlen(prompt), NULL, 0, true, true);
    llama_token *tokens = malloc(sizeof(llama_token) * (size_t) (n_prompt + 1));
    if (tokens == NULL ||
        llama_tokenize(vocab, prompt, (int32_t) strlen(prompt), tokens, n_prompt, true, true) < 0) {
        fprintf(stderr, "generate: cannot tokenize the prompt\n");
        return 1;
    }

    struct llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = (uint32_t) (n_prompt + n_predict + 8);
    cparams.n_batch = (uint32_t) n_prompt;
    cparams.n_threads = 2;
    cparams.n_threads_batch = 2;
    /* The dcgguf_llama_* wrappers add dcgguf's graph callback when the model was loaded under
     * a memory budget (DCGGUF_MEM_BUDGET, or dcgguf_set_memory_budget, with the program run
     * under LD_PRELOAD=libdcgguf_preload.so); otherwise they are llama.cpp's own calls. */
    struct llama_context *ctx = dcgguf_llama_init_from_model(model, cparams);
    if (ctx == NULL) {
        fprintf(stderr, "generate: cannot create a context\n");
        return 1;
    }
    struct llama_sampler *smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(smpl, llama_sampler_init_greedy());

    fputs(prompt, stdout);
    struct llama_batch batch = llama_batch_get_one(tokens, n_prompt);
    llama_token next;
    for (int n = 0; n < n_predict; n++) {
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "generate: decode failed\n");
            return 1;
        }
        next = llama_sampler_sample(smpl, ctx, -1);
        if (llama_vocab_is_eog(vocab, next)) {
            break;
        }
        char piece[256];
        int len = llama_token_to_piece(vocab, next, piece, sizeof piece, 0, true);
        if (len < 0) {
            fprintf(stderr, "generate: cannot detokenize\n");
            return 1;
        }
        fwrite(piece, 1, (size_t) len, stdout);
        fflush(stdout);
        batch = llama_batch_get_one(&next, 1);
    }
    fputc('\n', stdout);

    llama_sampler_free(smpl);
    dcgguf_llama_free(ctx);
    dcgguf_llama_model_free(model);
    free(tokens);
    llama_backend_free();
    return 0;
}
