//! The C ABI of libdcgguf (header: ffi/dcgguf.h).
//!
//! Conventions (as in gguf.h / rustls-ffi): opaque handles; every function that can fail
//! returns a [`dcgguf_result`] and writes its out-parameters only on success; every pointer is
//! checked; no panic crosses the boundary (each export runs under `catch_unwind`); on failure
//! a message naming the cause (for corrupt data: tensor and chunk) is kept per thread for
//! [`dcgguf_last_error`].
//!
//! [`hook`] holds the llama.cpp side: `dcgguf_llama_model_load` and friends. libdcgguf
//! exports only `dcgguf_*` symbols; the `LD_PRELOAD` interposers of libc's `fread` and
//! llama.cpp's entry points are in libdcgguf_preload.so (crate `preload/`).

#![allow(non_camel_case_types)]
// These are C entry points: C callers cannot see `unsafe`, the pointer contracts are stated
// in ffi/dcgguf.h, and every pointer is NULL-checked before use.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod api;
pub mod convert;
pub mod hook;
pub mod shed;

use std::cell::RefCell;
use std::ffi::{c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::cost::CostError;
use crate::dc::{DcError, ErrorKind};
use crate::io::OutputError;
use crate::llama::LlamaError;
use crate::llama::budget::refit::RefitError;
use crate::llama::stream::StreamError;
use crate::llama::user_load::UserRouteError;
use crate::quant::QuantError;

/// Result codes. Numbers are part of the ABI: never renumber or reuse one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum dcgguf_result {
    DCGGUF_OK = 0,
    DCGGUF_ERR_NULL_POINTER = 1,
    DCGGUF_ERR_INVALID_ARGUMENT = 2,
    DCGGUF_ERR_IO = 3,
    DCGGUF_ERR_BAD_GGUF = 4,
    DCGGUF_ERR_NOT_DC = 5,
    DCGGUF_ERR_UNSUPPORTED_VERSION = 6,
    DCGGUF_ERR_CORRUPT = 7,
    DCGGUF_ERR_OUT_OF_RANGE = 8,
    DCGGUF_ERR_BUFFER_TOO_SMALL = 9,
    DCGGUF_ERR_NO_SUCH_TENSOR = 10,
    DCGGUF_ERR_THREADS = 11,
    DCGGUF_ERR_LLAMA_UNAVAILABLE = 12,
    DCGGUF_ERR_LLAMA_LOAD_FAILED = 13,
    DCGGUF_ERR_SPLIT_MODEL = 14,
    DCGGUF_ERR_PANIC = 15,
    DCGGUF_ERR_OTHER = 16,
    DCGGUF_ERR_OUT_OF_MEMORY = 17,
    DCGGUF_ERR_CANCELLED = 18,
    DCGGUF_ERR_OUTPUT_REFUSED = 19,
}

use dcgguf_result::*;

impl dcgguf_result {
    fn describe(self) -> &'static str {
        match self {
            DCGGUF_OK => "success",
            DCGGUF_ERR_NULL_POINTER => "a required pointer argument is NULL",
            DCGGUF_ERR_INVALID_ARGUMENT => "invalid argument",
            DCGGUF_ERR_IO => "I/O error",
            DCGGUF_ERR_BAD_GGUF => "not a valid GGUF file",
            DCGGUF_ERR_NOT_DC => "not a DC-GGUF file",
            DCGGUF_ERR_UNSUPPORTED_VERSION => "unsupported DC-GGUF version",
            DCGGUF_ERR_CORRUPT => "DC-GGUF data is corrupt",
            DCGGUF_ERR_OUT_OF_RANGE => "byte range outside the tensor or file",
            DCGGUF_ERR_BUFFER_TOO_SMALL => "output buffer too small",
            DCGGUF_ERR_NO_SUCH_TENSOR => "no such tensor",
            DCGGUF_ERR_THREADS => "could not start decoder threads",
            DCGGUF_ERR_LLAMA_UNAVAILABLE => "no compatible llama.cpp in this process",
            DCGGUF_ERR_LLAMA_LOAD_FAILED => "llama.cpp failed to load the model",
            DCGGUF_ERR_SPLIT_MODEL => "split DC-GGUF models must be merged first",
            DCGGUF_ERR_PANIC => "internal error (panic caught)",
            DCGGUF_ERR_OTHER => "error",
            DCGGUF_ERR_OUT_OF_MEMORY => "not enough memory for what the file declares",
            DCGGUF_ERR_CANCELLED => "cancelled by the progress callback",
            DCGGUF_ERR_OUTPUT_REFUSED => {
                "output refused: it exists (and force is off), is the input, or is not a \
                 regular file"
            }
        }
    }
}

