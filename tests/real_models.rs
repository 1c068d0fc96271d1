//! The real test models: compress -> decompress is bit-identical and the compression ratio
//! meets the project's floor for each. A test whose model build.rs did not find is reported
//! as `ignored, needs ...` (`scripts/fetch-models.sh` fetches SmolLM2 and converts MiniLM; a
//! shared models folder, where there is one, is used for MiniLM first). Unoptimized builds
//! compress about 10x slower (zstd itself is built at -O0), which would take these tests to
//! minutes: debug builds ignore them too (`cargo test -- --include-ignored` runs them anyway).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};

use common::*;
use dcgguf::codec::{EncodeOptions, LEVEL_DEFAULT, LEVEL_MAX, Transform};
use dcgguf::dc::{CompressOptions, DcFile, decompress_file};
use dcgguf::gguf::{ArrayValue, GgufHeader, Value};
use dcgguf::io::map_readonly;

/// Byte-for-byte comparison of two files, streamed.
fn same_file(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 22], vec![0u8; 1 << 22]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

fn check_model(path: PathBuf, floor: f64) {
    require_model(&path);
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let dir = TempDir::new("real");
    let dc_path = dir.join("model.dc.gguf");
    let back = dir.join("model.gguf");

    let report = compress(&path, &dc_path, &CompressOptions::default());
    let original_len = std::fs::metadata(&path).unwrap().len();
    let dc_len = std::fs::metadata(&dc_path).unwrap().len();
    assert_eq!(report.original_bytes, original_len);
    assert_eq!(report.output_bytes, dc_len);
    let ratio = original_len as f64 / dc_len as f64;
    eprintln!("{name}: {original_len} -> {dc_len} bytes, ratio {ratio:.4} (floor {floor})");
    assert!((report.ratio - ratio).abs() < 1e-9);
    assert!(
        ratio >= floor,
        "{name}: ratio {ratio:.4} is below the floor {floor}"
    );

    decompress_file(&dc_path, &back, false, &|_| {}).unwrap();
    assert!(same_file(&path, &back), "{name}: decompressed file differs");
    std::fs::remove_file(&back).unwrap();

    let (_f, original) = map_readonly(&path).unwrap();
    let header = GgufHeader::parse(&original).unwrap();
    let dc = DcFile::open(&dc_path).unwrap();
    assert_eq!(dc.original, header, "{name}: stored header");
    assert_eq!(
        dc.dc_header
            .get("general.architecture")
            .and_then(Value::as_str),
        Some("dcgguf")
    );
    assert_eq!(
        dc.dc_header.get("dc.original.general.architecture"),
        header.get("general.architecture")
    );
    // The vocabulary is moved out of the clear metadata.
    match dc.dc_header.get("dc.moved_keys") {
        Some(Value::Array(ArrayValue::Strings(keys))) => assert!(
            keys.iter().any(|k| k == b"tokenizer.ggml.tokens"),
            "{name}: {keys:?}"
        ),
        other => panic!("{name}: dc.moved_keys is {other:?}"),
    }
    for i in 0..dc.tensor_count() {
        let v = dc.tensor_view(i);
        assert_eq!(
            v.transform,
            Transform::default_for(dc.tensor_info(i).ty).name()
        );
    }

    // The llama.cpp hook's open keeps the same tensors and scalars, and no arrays.
    let lean = DcFile::open_without_arrays(&dc_path).unwrap();
    assert_eq!(lean.original.tensors, header.tensors, "{name}");
    let scalars = |h: &GgufHeader| {
        h.kvs
            .iter()
            .filter(|kv| !matches!(kv.value, Value::Array(_)))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(lean.original.kvs, scalars(&header), "{name}");
    assert!(
        header.kvs.len() > lean.original.kvs.len(),
        "{name}: no arrays?"
    );
    assert_eq!(lean.original_size(), dc.original_size());

    // Random access serves the original bytes.
    let mut rng = Rng::new(original_len);
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..40 {
        let off = rng.below(original_len);
        let len = rng.below(buf.len() as u64) as usize;
        let n = dc.read_at(off, &mut buf[..len]).unwrap();
        assert_eq!(n as u64, len.min((original_len - off) as usize) as u64);
        assert!(
            buf[..n] == original[off as usize..off as usize + n],
            "{name}: read_at({off}, {len})"
        );
    }
}

#[test]
#[cfg_attr(
    any(debug_assertions, not(dcgguf_minilm)),
    ignore = "needs a release build (cargo test --release) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn minilm_f32() {
    check_model(shared_model("all-MiniLM-L6-v2-f32.gguf"), 1.20);
}

