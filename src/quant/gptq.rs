//! GPTQ rounding (Frantar et al. 2022) on llama.cpp's Q8_0 grid.
//!
//! The block scales are llama.cpp's (`d = fp16(amax/127)` per 32-weight block, from the
//! original weights), so the output is a standard Q8_0 tensor with the same scale plane as
//! `llama-quantize`; only the rounding direction of each weight changes. Input columns are
//! quantized in order and each column's rounding error is pushed onto the not-yet-quantized
//! columns of the same row through the upper Cholesky factor `U` of `H^-1` (`U^T U = H^-1`),
//! where `H = E[x x^T]` is the input second moment of the matmul. This minimizes (greedily)
//! the output error `sum_rows e H e^T` instead of the weight error. Same algorithm as
//! `scripts/gptq-minilm.py` (dead channels get `H_jj = 1`, damping `damp * mean(diag H)`,
//! quants clamped to +-127, round half to even as numpy).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use super::q8::{BLOCK_BYTES, QK8_0};
use crate::codec::half::{f16_to_f32, f32_to_f16};
use crate::gguf::{GgmlType, GgufHeader, Value};
use crate::io::map_readonly;

/// Input second-moment matrices `H = E[x x^T]` keyed by weight name (`blk.0.attn_q.weight`),
/// from a covariance GGUF (`dcgguf calibrate`): `general.type = "covariance"`, one F32 tensor
/// `[n_in, n_in]` per weight, named like the weight.
///
/// A file is read one matrix at a time ([`Covariances::matrix`], with `pread`), not held in
/// memory: a 1.5B decoder's file is ~10 GB (one full matrix per weight), and quantizing needs
/// one matrix at a time. [`Covariances::load`] still checks every matrix before anything is
/// quantized (structure from the header, then the values, streamed), so a bad file fails
/// before minutes of work; each matrix is checked again when it is read for use (the file
/// could have changed in between).
#[derive(Clone, Debug)]
pub struct Covariances {
    /// Where it was read from (for error messages).
    pub source: String,
    /// name -> (n_in, absolute offset of the matrix's data).
    index: BTreeMap<String, (usize, u64)>,
    data: Data,
}

/// Where the matrices' bytes are.
#[derive(Clone, Debug)]
enum Data {
    /// [`Covariances::parse`]: the whole file in memory (small files, fuzzing).
    Bytes(Arc<[u8]>),
    /// [`Covariances::load`]: the open file (still readable if its path is removed, as
    /// `compress --calib` does with its temporary covariance file).
    File(Arc<File>),
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: invalid covariance file: {what}")]
pub struct CovError {
    pub path: String,
    pub what: String,
}

impl Covariances {
    /// Opens and checks a covariance file; memory stays at one matrix (the largest).
    pub fn load(path: &Path) -> Result<Covariances, CovError> {
        let err = |what: String| CovError {
            path: path.display().to_string(),
            what,
        };
        let (file, map) = map_readonly(path).map_err(|e| err(e.to_string()))?;
        // Only the header is read through the map (a few pages); it is dropped before the
        // matrices are read.
        let index = Self::index(&map).map_err(err)?;
        drop(map);
        let c = Covariances {
            source: path.display().to_string(),
            index,
            data: Data::File(Arc::new(file)),
        };
        let mut buf = Vec::new();
        for name in c.index.keys() {
            c.read_into(name, &mut buf)?;
        }
        Ok(c)
    }

    /// [`Covariances::load`] on bytes in memory.
    pub fn parse(bytes: &[u8]) -> Result<Covariances, CovError> {
        let err = |what| CovError {
            path: "(in memory)".into(),
            what,
        };
        let index = Self::index(bytes).map_err(err)?;
        let c = Covariances {
            source: "(in memory)".into(),
            index,
            data: Data::Bytes(bytes.into()),
        };
        let mut buf = Vec::new();
        for name in c.index.keys() {
            c.read_into(name, &mut buf)?;
        }
        Ok(c)
    }

