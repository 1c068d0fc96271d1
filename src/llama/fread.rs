//! Direct reads for our cookie `FILE *`s.
//!
//! glibc's `fread` on a `fopencookie` stream always goes through the stream buffer: every
//! byte is decoded into that buffer, then copied to the caller, in buffer-sized pieces.
//! libdcgguf_preload.so exports `fread` (see `hooks::fread_or_real`); for a stream
//! registered here it serves the request itself, decoding whole chunks straight into the caller's memory (for llama.cpp:
//! the tensor's final place) in one parallel pass, and it learns where each tensor lives,
//! which the memory-budget mode needs. Every other stream goes to the C library's `fread`.
//!
//! This writes fields of glibc's private `struct _IO_FILE`, so it compiles only for
//! linux-gnu; elsewhere [`fread_ours`] never claims a stream (and `stream::CookieFile::open`
//! fails at run time, so no stream of ours exists).

// Off linux-gnu the glibc parts are compiled out and some helpers go unused.
#![cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(unused))]

use std::ffi::c_void;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
use std::ffi::{c_char, c_int};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::stream::Stream;

/// Open cookie streams: (`FILE *`, its `Box<Stream>` cookie).
static STREAMS: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
/// `STREAMS.len()`, read without the lock so that other streams pay one atomic load.
static LIVE: AtomicUsize = AtomicUsize::new(0);

pub(super) fn register(fp: *mut libc::FILE, cookie: *mut c_void) {
    let mut s = STREAMS.lock().unwrap_or_else(|e| e.into_inner());
    s.push((fp as usize, cookie as usize));
    LIVE.store(s.len(), Ordering::Release);
}

pub(super) fn unregister(fp: *mut libc::FILE) {
    let mut s = STREAMS.lock().unwrap_or_else(|e| e.into_inner());
    s.retain(|&(f, _)| f != fp as usize);
    LIVE.store(s.len(), Ordering::Release);
}

fn cookie_of(fp: *mut libc::FILE) -> Option<usize> {
    if LIVE.load(Ordering::Acquire) == 0 {
        return None;
    }
    let s = STREAMS.lock().unwrap_or_else(|e| e.into_inner());
    s.iter().find(|&&(f, _)| f == fp as usize).map(|&(_, c)| c)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
/// The start of glibc's `struct _IO_FILE` (stable since glibc 2.1 on LP64 targets): the
/// flags word and the read-buffer pointers.
#[repr(C)]
struct GlibcFileHead {
    flags: c_int,
    read_ptr: *mut c_char,
    read_end: *mut c_char,
}
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const IO_EOF_SEEN: c_int = 0x10;
/// Reads smaller than this go through glibc's buffer. Below the smallest tensor a memory
/// budget streams (`budget::MIN_STREAMED`), so deferral always sees those reads.
const DIRECT_MIN: usize = 64 << 10;
const _: () = assert!(DIRECT_MIN as u64 <= crate::llama::budget::MIN_STREAMED);
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const IO_ERR_SEEN: c_int = 0x20;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    fn flockfile(fp: *mut libc::FILE);
    fn funlockfile(fp: *mut libc::FILE);
}

