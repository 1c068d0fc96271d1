//! llama.cpp entry points of the C API: `dcgguf_llama_model_load`, `dcgguf_llama_check`,
//! `dcgguf_set_memory_budget` and the context/model wrappers `dcgguf_llama_init_from_model`,
//! `dcgguf_llama_free`, `dcgguf_llama_model_free`. libdcgguf exports nothing that shadows a
//! libc or llama.cpp symbol: the `LD_PRELOAD` interposers are in libdcgguf_preload.so
//! (crate `preload/`), and both call [`crate::llama::hooks`].

use std::ffi::{CStr, c_char};

use super::dcgguf_result;
use super::{Error, guard};
use crate::llama::budget;
use crate::llama::{self, LlamaError, hooks, sys};

/// Loads a GGUF or DC-GGUF model with the llama.cpp in this process (see ffi/dcgguf.h).
/// Returns NULL on failure, with the reason on stderr and in `dcgguf_last_error`.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_llama_model_load(
    path: *const c_char,
    params: sys::llama_model_params,
) -> *mut sys::llama_model {
    hooks::load_model_hooked(path, params, hooks::interposer_address())
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
            .map_err(|e| Error::new(dcgguf_result::DCGGUF_ERR_INVALID_ARGUMENT, e))?;
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
    hooks::init_context(model, params, false, hooks::interposers().init_from_model)
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
