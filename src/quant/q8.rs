//! Compression-aware Q8_0 quantization of one tensor.
//!
//! Output is always standard `block_q8_0` (fp16 scale `d`, 32 x int8 `q`; value `d * q`), so
//! llama.cpp runs it natively. What is "compression-aware" is the choice of `d` and `q`:
//!
//! * **Shared step.** llama.cpp picks `d = amax/127` per block: every block's scale is a
//!   different fp16 number (~0.5 bit/weight of nearly incompressible scale bytes) and the
//!   step follows the block's largest weight. Here one step `delta` is used for a whole
//!   tensor (per block column when activation statistics are given), raised only where a
//!   block would overflow +-127. The scale plane becomes a handful of repeated values that
//!   Zstd removes, and for a given mean squared error a uniform step needs fewer bits under
//!   an entropy coder than per-block steps (Jensen: the mean of log steps is lower for the
//!   same mean of squared steps).
//! * **Activation-aware step.** With per-channel mean x^2 (`a_j`, from an imatrix), the output
//!   error of `y = W x` from quantization noise of variance `delta^2/12` in column `j` is
//!   weighted by `a_j`; minimizing `sum_j a_j delta_j^2 + lambda * rate` gives
//!   `delta_b ~ abar_b^(-1/2)` for a block column `b` (`alpha` generalizes the 1/2).
//! * **Pruning** (optional): weights with the smallest saliency `|w_ij| sqrt(a_j)` are set to 0.
//! * **RDO rounding** (optional): each weight picks `floor` or `ceil` of `w/d` to minimize
//!   `(w/d - q)^2 + lambda * bits(q)`, with `bits` from the tensor's own histogram.

use crate::codec::half::{f16_to_f32, f32_to_f16};

pub const QK8_0: usize = 32;
pub const BLOCK_BYTES: usize = 34;

/// How one tensor is quantized.
#[derive(Clone, Debug, PartialEq)]
pub struct GridOptions {
    /// Step relative to the tensor's mean llama.cpp Q8_0 step (`mean(amax_b)/127`). `None`:
    /// llama.cpp's own rounding (`d = amax/127` per block, bit-identical to llama-quantize).
    pub step: Option<f32>,
    /// Exponent of the activation-aware step: `delta_b ~ (abar_b / abar)^(-alpha)`.
    pub alpha: f32,
    /// Fraction of weights to prune by saliency (0 = none).
    pub prune: f32,
    /// RDO rounding strength in step^2 per bit (0 = round to nearest).
    pub rdo: f32,
    /// Absolute step for this tensor (set by the activation-aware per-tensor allocation);
    /// overrides `step * mean(amax)/127`.
    pub abs_step: Option<f32>,
    /// Base step per row (`mean over the row's blocks of amax/127`) instead of per tensor.
    /// Whole-model quantization sets it per tensor from `QuantOptions::per_row` (the one
    /// place a caller chooses it); this field is for [`quantize`] on its own.
    pub per_row: bool,
    /// How far each block's step follows its own `amax/127` (0 = shared step, 1 = like
    /// llama.cpp): `delta_b = base^(1-beta) * (amax_b/127)^beta`, snapped to a geometric grid
    /// of ratio 2^(1/4) so the scales stay cheap to code.
    pub block_adapt: f32,
}

impl Default for GridOptions {
    fn default() -> Self {
        GridOptions {
            step: Some(0.8),
            alpha: 0.0,
            prune: 0.0,
            rdo: 0.0,
            abs_step: None,
            per_row: false,
            block_adapt: 0.0,
        }
    }
}

/// llama.cpp's `quantize_row_q8_0_ref`, bit for bit.
pub fn quantize_reference(x: &[f32], out: &mut Vec<u8>) {
    for b in x.chunks_exact(QK8_0) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
        out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
    }
}

fn mean_q8_step(amax: &[f32]) -> f32 {
    (amax.iter().map(|&a| f64::from(a)).sum::<f64>() / amax.len() as f64) as f32 / 127.0
}

/// Mean llama.cpp Q8_0 step (`mean over blocks of amax/127`) of a tensor.
pub fn q8_mean_step(x: &[f32]) -> f32 {
    let amax: Vec<f32> = x
        .chunks_exact(QK8_0)
        .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())))
        .collect();
    mean_q8_step(&amax)
}

