//! Activation statistics: llama.cpp imatrix files (GGUF and legacy .dat) are parsed exactly,
//! bad files give clear errors, and `dcgguf calibrate` (real llama-imatrix) produces a file
//! that validates against the model.

mod llama_support;

use std::path::{Path, PathBuf};

use dcgguf::gguf::{GgmlType, HeaderWriter, KeyValue, Value};
use dcgguf::quant::ActStats;

fn tmp(name: &str) -> PathBuf {
    llama_support::scratch_dir("dcgguf-quant-stats").join(name)
}

/// A GGUF imatrix as llama-imatrix writes it: `W.in_sum2` [n_in, n_mat], `W.counts` [1, n_mat].
fn gguf_imatrix(kind: &str, entries: &[(&str, Vec<f32>, Vec<f32>)]) -> Vec<u8> {
    let mut w = HeaderWriter::new(3);
    w.kv(&KeyValue {
        key: b"general.type".to_vec(),
        value: Value::string(kind),
    });
    let mut data = Vec::new();
    let mut tensors = Vec::new();
    for (name, sums, counts) in entries {
        let n_mat = counts.len() as u64;
        tensors.push((
            format!("{name}.in_sum2"),
            vec![sums.len() as u64 / n_mat, n_mat],
            sums,
        ));
        tensors.push((format!("{name}.counts"), vec![1, n_mat], counts));
    }
    for (name, dims, vals) in &tensors {
        w.tensor(name, dims, GgmlType::F32, data.len() as u64);
        data.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        data.resize(data.len().div_ceil(32) * 32, 0);
    }
    let mut out = w.finish(32);
    out.extend(data);
    out
}

fn legacy_imatrix(entries: &[(&str, i32, Vec<f32>)], trailer: bool) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend((entries.len() as i32).to_le_bytes());
    for (name, ncall, vals) in entries {
        b.extend((name.len() as i32).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend(ncall.to_le_bytes());
        b.extend((vals.len() as i32).to_le_bytes());
        b.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
    }
    if trailer {
        b.extend(7i32.to_le_bytes());
        b.extend(8i32.to_le_bytes());
        b.extend(b"calib.tx");
    }
    b
}

#[test]
fn gguf_imatrix_mean_is_sum_over_count_averaged_over_experts() {
    let f = gguf_imatrix(
        "imatrix",
        &[
            ("blk.0.attn_q.weight", vec![4.0, 8.0, 12.0, 16.0], vec![4.0]),
            (
                "blk.0.ffn_down_exps.weight",
                vec![2.0, 4.0, 9.0, 9.0],
                vec![2.0, 3.0],
            ),
        ],
    );
    let s = ActStats::parse_gguf(&f).unwrap();
    assert_eq!(
        s.get("blk.0.attn_q.weight").unwrap().mean_sq,
        [1.0, 2.0, 3.0, 4.0]
    );
    // expert 0: [1, 2], expert 1: [3, 3] -> mean [2, 2.5]
    assert_eq!(
        s.get("blk.0.ffn_down_exps.weight").unwrap().mean_sq,
        [2.0, 2.5]
    );
}

#[test]
fn legacy_imatrix_values_are_divided_by_ncall() {
    for trailer in [false, true] {
        let f = legacy_imatrix(&[("blk.0.attn_k.weight", 4, vec![4.0, 2.0])], trailer);
        let s = ActStats::parse_legacy(&f).unwrap();
        assert_eq!(s.get("blk.0.attn_k.weight").unwrap().mean_sq, [1.0, 0.5]);
    }
}

fn err_of(bytes: &[u8]) -> String {
    let p = tmp(&format!("bad-{}.imatrix", bytes.len()));
    std::fs::write(&p, bytes).unwrap();
    let e = ActStats::load(&p).unwrap_err().to_string();
    assert!(e.contains(&p.display().to_string()), "{e}");
    e
}

