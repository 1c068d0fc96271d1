//! Input second moments `sum x x^T` of every matmul weight, recorded from real llama.cpp runs:
//! what GPTQ rounding needs (`--gptq`, `compress --calib`), for any architecture llama.cpp
//! runs, without re-implementing its forward pass.
//!
//! `dcgguf calibrate` runs llama-imatrix with `LD_PRELOAD=libdcgguf_preload.so` and
//! `DCGGUF_COV_OUT=FILE`; the graph callback (shared with [`super::actmax`]) hands every
//! computed `MUL_MAT` node whose first source is a `*.weight` to [`observe`]. Inputs shared by
//! several weights (q/k/v read the same norm output, gate/up likewise) are the same ggml node
//! within one graph evaluation, so they are accumulated once per group: the first weight seen
//! with an input is the group's lead, later weights reading the same node in the same
//! evaluation are members. A weight seen twice means a new evaluation has started.
//!
//! Memory: the accumulators are the upper triangle of `sum x x^T` in f64, in block rows of
//! [`BLOCK`] channels (about `4 n^2` bytes for an `n`-wide input, like a full f32 matrix).
//! Groups are given accumulators in graph order while they fit `DCGGUF_COV_BUDGET` bytes
//! (the first one always does); the others are deferred, and weights listed in the file
//! `DCGGUF_COV_DONE` (recorded by an earlier pass) are skipped, so the caller runs as many
//! passes over the same text as the budget requires. Each ubatch is added with one
//! matrix product per block row (`X_r^T X` over all of the ubatch's tokens, f32 over at most
//! one ubatch, then added to f64), not one outer product per token.
//!
//! When the context is freed, FILE gets a GGUF with `general.type = "dcgguf.cov_part"`,
//! `dcgguf.cov_groups` (one line per group: `rec|def LEAD N TOKENS MEMBER...`) and, per
//! recorded group, an F32 `[N, N]` tensor named like its lead holding `sum x x^T / TOKENS`
//! (the full symmetric matrix). `quant::calibrate` merges the passes into the covariance file
//! of docs/QUANT.md.

use std::collections::{HashMap, HashSet};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use rayon::prelude::*;

use super::sys;
use crate::gguf::{GgmlType, HeaderWriter, KeyValue, Value, align_up};
use crate::quant::cov_parts::{BLOCK, DEFAULT_BUDGET, GROUPS_KEY, accumulator_bytes};

pub use crate::quant::calibrate::{COV_BUDGET_ENV, COV_DONE_ENV, COV_OUT_ENV};
/// `general.type` of the per-pass files written here.
pub const PART_TYPE: &str = "dcgguf.cov_part";

struct Group {
    lead: String,
    members: Vec<String>,
    n: usize,
    tokens: u64,
    /// Block rows: row block `r` holds rows `r*BLOCK..` and columns `r*BLOCK..n`.
    acc: Option<Vec<Vec<f64>>>,
}

