//! Per-tensor error diagnostics for lossy mode (`DCGGUF_QUANT_PROXY=FILE`, for measuring, not
//! used by the quantizer): for a GPTQ-rounded matmul weight, the output-error proxy
//! `sum_rows e H e^T` (`e` = dequantized - original, `H = E[x x^T]` of its input) of the
//! chosen rounding, of nearest rounding on the same grid and of llama.cpp's Q8_0 rounding
//! (`amax/127` per block, round to nearest) of the same weights; for a lookup-only token
//! embedding (no `H`), the mean squared error and the mean per-row relative error of both.
//! One line per tensor is appended to FILE. Sampled rows keep it cheap (the ratio of two
//! proxies on the same rows is what is compared).

use std::io::Write;
use std::path::PathBuf;

use rayon::prelude::*;

use super::q8::{self, BLOCK_BYTES, QK8_0};

/// The environment variable naming the TSV file the diagnostics are appended to.
pub const PROXY_ENV: &str = "DCGGUF_QUANT_PROXY";

/// Rows sampled per weight for the `e H e^T` proxies.
const SAMPLE_ROWS: usize = 64;

/// The file diagnostics go to, if asked for.
pub fn target() -> Option<PathBuf> {
    std::env::var_os(PROXY_ENV).map(PathBuf::from)
}

/// Evenly spaced row indices (at most [`SAMPLE_ROWS`]).
fn sample(rows: usize) -> Vec<usize> {
    let k = rows.min(SAMPLE_ROWS);
    (0..k).map(|i| i * rows / k).collect()
}

/// Errors of llama.cpp's Q8_0 rounding of one row.
fn q8_errors(row: &[f32]) -> Vec<f32> {
    let mut q = Vec::with_capacity(row.len() / QK8_0 * BLOCK_BYTES);
    q8::quantize_reference(row, &mut q);
    let mut y = Vec::with_capacity(row.len());
    q8::dequantize(&q, &mut y);
    y.iter().zip(row).map(|(a, b)| a - b).collect()
}

/// `sum_r e_r H e_r^T` over the given error rows (each `n` long); `h` row-major `n x n`.
fn weighted(errs: &[Vec<f32>], h: &[f32], n: usize) -> f64 {
    // Each row of H is read once for all sampled rows (H can be 320 MB).
    h.par_chunks(n)
        .enumerate()
        .map(|(i, hi)| {
            errs.iter()
                .map(|e| {
                    let dot: f64 = hi.iter().zip(e).map(|(a, b)| f64::from(a * b)).sum();
                    f64::from(e[i]) * dot
                })
                .sum::<f64>()
        })
        .sum()
}

/// One line for a GPTQ-rounded weight. `x`/`h`: the weights and input second moment the
/// rounding saw (folded), `q` its Q8_0 bytes, `grid` the block steps it rounded on (`None`:
/// llama.cpp's); `x0`/`h0`: the unfolded weights and `H` (llama.cpp's Q8_0 rounds those).
#[allow(clippy::too_many_arguments)]
pub fn matmul_line(
    name: &str,
    ne0: usize,
    x: &[f32],
    h: &[f32],
    q: &[u8],
    grid: Option<&[f32]>,
    x0: &[f32],
    h0: &[f32],
) -> String {
    let rows = sample(x.len() / ne0);
    let nbr = ne0 / QK8_0;
    let mut chosen = Vec::new();
    let mut nearest = Vec::new();
    let mut llama = Vec::new();
    for &r in &rows {
        let xr = &x[r * ne0..(r + 1) * ne0];
        let mut y = Vec::with_capacity(ne0);
        q8::dequantize(
            &q[r * nbr * BLOCK_BYTES..(r + 1) * nbr * BLOCK_BYTES],
            &mut y,
        );
        chosen.push(y.iter().zip(xr).map(|(a, b)| a - b).collect::<Vec<f32>>());
        nearest.push(match grid {
            Some(s) => xr
                .iter()
                .enumerate()
                .map(|(j, &v)| {
                    let d = s[r * nbr + j / QK8_0];
                    let qv = if d > 0.0 {
                        (v / d).round_ties_even().clamp(-127.0, 127.0)
                    } else {
                        0.0
                    };
                    qv * d - v
                })
                .collect(),
            None => q8_errors(xr),
        });
        llama.push(q8_errors(&x0[r * ne0..(r + 1) * ne0]));
    }
    let pc = weighted(&chosen, h, ne0);
    let pn = weighted(&nearest, h, ne0);
    let pl = weighted(&llama, h0, ne0);
    format!(
        "{name}\tmatmul\t{ne0}\t{}\t{pl:.6e}\t{pn:.6e}\t{pc:.6e}\t{:.4}\t{:.4}",
        rows.len(),
        pn / pl,
        pc / pl
    )
}

/// One line for a tensor rounded without `H` (a lookup-only token embedding): squared error
/// summed over all weights, and the mean over rows of `|e_r|^2 / |w_r|^2`, for the chosen
/// rounding and llama.cpp's.
pub fn lookup_line(name: &str, ne0: usize, x: &[f32], q: &[u8]) -> String {
    let nbr = ne0 / QK8_0;
    let per_row: Vec<(f64, f64, f64, f64)> = x
        .par_chunks(ne0)
        .zip(q.par_chunks(nbr * BLOCK_BYTES))
        .map(|(xr, qr)| {
            let mut y = Vec::with_capacity(ne0);
            q8::dequantize(qr, &mut y);
            let ec: f64 = y
                .iter()
                .zip(xr)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            let el: f64 = q8_errors(xr).iter().map(|e| f64::from(*e).powi(2)).sum();
            let w: f64 = xr.iter().map(|v| f64::from(*v).powi(2)).sum();
            let (rc, rl) = if w > 0.0 {
                (ec / w, el / w)
            } else {
                (0.0, 0.0)
            };
            (ec, el, rc, rl)
        })
        .collect();
    let n = per_row.len() as f64;
    let (ec, el, rc, rl) = per_row.iter().fold((0.0, 0.0, 0.0, 0.0), |a, b| {
        (a.0 + b.0, a.1 + b.1, a.2 + b.2, a.3 + b.3)
    });
    format!(
        "{name}\tlookup\t{ne0}\t{}\t{el:.6e}\t{:.6e}\t{ec:.6e}\t{:.6e}\t{:.4}",
        per_row.len(),
        rl / n,
        rc / n,
        ec / el
    )
}

/// Appends a line to the diagnostics file (errors are reported, not fatal: it is a
/// measurement aid).
pub fn append(path: &std::path::Path, line: &str) {
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = r {
        eprintln!("{}: {e}", path.display());
    }
}