#[test]
fn bad_files_give_clear_errors() {
    let good = gguf_imatrix("imatrix", &[("a.weight", vec![1.0; 32], vec![2.0])]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() - 60].to_vec(), "not a valid GGUF"),
        (
            gguf_imatrix("model", &[("a.weight", vec![1.0; 32], vec![2.0])]),
            "not \"imatrix\"",
        ),
        (
            gguf_imatrix("imatrix", &[("a.weight", vec![1.0; 32], vec![0.0])]),
            "all counts are zero",
        ),
        (
            gguf_imatrix("imatrix", &[("a.weight", vec![f32::NAN; 32], vec![1.0])]),
            "not a finite non-negative",
        ),
        (gguf_imatrix("imatrix", &[]), "no *.in_sum2"),
        (
            b"hello, this is not an imatrix at all".to_vec(),
            "not plausible",
        ),
        (
            legacy_imatrix(&[("x.weight", 0, vec![1.0])], false),
            "ncall 0",
        ),
        (
            {
                let mut f = legacy_imatrix(&[("x.weight", 1, vec![1.0, 2.0])], false);
                f.truncate(f.len() - 3);
                f
            },
            "runs past the end",
        ),
        (
            {
                let mut f = legacy_imatrix(&[("x.weight", 1, vec![1.0])], true);
                f.push(0);
                f
            },
            "trailing garbage",
        ),
        (
            legacy_imatrix(
                &[("x.weight", 1, vec![1.0]), ("x.weight", 1, vec![1.0])],
                false,
            ),
            "duplicate entry",
        ),
    ];
    for (bytes, want) in cases {
        let e = err_of(&bytes);
        assert!(e.contains(want), "expected {want:?} in {e:?}");
    }
    assert!(ActStats::load(Path::new("/nonexistent/imatrix.gguf")).is_err());
}

/// An imatrix GGUF with tensors of any shape (name, dims, values).
fn shaped(tensors: &[(&str, Vec<u64>, Vec<f32>)]) -> Vec<u8> {
    let mut w = HeaderWriter::new(3);
    w.kv(&KeyValue::new("general.type", Value::string("imatrix")));
    let mut data = Vec::new();
    for (name, dims, vals) in tensors {
        w.tensor(name, dims, GgmlType::F32, data.len() as u64);
        data.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        data.resize(data.len().div_ceil(32) * 32, 0);
    }
    let mut out = w.finish(32);
    out.extend(data);
    out
}

/// Shapes found by fuzzing (scripts/fuzz.sh, imatrix_read): a 0-dimensional counts tensor
/// panicked, and a zero-sized dimension could hide a huge channel count (allocated before
/// any check). Both are errors now, as is a third dimension.
#[test]
fn odd_shapes_are_errors_not_panics() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            shaped(&[
                ("a.weight.in_sum2", vec![8, 1], vec![1.0; 8]),
                ("a.weight.counts", vec![], vec![2.0]),
            ]),
            "counts for 1 matrices",
        ),
        (
            shaped(&[
                ("a.weight.in_sum2", vec![1 << 40, 0], vec![]),
                ("a.weight.counts", vec![1, 0], vec![]),
            ]),
            "holds no data",
        ),
        (
            shaped(&[
                ("a.weight.in_sum2", vec![4, 2, 0], vec![]),
                ("a.weight.counts", vec![1, 2], vec![1.0, 1.0]),
            ]),
            "is not [n_in, n_mat]",
        ),
        (
            shaped(&[
                ("a.weight.in_sum2", vec![], vec![1.0]),
                ("a.weight.counts", vec![1, 1], vec![1.0]),
            ]),
            "is not [n_in, n_mat]",
        ),
    ];
    for (bytes, want) in cases {
        let e = ActStats::from_bytes(&bytes).unwrap_err();
        assert!(e.contains(want), "expected {want:?} in {e:?}");
    }
}

/// `gguf_imatrix` plus `W.in_max` tensors.
fn with_max(entries: &[(&str, Vec<f32>, Vec<f32>)], maxes: &[(&str, Vec<f32>)]) -> Vec<u8> {
    let base = gguf_imatrix("imatrix", entries);
    let h = dcgguf::gguf::GgufHeader::parse(&base).unwrap();
    let mut tensors = dcgguf::gguf::tensor_entries(&h, &base);
    for (name, m) in maxes {
        let data = m.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((
            format!("{name}.in_max"),
            vec![m.len() as u64],
            GgmlType::F32,
            data,
        ));
    }
    dcgguf::gguf::build_file(&h.kvs, &tensors)
}

