//! libdcgguf.so and libdcgguf.a: the `dcgguf_*` C API of the dcgguf crate (src/ffi,
//! declared in ffi/dcgguf.h), for C and C++ programs and for Python through ctypes.
//!
//! The functions are the dcgguf crate's own `#[no_mangle]` exports, which a Rust cdylib or
//! staticlib exports from every crate it links; this crate adds only what a library inside
//! someone else's process must not impose on the crates that link dcgguf as an rlib: its
//! global allocator. Every Rust allocation of the library comes from anonymous mappings of its
//! own (`dcgguf::io::OwnMappings`), never from the host's `malloc`, so that a model load
//! leaves no holes in the host's heap for its later `calloc`s to land in and clear. The C
//! library's `malloc` of the host is not replaced: the host and llama.cpp keep theirs.

// Referenced so that the linker keeps the dcgguf crate's C API in this library.
pub use dcgguf_core::ffi;

#[global_allocator]
static OWN_MAPPINGS: dcgguf_core::io::OwnMappings = dcgguf_core::io::OwnMappings;
