//! Single-bit flips across every region of a real DC-GGUF file (format 2): each flipped file
//! is opened with `DcFile::open` and the whole original is read back through `read_at` in
//! 8 MiB pieces, exactly as the llama.cpp load stream serves it. Every flip must either fail
//! with an error that names the region it hit, or read back bytes identical to the original.
//! A read that succeeds with different bytes (a silent change) fails the test.
//!
//! The flips are stratified over the region kinds (the DC file's own GGUF header, `dc.index`,
//! the original-header blob, the gap blob, tensor chunks, alignment padding), at random bit
//! positions from a fixed seed. Without the MiniLM models (build.rs), or in a debug build
//! (unoptimized builds decode ~10x slower), the tests are reported as `ignored, needs ...`
//! (`cargo test -- --include-ignored` runs them anyway).

mod common;
mod dc_regions;

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::Instant;

use common::*;
use dc_regions::*;
use dcgguf::dc::{CompressOptions, DcError, DcFile, compress_file};

/// Piece size of the reads (what the llama.cpp cookie stream asks for at a time).
const PIECE: usize = 8 << 20;

/// One flip: bit `bit` of byte `at`.
#[derive(Clone, Debug)]
struct Flip {
    at: u64,
    bit: u8,
    kind: Kind,
}

/// How many flips each kind gets; chunks take the rest of `total`.
struct Plan {
    total: usize,
    dc_header: usize,
    index: usize,
    blob: usize,
    padding: usize,
}

fn choose_flips(map: &[(Range<u64>, Kind)], plan: &Plan, seed: u64) -> Vec<Flip> {
    let mut rng = Rng::new(seed);
    let mut flips = Vec::new();
    let mut add = |n: usize, rng: &mut Rng, pick: &dyn Fn(&Kind) -> bool| {
        for _ in 0..n {
            if let Some((at, kind)) = pick_byte(map, rng, pick) {
                let bit = rng.below(8) as u8;
                flips.push(Flip { at, bit, kind });
            }
        }
    };
    add(plan.dc_header, &mut rng, &|k| *k == Kind::DcHeader);
    add(plan.index, &mut rng, &|k| *k == Kind::Index);
    add(plan.blob, &mut rng, &|k| *k == Kind::HeaderBlob);
    add(plan.blob, &mut rng, &|k| *k == Kind::GapBlob);
    add(plan.padding, &mut rng, &|k| matches!(k, Kind::Padding(_)));
    // Chunks: a random byte of a random chunk of a random tensor.
    let chunks = chunks_by_tensor(map);
    assert!(!chunks.is_empty(), "no chunks in the region map");
    while flips.len() < plan.total {
        let (at, kind) = pick_chunk_byte(&chunks, &mut rng);
        let bit = rng.below(8) as u8;
        flips.push(Flip { at, bit, kind });
    }
    flips
}

/// Whether `e` is an error that names the region `kind` (tensor names from `names`).
fn names_region(kind: &Kind, e: &DcError, names: &[String]) -> bool {
    let msg = e.to_string();
    match kind {
        Kind::DcHeader => match e {
            DcError::CorruptDcHeader | DcError::DamagedDc { .. } => true,
            // A flipped dc.format_version (3 -> 7, 11, ...) is read before anything can be
            // checked against the index (the version decides how the index is read).
            DcError::UnsupportedVersion(v) => *v != dcgguf::dc::FORMAT_VERSION,
            // A flip in the dc.index tensor info moves or resizes the index.
            DcError::BadIndex { .. } => msg.contains("dc.index"),
            _ => false,
        },
        Kind::Index => matches!(e, DcError::BadIndex { .. }) && msg.contains("dc.index"),
        Kind::HeaderBlob => {
            matches!(
                e,
                DcError::CorruptBlob {
                    blob: "original header",
                    ..
                }
            ) && msg.contains("original header")
        }
        Kind::GapBlob => {
            matches!(e, DcError::CorruptBlob { blob: "gap", .. }) && msg.contains("gap")
        }
        Kind::Chunk { tensor, chunk } => match e {
            DcError::Corrupt {
                tensor: t,
                chunk: c,
                ..
            } => {
                *t == names[*tensor]
                    && *c == *chunk as u64
                    && msg.contains(&format!("{:?}", names[*tensor]))
                    && msg.contains(&format!("chunk {chunk}"))
            }
            _ => false,
        },
        Kind::Padding(_) => false,
    }
}

