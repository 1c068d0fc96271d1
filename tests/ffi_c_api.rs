//! The C API: ffi/tests/api_test.c is compiled with -Wall -Wextra -Werror against
//! ffi/dcgguf.h, linked through the pkg-config file made from ffi/dcgguf.pc.in (shared and
//! static libdcgguf), and run on a real DC-GGUF, its original and a corrupted copy: reads,
//! and the conversions (compress, lossy compress, verify, decompress, cancellation, their
//! reports, the cost model's options, structs of older and newer headers).

mod llama_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use llama_support::*;

/// An install prefix (lib/, include/, lib/pkgconfig/dcgguf.pc) pointing at this build.
fn prefix(name: &str, static_only: bool) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = tmp_dir().join(name);
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(p.join("lib/pkgconfig")).unwrap();
    std::fs::create_dir_all(p.join("include")).unwrap();
    let lib = if static_only {
        "libdcgguf.a"
    } else {
        "libdcgguf.so"
    };
    std::os::unix::fs::symlink(capi_lib(lib), p.join("lib").join(lib)).unwrap();
    std::fs::copy(root.join("ffi/dcgguf.h"), p.join("include/dcgguf.h")).unwrap();
    let pc = std::fs::read_to_string(root.join("ffi/dcgguf.pc.in"))
        .unwrap()
        .replace("@PREFIX@", p.to_str().unwrap())
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    std::fs::write(p.join("lib/pkgconfig/dcgguf.pc"), pc).unwrap();
    p
}

fn pkg_config(prefix: &Path, args: &[&str]) -> Vec<String> {
    let o = run(Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .args(args)
        .arg("dcgguf"));
    assert!(
        o.status.success(),
        "pkg-config: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn check(static_link: bool) {
    let t = if static_link {
        "c_api_static"
    } else {
        "c_api_shared"
    };
    let orig = require_shared_model(t, "all-MiniLM-L6-v2-q8_0.gguf");
    if Command::new("pkg-config")
        .arg("--version")
        .output()
        .is_err()
    {
        missing(t, "pkg-config not installed (scripts/install-deps.sh)");
    }
    let dc = dc_of(&orig);
    let bad = corrupted_copy(&dc, &format!("{t}-corrupt.dc.gguf"));
    let p = prefix(&format!("prefix-{t}"), static_link);
    let mut flags = pkg_config(&p, &["--cflags"]);
    flags.extend(pkg_config(
        &p,
        if static_link {
            &["--libs", "--static"][..]
        } else {
            &["--libs"][..]
        },
    ));
    let exe = tmp_dir().join(format!("api_test_{t}"));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("ffi/tests/api_test.c");
    cc(&exe, &[&src], &flags);
    let scratch = tmp_dir().join(format!("scratch-{t}"));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let o = run(Command::new(&exe)
        // The cost-model checks plan with this profile ("auto"), measuring nothing.
        .env("DCGGUF_CACHE", profile_cache())
        .arg(&dc)
        .arg(&orig)
        .arg(&bad)
        .arg(&scratch));
    eprintln!("{}", String::from_utf8_lossy(&o.stdout));
    assert_exit(&o, true, "api_test");
}

#[test]
#[cfg_attr(
    not(all(dcgguf_minilm, dcgguf_pkg_config)),
    ignore = "needs pkg-config (scripts/install-deps.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn c_api_shared_via_pkg_config() {
    check(false);
}

#[test]
#[cfg_attr(
    not(all(dcgguf_minilm, dcgguf_pkg_config)),
    ignore = "needs pkg-config (scripts/install-deps.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn c_api_static_via_pkg_config() {
    check(true);
}
