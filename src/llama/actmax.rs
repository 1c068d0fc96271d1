//! Per-channel max |x| of every matmul input, recorded from real llama.cpp runs: the
//! paper's activation statistic, which llama-imatrix (sums of x^2 only) does not keep.
//!
//! `dcgguf calibrate` runs llama-imatrix with `LD_PRELOAD=libdcgguf_preload.so` and
//! `DCGGUF_ACT_MAX_OUT=FILE`; our graph callback (chained with llama-imatrix's own) asks for
//! every `MUL_MAT` node whose first source is a weight, and folds the F32 activations of its
//! second source into a running max per input channel. When the context is freed the maxima
//! are written to FILE as a GGUF: `general.type = "dcgguf.act_max"`, and per weight `W` an
//! F32 tensor `W.in_max` of `n_in` values.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use super::sys;
use crate::gguf::{GgmlType, KeyValue, TensorEntry, Value, build_file};

pub use crate::quant::calibrate::ACT_MAX_ENV;
/// `general.type` of the files written here.
pub const FILE_TYPE: &str = "dcgguf.act_max";

static MAXES: Mutex<BTreeMap<String, Vec<f32>>> = Mutex::new(BTreeMap::new());

/// Where to write, if recording is on in this process.
pub fn output() -> Option<PathBuf> {
    std::env::var_os(ACT_MAX_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The weight a `MUL_MAT` node multiplies and its input (F32, rows contiguous), if `t` is one
/// whose input we record (here and in [`super::covar`]).
///
/// # Safety
/// `t` is a live ggml tensor whose sources are NULL or live.
pub unsafe fn weight_input(
    t: *const sys::ggml_tensor,
) -> Option<(String, *const sys::ggml_tensor)> {
    // SAFETY: the caller guarantees `t` and its sources are live.
    let t = unsafe { &*t };
    if t.op != sys::ggml_op_GGML_OP_MUL_MAT || t.src[0].is_null() || t.src[1].is_null() {
        return None;
    }
    // SAFETY: as above.
    let (w, x) = unsafe { (&*t.src[0], &*t.src[1]) };
    if x.type_ != sys::ggml_type_GGML_TYPE_F32 || x.data.is_null() || x.nb[0] != 4 {
        return None;
    }
    // SAFETY: ggml names are NUL-terminated within GGML_MAX_NAME bytes.
    let name = unsafe { std::ffi::CStr::from_ptr(w.name.as_ptr()) }
        .to_str()
        .ok()?;
    name.ends_with(".weight")
        .then(|| (name.to_string(), t.src[1] as *const sys::ggml_tensor))
}

/// Ask phase: whether we want the result of node `t`.
///
/// # Safety
/// As [`weight_input`].
pub unsafe fn wants(t: *const sys::ggml_tensor) -> bool {
    // SAFETY: forwarded.
    unsafe { weight_input(t) }.is_some()
}

/// Node `t` (one we asked for) has been computed: fold its input into the maxima.
///
/// # Safety
/// As [`weight_input`]; the input's data is in host memory (CPU backend).
pub unsafe fn observe(t: *const sys::ggml_tensor) {
    // SAFETY: forwarded.
    let Some((name, x)) = (unsafe { weight_input(t) }) else {
        return;
    };
    // SAFETY: live tensor (caller).
    let x = unsafe { &*x };
    let n_in = x.ne[0] as usize;
    let mut maxes = MAXES.lock().unwrap_or_else(|e| e.into_inner());
    let m = maxes.entry(name).or_insert_with(|| vec![0.0; n_in]);
    if m.len() != n_in {
        return;
    }
    for i3 in 0..x.ne[3] as usize {
        for i2 in 0..x.ne[2] as usize {
            for i1 in 0..x.ne[1] as usize {
                let off = i1 * x.nb[1] + i2 * x.nb[2] + i3 * x.nb[3];
                // SAFETY: row (i1, i2, i3) of a live F32 tensor: n_in contiguous floats
                // (nb[0] == 4, checked) at this offset from its data.
                let row = unsafe {
                    std::slice::from_raw_parts((x.data as *const u8).add(off) as *const f32, n_in)
                };
                for (acc, v) in m.iter_mut().zip(row) {
                    let a = v.abs();
                    if a > *acc {
                        *acc = a;
                    }
                }
            }
        }
    }
}

/// Writes the maxima gathered so far (at context free); errors go to stderr.
pub fn flush() {
    let Some(out) = output() else {
        return;
    };
    let maxes = MAXES.lock().unwrap_or_else(|e| e.into_inner());
    if maxes.is_empty() {
        return;
    }
    let kvs = [KeyValue {
        key: b"general.type".to_vec(),
        value: Value::String(FILE_TYPE.as_bytes().to_vec()),
    }];
    let tensors: Vec<TensorEntry> = maxes
        .iter()
        .map(|(w, m)| {
            let data = m.iter().flat_map(|v| v.to_le_bytes()).collect();
            (
                format!("{w}.in_max"),
                vec![m.len() as u64],
                GgmlType::F32,
                data,
            )
        })
        .collect();
    let write = || -> crate::dc::Result<()> {
        let mut f = crate::io::AtomicOutput::create(&out, None, true)?;
        f.file()
            .write_all(&build_file(&kvs, &tensors))
            .map_err(crate::dc::DcError::io(&out))?;
        Ok(f.commit()?)
    };
    if let Err(e) = write() {
        crate::log_line!("dcgguf: error: cannot write {}: {e}", out.display());
    }
}
