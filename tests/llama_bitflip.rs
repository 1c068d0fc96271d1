//! Single-bit flips in a real DC-GGUF file (MiniLM Q8_0), loaded by real `llama-embedding`
//! under `LD_PRELOAD=libdcgguf.so`: four flips in each region kind (the DC file's own GGUF
//! header, `dc.index`, the original-header blob, the gap blob, tensor chunks, padding), fixed
//! seed. Each run must either fail with a `dcgguf: error:` naming the region, or succeed with
//! the plain model's embedding, exactly. Never may llama.cpp get the damaged file as a plain
//! model ("unknown model architecture"). See tests/llama_support for the environment and the
//! ignored policy; tests/bitflip.rs does 1,100 flips through the library.

mod common;
mod dc_regions;
mod llama_support;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use common::{Rng, TempDir};
use dc_regions::*;
use dcgguf::dc::{CompressOptions, DcFile, compress_file};
use llama_support::{Llama, assert_exit, embedding_of, preload, require_llama, run};

const SENTENCE: &str = "A quick brown fox jumps over the lazy dog.";

/// llama-embedding as tests/llama_tools.rs runs it, with or without libdcgguf preloaded.
fn embedding_run(l: &Llama, model: &Path, dc: bool) -> Output {
    let mut c = Command::new(l.bin("llama-embedding"));
    c.env("LD_PRELOAD", preload(l, dc));
    if dc {
        c.env("DCGGUF_VERBOSE", "1");
    }
    c.env_remove("DCGGUF_THROTTLE_BPS");
    run(c
        .arg("-m")
        .arg(model)
        .args(["-t", "2", "--embd-output-format", "json", "-p", SENTENCE]))
}

/// Length of the llama.cpp log record (`0.00.000.686 I main: ...` up to and with its newline)
/// that starts `s`, if one does.
fn log_record_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    for group in 0..4 {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || (group < 3 && b.get(i) != Some(&b'.')) {
            return None;
        }
        if group < 3 {
            i += 1;
        }
    }
    if b.get(i) != Some(&b' ')
        || !b.get(i + 1).is_some_and(|c| c.is_ascii_uppercase())
        || b.get(i + 2) != Some(&b' ')
    {
        return None;
    }
    Some(s.find('\n').map_or(s.len(), |n| n + 1))
}

