//! llama.cpp entry points of the C API: `dcgguf_llama_model_load`, `dcgguf_llama_check`,
//! `dcgguf_set_memory_budget` and the context/model wrappers `dcgguf_llama_init_from_model`,
//! `dcgguf_llama_free`, `dcgguf_llama_model_free`. libdcgguf exports nothing that shadows a
//! libc or llama.cpp symbol: the `LD_PRELOAD` interposers are in libdcgguf_preload.so
//! (crate `preload/`), and both call [`crate::llama::hooks`].

use std::ffi::{CStr, c_char};

use super::dcgguf_result;
use super::{Error, guard};
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
            llama::residency::set_settings(None);
            return Ok(());
        }
        // SAFETY: non-NULL `spec` is a NUL-terminated string (documented contract).
        let spec = unsafe { CStr::from_ptr(spec) }.to_string_lossy();
        let settings = parse_budget_spec(&spec)
            .map_err(|e| Error::new(dcgguf_result::DCGGUF_ERR_INVALID_ARGUMENT, e))?;
        llama::residency::set_settings(settings);
        Ok(())
    })
}

/// `"60%"`, `"512M"`, optionally followed by `,file` / `,ram` and `,prefetch` /
/// `,noprefetch`; `"0"` or `""` turns the budget off.
fn parse_budget_spec(spec: &str) -> Result<Option<llama::residency::Settings>, String> {
    let mut parts = spec.split(',').map(str::trim);
    let budget = parts.next().unwrap_or("");
    if budget.is_empty() || budget == "0" {
        return Ok(None);
    }
    let mut s = llama::residency::Settings {
        budget: budget.parse()?,
        home: crate::cost::residency::CompressedHome::Ram,
        prefetch: None,
    };
    for p in parts {
        match p {
            "noprefetch" => s.prefetch = Some(false),
            "prefetch" => s.prefetch = Some(true),
            other => s.home = other.parse()?,
        }
    }
    Ok(Some(s))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::residency::{Budget, CompressedHome};

    #[test]
    fn budget_specs_parse() {
        let s = parse_budget_spec("60%,file,noprefetch").unwrap().unwrap();
        assert_eq!(s.budget, Budget::Fraction(0.6));
        assert_eq!(s.home, CompressedHome::File);
        assert_eq!(s.prefetch, Some(false));
        let s = parse_budget_spec("512M").unwrap().unwrap();
        assert_eq!(
            (s.budget, s.home, s.prefetch),
            (Budget::Bytes(512 << 20), CompressedHome::Ram, None)
        );
        let s = parse_budget_spec("1G,prefetch").unwrap().unwrap();
        assert_eq!(s.prefetch, Some(true));
        assert!(parse_budget_spec("0").unwrap().is_none());
        assert!(parse_budget_spec("").unwrap().is_none());
        assert!(parse_budget_spec("60%,disk").is_err());
        assert!(parse_budget_spec("lots").is_err());
    }
}