/// Serves `fread(ptr, size, n, fp)` when `fp` is one of our streams: first the bytes glibc
/// still holds in its buffer, then the rest straight from the stream; `None` hands the call
/// to the C library's `fread`.
///
/// # Safety
/// The arguments of a valid `fread` call: `ptr` has `size * n` writable bytes and `fp` is
/// an open stream.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub unsafe fn fread_ours(
    ptr: *mut c_void,
    size: usize,
    n: usize,
    fp: *mut libc::FILE,
) -> Option<usize> {
    let total = size.checked_mul(n)?;
    // Small reads (GGUF metadata: hundreds of thousands of strings) are cheapest as copies
    // out of glibc's stream buffer; only tensor-sized reads gain from decoding in place.
    if total < DIRECT_MIN || ptr.is_null() {
        return None;
    }
    let cookie = cookie_of(fp)?;
    // SAFETY: `fp` is one of our open streams (registered until just before fclose), so it
    // is a glibc FILE; its lock serializes us with glibc's own calls and the cookie callbacks.
    unsafe { flockfile(fp) };
    let head = fp as *mut GlibcFileHead;
    // SAFETY: `head` points to the start of a live glibc FILE, whose first fields have this
    // layout; we hold the FILE lock.
    let (read_ptr, read_end) = unsafe { ((*head).read_ptr, (*head).read_end) };
    // Bytes glibc still holds in its buffer (after a seek that landed inside it) come first;
    // the stream's position is where that buffer ends.
    let buffered = if read_ptr.is_null() || read_end <= read_ptr {
        0
    } else {
        // SAFETY: both pointers lie in glibc's buffer of this FILE, read_ptr <= read_end.
        unsafe { read_end.offset_from(read_ptr) as usize }
    };
    let from_buffer = buffered.min(total);
    // SAFETY: `ptr` has `total` writable bytes (fread's contract); the buffer holds
    // `buffered` readable bytes at read_ptr; they do not overlap (ours vs glibc's memory).
    unsafe {
        std::ptr::copy_nonoverlapping(read_ptr as *const u8, ptr as *mut u8, from_buffer);
        (*head).read_ptr = read_ptr.add(from_buffer);
    }
    let result = if from_buffer == total {
        Some(n)
    } else {
        // SAFETY: the cookie is the live `Box<Stream>` of this FILE, touched only under the
        // FILE lock, which we hold.
        let stream = unsafe { &mut *(cookie as *mut Stream) };
        // SAFETY: `ptr` has `total` writable bytes (fread's contract), of which the first
        // `from_buffer` are filled; the rest is this slice.
        let dst = unsafe {
            std::slice::from_raw_parts_mut((ptr as *mut u8).add(from_buffer), total - from_buffer)
        };
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            stream.read_into_caller(dst)
        }))
        .unwrap_or(Err(super::stream::StreamError::Panic));
        Some(match read {
            Ok(got) => {
                if from_buffer + got < total {
                    // SAFETY: as above; glibc's feof reads this flag.
                    unsafe { (*head).flags |= IO_EOF_SEEN };
                }
                (from_buffer + got) / size
            }
            Err(e) => {
                stream.record(e);
                // SAFETY: as above; glibc's ferror reads this flag.
                unsafe { (*head).flags |= IO_ERR_SEEN };
                // SAFETY: this thread's errno slot.
                unsafe { *libc::__errno_location() = libc::EIO };
                from_buffer / size
            }
        })
    };
    // SAFETY: balances flockfile above.
    unsafe { funlockfile(fp) };
    result
}

/// Without glibc there are no cookie streams of ours (see `stream::CookieFile`): every call
/// goes to the C library's `fread`.
///
/// # Safety
/// None needed; the signature matches the glibc version.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub unsafe fn fread_ours(
    _ptr: *mut c_void,
    _size: usize,
    _n: usize,
    _fp: *mut libc::FILE,
) -> Option<usize> {
    None
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;
    use crate::llama::stream::{CookieFile, Source};
    use std::path::Path;

    /// A small read fills glibc's buffer; a tensor-sized read after a seek back into that
    /// buffer must return the buffered bytes, then the rest straight from the stream.
    #[test]
    fn buffered_bytes_come_first_then_the_stream() {
        let bytes: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let path = std::env::temp_dir().join(format!("dcgguf-fread-{}", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let stream = Stream::new(
            Path::new("t"),
            Source::Plain(std::fs::File::open(&path).unwrap()),
            None,
        )
        .unwrap();
        let file = CookieFile::open(stream).unwrap();
        let fp = file.as_ptr();
        let mut small = [0u8; 16];
        // SAFETY: `fp` is the open cookie FILE; the buffers have the sizes passed.
        unsafe {
            assert_eq!(libc::fseek(fp, 1000, libc::SEEK_SET), 0);
            assert_eq!(libc::fread(small.as_mut_ptr().cast(), 1, 16, fp), 16);
            // Back into what glibc buffered.
            assert_eq!(libc::fseek(fp, 5000, libc::SEEK_SET), 0);
        }
        assert_eq!(small, bytes[1000..1016]);
        let head = fp as *mut GlibcFileHead;
        // SAFETY: the start of the live glibc FILE, read without other users.
        let held = unsafe { (*head).read_end.offset_from((*head).read_ptr) };
        assert!(
            held > 0,
            "glibc kept no buffered bytes: this test needs some"
        );
        let mut big = vec![0u8; 1_000_000];
        // SAFETY: as above.
        let got = unsafe { fread_ours(big.as_mut_ptr().cast(), 1000, 1000, fp) };
        assert_eq!(got, Some(1000));
        assert!(big == bytes[5000..1_005_000]);
        // The FILE's position follows: the next bytes are the ones after.
        // SAFETY: as above.
        unsafe {
            assert_eq!(libc::ftell(fp), 1_005_000);
            assert_eq!(libc::fread(small.as_mut_ptr().cast(), 1, 16, fp), 16);
        }
        assert_eq!(small, bytes[1_005_000..1_005_016]);
        // Past the end: a short count and EOF.
        let mut rest = vec![0u8; 1_500_000];
        // SAFETY: as above.
        let got = unsafe { fread_ours(rest.as_mut_ptr().cast(), 1, rest.len(), fp) };
        assert_eq!(got, Some(2_000_000 - 1_005_016));
        // SAFETY: as above.
        assert_ne!(unsafe { libc::feof(fp) }, 0);
        drop(file);
        std::fs::remove_file(&path).unwrap();
    }
}
