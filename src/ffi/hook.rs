//! llama.cpp entry points of the C API: `dcgguf_llama_model_load`, `dcgguf_llama_check`,
//! `dcgguf_set_memory_budget` and the context/model wrappers `dcgguf_llama_init_from_model`,
//! `dcgguf_llama_free`, `dcgguf_llama_model_free`. libdcgguf exports nothing that shadows a
//! libc or llama.cpp symbol: the `LD_PRELOAD` interposers are in libdcgguf_preload.so
//! (crate `preload/`), and both call [`load_model_hooked`] and [`init_context`] here and
//! [`crate::llama::hooks`] for the rest.

use std::ffi::{CStr, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::dcgguf_result;
use super::{Error, guard, shed};
use crate::llama::budget;
use crate::llama::{self, LlamaError, hooks, sys};

/// Loads a GGUF or DC-GGUF model with the llama.cpp in this process (see ffi/dcgguf.h).
/// Returns NULL on failure, with the reason on stderr and in `dcgguf_last_error`.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_llama_model_load(
    path: *const c_char,
    params: sys::llama_model_params,
) -> *mut sys::llama_model {
    quietly(|| {
        shed::prepare();
        shed::before_load();
    });
    let model = load_model_hooked(path, params, hooks::interposer_address());
    quietly(|| shed::after_load(budget::compute_decoding(model)));
    model
}

/// Runs `f`, which only gives pages back or logs, and drops a panic of it: no panic crosses
/// the C ABI, and a shed that failed leaves the result as it is.
fn quietly(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

/// Checks that this process has a llama.cpp with the ABI dcgguf was built for.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_llama_check() -> dcgguf_result {
    guard(|| {
        llama::host::host(hooks::interposer_address())
            .map(|_| ())
            .map_err(|e| Error::from(LlamaError::Host(e)))
    })
}

/// Sets the memory budget for models loaded after this call (see ffi/dcgguf.h).
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_set_memory_budget(spec: *const c_char) -> dcgguf_result {
    guard(|| {
        if spec.is_null() {
            budget::spec::set_settings(None);
            return Ok(());
        }
        // SAFETY: non-NULL `spec` is a NUL-terminated string (documented contract).
        let spec = unsafe { CStr::from_ptr(spec) }.to_string_lossy();
        let settings = budget::spec::parse_api(&spec)
            .map_err(|e| Error::new(dcgguf_result::DCGGUF_ERR_INVALID_ARGUMENT, e.to_string()))?;
        budget::spec::set_settings(settings);
        Ok(())
    })
}

/// `llama_init_from_model` with dcgguf's graph callback for models loaded under a memory
/// budget (see ffi/dcgguf.h); other contexts are created unchanged.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_llama_init_from_model(
    model: *mut sys::llama_model,
    params: sys::llama_context_params,
) -> *mut sys::llama_context {
    let ctx = init_context(model, params, false, hooks::interposers().init_from_model);
    quietly(|| shed::after_context(budget::compute_decoding(model)));
    ctx
}

/// `llama_free`, then frees dcgguf's state for that context (see ffi/dcgguf.h).
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_llama_free(ctx: *mut sys::llama_context) {
    hooks::context_freed(ctx, hooks::interposers().free)
}

/// Forgets the model's memory-budget state, then `llama_model_free` (see ffi/dcgguf.h).
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_llama_model_free(model: *mut sys::llama_model) {
    hooks::model_freed(model, hooks::interposers().model_free)
}

