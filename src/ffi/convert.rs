//! Conversions through the C API: compress, decompress and verify files (what the CLI's
//! subcommands do, through the same library functions), the per-tensor summary of `inspect`
//! and the original metadata as JSON, and ggml type names.
//!
//! Options come in a [`dcgguf_options`] whose first field is its size, so that a caller built
//! against an older header (a shorter struct) or a newer one (a longer struct, whose extra
//! fields must then be zero) still links: see [`read_options`]. Progress goes to an optional
//! C callback that can cancel ([`Reporter`]).

use std::ffi::{CStr, c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Mutex;

use super::api::dcgguf_file;
use super::dcgguf_result::{self, *};
use super::{Error, guard};
use crate::codec::{EncodeOptions, LEVELS};
use crate::dc::{self, CompressOptions, Job, MAX_CHUNK_RAW};
use crate::gguf::GgmlType;
use crate::gguf::split::split_parts;
use crate::quant::{self, QuantArgs, QuantKind};

/// `int (*)(uint64_t done, uint64_t total, void *user)`: non-zero cancels.
pub type dcgguf_progress_fn =
    Option<unsafe extern "C" fn(done: u64, total: u64, user: *mut c_void) -> c_int>;

/// `dcgguf_options.quantize`: lossless.
pub const DCGGUF_QUANTIZE_NONE: u32 = 0;
/// `dcgguf_options.quantize`: compression-aware Q8_0 first (`dcgguf compress --quantize
/// int8`).
pub const DCGGUF_QUANTIZE_INT8: u32 = 1;

/// Options of `dcgguf_compress`, `dcgguf_decompress` and `dcgguf_verify` (each reads the
/// fields that apply to it). Mirrors `typedef struct dcgguf_options` in ffi/dcgguf.h field for
/// field (tests/c_header.rs compares them). Floats set to NaN and NULL paths mean "the CLI's
/// default".
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct dcgguf_options {
    pub size: u32,
    pub threads: u32,
    pub force: u32,
    pub level: i32,
    pub chunk_size: u64,
    pub quantize: u32,
    pub per_row: u32,
    pub permute: u32,
    pub step: f32,
    pub embd_step: f32,
    pub alpha: f32,
    pub fold_alpha: f32,
    pub tensor_alpha: f32,
    pub block_adapt: f32,
    pub prune: f32,
    pub rdo: f32,
    pub reserved: u32,
    pub gptq_damp: f64,
    pub imatrix: *const c_char,
    pub calib: *const c_char,
    pub gptq: *const c_char,
}

/// The size of the first version of [`dcgguf_options`]: the smallest a caller may pass.
/// Fields added later go after `gptq`, with zero meaning their default.
const OPTIONS_V1_SIZE: usize = std::mem::size_of::<dcgguf_options>();

impl Default for dcgguf_options {
    fn default() -> Self {
        let copts = CompressOptions::default();
        dcgguf_options {
            size: std::mem::size_of::<dcgguf_options>() as u32,
            threads: 0,
            force: 0,
            level: copts.encode.level,
            chunk_size: copts.chunk_size as u64,
            quantize: DCGGUF_QUANTIZE_NONE,
            per_row: 0,
            permute: 0,
            step: f32::NAN,
            embd_step: f32::NAN,
            alpha: f32::NAN,
            fold_alpha: f32::NAN,
            tensor_alpha: f32::NAN,
            block_adapt: f32::NAN,
            prune: f32::NAN,
            rdo: f32::NAN,
            reserved: 0,
            gptq_damp: f64::NAN,
            imatrix: std::ptr::null(),
            calib: std::ptr::null(),
            gptq: std::ptr::null(),
        }
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(DCGGUF_ERR_INVALID_ARGUMENT, msg)
}

/// The caller's options, or the defaults for NULL.
///
/// A struct from an older header is shorter: the fields it lacks keep their defaults (there
/// is no older version yet, so for now anything shorter than version 1 is refused). One from
/// a newer header is longer: accepted only if the bytes this library does not know are zero
/// (their defaults), since a set option that cannot be honoured must not be ignored.
///
/// # Safety
/// `opts` must be NULL or point to at least `(*opts).size` readable bytes, the first of them
/// a `dcgguf_options` (contract in dcgguf.h).
unsafe fn read_options(opts: *const dcgguf_options) -> Result<dcgguf_options, Error> {
    let mut o = dcgguf_options::default();
    if opts.is_null() {
        return Ok(o);
    }
    // SAFETY: non-NULL `opts` points to a struct that starts with its u32 size (contract).
    let size = unsafe { std::ptr::addr_of!((*opts).size).read_unaligned() } as usize;
    if size < OPTIONS_V1_SIZE {
        return Err(invalid(format!(
            "dcgguf_options.size is {size}, the smallest version has {OPTIONS_V1_SIZE} bytes \
             (fill the struct with dcgguf_options_init)"
        )));
    }
    // SAFETY: the caller promises `size` readable bytes at `opts` (contract).
    let bytes = unsafe { std::slice::from_raw_parts(opts as *const u8, size) };
    let ours = std::mem::size_of::<dcgguf_options>();
    if let Some(k) = bytes[ours.min(size)..].iter().position(|&b| b != 0) {
        return Err(invalid(format!(
            "dcgguf_options byte {} is set, but this library (dcgguf {}) knows only the first \
             {ours} bytes: the option needs a newer libdcgguf",
            ours + k,
            env!("CARGO_PKG_VERSION")
        )));
    }
    let n = ours.min(size);
    // SAFETY: copies n <= size readable bytes from the caller into our own struct of `ours`
    // >= n bytes; every bit pattern is valid for its integer, float and pointer fields.
    unsafe {
        std::ptr::copy_nonoverlapping(opts as *const u8, std::ptr::addr_of_mut!(o) as *mut u8, n);
    }
    o.size = std::mem::size_of::<dcgguf_options>() as u32;
    Ok(o)
}

/// A path argument: a non-NULL C string.
///
/// # Safety
/// `p` must be NULL or NUL-terminated.
unsafe fn path_arg(p: *const c_char, what: &str) -> Result<PathBuf, Error> {
    if p.is_null() {
        return Err(Error::null(what));
    }
    // SAFETY: non-NULL and NUL-terminated (contract).
    let s = unsafe { CStr::from_ptr(p) };
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(s.to_bytes())))
}