#[derive(Default)]
struct State {
    configured: bool,
    out: Option<PathBuf>,
    budget: u64,
    done: HashSet<String>,
    groups: Vec<Group>,
    by_weight: HashMap<String, usize>,
    /// Weights seen in the current graph evaluation.
    eval_seen: HashSet<String>,
    /// Input node (`ggml_tensor *`) -> group, in the current graph evaluation.
    eval_inputs: HashMap<usize, usize>,
    used: u64,
    error: Option<String>,
    /// Scratch: one ubatch's rows, contiguous.
    rows: Vec<f32>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Where to write, if recording is on in this process.
pub fn output() -> Option<PathBuf> {
    std::env::var_os(COV_OUT_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn configure(s: &mut State) {
    if s.configured {
        return;
    }
    s.configured = true;
    s.out = output();
    s.budget = std::env::var(COV_BUDGET_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_BUDGET);
    if let Some(p) = std::env::var_os(COV_DONE_ENV).filter(|v| !v.is_empty()) {
        match std::fs::read_to_string(&p) {
            Ok(t) => s.done = t.lines().map(str::to_owned).collect(),
            Err(e) => {
                s.error = Some(format!(
                    "cannot read {}: {e}",
                    std::path::Path::new(&p).display()
                ))
            }
        }
    }
}

/// Node `t` (a weight matmul the callback asked for) has been computed: add its input.
///
/// # Safety
/// `t` is a live ggml tensor whose sources are live, and the input's data is in host memory
/// (CPU backend).
pub unsafe fn observe(t: *const sys::ggml_tensor) {
    // SAFETY: forwarded from the caller.
    let Some((name, x)) = (unsafe { super::actmax::weight_input(t) }) else {
        return;
    };
    let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let s = guard.get_or_insert_with(State::default);
    configure(s);
    if s.error.is_some() || s.done.contains(&name) {
        return;
    }
    // SAFETY: live tensor (caller).
    let xt = unsafe { &*x };
    let n = xt.ne[0] as usize;
    if !s.eval_seen.insert(name.clone()) {
        // Each weight is multiplied once per graph: a repeat starts a new evaluation.
        s.eval_seen.clear();
        s.eval_inputs.clear();
        s.eval_seen.insert(name.clone());
    }
    let key = x as usize;
    if let Some(&g) = s.eval_inputs.get(&key) {
        // Same input node as an earlier weight of this evaluation: a member of its group.
        match s.by_weight.get(&name) {
            Some(&h) if h == g => {}
            Some(_) => {
                s.error = Some(format!(
                    "{name}: its input is shared with a different weight than before"
                ))
            }
            None => {
                s.by_weight.insert(name.clone(), g);
                s.groups[g].members.push(name);
            }
        }
        return;
    }
    let g = match s.by_weight.get(&name) {
        Some(&g) if s.groups[g].lead == name && s.groups[g].n == n => g,
        Some(_) => {
            s.error = Some(format!(
                "{name}: its input is no longer shared as before (or changed width)"
            ));
            return;
        }
        None => {
            let bytes = accumulator_bytes(n);
            let first = s.groups.iter().all(|g| g.acc.is_none());
            let acc = (first || s.used + bytes <= s.budget).then(|| {
                s.used += bytes;
                (0..n)
                    .step_by(BLOCK)
                    .map(|r0| vec![0f64; BLOCK.min(n - r0) * (n - r0)])
                    .collect()
            });
            s.groups.push(Group {
                lead: name.clone(),
                members: vec![name.clone()],
                n,
                tokens: 0,
                acc,
            });
            s.by_weight.insert(name, s.groups.len() - 1);
            s.groups.len() - 1
        }
    };
    s.eval_inputs.insert(key, g);
    if s.groups[g].acc.is_none() {
        return;
    }
    // Gather the ubatch's rows (any layout of dims 1..3) into one contiguous buffer.
    let mut rows = std::mem::take(&mut s.rows);
    rows.clear();
    for i3 in 0..xt.ne[3] as usize {
        for i2 in 0..xt.ne[2] as usize {
            for i1 in 0..xt.ne[1] as usize {
                let off = i1 * xt.nb[1] + i2 * xt.nb[2] + i3 * xt.nb[3];
                // SAFETY: row (i1, i2, i3) of a live F32 tensor with nb[0] == 4 (checked by
                // weight_input): n contiguous floats at this offset from its data.
                let row = unsafe {
                    std::slice::from_raw_parts((xt.data as *const u8).add(off) as *const f32, n)
                };
                rows.extend_from_slice(row);
            }
        }
    }
    let tokens = rows.len() / n.max(1);
    let grp = &mut s.groups[g];
    grp.tokens += tokens as u64;
    if let Some(acc) = &mut grp.acc {
        add_gram(acc, &rows, n, tokens);
    }
    s.rows = rows;
}

/// `acc += X^T X` (upper triangle, block rows) for `X` = `t` rows of `n` floats.
fn add_gram(acc: &mut [Vec<f64>], x: &[f32], n: usize, t: usize) {
    if t == 0 {
        return;
    }
    acc.par_iter_mut().enumerate().for_each(|(r, dst)| {
        let r0 = r * BLOCK;
        let m = BLOCK.min(n - r0);
        let cols = n - r0;
        let mut c = vec![0f32; m * cols];
        // SAFETY: A(i, tok) = x[tok*n + r0 + i] and B(tok, j) = x[tok*n + r0 + j] stay within
        // the t*n floats of `x` for i < m, j < cols, tok < t; C is m x cols, row-major,
        // exactly `c`'s length; nothing else aliases `c`.
        unsafe {
            matrixmultiply::sgemm(
                m,
                t,
                cols,
                1.0,
                x.as_ptr().add(r0),
                1,
                n as isize,
                x.as_ptr().add(r0),
                n as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                cols as isize,
                1,
            );
        }
        dst.iter_mut()
            .zip(&c)
            .for_each(|(a, &v)| *a += f64::from(v));
    });
}

/// Row `i` of the full symmetric `n x n` matrix `acc / tokens` (f32, little-endian) appended
/// to `out`: entries `j >= i` from row `i`'s block row, `j < i` from row `j`'s (symmetry), so
/// no full matrix is built.
fn row_bytes(acc: &[Vec<f64>], n: usize, tokens: u64, i: usize, out: &mut Vec<u8>) {
    let inv = 1.0 / tokens.max(1) as f64;
    let at = |i: usize, j: usize| {
        // i <= j: row i's block row holds columns r0..n.
        let r0 = i / BLOCK * BLOCK;
        acc[i / BLOCK][(i - r0) * (n - r0) + (j - r0)]
    };
    for j in 0..n {
        let v = if j >= i { at(i, j) } else { at(j, i) };
        out.extend_from_slice(&((v * inv) as f32).to_le_bytes());
    }
}

/// Writes this pass's matrices (at context free); errors go to stderr and leave no file,
/// which the calling `dcgguf calibrate` reports.
pub fn flush() {
    let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s) = guard.as_mut() else {
        return;
    };
    let Some(out) = s.out.clone() else {
        return;
    };
    if let Some(e) = &s.error {
        crate::log_line!("dcgguf: error: covariance recording: {e}");
        return;
    }
    if s.groups.is_empty() {
        return;
    }
    let table: String = s
        .groups
        .iter()
        .map(|g| {
            format!(
                "{} {} {} {} {}\n",
                if g.acc.is_some() { "rec" } else { "def" },
                g.lead,
                g.n,
                g.tokens,
                g.members.join(" ")
            )
        })
        .collect();
    let write = || -> std::io::Result<()> {
        const ALIGN: u64 = 32;
        let mut w = HeaderWriter::new(3);
        w.kv(&KeyValue {
            key: b"general.type".to_vec(),
            value: Value::string(PART_TYPE),
        });
        w.kv(&KeyValue {
            key: GROUPS_KEY.as_bytes().to_vec(),
            value: Value::string(&table),
        });
        let mut off = 0u64;
        let recorded: Vec<&Group> = s.groups.iter().filter(|g| g.acc.is_some()).collect();
        for g in &recorded {
            w.tensor(&g.lead, &[g.n as u64, g.n as u64], GgmlType::F32, off);
            off = align_up(off + (g.n * g.n * 4) as u64, ALIGN).expect("fits");
        }
        let tmp = out.with_extension("partial");
        let mut f = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        f.write_all(&w.finish(ALIGN))?;
        let mut row = Vec::new();
        for g in recorded {
            let acc = g.acc.as_deref().expect("recorded");
            for i in 0..g.n {
                row.clear();
                row_bytes(acc, g.n, g.tokens, i, &mut row);
                f.write_all(&row)?;
            }
            let len = (g.n * g.n * 4) as u64;
            let pad = align_up(len, ALIGN).expect("fits") - len;
            f.write_all(&vec![0u8; pad as usize])?;
        }
        f.into_inner()?.sync_all()?;
        std::fs::rename(&tmp, &out)
    };
    if let Err(e) = write() {
        crate::log_line!("dcgguf: error: cannot write {}: {e}", out.display());
    }
    // Free the accumulators now; the process may go on (a later context records again).
    *guard = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_gram_is_x_transpose_x() {
        let (n, t) = (BLOCK * 2 + 7, 13);
        let x: Vec<f32> = (0..n * t)
            .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 50.0)
            .collect();
        let mut acc: Vec<Vec<f64>> = (0..n)
            .step_by(BLOCK)
            .map(|r0| vec![0f64; BLOCK.min(n - r0) * (n - r0)])
            .collect();
        add_gram(&mut acc, &x, n, t);
        add_gram(&mut acc, &x, n, t);
        let mut bytes = Vec::new();
        (0..n).for_each(|i| row_bytes(&acc, n, 2 * t as u64, i, &mut bytes));
        let m: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        for i in 0..n {
            for j in 0..n {
                let want: f64 = (0..t)
                    .map(|k| f64::from(x[k * n + i]) * f64::from(x[k * n + j]))
                    .sum::<f64>()
                    / t as f64;
                let got = f64::from(m[i * n + j]);
                assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "({i},{j})");
            }
        }
        let bytes: usize = acc.iter().map(|b| b.len() * 8).sum();
        assert_eq!(accumulator_bytes(n), bytes as u64);
    }
}