#[test]
fn recorded_maxima_are_read_and_checked() {
    let e = [("blk.0.attn_q.weight", vec![4.0, 16.0], vec![4.0])];
    let s =
        ActStats::parse_gguf(&with_max(&e, &[("blk.0.attn_q.weight", vec![3.0, 5.0])])).unwrap();
    let st = s.get("blk.0.attn_q.weight").unwrap();
    assert_eq!(st.max_abs.as_deref(), Some(&[3.0, 5.0][..]));
    assert_eq!(st.magnitude(), [3.0, 5.0]);
    // Without maxima the RMS stands in.
    let s = ActStats::parse_gguf(&gguf_imatrix("imatrix", &e)).unwrap();
    assert_eq!(
        s.get("blk.0.attn_q.weight").unwrap().magnitude(),
        [1.0, 2.0]
    );
    for (maxes, want) in [
        (
            vec![("blk.0.attn_q.weight", vec![3.0])],
            "1 values for 2 channels",
        ),
        (
            vec![("blk.0.attn_q.weight", vec![3.0, -1.0])],
            "channel 1 has max|x| = -1",
        ),
        (
            vec![("blk.0.attn_q.weight", vec![3.0, f32::NAN])],
            "channel 1 has max|x| = NaN",
        ),
        (
            vec![("blk.9.attn_q.weight", vec![3.0, 1.0])],
            "in_max without blk.9.attn_q.weight.in_sum2",
        ),
    ] {
        let err = ActStats::parse_gguf(&with_max(&e, &maxes)).unwrap_err();
        assert!(err.contains(want), "{err} (want {want})");
    }
}

fn models_dir() -> PathBuf {
    llama_support::minilm_dir(module_path!())
}

fn llama_bin() -> PathBuf {
    llama_support::llama_bin_dir(module_path!())
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn calibrate_runs_real_llama_imatrix_and_validates_against_the_model() {
    let (models, bin) = (models_dir(), llama_bin());
    let model = models.join("all-MiniLM-L6-v2-f32.gguf");
    let text = tmp("calib.txt");
    let para = "Calibration text is ordinary prose about weather, cooking, software and travel. \
                It should exercise the model on a few hundred tokens of varied English. ";
    std::fs::write(&text, para.repeat(12)).unwrap();
    let out = tmp("minilm.imatrix.gguf");
    // calibrate preloads libdcgguf_preload.so from next to this test binary: build it.
    llama_support::libdcgguf_preload();
    let r = dcgguf::quant::calibrate(&dcgguf::quant::CalibrateArgs {
        model: model.clone(),
        text: Some(text),
        output: out.clone(),
        covariance: None,
        no_covariance: true,
        cov_budget: dcgguf::quant::calibrate::DEFAULT_COV_BUDGET,
        llama_bin: Some(bin),
        ctx: 128,
    })
    .unwrap();
    // 6 layers x (q, k, v, output, up, down): every matmul input, no token_embd (a lookup).
    assert_eq!(r.tensors, 36);
    let s = ActStats::load(&out).unwrap();
    let map = std::fs::read(&model).unwrap();
    let h = dcgguf::gguf::GgufHeader::parse(&map).unwrap();
    s.check_against(&h).unwrap();
    let q = &s.get("blk.0.attn_q.weight").unwrap().mean_sq;
    assert_eq!(q.len(), 384);
    assert!(q.iter().all(|v| v.is_finite() && *v > 0.0));
    // The paper's statistic, recorded by libdcgguf_preload.so's graph callback inside llama-imatrix:
    // every weight has max|x| per channel, and a maximum is never below the RMS.
    for (name, st) in &s.tensors {
        let max = st
            .max_abs
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no max|x| recorded"));
        for (j, (m, r)) in max.iter().zip(st.rms()).enumerate() {
            assert!(
                *m >= r * 0.999 && m.is_finite(),
                "{name} channel {j}: max {m} < rms {r}"
            );
        }
        assert!(
            max.iter().zip(st.rms()).any(|(m, r)| *m > r * 1.5),
            "{name}: max == rms?"
        );
    }
    // Statistics of another model's shape are refused.
    let mut wrong = s.clone();
    wrong
        .tensors
        .get_mut("blk.0.attn_q.weight")
        .unwrap()
        .mean_sq
        .pop();
    assert!(
        wrong
            .check_against(&h)
            .unwrap_err()
            .contains("383 channels")
    );
}
