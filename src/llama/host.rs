//! The llama.cpp that is already in this process, found at run time with `dlsym` (we never
//! link or bundle a second copy), and checked to have the ABI our bindings were made for.

use std::ffi::{CStr, c_char, c_void};
use std::sync::OnceLock;

use super::sys;

pub type LoadFromFileFn =
    unsafe extern "C" fn(*const c_char, sys::llama_model_params) -> *mut sys::llama_model;
pub type LoadFromFilePtrFn =
    unsafe extern "C" fn(*mut libc::FILE, sys::llama_model_params) -> *mut sys::llama_model;
type LoadModeNameFn = unsafe extern "C" fn(sys::llama_load_mode) -> *const c_char;

/// `llama_model_params` with room behind it: `llama_model_default_params` is called through
/// this type so that a host whose struct is larger writes into our padding
/// instead of past our stack slot. Both are returned through a hidden pointer.
#[repr(C)]
struct PaddedParams {
    params: sys::llama_model_params,
    pad: [u8; 256],
}
type DefaultParamsPaddedFn = unsafe extern "C" fn() -> PaddedParams;

/// The host's llama.cpp entry points.
pub struct Host {
    /// The real `llama_model_load_from_file` (not our interposer).
    pub load_from_file: LoadFromFileFn,
    pub load_from_file_ptr: LoadFromFilePtrFn,
    /// The host's `llama_model_default_params()`, checked.
    pub default_params: sys::llama_model_params,
}

// SAFETY: Host holds plain function pointers and a params struct whose pointers are all NULL
// (checked in resolve), so sharing it between threads is sound.
unsafe impl Send for Host {}
// SAFETY: see Send.
unsafe impl Sync for Host {}

/// Why the process's llama.cpp cannot be used. Each message ends with what to do
/// ([`HINT`]).
#[derive(Clone, Debug, thiserror::Error)]
pub enum HostError {
    #[error("llama.cpp function {0} not found in this process; {HINT}")]
    Missing(String),
    #[error(
        "llama.cpp function llama_load_mode_name not found in this process (this llama.cpp \
         predates enum llama_load_mode: ABI mismatch); {HINT}"
    )]
    TooOld,
    #[error(
        "llama.cpp load modes are not numbered as expected (0 -> {none:?}, 1 -> {mmap:?}): \
         ABI mismatch; {HINT}"
    )]
    LoadModes {
        none: Option<String>,
        mmap: Option<String>,
    },
    #[error(
        "llama_model_default_params() of this llama.cpp does not look like the one dcgguf was \
         built for (ABI mismatch); {HINT}"
    )]
    DefaultParams,
}

static HOST: OnceLock<Result<Host, HostError>> = OnceLock::new();

/// The host's llama.cpp, resolved once. `not_this` is our own interposer's address, which
/// must not be mistaken for the real loader.
pub fn host(not_this: usize) -> Result<&'static Host, HostError> {
    HOST.get_or_init(|| resolve(not_this))
        .as_ref()
        .map_err(Clone::clone)
}

fn sym(handle: *mut c_void, name: &CStr) -> Option<usize> {
    // SAFETY: dlsym accepts RTLD_DEFAULT/RTLD_NEXT or a handle from dlopen, and a C string.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    (!p.is_null()).then_some(p as usize)
}

/// The real C function `name` (skipping our own export at `ours`), looked up like the
/// llama.cpp entry points.
pub fn real_function(name: &CStr, ours: usize) -> Option<usize> {
    find(name, ours)
}

