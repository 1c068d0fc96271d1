//! `compress --quantize int8 --gptq COV`: GPTQ rounding of the matmul weights on llama.cpp's
//! Q8_0 scales, on a tiny synthetic BERT-like model with a tiny covariance file. The DC file
//! decodes to valid Q8_0 with llama.cpp's scale plane and exactly the GPTQ quants, and
//! malformed covariance files give clear errors naming the tensor. On real MiniLM with
//! llama.cpp: covariances recorded natively (`dcgguf calibrate`) are sound, do not depend on
//! the number of passes, and agree with scripts/covariance.py's numpy forward pass (with
//! python3 + numpy + gguf); `compress --calib` meets issue 14's targets. Without a
//! prerequisite (build.rs) those tests are reported as `ignored, needs ...`.

mod llama_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use dcgguf::dc::{CompressOptions, decompress_file};
use dcgguf::gguf::{GgmlType, GgufHeader, HeaderWriter, KeyValue, Value};
use dcgguf::quant::{self, Covariances, QuantOptions, gptq, q8};

fn tmp(name: &str) -> PathBuf {
    llama_support::scratch_dir("dcgguf-quant-gptq").join(name)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0) as f32
    }
}

/// A GGUF of F32 tensors `(name, dims, values)` with string/u32 metadata.
fn gguf(kvs: &[(&str, Value)], tensors: &[(String, Vec<u64>, GgmlType, Vec<u8>)]) -> Vec<u8> {
    let mut w = HeaderWriter::new(3);
    for (k, v) in kvs {
        w.kv(&KeyValue {
            key: k.as_bytes().to_vec(),
            value: v.clone(),
        });
    }
    let mut data = Vec::new();
    for (name, dims, ty, bytes) in tensors {
        w.tensor(name, dims, *ty, data.len() as u64);
        data.extend(bytes);
        data.resize(data.len().div_ceil(32) * 32, 0);
    }
    let mut out = w.finish(32);
    out.extend(data);
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// (name, ne0, rows) of the synthetic model's quantizable weights; token_embd is a lookup.
const WEIGHTS: &[(&str, usize, usize)] = &[
    ("token_embd.weight", 64, 10),
    ("blk.0.attn_q.weight", 64, 32),
    ("blk.0.ffn_down.weight", 32, 64),
];

fn weights() -> Vec<(String, usize, Vec<f32>)> {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    WEIGHTS
        .iter()
        .map(|&(n, ne0, rows)| {
            let v = (0..ne0 * rows).map(|_| rng.next() * 0.1).collect();
            (n.to_string(), ne0, v)
        })
        .collect()
}

fn model() -> Vec<u8> {
    model_of_arch("bert")
}

/// [`model`]'s tensors under another `general.architecture` (BERT's pooling key only for
/// "bert").
fn model_of_arch(arch: &str) -> Vec<u8> {
    let mut t: Vec<_> = weights()
        .into_iter()
        .map(|(n, ne0, v)| {
            let rows = (v.len() / ne0) as u64;
            (n, vec![ne0 as u64, rows], GgmlType::F32, f32_bytes(&v))
        })
        .collect();
    t.push((
        "blk.0.attn_norm.weight".into(),
        vec![64],
        GgmlType::F32,
        f32_bytes(&[1.0; 64]),
    ));
    let mut kvs = vec![("general.architecture", Value::string(arch))];
    if arch == "bert" {
        kvs.push(("bert.pooling_type", Value::u32(1)));
    }
    gguf(&kvs, &t)
}

/// Correlated second moment, n x n.
fn cov_matrix(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    let mut h = vec![0f64; n * n];
    for _ in 0..200 {
        let z: Vec<f32> = (0..n).map(|_| rng.next()).collect();
        let x: Vec<f64> = (0..n)
            .map(|i| f64::from(z[i] + 0.7 * z[(i + 1) % n] + if i == 2 { 3.0 } else { 0.0 }))
            .collect();
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] += x[i] * x[j] / 200.0;
            }
        }
    }
    h.iter().map(|&v| v as f32).collect()
}

fn cov_file(kind: &str, tensors: &[(&str, usize, GgmlType)]) -> Vec<u8> {
    let t: Vec<_> = tensors
        .iter()
        .map(|&(n, size, ty)| {
            let bytes = if ty == GgmlType::F32 {
                f32_bytes(&cov_matrix(size, 99 + size as u64))
            } else {
                vec![0u8; size * size * 2]
            };
            (n.to_string(), vec![size as u64, size as u64], ty, bytes)
        })
        .collect();
    gguf(&[("general.type", Value::string(kind))], &t)
}

