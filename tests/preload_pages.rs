//! libdcgguf_preload.so, and libdcgguf.so in a program that links it, give their own file
//! pages back after a model load: the dynamic loader reads the whole library into the page
//! cache, which a memory cgroup charges, and after the load only a small part of it runs
//! (real llama.cpp, see tests/llama_support). In a test binary of its own, and its tests one
//! at a time ([`alone`]): no other llama.cpp process of this binary maps the library
//! meanwhile, which would keep its pages cached.

mod llama_support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use llama_support::*;

/// Held by each test that runs a tool under the preload library: libtest runs a binary's
/// tests in parallel, and a second process mapping the library keeps the pages the first
/// gives back (CI on 2026-12-01: 3084 -> 2000 KiB while the other test's llama-completion ran).
fn alone() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The preload library's file name, which its log lines about itself name.
const PRELOAD: &str = "libdcgguf_preload.so";

/// The C API library's file name (a C program linking it, no preload).
const CAPI: &str = "libdcgguf.so";

/// What follows the library's name `lib` in each of its log lines about itself.
fn library_lines<'a>(stderr: &'a str, lib: &str) -> impl Iterator<Item = &'a str> {
    let prefix = format!("/{lib}: ");
    stderr
        .lines()
        .filter_map(move |l| l.split_once(&prefix).map(|(_, rest)| rest))
}

/// What follows the preload library's name in each of its log lines about itself.
fn preload_lines(stderr: &str) -> impl Iterator<Item = &str> {
    library_lines(stderr, PRELOAD)
}

/// `(after the load, after giving back)` KiB from the preload's log lines.
fn page_cache_lines(stderr: &str) -> Vec<(u64, u64)> {
    given_back_lines(stderr, PRELOAD, "the load")
}

/// `(before, after giving back)` KiB from `lib`'s log lines after `when` ("the load", "the
/// context was made").
fn given_back_lines(stderr: &str, lib: &str, when: &str) -> Vec<(u64, u64)> {
    let marker = format!(" KiB in the page cache after {when}, ");
    library_lines(stderr, lib)
        .filter_map(|rest| {
            let (before, rest) = rest.split_once(&marker)?;
            let (after, _) = rest.split_once(" KiB after giving back")?;
            Some((before.parse().ok()?, after.parse().ok()?))
        })
        .collect()
}

/// KiB from the preload's line some computes after a load.
fn after_computes_lines(stderr: &str) -> Vec<u64> {
    preload_lines(stderr)
        .filter_map(|rest| {
            let (kib, rest) = rest.split_once(" KiB in the page cache after ")?;
            rest.ends_with(" computes").then(|| kib.parse().ok())?
        })
        .collect()
}

/// KiB from the preload's line at the end of the first compute after a load.
fn first_compute_lines(stderr: &str) -> Vec<u64> {
    preload_lines(stderr)
        .filter_map(|rest| {
            let (kib, rest) = rest.split_once(" KiB in the page cache at the end of the first ")?;
            (rest == "compute after the load").then(|| kib.parse().ok())?
        })
        .collect()
}

/// `(cached, of, after dropping)` KiB from the preload's line as a DC load's tensor reads
/// begin.
fn tensor_reads_lines(stderr: &str) -> Vec<(u64, u64, u64)> {
    library_tensor_reads_lines(stderr, PRELOAD)
}

/// [`tensor_reads_lines`] of library `lib`.
fn library_tensor_reads_lines(stderr: &str, lib: &str) -> Vec<(u64, u64, u64)> {
    library_lines(stderr, lib)
        .filter_map(|rest| {
            let (cached, rest) = rest.split_once(" of ")?;
            let (of, rest) =
                rest.split_once(" KiB in the page cache as the tensor reads begin, ")?;
            let (after, _) = rest.split_once(" KiB after dropping")?;
            Some((cached.parse().ok()?, of.parse().ok()?, after.parse().ok()?))
        })
        .collect()
}

