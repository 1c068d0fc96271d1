//! A Rust program as the host: libllama opened with `dlopen(RTLD_GLOBAL)` (no preload, no
//! linking), then `dcgguf::llama::load` on the plain and the DC file gives the same model
//! (parameter count and size through the host's own llama.cpp functions).

mod llama_support;

use std::ffi::{CString, c_void};

use llama_support::*;

type ModelFn = unsafe extern "C" fn(*const c_void) -> u64;
type FreeFn = unsafe extern "C" fn(*mut c_void);

/// A function of the dlopened libllama.
fn sym(handle: *mut c_void, name: &str) -> *mut c_void {
    let c = CString::new(name).unwrap();
    // SAFETY: `handle` came from dlopen; `c` is a NUL-terminated name.
    let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
    assert!(!p.is_null(), "libllama has no {name}");
    p
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_smollm2)),
    ignore = "needs llama.cpp and SmolLM2: run scripts/build-llama.sh and scripts/fetch-models.sh"
)]
fn rust_host_loads_dc_like_plain() {
    let t = "rust_host_loads_dc_like_plain";
    let (l, m) = (require_llama(t), require_smollm2(t));
    let dc = dc_of(&m);
    let lib = CString::new(l.lib_dir().join("libllama.so").to_str().unwrap()).unwrap();
    // SAFETY: dlopen of the pinned libllama (its ggml dependencies resolve through its rpath);
    // RTLD_GLOBAL makes its functions visible to dcgguf's lookup, as the docs ask.
    let handle = unsafe { libc::dlopen(lib.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    assert!(!handle.is_null(), "dlopen {lib:?} failed");
    // SAFETY: these are the llama.h functions of that name at the pinned commit, with these
    // C signatures (uint64_t f(const struct llama_model *), void f(struct llama_model *)).
    let (n_params, size, free) = unsafe {
        (
            std::mem::transmute::<*mut c_void, ModelFn>(sym(handle, "llama_model_n_params")),
            std::mem::transmute::<*mut c_void, ModelFn>(sym(handle, "llama_model_size")),
            std::mem::transmute::<*mut c_void, FreeFn>(sym(handle, "llama_model_free")),
        )
    };
    let params = dcgguf::llama::default_params().expect("the dlopened llama.cpp is found");
    let mut seen = Vec::new();
    for path in [&m, &dc] {
        let model =
            dcgguf::llama::load(path, params).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!model.is_null());
        // SAFETY: `model` is a live model of that libllama, freed once right after.
        unsafe {
            seen.push((n_params(model.cast()), size(model.cast())));
            free(model.cast());
        }
    }
    assert!(seen[0].0 > 100_000_000, "{seen:?}");
    assert_eq!(seen[0], seen[1], "plain and DC models differ: {seen:?}");
    // A damaged DC file is a typed error, not a model.
    let bad = corrupted_copy(&dc, "rust-host-damaged.dc.gguf");
    let err = dcgguf::llama::load(&bad, params).expect_err("a damaged DC file must not load");
    assert!(err.to_string().contains("checksum"), "{err}");
}