/// Opens `path` and reads the whole original through `read_at` in [`PIECE`]s, comparing with
/// `original`. `Ok(Err(what))` is a silent change: success with bytes that differ.
fn open_and_read(
    path: &Path,
    original: &[u8],
    buf: &mut [u8],
) -> Result<Result<(), String>, DcError> {
    let dc = DcFile::open(path)?;
    read_all(&dc, original, buf)
}

/// Reads the whole original from `dc` through `read_at` in pieces of `buf`'s size.
fn read_all(dc: &DcFile, original: &[u8], buf: &mut [u8]) -> Result<Result<(), String>, DcError> {
    if dc.original_size() != original.len() as u64 {
        return Ok(Err(format!(
            "opened with original size {} instead of {}",
            dc.original_size(),
            original.len()
        )));
    }
    let mut pos = 0usize;
    loop {
        let n = dc.read_at(pos as u64, buf)?;
        if n == 0 {
            break;
        }
        if pos + n > original.len() {
            return Ok(Err(format!("read past the end: {n} bytes at {pos}")));
        }
        if let Some(k) = buf[..n]
            .iter()
            .zip(&original[pos..pos + n])
            .position(|(a, b)| a != b)
        {
            return Ok(Err(format!(
                "read_at served a different byte at {}",
                pos + k
            )));
        }
        pos += n;
    }
    if pos != original.len() {
        return Ok(Err(format!(
            "read_at served {pos} of {} bytes",
            original.len()
        )));
    }
    Ok(Ok(()))
}

#[derive(Default)]
struct Tally {
    flips: usize,
    errors: usize,
    identical: usize,
    /// Distinct tensors hit (chunk rows).
    tensors: std::collections::BTreeSet<usize>,
    /// Errors by variant.
    variants: BTreeMap<String, usize>,
    /// Flips outside padding that changed nothing.
    harmless: Vec<String>,
}

/// The variant name of an error (`CorruptDcHeader`, `BadIndex`, ...).
fn variant(e: &DcError) -> String {
    let d = format!("{e:?}");
    d[..d.find([' ', '(', '{']).unwrap_or(d.len())].to_string()
}

