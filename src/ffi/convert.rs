//! Conversions through the C API: compress, decompress and verify files (what the CLI's
//! subcommands do, through the same library functions, with the report `--json` prints kept
//! for [`dcgguf_last_report_json`]), the per-tensor summary of `inspect` (optionally with the
//! cost model's load times) and the original metadata as JSON, and ggml type names.
//!
//! Options come in a [`dcgguf_options`] whose first field is its size, so that a caller built
//! against an older header (a shorter struct) or a newer one (a longer struct, whose extra
//! fields must then be zero) still links: see [`read_options`] and
//! [`dcgguf_options_init_size`]. Progress goes to an optional C callback that can cancel
//! ([`Reporter`]).

use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use super::api::dcgguf_file;
use super::dcgguf_result::{self, *};
use super::{Error, guard};
use crate::codec::{EncodeOptions, LEVEL_DEFAULT, LEVEL_MAX, LEVELS, level_is_valid};
use crate::cost::{self, LoadModel};
use crate::dc::{self, CompressOptions, Job, MAX_CHUNK_RAW};
use crate::gguf::GgmlType;
use crate::gguf::split::split_parts;
use crate::quant::{self, QuantArgs, QuantKind};
use crate::report;

/// `int (*)(uint64_t done, uint64_t total, void *user)`: non-zero cancels.
pub type dcgguf_progress_fn =
    Option<unsafe extern "C" fn(done: u64, total: u64, user: *mut c_void) -> c_int>;

/// `dcgguf_options.quantize`: lossless.
pub const DCGGUF_QUANTIZE_NONE: u32 = 0;
/// `dcgguf_options.quantize`: compression-aware Q8_0 first (`dcgguf compress --quantize
/// int8`).
pub const DCGGUF_QUANTIZE_INT8: u32 = 1;

/// `dcgguf_options.level`: the default setting (`compress --level default`; also 0).
pub const DCGGUF_LEVEL_DEFAULT: i32 = LEVEL_DEFAULT;
/// `dcgguf_options.level`: the best ratio (`compress --level max`).
pub const DCGGUF_LEVEL_MAX: i32 = LEVEL_MAX;

/// Options of `dcgguf_compress`, `dcgguf_decompress` and `dcgguf_verify` (each reads the
/// fields that apply to it). Mirrors `typedef struct dcgguf_options` in ffi/dcgguf.h field for
/// field (tests/c_header.rs compares them). In the first version's fields, floats set to NaN
/// and NULL paths mean "the CLI's default"; fields added later (from `profile` on) are
/// defaulted by zero, so that an older library can accept a newer caller's struct whose new
/// fields are unset.
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
    // Version 2: the cost model (`compress --profile, --storage-bps, --target-size`).
    pub profile: *const c_char,
    pub storage_bps: f64,
    pub target_size: u64,
}

/// The size of the first version of [`dcgguf_options`] (up to `gptq`): the smallest a caller
/// may pass, and what [`dcgguf_options_init`] writes. Fields added later go at the end, never
/// in between, with zero meaning their default.
const OPTIONS_V1_SIZE: usize = std::mem::offset_of!(dcgguf_options, profile);

/// The sizes of the versions of [`dcgguf_options`] so far, the current one last. A size in
/// between two of them would end inside a field.
const OPTIONS_SIZES: [usize; 2] = [OPTIONS_V1_SIZE, std::mem::size_of::<dcgguf_options>()];

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
            profile: std::ptr::null(),
            storage_bps: 0.0,
            target_size: 0,
        }
    }
}

/// Whether a caller's `dcgguf_options.size` is one this library can read: a version it knows,
/// or a newer (longer) one.
fn check_options_size(size: usize) -> Result<(), Error> {
    let ours = std::mem::size_of::<dcgguf_options>();
    if OPTIONS_SIZES.contains(&size) || size > ours {
        return Ok(());
    }
    Err(invalid(format!(
        "dcgguf_options.size is {size}; this library reads the sizes {OPTIONS_SIZES:?} or \
         larger ones from newer headers (fill the struct with dcgguf_options_init)"
    )))
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(DCGGUF_ERR_INVALID_ARGUMENT, msg)
}

