//! The memory budget in a process without the budget hooks: a program linking libdcgguf
//! (`dcgguf_llama_model_load`, `dcgguf_llama_init_from_model`) or llama-cpp-python through
//! `import dcgguf.llama_cpp`, where no `posix_memalign`, `llama_decode` or buffer clear is
//! interposed (that takes the preload library, `LD_PRELOAD`).
//!
//! There the default's decision at the load ([`super::limit`]) guessed the context's needs,
//! and no batch could be checked. llama-cpp-python on SmolLM2 Q4_1 with a 1024-token context
//! under a 165 MiB cap (its plain mmap run's peak uncapped: 240 MiB) was killed after minutes
//! in reclaim, where plain mmap generated 5-7 tokens/s: the load found room for the decoded
//! weights, then the context wrote a 22.5 MiB KV cache and its first batch part of a 98 MiB
//! compute buffer, all anonymous memory the limit cannot reclaim.
//!
//! So a context's creation is checked instead, in dcgguf's context wrapper (which the Python
//! module installs): before it, the KV cache it will clear, estimated from the model's
//! metadata ([`kv_cache_bytes`], [`super::refit::creating_context_without_hooks`]); after
//! it, what it wrote and reserved, read from this process's anonymous memory before and
//! after ([`creating_context`], [`super::refit::context_created_without_hooks`]); weights
//! move to a file where these would not fit. And the moved pages' room, measured after
//! batches in a hooked process ([`super::refit::after_compute`]), is measured by a thread
//! here, every
//! [`super::refit::MEASURE_EVERY_MS`] while some model's weights are moved
//! ([`measure_moved_pages`]).
//!
//! Where the decoded model does not fit at all, the load could not move weights to a file as
//! it goes (the stream does not learn where a tensor lands without the preload's `fread`), so
//! the decoded model goes to an unnamed file first, which llama.cpp maps as a plain GGUF
//! ([`write_decoded`]). "At all" counts what llama.cpp writes during the load besides the
//! weights, its vocabulary above all ([`load_memory_bytes`]), which nothing checks here.
//!
//! Not checked here: a batch that grows a buffer beyond what its context reserved
//! (llama-embedding's output buffer for a batch of outputs), which the preload's checks see.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use super::refit;
use super::spill::{self, SpillError};
use crate::dc::{DcError, DcFile};
use crate::gguf::{GgmlType, GgufHeader};
use crate::io::{AnonymousMemory, anonymous_memory};
use crate::llama::sys;

/// Runs `f` (a context's creation) and returns it with the anonymous memory this process
/// wrote meanwhile and what more it reserved without writing it (both 0 where
/// /proc/self/status cannot be read). Another thread allocating meanwhile counts too: a
/// host creating a context while it allocates elsewhere is told a little less room.
pub fn creating_context<T>(f: impl FnOnce() -> T) -> (T, u64, u64) {
    let before = anonymous_memory();
    let r = f();
    let after = anonymous_memory();
    let (written, unwritten) = match (before, after) {
        (Some(b), Some(a)) => grown(b, a),
        _ => (0, 0),
    };
    (r, written, unwritten)
}

/// What grew from `before` to `after`: pages written, and address space reserved beyond
/// them.
fn grown(before: AnonymousMemory, after: AnonymousMemory) -> (u64, u64) {
    let written = after.resident.saturating_sub(before.resident);
    let reserved = after.reserved.saturating_sub(before.reserved);
    (written, reserved.saturating_sub(written))
}