/// The fp16 step nearest `want` that still holds a block of largest magnitude `amax` within
/// +-127 (raised to `amax/127` where `want` is smaller).
fn fit_step(want: f32, amax: f32) -> f32 {
    let mut d = f16_to_f32(f32_to_f16(want.max(amax / 127.0)));
    if amax / d > 127.49 {
        // fp16 rounded the step down too far: take the next fp16 up.
        d = f16_to_f32(f32_to_f16(d) + 1);
    }
    d
}

/// Block steps of the shared-step grid (`step` x the tensor's mean llama.cpp Q8_0 step,
/// raised where a block would overflow), as [`quantize`] uses without statistics; 0 for
/// all-zero blocks. For GPTQ rounding on that grid.
pub fn shared_scales(x: &[f32], step: f32) -> Vec<f32> {
    grid_scales(x, x.len().max(QK8_0), step)
}

/// [`shared_scales`] with one step per row (`ne0` weights): `step` x the row's own mean
/// llama.cpp Q8_0 step, as [`quantize`] uses with `per_row`.
pub fn row_scales(x: &[f32], ne0: usize, step: f32) -> Vec<f32> {
    grid_scales(x, ne0, step)
}

/// Block steps with one shared step per `group` weights (a multiple of [`QK8_0`]).
fn grid_scales(x: &[f32], group: usize, step: f32) -> Vec<f32> {
    let amax: Vec<f32> = x
        .chunks_exact(QK8_0)
        .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())))
        .collect();
    amax.chunks(group / QK8_0)
        .flat_map(|g| {
            let want = mean_q8_step(g) * step;
            g.iter()
                .map(move |&a| if a == 0.0 { 0.0 } else { fit_step(want, a) })
        })
        .collect()
}

/// Dequantizes Q8_0 blocks.
pub fn dequantize(blocks: &[u8], out: &mut Vec<f32>) {
    for b in blocks.chunks_exact(BLOCK_BYTES) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        out.extend(b[2..].iter().map(|&q| d * f32::from(q as i8)));
    }
}