/// The `dcgguf: error:` messages in a tool's stderr, `path` replaced by `<path>`. llama.cpp's
/// log thread writes whole lines while libdcgguf's `eprintln!` writes a message in several
/// pieces, so a log line can land inside a message: log records are cut out first.
fn dcgguf_errors(stderr: &str, path: &str) -> Vec<String> {
    let mut clean = String::with_capacity(stderr.len());
    let mut rest = stderr;
    while let Some(c) = rest.chars().next() {
        if let Some(n) = log_record_len(rest) {
            rest = &rest[n..];
        } else {
            clean.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    clean
        .replace(path, "<path>")
        .lines()
        .filter_map(|l| l.find("dcgguf: error:").map(|i| l[i..].to_string()))
        .collect()
}

/// The words a `dcgguf: error:` line (the file's path removed) must hold for `kind`.
fn names_region(kind: &Kind, line: &str, names: &[String]) -> bool {
    match kind {
        Kind::DcHeader => ["header", "dc.", "DC-GGUF"]
            .iter()
            .any(|w| line.contains(w)),
        Kind::Index => line.contains("dc.index"),
        Kind::HeaderBlob => line.contains("original header"),
        Kind::GapBlob => line.contains("gap"),
        Kind::Chunk { tensor, chunk } => {
            line.contains(&format!("tensor {:?} chunk {chunk}:", names[*tensor]))
        }
        Kind::Padding(_) => false,
    }
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn llama_embedding_bitflips_fail_loudly_or_change_nothing() {
    let t = "llama_embedding_bitflips_fail_loudly_or_change_nothing";
    let (l, src) = (
        require_llama(t),
        llama_support::require_shared_model(t, "all-MiniLM-L6-v2-q8_0.gguf"),
    );
    let t0 = Instant::now();
    let dir = TempDir::new("llama-bitflip");
    // No region word in the path: the error lines are matched with the path removed anyway.
    let path = dir.join("m.gguf");
    compress_file(&src, &path, &CompressOptions::default(), &|_| {})
        .unwrap_or_else(|e| panic!("compress {}: {e}", src.display()));
    let pristine = std::fs::read(&path).unwrap();
    let dc = DcFile::open(&path).unwrap();
    let names: Vec<String> = dc.original.tensors.iter().map(|t| t.name.clone()).collect();
    let map = region_map(&dc, pristine.len() as u64);
    drop(dc);

    let plain_run = embedding_run(&l, &src, false);
    assert_exit(&plain_run, true, "llama-embedding on the original");
    let plain = embedding_of(&plain_run, "original");
    // The unflipped DC file loads and matches (so identical outcomes below mean something).
    let dc_run = embedding_run(&l, &path, true);
    assert_exit(&dc_run, true, "llama-embedding on the DC-GGUF");
    assert_eq!(
        plain,
        embedding_of(&dc_run, "DC-GGUF"),
        "DC embedding differs"
    );

    let mut rng = Rng::new(0x0001_1A3A_B17F);
    let mut flips: Vec<(u64, u8, Kind)> = Vec::new();
    let chunks = chunks_by_tensor(&map);
    let picks: [fn(&Kind) -> bool; 5] = [
        |k: &Kind| *k == Kind::DcHeader,
        |k: &Kind| *k == Kind::Index,
        |k: &Kind| *k == Kind::HeaderBlob,
        |k: &Kind| *k == Kind::GapBlob,
        |k: &Kind| matches!(k, Kind::Padding(_)),
    ];
    for pick in picks {
        for _ in 0..4 {
            if let Some((at, kind)) = pick_byte(&map, &mut rng, pick) {
                flips.push((at, rng.below(8) as u8, kind));
            }
        }
    }
    for _ in 0..4 {
        let (at, kind) = pick_chunk_byte(&chunks, &mut rng);
        flips.push((at, rng.below(8) as u8, kind));
    }
    assert!(flips.len() >= 20, "{} flips", flips.len());

    let f = File::options().read(true).write(true).open(&path).unwrap();
    let mut failures = Vec::new();
    let mut table = String::new();
    for (at, bit, kind) in &flips {
        let byte = pristine[*at as usize];
        f.write_all_at(&[byte ^ (1 << bit)], *at).unwrap();
        let o = embedding_run(&l, &path, true);
        f.write_all_at(&[byte], *at).unwrap();
        let what = format!(
            "bit {bit} of byte {at} ({}{})",
            kind.row(),
            match kind {
                Kind::Chunk { tensor, chunk } => format!(" {:?} chunk {chunk}", names[*tensor]),
                _ => String::new(),
            }
        );
        let err = String::from_utf8_lossy(&o.stderr);
        let dc_errors = dcgguf_errors(&err, &path.display().to_string());
        let outcome;
        if err.contains("unknown model architecture") {
            outcome = "llama.cpp saw the DC file as a plain model".to_string();
            failures.push(format!("{what}: {outcome}\n{err}"));
        } else if o.status.success() {
            let ok = err.contains("dcgguf: loading")
                && dc_errors.is_empty()
                && embedding_of(&o, &what) == plain;
            outcome = if ok {
                "exit 0, identical embedding".to_string()
            } else {
                "exit 0, DIFFERENT embedding or no DC load".to_string()
            };
            if !ok {
                failures.push(format!("{what}: {outcome}\n{err}"));
            }
        } else {
            use std::os::unix::process::ExitStatusExt;
            let named = dc_errors.iter().find(|l| names_region(kind, l, &names));
            outcome = format!(
                "exit {:?}{}: {}",
                o.status.code(),
                o.status
                    .signal()
                    .map(|s| format!(" (signal {s})"))
                    .unwrap_or_default(),
                named
                    .or(dc_errors.first())
                    .cloned()
                    .unwrap_or_else(|| "NO dcgguf error".into())
            );
            if named.is_none() || o.status.signal().is_some() {
                failures.push(format!("{what}: {outcome}\nstderr:\n{err}"));
            }
        }
        table += &format!("  {what}: {outcome}\n");
    }
    drop(f);
    assert_eq!(std::fs::read(&path).unwrap(), pristine, "file not restored");
    eprint!(
        "{} flips through llama-embedding in {:.1} s:\n{table}",
        flips.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} flips failed:\n{}",
        failures.len(),
        flips.len(),
        failures.join("\n\n")
    );
    // Not vacuous: each region that is read gave at least one dcgguf error.
    for row in [
        "DC GGUF header",
        "dc.index",
        "original-header blob",
        "gap blob",
        "tensor chunks",
    ] {
        assert!(
            table
                .lines()
                .any(|l| l.contains(row) && l.contains("dcgguf: error:")),
            "no flip in {row} gave a dcgguf error:\n{table}"
        );
    }
}