/// Loads `path` (GGUF or DC-GGUF) with the host's llama.cpp, as `llama_model_load_from_file`
/// would; `ours` is the caller's own exported `llama_model_load_from_file` (0 if none), which
/// the host lookup skips. Returns NULL on failure, with the reason on stderr and in
/// `dcgguf_last_error`.
pub fn load_model_hooked(
    path: *const c_char,
    params: sys::llama_model_params,
    ours: usize,
) -> *mut sys::llama_model {
    let r = catch_unwind(AssertUnwindSafe(|| {
        if path.is_null() {
            return Err(LlamaError::BadPath("NULL".into()));
        }
        // SAFETY: non-NULL `path` is a NUL-terminated string, as llama.h requires.
        let p = unsafe { CStr::from_ptr(path) };
        llama::load_model(p, params, ours)
    }));
    let msg = match r {
        Ok(Ok(model)) => return model,
        // llama.cpp already said why it refused a plain file.
        Ok(Err(e @ LlamaError::PlainFailed(_))) => {
            super::set_last_error(&e.to_string());
            return std::ptr::null_mut();
        }
        Ok(Err(e)) => e.to_string(),
        Err(p) => super::panic_message(&*p),
    };
    crate::log_line!("dcgguf: error: {msg}");
    super::set_last_error(&msg);
    std::ptr::null_mut()
}

/// `llama_init_from_model` (or, with `deprecated`, `llama_new_context_with_model`) with
/// dcgguf's graph callback chained in for models loaded under a memory budget (and when
/// recording max|x|); other contexts are created unchanged. `ours` is the caller's own
/// export of that name (0 if none), which the host lookup skips.
pub fn init_context(
    model: *mut sys::llama_model,
    mut params: sys::llama_context_params,
    deprecated: bool,
    ours: usize,
) -> *mut sys::llama_context {
    let real = match hooks::real_context_init(deprecated, ours) {
        Ok(real) => real,
        Err(name) => {
            let msg = format!("{} not found in this process", name.to_string_lossy());
            super::set_last_error(&msg);
            crate::log_line!("dcgguf: error: {msg}");
            return std::ptr::null_mut();
        }
    };
    // A model the default loaded without a budget: its batches check their memory and
    // may switch it to a budget (budget::refit), which this context's callback then serves.
    let threads = budget::graph_hook::compute_threads(&params);
    let watch = catch_unwind(AssertUnwindSafe(|| {
        budget::refit::watch_for(model, threads)
    }))
    .ok()
    .flatten();
    let hook = catch_unwind(AssertUnwindSafe(|| {
        crate::llama::budget::graph_hook::hook_context_params(model, &mut params, watch.clone())
    }))
    .ok()
    .flatten();
    let create = || {
        // SAFETY: the real function with the caller's model and (possibly hooked) params.
        unsafe { real(model, params) }
    };
    // A pending model's context (or a spilled one's, which has no watch: its graph needs no
    // callback): the buffers it reserves now, and writes only in a batch, count in that
    // batch's check (budget::refit).
    let noted = watch.is_some()
        || catch_unwind(AssertUnwindSafe(|| budget::refit::notes_contexts_of(model)))
            .unwrap_or(false);
    // Without the budget hooks no batch is checked: the context's creation is, once done.
    let unhooked = !noted
        && catch_unwind(AssertUnwindSafe(|| {
            hooks::budget_hooks_active().is_err()
                && budget::refit::checks_contexts_without_hooks(model)
        }))
        .unwrap_or(false);
    let ctx = if unhooked {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            budget::refit::creating_context_without_hooks(model, &params)
        }));
        let (ctx, written, unwritten) = budget::unhooked::creating_context(create);
        if !ctx.is_null() {
            let _ = catch_unwind(AssertUnwindSafe(|| {
                budget::refit::context_created_without_hooks(model, ctx, written, unwritten)
            }));
        }
        ctx
    } else if noted {
        let (ctx, buffers) = hooks::noting_buffers(create);
        if !ctx.is_null() {
            let _ = catch_unwind(AssertUnwindSafe(|| {
                budget::refit::context_reserved(ctx, buffers)
            }));
        }
        ctx
    } else {
        create()
    };
    if let Some(h) = hook {
        // SAFETY: `h` came from hook_context_params just above and is handed over once.
        let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
            crate::llama::budget::graph_hook::context_created(ctx, h)
        }));
    }
    ctx
}