    /// The header's checks: a covariance GGUF whose tensors are square F32 matrices inside the
    /// file. Returns name -> (n, absolute data offset).
    fn index(bytes: &[u8]) -> Result<BTreeMap<String, (usize, u64)>, String> {
        let h = GgufHeader::parse(bytes).map_err(|e| format!("not a valid GGUF: {e}"))?;
        h.check_data_fits(bytes.len() as u64)
            .map_err(|e| format!("not a valid GGUF: {e}"))?;
        match h.kvs.iter().find(|kv| kv.key == b"general.type") {
            Some(kv) if matches!(&kv.value, Value::String(s) if s == b"covariance") => {}
            Some(kv) => {
                return Err(format!(
                    "general.type is {}, not \"covariance\" (is this a model or imatrix file?)",
                    kv.value
                ));
            }
            None => {
                return Err(
                    "no general.type = \"covariance\" key (not a covariance file; make one \
                     with dcgguf calibrate)"
                        .into(),
                );
            }
        }
        let mut out = BTreeMap::new();
        for t in &h.tensors {
            if t.ty != GgmlType::F32 {
                return Err(format!("tensor {:?} is {}, expected F32", t.name, t.ty));
            }
            if t.dims.len() != 2 || t.dims[1] != t.dims[0] {
                return Err(format!(
                    "tensor {:?} has shape {:?}, expected a square [n_in, n_in] matrix",
                    t.name, t.dims
                ));
            }
            // The header parser checked n^2 * 4 = nbytes and that the data lies in the file.
            out.insert(
                t.name.clone(),
                (t.dims[0] as usize, h.tensor_range(t).start),
            );
        }
        if out.is_empty() {
            return Err("no tensors".into());
        }
        Ok(out)
    }