/// An error on its way out: code plus detailed message.
#[derive(Debug)]
pub struct Error {
    pub code: dcgguf_result,
    pub msg: String,
}

impl Error {
    fn new(code: dcgguf_result, msg: impl Into<String>) -> Error {
        Error {
            code,
            msg: msg.into(),
        }
    }
    fn null(what: &str) -> Error {
        Error::new(DCGGUF_ERR_NULL_POINTER, format!("{what} is NULL"))
    }
}

/// The C code for a DC error, from its kind (`DcError::kind`, shared with the CLI).
fn dc_code(e: &DcError) -> dcgguf_result {
    match e.kind() {
        ErrorKind::Io => DCGGUF_ERR_IO,
        ErrorKind::Output => DCGGUF_ERR_OUTPUT_REFUSED,
        ErrorKind::Cancelled => DCGGUF_ERR_CANCELLED,
        ErrorKind::BadGguf => DCGGUF_ERR_BAD_GGUF,
        ErrorKind::NotDc => DCGGUF_ERR_NOT_DC,
        ErrorKind::UnsupportedVersion => DCGGUF_ERR_UNSUPPORTED_VERSION,
        ErrorKind::OutOfMemory => DCGGUF_ERR_OUT_OF_MEMORY,
        ErrorKind::Corrupt => DCGGUF_ERR_CORRUPT,
        ErrorKind::OutOfRange => DCGGUF_ERR_OUT_OF_RANGE,
        ErrorKind::InvalidInput | ErrorKind::BadOption => DCGGUF_ERR_INVALID_ARGUMENT,
    }
}

impl From<DcError> for Error {
    fn from(e: DcError) -> Error {
        Error::new(dc_code(&e), e.to_string())
    }
}

impl From<LlamaError> for Error {
    fn from(e: LlamaError) -> Error {
        let code = match &e {
            LlamaError::Dc(_) => {
                let LlamaError::Dc(d) = e else { unreachable!() };
                return d.into();
            }
            LlamaError::Host(_) => DCGGUF_ERR_LLAMA_UNAVAILABLE,
            LlamaError::Split { .. } => DCGGUF_ERR_SPLIT_MODEL,
            // What the stream hit decides: a corrupt chunk is corrupt data, a failing read
            // is I/O; without a stream error llama.cpp refused the model itself.
            LlamaError::LoadFailed {
                cause: Some(cause), ..
            } => match cause {
                StreamError::Dc(d) => dc_code(d),
                StreamError::Io { .. } => DCGGUF_ERR_IO,
                StreamError::Panic => DCGGUF_ERR_PANIC,
            },
            LlamaError::UserLoadFailed {
                cause: Some(cause), ..
            } => match cause {
                UserRouteError::Dc(d) => dc_code(d),
                UserRouteError::Panic => DCGGUF_ERR_PANIC,
                UserRouteError::TensorMismatch { .. }
                | UserRouteError::ShortHeader
                | UserRouteError::HeaderRefused
                | UserRouteError::Describe(_) => DCGGUF_ERR_LLAMA_LOAD_FAILED,
            },
            LlamaError::LoadFailed { cause: None, .. }
            | LlamaError::UserLoadFailed { cause: None, .. }
            | LlamaError::PlainFailed(_) => DCGGUF_ERR_LLAMA_LOAD_FAILED,
            LlamaError::Io { .. } => DCGGUF_ERR_IO,
            LlamaError::BadPath(_) => DCGGUF_ERR_INVALID_ARGUMENT,
            LlamaError::Budget(_) => DCGGUF_ERR_INVALID_ARGUMENT,
            LlamaError::Lookups { source, .. } => match source {
                RefitError::Decode(d) => dc_code(d),
                _ => DCGGUF_ERR_LLAMA_LOAD_FAILED,
            },
        };
        Error::new(code, e.to_string())
    }
}

