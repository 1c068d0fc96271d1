/*
 * dcgguf.h - C API of libdcgguf: convert GGUF files to and from DC-GGUF (losslessly
 * compressed GGUF), read DC-GGUF files and load them with llama.cpp.
 *
 * Hand-written to match src/ffi; tests/c_header.rs checks every declaration against the Rust
 * exports (names, parameter and return types) and tests/ffi_c_api.rs compiles a C
 * program against it with -Wall -Wextra -Werror and checks each declaration by calling it.
 *
 * Conventions
 *   - Handles are opaque. dcgguf_free accepts NULL.
 *   - Functions that can fail return dcgguf_result (DCGGUF_OK == 0) and write their
 *     out-parameters only on success. NULL for a required pointer gives
 *     DCGGUF_ERR_NULL_POINTER.
 *   - On failure, dcgguf_last_error() returns a message for the calling thread; for corrupt
 *     data it names the tensor and chunk.
 *   - A const handle may be used from several threads at once; dcgguf_set_threads and
 *     dcgguf_free need exclusive use.
 *   - No Rust panic crosses this boundary (it becomes DCGGUF_ERR_PANIC).
 *
 * Link: pkg-config --cflags --libs dcgguf   (libdcgguf.so, or libdcgguf.a plus
 *       -lpthread -ldl -lm for the static library)
 */
#ifndef DCGGUF_H
#define DCGGUF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Result codes. The numbers are ABI: they are never renumbered or reused. */
typedef enum dcgguf_result {
    DCGGUF_OK                      = 0,
    DCGGUF_ERR_NULL_POINTER        = 1,
    DCGGUF_ERR_INVALID_ARGUMENT    = 2,
    DCGGUF_ERR_IO                  = 3,
    DCGGUF_ERR_BAD_GGUF            = 4,
    DCGGUF_ERR_NOT_DC              = 5,
    DCGGUF_ERR_UNSUPPORTED_VERSION = 6,
    DCGGUF_ERR_CORRUPT             = 7,
    DCGGUF_ERR_OUT_OF_RANGE        = 8,
    DCGGUF_ERR_BUFFER_TOO_SMALL    = 9,
    DCGGUF_ERR_NO_SUCH_TENSOR      = 10,
    DCGGUF_ERR_THREADS             = 11,
    DCGGUF_ERR_LLAMA_UNAVAILABLE   = 12,
    DCGGUF_ERR_LLAMA_LOAD_FAILED   = 13,
    DCGGUF_ERR_SPLIT_MODEL         = 14,
    DCGGUF_ERR_PANIC               = 15,
    DCGGUF_ERR_OTHER               = 16,
    DCGGUF_ERR_OUT_OF_MEMORY       = 17,
    DCGGUF_ERR_CANCELLED           = 18,
    DCGGUF_ERR_OUTPUT_REFUSED      = 19
} dcgguf_result;

/* An open DC-GGUF file. */
typedef struct dcgguf_file dcgguf_file;

/* Library version, e.g. "0.1.0" (static string). */
const char *dcgguf_version(void);

/* Copies the calling thread's last error message into buf (len bytes, truncated, always
 * NUL-terminated when len > 0) and returns the message's full length; call with len == 0
 * to size the buffer. Empty if nothing failed yet on this thread. */
size_t dcgguf_last_error(char *buf, size_t len);

/* Generic description of a result code, copied like dcgguf_last_error; its full length goes
 * to *out_n when out_n is not NULL. DCGGUF_ERR_INVALID_ARGUMENT for an unknown code. */
dcgguf_result dcgguf_error_message(int code, char *buf, size_t len, size_t *out_n);

/* Opens a DC-GGUF file; on success *out is a new handle (free with dcgguf_free). */
dcgguf_result dcgguf_open(const char *path, dcgguf_file **out);

/* Closes a handle and frees everything it owns. NULL is ignored. */
void dcgguf_free(dcgguf_file *file);

/* Decode with n threads for this handle (0: one per core, the default). The threads are the
 * handle's own, started by its first read of several chunks (a read of one chunk decodes on
 * the calling thread); they end with dcgguf_free. */
dcgguf_result dcgguf_set_threads(dcgguf_file *file, uint32_t n);

/* Size of the original GGUF file / of the DC-GGUF file, in bytes. */
dcgguf_result dcgguf_original_size(const dcgguf_file *file, uint64_t *out);
dcgguf_result dcgguf_stored_size(const dcgguf_file *file, uint64_t *out);

