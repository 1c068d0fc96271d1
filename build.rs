//! Build script: brings the pinned llama.cpp version from `vendor/llama.cpp.lock` (the one
//! place it is written) into the crate as `DCGGUF_LLAMA_COMMIT` / `DCGGUF_LLAMA_PY_VERSION`
//! and `DCGGUF_LLAMA_DIR` (`llama.cpp-<LLAMA_PY_VERSION>-r<LLAMA_BUILD_REV>`, the name of the
//! install prefix scripts/build-llama.sh makes under the cache root),
//! and refuses to build when the committed bindings (`src/llama/sys.rs`) were generated from
//! another llama.cpp than the pinned one.
//!
//! It also detects what the integration tests need from outside the repository and emits one
//! cfg for each thing present, so that a test whose prerequisite is absent is reported by
//! libtest as `ignored, needs ...` (see `#[cfg_attr(not(dcgguf_llama), ignore = ...)]` in
//! tests/) instead of passing without having run:
//!   dcgguf_llama       llama.cpp installed by scripts/build-llama.sh: `$DCGGUF_LLAMA_PREFIX`
//!                      (default `$DCGGUF_CACHE/$DCGGUF_LLAMA_DIR`, `DCGGUF_CACHE`
//!                      default `~/.cache/dcgguf`) holds bin/llama-completion,
//!                      lib/libllama.so and include/llama.h
//!   dcgguf_llama_hosts that prefix also holds bin/llama-server and bin/ggml-rpc-server
//!                      (built by scripts/build-llama.sh since build revision 2)
//!   dcgguf_smollm2     SmolLM2-135M-Instruct.Q4_1.gguf in `$DCGGUF_MODELS` (default
//!                      `$DCGGUF_CACHE/models`; scripts/fetch-models.sh)
//!   dcgguf_minilm      the four all-MiniLM-L6-v2 GGUFs in `$DCGGUF_SHARED_MODELS` (default
//!                      shared/models, ../shared/models or /work/shared/models), else in
//!                      `$DCGGUF_MODELS/minilm` (scripts/fetch-models.sh converts them)
//!   dcgguf_minilm_shared_and_fetched  both of those copies (tests/minilm_fetch.rs compares
//!                      them); required by `DCGGUF_REQUIRE_MODELS=1` only where the shared
//!                      copy is present
//!   dcgguf_python      `python3 -c 'import gguf, numpy, zstandard, zipnn_core'` works
//!                      (scripts/install-deps.sh)
//!   dcgguf_pkg_config  pkg-config is on PATH
//! `DCGGUF_REQUIRE_LLAMA=1` (llama.cpp, pkg-config), `DCGGUF_REQUIRE_MODELS=1`
//! and `DCGGUF_REQUIRE_PYTHON=1` (scripts/test.sh, CI) set the cfgs whatever was found: the
//! tests then run, and fail naming what is missing.
//! Cargo reruns this script when one of them appears or vanishes: it watches each present
//! path, and for an absent one the nearest existing directory of ours above it (the cache
//! root, the models directory, site-packages), or else the absent path itself
//! (which reruns the script, and rebuilds the crate, on every build until it appears).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

// The MiniLM search order, shared with the tests (see that file).
#[path = "tests/minilm_paths/mod.rs"]
mod minilm_paths;

fn main() {
    println!("cargo:rerun-if-changed=vendor/llama.cpp.lock");
    println!("cargo:rerun-if-changed=src/llama/sys.rs");
    let lock = fs::read_to_string("vendor/llama.cpp.lock").expect("read vendor/llama.cpp.lock");
    let get = |key: &str| -> String {
        lock.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{key} is missing from vendor/llama.cpp.lock"))
    };
    let commit = get("LLAMA_CPP_COMMIT");
    let py_version = get("LLAMA_PY_VERSION");
    let llama_dir = format!("llama.cpp-{py_version}-r{}", get("LLAMA_BUILD_REV"));
    let bindings = fs::read_to_string("src/llama/sys.rs").expect("read src/llama/sys.rs");
    assert!(
        bindings.lines().take(5).any(|l| l.contains(&commit)),
        "src/llama/sys.rs was not generated from llama.cpp {commit} (vendor/llama.cpp.lock); \
         regenerate it with scripts/llama-bindgen.sh"
    );
    println!("cargo:rustc-env=DCGGUF_LLAMA_COMMIT={commit}");
    println!("cargo:rustc-env=DCGGUF_LLAMA_PY_VERSION={py_version}");
    println!("cargo:rustc-env=DCGGUF_LLAMA_DIR={llama_dir}");

    detect_test_prerequisites(&llama_dir, &py_version);
}

/// A non-empty environment variable (scripts/env.sh exports some as empty strings).
fn env_path(name: &str) -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed={name}");
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Emits `cfg(name)` when `present`, or when `required_by` (an environment variable) is 1.
fn cfg(name: &str, present: bool, required_by: &str) {
    emit_cfg(name, present || required(required_by));
}