/// For a test of a model whose computes decode nothing under the preload library (MiniLM
/// Q8_0: its token table stays decoded; F16's until session 43): this binary's turn
/// ([`alone`]), llama.cpp, the model and its DC-GGUF, the library written to the disk
/// ([`written`]).
fn minilm_decoded(test: &str) -> (MutexGuard<'static, ()>, Llama, PathBuf, PathBuf) {
    let alone = alone();
    let (l, m) = (
        require_llama(test),
        require_shared_model(test, "all-MiniLM-L6-v2-q8_0.gguf"),
    );
    let dc = dc_of(&m);
    written(&libdcgguf_preload());
    (alone, l, m, dc)
}

/// llama-embedding over the evaluation sentences with `dc` under the preload library, its
/// log verbose, loaded by `route` (`DCGGUF_LOAD_ROUTE`; `None`: the default): its stderr,
/// once it has finished.
fn verbose_embedding(l: &Llama, dc: &std::path::Path, route: Option<&str>) -> String {
    let o = run(&mut verbose_embedding_command(l, dc, route));
    assert_exit(&o, true, "llama-embedding");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command [`verbose_embedding`] runs.
fn verbose_embedding_command(l: &Llama, dc: &std::path::Path, route: Option<&str>) -> Command {
    let mut cmd = Command::new(l.bin("llama-embedding"));
    match route {
        Some(r) => cmd.env("DCGGUF_LOAD_ROUTE", r),
        None => cmd.env_remove("DCGGUF_LOAD_ROUTE"),
    };
    cmd.env("LD_PRELOAD", preload(l, true))
        .env("DCGGUF_VERBOSE", "1")
        .arg("-m")
        .arg(dc)
        .args(EMBEDDING_ARRAY_ARGS)
        .arg("-f")
        .arg(eval_sentences_file());
    cmd
}

/// Writes the library's pages to the disk: the page cache keeps dirty pages whatever the
/// advice, and a library just built by the test run may not be written yet.
fn written(lib: &std::path::Path) {
    std::fs::File::open(lib)
        .and_then(|f| f.sync_all())
        .unwrap_or_else(|e| panic!("fsync {}: {e}", lib.display()));
}

#[test]
fn parses_the_log_lines() {
    let line = "dcgguf: /x/libdcgguf_preload.so: 2996 KiB in the page cache after the load, \
                512 KiB after giving back what no process maps";
    assert_eq!(page_cache_lines(line), vec![(2996, 512)]);
    assert!(page_cache_lines("dcgguf: loaded").is_empty());
    let line =
        "dcgguf: /x/libdcgguf_preload.so: 8 KiB in the page cache after the first 4 computes";
    assert_eq!(after_computes_lines(line), vec![8]);
    assert!(after_computes_lines("dcgguf: loaded").is_empty());
    let line = "dcgguf: /x/libdcgguf_preload.so: 104 KiB in the page cache at the end of the \
                first compute after the load";
    assert_eq!(first_compute_lines(line), vec![104]);
    assert!(after_computes_lines(line).is_empty());
    assert!(first_compute_lines("dcgguf: loaded").is_empty());
    let line = "dcgguf: /x/libdcgguf_preload.so: 3068 of 3068 KiB in the page cache as the \
                tensor reads begin, 2000 KiB after dropping what the load has not mapped";
    assert_eq!(tensor_reads_lines(line), vec![(3068, 3068, 2000)]);
    assert!(page_cache_lines(line).is_empty());
    assert!(tensor_reads_lines("dcgguf: loaded").is_empty());
    let line = "dcgguf: /x/libdcgguf.so: 1100 KiB in the page cache after the context was \
                made, 64 KiB after giving back what no process maps";
    assert_eq!(
        given_back_lines(line, CAPI, "the context was made"),
        vec![(1100, 64)]
    );
    assert!(given_back_lines(line, PRELOAD, "the context was made").is_empty());
    assert!(page_cache_lines(line).is_empty());
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn the_preload_library_gives_back_its_pages_after_a_load() {
    let (_alone, l, m, dc) =
        minilm_decoded("the_preload_library_gives_back_its_pages_after_a_load");
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

/// A dozen computes after a load, what is left of the library in the page cache is the code
/// every compute runs (`.text.hot`, a page or two), not the 64 KiB around each function a
/// compute calls nor what a fault in it reads around (684 KiB stayed mapped in an uncapped
/// SmolLM2 run before the per-compute code had a section of its own).
#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_smollm2)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and SmolLM2 (scripts/fetch-models.sh)"
)]
fn computes_after_a_load_keep_only_the_per_compute_code_cached() {
    let t = "computes_after_a_load_keep_only_the_per_compute_code_cached";
    let _alone = alone();
    let (l, m) = (require_llama(t), require_smollm2(t));
    let dc = dc_of(&m);
    written(&libdcgguf_preload());
    let generate = |model: &std::path::Path, dcgguf: bool| {
        let mut c = Command::new(l.bin("llama-completion"));
        c.env("LD_PRELOAD", preload(&l, dcgguf))
            .env("DCGGUF_VERBOSE", "1")
            .arg("-m")
            .arg(model)
            .args(["--temp", "0", "-no-cnv", "-t", "2", "-c", "256", "-n", "16"])
            .args(["-p", "The capital of France is"]);
        let o = run(&mut c);
        assert_exit(&o, true, "llama-completion");
        o
    };
    let plain = generate(&m, false);
    let o = generate(&dc, true);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&plain.stdout),
        "the DC model generated other text"
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    let kib = after_computes_lines(&stderr);
    assert!(
        !kib.is_empty(),
        "no report after the first computes in:\n{stderr}"
    );
    for k in kib {
        eprintln!("preload library: {k} KiB cached a dozen computes after a load");
        assert!(k <= 64, "{k} KiB of the library stayed in the page cache");
    }
}