impl dcgguf_options {
    /// The options that apply to every operation, checked as the CLI checks them.
    fn check_common(&self) -> Result<(), Error> {
        if self.reserved != 0 {
            return Err(invalid("dcgguf_options.reserved must be 0"));
        }
        let cap = crate::io::max_threads();
        if self.threads as usize > cap {
            return Err(invalid(format!(
                "{} threads: at most {cap} on this machine (4 per CPU)",
                self.threads
            )));
        }
        Ok(())
    }

    /// The library's compression options (with a fresh `job`).
    fn compress_options(&self, job: &Job) -> Result<CompressOptions, Error> {
        self.check_common()?;
        if !LEVELS.contains(&self.level) {
            return Err(invalid(format!(
                "level {}: must be in {}..={}",
                self.level,
                LEVELS.start(),
                LEVELS.end()
            )));
        }
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK_RAW {
            return Err(invalid(format!(
                "chunk_size {}: must be between 1 and {MAX_CHUNK_RAW} bytes",
                self.chunk_size
            )));
        }
        Ok(CompressOptions {
            encode: EncodeOptions {
                level: self.level,
                ..EncodeOptions::default()
            },
            chunk_size: self.chunk_size as usize,
            force: self.force != 0,
            job: job.clone(),
            ..CompressOptions::default()
        })
    }

