//! libdcgguf_preload.so gives its own file pages back after a model load: the dynamic loader
//! reads the whole library into the page cache, which a memory cgroup charges, and after the
//! load only a small part of it runs (real llama.cpp, see tests/llama_support). In a test
//! binary of its own: no other llama.cpp process of this binary maps the library meanwhile,
//! which would keep its pages cached.

mod llama_support;

use std::process::Command;

use llama_support::*;

/// `(after the load, after giving back)` KiB from the preload's log lines.
fn page_cache_lines(stderr: &str) -> Vec<(u64, u64)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.split("libdcgguf_preload.so: ").nth(1)?;
            let (before, rest) = rest.split_once(" KiB in the page cache after the load, ")?;
            let (after, _) = rest.split_once(" KiB after giving back")?;
            Some((before.parse().ok()?, after.parse().ok()?))
        })
        .collect()
}

#[test]
fn parses_the_log_line() {
    let line = "dcgguf: /x/libdcgguf_preload.so: 2996 KiB in the page cache after the load, \
                512 KiB after giving back what no process maps";
    assert_eq!(page_cache_lines(line), vec![(2996, 512)]);
    assert!(page_cache_lines("dcgguf: loaded").is_empty());
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn the_preload_library_gives_back_its_pages_after_a_load() {
    let t = "the_preload_library_gives_back_its_pages_after_a_load";
    let (l, m) = (
        require_llama(t),
        require_shared_model(t, "all-MiniLM-L6-v2-f16.gguf"),
    );
    let dc = dc_of(&m);
    let plain = sentence_embedding(
        Command::new(l.bin("llama-embedding")).env("LD_PRELOAD", preload(&l, false)),
        &m,
    )
    .0;
    let (v, o) = sentence_embedding(
        Command::new(l.bin("llama-embedding"))
            .env("LD_PRELOAD", preload(&l, true))
            .env("DCGGUF_VERBOSE", "1"),
        &dc,
    );
    assert_eq!(v, plain, "the DC embedding differs from the original's");
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines = page_cache_lines(&stderr);
    assert!(!lines.is_empty(), "no page cache report in:\n{stderr}");
    let size = std::fs::metadata(libdcgguf_preload()).unwrap().len() / 1024;
    for (before, after) in lines {
        eprintln!(
            "preload library ({size} KiB): {before} KiB cached after the load, {after} after"
        );
        assert!(before > 0 && before <= size + 4, "{before} of {size} KiB");
        assert!(
            after * 2 < before,
            "gave back too little: {before} -> {after} KiB"
        );
    }
}