/* Tensors of the original model, by index 0 .. count-1 (DCGGUF_ERR_NO_SUCH_TENSOR past it). */
dcgguf_result dcgguf_tensor_count(const dcgguf_file *file, size_t *out);
dcgguf_result dcgguf_find_tensor(const dcgguf_file *file, const char *name, size_t *out);
/* *out points to a string owned by the handle, valid until dcgguf_free. */
dcgguf_result dcgguf_tensor_name(const dcgguf_file *file, size_t i, const char **out);
/* ggml type id (enum ggml_type value). */
dcgguf_result dcgguf_tensor_type(const dcgguf_file *file, size_t i, uint32_t *out);
/* Shape in ggml order (dims[0] varies fastest): *n_dims dimensions into dims[0 .. *n_dims).
 * DCGGUF_ERR_BUFFER_TOO_SMALL (nothing written) if cap < the number of dimensions. */
dcgguf_result dcgguf_tensor_shape(const dcgguf_file *file, size_t i, uint64_t *dims,
                                  size_t cap, size_t *n_dims);
/* Bytes of the tensor in the original file / compressed in the DC file. */
dcgguf_result dcgguf_tensor_raw_size(const dcgguf_file *file, size_t i, uint64_t *out);
dcgguf_result dcgguf_tensor_stored_size(const dcgguf_file *file, size_t i, uint64_t *out);

/* Absolute offset of the tensor's data in the original GGUF file. */
dcgguf_result dcgguf_tensor_offset(const dcgguf_file *file, size_t i, uint64_t *out);

/* Decompresses the whole tensor into buf (len >= its raw size; exactly the raw size is
 * written). Chunks are decoded in parallel and their checksums checked. On failure the
 * contents of buf are unspecified. */
dcgguf_result dcgguf_read_tensor(const dcgguf_file *file, size_t i, void *buf, size_t len);

/* Decompresses bytes [offset, offset + len) of tensor i into buf
 * (DCGGUF_ERR_OUT_OF_RANGE if the range is not inside the tensor). */
dcgguf_result dcgguf_read_tensor_range(const dcgguf_file *file, size_t i, uint64_t offset,
                                       void *buf, size_t len);

/* Reads up to len bytes of the ORIGINAL GGUF file at offset; *out_n = bytes read (fewer
 * only at the end of the file). */
dcgguf_result dcgguf_read_at(const dcgguf_file *file, uint64_t offset, void *buf, size_t len,
                             size_t *out_n);

/* ---- Conversions: what the dcgguf command line's subcommands do ------------------------ */

/* Progress of dcgguf_compress / dcgguf_decompress / dcgguf_verify: done of total bytes
 * (total is the input size for compress, the original size for decompress and verify; for
 * a lossy compress it is twice the size of the quantized model, 0 until the input's header
 * is read: done counts the quantized model once as it is written, with a call after each
 * tensor quantized, and once as it is compressed). done grows to total. Called on the calling thread,
 * only during the call, whatever opts->threads is: the work runs on threads of the library's
 * own, which end with the call and wait while the callback runs (counts that came in the
 * meantime are reported together by the next call). Return non-zero to cancel: the call
 * then returns DCGGUF_ERR_CANCELLED and removes what it was writing (for a split model,
 * parts finished before stay). */
typedef int (*dcgguf_progress_fn)(uint64_t done, uint64_t total, void *user);

/* dcgguf_options.quantize */
typedef enum dcgguf_quantize {
    DCGGUF_QUANTIZE_NONE = 0, /* lossless */
    DCGGUF_QUANTIZE_INT8 = 1  /* compression-aware Q8_0 first (compress --quantize int8) */
} dcgguf_quantize;

/* dcgguf_options.level: besides a Zstd level -7..22 (Zstd's own parameters; 19 and up with a
 * shallow search). */
typedef enum dcgguf_level {
    DCGGUF_LEVEL_DEFAULT = 0, /* the default (compress --level default): Zstd's fast strategy
                                 tuned for weight planes, tensors within 0.1% of level 19 at
                                 9-30x its speed */
    DCGGUF_LEVEL_MAX = 100    /* the best ratio (compress --level max): a deep search at
                                 about level 19's speed, 0.02-0.13% smaller than the
                                 default */
} dcgguf_level;