    /// The CLI's `--quantize ...` arguments, or `None` for lossless. Like the CLI, refuses
    /// quantization options without `quantize`, `imatrix` with `calib`, and `gptq_damp`
    /// without `gptq`.
    ///
    /// # Safety
    /// The path fields must be NULL or NUL-terminated strings.
    unsafe fn quant_args(&self) -> Result<Option<QuantArgs>, Error> {
        let f = |v: f32| (!v.is_nan()).then_some(v);
        // SAFETY (three calls): the path fields are NULL or NUL-terminated (contract).
        let path = |p: *const c_char, what| unsafe {
            (!p.is_null()).then(|| path_arg(p, what)).transpose()
        };
        let args = QuantArgs {
            quantize: None,
            step: f(self.step),
            embd_step: f(self.embd_step),
            alpha: f(self.alpha),
            fold_alpha: f(self.fold_alpha),
            tensor_alpha: f(self.tensor_alpha),
            block_adapt: f(self.block_adapt),
            permute: self.permute != 0,
            per_row: self.per_row != 0,
            prune: f(self.prune),
            rdo: f(self.rdo),
            imatrix: path(self.imatrix, "imatrix")?,
            calib: path(self.calib, "calib")?,
            gptq: path(self.gptq, "gptq")?,
            gptq_damp: (!self.gptq_damp.is_nan()).then_some(self.gptq_damp),
            fold_only: false,
            split_quants: false,
        };
        if args.imatrix.is_some() && args.calib.is_some() {
            return Err(invalid("imatrix and calib exclude each other"));
        }
        if args.gptq_damp.is_some() && args.gptq.is_none() {
            return Err(invalid("gptq_damp needs gptq"));
        }
        match self.quantize {
            DCGGUF_QUANTIZE_INT8 => Ok(Some(QuantArgs {
                quantize: Some(QuantKind::Int8),
                ..args
            })),
            DCGGUF_QUANTIZE_NONE => {
                let set = [
                    args.step,
                    args.embd_step,
                    args.alpha,
                    args.fold_alpha,
                    args.tensor_alpha,
                    args.block_adapt,
                    args.prune,
                    args.rdo,
                ]
                .iter()
                .any(Option::is_some)
                    || args.permute
                    || args.per_row
                    || args.imatrix.is_some()
                    || args.calib.is_some()
                    || args.gptq.is_some()
                    || args.gptq_damp.is_some();
                if set {
                    return Err(invalid(
                        "quantization options need quantize = DCGGUF_QUANTIZE_INT8",
                    ));
                }
                Ok(None)
            }
            q => Err(invalid(format!("quantize = {q}: unknown mode"))),
        }
    }
}

/// Runs `f` on a pool of `n` threads (0: the process-wide pool, one thread per core).
fn with_threads<R: Send>(n: u32, f: impl FnOnce() -> R + Send) -> Result<R, Error> {
    if n == 0 {
        return Ok(f());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n as usize)
        .thread_name(|i| format!("dcgguf-{i}"))
        .build()
        .map_err(|e| Error::new(DCGGUF_ERR_THREADS, e.to_string()))?;
    Ok(pool.install(f))
}

/// Forwards the library's byte counts to the C callback as (done, total) and turns a
/// non-zero return into a cancel of the job.
struct Reporter {
    callback: dcgguf_progress_fn,
    user: *mut c_void,
    job: Job,
    done: Mutex<u64>,
}

// SAFETY: `user` is never dereferenced here, only handed back to the caller's callback, which
// dcgguf.h says may run on any thread, one call at a time: calls are made under `done`'s lock.
unsafe impl Sync for Reporter {}

impl Reporter {
    fn new(callback: dcgguf_progress_fn, user: *mut c_void, job: &Job) -> Reporter {
        Reporter {
            callback,
            user,
            job: job.clone(),
            done: Mutex::new(0),
        }
    }

    fn tick(&self, n: u64) {
        // A u64 cannot be left half-updated by a panic.
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        *done += n;
        let Some(cb) = self.callback else { return };
        let total = self.job.total().unwrap_or(0);
        // SAFETY: the caller's callback with the caller's user pointer (contract in dcgguf.h).
        if unsafe { cb(*done, total, self.user) } != 0 {
            self.job.cancel();
        }
    }
}

/// `dcgguf compress`: GGUF -> DC-GGUF (every part of a split model), or with
/// `opts.quantize` the lossy mode.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_compress(
    input: *const c_char,
    output: *const c_char,
    opts: *const dcgguf_options,
    progress: dcgguf_progress_fn,
    user: *mut c_void,
) -> dcgguf_result {
    guard(|| {
        // SAFETY (three calls): pointer arguments follow the contract in dcgguf.h.
        let input = unsafe { path_arg(input, "input")? };
        let output = unsafe { path_arg(output, "output")? };
        let o = unsafe { read_options(opts)? };
        let job = Job::new();
        let copts = o.compress_options(&job)?;
        // SAFETY: the path fields of the caller's options follow the contract.
        let quant = unsafe { o.quant_args()? };
        let rep = Reporter::new(progress, user, &job);
        let tick = |n| rep.tick(n);
        with_threads(o.threads, || match quant {
            Some(q) => {
                if split_parts(&input).is_some() {
                    return Err(invalid(
                        "quantize does not support split models; merge them first",
                    ));
                }
                let qopts = q.options(&input, &output)?;
                quant::compress_lossy(&input, &output, &qopts, &copts, &tick)?;
                Ok(())
            }
            None => {
                dc::compress_parts(&input, &output, &copts, &tick)?;
                Ok(())
            }
        })?
    })
}

