//! llama.cpp entry points: `dcgguf_llama_model_load`, `dcgguf_llama_check`, and the exported
//! `llama_model_load_from_file` that takes over llama.cpp's under `LD_PRELOAD` (or when a
//! program links libdcgguf before libllama).

use std::ffi::{CStr, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::dcgguf_result;
use super::{Error, guard, panic_message, set_last_error};
use crate::llama::{self, LlamaError, sys};

fn load(path: *const c_char, params: sys::llama_model_params) -> *mut sys::llama_model {
    let r = catch_unwind(AssertUnwindSafe(|| {
        if path.is_null() {
            return Err(LlamaError::Io("model path is NULL".into()));
        }
        // SAFETY: non-NULL `path` is a NUL-terminated string, as llama.h requires.
        let p = unsafe { CStr::from_ptr(path) };
        llama::load_model(p, params, super::interposer_address(), None)
    }));
    match r {
        Ok(Ok(model)) => model,
        // llama.cpp already said why it refused a plain file.
        Ok(Err(e @ LlamaError::PlainFailed(_))) => {
            set_last_error(&e.to_string());
            std::ptr::null_mut()
        }
        Ok(Err(e)) => {
            let msg = e.to_string();
            eprintln!("dcgguf: error: {msg}");
            set_last_error(&msg);
            std::ptr::null_mut()
        }
        Err(p) => {
            let msg = panic_message(&*p);
            eprintln!("dcgguf: error: {msg}");
            set_last_error(&msg);
            std::ptr::null_mut()
        }
    }
}

/// Loads a GGUF or DC-GGUF model with the llama.cpp in this process (see ffi/dcgguf.h).
/// Returns NULL on failure, with the reason on stderr and in `dcgguf_last_error`.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_llama_model_load(
    path: *const c_char,
    params: sys::llama_model_params,
) -> *mut sys::llama_model {
    load(path, params)
}

/// Interposes llama.cpp's `llama_model_load_from_file`: DC-GGUF files load through the
/// decompressing FILE*, everything else goes to the real function unchanged.
#[unsafe(no_mangle)]
pub extern "C" fn llama_model_load_from_file(
    path: *const c_char,
    params: sys::llama_model_params,
) -> *mut sys::llama_model {
    load(path, params)
}

/// Checks that this process has a llama.cpp with the ABI dcgguf was built for.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_llama_check() -> dcgguf_result {
    guard(|| {
        llama::host::host(super::interposer_address())
            .map(|_| ())
            .map_err(|e| Error::from(LlamaError::Host(e)))
    })
}
