/*
 * api_test.c - exercises every declaration of dcgguf.h (built with -Wall -Wextra -Werror by
 * tests/ffi_c_api.rs). Usage: api_test model.dc.gguf original.gguf corrupt.dc.gguf
 * Exits 0 when all checks pass; prints the failing check otherwise.
 */
#include <dcgguf.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s model.dc.gguf original.gguf corrupt.dc.gguf\n", argv[0]);
        return 2;
    }
    size_t orig_len = 0;
    unsigned char *orig = slurp(argv[2], &orig_len);
    CHECK(orig != NULL);
    if (!orig) return 1;

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