/* Options of the conversions; each reads the fields that apply to it. Fill it with
 * dcgguf_options_init, then change fields. In the first version's fields (up to gptq),
 * float options set to NaN and NULL paths take the CLI's defaults; fields added later are
 * appended at the end, never in between, and zero is their default. The size field makes
 * the struct extensible: a library reading a shorter struct (an older header; on 64-bit
 * targets version 1 has 104 bytes, version 2 128) gives the missing fields their defaults;
 * a longer one (a newer header) is accepted when the fields it does not know are zero, else
 * refused with DCGGUF_ERR_INVALID_ARGUMENT (an option that cannot be honoured is never
 * ignored). Paths are file-system bytes, NUL-terminated. */
typedef struct dcgguf_options {
    uint32_t size;         /* sizeof(dcgguf_options), set by dcgguf_options_init */
    uint32_t threads;      /* worker threads, the call's own; 0: one per core */
    uint32_t force;        /* compress, decompress: non-zero replaces an existing output */
    int32_t level;         /* compress: a dcgguf_level or a Zstd level -7..22 (default
                              DCGGUF_LEVEL_DEFAULT) */
    uint64_t chunk_size;   /* compress: raw bytes per chunk, 1..64 MiB (default 1 MiB) */
    uint32_t quantize;     /* compress: a dcgguf_quantize; the fields below need INT8 */
    uint32_t per_row;      /* non-zero: one step per row (--per-row); 0: the default (on for qwen2 with GPTQ) */
    uint32_t permute;      /* non-zero: reorder FFN channels by activation RMS (--permute) */
    float step;            /* --step (0: llama.cpp's own Q8_0 rounding) */
    float embd_step;       /* --embd-step */
    float alpha;           /* --alpha */
    float fold_alpha;      /* --fold-alpha */
    float tensor_alpha;    /* --tensor-alpha */
    float block_adapt;     /* --block-adapt */
    float prune;           /* --prune, in [0, 1) */
    float rdo;             /* --rdo */
    uint32_t reserved;     /* must be 0 */
    double gptq_damp;      /* --gptq-damp (needs gptq or calib) */
    const char *imatrix;   /* --imatrix FILE (not with calib) */
    const char *calib;     /* --calib=TEXT: calibrate through llama.cpp, then GPTQ */
    const char *gptq;      /* --gptq COVFILE */
    /* Version 2: the load-time cost model (compress; profile and storage_bps also
     * dcgguf_inspect_json_opts). With any of the three set, a machine profile is used: a
     * missing or stale one (other machine or dcgguf version) is measured first, which takes
     * seconds and writes a temporary file (128 MiB) next to the profile, then saves it. */
    const char *profile;   /* --profile: "auto" ($DCGGUF_CACHE/profile.json, else
                              ~/.cache/dcgguf/profile.json) or a profile JSON path; NULL:
                              none */
    double storage_bps;    /* --storage-bps: plan for storage of this many bytes/s instead of
                              the measured; implies profile "auto". 0: not set; negative, NaN
                              or infinite: DCGGUF_ERR_INVALID_ARGUMENT */
    uint64_t target_size;  /* --target-size: largest output in bytes (each file of a split
                              model); tensors the model would store raw are compressed, least
                              load time per byte saved first, until it fits; implies profile
                              "auto". 0: none. When even compressing every tensor does not fit:
                              DCGGUF_ERR_INVALID_ARGUMENT ("the smallest this file compresses
                              to is N bytes"), and no output */
} dcgguf_options;

/* Fills the caller's struct of size bytes with the defaults (those of the CLI) and
 * opts->size = size: the fields this library knows, zeros after them. size must be a
 * version's size (sizeof of some header's dcgguf_options), else DCGGUF_ERR_INVALID_ARGUMENT.
 * Call it through the macro dcgguf_options_init(opts), which passes sizeof *opts. */
dcgguf_result dcgguf_options_init_size(dcgguf_options *opts, size_t size);

/* The first header's initializer, kept for programs built against it: fills only the
 * version-1 fields (104 bytes on 64-bit targets) and sets size to that. Source code calling
 * dcgguf_options_init(opts) gets the macro below instead, so that a library with a longer
 * struct never writes past the caller's. */
dcgguf_result dcgguf_options_init(dcgguf_options *opts);
#define dcgguf_options_init(opts) dcgguf_options_init_size((opts), sizeof *(opts))