/// The run's peak forms in the first compute after a load, as its big buffers fill
/// (llama-embedding's first batch of the evaluation sentences: a 241 MiB output buffer), and
/// what the budget's check of such a buffer ran of ours (reading the memory limit) is given
/// back right after it is allocated (`shed::after_allocation`): MiniLM F16 held 104 KiB of the
/// library at the end of that compute, 876 KiB without it (Intel Xeon VM, 2026-12-02).
#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn the_first_compute_after_a_load_holds_little_of_the_library() {
    let (_alone, l, _, dc) =
        minilm_decoded("the_first_compute_after_a_load_holds_little_of_the_library");
    let stderr = verbose_embedding(&l, &dc, None);
    let kib = first_compute_lines(&stderr);
    assert_eq!(
        kib.len(),
        1,
        "one report of the first compute in:\n{stderr}"
    );
    eprintln!(
        "preload library: {} KiB cached at the end of the first compute",
        kib[0]
    );
    assert!(
        kib[0] <= 256,
        "{} KiB of the library cached at the end of the first compute",
        kib[0]
    );
}

/// A load reads the library into the page cache in one request before it runs (its code came
/// in a 64 KiB fault at a time otherwise: MiniLM F16 under llama-embedding took 199 major
/// faults a run against 127, 2026-12-02), and a DC load drops what it has not mapped once its
/// tensor reads begin (where SmolLM2's uncapped peak forms later), on either load route.
/// Without the read ahead, 2068 of the 3068 KiB were cached there, in the pieces the load had
/// faulted in; on the user route before it ran the drop, no line was logged.
#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn a_load_reads_the_library_ahead_and_drops_what_it_did_not_map() {
    let (_alone, l, _, dc) =
        minilm_decoded("a_load_reads_the_library_ahead_and_drops_what_it_did_not_map");
    let lib = libdcgguf_preload();
    let file = std::fs::File::open(&lib).unwrap();
    // Both load routes: the stream's first tensor read and the user route's first tensor
    // callback run the drop.
    for route in [None, Some("user")] {
        // No process maps the library now (this binary's tests run one at a time), so all
        // of its pages leave the page cache: what is cached at the tensor reads, the load
        // brought.
        dcgguf::io::drop_cached(&file, 0, file.metadata().unwrap().len());
        let stderr = verbose_embedding(&l, &dc, route);
        // One line: llama.cpp's fitting pass before the full load reads no tensors.
        let lines = tensor_reads_lines(&stderr);
        assert_eq!(
            lines.len(),
            1,
            "route {route:?}: one report at the tensor reads in:\n{stderr}"
        );
        let (cached, of, after) = lines[0];
        eprintln!(
            "route {route:?}: preload library at the tensor reads: {cached} of {of} KiB \
             cached, {after} after"
        );
        assert!(
            cached * 100 >= of * 95,
            "route {route:?}: only {cached} of {of} KiB of the library cached as the tensor \
             reads begin: not read ahead"
        );
        assert!(
            after < cached,
            "route {route:?}: nothing dropped at the tensor reads: {cached} KiB cached, \
             {after} after"
        );
    }
}

