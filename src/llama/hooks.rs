//! What dcgguf does around llama.cpp's own entry points: the bodies of the interposers in
//! `libdcgguf_preload.so` (crate `preload/`) and of the explicit C API
//! (`dcgguf_llama_model_load`, `dcgguf_llama_init_from_model`, `dcgguf_llama_free`,
//! `dcgguf_llama_model_free`, see `ffi::hook`).
//!
//! libdcgguf itself exports no libc or llama.cpp symbol; only the preload library does, and
//! it tells this crate (its own statically linked copy) where its interposers are with
//! [`register_interposers`], from a load-time constructor. Two things follow from that
//! address: the host lookups skip the interposer (so "the real `fread`" is never ourselves),
//! and [`budget_hooks_active`] can tell whether this process calls our `fread` and
//! `llama_init_from_model`, which the memory budget needs.
//!
//! Functions in section `.text.hot.dcgguf` (here, the graph callbacks in
//! `budget::graph_hook`, `refit::Watch::residency`, `fread::fread_ours`) run on every
//! compute, or on every host `fread` and `fseek`: the preload library links them into one
//! section of a few pages, which it keeps cached while it gives the rest of its code back
//! to the page cache (src/ffi/shed.rs). What they call on that path must be inlined or
//! in that section too.

// These are the bodies of C entry points (as in the ffi layer): the pointers come from the C
// caller and go to llama.cpp unchanged, under llama.h's contracts, which C callers cannot
// see as `unsafe`.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::ffi::{CStr, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use super::sys;

pub type LoadFromFileFn = super::host::LoadFromFileFn;
pub type InitFromModelFn = unsafe extern "C" fn(
    *mut sys::llama_model,
    sys::llama_context_params,
) -> *mut sys::llama_context;
pub type FreeContextFn = unsafe extern "C" fn(*mut sys::llama_context);
pub type FreeModelFn = unsafe extern "C" fn(*mut sys::llama_model);
pub type FreadFn = unsafe extern "C" fn(*mut c_void, usize, usize, *mut libc::FILE) -> usize;
pub type FseekoFn = unsafe extern "C" fn(*mut libc::FILE, i64, libc::c_int) -> libc::c_int;

/// Addresses of the preload library's exported interposers (0: not interposed).
#[derive(Clone, Copy, Debug, Default)]
pub struct Interposers {
    pub load_from_file: usize,
    pub init_from_model: usize,
    pub new_context_with_model: usize,
    pub free: usize,
    pub model_free: usize,
    pub fread: usize,
    pub decode: usize,
    pub encode: usize,
    pub process: usize,
    pub posix_memalign: usize,
    pub tensor_set: usize,
    pub buffer_clear: usize,
}

static INTERPOSERS: OnceLock<Interposers> = OnceLock::new();

/// Records where the preload library's interposers are (first call wins). Called by
/// libdcgguf_preload.so when it is loaded; libdcgguf never calls it.
pub fn register_interposers(i: Interposers) {
    let _ = INTERPOSERS.set(i);
}

/// The registered interposers, or all zero (plain libdcgguf, or the rlib in a Rust program).
pub fn interposers() -> Interposers {
    INTERPOSERS.get().copied().unwrap_or_default()
}

/// Runs when a DC load's tensor reads begin (llama.cpp has parsed the metadata: the stream's
/// first tensor read, or the `llama_model_init_from_user` route's first tensor callback), if
/// the shared object we are linked into registered it ([`on_tensor_reads_begin`]): it drops the
/// code it read ahead for the load that the load has not run by then.
static TENSOR_READS_BEGIN: OnceLock<fn()> = OnceLock::new();

/// Registers `f` to run when each DC load's tensor reads begin (first call wins): the shared
/// object's own page shedding (src/ffi/shed.rs, `prepare`).
pub fn on_tensor_reads_begin(f: fn()) {
    let _ = TENSOR_READS_BEGIN.set(f);
}

