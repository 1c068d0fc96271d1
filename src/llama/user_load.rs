//! The "user" load route (`DCGGUF_LOAD_ROUTE=user`): a DC-GGUF goes to llama.cpp's public
//! `llama_model_init_from_user` instead of a cookie `FILE *` (the default "stream" route,
//! [`super::stream`]). No libc interposition is involved.
//!
//! The original GGUF header (metadata and tensor infos, no data section) is parsed by the
//! host's own `gguf_init_from_buffer`; llama.cpp builds the model from it, allocates the
//! weights, then asks for each tensor's bytes through a callback, which decodes the tensor
//! from the DC file straight into the tensor's memory (host buffers) or through a staging
//! buffer and `ggml_backend_tensor_set` (device buffers).
//!
//! What llama.cpp does differently on this route (llama.cpp 0c1e57098, `llama-model-loader.cpp`
//! with no files): it forces `load_mode = none` and `use_extra_bufts = false` (no repacked
//! CPU weights; on x86 none of Q4_1, Q8_0, F16, F32 is repacked anyway), does not check tensor
//! shapes against the file (done here: type and size must match), reports no progress, and it
//! CREATES every optional tensor the architecture asks for, absent or not (as F32 unless the
//! metadata lists it). Absent tensors are filled so that the model computes exactly what the
//! original does:
//! - a missing `output.weight` next to `token_embd.weight` is the tied output: it is listed in
//!   the metadata with the embedding's type, so llama.cpp creates it with that type, and after
//!   the load it points at the embedding's memory (host buffers; its own pages are never
//!   touched) or gets a copy (device buffers);
//! - absent biases and token-type embeddings are zeros (`x + 0 == x`), absent rope frequency
//!   factors and per-tensor weight scales ones (`theta / 1 == theta`, `x * 1 == x`), absent
//!   classifier heads zeros unless the model pools with `rank` (the only pooling that uses
//!   them). These cost a few elementwise operations per layer that the original model does
//!   not run (llama.cpp adds a bias or scales a result whenever the tensor exists);
//! - any other absent tensor makes this route give up: the model is freed and the caller
//!   loads through the stream instead.
//!
//! Without files, llama.cpp's loader also asserts (aborting the process) on a tensor it skips
//! (`TENSOR_SKIP`, or an op-less tensor kind): models with multi-token-prediction layers that
//! are not loaded (`<arch>.nextn_predict_layers > 0`, `load_mtp` off) go to the stream
//! instead; other skipped kinds are not detected here.

use std::ffi::{CStr, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::early::{EarlyDecode, Limits};
use super::host::HostError;
use super::throttle::{Throttle, throttle_from_env};
use super::{LlamaError, hooks, host, sys};
use crate::dc::{DcError, DcFile};
use crate::gguf::GgmlType;

/// Environment variable that selects how a DC-GGUF reaches llama.cpp.
pub const ROUTE_ENV: &str = "DCGGUF_LOAD_ROUTE";

/// How a DC-GGUF reaches llama.cpp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A cookie `FILE *` serving the original bytes to `llama_model_load_from_file_ptr`.
    Stream,
    /// `llama_model_init_from_user` with a per-tensor decode callback (this module).
    User,
}

/// `DCGGUF_LOAD_ROUTE=user|stream`; unset, empty or unknown values mean the stream.
pub fn route_from_env() -> Route {
    match std::env::var(ROUTE_ENV) {
        Err(_) => Route::Stream,
        Ok(v) => match v.trim() {
            "" | "stream" => Route::Stream,
            "user" => Route::User,
            other => {
                crate::log_line!(
                    "dcgguf: ignoring {ROUTE_ENV}={other:?} (expected user or stream); using stream"
                );
                Route::Stream
            }
        },
    }
}

type InitFromUserFn = unsafe extern "C" fn(
    *mut sys::gguf_context,
    sys::llama_model_set_tensor_data_t,
    *mut c_void,
    sys::llama_model_params,
) -> *mut sys::llama_model;
type GgufInitFromBufferFn =
    unsafe extern "C" fn(*const c_void, usize, sys::gguf_init_params) -> *mut sys::gguf_context;