/// Where a memory cgroup limit binds, the library keeps its pages: the limit's reclaim takes
/// them when it is reached, and giving them back sooner only has the code that runs next
/// read them again from the disk (src/ffi/shed.rs). The same verbose run of
/// MiniLM F16 in a cgroup of its own, once under a limit far above what it needs (1 GiB
/// against a 381 MiB peak) and once without a limit: only the second gives pages back, and
/// the first reads fewer than half as many pages from the disk (major faults; 47 against
/// 138 a run from a cold page cache when this was measured). Needs a memory cgroup of its
/// own (root, cgroup v1 or v2), as on CI's machines.
#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn under_a_memory_limit_the_library_keeps_its_pages() {
    let t = "under_a_memory_limit_the_library_keeps_its_pages";
    let (_alone, l, _m, dc) = minilm_decoded(t);
    let parent = cgroup::detect()
        .unwrap_or_else(|e| panic!("{t}: needs a memory cgroup of its own (root): {e}"));
    let run_in = |limit: Option<u64>, tag: &str| -> (String, i64) {
        let name = format!("dcgguf-test-{}-{tag}", std::process::id());
        let cg = parent
            .create(&name, limit)
            .unwrap_or_else(|e| panic!("{t}: cannot create a memory cgroup: {e}"));
        let mut cmd = verbose_embedding_command(&l, &dc, None);
        cg.enter_on_exec(&mut cmd);
        let before = children_major_faults();
        let o = run(&mut cmd);
        let faults = children_major_faults() - before;
        cg.remove();
        assert_exit(&o, true, "llama-embedding");
        (String::from_utf8_lossy(&o.stderr).into_owned(), faults)
    };
    let (limited, limited_faults) = run_in(Some(1 << 30), "limited");
    let (free, free_faults) = run_in(None, "free");
    eprintln!("major faults: {limited_faults} under the limit, {free_faults} without");
    assert!(
        limited.contains("a memory limit binds (cgroup v"),
        "no word of the limit in:\n{limited}"
    );
    let kept = preload_lines(&limited)
        .filter(|l| l.ends_with("kept under the memory limit"))
        .count();
    assert!(
        kept >= 2
            && page_cache_lines(&limited).is_empty()
            && tensor_reads_lines(&limited).is_empty(),
        "under the limit the library gave pages back:\n{limited}"
    );
    assert!(
        !page_cache_lines(&free).is_empty() && !free.contains("a memory limit binds"),
        "without a limit the library kept its pages:\n{free}"
    );
    assert!(
        limited_faults * 2 < free_faults,
        "under the limit {limited_faults} major faults, without {free_faults}"
    );
}

/// Major page faults of the children this process has waited for so far.
fn children_major_faults() -> i64 {
    // SAFETY: rusage is plain integers, for which zero is valid; getrusage writes one
    // rusage struct, which we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) },
        0
    );
    ru.ru_majflt
}