#[test]
#[cfg_attr(
    any(debug_assertions, not(dcgguf_minilm)),
    ignore = "needs a release build (cargo test --release) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn minilm_f16() {
    check_model(shared_model("all-MiniLM-L6-v2-f16.gguf"), 1.19);
}

#[test]
#[cfg_attr(
    any(debug_assertions, not(dcgguf_minilm)),
    ignore = "needs a release build (cargo test --release) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn minilm_bf16() {
    check_model(shared_model("all-MiniLM-L6-v2-bf16.gguf"), 1.50);
}

#[test]
#[cfg_attr(
    any(debug_assertions, not(dcgguf_minilm)),
    ignore = "needs a release build (cargo test --release) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn minilm_q8_0() {
    check_model(shared_model("all-MiniLM-L6-v2-q8_0.gguf"), 1.075);
}

#[test]
#[cfg_attr(
    any(debug_assertions, not(dcgguf_smollm2)),
    ignore = "needs a release build (cargo test --release) and SmolLM2 (scripts/fetch-models.sh)"
)]
fn smollm2_q4_1() {
    check_model(fetched_model("SmolLM2-135M-Instruct.Q4_1.gguf"), 1.11);
}

/// Tensor bytes stored at `level`, after checking the file decompresses to the original.
fn stored_at(path: &Path, level: i32) -> u64 {
    let dir = TempDir::new("levels");
    let dc_path = dir.join("model.dc.gguf");
    let opts = CompressOptions {
        encode: EncodeOptions {
            level,
            ..EncodeOptions::default()
        },
        ..CompressOptions::default()
    };
    compress(path, &dc_path, &opts);
    let back = dir.join("model.gguf");
    decompress_file(&dc_path, &back, false, &|_| {}).unwrap();
    assert!(
        same_file(path, &back),
        "level {level}: decompressed file differs"
    );
    DcFile::open(&dc_path)
        .unwrap()
        .summary()
        .tensor_stored_bytes
}

/// The default level's promise (src/codec/chunk.rs, LEVEL_DEFAULT): tensors within 0.3% of
/// level 19 (shallow search, the default before it); and `max` is never larger than the
/// default.
fn check_levels(path: PathBuf) {
    require_model(&path);
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let (default, max, l19) = (
        stored_at(&path, LEVEL_DEFAULT),
        stored_at(&path, LEVEL_MAX),
        stored_at(&path, 19),
    );
    eprintln!("{name}: tensors stored: default {default}, max {max}, level 19 {l19}");
    assert!(
        default as f64 <= l19 as f64 * 1.003,
        "{name}: default {default} is more than 0.3% above level 19's {l19}"
    );
    assert!(max <= default, "{name}: max {max} > default {default}");
}

#[test]
#[cfg_attr(
    any(debug_assertions, not(dcgguf_minilm)),
    ignore = "needs a release build (cargo test --release) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn levels_on_minilm_q8_0_bf16_f32() {
    // The three types where the default's fast match finder does worst before its retry.
    for ty in ["q8_0", "bf16", "f32"] {
        check_levels(shared_model(&format!("all-MiniLM-L6-v2-{ty}.gguf")));
    }
}

#[test]
#[cfg_attr(
    any(debug_assertions, not(dcgguf_smollm2)),
    ignore = "needs a release build (cargo test --release) and SmolLM2 (scripts/fetch-models.sh)"
)]
fn levels_on_smollm2_q4_1() {
    check_levels(fetched_model("SmolLM2-135M-Instruct.Q4_1.gguf"));
}

#[test]
fn absent_model_is_a_failure() {
    // A test that needs a model is ignored when build.rs did not find it; reaching the model
    // without it (it vanished, or --include-ignored) fails rather than passing.
    let missing = PathBuf::from("/nonexistent/dcgguf-test-model.gguf");
    let res = std::panic::catch_unwind(|| {
        require_model(&missing);
    });
    assert!(res.is_err(), "an absent model must fail the test");
}
