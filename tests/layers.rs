//! The library's layers run one way: each module may use only the modules below it.
//!
//! ```text
//! io -> gguf -> codec -> dc -> {cost, quant} -> {llama (load, memory budget), report} -> ffi
//! ```
//!
//! (`io` is the OS plumbing; the CLI in src/main.rs and src/cli/ and the preload library in
//! preload/ sit on top and may use anything.) This test reads every source file of each
//! layer and fails on a `crate::<module>` path that points up or sideways.

use std::path::Path;

/// Bottom first; modules on one line are peers that must not use each other.
const LAYERS: &[&[&str]] = &[
    &["io"],
    &["gguf"],
    &["codec"],
    &["dc"],
    &["cost", "quant"],
    &["llama", "report"],
    &["ffi"],
];

fn level(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `crate::X` paths used in `src` (comments included: a doc link up is a dependency too).
fn uses(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find("crate::") {
        let tail = &rest[at + 7..];
        let end = tail
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // `$crate::` in macros and `dcgguf_crate::` are not ours.
        let before = rest[..at].chars().last();
        if !matches!(before, Some('$' | '_')) && end > 0 {
            out.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn no_module_uses_a_module_above_or_beside_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    let mut checked = 0;
    for layer in LAYERS.iter().flat_map(|l| l.iter()) {
        let mut files = Vec::new();
        sources(&src.join(layer), &mut files);
        assert!(!files.is_empty(), "src/{layer}/ has no sources");
        let mine = level(layer).unwrap();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for used in uses(&text) {
                checked += 1;
                match level(&used) {
                    Some(l) if l < mine || used == *layer => {}
                    // Macros exported at the crate root (`crate::log_line!`) live in io.
                    None if used == "log_line" => {}
                    _ => violations.push(format!(
                        "{} uses crate::{used}",
                        f.strip_prefix(&src).unwrap().display()
                    )),
                }
            }
        }
    }
    assert!(
        checked > 50,
        "found only {checked} crate paths: the scan is broken"
    );
    assert!(
        violations.is_empty(),
        "arrows pointing up or sideways:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scan_sees_an_upward_use() {
    assert_eq!(
        uses("use crate::llama::x; $crate::io::f(); // crate::ffi"),
        ["llama", "ffi"]
    );
}