/// The KV cache that a context of the model whose GGUF header is `h`, created with
/// `params`, writes at its creation (llama.cpp clears it): for each layer, a key and a value
/// of `type_k` and `type_v` per cell, `n_ctx` cells (the model's training context where 0),
/// from the model's metadata (heads of the keys and values, their width where given, else
/// the embedding's share of a head). 0 for a model without one (`attention.causal` false: an
/// encoder such as BERT) or where the metadata lacks a field. An upper bound where layers
/// attend to a sliding window or share caches.
pub fn kv_cache_bytes(h: &GgufHeader, params: &sys::llama_context_params) -> u64 {
    let Some(arch) = h.get("general.architecture").and_then(|v| v.as_str()) else {
        return 0;
    };
    let field = |key: &str| h.get(&format!("{arch}.{key}"));
    let number = |key: &str| field(key).and_then(|v| v.as_u64());
    if field("attention.causal").and_then(|v| v.as_bool()) == Some(false) {
        return 0;
    }
    let (Some(layers), Some(embd), Some(heads)) = (
        number("block_count"),
        number("embedding_length"),
        number("attention.head_count").filter(|&n| n > 0),
    ) else {
        return 0;
    };
    let heads_kv = number("attention.head_count_kv").unwrap_or(heads);
    let key = number("attention.key_length").unwrap_or(embd / heads) * heads_kv;
    let value = number("attention.value_length").unwrap_or(embd / heads) * heads_kv;
    let cells = match params.n_ctx {
        0 => number("context_length").unwrap_or(0),
        n => u64::from(n),
    };
    // Bytes of `values` values of a ggml type: F16 where the type is unknown.
    let bytes = |ty: sys::ggml_type, values: u64| {
        GgmlType::from_id(ty)
            .and_then(|t| t.nbytes(values))
            .unwrap_or(values.saturating_mul(2))
    };
    layers.saturating_mul(
        bytes(params.type_k, key.saturating_mul(cells))
            .saturating_add(bytes(params.type_v, value.saturating_mul(cells))),
    )
}

/// The anonymous memory llama.cpp's load writes besides the weights, for the model whose
/// GGUF header is `h`: mostly its vocabulary (a string and map entries per token, a map
/// entry per merge), which a process without the budget hooks holds before any check of
/// ours can move weights ([`super::super::short_without_hooks`]). Fitted to what
/// llama-cpp-python 0.3.36's `llama_model_load_from_file` wrote on plain files (RssAnon
/// before and after, repacking off, 2026-12-07): all-MiniLM-L6-v2 (30522 tokens, no merges)
/// 4.5 MiB, SmolLM2-135M (49152 tokens, 48900 merges) 16.5 MiB, Qwen2.5-Coder-1.5B (151936
/// tokens, 151387 merges) 46.6 MiB; this gives 4.7, 17.0 and 47.9.
pub fn load_memory_bytes(h: &GgufHeader) -> u64 {
    const FIXED: u64 = 9 << 18;
    const PER_TOKEN: u64 = 84;
    const PER_MERGE: u64 = 232;
    let count = |key: &str| h.array_len(key).unwrap_or(0);
    FIXED
        .saturating_add(count("tokenizer.ggml.tokens").saturating_mul(PER_TOKEN))
        .saturating_add(count("tokenizer.ggml.merges").saturating_mul(PER_MERGE))
}

/// Tokens of the largest micro-batch a context created with `params` computes: llama.cpp's
/// `n_ubatch`, at most `n_batch` (512 where both are 0).
pub fn micro_batch(params: &sys::llama_context_params) -> u64 {
    let batch = match params.n_batch {
        0 => 512,
        n => n,
    };
    u64::from(match params.n_ubatch {
        0 => batch,
        n => n.min(batch),
    })
}

