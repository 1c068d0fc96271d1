//! Build script: brings the pinned llama.cpp version from `vendor/llama.cpp.lock` (the one
//! place it is written) into the crate as `DCGGUF_LLAMA_COMMIT` / `DCGGUF_LLAMA_PY_VERSION`,
//! and refuses to build when the committed bindings (`src/llama/sys.rs`) were generated from
//! another llama.cpp than the pinned one.

use std::fs;

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
    let bindings = fs::read_to_string("src/llama/sys.rs").expect("read src/llama/sys.rs");
    assert!(
        bindings.lines().take(5).any(|l| l.contains(&commit)),
        "src/llama/sys.rs was not generated from llama.cpp {commit} (vendor/llama.cpp.lock); \
         regenerate it with scripts/llama-bindgen.sh"
    );
    println!("cargo:rustc-env=DCGGUF_LLAMA_COMMIT={commit}");
    println!("cargo:rustc-env=DCGGUF_LLAMA_PY_VERSION={py_version}");
}
