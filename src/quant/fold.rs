//! Per-input-channel re-scaling folded into the preceding operation (SmoothQuant style), so
//! that the model computes the same function before quantization.
//!
//! A fold multiplies input column `j` of the *consumer* weights by `s_j` and divides output
//! channel `j` of every *producer* (weight rows, biases, norm weights and biases) by `s_j`.
//! It is exact only where channel `j` of the producer's output reaches the consumer through
//! operations that commute with a per-channel scale and reaches nothing else:
//!
//! * `bert` (post-LN): the inputs of `attn_q/k/v` and `ffn_up` are LayerNorm outputs that also
//!   feed the residual stream, so scaling those norms would change the residual: **not
//!   folded**. `ffn_down` reads `gelu(ffn_up x + b)`: GELU does not commute with scaling:
//!   **not folded**. `attn_output` reads `softmax(QK^T) V`, linear in `V` per channel:
//!   **folded into `attn_v` rows and `attn_v.bias`** (exact).
//! * `llama`, `qwen2`, `qwen3` (pre-RMSNorm, SwiGLU): `attn_norm` -> `attn_q/k/v`,
//!   `ffn_norm` -> `ffn_gate/up`, `ffn_up` rows -> `ffn_down` (`silu(g) * u` is linear in
//!   `u`), and `attn_v` rows -> `attn_output` when there is no GQA (`n_head_kv == n_head`).
//!   Implemented from llama.cpp's graph; not tested on a full-precision llama model here.
//!
//! Where nothing can be folded, activation awareness comes from the quantization grid
//! ([`super::q8`]).

use std::collections::HashMap;

use super::stats::ActStats;
use crate::gguf::GgufHeader;

/// One fold: consumers' input columns times `s`, producers' output channels divided by `s`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fold {
    pub consumers: Vec<String>,
    pub producers: Vec<String>,
    /// Imatrix entry that holds the statistics of the consumers' common input.
    pub stats_from: String,
}

/// Folds that are exact for `arch`, restricted to tensors the model has.
pub fn plan(arch: &str, h: &GgufHeader, n_head: Option<u64>, n_head_kv: Option<u64>) -> Vec<Fold> {
    let has = |n: &str| h.tensors.iter().any(|t| t.name == n);
    let n_layer = (0..)
        .take_while(|i| {
            h.tensors
                .iter()
                .any(|t| t.name.starts_with(&format!("blk.{i}.")))
        })
        .count();
    let no_gqa = n_head.is_some() && n_head == n_head_kv.or(n_head);
    let mut out = Vec::new();
    for i in 0..n_layer {
        let t = |s: &str| format!("blk.{i}.{s}");
        let mut push = |consumers: &[&str], producers: &[&str], stats: &str| {
            let consumers: Vec<String> = consumers.iter().map(|c| t(c)).collect();
            let producers: Vec<String> =
                producers.iter().map(|p| t(p)).filter(|p| has(p)).collect();
            if consumers.iter().all(|c| has(c)) && !producers.is_empty() {
                out.push(Fold {
                    consumers,
                    producers,
                    stats_from: t(stats),
                });
            }
        };
        match arch {
            "bert" if no_gqa => push(
                &["attn_output.weight"],
                &["attn_v.weight", "attn_v.bias"],
                "attn_output.weight",
            ),
            "llama" | "qwen2" | "qwen3" => {
                push(
                    &["attn_q.weight", "attn_k.weight", "attn_v.weight"],
                    &["attn_norm.weight"],
                    "attn_q.weight",
                );
                push(
                    &["ffn_gate.weight", "ffn_up.weight"],
                    &["ffn_norm.weight"],
                    "ffn_up.weight",
                );
                push(
                    &["ffn_down.weight"],
                    &["ffn_up.weight", "ffn_up.bias"],
                    "ffn_down.weight",
                );
                if no_gqa {
                    push(
                        &["attn_output.weight"],
                        &["attn_v.weight", "attn_v.bias"],
                        "attn_output.weight",
                    );
                }
            }
            _ => {}
        }
    }
    out
}

/// Per-tensor scale vectors: `columns[name]` multiplies input columns, `rows[name]` divides
/// output channels (rows of a 2-D weight, elements of a 1-D vector).
#[derive(Clone, Debug, Default)]
pub struct Scales {
    pub columns: HashMap<String, Vec<f32>>,
    pub rows: HashMap<String, Vec<f32>>,
}

/// `s_j = rms_j^alpha`, normalized to geometric mean 1 and clamped to [1/32, 32].
pub fn channel_scales(rms: &[f32], alpha: f32) -> Vec<f32> {
    let floor = rms.iter().copied().fold(0f32, f32::max) * 1e-6 + f32::MIN_POSITIVE;
    let logs: Vec<f64> = rms
        .iter()
        .map(|&r| f64::from(alpha) * f64::from(r.max(floor)).ln())
        .collect();
    let mean = logs.iter().sum::<f64>() / logs.len() as f64;
    logs.iter()
        .map(|l| ((l - mean).exp() as f32).clamp(1.0 / 32.0, 32.0))
        .collect()
}