/// A DC load's tensor reads begin: runs what [`on_tensor_reads_begin`] registered.
pub(crate) fn tensor_reads_begin() {
    if let Some(f) = TENSOR_READS_BEGIN.get() {
        f();
    }
}

/// Address of our own `llama_model_load_from_file` interposer (0 if none), which the host
/// lookup must skip.
pub fn interposer_address() -> usize {
    interposers().load_from_file
}

/// Whether this process calls our `llama_init_from_model` (so budgeted contexts get our graph
/// callback) and our `fread` (so loads learn where each tensor goes and can skip deferred
/// ones): only when libdcgguf_preload.so is loaded with `LD_PRELOAD`.
pub fn budget_hooks_active() -> Result<(), HooksInactive> {
    let i = interposers();
    let resolves_to_us = |name: &CStr, ours: usize| {
        // SAFETY: dlsym with RTLD_DEFAULT and a C string.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) } as usize;
        ours != 0 && p == ours
    };
    for (name, ours) in [
        (c"llama_init_from_model", i.init_from_model),
        (c"fread", i.fread),
    ] {
        if !resolves_to_us(name, ours) {
            return Err(HooksInactive {
                symbol: name.to_str().unwrap_or("?"),
            });
        }
    }
    Ok(())
}

/// The memory budget's hooks are not the ones this process calls.
#[derive(Debug, thiserror::Error)]
#[error(
    "a memory budget needs libdcgguf_preload.so's {symbol} to be the one this process calls \
     (run with LD_PRELOAD=libdcgguf_preload.so)"
)]
pub struct HooksInactive {
    pub symbol: &'static str,
}

/// A lazily resolved real function.
struct Real(OnceLock<Option<usize>>);

impl Real {
    const fn new() -> Real {
        Real(OnceLock::new())
    }
    /// The host's `name`, skipping `ours`, resolved once.
    fn get(&self, name: &CStr, ours: usize) -> Option<usize> {
        *self
            .0
            .get_or_init(|| super::host::real_function(name, ours))
    }
}

static REAL_INIT: Real = Real::new();
static REAL_NEW_CONTEXT: Real = Real::new();
static REAL_FREE: Real = Real::new();
static REAL_MODEL_FREE: Real = Real::new();
static REAL_FREAD: Real = Real::new();
static REAL_DECODE: Real = Real::new();
static REAL_ENCODE: Real = Real::new();
static REAL_PROCESS: Real = Real::new();
static REAL_POSIX_MEMALIGN: Real = Real::new();
static REAL_FSEEKO: Real = Real::new();
static REAL_FSEEK: Real = Real::new();
static REAL_TENSOR_SET: Real = Real::new();
static REAL_BUFFER_CLEAR: Real = Real::new();
static BUFFER_SIZE: Real = Real::new();
static BUFFER_IS_HOST: Real = Real::new();

/// The host's `llama_init_from_model` (or, with `deprecated`, `llama_new_context_with_model`),
/// skipping `ours` (the caller's own export of that name, 0 if none); `Err(name)` when this
/// process has none.
pub fn real_context_init(deprecated: bool, ours: usize) -> Result<InitFromModelFn, &'static CStr> {
    let (name, slot) = if deprecated {
        (c"llama_new_context_with_model", &REAL_NEW_CONTEXT)
    } else {
        (c"llama_init_from_model", &REAL_INIT)
    };
    let real = slot.get(name, ours).ok_or(name)?;
    // SAFETY: the address is llama.cpp's function of this name, whose C signature
    // InitFromModelFn states (llama.h at the pinned commit).
    Ok(unsafe { std::mem::transmute::<usize, InitFromModelFn>(real) })
}