/// `dcgguf decompress`: DC-GGUF -> the original GGUF, bit for bit (every part of a split
/// model).
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_decompress(
    input: *const c_char,
    output: *const c_char,
    opts: *const dcgguf_options,
    progress: dcgguf_progress_fn,
    user: *mut c_void,
) -> dcgguf_result {
    guard(|| {
        // SAFETY (three calls): pointer arguments follow the contract in dcgguf.h.
        let input = unsafe { path_arg(input, "input")? };
        let output = unsafe { path_arg(output, "output")? };
        let o = unsafe { read_options(opts)? };
        o.check_common()?;
        let job = Job::new();
        let rep = Reporter::new(progress, user, &job);
        with_threads(o.threads, || {
            dc::decompress_parts(&input, &output, o.force != 0, &|n| rep.tick(n), &job)
        })??;
        Ok(())
    })
}

/// `dcgguf verify [--against ORIGINAL]`: decodes everything and checks every checksum;
/// with `against` (may be NULL) also compares with the original file.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_verify(
    input: *const c_char,
    against: *const c_char,
    opts: *const dcgguf_options,
    progress: dcgguf_progress_fn,
    user: *mut c_void,
) -> dcgguf_result {
    guard(|| {
        // SAFETY (three calls): pointer arguments follow the contract in dcgguf.h.
        let input = unsafe { path_arg(input, "input")? };
        let against = if against.is_null() {
            None
        } else {
            Some(unsafe { path_arg(against, "against")? })
        };
        let o = unsafe { read_options(opts)? };
        o.check_common()?;
        let job = Job::new();
        let rep = Reporter::new(progress, user, &job);
        with_threads(o.threads, || {
            dc::verify_file(&input, against.as_deref(), &|n| rep.tick(n), &job)
        })??;
        Ok(())
    })
}

/// Fills `*opts` with the defaults (those of the CLI) and its size.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_options_init(opts: *mut dcgguf_options) -> dcgguf_result {
    guard(|| {
        if opts.is_null() {
            return Err(Error::null("options"));
        }
        // SAFETY: non-NULL `opts` is valid for a write of the struct (contract).
        unsafe { opts.write_unaligned(dcgguf_options::default()) };
        Ok(())
    })
}