/// Quantizes a row-major tensor (`ne0` = row length, a multiple of 32) to Q8_0 blocks.
/// `importance`: per input channel (length `ne0`) mean x^2, or `None`.
pub fn quantize(x: &[f32], ne0: usize, importance: Option<&[f32]>, o: &GridOptions) -> Vec<u8> {
    assert!(ne0.is_multiple_of(QK8_0) && x.len().is_multiple_of(ne0));
    let mut out = Vec::with_capacity(x.len() / QK8_0 * BLOCK_BYTES);
    let Some(step) = o.step else {
        quantize_reference(x, &mut out);
        return out;
    };
    let nbr = ne0 / QK8_0; // blocks per row
    let amax: Vec<f32> = x
        .chunks_exact(QK8_0)
        .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())))
        .collect();
    let base = match o.abs_step {
        Some(d) => d / step,
        None => mean_q8_step(&amax),
    };
    let row_base: Vec<f32> = if o.per_row {
        amax.chunks_exact(nbr).map(mean_q8_step).collect()
    } else {
        Vec::new()
    };
    // Step per block column.
    let col_factor: Vec<f32> = match importance {
        Some(imp) if o.alpha != 0.0 => {
            let mean = imp.iter().map(|&v| f64::from(v)).sum::<f64>() / imp.len() as f64;
            imp.chunks_exact(QK8_0)
                .map(|c| {
                    let m = c.iter().map(|&v| f64::from(v)).sum::<f64>() / QK8_0 as f64;
                    let r = if mean > 0.0 {
                        (m / mean).max(1e-6)
                    } else {
                        1.0
                    };
                    (r.powf(-f64::from(o.alpha)) as f32).clamp(0.125, 8.0)
                })
                .collect()
        }
        _ => vec![1.0; nbr],
    };
    // Saliency threshold for pruning.
    let col_w: Vec<f32> = match importance {
        Some(imp) => imp.iter().map(|v| v.sqrt()).collect(),
        None => vec![1.0; ne0],
    };
    let prune_below = if o.prune > 0.0 {
        let mut sal: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v.abs() * col_w[i % ne0])
            .collect();
        let k = ((sal.len() as f64 * f64::from(o.prune)) as usize).min(sal.len() - 1);
        *sal.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1
    } else {
        -1.0
    };
    // Scales: shared step, raised where a block would overflow.
    let scales: Vec<f32> = amax
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            if a == 0.0 {
                return 0.0;
            }
            let b = if o.per_row && o.abs_step.is_none() {
                row_base[i / nbr]
            } else {
                base
            };
            let mut want = b * step * col_factor[i % nbr];
            if o.block_adapt > 0.0 && b > 0.0 {
                let r = (a / 127.0 / b).max(1e-3).log2() * o.block_adapt;
                want *= 2f32.powf((r * 4.0).round() / 4.0);
            }
            fit_step(want, a)
        })
        .collect();
    let q_nearest = |xi: f32, d: f32| -> i32 {
        if d == 0.0 {
            0
        } else {
            ((xi / d).round() as i32).clamp(-127, 127)
        }
    };
    let prune = |i: usize, v: f32| prune_below >= 0.0 && v.abs() * col_w[i % ne0] <= prune_below;
    // Code lengths from the nearest-rounding histogram (for RDO).
    let bits: Option<Vec<f32>> = (o.rdo > 0.0).then(|| {
        let mut h = [1u64; 256];
        for (i, (&v, d)) in x
            .iter()
            .zip(scales.iter().flat_map(|d| [*d; QK8_0]))
            .enumerate()
        {
            let q = if prune(i, v) { 0 } else { q_nearest(v, d) };
            h[(q + 128) as usize] += 1;
        }
        let n: u64 = h.iter().sum();
        h.iter()
            .map(|&c| -((c as f64 / n as f64).log2()) as f32)
            .collect()
    });
    for (bi, blk) in x.chunks_exact(QK8_0).enumerate() {
        let d = scales[bi];
        out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
        for (k, &v) in blk.iter().enumerate() {
            let i = bi * QK8_0 + k;
            let q = if d == 0.0 || prune(i, v) {
                0
            } else if let Some(bits) = &bits {
                let t = v / d;
                let lo = (t.floor() as i32).clamp(-127, 127);
                let hi = (lo + 1).min(127);
                let cost = |q: i32| {
                    let e = t - q as f32;
                    e * e + o.rdo * bits[(q + 128) as usize]
                };
                if cost(hi) < cost(lo) { hi } else { lo }
            } else {
                q_nearest(v, d)
            };
            out.push(q as i8 as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<f32> {
        let mut s = 12345u64;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect()
    }

    #[test]
    fn shared_step_error_is_bounded_and_scales_repeat() {
        let x = data(64 * 32);
        let o = GridOptions {
            step: Some(1.5),
            ..GridOptions::default()
        };
        let q = quantize(&x, 64, None, &o);
        let mut y = Vec::new();
        dequantize(&q, &mut y);
        let d0 = &q[0..2];
        let same = q
            .chunks_exact(BLOCK_BYTES)
            .filter(|b| &b[0..2] == d0)
            .count();
        assert!(same > 50, "{same}");
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= 0.05 / 127.0 * 1.6, "{a} {b}");
        }
    }

    #[test]
    fn shared_scales_are_the_grid_of_quantize() {
        let x = data(16 * 64);
        let o = GridOptions {
            step: Some(1.7),
            ..GridOptions::default()
        };
        let q = quantize(&x, 64, None, &o);
        let s = shared_scales(&x, 1.7);
        for (blk, d) in q.chunks_exact(BLOCK_BYTES).zip(&s) {
            assert_eq!(blk[..2], f32_to_f16(*d).to_le_bytes());
        }
    }

    #[test]
    fn row_scales_are_the_grid_of_per_row_quantize() {
        // Rows of different magnitudes, so that per-row and shared steps differ.
        let x: Vec<f32> = data(16 * 64)
            .chunks_exact(64)
            .enumerate()
            .flat_map(|(r, row)| {
                row.iter()
                    .map(move |v| v * (1 + r) as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        let o = GridOptions {
            step: Some(1.7),
            per_row: true,
            ..GridOptions::default()
        };
        let q = quantize(&x, 64, None, &o);
        let s = row_scales(&x, 64, 1.7);
        assert_eq!(s.len(), q.len() / BLOCK_BYTES);
        for (blk, d) in q.chunks_exact(BLOCK_BYTES).zip(&s) {
            assert_eq!(blk[..2], f32_to_f16(*d).to_le_bytes());
        }
        assert_ne!(
            s,
            shared_scales(&x, 1.7),
            "rows of other magnitudes get other steps"
        );
    }

    #[test]
    fn reference_matches_llama_rounding() {
        let mut x = vec![0f32; 32];
        x[0] = 1.0;
        x[1] = -0.5;
        let q = quantize(
            &x,
            32,
            None,
            &GridOptions {
                step: None,
                ..Default::default()
            },
        );
        assert_eq!(&q[0..2], &f32_to_f16(1.0 / 127.0).to_le_bytes());
        assert_eq!(q[2] as i8, 127);
        assert_eq!(q[3] as i8, -64); // -63.5 rounds away from zero
    }
}