impl From<CostError> for Error {
    fn from(e: CostError) -> Error {
        let code = match &e {
            CostError::Dc(d) => dc_code(d),
            // As `DcError::Output` maps (ErrorKind).
            CostError::Output(o) => match o {
                OutputError::Io { .. } => DCGGUF_ERR_IO,
                OutputError::Exists(_)
                | OutputError::IsInput(_)
                | OutputError::NotRegular { .. }
                | OutputError::NotAFilePath(_) => DCGGUF_ERR_OUTPUT_REFUSED,
            },
            CostError::Io { .. } => DCGGUF_ERR_IO,
            CostError::StorageBps(_) => DCGGUF_ERR_INVALID_ARGUMENT,
            CostError::Threads { .. } => DCGGUF_ERR_THREADS,
            // The synthetic sample did not decode: a bug, not the caller's data.
            CostError::Codec(_) => DCGGUF_ERR_OTHER,
        };
        Error::new(code, e.to_string())
    }
}

impl From<QuantError> for Error {
    fn from(e: QuantError) -> Error {
        let code = match &e {
            QuantError::Dc(d) => dc_code(d),
            // Options out of range, or statistics / covariances / a source type the
            // quantizer cannot use: what the caller passed, as the CLI's usage and
            // invalid-input exits.
            QuantError::Usage(_)
            | QuantError::Stats(_)
            | QuantError::Cov(_)
            | QuantError::UnsupportedType { .. }
            | QuantError::Input(_) => DCGGUF_ERR_INVALID_ARGUMENT,
            // llama-imatrix (for `calib`) could not run or failed.
            QuantError::Tool(_) => DCGGUF_ERR_OTHER,
        };
        Error::new(code, e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

pub(crate) fn set_last_error(msg: &str) {
    LAST_ERROR.with(|l| {
        let mut l = l.borrow_mut();
        l.clear();
        l.push_str(msg);
    });
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    format!("internal error (panic): {what}")
}

/// Runs an export's body: catches panics, records the message, maps to a code.
pub(crate) fn guard(f: impl FnOnce() -> Result<(), Error>) -> dcgguf_result {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => DCGGUF_OK,
        Ok(Err(e)) => {
            set_last_error(&e.msg);
            e.code
        }
        Err(p) => {
            set_last_error(&panic_message(&*p));
            DCGGUF_ERR_PANIC
        }
    }
}

/// Copies `msg` into a caller buffer of `len` bytes, truncating, always NUL-terminated when
/// `len > 0`. Returns the full length of `msg` (without NUL).
///
/// # Safety
/// `buf` must be NULL or point to `len` writable bytes.
unsafe fn copy_out(msg: &str, buf: *mut c_char, len: usize) -> usize {
    if !buf.is_null() && len > 0 {
        let n = msg.len().min(len - 1);
        // SAFETY: the caller promises `len` writable bytes at `buf`; we write n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(msg.as_ptr(), buf as *mut u8, n);
            *buf.add(n) = 0;
        }
    }
    msg.len()
}

/// Writes the last error message of the calling thread (empty if none) into `buf` (`len`
/// bytes, truncated, NUL-terminated when `len > 0`). Returns the message's full length, so a
/// call with `len == 0` sizes the buffer.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_last_error(buf: *mut c_char, len: usize) -> usize {
    catch_unwind(|| {
        LAST_ERROR.with(|l| {
            // SAFETY: `buf` is NULL or has `len` writable bytes (documented contract).
            unsafe { copy_out(&l.borrow(), buf, len) }
        })
    })
    .unwrap_or(0)
}

/// Writes a generic description of `code` into `buf` (as `dcgguf_last_error`) and its full
/// length to `*out_n` (if not NULL). Unknown codes give `DCGGUF_ERR_INVALID_ARGUMENT`.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_error_message(
    code: c_int,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> dcgguf_result {
    let r = catch_unwind(|| {
        let Some(c) = code_from_int(code) else {
            return DCGGUF_ERR_INVALID_ARGUMENT;
        };
        // SAFETY: `buf` is NULL or has `len` writable bytes (documented contract).
        let n = unsafe { copy_out(c.describe(), buf, len) };
        if !out_n.is_null() {
            // SAFETY: non-NULL `out_n` points to a writable size_t (documented contract).
            unsafe { *out_n = n };
        }
        DCGGUF_OK
    });
    r.unwrap_or(DCGGUF_ERR_PANIC)
}

