//! The `dcgguf` binary: every subcommand, its JSON output, its exit codes (0 ok, 1 I/O,
//! 2 usage, 3 invalid input, 4 corrupt data or mismatch, 5 refused to overwrite), split models,
//! and that inputs are never modified and failed runs leave no temporary files.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use common::*;
use dcgguf::dc::DcFile;
use dcgguf::gguf::{GgmlType, GgufHeader, Value, ValueType};
use serde_json::Value as Json;
use xxhash_rust::xxh3::xxh3_64;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Json {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    fn ok(self) -> Out {
        assert_eq!(
            self.code, 0,
            "stderr: {}\nstdout: {}",
            self.stderr, self.stdout
        );
        self
    }
}

fn dcgguf<I, S>(args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_dcgguf"))
        .args(args)
        .output()
        .expect("run dcgguf");
    Out {
        code: out.status.code().expect("exited normally, not by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn hash(p: &Path) -> u64 {
    xxh3_64(&std::fs::read(p).unwrap())
}

/// Asserts exit code `code`, an error line on stderr, and (with --json) a JSON error object.
fn expect_fail(args: &[&OsStr], code: i32) -> Out {
    let out = dcgguf(args);
    assert_eq!(out.code, code, "args {args:?}\nstderr: {}", out.stderr);
    assert!(out.stderr.contains("error"), "stderr: {}", out.stderr);
    let mut with_json: Vec<&OsStr> = vec![OsStr::new("--json")];
    with_json.extend_from_slice(args);
    let j = dcgguf(&with_json);
    assert_eq!(j.code, code);
    let v = j.json();
    assert_eq!(v["exit_code"], code, "{v}");
    assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    out
}

macro_rules! os {
    ($($x:expr),* $(,)?) => { &[$(OsStr::new($x)),*][..] };
}

macro_rules! oss {
    ($($x:expr),* $(,)?) => { vec![$(std::ffi::OsString::from($x)),*] };
}

#[test]
fn every_subcommand_with_json() {
    let dir = TempDir::new("cli-json");
    let original = standard_model(31).build();
    let input = dir.write("model.gguf", &original);
    let dc = dir.join("model.dc.gguf");
    let back = dir.join("back.gguf");
    let n_tensors = GgufHeader::parse(&original).unwrap().tensors.len();
    let before = hash(&input);

    let v = dcgguf(os!["--json", "compress", &input, &dc, "--chunk-size", "4k"])
        .ok()
        .json();
    assert_eq!(v["command"], "compress");
    let f = &v["files"][0];
    assert_eq!(v["files"].as_array().unwrap().len(), 1);
    assert_eq!(f["original_bytes"], original.len() as u64);
    assert_eq!(f["output_bytes"], std::fs::metadata(&dc).unwrap().len());
    assert_eq!(f["tensors"], n_tensors as u64);
    assert!(
        f["chunks"].as_u64().unwrap() > n_tensors as u64,
        "4k chunks split some tensors"
    );
    assert!(f["ratio"].as_f64().unwrap() > 1.0, "{f}");
    assert!(f["seconds"].as_f64().unwrap() >= 0.0);
    assert!(Path::new(f["output"].as_str().unwrap()).ends_with("model.dc.gguf"));
    assert_eq!(hash(&input), before, "compress modified its input");

    let v = dcgguf(os!["--json", "inspect", &dc, "--metadata"])
        .ok()
        .json();
    assert_eq!(v["command"], "inspect");
    assert_eq!(v["original_bytes"], original.len() as u64);
    assert_eq!(v["file_bytes"], std::fs::metadata(&dc).unwrap().len());
    let tensors = v["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), n_tensors);
    let raw: u64 = tensors
        .iter()
        .map(|t| t["raw_bytes"].as_u64().unwrap())
        .sum();
    let stored: u64 = tensors
        .iter()
        .map(|t| t["stored_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(v["tensor_raw_bytes"], raw);
    assert_eq!(v["tensor_stored_bytes"], stored);
    for t in tensors {
        for key in [
            "name",
            "ggml_type",
            "shape",
            "ratio",
            "transform",
            "chunks",
            "raw_chunks",
            "entropy_bound_bytes",
        ] {
            assert!(!t[key].is_null(), "tensor field {key} missing: {t}");
        }
    }
    assert_eq!(tensors[0]["ggml_type"], "F32");
    let meta = v["metadata"].as_array().expect("--metadata lists metadata");
    // The original metadata, not the DC file's: the real architecture and the moved keys.
    assert!(
        meta.iter()
            .any(|kv| kv[0] == "general.architecture" && kv[1] == "\"llama\""),
        "{meta:?}"
    );
    assert!(meta.iter().any(|kv| kv[0] == "tokenizer.ggml.tokens"));

    let v = dcgguf(os!["--json", "verify", &dc]).ok().json();
    assert_eq!(
        (v["command"].clone(), v["ok"].clone()),
        ("verify".into(), true.into())
    );
    assert_eq!(v["original_bytes"], original.len() as u64);
    assert!(v["against"].is_null());
    let v = dcgguf(os!["--json", "verify", &dc, "--against", &input])
        .ok()
        .json();
    assert_eq!(v["ok"], true);
    assert!(v["against"].as_str().unwrap().ends_with("model.gguf"));

    let dc_hash = hash(&dc);
    let v = dcgguf(os!["--json", "decompress", &dc, &back]).ok().json();
    assert_eq!(v["command"], "decompress");
    assert_eq!(v["files"][0]["bytes"], original.len() as u64);
    assert!(
        std::fs::read(&back).unwrap() == original,
        "decompressed file differs"
    );
    assert_eq!(hash(&dc), dc_hash, "decompress modified its input");

    let v = dcgguf(os!["--json", "bench", &dc, "--seconds", "0.05"])
        .ok()
        .json();
    assert_eq!(v["command"], "bench");
    let r = &v["result"];
    // Decoded volume: all tensor bytes, or (since bench mirrors decompress) the whole file.
    let decoded = r["decoded_bytes"].as_u64().unwrap();
    assert!(decoded == raw || decoded == original.len() as u64, "{r}");
    assert!(r["threads"].as_u64().unwrap() >= 1);
    for k in [
        "decode_gbps_1_thread",
        "decode_gbps_n_threads",
        "memcpy_gbps_1_thread",
    ] {
        assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {r}");
    }
    let paired = &r["decode_over_memcpy_1_thread"];
    let at = |k: &str| paired[k].as_f64().unwrap();
    assert!(
        0.0 < at("min") && at("min") <= at("median") && at("median") <= at("max"),
        "{paired}"
    );
    assert_eq!(paired["pairs"].as_u64(), Some(9), "{paired}");
    assert!(dir.tmp_leftovers().is_empty());
}

#[test]
fn text_output_and_global_flags() {
    let dir = TempDir::new("cli-text");
    let original = small_model(32).build();
    let input = dir.write("m.gguf", &original);
    let dc = dir.join("m.dc.gguf");
    let out = dcgguf(os![
        "-q",
        "--threads",
        "1",
        "compress",
        &input,
        &dc,
        "--level",
        "3"
    ])
    .ok();
    assert!(out.stdout.contains("ratio"), "{}", out.stdout);
    assert!(out.stdout.contains("m.dc.gguf"));
    let out = dcgguf(os!["inspect", &dc]).ok();
    assert!(
        out.stdout.contains("transform") && out.stdout.contains("total: 4 tensors"),
        "{}",
        out.stdout
    );
    for name in ["a.f16", "b.q8_0", "c.q4_k", "d.f32"] {
        assert!(out.stdout.contains(name), "{}", out.stdout);
    }
    let out = dcgguf(os!["inspect", "--metadata", &dc]).ok();
    assert!(
        out.stdout.contains("general.name = \"small\""),
        "{}",
        out.stdout
    );
    let out = dcgguf(os!["verify", &dc, "--against", &input]).ok();
    assert!(
        out.stdout.contains("ok") && out.stdout.contains("identical"),
        "{}",
        out.stdout
    );
    let out = dcgguf(os!["bench", &dc, "--seconds", "0.05"]).ok();
    assert!(out.stdout.contains("GB/s"), "{}", out.stdout);
    let back = dir.join("b.gguf");
    let out = dcgguf(os!["decompress", &dc, &back]).ok();
    assert!(out.stdout.contains("checksums ok"));
    assert!(std::fs::read(&back).unwrap() == original);
    let out = dcgguf(os!["--version"]).ok();
    assert!(out.stdout.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn exit_code_3_for_invalid_inputs() {
    let dir = TempDir::new("cli-3");
    let text = dir.write("notes.txt", b"this is not a GGUF file at all\n");
    let out = dir.join("out.dc.gguf");
    let msg = expect_fail(os!["compress", &text, &out], 3);
    assert!(
        msg.stderr.contains("notes.txt") && msg.stderr.contains("GGUF"),
        "{}",
        msg.stderr
    );
    assert!(!out.exists() && dir.tmp_leftovers().is_empty());
    for cmd in ["inspect", "verify", "bench"] {
        expect_fail(os![cmd, &text], 3);
    }
    expect_fail(os!["decompress", &text, &dir.join("x.gguf")], 3);
    let empty = dir.write("empty.gguf", b"");
    expect_fail(os!["compress", &empty, &out], 3);

    // A plain GGUF is not a DC file; a DC file is not compressed twice.
    let plain = dir.write("plain.gguf", &small_model(33).build());
    let out = expect_fail(os!["verify", &plain], 3);
    assert!(out.stderr.contains("not a DC-GGUF"), "{}", out.stderr);
    let dc = dir.join("plain.dc.gguf");
    dcgguf(os!["compress", &plain, &dc]).ok();
    let out = expect_fail(os!["compress", &dc, &dir.join("twice.dc.gguf")], 3);
    assert!(out.stderr.contains("already a DC-GGUF"), "{}", out.stderr);
    // Truncated input.
    let bytes = small_model(33).build();
    let cut = dir.write("cut.gguf", &bytes[..bytes.len() / 2]);
    expect_fail(os!["compress", &cut, &dir.join("cut.dc.gguf")], 3);
    assert!(dir.tmp_leftovers().is_empty());
}

#[test]
fn exit_code_4_for_corrupt_data() {
    let dir = TempDir::new("cli-4");
    let original = small_model(34).build();
    let input = dir.write("m.gguf", &original);
    let dc_path = dir.join("m.dc.gguf");
    dcgguf(os!["compress", &input, &dc_path, "--chunk-size", "256"]).ok();
    let (range, name) = {
        let dc = DcFile::open(&dc_path).unwrap();
        let i = dc.find_tensor("a.f16").unwrap();
        (chunk_range(&dc, i, 2), dc.tensor_info(i).name.clone())
    };
    let mut bytes = std::fs::read(&dc_path).unwrap();
    bytes[(range.start + range.end) as usize / 2] ^= 0x5A;
    let bad = dir.write("bad.dc.gguf", &bytes);
    let out = expect_fail(os!["verify", &bad], 4);
    assert!(
        out.stderr.contains(&name) && out.stderr.contains("chunk 2"),
        "{}",
        out.stderr
    );
    expect_fail(os!["verify", &bad, "--against", &input], 4);
    let restored = dir.join("restored.gguf");
    expect_fail(os!["decompress", &bad, &restored], 4);
    assert!(!restored.exists(), "partial output left behind");
    assert_eq!(
        dir.tmp_leftovers(),
        Vec::<String>::new(),
        "temp files left behind"
    );
    expect_fail(os!["bench", &bad, "--seconds", "0.01"], 4);

    // A damaged index is corrupt data too.
    let mut bytes = std::fs::read(&dc_path).unwrap();
    let idx = dc_index_range(&DcFile::open(&dc_path).unwrap());
    bytes[idx.start as usize + 20] ^= 1;
    let bad_index = dir.write("bad-index.dc.gguf", &bytes);
    let out = expect_fail(os!["verify", &bad_index], 4);
    assert!(out.stderr.contains("dc.index"), "{}", out.stderr);

    // verify --against an original that differs in one byte, or in length.
    let mut other = original.clone();
    let k = other.len() - 2;
    other[k] ^= 1;
    let other = dir.write("other.gguf", &other);
    let out = expect_fail(os!["verify", &dc_path, "--against", &other], 4);
    assert!(
        out.stderr
            .contains(&format!("first difference at byte {k}")),
        "{}",
        out.stderr
    );
    let shorter = dir.write("short.gguf", &original[..original.len() - 1]);
    expect_fail(os!["verify", &dc_path, "--against", &shorter], 4);
}

#[test]
fn exit_code_5_and_force() {
    let dir = TempDir::new("cli-5");
    let original = small_model(35).build();
    let input = dir.write("m.gguf", &original);
    let dc = dir.write("m.dc.gguf", b"precious");
    let out = expect_fail(os!["compress", &input, &dc], 5);
    assert!(out.stderr.contains("--force"), "{}", out.stderr);
    assert_eq!(
        std::fs::read(&dc).unwrap(),
        b"precious",
        "existing output touched"
    );
    assert!(dir.tmp_leftovers().is_empty());

    dcgguf(os!["compress", "--force", &input, &dc]).ok();
    DcFile::open(&dc).expect("--force replaced the file with a DC file");

    let back = dir.write("back.gguf", b"old");
    expect_fail(os!["decompress", &dc, &back], 5);
    assert_eq!(std::fs::read(&back).unwrap(), b"old");
    dcgguf(os!["decompress", &dc, &back, "--force"]).ok();
    assert!(std::fs::read(&back).unwrap() == original);

    // Output that is the input: refused even with --force, input untouched.
    let before = hash(&input);
    expect_fail(os!["compress", "--force", &input, &input], 5);
    let dc_before = hash(&dc);
    expect_fail(os!["decompress", "--force", &dc, &dc], 5);
    assert_eq!((hash(&input), hash(&dc)), (before, dc_before));
    assert!(dir.tmp_leftovers().is_empty());
}

#[test]
fn exit_codes_1_and_2() {
    let dir = TempDir::new("cli-12");
    let input = dir.write("m.gguf", &small_model(36).build());
    // Missing input, missing output directory: I/O errors.
    expect_fail(
        os![
            "compress",
            &dir.join("missing.gguf"),
            &dir.join("o.dc.gguf")
        ],
        1,
    );
    expect_fail(
        os!["compress", &input, &dir.join("no/such/dir/o.dc.gguf")],
        1,
    );
    expect_fail(os!["verify", &dir.join("missing.dc.gguf")], 1);
    // Usage errors come from the argument parser: exit 2, no JSON.
    for args in [
        os![],
        os!["frobnicate"],
        os!["compress", &input],
        os![
            "compress",
            &input,
            &dir.join("o.dc.gguf"),
            "--chunk-size",
            "0"
        ],
        os![
            "compress",
            &input,
            &dir.join("o.dc.gguf"),
            "--chunk-size",
            "5G"
        ],
        os![
            "compress",
            &input,
            &dir.join("o.dc.gguf"),
            "--chunk-size",
            "12q"
        ],
        os!["bench", &input, "--seconds", "soon"],
    ] {
        let out = dcgguf(args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    }
    assert!(!dir.join("o.dc.gguf").exists());
}

/// Quantization options that conflict, or that would be silently ignored, are refused
/// before the covariance or imatrix file is read (those here do not exist): exit 2, a message
/// naming the options, no output.
#[test]
fn conflicting_or_ignored_quant_options_are_refused() {
    let dir = TempDir::new("cli-quant-usage");
    let input = dir.write("m.gguf", &small_model(37).build());
    let output = dir.join("o.dc.gguf");
    let (cov, imatrix, text) = (
        dir.join("missing.cov.gguf"),
        dir.join("missing.imatrix.gguf"),
        dir.join("missing.txt"),
    );
    let calib_eq = {
        let mut a = std::ffi::OsString::from("--calib=");
        a.push(&text);
        a
    };
    // (extra arguments after `compress --quantize int8`, pieces the error must contain)
    let cases: Vec<(Vec<std::ffi::OsString>, Vec<&str>)> = vec![
        (oss!["--gptq", &cov, "--calib"], vec!["--calib", "--gptq"]),
        (oss!["--gptq", &cov, &calib_eq], vec!["--calib", "--gptq"]),
        (oss!["--alpha", "0.5"], vec!["--alpha", "statistics"]),
        (
            oss!["--fold-alpha", "0.5"],
            vec!["--fold-alpha", "statistics"],
        ),
        (
            oss!["--tensor-alpha", "0.5"],
            vec!["--tensor-alpha", "statistics"],
        ),
        (oss!["--permute"], vec!["--permute", "statistics"]),
        (oss!["--gptq-damp", "0.2"], vec!["--gptq-damp", "GPTQ"]),
        (
            oss!["--gptq", &cov, "--gptq-damp=-1"],
            vec!["--gptq-damp", ">= 0"],
        ),
        (
            oss!["--gptq", &cov, "--prune", "0.1"],
            vec!["--prune", "GPTQ"],
        ),
        (oss!["--gptq", &cov, "--rdo", "0.1"], vec!["--rdo", "GPTQ"]),
        (
            oss!["--gptq", &cov, "--block-adapt", "1"],
            vec!["--block-adapt", "GPTQ"],
        ),
        (oss!["--calib", "--alpha", "0.5"], vec!["--alpha", "GPTQ"]),
        (
            oss!["--imatrix", &imatrix, "--gptq", &cov, "--tensor-alpha", "1"],
            vec!["--tensor-alpha", "GPTQ"],
        ),
        (
            oss!["--imatrix", &imatrix, "--fold-only", "--step", "1"],
            vec!["--fold-only", "--step"],
        ),
        (oss!["--prune", "1.5"], vec!["--prune"]),
        // The model has no token_embd.weight: --embd-step would change nothing.
        (oss!["--embd-step", "2"], vec!["--embd-step", "absent"]),
        (oss!["--cov-budget", "1G"], vec!["--cov-budget", "--calib"]),
        (
            oss!["--imatrix", &imatrix, "--calib"],
            vec!["--imatrix", "--calib"],
        ),
    ];
    for (extra, want) in &cases {
        let mut args = oss!["compress", "--quantize", "int8"];
        args.extend(extra.iter().cloned());
        args.extend(oss![&input, &output]);
        let out = dcgguf(&args);
        assert_eq!(out.code, 2, "{extra:?}: {}", out.stderr);
        assert!(
            want.iter().all(|w| out.stderr.contains(w)),
            "{extra:?}: {} (want {want:?})",
            out.stderr
        );
        assert!(!output.exists(), "{extra:?}: wrote an output");
    }
    // `--calib TEXT` (a space, not `=`) would take TEXT as the input model: the extra
    // positional is refused by the parser instead of being read as a model.
    let out = dcgguf(oss![
        "compress",
        "--quantize",
        "int8",
        "--calib",
        &text,
        &input,
        &output
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(!output.exists());
}

/// Part `k` (1-based) of a 3-part split model, with llama.cpp's split keys.
fn split_part(k: u16, total_tensors: i32, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed + u64::from(k));
    let mut b = GgufBuilder::new();
    if k == 1 {
        b.kvs = rich_metadata(Some("llama"));
    }
    b = b
        .kv("split.no", scalar(ValueType::U16, &(k - 1).to_le_bytes()))
        .kv("split.count", scalar(ValueType::U16, &3u16.to_le_bytes()))
        .kv(
            "split.tensors.count",
            scalar(ValueType::I32, &total_tensors.to_le_bytes()),
        );
    let types = all_types();
    for j in 0..2 {
        let ty = types[(usize::from(k) * 3 + j) % types.len()];
        let dims = [ty.block_elems() * 8, 2];
        b = b.tensor(Tensor::random(
            &format!("blk.{k}.{j}.weight"),
            &dims,
            ty,
            &mut rng,
        ));
    }
    b.trailing = vec![k as u8; usize::from(k)];
    b.build()
}

#[test]
fn split_models_compress_and_decompress_part_by_part() {
    let dir = TempDir::new("cli-split");
    let parts: Vec<Vec<u8>> = (1..=3).map(|k| split_part(k, 6, 40)).collect();
    for (k, p) in parts.iter().enumerate() {
        let h = GgufHeader::parse(p).unwrap();
        assert_eq!(h.get("split.no").and_then(Value::as_u64), Some(k as u64));
        dir.write(&format!("x-{:05}-of-00003.gguf", k + 1), p);
    }
    let v = dcgguf(os![
        "--json",
        "compress",
        &dir.join("x-00001-of-00003.gguf"),
        &dir.join("x.dc.gguf"),
        "--chunk-size",
        "2k"
    ])
    .ok()
    .json();
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    assert!(
        !dir.join("x.dc.gguf").exists(),
        "a split input gives split outputs only"
    );
    for k in 1..=3 {
        let name = format!("x-{k:05}-of-00003.dc.gguf");
        assert!(
            files[k - 1]["output"].as_str().unwrap().ends_with(&name),
            "{}",
            files[k - 1]
        );
        assert_eq!(files[k - 1]["original_bytes"], parts[k - 1].len() as u64);
        let dc = DcFile::open(&dir.join(&name)).unwrap();
        // Each part keeps its own split keys in the clear.
        assert_eq!(
            dc.dc_header.get("split.count").and_then(Value::as_u64),
            Some(3)
        );
        assert_eq!(
            dc.dc_header.get("split.no").and_then(Value::as_u64),
            Some(k as u64 - 1)
        );
        dcgguf(os![
            "verify",
            &dir.join(&name),
            "--against",
            &dir.join(&format!("x-{k:05}-of-00003.gguf"))
        ])
        .ok();
    }
    let v = dcgguf(os![
        "--json",
        "decompress",
        &dir.join("x-00001-of-00003.dc.gguf"),
        &dir.join("y.gguf")
    ])
    .ok()
    .json();
    assert_eq!(v["files"].as_array().unwrap().len(), 3);
    for (k, p) in parts.iter().enumerate() {
        let restored = std::fs::read(dir.join(&format!("y-{:05}-of-00003.gguf", k + 1))).unwrap();
        assert!(&restored == p, "part {} differs", k + 1);
    }
    // Any part but the first is an ordinary single file.
    let v = dcgguf(os![
        "--json",
        "compress",
        &dir.join("x-00002-of-00003.gguf"),
        &dir.join("p2.dc.gguf")
    ])
    .ok()
    .json();
    assert_eq!(v["files"].as_array().unwrap().len(), 1);
    assert!(dir.join("p2.dc.gguf").exists());
    assert!(dir.tmp_leftovers().is_empty());
}

/// `bench --seconds` must be a usable duration: negative, NaN, infinite or absurd values are
/// usage errors (exit 2), not a panic (exit 101).
#[test]
fn bench_rejects_unusable_durations() {
    let dir = TempDir::new("cli-bench-secs");
    let input = dir.write("m.gguf", &small_model(37).build());
    let dc = dir.join("m.dc.gguf");
    dcgguf(os!["compress", &input, &dc]).ok();
    for secs in [
        "--seconds=-1",
        "--seconds=nan",
        "--seconds=inf",
        "--seconds=1e300",
    ] {
        let out = dcgguf(os!["bench", &dc, secs]);
        assert!(
            !out.stderr.contains("panicked"),
            "{secs}: panicked:\n{}",
            out.stderr
        );
        assert_eq!(out.code, 2, "{secs}: {}", out.stderr);
    }
}

/// A split run is refused as a whole: when one part's output already exists (no --force) or
/// one input part is missing, nothing is written, rather than leaving the earlier parts'
/// outputs behind next to a failed run.
#[test]
fn split_runs_fail_before_writing_any_part() {
    let dir = TempDir::new("cli-split-refuse");
    for k in 1..=3u16 {
        dir.write(&format!("x-{k:05}-of-00003.gguf"), &split_part(k, 6, 50));
    }
    let first = dir.join("x-00001-of-00003.gguf");
    let blocker = dir.write("o-00002-of-00003.dc.gguf", b"keep");
    let out = dcgguf(os!["compress", &first, &dir.join("o.dc.gguf")]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert_eq!(std::fs::read(&blocker).unwrap(), b"keep");
    assert!(
        !dir.join("o-00001-of-00003.dc.gguf").exists(),
        "part 1 was written although the run was refused (exit 5)"
    );

    std::fs::remove_file(dir.join("x-00003-of-00003.gguf")).unwrap();
    let out = dcgguf(os!["compress", &first, &dir.join("p.dc.gguf")]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("x-00003-of-00003.gguf"),
        "{}",
        out.stderr
    );
    for k in 1..=3 {
        let p = dir.join(&format!("p-{k:05}-of-00003.dc.gguf"));
        assert!(
            !p.exists(),
            "{} written although part 3 is missing",
            p.display()
        );
    }
    assert!(dir.tmp_leftovers().is_empty());
}

/// `--profile`, `--storage-bps` and `--target-size` (the library's `cost::load_model_for`,
/// shared with the C and Python APIs): what they store raw, sizes met or refused, and the
/// usage errors, spelled as the user typed them.
#[test]
fn cost_model_options() {
    let dir = TempDir::new("cli-cost");
    let mut rng = Rng::new(41);
    let input = dir.write(
        "m.gguf",
        &GgufBuilder::new()
            .tensor(Tensor::random("a", &[4096, 64], GgmlType::BF16, &mut rng))
            .tensor(Tensor::random("b", &[4096, 64], GgmlType::F16, &mut rng))
            .build(),
    );
    // A small measured profile, so that nothing here measures for seconds or writes to
    // ~/.cache.
    let profile = dir.join("profile.json");
    let opts = dcgguf::cost::ProbeOptions {
        storage_dir: dir.path().to_path_buf(),
        file_bytes: 8 << 20,
        sample_bytes: 1 << 20,
    };
    let p = dcgguf::cost::probe::probe(&opts).unwrap();
    dcgguf::cost::probe::save_profile(&p, &profile).unwrap();

    let size = |name: &str, extra: &[&OsStr]| -> u64 {
        let out = dir.join(name);
        let mut args = os!["--json", "compress", &input, &out, "--profile", &profile].to_vec();
        args.extend_from_slice(extra);
        let v = dcgguf(&args).ok().json();
        let n = std::fs::metadata(&out).unwrap().len();
        assert_eq!(v["files"][0]["output_bytes"], n);
        n
    };
    let fast = size("fast.dc.gguf", os!["--storage-bps", "1e15"]);
    let slow = size("slow.dc.gguf", os!["--storage-bps", "1e3"]);
    assert!(fast > slow, "{fast} {slow}");
    let target = (fast + slow) / 2;
    let fitted = size(
        "fit.dc.gguf",
        os![
            "--storage-bps",
            "1e15",
            "--target-size",
            &target.to_string()
        ],
    );
    assert!(
        fitted <= target && fitted > slow,
        "{fitted} {target} {slow}"
    );

    let v = dcgguf(os![
        "--json",
        "inspect",
        &dir.join("fast.dc.gguf"),
        "--profile",
        &profile,
        "--storage-bps",
        "1e9"
    ])
    .ok()
    .json();
    assert_eq!(v["storage_bps"], 1e9);
    assert_eq!(v["predicted_load_seconds"].as_array().unwrap().len(), 2);

    let out = dir.join("no.dc.gguf");
    let e = expect_fail(
        os![
            "compress",
            &input,
            &out,
            "--profile",
            &profile,
            "--target-size",
            &(slow / 2).to_string()
        ],
        2,
    );
    assert!(e.stderr.contains("smallest"), "{}", e.stderr);
    for bad in ["0", "nan"] {
        let e = expect_fail(os!["compress", &input, &out, "--storage-bps", bad], 2);
        assert!(e.stderr.contains("--storage-bps"), "{}", e.stderr);
    }
    assert!(!out.exists());
}

/// `--level default` (also 0, and what no `--level` gives) and `--level max` compress and
/// decompress to the input; max is not larger; unknown names and out-of-range numbers are
/// usage errors.
#[test]
fn named_levels() {
    let dir = TempDir::new("cli-levels");
    let original = standard_model(41).build();
    let input = dir.write("m.gguf", &original);
    let mut sizes = Vec::new();
    for level in [None, Some("default"), Some("0"), Some("max")] {
        let dc = dir.join("m.dc.gguf");
        let mut args = os!["-q", "compress", "--force", &input, &dc].to_vec();
        if let Some(l) = level {
            args.extend(os!["--level", l]);
        }
        dcgguf(&args).ok();
        let back = dir.join("back.gguf");
        dcgguf(os!["-q", "decompress", "--force", &dc, &back]).ok();
        assert!(std::fs::read(&back).unwrap() == original, "{level:?}");
        sizes.push((level, std::fs::read(&dc).unwrap()));
    }
    assert!(
        sizes[0].1 == sizes[1].1 && sizes[1].1 == sizes[2].1,
        "default, 0, none"
    );
    assert!(
        sizes[3].1.len() <= sizes[0].1.len(),
        "max larger than default"
    );
    let dc = dir.join("bad.dc.gguf");
    for bad in ["fast", "23", "-8", "100"] {
        // clap's own usage errors (exit 2); they are not JSON even with --json.
        let out = dcgguf(os!["compress", &input, &dc, &format!("--level={bad}")]);
        assert_eq!(out.code, 2, "{bad}: {}", out.stderr);
        assert!(out.stderr.contains("--level"), "{}", out.stderr);
        assert!(!dc.exists());
    }
}