/// Copies `text` like `dcgguf_error_message`: truncated to `len - 1` bytes and NUL-terminated
/// when `len > 0`; its full length goes to `*out_n`.
///
/// # Safety
/// `buf` must be NULL or have `len` writable bytes; `out_n` NULL or writable.
unsafe fn copy_text(
    text: &str,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> Result<(), Error> {
    if out_n.is_null() {
        return Err(Error::null("out_n"));
    }
    if len > 0 && buf.is_null() {
        return Err(Error::null("buffer"));
    }
    // SAFETY: `buf` is NULL or has `len` writable bytes (contract).
    let n = unsafe { super::copy_out(text, buf, len) };
    // SAFETY: checked non-NULL above; writable per the contract.
    unsafe { out_n.write(n) };
    Ok(())
}

/// Borrows a handle for the JSON getters.
///
/// # Safety
/// `f` must be NULL or a live handle.
unsafe fn handle<'a>(f: *const dcgguf_file) -> Result<&'a dcgguf_file, Error> {
    // SAFETY: per the contract, non-NULL `f` is a live handle.
    unsafe { f.as_ref() }.ok_or_else(|| Error::null("file handle"))
}

/// `dcgguf inspect --json` without the command and path: totals and one entry per tensor.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_inspect_json(
    f: *const dcgguf_file,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> dcgguf_result {
    guard(|| {
        // SAFETY: `f` follows the documented pointer contract.
        let f = unsafe { handle(f)? };
        let json = serde_json::to_string(&f.dc.summary())
            .map_err(|e| Error::new(DCGGUF_ERR_OTHER, e.to_string()))?;
        // SAFETY: `buf`, `len` and `out_n` follow the documented contract.
        unsafe { copy_text(&json, buf, len, out_n) }
    })
}

/// The original file's metadata: a JSON array of `{"key", "type", "value"}` in file order
/// (arrays also carry `"elem_type"`).
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_metadata_json(
    f: *const dcgguf_file,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> dcgguf_result {
    guard(|| {
        // SAFETY: `f` follows the documented pointer contract.
        let f = unsafe { handle(f)? };
        let kvs: Vec<serde_json::Value> =
            f.dc.original
                .kvs
                .iter()
                .map(|kv| {
                    let mut e = serde_json::json!({
                        "key": kv.key_str(),
                        "type": kv.value.value_type().name(),
                        "value": kv.value.to_json(),
                    });
                    if let crate::gguf::Value::Array(a) = &kv.value {
                        e["elem_type"] = a.elem_type().name().into();
                    }
                    e
                })
                .collect();
        let json =
            serde_json::to_string(&kvs).map_err(|e| Error::new(DCGGUF_ERR_OTHER, e.to_string()))?;
        // SAFETY: `buf`, `len` and `out_n` follow the documented contract.
        unsafe { copy_text(&json, buf, len, out_n) }
    })
}

/// Name of a ggml type id ("F32", "Q8_0", ...): a static string.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_type_name(ty: u32, out: *mut *const c_char) -> dcgguf_result {
    guard(|| {
        let t =
            GgmlType::from_id(ty).ok_or_else(|| invalid(format!("{ty} is not a ggml type id")))?;
        if out.is_null() {
            return Err(Error::null("output pointer"));
        }
        let name = type_name_cstr(t);
        // SAFETY: non-NULL `out` is valid for a write (contract).
        unsafe { out.write(name.as_ptr()) };
        Ok(())
    })
}

/// NUL-terminated names of the ggml types, made once (the type table holds `&str`s).
fn type_name_cstr(t: GgmlType) -> &'static CStr {
    static NAMES: std::sync::OnceLock<Vec<Option<std::ffi::CString>>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        (0..256)
            .map(|id| {
                GgmlType::from_id(id)
                    .map(|t| std::ffi::CString::new(t.name()).expect("type names have no NUL"))
            })
            .collect()
    });
    names
        .get(t.id() as usize)
        .and_then(Option::as_deref)
        .expect("every valid id is below 256")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_other_header_versions() {
        let d = dcgguf_options::default();
        // SAFETY: a live, full-size struct.
        let o = unsafe { read_options(&d) }.unwrap();
        assert_eq!(o.level, d.level);
        assert!(o.step.is_nan());
        let mut short = d;
        short.size = 8;
        // SAFETY: as above (the struct is larger than the size it claims).
        let e = unsafe { read_options(&short) }.err().unwrap();
        assert_eq!(e.code, DCGGUF_ERR_INVALID_ARGUMENT);

        // A newer, longer struct: its extra bytes are accepted when zero only.
        #[repr(C)]
        struct Newer {
            v1: dcgguf_options,
            extra: u64,
        }
        let mut newer = Newer { v1: d, extra: 0 };
        newer.v1.size = std::mem::size_of::<Newer>() as u32;
        // SAFETY: `newer` has `size` readable bytes.
        assert!(unsafe { read_options(&newer.v1) }.is_ok());
        newer.extra = 1;
        // SAFETY: as above.
        let e = unsafe { read_options(&newer.v1) }.err().unwrap();
        assert!(e.msg.contains("newer libdcgguf"), "{}", e.msg);
    }

    #[test]
    fn quant_options_need_quantize() {
        let mut o = dcgguf_options::default();
        // SAFETY: NULL path fields.
        assert!(unsafe { o.quant_args() }.unwrap().is_none());
        o.step = 1.5;
        // SAFETY: as above.
        assert_eq!(
            unsafe { o.quant_args() }.err().unwrap().code,
            DCGGUF_ERR_INVALID_ARGUMENT
        );
        o.quantize = DCGGUF_QUANTIZE_INT8;
        // SAFETY: as above.
        let q = unsafe { o.quant_args() }.unwrap().unwrap();
        assert_eq!(q.step, Some(1.5));
        assert_eq!(q.embd_step, None);
    }
}