type GgufFreeFn = unsafe extern "C" fn(*mut sys::gguf_context);
type GgufFindTensorFn = unsafe extern "C" fn(*const sys::gguf_context, *const c_char) -> i64;
type GgufAddTensorFn = unsafe extern "C" fn(*mut sys::gguf_context, *const sys::ggml_tensor);
type TensorSetFn = unsafe extern "C" fn(*mut sys::ggml_tensor, *const c_void, usize, usize);
type BufferIsHostFn = unsafe extern "C" fn(sys::ggml_backend_buffer_t) -> bool;
type NbytesFn = unsafe extern "C" fn(*const sys::ggml_tensor) -> usize;
type ModelFreeFn = unsafe extern "C" fn(*mut sys::llama_model);

/// The host functions this route needs beyond [`host::Host`] (llama.h, gguf.h, ggml.h,
/// ggml-backend.h of the pinned llama.cpp; see src/llama/sys.rs).
struct Api {
    init_from_user: InitFromUserFn,
    gguf_init_from_buffer: GgufInitFromBufferFn,
    gguf_free: GgufFreeFn,
    gguf_find_tensor: GgufFindTensorFn,
    gguf_add_tensor: GgufAddTensorFn,
    tensor_set: TensorSetFn,
    buffer_is_host: BufferIsHostFn,
    nbytes: NbytesFn,
    model_free: ModelFreeFn,
}

static API: OnceLock<Result<Api, HostError>> = OnceLock::new();

fn api() -> Result<&'static Api, HostError> {
    API.get_or_init(resolve).as_ref().map_err(Clone::clone)
}

fn resolve() -> Result<Api, HostError> {
    let need = |name: &CStr, ours: usize| {
        host::real_function(name, ours)
            .ok_or_else(|| HostError::Missing(name.to_string_lossy().into_owned()))
    };
    let init_from_user = need(c"llama_model_init_from_user", 0)?;
    let gguf_init_from_buffer = need(c"gguf_init_from_buffer", 0)?;
    let gguf_free = need(c"gguf_free", 0)?;
    let gguf_find_tensor = need(c"gguf_find_tensor", 0)?;
    let gguf_add_tensor = need(c"gguf_add_tensor", 0)?;
    let tensor_set = need(c"ggml_backend_tensor_set", 0)?;
    let buffer_is_host = need(c"ggml_backend_buffer_is_host", 0)?;
    let nbytes = need(c"ggml_nbytes", 0)?;
    let model_free = need(c"llama_model_free", hooks::interposers().model_free)?;
    // SAFETY: each address is the named C function of the host's llama.cpp/ggml, whose
    // signature at the pinned commit is the type it is transmuted to (bindgen output in
    // src/llama/sys.rs, checked in CI against llama.h).
    unsafe {
        Ok(Api {
            init_from_user: std::mem::transmute::<usize, InitFromUserFn>(init_from_user),
            gguf_init_from_buffer: std::mem::transmute::<usize, GgufInitFromBufferFn>(
                gguf_init_from_buffer,
            ),
            gguf_free: std::mem::transmute::<usize, GgufFreeFn>(gguf_free),
            gguf_find_tensor: std::mem::transmute::<usize, GgufFindTensorFn>(gguf_find_tensor),
            gguf_add_tensor: std::mem::transmute::<usize, GgufAddTensorFn>(gguf_add_tensor),
            tensor_set: std::mem::transmute::<usize, TensorSetFn>(tensor_set),
            buffer_is_host: std::mem::transmute::<usize, BufferIsHostFn>(buffer_is_host),
            nbytes: std::mem::transmute::<usize, NbytesFn>(nbytes),
            model_free: std::mem::transmute::<usize, ModelFreeFn>(model_free),
        })
    }
}