/// Scales for `folds` from `stats` (folds without statistics are skipped).
pub fn scales(folds: &[Fold], stats: &ActStats, alpha: f32) -> Scales {
    let mut s = Scales::default();
    for f in folds {
        let Some(st) = stats.get(&f.stats_from) else {
            continue;
        };
        let v = channel_scales(&st.magnitude(), alpha);
        for c in &f.consumers {
            merge(&mut s.columns, c, &v);
        }
        for p in &f.producers {
            merge(&mut s.rows, p, &v);
        }
    }
    s
}

fn merge(m: &mut HashMap<String, Vec<f32>>, k: &str, v: &[f32]) {
    match m.get_mut(k) {
        Some(e) => e.iter_mut().zip(v).for_each(|(a, b)| *a *= b),
        None => {
            m.insert(k.to_string(), v.to_vec());
        }
    }
}

/// Applies the scales to one tensor's values (`ne0` = row length).
pub fn apply(name: &str, x: &mut [f32], ne0: usize, s: &Scales) {
    if let Some(c) = s.columns.get(name) {
        for row in x.chunks_exact_mut(ne0) {
            row.iter_mut().zip(c).for_each(|(v, s)| *v *= s);
        }
    }
    if let Some(r) = s.rows.get(name) {
        if x.len() == r.len() {
            x.iter_mut().zip(r).for_each(|(v, s)| *v /= s);
        } else {
            for (row, s) in x.chunks_exact_mut(ne0).zip(r) {
                row.iter_mut().for_each(|v| *v /= s);
            }
        }
    }
}

/// Exact channel permutations: the intermediate channels of a feed-forward block can be
/// reordered (rows of `ffn_up`/`ffn_gate` and their biases, columns of `ffn_down`) without
/// changing the function. Sorting them by activation RMS puts channels of similar magnitude
/// into the same 32-wide block, which lowers the error of llama.cpp's Q8_0 quantization of
/// the `ffn_down` input activations (the dominant error of Q8_0 inference on MiniLM) and
/// lets the activation-aware step act per block.
#[derive(Clone, Debug, Default)]
pub struct Perms {
    /// `rows[name][i]` = source row (or element of a 1-D tensor) of output row `i`.
    pub rows: HashMap<String, Vec<usize>>,
    /// `columns[name][j]` = source column of output column `j`.
    pub columns: HashMap<String, Vec<usize>>,
}

pub fn ffn_permutations(h: &GgufHeader, stats: &ActStats) -> Perms {
    let mut p = Perms::default();
    let has = |n: &str| h.tensors.iter().any(|t| t.name == n);
    for i in 0.. {
        let down = format!("blk.{i}.ffn_down.weight");
        if !has(&down) {
            if i > 0 || !h.tensors.iter().any(|t| t.name.starts_with("blk.")) {
                break;
            }
            continue;
        }
        let Some(st) = stats.get(&down) else { continue };
        let mut order: Vec<usize> = (0..st.mean_sq.len()).collect();
        order.sort_by(|&a, &b| st.mean_sq[b].total_cmp(&st.mean_sq[a]));
        p.columns.insert(down.clone(), order.clone());
        for s in [
            "ffn_up.weight",
            "ffn_up.bias",
            "ffn_gate.weight",
            "ffn_gate.bias",
        ] {
            let n = format!("blk.{i}.{s}");
            if has(&n) {
                p.rows.insert(n, order.clone());
            }
        }
    }
    p
}

impl Perms {
    /// Permutes one tensor's values (`ne0` = row length) in place.
    pub fn apply(&self, name: &str, x: &mut [f32], ne0: usize) {
        if let Some(c) = self.columns.get(name) {
            for row in x.chunks_exact_mut(ne0) {
                let src = row.to_vec();
                row.iter_mut().zip(c).for_each(|(v, &j)| *v = src[j]);
            }
        }
        if let Some(r) = self.rows.get(name) {
            let src = x.to_vec();
            if x.len() == r.len() {
                x.iter_mut().zip(r).for_each(|(v, &j)| *v = src[j]);
            } else {
                for (row, &j) in x.chunks_exact_mut(ne0).zip(r) {
                    row.copy_from_slice(&src[j * ne0..(j + 1) * ne0]);
                }
            }
        }
    }

    pub fn touches(&self, name: &str) -> bool {
        self.rows.contains_key(name) || self.columns.contains_key(name)
    }

    /// Statistics follow the permutation of the tensor's input columns.
    pub fn permute_stats(&self, name: &str, a: &mut [f32]) {
        if let Some(c) = self.columns.get(name) {
            let src = a.to_vec();
            a.iter_mut().zip(c).for_each(|(v, &j)| *v = src[j]);
        }
    }
}