/// Why the decoded model could not be written to a file ([`write_decoded`]).
#[derive(Debug, thiserror::Error)]
pub enum DecodedFileError {
    #[error(transparent)]
    NoFile(#[from] SpillError),
    #[error(transparent)]
    Decode(#[from] DcError),
}

/// Bytes decoded, written and written back at a time by [`write_decoded`]: what the limit
/// is charged for at once beyond the clean pages it may reclaim.
const WRITTEN_AT_ONCE: usize = 8 << 20;

/// Writes the original GGUF that `dc` holds (every chunk and the whole file checked as it
/// is decoded) to an unnamed file in the first of `dirs` on a disk with room, each
/// [`WRITTEN_AT_ONCE`] written back to the disk before the next is decoded; returns the
/// file and its directory. For a load that does not fit under the limit in a process
/// without the budget hooks: there, the stream cannot learn where llama.cpp puts each
/// tensor (glibc's cookie streams read through their own buffer, and only the preload's
/// `fread` sees the caller's), so no weight could move to a file as the load goes, and the
/// decoded weights would all be anonymous memory at its end. llama.cpp maps this file as it
/// maps a plain GGUF: pages the limit reclaims and the disk gives back. llama-cpp-python on
/// SmolLM2 with a 1024-token context was killed in the load under a 140 MiB cap that plain
/// mmap ran in (session 68).
pub fn write_decoded(dc: &DcFile, dirs: &[PathBuf]) -> Result<(File, PathBuf), DecodedFileError> {
    let (file, dir) = spill::unnamed_file(dc.original_size(), dirs)?;
    let io = |source| DcError::Io {
        path: dir.clone(),
        source,
    };
    dc.for_each_block(WRITTEN_AT_ONCE, &|_| {}, |at, bytes| {
        file.write_all_at(bytes, at).map_err(io)?;
        spill::write_back(&file, at, bytes.len() as u64).map_err(io)
    })?;
    Ok((file, dir))
}

/// Whether the thread of [`measure_moved_pages`] runs.
static MEASURING: Mutex<bool> = Mutex::new(false);

/// Some model's weights moved to a file: unless it runs already, starts a thread that
/// measures the moved pages' room every [`refit::MEASURE_EVERY_MS`] and sets the part of them
/// kept in memory ([`refit::measure_room_of_moved`]), until no model with moved weights is
/// left (freed through `dcgguf_llama_model_free`). Measured during batches, not after them:
/// nothing here knows where one ends.
pub fn measure_moved_pages() {
    let mut measuring = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    if *measuring {
        return;
    }
    let started = std::thread::Builder::new()
        .name("dcgguf-moved".into())
        .spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(refit::MEASURE_EVERY_MS));
                {
                    // Under the lock: a model whose weights move after this finds the
                    // flag down and starts the thread again.
                    let mut measuring = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
                    if !refit::moved_pages_to_measure() {
                        *measuring = false;
                        return;
                    }
                }
                let _ = std::panic::catch_unwind(|| {
                    refit::measure_room_of_moved("measured while the program runs")
                });
            }
        });
    match started {
        Ok(_) => *measuring = true,
        Err(e) => crate::log_line!(
            "dcgguf: warning: no thread to measure the room of the weights moved to a file \
             ({e}); every moved page is read in order"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{KeyValue, Value};

    fn header(kvs: Vec<KeyValue>) -> GgufHeader {
        GgufHeader {
            version: 3,
            kvs,
            tensors: Vec::new(),
            alignment: 32,
            kv_end: 0,
            infos_end: 0,
            data_offset: 0,
            skipped_arrays: Vec::new(),
        }
    }

    fn params(n_ctx: u32, type_k: u32, type_v: u32) -> sys::llama_context_params {
        // SAFETY: llama_context_params is a plain C struct of numbers, bools and nullable
        // pointers, for which all-zero is a valid value.
        let mut p: sys::llama_context_params = unsafe { std::mem::zeroed() };
        p.n_ctx = n_ctx;
        p.type_k = type_k;
        p.type_v = type_v;
        p
    }

    #[test]
    fn the_kv_cache_is_estimated_from_the_models_attention_and_the_context() {
        const F16: u32 = 1;
        const Q8_0: u32 = 8;
        // SmolLM2-135M: 30 layers, 576 wide, 9 heads, 3 of them for keys and values.
        let smollm2 = header(vec![
            KeyValue::new("general.architecture", Value::string("llama")),
            KeyValue::new("llama.block_count", Value::u32(30)),
            KeyValue::new("llama.embedding_length", Value::u32(576)),
            KeyValue::new("llama.attention.head_count", Value::u32(9)),
            KeyValue::new("llama.attention.head_count_kv", Value::u32(3)),
            KeyValue::new("llama.context_length", Value::u32(8192)),
        ]);
        // llama.cpp said "CPU KV buffer size = 22.50 MiB" for -c 1024.
        assert_eq!(kv_cache_bytes(&smollm2, &params(1024, F16, F16)), 45 << 19);
        // n_ctx 0: the training context.
        assert_eq!(kv_cache_bytes(&smollm2, &params(0, F16, F16)), 180 << 20);
        // Q8_0 keys: 34 bytes a block of 32 values.
        let q8_keys = 30 * (1024 * 192 / 32 * 34 + 1024 * 192 * 2);
        assert_eq!(kv_cache_bytes(&smollm2, &params(1024, Q8_0, F16)), q8_keys);
        // An encoder keeps no cache; a header without the attention's shape tells nothing.
        let bert = header(vec![
            KeyValue::new("general.architecture", Value::string("bert")),
            KeyValue::new("bert.block_count", Value::u32(6)),
            KeyValue::new("bert.embedding_length", Value::u32(384)),
            KeyValue::new("bert.attention.head_count", Value::u32(12)),
            KeyValue::new("bert.attention.causal", Value::bool(false)),
        ]);
        assert_eq!(kv_cache_bytes(&bert, &params(512, F16, F16)), 0);
        assert_eq!(
            kv_cache_bytes(&header(Vec::new()), &params(512, F16, F16)),
            0
        );
    }

    #[test]
    fn llama_cpps_load_memory_is_estimated_from_the_vocabulary() {
        let with = |tokens: u64, merges: u64| {
            let mut h = header(Vec::new());
            h.skipped_arrays = vec![
                (b"tokenizer.ggml.tokens".to_vec(), tokens),
                (b"tokenizer.ggml.token_type".to_vec(), tokens),
                (b"tokenizer.ggml.merges".to_vec(), merges),
            ];
            load_memory_bytes(&h) as f64 / f64::from(1 << 20)
        };
        // What llama.cpp wrote in those loads, in MiB; the estimate covers it, by at most
        // 1.5 MiB.
        for (tokens, merges, measured) in [
            (30522, 0, 4.5),
            (49152, 48900, 16.5),
            (151936, 151387, 46.6),
        ] {
            let estimate = with(tokens, merges);
            assert!(
                (measured..measured + 1.5).contains(&estimate),
                "{tokens} tokens, {merges} merges: {estimate:.1} MiB against {measured}"
            );
        }
        // Without a vocabulary, what a load writes anyway.
        assert_eq!(load_memory_bytes(&header(Vec::new())), 9 << 18);
    }

    #[test]
    fn the_decoded_model_written_to_a_file_is_the_original_gguf() {
        use crate::dc::test_files::{incompressible, small_dc};
        use std::io::Read;
        let tensors = [
            ("a".into(), vec![6000], GgmlType::F32, incompressible(24000)),
            ("b".into(), vec![3000], GgmlType::F32, vec![3u8; 12000]),
        ];
        let (original, dir, _, dc) = small_dc("decoded-file", &tensors, 4096);
        let (mut file, at) = write_decoded(&dc, std::slice::from_ref(&dir)).unwrap();
        assert_eq!(at, dir);
        let mut back = Vec::new();
        file.read_to_end(&mut back).unwrap();
        assert!(
            back == original,
            "{} bytes against {}",
            back.len(),
            original.len()
        );
        // The file has no name: the directory holds only what small_dc wrote.
        let names = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(names, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_context_writes_what_its_resident_memory_grew_and_reserves_the_rest() {
        let name = "llama::budget::unhooked::tests::\
                    a_context_writes_what_its_resident_memory_grew_and_reserves_the_rest";
        if !crate::io::alone_in_a_child(name) {
            return;
        }
        let m = |resident: u64, reserved: u64| AnonymousMemory { resident, reserved };
        // A 22 MiB KV cache cleared and a 98 MiB compute buffer reserved.
        assert_eq!(
            grown(m(10 << 20, 50 << 20), m(32 << 20, 170 << 20)),
            (22 << 20, 98 << 20)
        );
        // Memory given back meanwhile counts as nothing grown, never as a negative.
        assert_eq!(
            grown(m(40 << 20, 200 << 20), m(30 << 20, 150 << 20)),
            (0, 0)
        );
        let (v, written, unwritten) = creating_context(|| {
            let mut anon = memmap2::MmapMut::map_anon(48 << 20).unwrap();
            anon[..8 << 20].fill(1);
            anon
        });
        assert_eq!(v.len(), 48 << 20);
        // The test harness's own allocations.
        let near = |got: u64, want: u64| got.abs_diff(want) < 4 << 20;
        assert!(near(written, 8 << 20), "{written}");
        assert!(near(unwritten, 40 << 20), "{unwritten}");
    }
}
