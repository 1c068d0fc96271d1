//! What the built libraries export: libdcgguf.so only its `dcgguf_*` C API (a program that
//! links it keeps its own `fread` and llama.cpp), libdcgguf.a defines neither `fread` nor any
//! `llama_*` or `ggml_*` function, and libdcgguf_preload.so exports the thirteen `LD_PRELOAD`
//! interposers.

mod llama_support;

use std::path::Path;
use std::process::Command;

/// The thirteen symbols libdcgguf_preload.so interposes.
const INTERPOSERS: [&str; 14] = [
    "fread",
    "fseek",
    "fseeko",
    "posix_memalign",
    "llama_decode",
    "llama_encode",
    "llama_process",
    "llama_model_load_from_file",
    "llama_init_from_model",
    "llama_new_context_with_model",
    "llama_free",
    "llama_model_free",
    "ggml_backend_tensor_set",
    "ggml_backend_buffer_clear",
];

/// (type letter, name) of each defined symbol `nm args lib` lists. nm comes with binutils,
/// which the linker of every build here is part of: without it the test fails.
fn nm(args: &[&str], lib: &Path) -> Vec<(char, String)> {
    let o = Command::new("nm")
        .args(args)
        .arg(lib)
        .output()
        .unwrap_or_else(|e| panic!("cannot run nm (binutils): {e}"));
    assert!(
        o.status.success(),
        "nm {args:?} {}: {}",
        lib.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            // "<address> <type> <name>[@version]"; archive member headers have no type.
            let mut f = l.split_whitespace();
            let (_, ty, name) = (f.next()?, f.next()?, f.next()?);
            let ty = ty.chars().next().filter(|_| ty.len() == 1)?;
            let name = name.split('@').next().unwrap_or(name);
            Some((ty, name.to_string()))
        })
        .collect()
}

/// Global definitions: text, data, bss, read-only, weak, indirect functions, unique.
fn is_global(ty: char) -> bool {
    matches!(
        ty,
        'T' | 'D' | 'B' | 'R' | 'V' | 'W' | 'i' | 'u' | 'G' | 'S'
    )
}

#[test]
fn libdcgguf_so_exports_only_the_c_api() {
    let lib = llama_support::capi_lib("libdcgguf.so");
    let syms = nm(&["-D", "--defined-only"], &lib);
    let globals: Vec<&(char, String)> = syms.iter().filter(|(t, _)| is_global(*t)).collect();
    let foreign: Vec<String> = globals
        .iter()
        .filter(|(_, n)| !n.starts_with("dcgguf_"))
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    assert!(
        foreign.is_empty(),
        "{} exports symbols outside the dcgguf_ C API: {foreign:?}",
        lib.display()
    );
    for want in [
        "dcgguf_open",
        "dcgguf_llama_model_load",
        "dcgguf_llama_init_from_model",
        "dcgguf_llama_free",
        "dcgguf_llama_model_free",
    ] {
        assert!(
            globals.iter().any(|(_, n)| n == want),
            "{} does not export {want}",
            lib.display()
        );
    }
}

#[test]
fn libdcgguf_a_defines_no_libc_or_llama_symbol() {
    let lib = llama_support::capi_lib("libdcgguf.a");
    let syms = nm(&["--defined-only", "-g"], &lib);
    let bad: Vec<String> = syms
        .iter()
        .filter(|(t, n)| {
            is_global(*t)
                && (["fread", "fseek", "fseeko", "posix_memalign"].contains(&n.as_str())
                    || n.starts_with("llama_")
                    || n.starts_with("ggml_"))
        })
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    assert!(bad.is_empty(), "{} defines {bad:?}", lib.display());
    assert!(
        syms.iter().any(|(_, n)| n == "dcgguf_open"),
        "{} does not define dcgguf_open",
        lib.display()
    );
}

#[test]
fn libdcgguf_preload_so_exports_the_interposers() {
    let lib = llama_support::libdcgguf_preload();
    let syms = nm(&["-D", "--defined-only"], &lib);
    let exported = |name: &str| syms.iter().any(|(t, n)| *t == 'T' && n == name);
    for name in INTERPOSERS {
        assert!(exported(name), "{} does not export {name}", lib.display());
    }
    // Everything else it exports is the C API of the dcgguf crate it links (a Rust cdylib
    // re-exports its rlib dependencies' #[no_mangle] items).
    let other: Vec<&String> = syms
        .iter()
        .filter(|(t, n)| {
            is_global(*t) && !n.starts_with("dcgguf_") && !INTERPOSERS.contains(&n.as_str())
        })
        .map(|(_, n)| n)
        .collect();
    assert!(other.is_empty(), "{} also exports {other:?}", lib.display());
}

/// The interposers a compute runs (and the callbacks they reach) sit together in the preload
/// library's `.text.hot` section, a few pages that its shedding keeps cached while the rest
/// of the library leaves the page cache after a load (src/ffi/shed.rs).
#[test]
fn libdcgguf_preload_so_keeps_the_per_compute_code_in_a_few_pages() {
    let lib = llama_support::libdcgguf_preload();
    let o = Command::new("readelf")
        .args(["-SW"])
        .arg(&lib)
        .output()
        .unwrap_or_else(|e| panic!("cannot run readelf (binutils): {e}"));
    assert!(o.status.success(), "readelf -SW {}", lib.display());
    let sections = String::from_utf8_lossy(&o.stdout);
    // "[Nr] Name Type Address Off Size ES Flg Lk Inf Al"
    let hot = sections
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let at = f.iter().position(|w| *w == ".text.hot")?;
            let hex = |i: usize| u64::from_str_radix(f.get(at + i)?, 16).ok();
            Some((hex(2)?, hex(4)?))
        })
        .unwrap_or_else(|| panic!("{} has no .text.hot section:\n{sections}", lib.display()));
    let (addr, size) = hot;
    assert!(
        size <= 16 << 10,
        ".text.hot holds {size} bytes: more than the per-compute path"
    );
    let o = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .unwrap_or_else(|e| panic!("cannot run nm (binutils): {e}"));
    let text = String::from_utf8_lossy(&o.stdout);
    for name in [
        "llama_decode",
        "llama_encode",
        "llama_process",
        "posix_memalign",
        "fread",
        "fseek",
        "fseeko",
        "ggml_backend_tensor_set",
    ] {
        let at = text
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2).map(|n| n.split('@').next().unwrap_or(n)) == Some(name))
                    .then(|| u64::from_str_radix(f[0], 16).ok())?
            })
            .unwrap_or_else(|| panic!("{} does not define {name}", lib.display()));
        assert!(
            (addr..addr + size).contains(&at),
            "{name} at {at:#x} lies outside .text.hot ({addr:#x}, {size} bytes)"
        );
    }
}