fn good_cov() -> Vec<u8> {
    cov_file(
        "covariance",
        &[
            ("blk.0.attn_q.weight", 64, GgmlType::F32),
            ("blk.0.ffn_down.weight", 32, GgmlType::F32),
        ],
    )
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let p = tmp(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn tensor_bytes(path: &Path) -> Vec<(String, GgmlType, Vec<u8>)> {
    let b = std::fs::read(path).unwrap();
    let h = GgufHeader::parse(&b).unwrap();
    dcgguf::gguf::tensor_entries(&h, &b)
        .into_iter()
        .map(|(name, _, ty, data)| (name, ty, data))
        .collect()
}

#[test]
fn gptq_compresses_and_decodes_to_valid_q8_0_on_llama_scales() {
    let m = write("model.gguf", &model());
    let cov_path = write("good.cov.gguf", &good_cov());
    let cov = Covariances::load(&cov_path).unwrap();
    let o = QuantOptions {
        gptq: Some(cov.clone()),
        embd_step: Some(0.0),
        ..QuantOptions::default()
    };
    let dc = tmp("model.dc.gguf");
    let (qr, _) = quant::compress_lossy(&m, &dc, &o, &CompressOptions::default(), &|_| {}).unwrap();
    assert_eq!(qr.quantized_tensors, 3);
    let back = tmp("model.back.gguf");
    decompress_file(&dc, &back, true, &|_| {}).unwrap();
    let out = tensor_bytes(&back);
    let mut changed = 0;
    for (name, ne0, x) in weights() {
        let (_, ty, bytes) = out.iter().find(|(n, _, _)| *n == name).unwrap();
        assert_eq!(*ty, GgmlType::Q8_0, "{name}");
        let mut reference = Vec::new();
        q8::quantize_reference(&x, &mut reference);
        assert_eq!(bytes.len(), reference.len());
        // llama.cpp's scale plane, quants in +-127.
        for (a, b) in bytes
            .chunks(q8::BLOCK_BYTES)
            .zip(reference.chunks(q8::BLOCK_BYTES))
        {
            assert_eq!(a[..2], b[..2], "{name}: scale differs from llama.cpp's");
            assert!(a[2..].iter().all(|&q| q as i8 != -128));
        }
        if name == "token_embd.weight" {
            // Lookup-only token_embd keeps --embd-step rounding (0 = llama.cpp's).
            assert_eq!(*bytes, reference);
        } else {
            let h = cov.matrix(&name).unwrap();
            let want = gptq::quantize(&x, ne0, &h, gptq::DEFAULT_DAMP).unwrap();
            assert_eq!(*bytes, want, "{name}: not the GPTQ quants");
            changed += usize::from(*bytes != reference);
        }
    }
    assert_eq!(changed, 2, "GPTQ changed no rounding");
    let (_, ty, norm) = out
        .iter()
        .find(|(n, _, _)| n == "blk.0.attn_norm.weight")
        .unwrap();
    assert_eq!(
        (*ty, norm.as_slice()),
        (GgmlType::F32, &f32_bytes(&[1.0; 64])[..])
    );
}

fn cli_error(cov: &[u8], name: &str, extra: &[&str]) -> String {
    let m = write("cli-model.gguf", &model());
    let c = write(name, cov);
    let out = Command::new(env!("CARGO_BIN_EXE_dcgguf"))
        .args(["compress", "--force", "--quantize", "int8", "--gptq"])
        .arg(&c)
        .args(extra)
        .arg(&m)
        .arg(tmp(&format!("{name}.dc.gguf")))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{name}: accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cli_accepts_a_good_covariance_file() {
    let m = write("cli-ok-model.gguf", &model());
    let c = write("cli-ok.cov.gguf", &good_cov());
    let out = Command::new(env!("CARGO_BIN_EXE_dcgguf"))
        .args([
            "compress",
            "--force",
            "--quantize",
            "int8",
            "--embd-step",
            "2",
        ])
        .arg("--gptq")
        .arg(&c)
        .arg(&m)
        .arg(tmp("cli-ok.dc.gguf"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn malformed_covariance_files_give_clear_errors() {
    let f32t = GgmlType::F32;
    let cov_type = [("general.type", Value::string("covariance"))];
    let mut indefinite = vec![0f32; 64 * 64];
    (0..64).for_each(|i| indefinite[i * 64 + i] = 1.0);
    indefinite[1] = 50.0;
    indefinite[64] = 50.0;
    // (file, name, every piece the error must contain)
    let cases: Vec<(Vec<u8>, &str, Vec<&str>)> = vec![
        (
            cov_file(
                "covariance",
                &[
                    ("blk.0.attn_q.weight", 32, f32t),
                    ("blk.0.ffn_down.weight", 32, f32t),
                ],
            ),
            "shape.cov.gguf",
            vec!["blk.0.attn_q.weight", "64 input channels"],
        ),
        (
            cov_file("covariance", &[("blk.0.attn_q.weight", 64, f32t)]),
            "missing.cov.gguf",
            vec!["missing tensor", "blk.0.ffn_down.weight"],
        ),
        (
            // Another model's extra tensor.
            cov_file(
                "covariance",
                &[
                    ("blk.0.attn_q.weight", 64, f32t),
                    ("blk.0.ffn_down.weight", 32, f32t),
                    ("blk.1.ffn_down.weight", 32, f32t),
                ],
            ),
            "extra.cov.gguf",
            vec!["blk.1.ffn_down.weight", "wrong model"],
        ),
        (
            cov_file(
                "covariance",
                &[
                    ("blk.0.attn_q.weight", 64, GgmlType::F16),
                    ("blk.0.ffn_down.weight", 32, f32t),
                ],
            ),
            "type.cov.gguf",
            vec!["blk.0.attn_q.weight", "expected F32"],
        ),
        (
            gguf(
                &cov_type,
                &[(
                    "blk.0.attn_q.weight".into(),
                    vec![64, 2],
                    f32t,
                    f32_bytes(&[1.0; 128]),
                )],
            ),
            "nonsquare.cov.gguf",
            vec!["blk.0.attn_q.weight", "square"],
        ),
        // An imatrix or a model passed by mistake.
        (
            cov_file("imatrix", &[("blk.0.attn_q.weight", 64, f32t)]),
            "imatrix.cov.gguf",
            vec!["not \"covariance\""],
        ),
        (
            model(),
            "model.cov.gguf",
            vec!["general.type = \"covariance\""],
        ),
        (
            b"not a gguf at all".to_vec(),
            "garbage.cov.gguf",
            vec!["invalid covariance file", "GGUF"],
        ),
        (
            // Not positive definite even after damping.
            gguf(
                &cov_type,
                &[
                    (
                        "blk.0.attn_q.weight".into(),
                        vec![64, 64],
                        f32t,
                        f32_bytes(&indefinite),
                    ),
                    (
                        "blk.0.ffn_down.weight".into(),
                        vec![32, 32],
                        f32t,
                        f32_bytes(&cov_matrix(32, 5)),
                    ),
                ],
            ),
            "indefinite.cov.gguf",
            vec!["blk.0.attn_q.weight", "positive definite"],
        ),
        (
            nan_cov(),
            "nan.cov.gguf",
            vec!["blk.0.ffn_down.weight", "NaN"],
        ),
        (
            {
                let mut m = cov_matrix(32, 5);
                m[3 * 32 + 3] = -1.0;
                gguf(
                    &cov_type,
                    &[
                        (
                            "blk.0.attn_q.weight".into(),
                            vec![64, 64],
                            f32t,
                            f32_bytes(&cov_matrix(64, 4)),
                        ),
                        (
                            "blk.0.ffn_down.weight".into(),
                            vec![32, 32],
                            f32t,
                            f32_bytes(&m),
                        ),
                    ],
                )
            },
            "negative.cov.gguf",
            vec!["blk.0.ffn_down.weight", "negative diagonal"],
        ),
        (
            {
                let mut b = good_cov();
                b.truncate(b.len() - 100);
                b
            },
            "truncated.cov.gguf",
            vec!["invalid covariance file", "blk.0.ffn_down.weight"],
        ),
    ];
    for (file, name, want) in cases {
        let e = cli_error(&file, name, &[]);
        assert!(
            want.iter().all(|w| e.contains(w)),
            "{name}: {e} (want {want:?})"
        );
    }
}

/// good_cov() with a NaN in the last matrix (blk.0.ffn_down.weight), the same size.
fn nan_cov() -> Vec<u8> {
    let mut b = good_cov();
    let at = b.len() - 32 * 32 * 4 + 5 * 4;
    b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    b
}

/// Matrices are read when each weight is quantized, not kept from `load`: a file that changes
/// after it was checked (rewritten in place, truncated) gives an error naming the file and
/// tensor, from `matrix` and from compressing, never a panic or a silently wrong matrix.
#[test]
fn a_covariance_file_changed_after_loading_gives_an_error() {
    let p = write("changing.cov.gguf", &good_cov());
    let cov = Covariances::load(&p).unwrap();
    assert_eq!(cov.len(), 2);
    assert_eq!(cov.n_in("blk.0.ffn_down.weight"), Some(32));
    assert_eq!(
        cov.matrix("blk.0.ffn_down.weight").unwrap(),
        cov_matrix(32, 99 + 32)
    );
    // Rewritten in place (same inode, which the loaded file still reads), with a NaN.
    std::fs::write(&p, nan_cov()).unwrap();
    let e = cov.matrix("blk.0.ffn_down.weight").unwrap_err().to_string();
    assert!(
        e.contains("changing.cov.gguf") && e.contains("blk.0.ffn_down.weight") && e.contains("NaN"),
        "{e}"
    );
    let o = QuantOptions {
        gptq: Some(cov.clone()),
        embd_step: Some(0.0),
        ..QuantOptions::default()
    };
    let m = write("changing-model.gguf", &model());
    let e = quant::quantize_file(&m, &tmp("changing.q8.gguf"), &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.0.ffn_down.weight") && e.contains("NaN"),
        "{e}"
    );
    // Truncated.
    let mut short = good_cov();
    short.truncate(short.len() - 100);
    std::fs::write(&p, short).unwrap();
    let e = cov.matrix("blk.0.ffn_down.weight").unwrap_err().to_string();
    assert!(
        e.contains("blk.0.ffn_down.weight") && e.contains("reading tensor"),
        "{e}"
    );
    assert!(cov.matrix("blk.9.attn_q.weight").is_err());
}

fn sentences_file() -> PathBuf {
    llama_support::eval_sentences_file()
}

fn embed(bin: &Path, model: &Path, sentences: &Path) -> Vec<Vec<f64>> {
    llama_support::embeddings(bin, model, sentences, "auto")
}

fn mean_cosine(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    let n = |v: &[f64]| v.iter().map(|p| p * p).sum::<f64>().sqrt();
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>() / n(x) / n(y))
        .sum::<f64>()
        / a.len() as f64
}

/// python3 with numpy and gguf, or the test fails (it is ignored when build.rs found them
/// absent).
fn require_python(test: &str) {
    let ok = Command::new("python3")
        .args(["-c", "import numpy, gguf"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        llama_support::missing(
            test,
            "python3 with numpy and gguf is absent (scripts/install-deps.sh)",
        );
    }
}

/// `compress --quantize int8 --calib` on a fresh checkout: calibration through llama.cpp on
/// the shipped text, GPTQ on the default grid; decompressed and run by llama-embedding.
fn calib_compress(
    test: &str,
    f32_model: &Path,
    bin: &Path,
    extra: &[&str],
    name: &str,
) -> (u64, PathBuf) {
    let dc = tmp(&format!("{name}.dc.gguf"));
    let out = Command::new(env!("CARGO_BIN_EXE_dcgguf"))
        .args(["compress", "--force", "--quantize", "int8", "--calib"])
        .args(extra)
        .arg(f32_model)
        .arg(&dc)
        .env("DCGGUF_LLAMA_BIN", bin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{test}: compress --calib {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = tmp(&format!("{name}.q8.gguf"));
    decompress_file(&dc, &back, true, &|_| {}).unwrap();
    (std::fs::metadata(&dc).unwrap().len(), back)
}

/// Issue 14's targets on MiniLM, measured on the project's eval sentences: `--calib` (the
/// default GPTQ grid) at a mean cosine >= Q8_0's and <= 0.80x its file; the documented
/// smaller setting at >= Q6_K's and <= 0.68x. ~2 min on the 2-core VM.
#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn minilm_calib_meets_the_q8_0_and_q6_k_targets() {
    let test = module_path!();
    let f32_model = llama_support::require_shared_model(test, "all-MiniLM-L6-v2-f32.gguf");
    let q8_model = f32_model.with_file_name("all-MiniLM-L6-v2-q8_0.gguf");
    let llama = llama_support::require_llama(test);
    let bin = llama.prefix.join("bin");
    // compress --calib preloads libdcgguf_preload.so from next to the dcgguf binary.
    llama_support::libdcgguf_preload();
    let q6 = tmp("minilm-q6_k.gguf");
    let out = Command::new(bin.join("llama-quantize"))
        .arg(&f32_model)
        .arg(&q6)
        .arg("Q6_K")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let q8_bytes = std::fs::metadata(&q8_model).unwrap().len() as f64;
    let s = sentences_file();
    let reference = embed(&bin, &f32_model, &s);
    let q8_cos = mean_cosine(&embed(&bin, &q8_model, &s), &reference);
    let q6_cos = mean_cosine(&embed(&bin, &q6, &s), &reference);
    let (bytes, back) = calib_compress(test, &f32_model, &bin, &[], "calib-default");
    let cos = mean_cosine(&embed(&bin, &back, &s), &reference);
    let ratio = bytes as f64 / q8_bytes;
    eprintln!("--calib: {bytes} bytes = {ratio:.4}x Q8_0, mean cos {cos:.6} (Q8_0 {q8_cos:.6})");
    assert!(ratio <= 0.80, "{ratio:.4}x the Q8_0 file");
    assert!(cos >= q8_cos, "mean cosine {cos:.6} < Q8_0's {q8_cos:.6}");
    let small = SMALL_SETTING.split(' ').collect::<Vec<_>>();
    let (bytes, back) = calib_compress(test, &f32_model, &bin, &small, "calib-small");
    let cos = mean_cosine(&embed(&bin, &back, &s), &reference);
    let ratio = bytes as f64 / q8_bytes;
    eprintln!(
        "--calib {SMALL_SETTING}: {bytes} bytes = {ratio:.4}x Q8_0, mean cos {cos:.6} (Q6_K {q6_cos:.6})"
    );
    assert!(ratio <= 0.68, "{ratio:.4}x the Q8_0 file");
    assert!(cos >= q6_cos, "mean cosine {cos:.6} < Q6_K's {q6_cos:.6}");
}

/// docs/QUANT.md's smaller setting (with `--calib`).
const SMALL_SETTING: &str = "--step 2.1 --embd-step 6.5";

/// `--step` with GPTQ: the matmul weights are GPTQ-rounded on the shared-step grid (the
/// scales of `q8::shared_scales`), not on llama.cpp's, and different steps give different
/// files (issue 14 reported `--step 1.5` and `--step 2` as byte-identical before).
#[test]
fn gptq_rounds_on_the_shared_step_grid_when_step_is_given() {
    let m = write("grid-model.gguf", &model());
    let cov = Covariances::load(&write("grid.cov.gguf", &good_cov())).unwrap();
    let mut files = Vec::new();
    for step in [1.5f32, 2.0] {
        let o = QuantOptions {
            gptq: Some(cov.clone()),
            gptq_step: Some(step),
            embd_step: Some(0.0),
            ..QuantOptions::default()
        };
        let q = tmp(&format!("grid-{step}.gguf"));
        quant::quantize_file(&m, &q, &o).unwrap();
        let out = tensor_bytes(&q);
        for (name, ne0, x) in weights().into_iter().skip(1) {
            let (_, _, bytes) = out.iter().find(|(n, _, _)| *n == name).unwrap();
            let scales = q8::shared_scales(&x, step);
            let h = cov.matrix(&name).unwrap();
            let want = gptq::quantize_on(&x, ne0, &h, gptq::DEFAULT_DAMP, Some(&scales)).unwrap();
            assert_eq!(*bytes, want, "{name} at step {step}");
            let nearest = nearest_on_step_grid(&x, ne0, step);
            // Same scale plane as nearest rounding on that grid, other quants.
            for (a, b) in bytes
                .chunks(q8::BLOCK_BYTES)
                .zip(nearest.chunks(q8::BLOCK_BYTES))
            {
                assert_eq!(a[..2], b[..2], "{name}: not the shared-step grid");
            }
            assert_ne!(*bytes, nearest, "{name}: GPTQ changed nothing");
        }
        files.push(std::fs::read(&q).unwrap());
    }
    assert_ne!(
        files[0], files[1],
        "--step 1.5 and --step 2 gave the same file"
    );
}

/// `--per-row` with GPTQ: each row's weights are GPTQ-rounded on that row's own step (the
/// scales of `q8::row_scales`), which differs from the shared-step file.
#[test]
fn gptq_per_row_rounds_on_each_rows_step() {
    let m = write("row-grid-model.gguf", &model());
    let cov = Covariances::load(&write("row-grid.cov.gguf", &good_cov())).unwrap();
    let step = 1.5f32;
    let run = |per_row: bool, name: &str| {
        let mut o = QuantOptions {
            gptq: Some(cov.clone()),
            gptq_step: Some(step),
            embd_step: Some(0.0),
            ..QuantOptions::default()
        };
        o.per_row = Some(per_row);
        let q = tmp(name);
        quant::quantize_file(&m, &q, &o).unwrap();
        tensor_bytes(&q)
    };
    let rows = run(true, "row-grid.gguf");
    let shared = run(false, "row-grid-shared.gguf");
    let mut differs = false;
    for (name, ne0, x) in weights().into_iter().skip(1) {
        let (_, _, bytes) = rows.iter().find(|(n, _, _)| *n == name).unwrap();
        let scales = q8::row_scales(&x, ne0, step);
        let h = cov.matrix(&name).unwrap();
        let want = gptq::quantize_on(&x, ne0, &h, gptq::DEFAULT_DAMP, Some(&scales)).unwrap();
        assert_eq!(*bytes, want, "{name}: not GPTQ on the per-row grid");
        let (_, _, other) = shared.iter().find(|(n, _, _)| *n == name).unwrap();
        differs |= bytes != other;
    }
    assert!(differs, "--per-row changed no GPTQ-rounded weight");
}

/// With GPTQ and no `--per-row`, a qwen2 model gets per-row steps (measured on
/// Qwen2.5-Coder-1.5B) and a llama model the shared step: the same files as the flag's
/// explicit values.
#[test]
fn gptq_per_row_default_depends_on_the_architecture() {
    let cov = Covariances::load(&write("arch-grid.cov.gguf", &good_cov())).unwrap();
    for (arch, per_row) in [("qwen2", true), ("llama", false)] {
        let m = write(&format!("arch-{arch}.gguf"), &model_of_arch(arch));
        let run = |flag: Option<bool>, tag: &str| {
            let o = QuantOptions {
                gptq: Some(cov.clone()),
                gptq_step: Some(1.5),
                embd_step: Some(0.0),
                fold_alpha: Some(0.0),
                per_row: flag,
                // token_embd is the (tied) LM head here and has no matrix: on the grid.
                gptq_partial: true,
                ..QuantOptions::default()
            };
            let q = tmp(&format!("arch-{arch}-{tag}.gguf"));
            quant::quantize_file(&m, &q, &o).unwrap();
            std::fs::read(&q).unwrap()
        };
        let default = run(None, "default");
        assert_eq!(
            default,
            run(Some(per_row), "same"),
            "{arch}: default is per_row={per_row}"
        );
        assert_ne!(
            default,
            run(Some(!per_row), "other"),
            "{arch}: the flag changes nothing"
        );
    }
}

/// The default `--embd-step` applies to a lookup-only `token_embd`: an embedding model's (a
/// pooling type) and a decoder's with a separate `output.weight` are rounded on the coarse
/// shared grid (3x the mean llama.cpp step; llama.cpp's rounding for the decoder was measured
/// on Qwen2.5-Coder-1.5B and did not pay, docs/QUANT.md); with tied embeddings it is the LM
/// head, rounded like any matmul weight (here: the default 0.8 grid, no GPTQ).
#[test]
fn default_token_embd_grid_depends_on_whether_it_is_a_lookup() {
    let (_, ne0, x) = weights().into_iter().next().unwrap();
    let rows = (x.len() / ne0) as u64;
    let embd = (
        "token_embd.weight".to_string(),
        vec![ne0 as u64, rows],
        GgmlType::F32,
        f32_bytes(&x),
    );
    let head = (
        "output.weight".to_string(),
        vec![ne0 as u64, rows],
        GgmlType::F32,
        f32_bytes(&x),
    );
    let arch = |a: &str| ("general.architecture", Value::string(a));
    let mut reference = Vec::new();
    q8::quantize_reference(&x, &mut reference);
    let grid = |step| nearest_on_step_grid(&x, ne0, step);
    let cases = [
        (
            "encoder",
            gguf(
                &[arch("bert"), ("bert.pooling_type", Value::u32(1))],
                std::slice::from_ref(&embd),
            ),
            grid(3.0),
        ),
        (
            "decoder",
            gguf(&[arch("llama")], &[embd.clone(), head]),
            grid(3.0),
        ),
        ("tied", gguf(&[arch("llama")], &[embd]), grid(0.8)),
    ];
    for (kind, bytes, want) in cases {
        let m = write(&format!("embd-{kind}.gguf"), &bytes);
        let q = tmp(&format!("embd-{kind}.q8.gguf"));
        quant::quantize_file(&m, &q, &QuantOptions::default()).unwrap();
        let out = tensor_bytes(&q);
        let (_, ty, got) = out
            .iter()
            .find(|(n, _, _)| n == "token_embd.weight")
            .unwrap();
        assert_eq!(*ty, GgmlType::Q8_0, "{kind}");
        assert_eq!(*got, want, "{kind}: token_embd not on the expected grid");
        assert_ne!(*got, reference, "{kind}: llama.cpp's rounding");
    }
}

/// An excerpt of the shipped calibration text (whole paragraphs), to keep the multi-pass
/// run short. One file per length: tests run in parallel, and a test that reads its text
/// again for a second calibration must not find another test's excerpt there.
/// Nearest rounding of `x` (rows of `ne0`) on the shared-step grid at `step`, no statistics.
fn nearest_on_step_grid(x: &[f32], ne0: usize, step: f32) -> Vec<u8> {
    q8::quantize(
        x,
        ne0,
        None,
        &q8::GridOptions {
            step: Some(step),
            ..q8::GridOptions::default()
        },
    )
}

fn text_excerpt(bytes: usize) -> PathBuf {
    let t = quant::calibrate::SHIPPED_TEXT;
    let cut = t[..bytes].rfind("\n\n").unwrap();
    let p = tmp(&format!("excerpt-{bytes}.txt"));
    std::fs::write(&p, &t[..cut]).unwrap();
    p
}

fn f32s(path: &Path) -> Vec<(String, Vec<f32>)> {
    tensor_bytes(path)
        .into_iter()
        .map(|(n, _, b)| {
            let v = b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (n, v)
        })
        .collect()
}

/// `dcgguf calibrate` of `model` over `text`, twice: with the default budget, where the run
/// must give `want` = (passes, weights, inputs), a file that fits the model and holds second
/// moments (with `diagonal_from_stats`: the diagonal is llama-imatrix's own, from the same
/// run); and with `small_budget`, which must take at least `min_passes` passes within it and
/// give the same file byte for byte. Returns the covariances and the statistics file.
#[allow(clippy::too_many_arguments)]
fn calibrate_native(
    test: &str,
    model: &Path,
    text: &Path,
    tag: &str,
    want: (usize, usize, usize),
    diagonal_from_stats: bool,
    small_budget: u64,
    min_passes: usize,
) -> (Covariances, PathBuf) {
    let bin = llama_support::llama_bin_dir(test);
    // calibrate preloads libdcgguf_preload.so from next to this test binary: build it.
    llama_support::libdcgguf_preload();
    let run = |name: &str, budget: u64| {
        let (stats, cov) = (
            tmp(&format!("{name}.imatrix.gguf")),
            tmp(&format!("{name}.cov.gguf")),
        );
        let r = quant::calibrate::calibrate_to(
            model,
            Some(text),
            &stats,
            Some(&cov),
            Some(&bin),
            128,
            budget,
        )
        .unwrap();
        eprintln!("{r:?}");
        (r, stats, cov)
    };
    let (r, stats, cov) = run(tag, quant::calibrate::DEFAULT_COV_BUDGET);
    assert_eq!((r.passes, r.covariance_tensors, r.covariance_inputs), want);
    let c = Covariances::load(&cov).unwrap();
    let map = std::fs::read(model).unwrap();
    c.check_against(&quant::gptq_weights(&GgufHeader::parse(&map).unwrap()))
        .unwrap();
    let st = quant::ActStats::load(&stats).unwrap();
    check_second_moments(&c, diagonal_from_stats.then_some(&st));
    let (r2, _, cov2) = run(&format!("{tag}-passes"), small_budget);
    assert!(r2.passes >= min_passes, "{} passes", r2.passes);
    assert!(r2.peak_accumulator_bytes <= small_budget);
    assert!(r.peak_accumulator_bytes > r2.peak_accumulator_bytes);
    assert_eq!(f32s(&cov2), f32s(&cov), "multi-pass covariances differ");
    assert_eq!(std::fs::read(&cov2).unwrap(), std::fs::read(&cov).unwrap());
    // SmolLM2's are 523 MB each: gone once compared (`c` holds what the caller checks).
    for f in [&cov, &cov2] {
        std::fs::remove_file(f).unwrap();
    }
    (c, stats)
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn minilm_native_covariances_are_sound_and_independent_of_the_pass_count() {
    let test = module_path!();
    let model = llama_support::require_shared_model(test, "all-MiniLM-L6-v2-f32.gguf");
    // A statistics pass (llama-imatrix), then the covariances (llama-embedding, one sequence
    // per line): 6 layers x (q/k/v, attn_output, ffn_up, ffn_down), 36 weights, 24 inputs.
    // The diagonal is not llama-imatrix's (other sequences; that check is on SmolLM2, whose
    // covariances come from the same run). A budget that holds one ffn_down input (1536 wide)
    // and little else: several passes over the same text.
    let (c, _) = calibrate_native(
        test,
        &model,
        &text_excerpt(4000),
        "native",
        (2, 36, 24),
        false,
        dcgguf::quant::cov_parts::accumulator_bytes(1536),
        4,
    );
    // Shared inputs: q, k and v read the same node, so they get the same matrix.
    let get = |w: &str| c.matrix(w).unwrap();
    for l in 0..6 {
        let q = get(&format!("blk.{l}.attn_q.weight"));
        assert_eq!(q, get(&format!("blk.{l}.attn_k.weight")));
        assert_eq!(q, get(&format!("blk.{l}.attn_v.weight")));
        assert_ne!(q, get(&format!("blk.{l}.ffn_up.weight")));
    }
}

/// Every matrix is a second moment: non-negative diagonal, exactly symmetric,
/// `|H_ij| <= sqrt(H_ii H_jj)`, positive semi-definite; with `stats` (llama-imatrix's run that
/// recorded the same rows), the diagonal equals its independently accumulated mean x^2 for
/// every weight it has statistics for.
fn check_second_moments(c: &Covariances, stats: Option<&quant::ActStats>) {
    for (name, n) in c.weights() {
        let m = &c.matrix(name).unwrap();
        for i in 0..n {
            let d = m[i * n + i];
            assert!(d >= 0.0, "{name}: diagonal {i} = {d}");
            for j in 0..i {
                assert_eq!(
                    m[i * n + j],
                    m[j * n + i],
                    "{name}: not symmetric at ({i},{j})"
                );
                // Cauchy-Schwarz, which a second moment satisfies.
                let bound = (f64::from(d) * f64::from(m[j * n + j])).sqrt();
                assert!(
                    f64::from(m[i * n + j].abs()) <= bound * (1.0 + 1e-4) + 1e-12,
                    "{name}: ({i},{j}) exceeds sqrt(H_ii H_jj)"
                );
            }
        }
        // Positive semi-definite: positive definite with a small ridge (a 1536-wide input seen
        // on fewer tokens has rank < n, and f32 rounding leaves eigenvalues of either sign
        // around 0).
        gptq::inverse_cholesky_upper(m, n, 1e-3).unwrap_or_else(|e| panic!("{name}: {e}"));
        // llama-imatrix keeps no statistics for the LM head (token_embd when tied).
        if let Some(cs) = stats.and_then(|st| st.get(name)) {
            let mean_sq = &cs.mean_sq;
            let top = mean_sq.iter().fold(0f32, |a, &b| a.max(b));
            for (i, want) in mean_sq.iter().enumerate() {
                let got = m[i * n + i];
                assert!(
                    (got - want).abs() <= 1e-4 * top,
                    "{name}: diagonal {i} {got} vs llama-imatrix {want}"
                );
            }
        }
    }
}

/// A decoder (llama architecture, tied embeddings), recorded in the same llama-imatrix run
/// that collects the statistics: the diagonal is llama-imatrix's own mean x^2, q/k/v and
/// gate/up share matrices, the tied `token_embd` (the LM head) gets one, and a small budget
/// gives the same file in more passes.
#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_smollm2)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and SmolLM2 (scripts/fetch-models.sh)"
)]
fn smollm2_native_covariances_match_llama_imatrix_and_the_pass_count() {
    let test = module_path!();
    let model = llama_support::require_smollm2(test);
    // llama-imatrix needs at least two 128-token chunks. 30 layers x (q/k/v, attn_output,
    // gate/up, down) + token_embd as the LM head, in one pass. A budget of three ffn_down
    // inputs (1536 wide, ~9.9 MiB each; a layer needs ~14 MiB): about two layers per pass,
    // ~15 passes over the same text.
    let (c, stats) = calibrate_native(
        test,
        &model,
        &text_excerpt(2600),
        "smol",
        (1, 211, 121),
        true,
        dcgguf::quant::cov_parts::accumulator_bytes(1536) * 3,
        8,
    );
    assert_eq!(
        quant::ActStats::load(&stats).unwrap().tensors.len(),
        210,
        "statistics for every matmul but the LM head"
    );
    let get = |w: &str| c.matrix(w).unwrap();
    for l in [0, 29] {
        let q = get(&format!("blk.{l}.attn_q.weight"));
        assert_eq!(q, get(&format!("blk.{l}.attn_k.weight")));
        assert_eq!(q, get(&format!("blk.{l}.attn_v.weight")));
        let g = get(&format!("blk.{l}.ffn_gate.weight"));
        assert_eq!(g, get(&format!("blk.{l}.ffn_up.weight")));
        assert_ne!(q, g);
    }
    assert_eq!(c.n_in("token_embd.weight"), Some(576));
}

/// Cross-check against the numpy BERT forward pass of scripts/covariance.py on the same
/// text. Close, not exact, by design: covariance.py runs each blank-line paragraph as one
/// `[CLS] ... [SEP]` sequence (cut at 126 tokens), `dcgguf calibrate` runs each line through
/// llama-embedding (the code block and the table are one sequence per line there), and BERT's
/// special tokens carry its largest activations. Exact agreement is checked against
/// llama-imatrix's own diagonal above. Measured on the shipped text: cosine of the flattened
/// matrices min 0.94, mean 0.986.
#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm, dcgguf_python)),
    ignore = "needs llama.cpp (scripts/build-llama.sh), the MiniLM models (scripts/fetch-models.sh) and python3 with numpy and gguf (scripts/install-deps.sh)"
)]
fn minilm_native_covariances_agree_with_the_numpy_forward_pass() {
    let test = module_path!();
    let model = llama_support::require_shared_model(test, "all-MiniLM-L6-v2-f32.gguf");
    let bin = llama_support::llama_bin_dir(test);
    require_python(test);
    llama_support::libdcgguf_preload();
    let text = tmp("shipped.txt");
    std::fs::write(&text, quant::calibrate::SHIPPED_TEXT).unwrap();
    let cov = tmp("xcheck-native.cov.gguf");
    quant::calibrate::calibrate_to(
        &model,
        Some(&text),
        &tmp("xcheck.imatrix.gguf"),
        Some(&cov),
        Some(&bin),
        128,
        quant::calibrate::DEFAULT_COV_BUDGET,
    )
    .unwrap();
    let numpy = tmp("xcheck-numpy.cov.gguf");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(root.join("scripts/covariance.py"))
        .arg(&model)
        .arg(&numpy)
        .arg("--calib")
        .arg(&text)
        .env("LLAMA_BIN", &bin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "covariance.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (f32s(&cov), f32s(&numpy));
    assert_eq!(a.len(), 36);
    let mut cosines = Vec::new();
    for (name, x) in &a {
        let (_, y) = b.iter().find(|(n, _)| n == name).expect(name);
        let dot: f64 = x
            .iter()
            .zip(y)
            .map(|(p, q)| f64::from(*p) * f64::from(*q))
            .sum();
        let norm = |v: &[f32]| v.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
        cosines.push((dot / norm(x) / norm(y), name.clone()));
    }
    let mean = cosines.iter().map(|c| c.0).sum::<f64>() / cosines.len() as f64;
    let min = cosines.iter().fold(
        (1.0, String::new()),
        |m, c| if c.0 < m.0 { c.clone() } else { m },
    );
    eprintln!(
        "native vs numpy: mean cosine {mean:.4}, min {:.4} ({})",
        min.0, min.1
    );
    assert!(mean >= 0.97 && min.0 >= 0.85, "mean {mean}, min {min:?}");
}