/// What became of a load through this route.
pub enum UserLoad {
    Loaded(*mut sys::llama_model),
    /// The model needs something this route cannot provide; nothing is left allocated, load
    /// it through the stream instead.
    Unsupported(Unsupported),
}

/// Why a model cannot take this route (it then loads through the stream).
#[derive(Debug, thiserror::Error)]
pub enum Unsupported {
    #[error("{0} multi-token-prediction layers, which llama_model_init_from_user cannot skip")]
    MtpLayers(u64),
    #[error(
        "llama.cpp created tensor {0:?}, which the file does not have and which this route \
         cannot fill neutrally"
    )]
    Unfillable(String),
    #[error("llama.cpp created {0:?} (absent from the file) with a type other than F32")]
    OnesNotF32(String),
}

/// Why a load through this route failed.
#[derive(Debug, thiserror::Error)]
pub enum UserRouteError {
    /// Reading or decoding the DC file.
    #[error(transparent)]
    Dc(#[from] DcError),
    #[error(
        "tensor {name:?}: llama.cpp expects type {expected} with {expected_bytes} bytes, the \
         file has {found} with {found_bytes} bytes"
    )]
    TensorMismatch {
        name: String,
        expected: &'static str,
        expected_bytes: usize,
        found: &'static str,
        found_bytes: u64,
    },
    #[error("the original header is shorter than its data offset")]
    ShortHeader,
    #[error("llama.cpp's gguf_init_from_buffer refused the original header")]
    HeaderRefused,
    #[error("tensor {0:?} cannot be described to llama.cpp")]
    Describe(String),
    #[error("internal error (panic) while loading a tensor")]
    Panic,
}

/// A `gguf_context` freed on drop.
struct Gguf<'a> {
    api: &'a Api,
    ctx: *mut sys::gguf_context,
}

impl Drop for Gguf<'_> {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from gguf_init_from_buffer, is non-NULL, and is freed only here;
        // llama.cpp does not keep it after llama_model_init_from_user returns (the loader
        // copies the metadata it needs).
        unsafe { (self.api.gguf_free)(self.ctx) };
    }
}

/// What to put into a tensor llama.cpp created but the file does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fill {
    /// The tied output: the token embedding's bytes.
    Tied,
    Zeros,
    /// F32 ones.
    Ones,
}

/// How an absent tensor is filled so that the model computes what the original does, or
/// `None` when this route cannot tell.
fn absent_fill(name: &str, has_token_embd: bool, rank_pooling: bool) -> Option<Fill> {
    if name == "output.weight" {
        return has_token_embd.then_some(Fill::Tied);
    }
    // Added to activations: zeros change nothing.
    if name.ends_with(".bias") || name == "token_types.weight" {
        return Some(Fill::Zeros);
    }
    // Divide the rope frequencies, or multiply a matmul's result (per-tensor weight scales;
    // input scales are not used in the graph): ones change nothing.
    if name.starts_with("rope_freqs.")
        || name.starts_with("rope_factors_")
        || name.ends_with(".scale")
        || name.ends_with(".input_scale")
    {
        return Some(Fill::Ones);
    }
    // Classifier heads ("cls.weight", "cls.output.weight", ...) are only used by rank pooling.
    if name.starts_with("cls.") && !rank_pooling {
        return Some(Fill::Zeros);
    }
    None
}

/// The state the tensor callback works on.
struct LoadState<'a> {
    dc: &'a DcFile,
    api: &'a Api,
    pool: Option<&'a rayon::ThreadPool>,
    throttle: Option<Arc<Throttle>>,
    /// Chunks decoded while llama.cpp parses the metadata ([`super::early`]).
    early: Option<EarlyDecode>,
    token_embd: Option<usize>,
    rank_pooling: bool,
    /// llama.cpp's token embedding tensor, once loaded.
    token_embd_tensor: Option<*mut sys::ggml_tensor>,
    /// Tied outputs in host memory, pointed at the embedding after the load.
    tied: Vec<*mut sys::ggml_tensor>,
    decoded: usize,
    decoded_bytes: u64,
    /// Which of the file's tensors llama.cpp asked for.
    used: Vec<bool>,
    filled: Vec<(String, Fill)>,
    /// The first failure: the model is freed after the load.
    error: Option<UserRouteError>,
    /// An absent tensor this route cannot fill.
    unsupported: Option<Unsupported>,
    /// llama.cpp has asked for a tensor's bytes (the callback ran once).
    reads_begun: bool,
}