fn code_from_int(code: c_int) -> Option<dcgguf_result> {
    const ALL: [dcgguf_result; 20] = [
        DCGGUF_OK,
        DCGGUF_ERR_NULL_POINTER,
        DCGGUF_ERR_INVALID_ARGUMENT,
        DCGGUF_ERR_IO,
        DCGGUF_ERR_BAD_GGUF,
        DCGGUF_ERR_NOT_DC,
        DCGGUF_ERR_UNSUPPORTED_VERSION,
        DCGGUF_ERR_CORRUPT,
        DCGGUF_ERR_OUT_OF_RANGE,
        DCGGUF_ERR_BUFFER_TOO_SMALL,
        DCGGUF_ERR_NO_SUCH_TENSOR,
        DCGGUF_ERR_THREADS,
        DCGGUF_ERR_LLAMA_UNAVAILABLE,
        DCGGUF_ERR_LLAMA_LOAD_FAILED,
        DCGGUF_ERR_SPLIT_MODEL,
        DCGGUF_ERR_PANIC,
        DCGGUF_ERR_OTHER,
        DCGGUF_ERR_OUT_OF_MEMORY,
        DCGGUF_ERR_CANCELLED,
        DCGGUF_ERR_OUTPUT_REFUSED,
    ];
    ALL.into_iter().find(|c| *c as c_int == code)
}

/// Library version, a static NUL-terminated string.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Load failures keep their cause's category: a corrupt chunk is not an I/O error.
    #[test]
    fn load_failures_map_by_their_typed_cause() {
        let failed = |cause| LlamaError::LoadFailed {
            path: "m.dc.gguf".into(),
            cause,
        };
        let corrupt = StreamError::Dc(DcError::Corrupt {
            tensor: "t".into(),
            chunk: 3,
            what: "checksum mismatch".into(),
        });
        let io = StreamError::Io {
            path: "m.dc.gguf".into(),
            source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
        };
        let cases = [
            (failed(Some(corrupt)), DCGGUF_ERR_CORRUPT),
            (failed(Some(io)), DCGGUF_ERR_IO),
            (failed(Some(StreamError::Panic)), DCGGUF_ERR_PANIC),
            (failed(None), DCGGUF_ERR_LLAMA_LOAD_FAILED),
            (
                LlamaError::BadPath("NULL".into()),
                DCGGUF_ERR_INVALID_ARGUMENT,
            ),
        ];
        for (e, code) in cases {
            let msg = e.to_string();
            assert_eq!(Error::from(e).code, code, "{msg}");
        }
    }

    #[test]
    fn codes_round_trip() {
        for i in 0..20 {
            assert_eq!(code_from_int(i).map(|c| c as c_int), Some(i));
        }
        assert!(code_from_int(20).is_none());
        assert!(code_from_int(-1).is_none());
    }

    /// The hand-written header and this enum must agree name for name, number for number.
    #[test]
    fn header_result_codes_match_the_rust_enum() {
        let header = include_str!("../../ffi/dcgguf.h");
        let mut in_header: Vec<(String, c_int)> = header
            .lines()
            .filter_map(|l| {
                let (name, value) = l.trim().trim_end_matches(',').split_once('=')?;
                let name = name.trim();
                (name.starts_with("DCGGUF_OK") || name.starts_with("DCGGUF_ERR_"))
                    .then(|| (name.to_string(), value.trim().parse().ok()))
                    .and_then(|(n, v)| Some((n, v?)))
            })
            .collect();
        in_header.sort_by_key(|e| e.1);
        let in_rust: Vec<(String, c_int)> = (0..)
            .map_while(code_from_int)
            .map(|c| (format!("{c:?}"), c as c_int))
            .collect();
        assert_eq!(in_header, in_rust);
    }
}
