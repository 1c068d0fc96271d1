//! The Python package (python/dcgguf, ctypes over libdcgguf's C API): its unittest suite
//! (python/tests, plain `python3 -m unittest`) on MiniLM F16/BF16/Q8_0 and SmolLM2 Q4_1
//! against gguf-py's GGUFReader, and `pip install ./python` into a fresh virtual environment.
//! Both use this build's libdcgguf.so (through `DCGGUF_LIB`).

mod llama_support;

use std::path::Path;
use std::process::{Command, Output};

use llama_support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
#[cfg_attr(
    not(all(dcgguf_python, dcgguf_minilm, dcgguf_smollm2)),
    ignore = "needs python3 with gguf and numpy (scripts/install-deps.sh), the MiniLM models \
              (shared/models) and SmolLM2 (scripts/fetch-models.sh)"
)]
fn python_package_unittests() {
    let t = "python_package_unittests";
    let minilm = require_shared_model(t, "all-MiniLM-L6-v2-f16.gguf");
    let smollm2 = require_smollm2(t);
    let scratch = tmp_dir().join("python-unittest");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let o = run(Command::new("python3")
        // test_llama_cpp_hook.py needs llama-cpp-python: tests/python_llama_cpp.rs runs it.
        .args([
            "-m",
            "unittest",
            "discover",
            "-s",
            "python/tests",
            "-p",
            "test_dcgguf*.py",
            "-v",
        ])
        .current_dir(root())
        .env("PYTHONPATH", root().join("python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("DCGGUF_LIB", libdcgguf())
        .env("DCGGUF_SHARED_MODELS", minilm.parent().unwrap())
        .env("DCGGUF_SMOLLM2", &smollm2)
        .env("DCGGUF_TEST_TMP", &scratch)
        // The cost-model tests plan with this build's profile ("auto"), measuring nothing.
        .env("DCGGUF_CACHE", profile_cache())
        // The command whose --json the package's reports must equal.
        .env("DCGGUF_CLI", env!("CARGO_BIN_EXE_dcgguf"))
        // A missing model fails a Python test instead of skipping it.
        .env("DCGGUF_PY_TEST_STRICT", "1"));
    let out = text(&o);
    eprintln!("{out}");
    assert!(o.status.success(), "python unittest failed:\n{out}");
    // unittest exits 0 with skipped tests; none may be skipped here, and all must have run.
    assert!(
        !out.contains("skipped"),
        "a Python test was skipped:\n{out}"
    );
    let ran: usize = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("unittest summary line");
    assert!(ran >= 19, "only {ran} Python tests ran:\n{out}");
}

/// What the installed package reports, run from outside the repository so that the copy in
/// the venv is the one imported.
const INSTALLED: &str = r#"
import json, pathlib, sys
import dcgguf, dcgguf._lib as lib
src, out = sys.argv[1], sys.argv[2]
report = dcgguf.compress(src, out, level=1)
dcgguf.verify(out, against=src)
with dcgguf.DcReader(out) as r:
    n = len(r.tensors)
print(json.dumps({"module": dcgguf.__file__, "lib": str(lib.path()), "prefix": sys.prefix,
                  "tensors": n, "version": dcgguf.library_version(),
                  "report_bytes": report["files"][0]["output_bytes"]}))
"#;

#[test]
#[cfg_attr(
    not(all(dcgguf_python, dcgguf_minilm)),
    ignore = "needs python3 with numpy and pip (scripts/install-deps.sh) and the MiniLM models \
              (shared/models)"
)]
fn pip_install_into_a_venv() {
    let t = "pip_install_into_a_venv";
    let minilm = require_shared_model(t, "all-MiniLM-L6-v2-q8_0.gguf");
    let dir = tmp_dir().join("python-venv");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let venv = dir.join("venv");
    // --system-site-packages: numpy (the one dependency) comes from the system install.
    let o = run(Command::new("python3")
        .args(["-m", "venv", "--system-site-packages"])
        .arg(&venv));
    assert!(o.status.success(), "python3 -m venv: {}", text(&o));
    let python = venv.join("bin/python");
    // The build backend (setuptools) comes from PyPI or pip's cache, as for any package;
    // DCGGUF_LIB makes setup.py bundle this build's library instead of running cargo.
    let o = run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "./python",
        ])
        .current_dir(root())
        .env("DCGGUF_LIB", libdcgguf())
        .env("PYTHONDONTWRITEBYTECODE", "1"));
    assert!(o.status.success(), "pip install ./python: {}", text(&o));

    let out = dir.join("installed.dc.gguf");
    let o = run(Command::new(&python)
        .arg("-c")
        .arg(INSTALLED)
        .arg(&minilm)
        .arg(&out)
        .current_dir(&dir)
        .env_remove("DCGGUF_LIB")
        .env_remove("PYTHONPATH"));
    assert!(o.status.success(), "installed package: {}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", text(&o)));
    let prefix = r["prefix"].as_str().unwrap();
    let module = Path::new(r["module"].as_str().unwrap());
    assert!(
        module.starts_with(prefix),
        "imported {} instead of the venv's copy",
        module.display()
    );
    let bundled = module.parent().unwrap().join("libdcgguf.so");
    assert_eq!(Path::new(r["lib"].as_str().unwrap()), bundled);
    assert!(
        std::fs::read(&bundled).unwrap() == std::fs::read(libdcgguf()).unwrap(),
        "the bundled library is not this build's"
    );
    assert_eq!(r["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        r["tensors"], 101,
        "MiniLM's tensors through the installed DcReader"
    );
    assert_eq!(
        r["report_bytes"],
        std::fs::metadata(&out).unwrap().len(),
        "compress()'s report vs the file written"
    );
}