impl LoadState<'_> {
    /// Decodes tensor `i` into `dst` (its whole size), chunks in parallel: chunks the early
    /// thread already decoded are copied, the others decoded here.
    fn decode(&self, i: usize, dst: &mut [u8]) -> Result<(), UserRouteError> {
        use rayon::prelude::*;
        let start = self.dc.original.data_offset + self.dc.original.tensors[i].offset;
        let chunk_raw = self.dc.index.tensors[i].chunk_raw as usize;
        if chunk_raw == 0 {
            return Ok(self.dc.read_tensor(i, 0, dst)?);
        }
        let (dc, early, throttle) = (self.dc, self.early.as_ref(), self.throttle.as_deref());
        let work = |dst: &mut [u8]| {
            dst.par_chunks_mut(chunk_raw)
                .enumerate()
                .try_for_each(|(c, piece)| {
                    let from = start + (c * chunk_raw) as u64;
                    let range = from..from + piece.len() as u64;
                    if let Some(buf) = early.and_then(|e| e.take(range.clone())) {
                        piece.copy_from_slice(&buf);
                        return Ok(());
                    }
                    let issued = Instant::now();
                    let r = dc.decode_chunk(i, c, piece);
                    if let Some(t) = throttle {
                        t.charge(range, issued);
                    }
                    r.map_err(UserRouteError::from)
                })
        };
        match self.pool {
            Some(p) => p.install(|| work(dst)),
            None => work(dst),
        }
    }

    /// Fills `t` with `nbytes` bytes made by `make` (host memory: in place).
    ///
    /// # Safety
    /// `t` is a live tensor of llama.cpp's model with `nbytes` bytes of storage.
    unsafe fn fill(
        &self,
        t: *mut sys::ggml_tensor,
        nbytes: usize,
        make: impl FnOnce(&mut [u8]) -> Result<(), UserRouteError>,
    ) -> Result<(), UserRouteError> {
        // SAFETY: `t` is live (caller); reading its fields.
        let (buffer, data) = unsafe { ((*t).buffer, (*t).data) };
        // SAFETY: a non-NULL buffer of a live tensor, as ggml_backend_buffer_is_host expects.
        let host =
            !buffer.is_null() && !data.is_null() && unsafe { (self.api.buffer_is_host)(buffer) };
        if host {
            // SAFETY: a host buffer's tensor data is `nbytes` bytes of ordinary memory that
            // nothing else uses while llama.cpp waits for this callback.
            let dst = unsafe { std::slice::from_raw_parts_mut(data.cast::<u8>(), nbytes) };
            make(dst)
        } else {
            let mut staging = vec![0u8; nbytes];
            make(&mut staging)?;
            // SAFETY: `t` is allocated in its (device) buffer with `nbytes` bytes; the source is
            // `nbytes` bytes long.
            unsafe { (self.api.tensor_set)(t, staging.as_ptr().cast(), 0, nbytes) };
            Ok(())
        }
    }

    /// The callback's work for one tensor.
    ///
    /// # Safety
    /// `t` is a live, allocated tensor of the model being loaded.
    unsafe fn set(&mut self, t: *mut sys::ggml_tensor) -> Result<(), UserRouteError> {
        // SAFETY: ggml tensor names are NUL-terminated within their 64 bytes.
        let name = unsafe { CStr::from_ptr((*t).name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        if !self.reads_begun {
            // llama.cpp has parsed the metadata and allocated the tensors, as at the stream's
            // first tensor read: the preload library drops the code it read ahead that the
            // load did not run (else it stays cached to the load's end, where the charge
            // peaks).
            self.reads_begun = true;
            super::hooks::tensor_reads_begin();
        }
        // SAFETY: `t` is live.
        let (nbytes, ty) = unsafe { ((self.api.nbytes)(t), (*t).type_) };
        match self.dc.find_tensor(&name) {
            Some(i) => {
                same_type_and_size(&name, ty, nbytes, &self.dc.original.tensors[i])?;
                // SAFETY: `t` is live with `nbytes` bytes (caller, ggml_nbytes).
                unsafe { self.fill(t, nbytes, |dst| self.decode(i, dst)) }?;
                if Some(i) == self.token_embd {
                    self.token_embd_tensor = Some(t);
                }
                self.decoded += 1;
                self.decoded_bytes += nbytes as u64;
                self.used[i] = true;
                Ok(())
            }
            None => {
                let Some(how) = absent_fill(&name, self.token_embd.is_some(), self.rank_pooling)
                else {
                    self.unsupported = Some(Unsupported::Unfillable(name));
                    return Ok(());
                };
                match how {
                    Fill::Tied => {
                        let te = self.token_embd.expect("Tied needs token_embd");
                        same_type_and_size(&name, ty, nbytes, &self.dc.original.tensors[te])?;
                        // SAFETY: `t` is live; reading its fields.
                        let (buffer, data) = unsafe { ((*t).buffer, (*t).data) };
                        // SAFETY: as in `fill`.
                        let host = !buffer.is_null()
                            && !data.is_null()
                            && unsafe { (self.api.buffer_is_host)(buffer) };
                        if host {
                            self.tied.push(t);
                        } else {
                            // SAFETY: `t` is live with `nbytes` bytes.
                            unsafe { self.fill(t, nbytes, |dst| self.decode(te, dst)) }?;
                        }
                    }
                    Fill::Zeros => {
                        // SAFETY: `t` is live with `nbytes` bytes.
                        unsafe {
                            self.fill(t, nbytes, |dst| {
                                dst.fill(0);
                                Ok(())
                            })
                        }?;
                    }
                    Fill::Ones => {
                        if ty != sys::ggml_type_GGML_TYPE_F32 {
                            self.unsupported = Some(Unsupported::OnesNotF32(name));
                            return Ok(());
                        }
                        // SAFETY: `t` is live with `nbytes` bytes.
                        unsafe {
                            self.fill(t, nbytes, |dst| {
                                for f in dst.chunks_exact_mut(4) {
                                    f.copy_from_slice(&1.0f32.to_ne_bytes());
                                }
                                Ok(())
                            })
                        }?;
                    }
                }
                self.filled.push((name, how));
                Ok(())
            }
        }
    }

    /// After the load: tied outputs in host memory share the embedding's bytes.
    ///
    /// # Safety
    /// The model the recorded tensors belong to is alive.
    unsafe fn finish_tied(&mut self) -> Result<(), UserRouteError> {
        let te = match self.token_embd {
            Some(te) => te,
            None => return Ok(()),
        };
        for t in std::mem::take(&mut self.tied) {
            // SAFETY: `t` and the embedding tensor belong to the live model; both are in host
            // buffers (checked when they were recorded / here) with the same type and size, so
            // ggml's CPU code can read the output's weights at the embedding's address. The
            // output's own bytes stay allocated but untouched (not resident).
            unsafe {
                match self.token_embd_tensor {
                    Some(e)
                        if !(*e).buffer.is_null()
                            && !(*e).data.is_null()
                            && (self.api.buffer_is_host)((*e).buffer)
                            && (*e).type_ == (*t).type_
                            && (self.api.nbytes)(e) == (self.api.nbytes)(t) =>
                    {
                        (*t).data = (*e).data;
                    }
                    _ => {
                        let n = (self.api.nbytes)(t);
                        self.fill(t, n, |dst| self.decode(te, dst))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// llama.cpp's tensor `name` (type id `ty`, `nbytes`) can take the bytes of the file's
/// tensor `info`.
fn same_type_and_size(
    name: &str,
    ty: u32,
    nbytes: usize,
    info: &crate::gguf::TensorInfo,
) -> Result<(), UserRouteError> {
    if info.ty.id() == ty && info.nbytes == nbytes as u64 {
        return Ok(());
    }
    Err(UserRouteError::TensorMismatch {
        name: name.to_string(),
        expected: GgmlType::from_id(ty).map_or("?", |t| t.name()),
        expected_bytes: nbytes,
        found: info.ty.name(),
        found_bytes: info.nbytes,
    })
}

/// The `llama_model_set_tensor_data_t` callback.
unsafe extern "C" fn set_tensor_data(t: *mut sys::ggml_tensor, ud: *mut c_void) {
    if t.is_null() || ud.is_null() {
        return;
    }
    // SAFETY: `ud` is the `&mut LoadState` passed to llama_model_init_from_user, which calls
    // this callback only during that call, on the calling thread, one tensor at a time; no
    // other reference to the state is used meanwhile.
    let st = unsafe { &mut *ud.cast::<LoadState<'_>>() };
    if st.error.is_some() || st.unsupported.is_some() {
        // The model is freed after the load; leave its memory alone.
        return;
    }
    // SAFETY: llama.cpp passes a live, allocated tensor of the model being loaded.
    match catch_unwind(AssertUnwindSafe(|| unsafe { st.set(t) })) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => st.error = Some(e),
        Err(_) => st.error = Some(UserRouteError::Panic),
    }
}

/// A `ggml_tensor` that only describes a type and shape, for `gguf_add_tensor`.
fn describe(name: &str, ty: GgmlType, dims: &[u64]) -> Option<sys::ggml_tensor> {
    // SAFETY: ggml_tensor is plain data (integers, arrays, raw pointers); all-zero is a
    // valid value (ggml itself memsets tensors to zero).
    let mut t: sys::ggml_tensor = unsafe { std::mem::zeroed() };
    if dims.len() > 4 || name.len() >= t.name.len() || ty.block_elems() == 0 {
        return None;
    }
    t.type_ = ty.id();
    for d in 0..4 {
        t.ne[d] = i64::try_from(dims.get(d).copied().unwrap_or(1)).ok()?;
    }
    t.nb[0] = ty.block_bytes() as usize;
    t.nb[1] = t.nb[0] * (t.ne[0] as usize / ty.block_elems() as usize);
    for d in 2..4 {
        t.nb[d] = t.nb[d - 1] * t.ne[d - 1] as usize;
    }
    for (dst, &b) in t.name.iter_mut().zip(name.as_bytes()) {
        *dst = b as c_char;
    }
    Some(t)
}

/// Loads an open DC-GGUF through `llama_model_init_from_user`.
pub fn load_dc_user(
    host: &host::Host,
    dc: &Arc<DcFile>,
    path: &Path,
    params: sys::llama_model_params,
    pool: Option<Arc<rayon::ThreadPool>>,
) -> Result<UserLoad, LlamaError> {
    let _ = host; // resolved (and ABI-checked) by the caller
    let api = api()?;
    let verbose = crate::llama::verbose();
    let arch = dc
        .original
        .get("general.architecture")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let nextn = dc
        .original
        .get(&format!("{arch}.nextn_predict_layers"))
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    if nextn > 0 && !params.load_mtp {
        // Without files, llama.cpp's loader asserts on tensors it skips (GGML_ASSERT(buft),
        // llama-model-loader.cpp): the unused multi-token-prediction layers would abort it.
        return Ok(UserLoad::Unsupported(Unsupported::MtpLayers(nextn)));
    }
    let t0 = Instant::now();
    let throttle = Throttle::new(
        throttle_from_env(),
        if dc.original_size() > 0 {
            dc.stored_size() as f64 / dc.original_size() as f64
        } else {
            1.0
        },
    )
    .map(Arc::new);

    // The original header: metadata and tensor infos, up to the data section.
    let header_len = dc.original.data_offset.min(dc.original_size()) as usize;
    let mut header = vec![0u8; header_len];
    let issued = Instant::now();
    let got = dc.read_at(0, &mut header)?;
    if let Some(t) = &throttle {
        t.charge(0..header_len as u64, issued);
    }
    let failed = |cause: Option<UserRouteError>| LlamaError::UserLoadFailed {
        path: path.display().to_string(),
        cause,
    };
    if got != header_len {
        return Err(failed(Some(UserRouteError::ShortHeader)));
    }
    let gp = sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: `header` is `header_len` readable bytes for the whole call; with ctx = NULL gguf
    // only parses (no data section is read) and copies what it keeps.
    let ctx = unsafe { (api.gguf_init_from_buffer)(header.as_ptr().cast(), header_len, gp) };
    if ctx.is_null() {
        return Err(failed(Some(UserRouteError::HeaderRefused)));
    }
    let gguf = Gguf { api, ctx };
    drop(header);

    let token_embd = dc.find_tensor("token_embd.weight");
    if let Some(te) = token_embd
        && dc.find_tensor("output.weight").is_none()
    {
        // Tied output: llama.cpp creates "output.weight" anyway; listing it with the
        // embedding's type makes it create it with that type instead of F32.
        let info = &dc.original.tensors[te];
        let desc = describe("output.weight", info.ty, &info.dims)
            .ok_or_else(|| failed(Some(UserRouteError::Describe("output.weight".into()))))?;
        // SAFETY: `gguf.ctx` is live; the name is not in it (checked on the DC side, and
        // gguf_find_tensor below), and `desc` is a complete tensor description that gguf
        // copies.
        unsafe {
            if (api.gguf_find_tensor)(gguf.ctx, c"output.weight".as_ptr()) < 0 {
                (api.gguf_add_tensor)(gguf.ctx, &desc);
            }
        }
    }
    // LLAMA_POOLING_TYPE_RANK = 4.
    let rank_pooling = dc
        .original
        .get(&format!("{arch}.pooling_type"))
        .and_then(|v| v.as_u64())
        == Some(4);

    dc.set_release_after_decode(true);
    dc.set_uncache_after_decode(true);
    // As on the stream route: decode in file order on a spare core while llama.cpp parses the
    // metadata and builds the vocabulary; the callback then copies those chunks.
    let early = (!super::reads_only_metadata(&params)
        && std::env::var_os("DCGGUF_EARLY_DECODE").is_none_or(|v| v != "0"))
    .then(|| EarlyDecode::start(dc.clone(), throttle.clone(), Limits::default(), &[]));
    let mut st = LoadState {
        dc: dc.as_ref(),
        api,
        pool: pool.as_deref(),
        throttle,
        early,
        token_embd,
        rank_pooling,
        token_embd_tensor: None,
        tied: Vec::new(),
        decoded: 0,
        decoded_bytes: 0,
        used: vec![false; dc.tensor_count()],
        filled: Vec::new(),
        error: None,
        unsupported: None,
        reads_begun: false,
    };
    // SAFETY: `gguf.ctx` is a live gguf context that outlives the call; the callback and its
    // user data (`st`, borrowed mutably for the call and not touched otherwise) are valid for
    // the whole call, which is the only time llama.cpp uses them.
    let model = unsafe {
        (api.init_from_user)(
            gguf.ctx,
            Some(set_tensor_data),
            (&raw mut st).cast(),
            params,
        )
    };
    drop(gguf);
    drop(st.early.take());
    dc.release_mapped_pages();
    super::finish_uncache(dc, &params);
    if model.is_null() {
        return Err(failed(st.error.take()));
    }
    if st.error.is_none() && st.unsupported.is_none() {
        // SAFETY: `model`, which owns the recorded tensors, is alive.
        if let Err(e) = unsafe { st.finish_tied() } {
            st.error = Some(e);
        }
    }
    if !super::reads_only_metadata(&params) && st.error.is_none() && st.unsupported.is_none() {
        let unused: Vec<&str> = st
            .used
            .iter()
            .enumerate()
            .filter(|(_, u)| !**u)
            .map(|(i, _)| dc.original.tensors[i].name.as_str())
            .collect();
        if !unused.is_empty() {
            // llama.cpp's file loader refuses such a file ("wrong number of tensors"); this
            // route cannot tell, so at least say so.
            crate::log_line!(
                "dcgguf: warning: {}: llama.cpp did not ask for {} tensors of the file: {}",
                path.display(),
                unused.len(),
                unused
                    .iter()
                    .take(8)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let outcome = match (st.error.take(), st.unsupported.take()) {
        (Some(e), _) => Err(failed(Some(e))),
        (None, Some(why)) => Ok(UserLoad::Unsupported(why)),
        (None, None) => Ok(UserLoad::Loaded(model)),
    };
    if !matches!(outcome, Ok(UserLoad::Loaded(_))) {
        // SAFETY: the model llama.cpp just returned, not handed to anyone.
        unsafe { (api.model_free)(model) };
    } else if verbose {
        let filled: Vec<String> = {
            let mut names: Vec<String> = st
                .filled
                .iter()
                .map(|(n, f)| {
                    let short = n
                        .split('.')
                        .skip_while(|p| p.parse::<u32>().is_ok() || *p == "blk");
                    format!("{} ({f:?})", short.collect::<Vec<_>>().join("."))
                })
                .collect();
            names.sort();
            names.dedup();
            names
        };
        if params.no_alloc {
            crate::log_line!("dcgguf: user route: sizes only (no_alloc), no tensor data");
        } else {
            crate::log_line!(
                "dcgguf: user route: decoded {} tensors ({} bytes) in {:.3} s; {} absent tensors \
             llama.cpp created were filled: {}",
                st.decoded,
                st.decoded_bytes,
                t0.elapsed().as_secs_f64(),
                st.filled.len(),
                if filled.is_empty() {
                    "none".to_string()
                } else {
                    filled.join(", ")
                }
            );
        }
    }
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe { libc::malloc_trim(0) };
    if verbose && !params.no_alloc {
        crate::log_line!("dcgguf: loaded; process {}", crate::io::rss_report());
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_tensors_are_filled_only_when_neutral() {
        assert_eq!(absent_fill("output.weight", true, false), Some(Fill::Tied));
        assert_eq!(absent_fill("output.weight", false, false), None);
        assert_eq!(
            absent_fill("blk.3.attn_q.bias", true, false),
            Some(Fill::Zeros)
        );
        assert_eq!(
            absent_fill("rope_freqs.weight", true, false),
            Some(Fill::Ones)
        );
        assert_eq!(
            absent_fill("blk.0.attn_q.scale", true, false),
            Some(Fill::Ones)
        );
        assert_eq!(
            absent_fill("blk.0.ffn_up.input_scale", true, false),
            Some(Fill::Ones)
        );
        assert_eq!(absent_fill("cls.weight", true, false), Some(Fill::Zeros));
        assert_eq!(absent_fill("cls.output.weight", true, true), None);
        assert_eq!(
            absent_fill("cls.output.weight", true, false),
            Some(Fill::Zeros)
        );
        assert_eq!(absent_fill("blk.0.attn_q_norm.weight", true, false), None);
    }

    #[test]
    fn described_tensor_has_ggml_strides() {
        let q8 = GgmlType::from_name("q8_0").expect("q8_0");
        let t = describe("output.weight", q8, &[576, 49152]).expect("describable");
        assert_eq!(t.ne, [576, 49152, 1, 1]);
        assert_eq!(t.nb[0], 34);
        assert_eq!(t.nb[1], 34 * 18);
        assert_eq!(t.nb[2], 34 * 18 * 49152);
        assert_eq!(t.nb[3], t.nb[2]);
        // SAFETY: the name was written NUL-terminated into a zeroed array.
        let name = unsafe { CStr::from_ptr(t.name.as_ptr()) };
        assert_eq!(name, c"output.weight");
    }
}