/// The caller's options, or the defaults for NULL.
///
/// A struct from an older header is shorter: the fields it lacks keep their defaults (a size
/// that is not one of [`OPTIONS_SIZES`] is refused). One from a newer header is longer:
/// accepted only if the bytes this library does not know are zero (their defaults), since a
/// set option that cannot be honoured must not be ignored.
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
    check_options_size(size)?;
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

    /// What the `profile`, `storage_bps` and `target_size` fields ask of the cost model, as
    /// the CLI's `--profile`, `--storage-bps` and `--target-size`; [`ModelRequest::load`]
    /// then loads it.
    ///
    /// # Safety
    /// `profile` must be NULL or NUL-terminated.
    unsafe fn model_request(&self) -> Result<ModelRequest, Error> {
        let profile = if self.profile.is_null() {
            None
        } else {
            // SAFETY: non-NULL and NUL-terminated (contract).
            let p = unsafe { path_arg(self.profile, "profile")? };
            if p.as_os_str().is_empty() {
                return Err(invalid(
                    "profile is empty: \"auto\", a profile path, or NULL for none",
                ));
            }
            Some(p)
        };
        // 0 (what zeroed memory and older headers give) is "not set"; the CLI has no way to
        // ask for 0 bytes/s either (it refuses it).
        let storage_bps = (self.storage_bps != 0.0).then_some(self.storage_bps);
        Ok(ModelRequest {
            profile,
            storage_bps,
            target_size: (self.target_size != 0).then_some(self.target_size),
        })
    }

    /// The library's compression options (with a fresh `job`), without the cost model
    /// (`load_model` and `target_size`: [`dcgguf_options::model_request`]).
    fn compress_options(&self, job: &Job) -> Result<CompressOptions, Error> {
        self.check_common()?;
        if !level_is_valid(self.level) {
            return Err(invalid(format!(
                "level {}: must be DCGGUF_LEVEL_DEFAULT ({LEVEL_DEFAULT}), DCGGUF_LEVEL_MAX \
                 ({LEVEL_MAX}) or a Zstd level {}..={}",
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
    /// without `gptq` or `calib`.
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
            // 0: the CLI's default (no --per-row: the architecture's, with GPTQ).
            per_row: (self.per_row != 0).then_some(true),
            prune: f(self.prune),
            rdo: f(self.rdo),
            imatrix: path(self.imatrix, "imatrix")?,
            calib: path(self.calib, "calib")?.map(Some),
            cov_budget: None,
            gptq: path(self.gptq, "gptq")?,
            gptq_damp: (!self.gptq_damp.is_nan()).then_some(self.gptq_damp),
            fold_only: false,
            split_quants: false,
        };
        if args.imatrix.is_some() && args.calib.is_some() {
            return Err(invalid("imatrix and calib exclude each other"));
        }
        if args.gptq_damp.is_some() && args.gptq.is_none() && args.calib.is_none() {
            return Err(invalid("gptq_damp needs gptq or calib"));
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
                    || args.per_row.is_some()
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

/// The cost-model fields of [`dcgguf_options`], owned (to move onto a pool's thread).
struct ModelRequest {
    profile: Option<PathBuf>,
    storage_bps: Option<f64>,
    target_size: Option<u64>,
}

impl ModelRequest {
    /// Whether [`ModelRequest::load`] has a model to load (or measure).
    fn asks_for_model(&self) -> bool {
        self.profile.is_some() || self.storage_bps.is_some() || self.target_size.is_some()
    }

    /// The model asked for ([`cost::load_model_for`]; a `target_size` needs one, as
    /// `--target-size` implies `--profile auto`). May measure this machine (seconds).
    fn load(&self) -> Result<Option<LoadModel>, Error> {
        let loaded = cost::load_model_for(
            self.profile.as_deref().map(|p| p.as_os_str()),
            self.storage_bps,
            self.target_size.is_some(),
        )?;
        Ok(loaded.map(|l| l.model))
    }
}

/// Runs `f` on threads of its own, `n` of them (0: one per CPU), which end with it, while the
/// calling thread makes `progress`'s calls ([`Reporter::relay`]). On rayon's global pool
/// (what `f` on the calling thread would use) the threads would stay idle in the host for
/// the rest of its life.
fn with_threads<R: Send>(
    n: u32,
    progress: Option<&Reporter>,
    f: impl FnOnce() -> R + Send,
) -> Result<R, Error> {
    let n = if n == 0 {
        crate::io::cpus()
    } else {
        n as usize
    };
    let pool = super::api::decode_pool(n)?;
    let Some(rep) = progress else {
        return Ok(pool.install(f));
    };
    let mut out = None;
    let relaying = rep.start_relay();
    pool.in_place_scope(|s| {
        s.spawn(|_| {
            // Ends the relay even if `f` panics (the scope then re-raises the panic).
            let _end = relaying;
            out = Some(f());
        });
        rep.relay();
    });
    Ok(out.expect("the scope ran the conversion to its end"))
}

/// Forwards the library's byte counts to the C callback as (done, total) and turns a
/// non-zero return into a cancel of the job.
///
/// The callback runs on the thread that called the conversion, whichever threads do the
/// work: a host expects its callback there (Python runs a Ctrl-C handler only on its main
/// thread, and only when Python code runs, as in the callback). While [`with_threads`]'s
/// threads work, that thread waits in [`Reporter::relay`]; a tick hands its count over
/// and waits until the callback has seen it, so that a cancel takes effect before the work
/// goes on, as when the callback was called in place.
struct Reporter {
    callback: dcgguf_progress_fn,
    user: *mut c_void,
    job: Job,
    state: Mutex<Relay>,
    changed: Condvar,
}

/// What the ticks and the relaying thread share.
#[derive(Default)]
struct Relay {
    done: u64,
    /// Ticks so far, and how many of them the callback has answered.
    ticks: u64,
    answered: u64,
    /// The calling thread is in [`Reporter::relay`] (else a tick calls the callback itself).
    relaying: bool,
    /// The work has returned (or unwound): the relay ends once every tick is answered.
    finished: bool,
    /// The callback asked to cancel: it is not called again.
    cancelled: bool,
}

// SAFETY: `user` is never dereferenced here, only handed back to the caller's callback, which
// is called on one thread at a time: the relaying thread, or a ticking thread under `state`'s
// lock while nothing relays.
unsafe impl Sync for Reporter {}

/// Marks the work finished when dropped, panic or not: the relay would otherwise wait on.
struct EndRelay<'a>(&'a Reporter);

impl Drop for EndRelay<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.finished = true;
        self.0.changed.notify_all();
    }
}

impl Reporter {
    fn new(callback: dcgguf_progress_fn, user: *mut c_void, job: &Job) -> Reporter {
        Reporter {
            callback,
            user,
            job: job.clone(),
            state: Mutex::new(Relay::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Relay> {
        // Plain counters and flags: a panic cannot leave them half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls the callback with `done`; true if it asked to cancel (the job is then cancelled).
    fn call(&self, done: u64) -> bool {
        let Some(cb) = self.callback else {
            return false;
        };
        let total = self.job.total().unwrap_or(0);
        // SAFETY: the caller's callback with the caller's user pointer (contract in dcgguf.h).
        let cancel = unsafe { cb(done, total, self.user) } != 0;
        if cancel {
            self.job.cancel();
        }
        cancel
    }

    fn tick(&self, n: u64) {
        let mut s = self.lock();
        s.done += n;
        if self.callback.is_none() || s.cancelled {
            return;
        }
        if !s.relaying {
            let done = s.done;
            s.cancelled = self.call(done);
            return;
        }
        s.ticks += 1;
        let me = s.ticks;
        self.changed.notify_all();
        while s.answered < me {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// From now on ticks wait for [`Reporter::relay`], until the returned guard is dropped.
    fn start_relay(&self) -> EndRelay<'_> {
        let mut s = self.lock();
        s.relaying = true;
        s.finished = false;
        EndRelay(self)
    }

    /// Makes the callback's calls on this thread until the work has finished: one call for
    /// the ticks that came while the last one ran, with the latest count.
    fn relay(&self) {
        let mut s = self.lock();
        loop {
            if s.answered < s.ticks {
                let (done, upto) = (s.done, s.ticks);
                if !s.cancelled {
                    drop(s);
                    let cancel = self.call(done);
                    s = self.lock();
                    s.cancelled |= cancel;
                }
                s.answered = upto;
                self.changed.notify_all();
            } else if s.finished {
                break;
            } else {
                s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
            }
        }
        s.relaying = false;
    }
}

/// What the conversion entry points share: the panic boundary; the previous report cleared;
/// the entry point's own pointer arguments (`args`), then the caller's options, read in that
/// order; a job whose progress goes to the caller's callback; and `run`'s report kept for
/// [`dcgguf_last_report_json`].
fn conversion<A>(
    args: impl FnOnce() -> Result<A, Error>,
    opts: *const dcgguf_options,
    progress: dcgguf_progress_fn,
    user: *mut c_void,
    run: impl FnOnce(A, dcgguf_options, &Job, &Reporter) -> Result<serde_json::Value, Error>,
) -> dcgguf_result {
    guard(|| {
        clear_last_report();
        let args = args()?;
        // SAFETY: `opts` follows the contract in dcgguf.h.
        let o = unsafe { read_options(opts)? };
        let job = Job::new();
        let rep = Reporter::new(progress, user, &job);
        set_last_report(&run(args, o, &job, &rep)?);
        Ok(())
    })
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
    conversion(
        // SAFETY (both calls): pointer arguments follow the contract in dcgguf.h.
        || unsafe { Ok((path_arg(input, "input")?, path_arg(output, "output")?)) },
        opts,
        progress,
        user,
        |(input, output), o, job, rep| {
            let copts = o.compress_options(job)?;
            // SAFETY: the path fields of the caller's options follow the contract.
            let quant = unsafe { o.quant_args()? };
            let tick = |n| rep.tick(n);
            // SAFETY: the caller's `profile` field follows the contract.
            let model = unsafe { o.model_request()? };
            with_threads(o.threads, Some(rep), || {
                // As the CLI: the model is loaded (or measured, on this pool's threads) first.
                let copts = CompressOptions {
                    load_model: model.load()?.map(|m| Arc::new(m) as Arc<dyn dc::LoadCost>),
                    target_size: model.target_size,
                    ..copts
                };
                match quant {
                    Some(q) => {
                        if split_parts(&input).is_some() {
                            return Err(invalid(
                                "quantize does not support split models; merge them first",
                            ));
                        }
                        let qopts = q.options(&input, &output)?;
                        let (q, r) = quant::compress_lossy(&input, &output, &qopts, &copts, &tick)?;
                        Ok(report::compress_lossy(&q, &r))
                    }
                    None => {
                        let files = dc::compress_parts(&input, &output, &copts, &tick)?;
                        Ok(report::compress(&files))
                    }
                }
            })?
        },
    )
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
    conversion(
        // SAFETY (both calls): pointer arguments follow the contract in dcgguf.h.
        || unsafe { Ok((path_arg(input, "input")?, path_arg(output, "output")?)) },
        opts,
        progress,
        user,
        |(input, output), o, job, rep| {
            o.check_common()?;
            let files = with_threads(o.threads, Some(rep), || {
                dc::decompress_parts(&input, &output, o.force != 0, &|n| rep.tick(n), job)
            })??;
            Ok(report::decompress(&files))
        },
    )
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
    conversion(
        || {
            // SAFETY (both calls): pointer arguments follow the contract in dcgguf.h.
            let input = unsafe { path_arg(input, "input")? };
            let against = match against.is_null() {
                true => None,
                false => Some(unsafe { path_arg(against, "against")? }),
            };
            Ok((input, against))
        },
        opts,
        progress,
        user,
        |(input, against), o, job, rep| {
            o.check_common()?;
            let original_bytes = with_threads(o.threads, Some(rep), || {
                dc::verify_file(&input, against.as_deref(), &|n| rep.tick(n), job)
            })??;
            Ok(report::verify(&input, original_bytes, against.as_deref()))
        },
    )
}

thread_local! {
    /// The JSON report of the calling thread's last successful conversion (empty after a
    /// failed one), for [`dcgguf_last_report_json`].
    static LAST_REPORT: RefCell<String> = const { RefCell::new(String::new()) };
}

fn clear_last_report() {
    LAST_REPORT.with(|r| r.borrow_mut().clear());
}

fn set_last_report(v: &serde_json::Value) {
    LAST_REPORT.with(|r| *r.borrow_mut() = v.to_string());
}

/// What `dcgguf compress|decompress|verify --json` prints for the calling thread's last
/// conversion, if it succeeded (else an empty string): copied like [`dcgguf_inspect_json`].
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_last_report_json(
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> dcgguf_result {
    guard(|| {
        LAST_REPORT.with(|r| {
            // SAFETY: `buf`, `len` and `out_n` follow the documented contract.
            unsafe { copy_text(&r.borrow(), buf, len, out_n) }
        })
    })
}

/// Fills the first version's fields of `*opts` ([`OPTIONS_V1_SIZE`] bytes) with the defaults
/// and `size` = that size: what programs built against the first header, which call this
/// symbol with a struct of that size, expect. dcgguf.h now turns calls to
/// `dcgguf_options_init(opts)` into [`dcgguf_options_init_size`]`(opts, sizeof *opts)`.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_options_init(opts: *mut dcgguf_options) -> dcgguf_result {
    // SAFETY: a caller of this symbol has a first-version struct (contract above).
    unsafe { init_options(opts, OPTIONS_V1_SIZE) }
}

/// Fills the caller's `size`-byte `*opts` with the defaults (those of the CLI) and `size`:
/// the fields this library knows that fit, zeros after them (the default of every field a
/// newer header adds). `size` must be one [`read_options`] accepts.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_options_init_size(
    opts: *mut dcgguf_options,
    size: usize,
) -> dcgguf_result {
    // SAFETY: `opts` has `size` writable bytes (contract in dcgguf.h).
    unsafe { init_options(opts, size) }
}

/// # Safety
/// `opts` must be NULL or have `size` writable bytes.
unsafe fn init_options(opts: *mut dcgguf_options, size: usize) -> dcgguf_result {
    guard(|| {
        if opts.is_null() {
            return Err(Error::null("options"));
        }
        check_options_size(size)?;
        let size32 = u32::try_from(size)
            .map_err(|_| invalid(format!("dcgguf_options size {size} is too large")))?;
        let d = dcgguf_options {
            size: size32,
            ..dcgguf_options::default()
        };
        let ours = std::mem::size_of::<dcgguf_options>();
        let n = ours.min(size);
        // SAFETY: `opts` has `size` >= n writable bytes (contract); `d` has `ours` >= n; the
        // two do not overlap (`d` is a local). The bytes past `ours` are zeroed, within `size`.
        unsafe {
            std::ptr::copy_nonoverlapping(std::ptr::addr_of!(d) as *const u8, opts as *mut u8, n);
            std::ptr::write_bytes((opts as *mut u8).add(n), 0, size - n);
        }
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

/// [`dcgguf_inspect_json`] plus, when `opts` sets `profile` or `storage_bps`, the cost
/// model's predicted load times: what `dcgguf inspect --profile/--storage-bps --json` adds
/// ("predicted_load_seconds" per tensor, "predicted_total_load_seconds", "storage_bps").
/// `opts` may be NULL (no model).
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_inspect_json_opts(
    f: *const dcgguf_file,
    opts: *const dcgguf_options,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> dcgguf_result {
    guard(|| {
        // SAFETY (two calls): `f` and `opts` follow the documented pointer contract.
        let f = unsafe { handle(f)? };
        let o = unsafe { read_options(opts)? };
        o.check_common()?;
        // SAFETY: the caller's `profile` field follows the contract.
        let request = unsafe { o.model_request()? };
        // `inspect` has no target size: only profile and storage_bps ask for a model.
        let request = ModelRequest {
            target_size: None,
            ..request
        };
        // Threads only where a model is asked for (a profile may be measured on them).
        let model = if request.asks_for_model() {
            with_threads(o.threads, None, || request.load())??
        } else {
            None
        };
        let predicted = model
            .as_ref()
            .map(|m| (cost::predicted_load_seconds(&f.dc, m), m));
        let json = report::inspect(
            &f.dc.summary(),
            predicted.as_ref().map(|(p, m)| (p.as_slice(), *m)),
        )
        .to_string();
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

    /// What [`record`] saw: each call's thread and count; it cancels at call `cancel_at`.
    struct Calls {
        seen: Mutex<Vec<(std::thread::ThreadId, u64)>>,
        cancel_at: usize,
    }

    impl Calls {
        fn cancelling_at(cancel_at: usize) -> Calls {
            Calls {
                seen: Mutex::new(Vec::new()),
                cancel_at,
            }
        }

        /// A reporter whose callback is [`record`] into `self`.
        fn reporter(&self, job: &Job) -> Reporter {
            Reporter::new(Some(record), self as *const Calls as *mut c_void, job)
        }
    }

    unsafe extern "C" fn record(done: u64, _total: u64, user: *mut c_void) -> c_int {
        // SAFETY: the tests pass a live `Calls` as `user`.
        let calls = unsafe { &*(user as *const Calls) };
        let mut seen = calls.seen.lock().unwrap();
        seen.push((std::thread::current().id(), done));
        c_int::from(seen.len() == calls.cancel_at)
    }

    #[test]
    fn progress_comes_on_the_calling_thread_and_a_cancel_stops_the_next_tick() {
        let calls = Calls::cancelling_at(3);
        let job = Job::new();
        let rep = calls.reporter(&job);
        let worked = with_threads(2, Some(&rep), || {
            let me = std::thread::current().id();
            let mut ticks = 0;
            while ticks < 50 && job.check().is_ok() {
                rep.tick(10);
                ticks += 1;
            }
            (me, ticks)
        })
        .unwrap();
        let seen = calls.seen.into_inner().unwrap();
        let here = std::thread::current().id();
        assert_ne!(worked.0, here, "the work ran on the call's own threads");
        assert!(seen.iter().all(|&(t, _)| t == here), "calls off the caller");
        // Each tick waited for its call: the third call's cancel stopped the work there.
        assert_eq!(seen.iter().map(|c| c.1).collect::<Vec<_>>(), [10, 20, 30]);
        assert_eq!(worked.1, 3);
        assert!(job.check().is_err());
    }

    #[test]
    fn a_panic_in_the_work_ends_the_relay_and_reaches_the_caller() {
        let calls = Calls::cancelling_at(0);
        let job = Job::new();
        let rep = calls.reporter(&job);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_threads(1, Some(&rep), || {
                rep.tick(1);
                panic!("in the work");
            })
        }));
        assert!(r.is_err());
        assert_eq!(calls.seen.lock().unwrap().len(), 1);
        // A tick after the relay ended calls in place, on this thread.
        rep.tick(1);
        let seen = calls.seen.lock().unwrap();
        assert_eq!(seen[1], (std::thread::current().id(), 2));
    }

    /// The header's `dcgguf_level` constants are the library's.
    #[test]
    fn header_level_constants_match() {
        let header = include_str!("../../ffi/dcgguf.h");
        let value = |name: &str| -> i32 {
            let line = header
                .lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap_or_else(|| panic!("{name} not in dcgguf.h"));
            let v = line.split_once('=').expect("NAME = value").1;
            v.trim_start()
                .split(|c: char| !(c.is_ascii_digit() || c == '-'))
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no value in {line:?}"))
        };
        assert_eq!(value("DCGGUF_LEVEL_DEFAULT "), DCGGUF_LEVEL_DEFAULT);
        assert_eq!(value("DCGGUF_LEVEL_MAX "), DCGGUF_LEVEL_MAX);
        assert_eq!(dcgguf_options::default().level, DCGGUF_LEVEL_DEFAULT);
    }

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

    /// A first-version caller: its struct ends at `gptq`. The library reads no further, and
    /// the fields added since keep their defaults (no cost model); a size that ends inside a
    /// field is refused.
    #[test]
    fn first_version_structs_are_read_and_written_only_up_to_their_size() {
        assert_eq!(
            OPTIONS_V1_SIZE,
            std::mem::offset_of!(dcgguf_options, gptq) + 8
        );
        #[repr(C)]
        struct Guarded {
            o: dcgguf_options,
            guard: [u8; 8],
        }
        let mut g = Guarded {
            o: dcgguf_options::default(),
            guard: [0xAB; 8],
        };
        // Whatever lies past a version-1 struct in the caller's memory: not its fields.
        g.o.profile = c"/nonexistent/profile.json".as_ptr();
        g.o.storage_bps = -1.0;
        g.o.target_size = 7;
        let tail: Vec<u8> = {
            // SAFETY: reading the initialized bytes of `g` after the version-1 prefix.
            let p = std::ptr::addr_of!(g) as *const u8;
            unsafe { std::slice::from_raw_parts(p.add(OPTIONS_V1_SIZE), 32) }.to_vec()
        };
        assert_eq!(dcgguf_options_init(&mut g.o), DCGGUF_OK);
        assert_eq!(g.o.size as usize, OPTIONS_V1_SIZE);
        assert_eq!(g.o.level, CompressOptions::default().encode.level);
        {
            // SAFETY: as above.
            let p = std::ptr::addr_of!(g) as *const u8;
            let now = unsafe { std::slice::from_raw_parts(p.add(OPTIONS_V1_SIZE), 32) };
            assert_eq!(now, &tail[..], "the legacy init wrote past version 1");
        }
        // SAFETY: `g` has more than `size` readable bytes.
        let o = unsafe { read_options(&g.o) }.unwrap();
        assert!(o.profile.is_null() && o.storage_bps == 0.0 && o.target_size == 0);
        // SAFETY: NULL profile.
        let r = unsafe { o.model_request() }.unwrap();
        assert!(r.profile.is_none() && r.storage_bps.is_none() && r.target_size.is_none());
        assert!(r.load().unwrap().is_none());

        for size in [OPTIONS_V1_SIZE + 8, OPTIONS_V1_SIZE - 8, 0] {
            g.o.size = size as u32;
            // SAFETY: `g` has more than `size` readable bytes.
            let e = unsafe { read_options(&g.o) }.err().unwrap();
            assert_eq!(e.code, DCGGUF_ERR_INVALID_ARGUMENT, "{size}");
            assert_eq!(
                dcgguf_options_init_size(&mut g.o, size),
                DCGGUF_ERR_INVALID_ARGUMENT
            );
        }
    }

    /// The sized init writes exactly `size` bytes: defaults, then zeros for a newer header's
    /// fields, which read_options then accepts.
    #[test]
    fn sized_init_fills_exactly_the_callers_struct() {
        #[repr(C)]
        struct Newer {
            o: dcgguf_options,
            extra: [u8; 16],
            guard: [u8; 8],
        }
        let mut n = Newer {
            o: dcgguf_options::default(),
            extra: [0xCD; 16],
            guard: [0xAB; 8],
        };
        n.o.target_size = 99;
        let size = std::mem::size_of::<dcgguf_options>() + 16;
        assert_eq!(dcgguf_options_init_size(&mut n.o, size), DCGGUF_OK);
        assert_eq!(n.o.size as usize, size);
        assert_eq!(n.o.target_size, 0);
        assert!(n.o.step.is_nan() && n.o.gptq_damp.is_nan());
        assert_eq!(n.extra, [0; 16]);
        assert_eq!(n.guard, [0xAB; 8]);
        // SAFETY: `n` has `size` readable bytes.
        assert!(unsafe { read_options(&n.o) }.is_ok());
        assert_eq!(
            dcgguf_options_init_size(std::ptr::null_mut(), size),
            DCGGUF_ERR_NULL_POINTER
        );
    }

    #[test]
    fn cost_fields_map_like_the_cli() {
        let mut o = dcgguf_options {
            storage_bps: 2e9,
            target_size: 1 << 30,
            ..dcgguf_options::default()
        };
        // SAFETY: NULL profile.
        let r = unsafe { o.model_request() }.unwrap();
        assert_eq!((r.storage_bps, r.target_size), (Some(2e9), Some(1 << 30)));
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            o.storage_bps = bad;
            // SAFETY: as above.
            let e = unsafe { o.model_request() }.unwrap().load().err().unwrap();
            assert_eq!(e.code, DCGGUF_ERR_INVALID_ARGUMENT, "{bad}");
            assert!(e.msg.contains("storage_bps"), "{}", e.msg);
        }
        o.storage_bps = 0.0;
        o.profile = c"".as_ptr();
        // SAFETY: a NUL-terminated profile.
        let e = unsafe { o.model_request() }.err().unwrap();
        assert_eq!(e.code, DCGGUF_ERR_INVALID_ARGUMENT);
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