/// `llama_free`, then frees dcgguf's per-context state. `ours` as in [`init_context`].
pub fn context_freed(ctx: *mut sys::llama_context, ours: usize) {
    if let Some(real) = REAL_FREE.get(c"llama_free", ours) {
        // SAFETY: llama.cpp's llama_free (signature FreeContextFn, llama.h), with the
        // caller's argument.
        unsafe { std::mem::transmute::<usize, FreeContextFn>(real)(ctx) };
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        crate::llama::budget::graph_hook::context_freed(ctx);
        crate::llama::budget::refit::forget_context(ctx);
    }));
}

/// Stops and forgets the model's budget state, then `llama_model_free`. `ours` as in
/// [`init_context`].
pub fn model_freed(model: *mut sys::llama_model, ours: usize) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        crate::llama::budget::unregister_model(model);
        crate::llama::budget::refit::forget_model(model);
    }));
    if let Some(real) = REAL_MODEL_FREE.get(c"llama_model_free", ours) {
        // SAFETY: llama.cpp's llama_model_free (signature FreeModelFn, llama.h), with the
        // caller's argument.
        unsafe { std::mem::transmute::<usize, FreeModelFn>(real)(model) };
    }
}

/// `struct llama_batch` of llama.h at the pinned commit (passed by value to `llama_decode`
/// and `llama_encode`; not in the generated bindings, which need only its pointer users).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LlamaBatch {
    pub n_tokens: i32,
    pub token: *mut i32,
    pub embd: *mut f32,
    pub pos: *mut i32,
    pub n_seq_id: *mut i32,
    pub seq_id: *mut *mut i32,
    pub logits: *mut i8,
}

pub type ComputeFn = unsafe extern "C" fn(*mut sys::llama_context, LlamaBatch) -> i32;
pub type ProcessFn = unsafe extern "C" fn(*mut sys::llama_context, libc::c_int, *mut c_void) -> i32;

/// The call a compute interposer forwards.
#[derive(Clone, Copy, Debug)]
pub enum Compute {
    Decode(LlamaBatch),
    Encode(LlamaBatch),
    /// `llama_process(ctx, type, struct llama_batch_ext *)`.
    Process(libc::c_int, *mut c_void),
}