/// Whether the environment variable `name` is 1 (watched).
fn required(name: &str) -> bool {
    println!("cargo:rerun-if-env-changed={name}");
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// Declares `cfg(name)`, and sets it when `on`.
fn emit_cfg(name: &str, on: bool) {
    println!("cargo::rustc-check-cfg=cfg({name})");
    if on {
        println!("cargo:rustc-cfg={name}");
    }
}

/// Reruns this script when `path` changes, appears or vanishes. A present path is watched
/// itself; an absent one through its nearest existing ancestor when that lies inside `ours`
/// (cargo scans a watched directory recursively: never a home or root directory), else
/// through itself (cargo then reruns the script on every build).
fn watch(path: &Path, ours: &Path) {
    let seen = path
        .ancestors()
        .find(|a| a.exists())
        .filter(|a| a.starts_with(ours))
        .unwrap_or(path);
    println!("cargo:rerun-if-changed={}", seen.display());
}

fn detect_test_prerequisites(llama_dir: &str, py_version: &str) {
    let cache = env_path("DCGGUF_CACHE").unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/dcgguf")
    });

    // llama.cpp (scripts/build-llama.sh), watched as a whole install prefix.
    let prefix = env_path("DCGGUF_LLAMA_PREFIX").unwrap_or_else(|| cache.join(llama_dir));
    let llama = ["bin/llama-completion", "lib/libllama.so", "include/llama.h"]
        .iter()
        .all(|f| prefix.join(f).is_file());
    watch(
        &prefix,
        if prefix.starts_with(&cache) {
            &cache
        } else {
            &prefix
        },
    );
    cfg("dcgguf_llama", llama, "DCGGUF_REQUIRE_LLAMA");
    let hosts = ["bin/llama-server", "bin/ggml-rpc-server"]
        .iter()
        .all(|f| prefix.join(f).is_file());
    cfg("dcgguf_llama_hosts", hosts, "DCGGUF_REQUIRE_LLAMA");

    // SmolLM2 (scripts/fetch-models.sh).
    let models = env_path("DCGGUF_MODELS").unwrap_or_else(|| cache.join("models"));
    let smollm2 = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    watch(
        &smollm2,
        if models.starts_with(&cache) {
            &cache
        } else {
            &models
        },
    );
    cfg("dcgguf_smollm2", smollm2.is_file(), "DCGGUF_REQUIRE_MODELS");

    // MiniLM: the shared models folder, else the copy scripts/fetch-models.sh converts into
    // `$DCGGUF_MODELS/minilm`; tests/minilm_paths holds the search order the tests use too.
    env_path("DCGGUF_SHARED_MODELS");
    let shared_dirs = minilm_paths::shared_dirs();
    let fetched = minilm_paths::fetched_dir();
    let minilm = minilm_paths::MINILM_FILES
        .iter()
        .all(|f| minilm_paths::find_minilm(f).is_ok());
    let existing: Vec<&PathBuf> = shared_dirs.iter().filter(|d| d.is_dir()).collect();
    for d in if existing.is_empty() {
        shared_dirs.iter().collect()
    } else {
        existing
    } {
        println!("cargo:rerun-if-changed={}", d.display());
    }
    watch(
        &fetched,
        if fetched.starts_with(&cache) {
            &cache
        } else {
            &models
        },
    );
    cfg("dcgguf_minilm", minilm, "DCGGUF_REQUIRE_MODELS");
    // Both copies, for the test that compares them (tests/minilm_fetch.rs). Required with the
    // models only where the shared folder is there: without it there is nothing to compare.
    let shared = minilm_paths::shared_complete().is_some();
    let fetched_all = minilm_paths::fetched_complete().is_some();
    emit_cfg(
        "dcgguf_minilm_shared_and_fetched",
        shared && (fetched_all || required("DCGGUF_REQUIRE_MODELS")),
    );

    cfg("dcgguf_python", python(), "DCGGUF_REQUIRE_PYTHON");

    // llama-cpp-python built from the pinned sdist (scripts/build-llama-cpp-python.sh); its
    // stamp is written last.
    let lcp = cache.join(format!("llama-cpp-python-{py_version}"));
    let lcp_stamp = lcp.join(".dcgguf-complete");
    watch(&lcp_stamp, &cache);
    cfg(
        "dcgguf_llama_cpp_python",
        lcp_stamp.is_file(),
        "DCGGUF_REQUIRE_PYTHON",
    );
    cfg(
        "dcgguf_pkg_config",
        on_path("pkg-config"),
        "DCGGUF_REQUIRE_LLAMA",
    );
}

/// Whether python3 imports what the tests and scripts use; watches the modules it found, or
/// else the site-packages directories a `pip install` would change.
fn python() -> bool {
    const PROBE: &str = r#"
import site, sysconfig
try:
    import gguf, numpy, zstandard, zipnn_core
    print("present")
    for m in (gguf, numpy, zstandard, zipnn_core):
        print(m.__file__)
except Exception:
    print("absent")
    p = sysconfig.get_paths()
    for d in sorted({p["purelib"], p["platlib"], site.getusersitepackages()}):
        print(d)
"#;
    for v in ["PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let Ok(out) = Command::new("python3").args(["-c", PROBE]).output() else {
        on_path("python3");
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let present = out.status.success() && lines.next() == Some("present");
    for p in lines.map(Path::new).filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    present
}

/// Whether an executable `name` is on PATH; watches it, or /usr/bin where it would appear.
fn on_path(name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file());
    match &found {
        Some(p) => println!("cargo:rerun-if-changed={}", p.display()),
        None if Path::new("/usr/bin").is_dir() => println!("cargo:rerun-if-changed=/usr/bin"),
        None => {}
    }
    found.is_some()
}
