//! Lossy mode (`compress --quantize int8`) on real MiniLM weights with real llama.cpp:
//! llama.cpp-identical rounding, exact decode of the intended Q8_0 bytes, function-preserving
//! folds, and embedding fidelity / size of the default setting.

mod llama_support;

use std::path::{Path, PathBuf};

use dcgguf::dc::{CompressOptions, decompress_file};
use dcgguf::gguf::GgufHeader;
use dcgguf::quant::{self, ActStats, ChannelStats, QuantOptions};

fn tmp(name: &str) -> PathBuf {
    llama_support::scratch_dir("dcgguf-quant-int8").join(name)
}

fn models_dir() -> PathBuf {
    llama_support::minilm_dir(module_path!())
}

fn llama_bin() -> PathBuf {
    llama_support::llama_bin_dir(module_path!())
}

fn sentences_file() -> PathBuf {
    llama_support::eval_sentences_file()
}

fn embed(bin: &Path, model: &Path, sentences: &Path) -> Vec<Vec<f64>> {
    llama_support::embeddings(bin, model, sentences, "auto")
}

fn embed_fa(bin: &Path, model: &Path, sentences: &Path, fa: &str) -> Vec<Vec<f64>> {
    llama_support::embeddings(bin, model, sentences, fa)
}

fn cosines(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<f64> {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let n = |v: &[f64]| v.iter().map(|p| p * p).sum::<f64>().sqrt();
            dot / n(x) / n(y)
        })
        .collect()
}