    /// Reads and checks the matrix of `weight` into `buf` (`n x n`, row-major). Returns `n`.
    fn read_into(&self, weight: &str, buf: &mut Vec<f32>) -> Result<usize, CovError> {
        let err = |what: String| CovError {
            path: self.source.clone(),
            what,
        };
        let &(n, at) = self
            .index
            .get(weight)
            .ok_or_else(|| err(format!("missing tensor {weight:?}")))?;
        let len = n * n;
        buf.clear();
        buf.resize(len, 0.0);
        match &self.data {
            Data::Bytes(b) => {
                let src = &b[at as usize..at as usize + 4 * len];
                for (v, c) in buf.iter_mut().zip(src.chunks_exact(4)) {
                    *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Data::File(f) => {
                // Through a byte view of `buf` (f32 has no invalid bit patterns), then from
                // little endian, so no second n x n buffer is needed.
                let bytes: &mut [u8] = bytemuck_f32(buf);
                f.read_exact_at(bytes, at)
                    .map_err(|e| err(format!("reading tensor {weight:?}: {e}")))?;
                if cfg!(target_endian = "big") {
                    buf.iter_mut()
                        .for_each(|v| *v = f32::from_bits(u32::from_le(v.to_bits())));
                }
            }
        }
        if let Some(v) = buf.iter().find(|v| !v.is_finite()) {
            return Err(err(format!("tensor {weight:?} holds {v}")));
        }
        if let Some(i) = (0..n).find(|&i| buf[i * n + i] < 0.0) {
            return Err(err(format!(
                "tensor {weight:?}: negative diagonal entry {} (not a second moment)",
                buf[i * n + i]
            )));
        }
        Ok(n)
    }

    /// The checked matrix of `weight`, `n x n` row-major, read now.
    pub fn matrix(&self, weight: &str) -> Result<Vec<f32>, CovError> {
        let mut buf = Vec::new();
        self.read_into(weight, &mut buf)?;
        Ok(buf)
    }

    /// The input width `n` of `weight`'s matrix, if the file has one.
    pub fn n_in(&self, weight: &str) -> Option<usize> {
        self.index.get(weight).map(|&(n, _)| n)
    }

    /// The weights with a matrix and their widths, in name order.
    pub fn weights(&self) -> impl Iterator<Item = (&str, usize)> {
        self.index.iter().map(|(k, &(n, _))| (k.as_str(), n))
    }

    /// How many matrices the file holds (at least one).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Never true for a loaded file (a file without matrices is refused).
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Every name in `needed` (weight name, input channels) must have a matrix of that size,
    /// and every matrix must belong to one of them.
    pub fn check_against(&self, needed: &[(String, usize)]) -> Result<(), CovError> {
        self.check_against_inner(needed).map_err(|what| CovError {
            path: self.source.clone(),
            what,
        })
    }

    fn check_against_inner(&self, needed: &[(String, usize)]) -> Result<(), String> {
        for (name, n_in) in needed {
            match self.n_in(name) {
                None => return Err(format!("missing tensor {name:?} (wrong model?)")),
                Some(n) if n != *n_in => {
                    return Err(format!(
                        "tensor {name:?} is {n} x {n}, but the weight has {n_in} input \
                         channels (wrong model?)"
                    ));
                }
                _ => {}
            }
        }
        if let Some(extra) = self
            .index
            .keys()
            .find(|k| !needed.iter().any(|(n, _)| n == *k))
        {
            return Err(format!(
                "tensor {extra:?} is not a quantized matmul weight of the model (wrong model?)"
            ));
        }
        Ok(())
    }
}

/// The bytes of an f32 slice, for reading a file straight into it.
fn bytemuck_f32(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: the byte slice covers exactly the f32 slice's memory (4 bytes per element, u8
    // has alignment 1), borrows it mutably for its lifetime, and every bit pattern written
    // through it is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 4) }
}

/// Default relative damping (`H += damp * mean(diag H) * I`), as the prototype.
pub const DEFAULT_DAMP: f64 = 0.1;

/// In-place Cholesky `A = L L^T` of a symmetric positive definite `n x n` row-major matrix;
/// on return the lower triangle holds `L` (the upper triangle is zeroed). `Err(j)`: the
/// leading minor of order `j + 1` is not positive definite.
fn cholesky(a: &mut [f64], n: usize) -> Result<(), usize> {
    for j in 0..n {
        let (head, rest) = a.split_at_mut(j * n);
        let row_j = &mut rest[..n];
        // Off-diagonal entries of row j: L_jk = (A_jk - sum_{m<k} L_jm L_km) / L_kk.
        for k in 0..j {
            let row_k = &head[k * n..k * n + n];
            let s: f64 = row_j[..k].iter().zip(&row_k[..k]).map(|(x, y)| x * y).sum();
            row_j[k] = (row_j[k] - s) / row_k[k];
        }
        let s: f64 = row_j[..j].iter().map(|x| x * x).sum();
        let d = row_j[j] - s;
        if !(d > 0.0 && d.is_finite()) {
            return Err(j);
        }
        row_j[j] = d.sqrt();
        row_j[j + 1..].iter_mut().for_each(|v| *v = 0.0);
    }
    Ok(())
}

/// Block size of the blocked factorizations: a 128 x 128 f64 block is 128 KiB (cache-sized);
/// the work between blocks is matrix products (`matrixmultiply::dgemm`).
const NB: usize = 128;

/// [`cholesky`], blocked (right-looking) so that a wide matrix is not streamed from memory once
/// per row: factor a diagonal block, solve the panel below it, subtract the panel's product
/// from the lower trailing matrix (rayon over block rows), repeat. `Err(j)` as [`cholesky`].
fn cholesky_blocked(a: &mut [f64], n: usize) -> Result<(), usize> {
    assert_eq!(a.len(), n * n);
    let mut k0 = 0;
    while k0 < n {
        let kb = NB.min(n - k0);
        let k1 = k0 + kb;
        // The diagonal block (its lower triangle is up to date), unblocked.
        let mut d = vec![0f64; kb * kb];
        for i in 0..kb {
            d[i * kb..(i + 1) * kb].copy_from_slice(&a[(k0 + i) * n + k0..(k0 + i) * n + k1]);
        }
        cholesky(&mut d, kb).map_err(|j| k0 + j)?;
        for i in 0..kb {
            a[(k0 + i) * n + k0..(k0 + i) * n + k1].copy_from_slice(&d[i * kb..(i + 1) * kb]);
        }
        if k1 == n {
            break;
        }
        // Panel: L_ik = A_ik L_kk^-T for the rows below (forward substitution per row).
        let below = &mut a[k1 * n..];
        below.par_chunks_mut(n).for_each(|row| {
            let p = &mut row[k0..k1];
            for c in 0..kb {
                let s: f64 = p[..c]
                    .iter()
                    .zip(&d[c * kb..c * kb + c])
                    .map(|(x, y)| x * y)
                    .sum();
                p[c] = (p[c] - s) / d[c * kb + c];
            }
        });
        // Trailing update of the lower part: A_ij -= sum_k L_ik L_jk for k1 <= j <= i, one
        // block row (and the columns up to its diagonal block) per task.
        let m = n - k1;
        let mut panel = vec![0f64; m * kb];
        for i in 0..m {
            panel[i * kb..(i + 1) * kb].copy_from_slice(&below[i * n + k0..i * n + k1]);
        }
        let panel = &panel;
        below
            .par_chunks_mut(NB * n)
            .enumerate()
            .for_each(|(bi, rows)| {
                let (r0, rb) = (bi * NB, rows.len() / n);
                let c = &mut rows[k1..];
                // SAFETY: dgemm reads `rb x kb` of `panel` from row r0 and `(r0 + rb) x kb` from
                // row 0 (both inside its `m x kb` elements: r0 + rb <= m), and writes the
                // `rb x (r0 + rb)` block of `c` at row stride n: row t ends at
                // t * n + r0 + rb <= t * n + m = t * n + (n - k1), inside `c` (rb rows of n
                // elements, minus k1 at the start).
                unsafe {
                    matrixmultiply::dgemm(
                        rb,
                        kb,
                        r0 + rb,
                        -1.0,
                        panel[r0 * kb..].as_ptr(),
                        kb as isize,
                        1,
                        panel.as_ptr(),
                        1,
                        kb as isize,
                        1.0,
                        c.as_mut_ptr(),
                        n as isize,
                        1,
                    );
                }
            });
        k0 = k1;
    }
    for i in 0..n {
        a[i * n + i + 1..(i + 1) * n]
            .iter_mut()
            .for_each(|v| *v = 0.0);
    }
    Ok(())
}

/// Inverse `M = L^-1` of a lower triangular matrix `l` with a positive diagonal (row-major),
/// blocked: block row `I` of `M` is `-L_II^-1 (L_I,<I M_<I,<I)` left of its diagonal block and
/// `L_II^-1` on it; the product is computed by column blocks (rayon), each only over the rows
/// of `M` that are not zero in it.
fn invert_lower_blocked(l: &[f64], n: usize) -> Vec<f64> {
    let mut m = vec![0f64; n * n];
    let mut i0 = 0;
    while i0 < n {
        let rb = NB.min(n - i0);
        let (done, cur) = m.split_at_mut(i0 * n);
        let done = &*done;
        // Column blocks c0..c1 of the rows i0..i1: X = -L_II^-1 T, T = L_I,[c0,i0) M_[c0,i0),[c0,c1)
        // (M_kc = 0 for k < c), and the diagonal block X = L_II^-1.
        let blocks: Vec<(usize, Vec<f64>)> = (0..=i0 / NB)
            .into_par_iter()
            .map(|cb| {
                let c0 = cb * NB;
                let w = if c0 == i0 { rb } else { NB.min(i0 - c0) };
                let mut t = vec![0f64; rb * w];
                if c0 < i0 {
                    // SAFETY: reads rb x (i0 - c0) of `l` at (i0, c0) (row stride n, inside
                    // the n x n matrix) and (i0 - c0) x w of `done` at (c0, c0) (rows below
                    // i0, all inside `done`, which holds i0 rows of n); writes the rb x w
                    // buffer `t` it owns.
                    unsafe {
                        matrixmultiply::dgemm(
                            rb,
                            i0 - c0,
                            w,
                            -1.0,
                            l[i0 * n + c0..].as_ptr(),
                            n as isize,
                            1,
                            done[c0 * n + c0..].as_ptr(),
                            n as isize,
                            1,
                            0.0,
                            t.as_mut_ptr(),
                            w as isize,
                            1,
                        );
                    }
                } else {
                    (0..rb).for_each(|r| t[r * w + r] = 1.0);
                }
                // Forward substitution with L_II, all w columns at once.
                for r in 0..rb {
                    let lr = &l[(i0 + r) * n + i0..(i0 + r) * n + i0 + r];
                    let (prev, row) = t.split_at_mut(r * w);
                    let row = &mut row[..w];
                    for (s, &ls) in lr.iter().enumerate() {
                        if ls != 0.0 {
                            let xs = &prev[s * w..(s + 1) * w];
                            row.iter_mut().zip(xs).for_each(|(v, x)| *v -= ls * x);
                        }
                    }
                    let inv = 1.0 / l[(i0 + r) * n + i0 + r];
                    row.iter_mut().for_each(|v| *v *= inv);
                }
                (c0, t)
            })
            .collect();
        for (c0, t) in blocks {
            let w = t.len() / rb;
            for r in 0..rb {
                cur[r * n + c0..r * n + c0 + w].copy_from_slice(&t[r * w..(r + 1) * w]);
            }
        }
        i0 += rb;
    }
    m
}

/// Why GPTQ rounding could not use a covariance matrix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GptqError {
    #[error("covariance has {got} elements, expected {ne0} x {ne0}")]
    CovarianceSize { got: usize, ne0: usize },
    #[error(
        "covariance is not positive definite after damping (pivot {pivot}); is it a covariance?"
    )]
    NotPositiveDefinite { pivot: usize },
}