thread_local! {
    /// This thread is inside `llama_decode` / `llama_encode` / `llama_process`.
    static IN_COMPUTE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The context this thread computes in now, and the tokens of its batch where known
    /// (`llama_decode` / `llama_encode`; `llama_process`'s batch is opaque).
    static BATCH: std::cell::Cell<Option<(usize, Option<u64>)>> =
        const { std::cell::Cell::new(None) };
    /// This thread is inside a memory check or notes a buffer ([`allocation_check`]), which
    /// may allocate.
    static IN_ALLOCATION_CHECK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// This thread creates a context whose big buffers are noted ([`noting_buffers`]).
    static NOTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The buffers noted so far: address and size.
    static NOTED: std::cell::RefCell<Vec<(usize, usize)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` (a context's creation) and returns it with the buffers of at least
/// [`crate::llama::budget::refit::CHECKED_ALLOCATION`] bytes that ggml allocated meanwhile
/// on this thread through the interposed `posix_memalign` (none without the preload).
pub fn noting_buffers<T>(f: impl FnOnce() -> T) -> (T, Vec<(usize, usize)>) {
    let outer = NOTING.with(|c| c.replace(true));
    let before = NOTED.with(|n| n.borrow().len());
    let r = f();
    NOTING.with(|c| c.set(outer));
    let noted = NOTED.with(|n| n.borrow_mut().split_off(before));
    (r, noted)
}

/// Notes a buffer for [`noting_buffers`]; cold: only while a context is created.
#[cold]
fn note_buffer(at: usize, size: usize) {
    allocation_check(|| NOTED.with(|n| n.borrow_mut().push((at, size))));
}

/// Runs `f` (a memory check, or noting a buffer) unless this thread is inside one already:
/// what `f` allocates comes back through the interposed `posix_memalign`. A panic in it
/// stops there.
#[cold]
fn allocation_check(f: impl FnOnce()) {
    if !IN_ALLOCATION_CHECK.with(|c| c.replace(true)) {
        let _ = catch_unwind(AssertUnwindSafe(f));
        IN_ALLOCATION_CHECK.with(|c| c.set(false));
    }
}

/// The body of the `llama_decode`, `llama_encode` and `llama_process` interposers: the real
/// function (found skipping `ours`), with the buffers it allocates checked by
/// [`posix_memalign_or_real`]. Returns -1 (llama.cpp's "error") when this process has none.
#[unsafe(link_section = ".text.hot.dcgguf")]
pub fn compute(ctx: *mut sys::llama_context, call: Compute, ours: usize) -> i32 {
    let (name, slot) = match call {
        Compute::Decode(_) => (c"llama_decode", &REAL_DECODE),
        Compute::Encode(_) => (c"llama_encode", &REAL_ENCODE),
        Compute::Process(..) => (c"llama_process", &REAL_PROCESS),
    };
    let Some(real) = slot.get(name, ours) else {
        return -1;
    };
    let outer = IN_COMPUTE.with(|c| c.replace(true));
    let tokens = match call {
        Compute::Decode(b) | Compute::Encode(b) => u64::try_from(b.n_tokens).ok(),
        Compute::Process(..) => None,
    };
    let outer_batch = BATCH.with(|c| c.replace(Some((ctx as usize, tokens))));
    let r = match call {
        // SAFETY: llama.cpp's llama_decode / llama_encode (signature ComputeFn, llama.h),
        // with the caller's arguments.
        Compute::Decode(b) | Compute::Encode(b) => unsafe {
            std::mem::transmute::<usize, ComputeFn>(real)(ctx, b)
        },
        // SAFETY: llama.cpp's llama_process (signature ProcessFn: an enum is an int in the
        // C ABI), with the caller's arguments.
        Compute::Process(ty, batch) => unsafe {
            std::mem::transmute::<usize, ProcessFn>(real)(ctx, ty, batch)
        },
    };
    IN_COMPUTE.with(|c| c.set(outer));
    BATCH.with(|c| c.set(outer_batch));
    crate::llama::budget::refit::after_compute();
    r
}

/// The context this thread computes in now (inside `llama_decode`, `llama_encode` or
/// `llama_process`), and its batch's tokens where the call says.
pub fn current_batch() -> Option<(*mut sys::llama_context, Option<u64>)> {
    BATCH
        .with(|c| c.get())
        .map(|(ctx, tokens)| (ctx as *mut sys::llama_context, tokens))
}

/// Whether this thread is inside `llama_decode`, `llama_encode` or `llama_process`
/// ([`compute`]).
#[unsafe(link_section = ".text.hot.dcgguf")]
pub fn in_compute() -> bool {
    IN_COMPUTE.with(|c| c.get())
}

pub type PosixMemalignFn = unsafe extern "C" fn(*mut *mut c_void, usize, usize) -> libc::c_int;

/// The body of the `posix_memalign` interposer (ggml allocates its buffers with it): a big
/// allocation inside a compute call ([`compute`]) first lets a model the default loaded
/// without a budget check that it fits
/// ([`crate::llama::budget::refit::before_allocation`]); then the C library's function
/// (found skipping `ours`).
///
/// # Safety
/// The contract of `posix_memalign(3)`.
#[unsafe(link_section = ".text.hot.dcgguf")]
pub unsafe fn posix_memalign_or_real(
    out: *mut *mut c_void,
    align: usize,
    size: usize,
    ours: usize,
) -> libc::c_int {
    if size >= crate::llama::budget::refit::CHECKED_ALLOCATION && IN_COMPUTE.with(|c| c.get()) {
        allocation_check(|| crate::llama::budget::refit::before_allocation(size));
    }
    let r = match REAL_POSIX_MEMALIGN.get(c"posix_memalign", ours) {
        // SAFETY: the C library's posix_memalign (signature PosixMemalignFn, stdlib.h) with
        // the caller's arguments.
        Some(real) => unsafe {
            std::mem::transmute::<usize, PosixMemalignFn>(real)(out, align, size)
        },
        None => libc::ENOMEM,
    };
    if r == 0 && size >= crate::llama::budget::refit::CHECKED_ALLOCATION && NOTING.with(|c| c.get())
    {
        // SAFETY: posix_memalign succeeded, so it wrote the buffer's address to `out`.
        note_buffer(unsafe { *out } as usize, size);
    }
    r
}

/// The body of an `fread` interposer: our decompressing streams are read straight into the
/// caller's memory (see [`super::fread`]); every other stream goes to the C library's
/// `fread` (found skipping `ours`, the interposer itself).
///
/// # Safety
/// The contract of `fread(3)`.
#[unsafe(link_section = ".text.hot.dcgguf")]
pub unsafe fn fread_or_real(
    ptr: *mut c_void,
    size: usize,
    n: usize,
    fp: *mut libc::FILE,
    ours: usize,
) -> usize {
    // SAFETY: the caller's fread arguments, passed through.
    if let Some(done) = unsafe { super::fread::fread_ours(ptr, size, n, fp) } {
        return done;
    }
    match REAL_FREAD.get(c"fread", ours) {
        // SAFETY: the C library's fread (signature FreadFn, stdio.h) with the caller's
        // arguments.
        Some(real) => unsafe { std::mem::transmute::<usize, FreadFn>(real)(ptr, size, n, fp) },
        None => 0,
    }
}

/// The body of the `fseeko` and `fseek` interposers (`name`: which one; `off_t` and `long`
/// are both 64 bits on the targets the preload library is built for): our streams seek
/// without glibc's refill read (see [`super::fread::fseek_ours`]); every other stream goes
/// to the C library's function of that name (found skipping `ours`).
///
/// # Safety
/// The contract of `fseeko(3)`.
#[unsafe(link_section = ".text.hot.dcgguf")]
pub unsafe fn fseek_or_real(
    fp: *mut libc::FILE,
    offset: i64,
    whence: libc::c_int,
    name: &CStr,
    ours: usize,
) -> libc::c_int {
    // SAFETY: the caller's arguments, passed through.
    if let Some(r) = unsafe { super::fread::fseek_ours(fp, offset, whence) } {
        return r;
    }
    let slot = if name == c"fseek" {
        &REAL_FSEEK
    } else {
        &REAL_FSEEKO
    };
    match slot.get(name, ours) {
        // SAFETY: the C library's fseeko/fseek (signature FseekoFn on LP64 targets, where
        // off_t and long are i64) with the caller's arguments.
        Some(real) => unsafe { std::mem::transmute::<usize, FseekoFn>(real)(fp, offset, whence) },
        None => {
            // SAFETY: this thread's errno slot.
            unsafe { *libc::__errno_location() = libc::ENOSYS };
            -1
        }
    }
}

/// `ggml_backend_buffer_clear(ggml_backend_buffer_t, uint8_t)` (ggml-backend.h).
pub type BufferClearFn = unsafe extern "C" fn(*mut c_void, u8);
/// `ggml_backend_buffer_get_size(ggml_backend_buffer_t)` (ggml-backend.h).
type BufferSizeFn = unsafe extern "C" fn(*mut c_void) -> usize;
/// `ggml_backend_buffer_is_host(ggml_backend_buffer_t)` (ggml-backend.h).
type BufferIsHostFn = unsafe extern "C" fn(*mut c_void) -> bool;

/// The body of the `ggml_backend_buffer_clear` interposer: while a context whose buffers are
/// noted is created ([`noting_buffers`]: a model the default loaded may still move weights
/// or switch), a host buffer of [`crate::llama::budget::refit::CHECKED_ALLOCATION`] bytes or
/// more about to be cleared is first checked to fit next to the weights
/// ([`crate::llama::budget::refit::before_allocation`]); then ggml's function (found skipping
/// `ours`). llama.cpp clears its KV cache as it creates it: every page is written, and
/// charged to the limit, there, not at a batch. SmolLM2 under llama-completion `-c 1024` and
/// a 133 MiB cap: the default, with 2 MiB to spare at the load, was killed by its 24 MiB KV
/// cache where plain mmap ran (session 64). Elsewhere (a batch growing its output buffer,
/// already checked as it was allocated; a cache cleared again, whose pages were charged
/// already) nothing is checked.
///
/// # Safety
/// The contract of `ggml_backend_buffer_clear`: a live buffer.
pub unsafe fn buffer_clear_or_real(buffer: *mut c_void, value: u8, ours: usize) {
    if NOTING.with(|c| c.get()) && !IN_COMPUTE.with(|c| c.get()) {
        allocation_check(|| {
            let (Some(size), Some(is_host)) = (
                BUFFER_SIZE.get(c"ggml_backend_buffer_get_size", 0),
                BUFFER_IS_HOST.get(c"ggml_backend_buffer_is_host", 0),
            ) else {
                return;
            };
            // SAFETY: ggml's functions of these names (signatures BufferSizeFn and
            // BufferIsHostFn, ggml-backend.h) on the caller's live buffer.
            let (size, host) = unsafe {
                (
                    std::mem::transmute::<usize, BufferSizeFn>(size)(buffer),
                    std::mem::transmute::<usize, BufferIsHostFn>(is_host)(buffer),
                )
            };
            if host {
                crate::llama::budget::refit::before_allocation(size);
            }
        });
    }
    if let Some(real) = REAL_BUFFER_CLEAR.get(c"ggml_backend_buffer_clear", ours) {
        // SAFETY: ggml's ggml_backend_buffer_clear (signature BufferClearFn) with the caller's
        // arguments.
        unsafe { std::mem::transmute::<usize, BufferClearFn>(real)(buffer, value) };
    }
}

pub type TensorSetFn = unsafe extern "C" fn(*mut sys::ggml_tensor, *const c_void, usize, usize);

/// The body of the `ggml_backend_tensor_set` interposer: ggml's function (found skipping
/// `ours`); then, where a load that moves its weights to a file staged a tensor's bytes in
/// a buffer of its own (a repacked tensor), the tensor's memory moves instead
/// ([`crate::llama::budget::spill::staged`]). Elsewhere (each batch sets its inputs) one
/// atomic read ([`crate::llama::budget::spill::awaits_staging`]).
///
/// # Safety
/// The contract of `ggml_backend_tensor_set`: a live tensor, `size` bytes readable at
/// `data`, `[offset, offset + size)` inside the tensor.
#[unsafe(link_section = ".text.hot.dcgguf")]
pub unsafe fn tensor_set_or_real(
    tensor: *mut sys::ggml_tensor,
    data: *const c_void,
    offset: usize,
    size: usize,
    ours: usize,
) {
    let Some(real) = REAL_TENSOR_SET.get(c"ggml_backend_tensor_set", ours) else {
        // No ggml in the process, so no tensor: nothing to set.
        return;
    };
    // SAFETY: ggml's ggml_backend_tensor_set (signature TensorSetFn, ggml-backend.h) with
    // the caller's arguments.
    unsafe { std::mem::transmute::<usize, TensorSetFn>(real)(tensor, data, offset, size) };
    if crate::llama::budget::spill::awaits_staging(data as usize) {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: a live tensor (the caller's), just written whole when its memory is
            // returned: the whole tensor (offset 0, its size), in a CPU buffer that ggml does
            // not write again, freed by llama.cpp with free() or munmap, touched by no other
            // thread while the load runs on this one.
            unsafe {
                let dest = crate::llama::budget::refit::spillable_memory(tensor)
                    .filter(|&(_, len)| offset == 0 && len == size);
                crate::llama::budget::spill::staged(data as usize, dest)
            }
        }));
    }
}
