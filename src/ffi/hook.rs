//! llama.cpp entry points: `dcgguf_llama_model_load`, `dcgguf_llama_check`, and the exported
//! `llama_model_load_from_file` that takes over llama.cpp's under `LD_PRELOAD` (or when a
//! program links libdcgguf before libllama).

use std::ffi::{CStr, c_char, c_void};
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

type InitFromModelFn = unsafe extern "C" fn(
    *mut sys::llama_model,
    sys::llama_context_params,
) -> *mut sys::llama_context;
type FreeContextFn = unsafe extern "C" fn(*mut sys::llama_context);
type FreeModelFn = unsafe extern "C" fn(*mut sys::llama_model);
type FreadFn = unsafe extern "C" fn(*mut c_void, usize, usize, *mut libc::FILE) -> usize;

/// The real function behind one of our exports, resolved once.
macro_rules! real {
    ($name:literal, $ours:expr, $ty:ty) => {{
        static REAL: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
        REAL.get_or_init(|| llama::host::real_function($name, $ours as *const () as usize))
            // SAFETY: the address is the C library's / llama.cpp's function of this name,
            // whose C signature `$ty` states (llama.h at the pinned commit, stdio.h).
            .map(|p| unsafe { std::mem::transmute::<usize, $ty>(p) })
    }};
}

pub(super) fn interposers_active() -> Result<(), String> {
    let resolves_to_us = |name: &CStr, ours: usize| {
        // SAFETY: dlsym with RTLD_DEFAULT and a C string.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) } as usize;
        p == ours
    };
    let checks = [
        (
            c"llama_init_from_model",
            llama_init_from_model as *const () as usize,
        ),
        (c"fread", fread as *const () as usize),
    ];
    for (name, ours) in checks {
        if !resolves_to_us(name, ours) {
            return Err(format!(
                "a memory budget needs libdcgguf's {} to be the one this process calls \
                 (run with LD_PRELOAD=libdcgguf.so, or link libdcgguf before libllama)",
                name.to_string_lossy()
            ));
        }
    }
    Ok(())
}

fn init_context(
    model: *mut sys::llama_model,
    mut params: sys::llama_context_params,
    real: Option<InitFromModelFn>,
) -> *mut sys::llama_context {
    let Some(real) = real else {
        set_last_error("llama_init_from_model not found in this process");
        eprintln!("dcgguf: error: llama_init_from_model not found in this process");
        return std::ptr::null_mut();
    };
    let hook = catch_unwind(AssertUnwindSafe(|| {
        llama::graph_hook::hook_context_params(model, &mut params)
    }))
    .ok()
    .flatten();
    // SAFETY: the real function with the caller's model and (possibly hooked) params.
    let ctx = unsafe { real(model, params) };
    if let Some(h) = hook {
        // SAFETY: `h` came from hook_context_params just above and is handed over once.
        let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
            llama::graph_hook::context_created(ctx, h)
        }));
    }
    ctx
}

/// Interposes `llama_init_from_model`: contexts of models loaded under a memory budget get
/// dcgguf's graph callback (chained with the caller's); others are created unchanged.
#[unsafe(no_mangle)]
pub extern "C" fn llama_init_from_model(
    model: *mut sys::llama_model,
    params: sys::llama_context_params,
) -> *mut sys::llama_context {
    init_context(
        model,
        params,
        real!(
            c"llama_init_from_model",
            llama_init_from_model,
            InitFromModelFn
        ),
    )
}

/// Interposes the deprecated `llama_new_context_with_model` the same way.
#[unsafe(no_mangle)]
pub extern "C" fn llama_new_context_with_model(
    model: *mut sys::llama_model,
    params: sys::llama_context_params,
) -> *mut sys::llama_context {
    init_context(
        model,
        params,
        real!(
            c"llama_new_context_with_model",
            llama_new_context_with_model,
            InitFromModelFn
        ),
    )
}

/// Interposes `llama_free`: frees dcgguf's per-context state after the real call.
#[unsafe(no_mangle)]
pub extern "C" fn llama_free(ctx: *mut sys::llama_context) {
    if let Some(real) = real!(c"llama_free", llama_free, FreeContextFn) {
        // SAFETY: the real function with the caller's argument.
        unsafe { real(ctx) };
    }
    let _ = catch_unwind(AssertUnwindSafe(|| llama::graph_hook::context_freed(ctx)));
}

/// Interposes `llama_model_free`: stops and forgets the model's budget state, then frees.
#[unsafe(no_mangle)]
pub extern "C" fn llama_model_free(model: *mut sys::llama_model) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        llama::residency::unregister_model(model)
    }));
    if let Some(real) = real!(c"llama_model_free", llama_model_free, FreeModelFn) {
        // SAFETY: the real function with the caller's argument.
        unsafe { real(model) };
    }
}

/// Interposes the C library's `fread`: our decompressing streams are read straight into
/// the caller's memory (see `llama::fread`); every other stream goes to the real `fread`.
///
/// # Safety
/// The contract of `fread(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fread(
    ptr: *mut c_void,
    size: usize,
    n: usize,
    fp: *mut libc::FILE,
) -> usize {
    // SAFETY: the caller's fread arguments, passed through.
    if let Some(done) = unsafe { llama::fread::fread_ours(ptr, size, n, fp) } {
        return done;
    }
    match real!(c"fread", fread, FreadFn) {
        // SAFETY: the C library's fread with the caller's arguments.
        Some(real) => unsafe { real(ptr, size, n, fp) },
        None => 0,
    }
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