/// Upper Cholesky factor `U` of `H^-1` (`U^T U = H^-1`), with GPTQ's conditioning of `H`
/// (zero-diagonal channels set to 1, then `damp * mean(diag)` added to the diagonal).
/// `h` is row-major `n x n` and must be symmetric.
pub fn inverse_cholesky_upper(h: &[f32], n: usize, damp: f64) -> Result<Vec<f64>, GptqError> {
    assert_eq!(h.len(), n * n);
    let mut a: Vec<f64> = h.iter().map(|&v| f64::from(v)).collect();
    for j in 0..n {
        if a[j * n + j] == 0.0 {
            a[j * n + j] = 1.0;
        }
    }
    let mean_diag = (0..n).map(|j| a[j * n + j]).sum::<f64>() / n as f64;
    for j in 0..n {
        a[j * n + j] += damp * mean_diag;
    }
    // With J the exchange matrix (flat reversal of a row-major n x n array), J H J = L L^T
    // (lower Cholesky) gives H = R R^T with R = J L J upper, so H^-1 = R^-T R^-1 and
    // U = R^-1 = J L^-1 J: one factorization and one triangular inverse, where the textbook
    // route (GPTQ's: Cholesky, inverse, Cholesky of the inverse) takes two of each and an
    // n^3 product. Same U up to rounding (checked against that route in the tests).
    a.reverse();
    cholesky_blocked(&mut a, n).map_err(|j| GptqError::NotPositiveDefinite { pivot: n - 1 - j })?;
    let mut u = invert_lower_blocked(&a, n);
    drop(a);
    u.reverse();
    Ok(u)
}