fn run_model(file: &str, plan: Plan, seed: u64) {
    let src = shared_model(file);
    require_model(&src);
    let t0 = Instant::now();
    let original = std::fs::read(&src).unwrap();
    let dir = TempDir::new("bitflip");
    let path = dir.join("model.dc.gguf");
    compress_file(&src, &path, &CompressOptions::default(), &|_| {})
        .unwrap_or_else(|e| panic!("compress {}: {e}", src.display()));
    let pristine = std::fs::read(&path).unwrap();
    let dc = DcFile::open(&path).unwrap();
    assert_eq!(dc.format_version(), dcgguf::dc::FORMAT_VERSION);
    let names: Vec<String> = dc.original.tensors.iter().map(|t| t.name.clone()).collect();
    let map = region_map(&dc, pristine.len() as u64);
    drop(dc);
    let flips = choose_flips(&map, &plan, seed);
    assert_eq!(flips.len(), plan.total);
    eprintln!(
        "{file}: DC file {} bytes, {} regions, {} chunks; compressed in {:.1} s",
        pristine.len(),
        map.len(),
        map.iter()
            .filter(|(_, k)| matches!(k, Kind::Chunk { .. }))
            .count(),
        t0.elapsed().as_secs_f64()
    );
    for (r, k) in map.iter().filter(|(_, k)| !matches!(k, Kind::Chunk { .. })) {
        eprintln!("  [{:>10}, {:>10}) {}", r.start, r.end, k.row());
    }

    let t1 = Instant::now();
    // The file is flipped in place (one byte written, then restored): the DC file is
    // closed and unmapped between flips.
    let f = File::options().read(true).write(true).open(&path).unwrap();
    let mut buf = vec![0u8; PIECE];
    let mut tally: BTreeMap<&'static str, Tally> = BTreeMap::new();
    let mut failures = Vec::new();
    for (n, flip) in flips.iter().enumerate() {
        let byte = pristine[flip.at as usize];
        f.write_all_at(&[byte ^ (1 << flip.bit)], flip.at).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let read = open_and_read(&path, &original, &mut buf);
            // The llama.cpp hook opens with open_without_arrays: it checks the same header,
            // index and header blob, so it must fail exactly when open fails.
            let lean = DcFile::open_without_arrays(&path).map(|_| ());
            let opened = DcFile::open(&path).map(|_| ());
            (read, lean, opened)
        }));
        f.write_all_at(&[byte], flip.at).unwrap();
        let what = format!(
            "flip #{n}: bit {} of byte {} ({:?}{})",
            flip.bit,
            flip.at,
            flip.kind,
            match flip.kind {
                Kind::Chunk { tensor, .. } => format!(" = {:?}", names[tensor]),
                _ => String::new(),
            }
        );
        let row = tally.entry(flip.kind.row()).or_default();
        row.flips += 1;
        if let Kind::Chunk { tensor, .. } = flip.kind {
            row.tensors.insert(tensor);
        }
        let (read, lean, opened) = match outcome {
            Ok(o) => o,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{what}: PANIC: {msg}"));
                continue;
            }
        };
        match read {
            Ok(Ok(())) => {
                row.identical += 1;
                if !matches!(flip.kind, Kind::Padding(_)) {
                    row.harmless
                        .push(format!("bit {} of byte {}", flip.bit, flip.at));
                }
            }
            Ok(Err(silent)) => failures.push(format!("{what}: SILENT CHANGE: {silent}")),
            Err(e) => {
                row.errors += 1;
                *row.variants.entry(variant(&e)).or_default() += 1;
                if !names_region(&flip.kind, &e, &names) {
                    failures.push(format!("{what}: error does not name the region: {e}"));
                }
            }
        }
        match (&lean, &opened) {
            (Err(e), Err(_)) if !names_region(&flip.kind, e, &names) => failures.push(format!(
                "{what}: open_without_arrays error does not name the region: {e}"
            )),
            (Err(e), Ok(())) => failures.push(format!(
                "{what}: open succeeds but open_without_arrays fails: {e}"
            )),
            (Ok(()), Err(e)) => failures.push(format!(
                "{what}: open fails ({e}) but open_without_arrays succeeds"
            )),
            _ => {}
        }
    }
    let elapsed = t1.elapsed().as_secs_f64();
    drop(f);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        pristine,
        "the DC file was not restored after the flips"
    );

    let mut table = format!(
        "{file}: {} single-bit flips in {elapsed:.1} s ({:.1} ms each)\n  {:<28} | {:>5} | {:>6} | {:>9}\n",
        flips.len(),
        elapsed * 1e3 / flips.len() as f64,
        "region",
        "flips",
        "errors",
        "identical"
    );
    for (row, t) in &tally {
        table += &format!(
            "  {row:<28} | {:>5} | {:>6} | {:>9}{}\n",
            t.flips,
            t.errors,
            t.identical,
            if t.tensors.is_empty() {
                String::new()
            } else {
                format!("   ({} of {} tensors hit)", t.tensors.len(), names.len())
            }
        );
        if !t.variants.is_empty() {
            table += &format!("  {:<28}   errors: {:?}\n", "", t.variants);
        }
        if !t.harmless.is_empty() {
            table += &format!("  {:<28}   identical: {}\n", "", t.harmless.join(", "));
        }
    }
    eprint!("{table}");
    assert!(
        failures.is_empty(),
        "{} of {} flips failed:\n{}\n{table}",
        failures.len(),
        flips.len(),
        failures.join("\n")
    );
    // Not vacuous: every region that is read was really checked.
    for row in [
        "DC GGUF header",
        "dc.index",
        "original-header blob",
        "gap blob",
        "tensor chunks",
    ] {
        let t = tally
            .get(row)
            .unwrap_or_else(|| panic!("no flips in {row}\n{table}"));
        assert!(t.errors >= 1, "no flip in {row} was detected\n{table}");
    }
    // Padding is never read: its flips change nothing.
    for (row, t) in &tally {
        if row.contains("padding") {
            assert_eq!(t.identical, t.flips, "{row}\n{table}");
        }
    }
}

/// Flips per model: at least 1,000 in all.
const Q8_0_FLIPS: usize = 600;
const F16_FLIPS: usize = 500;
const _: () = assert!(Q8_0_FLIPS + F16_FLIPS >= 1000);

#[test]
#[cfg_attr(
    any(debug_assertions, not(dcgguf_minilm)),
    ignore = "needs a release build (cargo test --release) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn bitflips_q8_0_minilm() {
    run_model(
        "all-MiniLM-L6-v2-q8_0.gguf",
        Plan {
            total: Q8_0_FLIPS,
            dc_header: 110,
            index: 110,
            blob: 60,
            padding: 40,
        },
        0xB17F_11B5_0008,
    );
}

#[test]
#[cfg_attr(
    any(debug_assertions, not(dcgguf_minilm)),
    ignore = "needs a release build (cargo test --release) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn bitflips_f16_minilm() {
    run_model(
        "all-MiniLM-L6-v2-f16.gguf",
        Plan {
            total: F16_FLIPS,
            dc_header: 100,
            index: 100,
            blob: 50,
            padding: 30,
        },
        0xB17F_11B5_0016,
    );
}