/// A model whose computes decode (MiniLM BF16's token table stays compressed, rows decoded
/// per lookup) keeps the decoder mapped from one compute to the next: more batches fault no
/// more of the library back in. When the first computes after the load each gave the
/// library's code back, each next one read the decoder back from the disk (MiniLM F16 over
/// the evaluation sentences, this test: 175 major faults in batches of 2048 tokens, 228 in
/// batches of 256; 159 and 159 since). BF16 since session 31, when F16's table (19.8 MB
/// stored in 1 MiB chunks) stayed decoded; since session 43 F16's, in 64 KiB chunks, stays
/// compressed too. Since session 34 the full
/// load does not give the decoder back either (`shed::after_load`).
#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn computes_that_decode_keep_the_decoder_mapped() {
    let t = "computes_that_decode_keep_the_decoder_mapped";
    let _alone = alone();
    let (l, m) = (
        require_llama(t),
        require_shared_model(t, "all-MiniLM-L6-v2-bf16.gguf"),
    );
    let dc = dc_of(&m);
    let sentences = eval_sentences_file();
    let faults = |batch: &str| {
        let before = children_major_faults();
        let o = run(Command::new(l.bin("llama-embedding"))
            .env("LD_PRELOAD", preload(&l, true))
            .env("DCGGUF_VERBOSE", "1")
            .arg("-m")
            .arg(&dc)
            .args(["-t", "2", "-c", "512", "-b", batch, "-ub", batch])
            .args(["--embd-output-format", "array", "-f"])
            .arg(&sentences));
        assert_exit(&o, true, "llama-embedding");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.contains("lookup table(s) kept compressed"),
            "the token table was not kept compressed:\n{stderr}"
        );
        // The full load keeps what it mapped (the fitting pass before it, which decodes
        // nothing after, gives its pages back).
        assert!(
            stderr.contains("after the load, kept: the model's computes decode its lookup"),
            "the full load gave the decoder back:\n{stderr}"
        );
        children_major_faults() - before
    };
    // Right after a build the library's pages may be the linker's dirty ones, which a shed
    // cannot drop: the first run then faulted almost nothing in (1 major fault against 92).
    written(&libdcgguf_preload());
    let few = faults("2048");
    let many = faults("256");
    eprintln!("major faults: {few} in batches of 2048 tokens, {many} in batches of 256");
    assert!(
        many < few + 25,
        "smaller batches faulted {many} times against {few}: computes read the library back"
    );
}

/// libdcgguf.so in a program that links it, without the preload (ffi/examples/generate.c):
/// it gives its pages back after the load and once a context is made, since no code of ours
/// runs in the computes there; and the load's tensor reads through glibc's buffer drop what
/// the load has not mapped, as the preload's `fread` ones do. Kept, they set the run's
/// uncapped peak: SmolLM2 through llama-cpp-python peaked 240.4 MiB against plain mmap's
/// 237.0 with 2.3 MiB of the library mapped and 3.8 MiB cached as it generated (2026-12-08).
#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_smollm2)),
    ignore = "needs llama.cpp and SmolLM2: run scripts/build-llama.sh and scripts/fetch-models.sh"
)]
fn libdcgguf_gives_back_its_pages_after_a_load_and_a_context() {
    let t = "libdcgguf_gives_back_its_pages_after_a_load_and_a_context";
    let _alone = alone();
    let (l, m) = (require_llama(t), require_smollm2(t));
    let dc = dc_of(&m);
    let exe = tmp_dir().join("generate-pages");
    let mut flags = dcgguf_flags();
    flags.extend(llama_flags(&l));
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ffi/examples/generate.c");
    cc(&exe, &[&src], &flags);
    written(&libdcgguf());
    let o = run(Command::new(&exe)
        .arg(&dc)
        .args(["8", "The capital of France is"])
        .env("DCGGUF_VERBOSE", "1")
        .env_remove("LD_PRELOAD")
        .env_remove("DCGGUF_MEM_BUDGET")
        .env_remove("DCGGUF_LOAD_ROUTE"));
    assert_exit(&o, true, "generate");
    let stderr = String::from_utf8_lossy(&o.stderr);
    let reads = library_tensor_reads_lines(&stderr, CAPI);
    assert_eq!(
        reads.len(),
        1,
        "one report at the tensor reads in:\n{stderr}"
    );
    let (cached, of, after) = reads[0];
    assert!(
        after < cached && cached <= of,
        "nothing dropped at the tensor reads: {cached} of {of} KiB cached, {after} after"
    );
    for when in ["the load", "the context was made"] {
        let lines = given_back_lines(&stderr, CAPI, when);
        assert_eq!(lines.len(), 1, "one report after {when} in:\n{stderr}");
        let (before, after) = lines[0];
        eprintln!("libdcgguf.so after {when}: {before} KiB cached, {after} after giving back");
        assert!(
            after * 2 < before,
            "gave back too little after {when}: {before} -> {after} KiB"
        );
    }
}