/// GPTQ-rounds a row-major tensor `x` (`ne0` = input channels, a multiple of 32) to Q8_0
/// blocks on llama.cpp's scales. `h`: `ne0 x ne0` input second moment (row-major,
/// symmetric). Returns the Q8_0 bytes.
pub fn quantize(x: &[f32], ne0: usize, h: &[f32], damp: f64) -> Result<Vec<u8>, GptqError> {
    quantize_on(x, ne0, h, damp, None)
}

/// [`quantize`] on given block steps (`scales[b]` for block `b`, fp16-representable, e.g.
/// [`super::q8::shared_scales`]) instead of llama.cpp's `amax/127`.
pub fn quantize_on(
    x: &[f32],
    ne0: usize,
    h: &[f32],
    damp: f64,
    scales: Option<&[f32]>,
) -> Result<Vec<u8>, GptqError> {
    assert!(ne0.is_multiple_of(QK8_0) && x.len().is_multiple_of(ne0));
    if let Some(s) = scales {
        assert_eq!(s.len() * QK8_0, x.len());
    }
    if h.len() != ne0 * ne0 {
        return Err(GptqError::CovarianceSize { got: h.len(), ne0 });
    }
    let u = inverse_cholesky_upper(h, ne0, damp)?;
    let nbr = ne0 / QK8_0;
    let mut out = vec![0u8; x.len() / QK8_0 * BLOCK_BYTES];
    // Rows are independent. They go through the column loop ROWS at a time so that each row
    // of U (up to 72 KB) is read from memory once per batch, not once per weight row: for a
    // wide input U is far larger than the caches (642 MB at 8,960 channels). Each row's
    // arithmetic is the same as alone, in the same order.
    const ROWS: usize = 16;
    out.par_chunks_mut(ROWS * nbr * BLOCK_BYTES)
        .zip(x.par_chunks(ROWS * ne0))
        .enumerate()
        .for_each(|(b, (dst, rows))| {
            let nr = rows.len() / ne0;
            // llama.cpp's scales (or the given ones), from the original weights.
            let d: Vec<f64> = rows
                .chunks_exact(QK8_0)
                .zip(dst.chunks_exact_mut(BLOCK_BYTES))
                .enumerate()
                .map(|(k, (blk_x, blk))| {
                    let want = match scales {
                        Some(s) => s[b * ROWS * nbr + k],
                        None => blk_x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0,
                    };
                    let bits = f32_to_f16(want);
                    blk[..2].copy_from_slice(&bits.to_le_bytes());
                    f64::from(f16_to_f32(bits))
                })
                .collect();
            let mut w: Vec<f64> = rows.iter().map(|&v| f64::from(v)).collect();
            for j in 0..ne0 {
                let ujj = u[j * ne0 + j];
                let urow = &u[j * ne0 + j + 1..(j + 1) * ne0];
                for r in 0..nr {
                    let wr = &mut w[r * ne0..(r + 1) * ne0];
                    let dj = d[r * nbr + j / QK8_0];
                    let q = if dj > 0.0 {
                        (wr[j] / dj).round_ties_even().clamp(-127.0, 127.0)
                    } else {
                        0.0
                    };
                    dst[(r * nbr + j / QK8_0) * BLOCK_BYTES + 2 + j % QK8_0] = q as i8 as u8;
                    let err = (wr[j] - q * dj) / ujj;
                    if err != 0.0 {
                        wr[j + 1..]
                            .iter_mut()
                            .zip(urow)
                            .for_each(|(wv, &uv)| *wv -= err * uv);
                    }
                }
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::q8::{dequantize, quantize_reference};

    /// Small deterministic PRNG (xorshift), uniform in [-1, 1).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }
    }

    /// H = X^T X / m for correlated random inputs X (m x n).
    fn covariance(n: usize, m: usize, rng: &mut Rng) -> Vec<f32> {
        let mix: Vec<f64> = (0..n * n).map(|_| rng.next()).collect();
        let mut h = vec![0f64; n * n];
        for _ in 0..m {
            let z: Vec<f64> = (0..n).map(|_| rng.next()).collect();
            // Correlated x = z + 0.5 * mix z, plus an outlier channel.
            let mut x: Vec<f64> = (0..n)
                .map(|i| z[i] + 0.5 * (0..n).map(|k| mix[i * n + k] * z[k]).sum::<f64>())
                .collect();
            x[3] *= 10.0;
            for i in 0..n {
                for j in 0..n {
                    h[i * n + j] += x[i] * x[j];
                }
            }
        }
        h.iter().map(|v| (v / m as f64) as f32).collect()
    }

    /// sum over rows of e H e^T, e = dequantized - original.
    fn weighted_err(x: &[f32], q: &[u8], h: &[f32], n: usize) -> f64 {
        let mut y = Vec::new();
        dequantize(q, &mut y);
        let mut tot = 0.0;
        for (xr, yr) in x.chunks(n).zip(y.chunks(n)) {
            let e: Vec<f64> = xr.iter().zip(yr).map(|(a, b)| f64::from(b - a)).collect();
            for i in 0..n {
                for j in 0..n {
                    tot += e[i] * f64::from(h[i * n + j]) * e[j];
                }
            }
        }
        tot
    }

    /// The textbook route (GPTQ's reference code): Cholesky of H, its inverse, H^-1 = M^T M,
    /// Cholesky of H^-1, U = its transpose; unblocked. The reference for the blocked one.
    fn inverse_cholesky_upper_textbook(h: &[f32], n: usize, damp: f64) -> Vec<f64> {
        let mut a: Vec<f64> = h.iter().map(|&v| f64::from(v)).collect();
        for j in 0..n {
            if a[j * n + j] == 0.0 {
                a[j * n + j] = 1.0;
            }
        }
        let mean_diag = (0..n).map(|j| a[j * n + j]).sum::<f64>() / n as f64;
        (0..n).for_each(|j| a[j * n + j] += damp * mean_diag);
        cholesky(&mut a, n).unwrap();
        // Column c of M = L^-1 solves L y = e_c.
        let mut mt = vec![0f64; n * n];
        for c in 0..n {
            let y = &mut mt[c * n..(c + 1) * n];
            y[c] = 1.0 / a[c * n + c];
            for i in c + 1..n {
                let s: f64 = (c..i).map(|k| a[i * n + k] * y[k]).sum();
                y[i] = -s / a[i * n + i];
            }
        }
        let mut hinv = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                hinv[i * n + j] = (i.max(j)..n).map(|k| mt[i * n + k] * mt[j * n + k]).sum();
            }
        }
        cholesky(&mut hinv, n).unwrap();
        let mut u = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..=i {
                u[j * n + i] = hinv[i * n + j];
            }
        }
        u
    }

    #[test]
    fn blocked_factor_matches_the_textbook_route() {
        // 300 = two full 128 blocks and a partial one; a dead channel; damping.
        let mut rng = Rng(4242);
        let n = 300;
        let mut h = covariance(n, 400, &mut rng);
        (0..n).for_each(|j| {
            h[7 * n + j] = 0.0;
            h[j * n + 7] = 0.0;
        });
        let u = inverse_cholesky_upper(&h, n, 0.01).unwrap();
        let want = inverse_cholesky_upper_textbook(&h, n, 0.01);
        let top = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        for i in 0..n {
            for j in 0..n {
                let (a, b) = (u[i * n + j], want[i * n + j]);
                assert!((a - b).abs() <= 1e-9 * top, "({i},{j}): {a} vs {b}");
                if j < i {
                    assert_eq!(a, 0.0);
                }
            }
        }
        // And the quants agree with the row-by-row loop on the textbook U.
        let x: Vec<f32> = (0..n / 32 * 32 * 3)
            .map(|_| (rng.next() * 0.05) as f32)
            .collect();
        let n32 = n / 32 * 32;
        let h32: Vec<f32> = (0..n32 * n32).map(|k| h[(k / n32) * n + k % n32]).collect();
        assert_eq!(
            quantize(&x[..n32 * 3], n32, &h32, 0.01).unwrap(),
            quantize_row_by_row(&x[..n32 * 3], n32, &h32, None, 0.01)
        );
        // Not positive definite: the pivot is a channel of H (not of the reversed matrix).
        let mut bad = covariance(n, 400, &mut rng);
        bad[5 * n + 5] = -1e6;
        assert_eq!(
            inverse_cholesky_upper(&bad, n, 0.0),
            Err(GptqError::NotPositiveDefinite { pivot: 5 })
        );
    }

    #[test]
    fn cholesky_factor_of_inverse() {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        let n = 8;
        let h = covariance(n, 50, &mut rng);
        let u = inverse_cholesky_upper(&h, n, 0.0).unwrap();
        // U^T U H = I.
        for i in 0..n {
            for j in 0..n {
                let mut s = 0.0;
                for k in 0..n {
                    let hinv_ik: f64 = (0..n).map(|m| u[m * n + i] * u[m * n + k]).sum();
                    s += hinv_ik * f64::from(h[k * n + j]);
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-6, "({i},{j}) = {s}");
            }
            // Upper triangular.
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
    }

    #[test]
    fn beats_nearest_rounding_on_weighted_error_with_same_scales() {
        let mut rng = Rng(12345);
        let (n, rows) = (64, 24);
        let h = covariance(n, 400, &mut rng);
        let x: Vec<f32> = (0..n * rows).map(|_| (rng.next() * 0.05) as f32).collect();
        let q = quantize(&x, n, &h, 0.01).unwrap();
        let mut r = Vec::new();
        quantize_reference(&x, &mut r);
        assert_eq!(q.len(), r.len());
        // Same scale plane as llama.cpp; quants within +-127 (i8 -128 never used).
        for (a, b) in q.chunks(BLOCK_BYTES).zip(r.chunks(BLOCK_BYTES)) {
            assert_eq!(a[..2], b[..2]);
            assert!(a[2..].iter().all(|&v| v as i8 != -128));
        }
        assert_ne!(q, r, "GPTQ should change some roundings");
        let (eg, en) = (weighted_err(&x, &q, &h, n), weighted_err(&x, &r, &h, n));
        assert!(eg < en, "GPTQ {eg} vs nearest {en}");
    }

    /// The column loop one row at a time, as first written (and as scripts/gptq-minilm.py).
    fn quantize_row_by_row(
        x: &[f32],
        ne0: usize,
        h: &[f32],
        scales: Option<&[f32]>,
        damp: f64,
    ) -> Vec<u8> {
        let u = inverse_cholesky_upper_textbook(h, ne0, damp);
        let nbr = ne0 / QK8_0;
        let mut out = vec![0u8; x.len() / QK8_0 * BLOCK_BYTES];
        for (r, (dst, row)) in out
            .chunks_mut(nbr * BLOCK_BYTES)
            .zip(x.chunks(ne0))
            .enumerate()
        {
            let mut d = Vec::new();
            for (b, (blk_x, blk)) in row
                .chunks_exact(QK8_0)
                .zip(dst.chunks_exact_mut(BLOCK_BYTES))
                .enumerate()
            {
                let want = match scales {
                    Some(s) => s[r * nbr + b],
                    None => blk_x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0,
                };
                let bits = f32_to_f16(want);
                blk[..2].copy_from_slice(&bits.to_le_bytes());
                d.push(f64::from(f16_to_f32(bits)));
            }
            let mut w: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
            for j in 0..ne0 {
                let dj = d[j / QK8_0];
                let q = if dj > 0.0 {
                    (w[j] / dj).round_ties_even().clamp(-127.0, 127.0)
                } else {
                    0.0
                };
                dst[(j / QK8_0) * BLOCK_BYTES + 2 + j % QK8_0] = q as i8 as u8;
                let err = (w[j] - q * dj) / u[j * ne0 + j];
                for k in j + 1..ne0 {
                    w[k] -= err * u[j * ne0 + k];
                }
            }
        }
        out
    }

    #[test]
    fn row_batches_give_the_row_by_row_quants() {
        // 37 rows: two full batches of 16 and a partial one; on llama.cpp's scales and on a
        // given grid (different per row, so a batch must index its own rows' scales).
        let mut rng = Rng(99);
        let (n, rows) = (64, 37);
        let h = covariance(n, 300, &mut rng);
        let x: Vec<f32> = (0..n * rows).map(|_| (rng.next() * 0.05) as f32).collect();
        let grid: Vec<f32> = (0..n * rows / QK8_0)
            .map(|b| 0.0004 * (1.0 + (b % 7) as f32 / 3.0))
            .collect();
        assert_eq!(
            quantize(&x, n, &h, DEFAULT_DAMP).unwrap(),
            quantize_row_by_row(&x, n, &h, None, DEFAULT_DAMP)
        );
        assert_eq!(
            quantize_on(&x, n, &h, DEFAULT_DAMP, Some(&grid)).unwrap(),
            quantize_row_by_row(&x, n, &h, Some(&grid), DEFAULT_DAMP)
        );
    }

    #[test]
    fn identity_covariance_is_nearest_rounding() {
        // With H = I the error feedback is zero: plain rounding on llama.cpp's scales.
        let mut rng = Rng(7);
        let n = 32;
        let mut h = vec![0f32; n * n];
        (0..n).for_each(|i| h[i * n + i] = 1.0);
        let x: Vec<f32> = (0..n * 4).map(|_| rng.next() as f32).collect();
        let q = quantize(&x, n, &h, 0.1).unwrap();
        let mut y = Vec::new();
        dequantize(&q, &mut y);
        for (b, blk) in x.chunks(QK8_0).zip(q.chunks(BLOCK_BYTES)) {
            let d = f64::from(f16_to_f32(u16::from_le_bytes([blk[0], blk[1]])));
            for (v, &qq) in b.iter().zip(&blk[2..]) {
                let want = (f64::from(*v) / d).round_ties_even().clamp(-127.0, 127.0);
                assert_eq!(f64::from(qq as i8), want);
            }
        }
    }

    #[test]
    fn zero_channels_and_rows_are_handled() {
        let n = 32;
        let mut h = vec![0f32; n * n];
        (1..n).for_each(|i| h[i * n + i] = 2.0); // channel 0 never active
        let mut x = vec![0f32; n * 2]; // row 0 all zero
        x[n..]
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = i as f32 - 10.0);
        let q = quantize(&x, n, &h, 0.1).unwrap();
        assert_eq!(&q[..BLOCK_BYTES], &[0u8; BLOCK_BYTES][..]);
        assert!(quantize(&x, n, &h[..10], 0.1).is_err());
        let mut bad = h.clone();
        bad[5 * n + 5] = -100.0;
        assert!(quantize(&x, n, &bad, 0.0).is_err());
    }
}
