//! Where the MiniLM test models (all-MiniLM-L6-v2 as GGUF F32, F16, BF16, Q8_0) are: the one
//! search order, shared by build.rs (the `dcgguf_minilm` cfg), the tests (tests/common,
//! tests/llama_support) and the benches, each of which includes this file by `#[path]`.
//!
//! 1. the shared models folder beside the project: `$DCGGUF_SHARED_MODELS` when set, else
//!    `<repo>/shared/models`, `<repo>/../shared/models` or `/work/shared/models`;
//! 2. else the copy scripts/fetch-models.sh converts from PyPI (vendor/models-convert.lock):
//!    `$DCGGUF_MODELS/minilm`, `$DCGGUF_MODELS` defaulting to
//!    `${DCGGUF_CACHE:-$HOME/.cache/dcgguf}/models`.
//!
//! Both hold the same bytes (fetch-models.sh checks the sha256 of what it converts against the
//! shared folder's sums; tests/minilm_fetch.rs compares the two when both are present).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The four files, by type suffix.
pub const MINILM_FILES: [&str; 4] = [
    "all-MiniLM-L6-v2-f32.gguf",
    "all-MiniLM-L6-v2-f16.gguf",
    "all-MiniLM-L6-v2-bf16.gguf",
    "all-MiniLM-L6-v2-q8_0.gguf",
];

fn env_dir(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The shared models folders searched, in order.
pub fn shared_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    match env_dir("DCGGUF_SHARED_MODELS") {
        Some(d) => vec![d],
        None => vec![
            root.join("shared/models"),
            root.join("../shared/models"),
            PathBuf::from("/work/shared/models"),
        ],
    }
}

/// Where scripts/fetch-models.sh puts its MiniLM conversion.
pub fn fetched_dir() -> PathBuf {
    let models = env_dir("DCGGUF_MODELS").unwrap_or_else(|| {
        env_dir("DCGGUF_CACHE")
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/dcgguf")
            })
            .join("models")
    });
    models.join("minilm")
}

/// The shared folder holding all four files, if any.
pub fn shared_complete() -> Option<PathBuf> {
    shared_dirs()
        .into_iter()
        .find(|d| MINILM_FILES.iter().all(|f| d.join(f).is_file()))
}

/// The fetched folder, if it holds all four files.
pub fn fetched_complete() -> Option<PathBuf> {
    let d = fetched_dir();
    MINILM_FILES
        .iter()
        .all(|f| d.join(f).is_file())
        .then_some(d)
}

/// A MiniLM file by name: from the shared folder if there, else from the fetched copy; or why
/// not.
pub fn find_minilm(name: &str) -> Result<PathBuf, String> {
    let mut dirs = shared_dirs();
    dirs.push(fetched_dir());
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("{name} not found in {dirs:?} (run scripts/fetch-models.sh, or set DCGGUF_SHARED_MODELS)")
        })
}
