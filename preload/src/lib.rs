//! libdcgguf_preload.so: lets stock llama.cpp tools load DC-GGUF files.
//!
//!     LD_PRELOAD=libdcgguf_preload.so llama-completion -m model.dc.gguf ...
//!
//! It exports fourteen symbols that shadow the C library's and llama.cpp's own, which is why they
//! live here and not in libdcgguf.so (a program that links libdcgguf to read DC files keeps
//! its own `fread`):
//!
//! - `llama_model_load_from_file`: DC-GGUF files load through dcgguf's decompressing
//!   `FILE *`, everything else goes to the real function unchanged;
//! - `llama_init_from_model`, `llama_new_context_with_model`: contexts of models loaded under
//!   a memory budget (`DCGGUF_MEM_BUDGET`), or that may switch to one, get dcgguf's graph
//!   callback, chained with the caller's;
//! - `llama_free`, `llama_model_free`: free dcgguf's state for the context / model;
//! - `llama_decode`, `llama_encode`, `llama_process`, `posix_memalign`: while a batch is
//!   computed, a buffer of 1 MiB or more that ggml allocates for it is first checked to fit
//!   next to the weights of a model the default loaded without a budget, which switches to
//!   a budget if not (an output buffer of 241 MiB is cleared as soon as it is allocated);
//! - `ggml_backend_buffer_clear`: the same check for a buffer that llama.cpp writes whole as
//!   it creates a context (the KV cache, cleared at once), before it is written;
//! - `ggml_backend_tensor_set`: a load that moves its decoded weights to a file (too little
//!   memory for them) moves a repacked tensor's memory once ggml has converted it;
//! - `fread`: reads on dcgguf's own streams go straight into the caller's memory (and tell a
//!   memory budget where each tensor lives); every other stream goes to the C library;
//! - `fseeko`, `fseek`: seeks on dcgguf's own streams move without glibc's buffer refill
//!   (which would decode the bytes before each tensor only to drop them); every other stream
//!   goes to the C library.
//!
//! The work is done by `dcgguf::llama::hooks`; each interposer passes its own address so
//! that the lookup of the real function skips it. Being a Rust cdylib, this library also
//! re-exports the `dcgguf_*` C API of the dcgguf crate it links statically: a program that
//! links libdcgguf.so and runs under this preload calls this library's copy throughout.

use std::ffi::{c_char, c_void};

use dcgguf::llama::hooks::{self, Interposers};
use dcgguf::llama::sys;

use dcgguf::ffi::shed;

/// This library's allocations stay out of the host's heap (big buffers mapped apart, small
/// ones in a dlmalloc of our own), so that a load leaves no holes in it for the host's later
/// `calloc`s to clear (dcgguf::io::OwnMappings).
#[global_allocator]
static OWN_MAPPINGS: dcgguf::io::OwnMappings = dcgguf::io::OwnMappings;

/// Tells the dcgguf crate where our interposers are, before anything else runs
/// (a constructor of this shared object, run by the dynamic loader).
extern "C" fn register() {
    shed::prepare();
    hooks::register_interposers(Interposers {
        load_from_file: llama_model_load_from_file as *const () as usize,
        init_from_model: llama_init_from_model as *const () as usize,
        new_context_with_model: llama_new_context_with_model as *const () as usize,
        free: llama_free as *const () as usize,
        model_free: llama_model_free as *const () as usize,
        fread: fread as *const () as usize,
        decode: llama_decode as *const () as usize,
        encode: llama_encode as *const () as usize,
        process: llama_process as *const () as usize,
        posix_memalign: posix_memalign as *const () as usize,
        tensor_set: ggml_backend_tensor_set as *const () as usize,
        buffer_clear: ggml_backend_buffer_clear as *const () as usize,
    });
}

#[used]
#[unsafe(link_section = ".init_array")]
static REGISTER: extern "C" fn() = register;

/// Interposes llama.cpp's `llama_model_load_from_file`.
#[unsafe(no_mangle)]
pub extern "C" fn llama_model_load_from_file(
    path: *const c_char,
    params: sys::llama_model_params,
) -> *mut sys::llama_model {
    shed::before_load();
    let model = dcgguf::ffi::hook::load_model_hooked(
        path,
        params,
        llama_model_load_from_file as *const () as usize,
    );
    // Also after a load that reads only the metadata (llama.cpp's fitting pass), although
    // the full load after it then reads back from the disk the code they both run (MiniLM
    // BF16: 47 major faults, about 10 ms): kept mapped instead, that code was still there at
    // the full load, within 0.7 MiB of SmolLM2's peak, which then reached plain mmap's in 2
    // of 10 interleaved rounds (138.9-140.0 MiB; giving back 139.0-139.6; plain 139.7-140.0).
    // Again on 2026-12-02 (Intel Xeon VM, memcap bench, five runs each): giving back only
    // once the full load's context was made, SmolLM2's uncapped peak 141.3 MiB against 140.6
    // (plain mmap 141.6-141.7), for 12 fewer major faults a run, about 1 ms on that disk.
    shed::after_load(dcgguf::llama::budget::compute_decoding(model));
    model
}

/// Interposes `llama_init_from_model`.
#[unsafe(no_mangle)]
pub extern "C" fn llama_init_from_model(
    model: *mut sys::llama_model,
    params: sys::llama_context_params,
) -> *mut sys::llama_context {
    dcgguf::ffi::hook::init_context(
        model,
        params,
        false,
        llama_init_from_model as *const () as usize,
    )
}