/// Looks `name` up: next object after us, then the global scope, then an already loaded
/// libllama (RTLD_NOLOAD never loads anything). Skips `not_this`.
fn find(name: &CStr, not_this: usize) -> Option<usize> {
    let ok = |p: Option<usize>| p.filter(|&p| p != not_this);
    if let Some(p) = ok(sym(libc::RTLD_NEXT, name)).or_else(|| ok(sym(libc::RTLD_DEFAULT, name))) {
        return Some(p);
    }
    for lib in [c"libllama.so", c"libllama.so.0"] {
        // SAFETY: dlopen with RTLD_NOLOAD only returns a handle to an already loaded object.
        let h = unsafe { libc::dlopen(lib.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
        if !h.is_null() {
            let p = ok(sym(h, name));
            // SAFETY: balances the reference RTLD_NOLOAD took; the library stays loaded.
            unsafe { libc::dlclose(h) };
            if p.is_some() {
                return p;
            }
        }
    }
    None
}

const HINT: &str = concat!(
    "dcgguf needs the llama.cpp it was built against (commit ",
    env!("DCGGUF_LLAMA_COMMIT"),
    ", llama-cpp-python ",
    env!("DCGGUF_LLAMA_PY_VERSION"),
    "): load libllama in the process (link it, or run a llama.cpp tool with \
     LD_PRELOAD=libdcgguf_preload.so)"
);

fn resolve(not_this: usize) -> Result<Host, HostError> {
    let need = |name: &CStr| {
        find(name, not_this).ok_or_else(|| HostError::Missing(name.to_string_lossy().into_owned()))
    };
    let load_from_file = need(c"llama_model_load_from_file")?;
    let load_from_file_ptr = need(c"llama_model_load_from_file_ptr")?;
    let default_params = need(c"llama_model_default_params")?;
    // Only llama.cpp with the `load_mode` field in llama_model_params has this.
    let load_mode_name = need(c"llama_load_mode_name").map_err(|_| HostError::TooOld)?;

    // SAFETY: each address is the named llama.cpp function; the types follow llama.h at the
    // pinned commit (src/llama/sys.rs). llama_load_mode_name takes an enum and returns a
    // static string (or NULL), both checked below before we rely on the layout.
    let (load_mode_name, default_params_fn): (LoadModeNameFn, DefaultParamsPaddedFn) = unsafe {
        (
            std::mem::transmute::<usize, LoadModeNameFn>(load_mode_name),
            std::mem::transmute::<usize, DefaultParamsPaddedFn>(default_params),
        )
    };
    let name_of = |m: sys::llama_load_mode| {
        // SAFETY: load_mode_name is llama_load_mode_name; it returns NULL or a static string.
        let p = unsafe { load_mode_name(m) };
        // SAFETY: non-NULL results are NUL-terminated static strings.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    };
    let names = [
        sys::llama_load_mode_LLAMA_LOAD_MODE_NONE,
        sys::llama_load_mode_LLAMA_LOAD_MODE_MMAP,
    ]
    .map(name_of);
    if names != [Some("none".to_string()), Some("mmap".to_string())] {
        let [none, mmap] = names;
        return Err(HostError::LoadModes { none, mmap });
    }
    // SAFETY: PaddedParams is returned through a hidden pointer exactly like the host's
    // llama_model_params (both are large aggregates); the host writes its own struct into the
    // start of our slot, and the padding absorbs it if it is larger than ours. We only read
    // `params`, which a host with our ABI fully initializes; the checks below catch others.
    let mut got = unsafe { default_params_fn() }.params;
    let d = &got;
    let bools = [
        d.vocab_only,
        d.check_tensors,
        d.use_extra_bufts,
        d.no_host,
        d.no_alloc,
        d.load_mtp,
    ];
    // SAFETY: reading the bools as bytes: a bool field holding anything but 0/1 is what we are
    // checking for, so look at the raw bytes rather than the (possibly invalid) bool values.
    let bool_bytes: [u8; 6] = unsafe { std::mem::transmute(bools) };
    let sane = d.devices.is_null()
        && d.tensor_buft_overrides.is_null()
        && d.tensor_split.is_null()
        && d.progress_callback.is_none()
        && d.kv_overrides.is_null()
        && (-1..=4).contains(&d.load_mode)
        && (0..=2).contains(&d.lazy_mode)
        && (0..=3).contains(&d.split_mode)
        && bool_bytes.iter().all(|&b| b <= 1);
    if !sane {
        return Err(HostError::DefaultParams);
    }
    got.progress_callback_user_data = std::ptr::null_mut();
    Ok(Host {
        // SAFETY: addresses of the functions with these exact C signatures (see above).
        load_from_file: unsafe { std::mem::transmute::<usize, LoadFromFileFn>(load_from_file) },
        // SAFETY: as above.
        load_from_file_ptr: unsafe {
            std::mem::transmute::<usize, LoadFromFilePtrFn>(load_from_file_ptr)
        },
        default_params: got,
    })
}