/// Tensor name -> (type id, data bytes).
fn tensors(path: &Path) -> std::collections::HashMap<String, (u32, Vec<u8>)> {
    let b = std::fs::read(path).unwrap();
    let h = GgufHeader::parse(&b).unwrap();
    dcgguf::gguf::tensor_entries(&h, &b)
        .into_iter()
        .map(|(name, _, ty, data)| (name, (ty.id(), data)))
        .collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
#[cfg_attr(
    not(dcgguf_minilm),
    ignore = "needs the MiniLM models (scripts/fetch-models.sh)"
)]
fn step_zero_reproduces_llama_quantize_q8_0_bit_for_bit() {
    let m = models_dir();
    let out = tmp("reference.q8_0.gguf");
    let mut o = QuantOptions::default();
    o.grid.step = None;
    o.embd_step = Some(0.0);
    let r = quant::quantize_file(&m.join("all-MiniLM-L6-v2-f32.gguf"), &out, &o).unwrap();
    assert_eq!(r.quantized_tensors, 37);
    let ours = tensors(&out);
    let theirs = tensors(&m.join("all-MiniLM-L6-v2-q8_0.gguf"));
    assert_eq!(ours.len(), theirs.len());
    for (name, t) in &theirs {
        assert!(
            ours.get(name) == Some(t),
            "{name} differs from llama-quantize's Q8_0"
        );
    }
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 25_282_432);
    // A Q8_0 source is dequantized and re-quantized: llama.cpp's Q8_0 is a fixed point.
    let again = tmp("requantized.q8_0.gguf");
    quant::quantize_file(&m.join("all-MiniLM-L6-v2-q8_0.gguf"), &again, &o).unwrap();
    assert!(
        std::fs::read(&again).unwrap()
            == std::fs::read(m.join("all-MiniLM-L6-v2-q8_0.gguf")).unwrap(),
        "re-quantizing llama.cpp's Q8_0 with its own rounding changed it"
    );
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn dc_int8_decodes_to_exactly_the_intended_q8_0_and_llama_cpp_runs_it_well() {
    let m = models_dir();
    let f32_model = m.join("all-MiniLM-L6-v2-f32.gguf");
    let dc = tmp("default.dc.gguf");
    let o = QuantOptions::default();
    let (qr, cr) =
        quant::compress_lossy(&f32_model, &dc, &o, &CompressOptions::default(), &|_| {}).unwrap();
    assert_eq!(qr.quantized_tensors, 37);
    // No temporary left next to the output.
    let leftovers: Vec<_> = std::fs::read_dir(dc.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let back = tmp("default.back.gguf");
    decompress_file(&dc, &back, true, &|_| {}).unwrap();
    let intended = tmp("default.intended.gguf");
    quant::quantize_file(&f32_model, &intended, &o).unwrap();
    assert!(
        std::fs::read(&back).unwrap() == std::fs::read(&intended).unwrap(),
        "decompressed DC-INT8 is not the Q8_0 GGUF the converter wrote"
    );
    let h = GgufHeader::parse(&std::fs::read(&back).unwrap()).unwrap();
    let ftype = h
        .kvs
        .iter()
        .find(|kv| kv.key == b"general.file_type")
        .unwrap();
    assert_eq!(ftype.value.as_u64(), Some(7));

    let q8_size = std::fs::metadata(m.join("all-MiniLM-L6-v2-q8_0.gguf"))
        .unwrap()
        .len();
    let ratio = cr.output_bytes as f64 / q8_size as f64;
    assert!(
        ratio <= 0.82,
        "DC-INT8 default is {ratio:.3}x the Q8_0 file"
    );

    let bin = llama_bin();
    let s = sentences_file();
    let reference = embed(&bin, &f32_model, &s);
    let cos = cosines(&embed(&bin, &back, &s), &reference);
    let mean = cos.iter().sum::<f64>() / cos.len() as f64;
    let min = cos.iter().copied().fold(1.0, f64::min);
    eprintln!("DC-INT8 default: {ratio:.3}x Q8_0 size, mean cos {mean:.6}, min cos {min:.6}");
    assert!(mean >= 0.9995, "mean cosine {mean}");
    assert!(min >= 0.99, "min cosine {min}");
}

/// Synthetic statistics spanning 1e-3..1e3 so the folded scales differ a lot per channel.
fn wild_stats(h: &GgufHeader) -> ActStats {
    let mut s = ActStats::default();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for t in &h.tensors {
        if t.name.starts_with("blk.") && t.name.ends_with(".weight") && t.dims.len() == 2 {
            let v = (0..t.dims[0])
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    10f32.powf((seed % 6000) as f32 / 1000.0 - 3.0)
                })
                .collect();
            s.tensors.insert(
                t.name.clone(),
                ChannelStats {
                    mean_sq: v,
                    max_abs: None,
                },
            );
        }
    }
    s
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn folding_and_permuting_preserve_the_function() {
    let m = models_dir();
    let f32_model = m.join("all-MiniLM-L6-v2-f32.gguf");
    let bytes = std::fs::read(&f32_model).unwrap();
    let h = GgufHeader::parse(&bytes).unwrap();
    let o = QuantOptions {
        quantize: false,
        fold_alpha: Some(0.5),
        permute: true,
        stats: Some(wild_stats(&h)),
        ..QuantOptions::default()
    };
    let out = tmp("folded.f32.gguf");
    let r = quant::quantize_file(&f32_model, &out, &o).unwrap();
    assert_eq!(r.quantized_tensors, 0);
    // v rows + v bias + output columns (6 layers) and up rows + up bias + down columns.
    assert_eq!(r.folded_tensors, 6 * 3 + 6 * 3);
    let a = tensors(&f32_model);
    let b = tensors(&out);
    assert_ne!(
        a["blk.0.attn_v.weight"], b["blk.0.attn_v.weight"],
        "fold was a no-op"
    );

    // Exactness of the fold in Rust: W_o' (W_v' x + b_v') == W_o (W_v x + b_v).
    let n = 384;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let attn = |t: &std::collections::HashMap<String, (u32, Vec<u8>)>| {
        let wv = f32s(&t["blk.0.attn_v.weight"].1);
        let bv = f32s(&t["blk.0.attn_v.bias"].1);
        let wo = f32s(&t["blk.0.attn_output.weight"].1);
        let v: Vec<f64> = (0..n)
            .map(|r| {
                (0..n).map(|c| f64::from(wv[r * n + c] * x[c])).sum::<f64>() + f64::from(bv[r])
            })
            .collect();
        (0..n)
            .map(|r| (0..n).map(|c| f64::from(wo[r * n + c]) * v[c]).sum::<f64>())
            .collect::<Vec<f64>>()
    };
    let (ya, yb) = (attn(&a), attn(&b));
    let scale = ya.iter().map(|v| v.abs()).fold(0.0, f64::max);
    for (p, q) in ya.iter().zip(&yb) {
        assert!((p - q).abs() <= 1e-5 * scale, "{p} vs {q}");
    }
    // And end to end through real llama.cpp. Its F32 path is itself only reproducible to
    // ~1e-4 per embedding element (flash attention on vs off on the same file differs that
    // much), so the folded model must stay within a small multiple of that noise.
    let bin = llama_bin();
    let s = sentences_file();
    let ea = embed_fa(&bin, &f32_model, &s, "on");
    let noise_run = embed_fa(&bin, &f32_model, &s, "off");
    let eb = embed_fa(&bin, &out, &s, "on");
    let max_diff = |x: &[Vec<f64>], y: &[Vec<f64>]| {
        x.iter()
            .flatten()
            .zip(y.iter().flatten())
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max)
    };
    let worst = max_diff(&ea, &eb);
    let noise = max_diff(&ea, &noise_run);
    let min_cos = cosines(&ea, &eb).into_iter().fold(1.0, f64::min);
    eprintln!(
        "folded F32 vs original: max |embedding difference| {worst:.2e} (llama.cpp's own \
         fa on/off noise {noise:.2e}), min cosine {min_cos:.9}"
    );
    assert!(
        worst <= 3.0 * noise.max(1e-5),
        "folded model differs by {worst}"
    );
    assert!(min_cos >= 1.0 - 1e-6, "min cosine {min_cos}");
}