/// Interposes the deprecated `llama_new_context_with_model` the same way.
#[unsafe(no_mangle)]
pub extern "C" fn llama_new_context_with_model(
    model: *mut sys::llama_model,
    params: sys::llama_context_params,
) -> *mut sys::llama_context {
    dcgguf::ffi::hook::init_context(
        model,
        params,
        true,
        llama_new_context_with_model as *const () as usize,
    )
}

/// Interposes `llama_free`.
#[unsafe(no_mangle)]
pub extern "C" fn llama_free(ctx: *mut sys::llama_context) {
    hooks::context_freed(ctx, llama_free as *const () as usize)
}

/// Interposes `llama_model_free`.
#[unsafe(no_mangle)]
pub extern "C" fn llama_model_free(model: *mut sys::llama_model) {
    hooks::model_freed(model, llama_model_free as *const () as usize)
}

/// Interposes `llama_decode`.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.hot.dcgguf")]
pub extern "C" fn llama_decode(ctx: *mut sys::llama_context, batch: hooks::LlamaBatch) -> i32 {
    let ours = llama_decode as *const () as usize;
    let r = hooks::compute(ctx, hooks::Compute::Decode(batch), ours);
    shed::after_compute();
    r
}

/// Interposes `llama_encode`.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.hot.dcgguf")]
pub extern "C" fn llama_encode(ctx: *mut sys::llama_context, batch: hooks::LlamaBatch) -> i32 {
    let ours = llama_encode as *const () as usize;
    let r = hooks::compute(ctx, hooks::Compute::Encode(batch), ours);
    shed::after_compute();
    r
}

/// Interposes `llama_process` (what llama.cpp's own tools call).
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.hot.dcgguf")]
pub extern "C" fn llama_process(
    ctx: *mut sys::llama_context,
    ty: libc::c_int,
    batch: *mut c_void,
) -> i32 {
    let ours = llama_process as *const () as usize;
    let r = hooks::compute(ctx, hooks::Compute::Process(ty, batch), ours);
    shed::after_compute();
    r
}

/// Interposes the C library's `posix_memalign` (ggml's buffers).
///
/// # Safety
/// The contract of `posix_memalign(3)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.hot.dcgguf")]
pub unsafe extern "C" fn posix_memalign(
    out: *mut *mut c_void,
    align: usize,
    size: usize,
) -> libc::c_int {
    let ours = posix_memalign as *const () as usize;
    // SAFETY: the caller's arguments, passed through under posix_memalign's own contract.
    let r = unsafe { hooks::posix_memalign_or_real(out, align, size, ours) };
    shed::after_allocation(size);
    r
}

/// Interposes ggml's `ggml_backend_tensor_set` (llama.cpp's load hands it a repacked
/// tensor's bytes).
///
/// # Safety
/// The contract of `ggml_backend_tensor_set`.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.hot.dcgguf")]
pub unsafe extern "C" fn ggml_backend_tensor_set(
    tensor: *mut sys::ggml_tensor,
    data: *const c_void,
    offset: usize,
    size: usize,
) {
    let ours = ggml_backend_tensor_set as *const () as usize;
    // SAFETY: the caller's arguments, passed through under the function's own contract.
    unsafe { hooks::tensor_set_or_real(tensor, data, offset, size, ours) }
}

/// Interposes ggml's `ggml_backend_buffer_clear` (llama.cpp clears a context's KV cache as
/// it creates it).
///
/// # Safety
/// The contract of `ggml_backend_buffer_clear`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ggml_backend_buffer_clear(buffer: *mut c_void, value: u8) {
    let ours = ggml_backend_buffer_clear as *const () as usize;
    // SAFETY: the caller's arguments, passed through under the function's own contract.
    unsafe { hooks::buffer_clear_or_real(buffer, value, ours) }
}

/// Interposes the C library's `fread`.
///
/// # Safety
/// The contract of `fread(3)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.hot.dcgguf")]
pub unsafe extern "C" fn fread(
    ptr: *mut c_void,
    size: usize,
    n: usize,
    fp: *mut libc::FILE,
) -> usize {
    // SAFETY: the caller's fread arguments, passed through under fread's own contract.
    unsafe { hooks::fread_or_real(ptr, size, n, fp, fread as *const () as usize) }
}

/// Interposes the C library's `fseeko` (llama.cpp's `llama_file::seek`).
///
/// # Safety
/// The contract of `fseeko(3)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.hot.dcgguf")]
pub unsafe extern "C" fn fseeko(
    fp: *mut libc::FILE,
    offset: i64,
    whence: libc::c_int,
) -> libc::c_int {
    // SAFETY: the caller's fseeko arguments, passed through under its own contract.
    unsafe { hooks::fseek_or_real(fp, offset, whence, c"fseeko", fseeko as *const () as usize) }
}

/// Interposes the C library's `fseek` (`long` is 64 bits here, as `off_t`).
///
/// # Safety
/// The contract of `fseek(3)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.hot.dcgguf")]
pub unsafe extern "C" fn fseek(
    fp: *mut libc::FILE,
    offset: libc::c_long,
    whence: libc::c_int,
) -> libc::c_int {
    // SAFETY: as in fseeko.
    unsafe { hooks::fseek_or_real(fp, offset, whence, c"fseek", fseek as *const () as usize) }
}