/* GGUF -> DC-GGUF (opts NULL: defaults). Part 1 of a split model (NAME-00001-of-0000N.gguf)
 * compresses every part into its own DC file; all outputs are checked before any is
 * written. The output appears only when complete (written to a temporary file, then
 * renamed); an existing output is refused with DCGGUF_ERR_OUTPUT_REFUSED unless
 * opts->force. progress may be NULL. */
dcgguf_result dcgguf_compress(const char *input, const char *output,
                              const dcgguf_options *opts, dcgguf_progress_fn progress,
                              void *user);

/* DC-GGUF -> the original GGUF, bit for bit (a lossy DC file: the quantized GGUF), with
 * every chunk and the whole-file checksum checked; split models as dcgguf_compress. */
dcgguf_result dcgguf_decompress(const char *input, const char *output,
                                const dcgguf_options *opts, dcgguf_progress_fn progress,
                                void *user);

/* Decodes the whole DC-GGUF file and checks every checksum; with against (may be NULL) also
 * compares the decoded bytes with that file (a difference: DCGGUF_ERR_CORRUPT). */
dcgguf_result dcgguf_verify(const char *input, const char *against,
                            const dcgguf_options *opts, dcgguf_progress_fn progress,
                            void *user);

/* The report of the calling thread's last dcgguf_compress / dcgguf_decompress /
 * dcgguf_verify, copied like the JSON getters below: what `dcgguf <command> --json` prints.
 *   compress:   {"command": "compress", "files": [{input, output, original_bytes,
 *               output_bytes, tensors, chunks, ratio, seconds}, ...]} (one per part of a split
 *               model); a lossy compress adds "quantize": {quantized_tensors, kept_tensors,
 *               folded_tensors, rel_mse, output_bytes} (original_bytes is then the size of the
 *               quantized GGUF the file decompresses to).
 *   decompress: {"command": "decompress", "files": [{input, output, bytes}, ...]}
 *   verify:     {"command": "verify", "file", "ok": true, "original_bytes", "against"}
 * Empty ("", *out_n == 0) when that call failed or none was made on this thread. Kept per
 * thread, like dcgguf_last_error, rather than returned through an out-parameter: its size is
 * known only once the conversion is done, and a caller-sized buffer would mean running the
 * conversion again to size it. */
dcgguf_result dcgguf_last_report_json(char *buf, size_t len, size_t *out_n);

/* JSON text, copied like dcgguf_last_error (truncated, NUL-terminated when len > 0) with its
 * full length in *out_n (required): call with len == 0 to size the buffer.
 *   dcgguf_inspect_json: what `dcgguf inspect --json` prints, less "command" and "file":
 *     format_version, original_bytes, file_bytes, ratio, tensor_raw_bytes,
 *     tensor_stored_bytes, entropy_bound_bytes and "tensors": [{name, ggml_type, shape,
 *     raw_bytes, stored_bytes, ratio, transform, chunks, raw_chunks, entropy_bound_bytes}].
 *   dcgguf_metadata_json: the original file's metadata in file order,
 *     [{"key", "type", "value"}] ("type" as gguf.cpp names it: "u32", "str", "arr", ...;
 *     arrays add "elem_type"). Integers are exact, floats are the stored value widened to
 *     double (NaN and infinities: null), strings are decoded as UTF-8 (invalid bytes become
 *     U+FFFD). */
dcgguf_result dcgguf_inspect_json(const dcgguf_file *file, char *buf, size_t len,
                                  size_t *out_n);
/* dcgguf_inspect_json plus, when opts (may be NULL) sets profile or storage_bps, what
 * `dcgguf inspect --profile ... --storage-bps ... --json` adds: "predicted_load_seconds" (one
 * per tensor, in "tensors" order), "predicted_total_load_seconds" and "storage_bps" (the
 * bandwidth planned for). Reads opts->threads too (a profile measured now uses them); the
 * profile may be measured by the first call (see dcgguf_options). */
dcgguf_result dcgguf_inspect_json_opts(const dcgguf_file *file, const dcgguf_options *opts,
                                       char *buf, size_t len, size_t *out_n);
dcgguf_result dcgguf_metadata_json(const dcgguf_file *file, char *buf, size_t len,
                                   size_t *out_n);

/* Name of a ggml type id ("F32", "Q8_0", ...; a static string). DCGGUF_ERR_INVALID_ARGUMENT
 * for an id that is not a type. */
