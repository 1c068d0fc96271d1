//! DC-GGUF files in llama-cpp-python, the real one: built from its PyPI sdist at the pinned
//! llama.cpp (scripts/build-llama-cpp-python.sh, a cached venv). Runs
//! python/tests/test_llama_cpp_hook.py with that venv's python: greedy completions and
//! embeddings identical to the plain models through `import dcgguf.llama_cpp`, both load
//! routes, a damaged file's error, and a bare ctypes host calling dcgguf_llama_model_load;
//! and a DC model under a memory cap that plain llama-cpp-python runs in.

mod llama_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use llama_support::*;

/// The venv python scripts/build-llama-cpp-python.sh made (it prints the path; cached).
fn venv_python() -> PathBuf {
    llama_cpp_python().unwrap_or_else(|e| panic!("{e}"))
}

/// The tests of this file one at a time: one measures memory under a cap.
static ALONE: Mutex<()> = Mutex::new(());

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
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
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

const MIB: u64 = 1 << 20;

/// One greedy completion of `model` by llama-cpp-python (python/tests/complete_once.py, a
/// 1024-token context), through `import dcgguf.llama_cpp` if `dc`, in a new memory cgroup
/// capped at `cap` (page cache dropped first): its output and what the cgroup saw.
fn completion_in_cgroup(
    parent: &cgroup::Parent,
    model: &Path,
    dc: bool,
    cap: Option<u64>,
    tag: &str,
) -> (std::process::Output, cgroup::Usage) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut c = Command::new(venv_python());
    c.current_dir(root.join("python/tests"))
        .arg("complete_once.py")
        .arg(model)
        .arg("1024")
        .env("PYTHONPATH", root.join("python"))
        .env("DCGGUF_LIB", libdcgguf())
        .env("DCGGUF_HOOK", if dc { "1" } else { "0" })
        .env_remove("LD_PRELOAD")
        .env_remove("DCGGUF_LOAD_ROUTE")
        .env_remove("DCGGUF_MEM_BUDGET")
        .env_remove("LD_LIBRARY_PATH");
    run_capped(c, parent, cap, tag)
}

/// llama-cpp-python runs no preload library, so no batch of a DC model is checked. Before
/// session 68 a DC SmolLM2 with a 1024-token context was killed under caps of 62-69% of
/// plain mmap's uncapped peak (150 and 165 of 240 MiB), where plain generated 5-7 tokens/s:
/// the load found room for the decoded weights, then the context wrote its KV cache and its
/// first batch part of its compute buffer. Now the context's creation is checked (the KV
/// cache estimated before, what it wrote and reserved after) and weights move to a file; a
/// thread measures the moved pages' room. Under 70% of plain's peak, plain and DC finish
/// with the same text, DC without an OOM kill, its log saying it moved weights and kept
/// some of them in memory. Under 58% (140 MiB) the DC load itself was killed: without the
/// preload's `fread` the stream does not learn where a tensor goes, so no weight moves as
/// the load goes. There the decoded model goes to an unnamed file that llama.cpp maps as a
/// plain GGUF: under 58% of plain's peak both finish with the same text.
#[test]
#[cfg_attr(
    not(all(dcgguf_llama_cpp_python, dcgguf_smollm2)),
    ignore = "needs llama-cpp-python (scripts/build-llama-cpp-python.sh) and SmolLM2"
)]
fn llama_cpp_python_runs_a_dc_model_under_a_cap_that_plain_runs_in() {
    let t = "llama_cpp_python_runs_a_dc_model_under_a_cap_that_plain_runs_in";
    let smollm2 = require_smollm2(t);
    let dc = dc_of(&smollm2);
    let parent = cgroup::detect()
        .unwrap_or_else(|e| panic!("{t}: needs a memory cgroup of its own (root): {e}"));
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let (free, free_use) = completion_in_cgroup(&parent, &smollm2, false, None, "py-free");
    assert!(
        free.status.success(),
        "{}",
        String::from_utf8_lossy(&free.stderr)
    );
    let peak = free_use.peak.expect("the cgroup reports its peak");
    // DC's log under `percent`% of plain's peak, plain and DC having finished there with the
    // same text.
    let both_under = |percent: u64| {
        let cap = peak / 100 * percent;
        eprintln!(
            "{t}: capped at {:.1} MiB, {percent}% of plain's uncapped peak {:.1} MiB",
            cap as f64 / MIB as f64,
            peak as f64 / MIB as f64
        );
        let tag = format!("py-plain-{percent}");
        let (plain, plain_use) = completion_in_cgroup(&parent, &smollm2, false, Some(cap), &tag);
        assert!(
            plain.status.success() && plain_use.oom_kills == 0,
            "plain llama-cpp-python did not finish under {percent}% ({}):\n{}",
            plain.status,
            String::from_utf8_lossy(&plain.stderr)
        );
        let tag = format!("py-dc-{percent}");
        let (ours, ours_use) = completion_in_cgroup(&parent, &dc, true, Some(cap), &tag);
        let log = String::from_utf8_lossy(&ours.stderr).into_owned();
        assert!(
            ours.status.success() && ours_use.oom_kills == 0,
            "the DC model did not finish under {percent}% ({}, {} OOM kills):\n{log}",
            ours.status,
            ours_use.oom_kills
        );
        let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(text(&plain).trim().len() > 10, "{}", text(&plain));
        assert_eq!(text(&ours), text(&plain), "under {percent}%");
        log
    };
    let log = both_under(58);
    assert!(
        log.contains("went to an unnamed file in"),
        "the decoded model did not go to a file:\n{log}"
    );
    let log = both_under(70);
    assert!(
        !log.contains("went to an unnamed file in"),
        "the decoded model went to a file where it fits:\n{log}"
    );
    assert!(
        log.contains("of the decoded weights to the file")
            || log.contains("of the decoded weights (twice what the limit lacks"),
        "no weights moved:\n{log}"
    );
    // "dcgguf: memory: measured while the program runs, X MiB of the moved pages in memory:
    // K MiB of them kept there ..."
    let kept: Vec<f64> = log
        .lines()
        .filter_map(|l| l.strip_prefix("dcgguf: memory: measured while the program runs, "))
        .filter_map(|l| l.split(": ").nth(1)?.split(" MiB").next()?.parse().ok())
        .collect();
    assert!(
        kept.iter().any(|&k| k > 0.0),
        "the thread kept none of the moved pages in memory:\n{log}"
    );
}
