//! DC-GGUF files in llama-cpp-python, the real one: built from its PyPI sdist at the pinned
//! llama.cpp (scripts/build-llama-cpp-python.sh, a cached venv). Runs
//! python/tests/test_llama_cpp_hook.py with that venv's python: greedy completions and
//! embeddings identical to the plain models through `import dcgguf.llama_cpp`, both load
//! routes, a damaged file's error, and a bare ctypes host calling dcgguf_llama_model_load.

mod llama_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use llama_support::*;

/// The venv python scripts/build-llama-cpp-python.sh made (it prints the path; cached).
fn venv_python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/build-llama-cpp-python.sh"))
        .output()
        .expect("run scripts/build-llama-cpp-python.sh");
    assert!(
        out.status.success(),
        "scripts/build-llama-cpp-python.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(py.is_file(), "no venv python at {}", py.display());
    py
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama_cpp_python, dcgguf_smollm2, dcgguf_minilm)),
    ignore = "needs llama-cpp-python (scripts/build-llama-cpp-python.sh), SmolLM2 and MiniLM"
)]
fn llama_cpp_python_loads_dc_files_like_plain_ones() {
    let t = "llama_cpp_python_loads_dc_files_like_plain_ones";
    let (smollm2, minilm) = (
        require_smollm2(t),
        require_shared_model(t, "all-MiniLM-L6-v2-f16.gguf"),
    );
    let (smollm2_dc, minilm_dc) = (dc_of(&smollm2), dc_of(&minilm));
    let damaged = corrupted_copy(&smollm2_dc, "python-damaged.dc.gguf");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = run(Command::new(venv_python())
        .current_dir(root.join("python/tests"))
        .args(["-m", "unittest", "-v", "test_llama_cpp_hook"])
        .env("PYTHONPATH", root.join("python"))
        .env("DCGGUF_LIB", libdcgguf())
        .env_remove("LD_PRELOAD")
        .env_remove("DCGGUF_LOAD_ROUTE")
        .env_remove("DCGGUF_MEM_BUDGET")
        .env("DCGGUF_TEST_SMOLLM2", &smollm2)
        .env("DCGGUF_TEST_SMOLLM2_DC", &smollm2_dc)
        .env("DCGGUF_TEST_MINILM", &minilm)
        .env("DCGGUF_TEST_MINILM_DC", &minilm_dc)
        .env("DCGGUF_TEST_DAMAGED_DC", &damaged));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "python tests failed:\n{err}");
    // unittest reports skips as "skipped"; every test must have run.
    assert!(
        !err.contains("skipped"),
        "a python test was skipped:\n{err}"
    );
    let ran = err
        .lines()
        .find_map(|l| l.strip_prefix("Ran "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u32>().ok());
    assert_eq!(ran, Some(8), "unexpected number of python tests:\n{err}");
}