dcgguf_result dcgguf_type_name(uint32_t type, const char **out);

/* DCGGUF_OK if this process has a llama.cpp with the ABI libdcgguf was built for
 * (llama.cpp 0c1e57098, as in llama-cpp-python 0.3.36); else DCGGUF_ERR_LLAMA_UNAVAILABLE
 * with the reason in dcgguf_last_error. */
dcgguf_result dcgguf_llama_check(void);

/* Memory budget for DC-GGUF models loaded after this call (overrides DCGGUF_MEM_BUDGET):
 * "60%" of the decoded weight bytes or a byte count ("512M"), optionally followed by ",file"
 * (compressed bytes re-read from the page cache) or ",ram" (kept mapped, the default) and
 * ",prefetch" or ",noprefetch" (a thread decoding the next layer; by default it runs only when
 * the context computes on fewer threads than there are CPUs). Streamed weights are decoded
 * just before llama.cpp computes with them and released after. The budget needs the process
 * to run under LD_PRELOAD=libdcgguf_preload.so (whose fread tells dcgguf where llama.cpp puts
 * each tensor); without it a DC-GGUF loads fully, with the warning "loading without a memory
 * budget" on stderr. NULL or "0" turns the budget off. DCGGUF_ERR_INVALID_ARGUMENT for a
 * malformed spec. DCGGUF_MEM_BUDGET takes the same spec. */
dcgguf_result dcgguf_set_memory_budget(const char *spec);

#ifdef LLAMA_H
/* Include llama.h before this header to get these.
 *
 * Loads a GGUF or DC-GGUF model with the llama.cpp in this process (which libdcgguf finds at
 * run time; it contains no copy of llama.cpp). A DC-GGUF is decompressed as llama.cpp reads
 * it (non-mmap load; a few chunks of extra memory); a plain GGUF goes to
 * llama_model_load_from_file unchanged. Under a memory limit (a cgroup's, else MemAvailable)
 * that the decoded model does not fit in, a program without the preload library gets the
 * decoded GGUF written to an unnamed file first, which llama.cpp maps as a plain GGUF.
 * Returns NULL on failure, with the reason on stderr and in dcgguf_last_error. Free the model
 * with dcgguf_llama_model_free (llama_model_free leaves dcgguf's state for it, a moved-weights
 * file included, until another model loads at its address). Split DC-GGUF models are
 * refused with instructions to merge them. With the environment variable
 * DCGGUF_LOAD_ROUTE=user a DC-GGUF goes through llama.cpp's llama_model_init_from_user
 * instead of a FILE* stream (same outputs; see README "Load routes"). */
struct llama_model *dcgguf_llama_model_load(const char *path, struct llama_model_params params);

/* llama_init_from_model, with dcgguf's graph callback (chained with params.cb_eval) for a
 * model loaded under a memory budget or while DCGGUF_ACT_MAX_OUT records activations; other
 * contexts are created by llama_init_from_model unchanged. In a program without the preload
 * library, a DC model loaded under a memory limit is checked once the context is created:
 * where what the context wrote and reserved would not fit under the limit, part of the
 * model's decoded weights moves to a file (evictable pages, as a mapped GGUF's). Free the
 * context with dcgguf_llama_free. NULL on failure. */
struct llama_context *dcgguf_llama_init_from_model(struct llama_model *model,
                                                   struct llama_context_params params);

/* llama_free(ctx), then frees dcgguf's state for the context (if any). */
void dcgguf_llama_free(struct llama_context *ctx);

/* Stops and frees the model's memory-budget state (if any), then llama_model_free(model). */
void dcgguf_llama_model_free(struct llama_model *model);

/* libdcgguf exports only the dcgguf_* functions above: linking it changes nothing else in
 * the program (its fread and llama.cpp stay its own). Unmodified llama.cpp tools load
 * .dc.gguf files with LD_PRELOAD=libdcgguf_preload.so, a separate library that interposes
 * llama_model_load_from_file (same behaviour as dcgguf_llama_model_load),
 * llama_init_from_model, llama_new_context_with_model, llama_free and llama_model_free (as
 * the dcgguf_llama_* functions above) and fread (reads of dcgguf's own streams go straight
 * into the caller's memory; every other stream is untouched). It also exports this C API;
 * under that preload a program's dcgguf_* calls go to the preload library's copy. */
#endif

#ifdef __cplusplus
}
#endif

#endif /* DCGGUF_H */
