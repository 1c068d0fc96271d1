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

#[unsafe(link_section = ".text.hot.dcgguf")]
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
    read_base: *mut c_char,
}
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const IO_EOF_SEEN: c_int = 0x10;
/// Reads smaller than this go through glibc's buffer. Below the smallest tensor a memory
/// budget streams (`budget::MIN_STREAMED`), so deferral always sees those reads.
const DIRECT_MIN: usize = 64 << 10;
const _: () = assert!(DIRECT_MIN as u64 <= crate::llama::budget::MIN_STREAMED);
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const IO_ERR_SEEN: c_int = 0x20;
/// glibc's flags for a stream reading from its `ungetc` backup area, and one in write mode:
/// such seeks are left to glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const IO_IN_BACKUP: c_int = 0x100;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const IO_CURRENTLY_PUTTING: c_int = 0x800;

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
#[unsafe(link_section = ".text.hot.dcgguf")]
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
        // The stream moves past what glibc buffered: that buffer no longer ends at the
        // stream's position, so it is marked empty (a seek back into it must not use it).
        // SAFETY: glibc's read pointers of this FILE, under its lock; read_base, read_ptr and
        // read_end all become read_end (a consumed, empty buffer).
        unsafe {
            (*head).read_base = (*head).read_end;
            (*head).read_ptr = (*head).read_end;
        }
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

/// Serves `fseeko(fp, offset, whence)` when `fp` is one of our streams; `None` leaves the
/// call to the C library.
///
/// glibc seeks a `fopencookie` stream to the buffer-aligned offset below the target and
/// refills its whole buffer from there (`_IO_file_seekoff`), so every seek before a tensor
/// read would decode the chunk holding the bytes before the tensor (another tensor's tail),
/// only to throw them away. Here a seek inside the bytes glibc holds moves its read
/// pointer, and any other seek empties its buffer and moves the stream: nothing is read.
///
/// # Safety
/// `fp` is a valid `FILE *` (the contract of `fseeko(3)`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[unsafe(link_section = ".text.hot.dcgguf")]
pub unsafe fn fseek_ours(fp: *mut libc::FILE, offset: i64, whence: c_int) -> Option<c_int> {
    let cookie = cookie_of(fp)?;
    // SAFETY: as in fread_ours: `fp` is one of our open glibc streams; we hold its lock
    // while we read and write its buffer pointers and the stream behind the cookie.
    unsafe { flockfile(fp) };
    let head = fp as *mut GlibcFileHead;
    // SAFETY: the start of the live glibc FILE, whose lock we hold.
    let (flags, read_ptr, read_end, read_base) = unsafe {
        (
            (*head).flags,
            (*head).read_ptr,
            (*head).read_end,
            (*head).read_base,
        )
    };
    if flags & (IO_IN_BACKUP | IO_CURRENTLY_PUTTING) != 0 {
        // SAFETY: balances flockfile above.
        unsafe { funlockfile(fp) };
        return None;
    }
    // SAFETY: the cookie is the live `Box<Stream>` of this FILE, touched only under the
    // FILE lock, which we hold.
    let stream = unsafe { &mut *(cookie as *mut Stream) };
    let span = |from: *mut c_char, to: *mut c_char| -> u64 {
        if from.is_null() || to <= from {
            0
        } else {
            // SAFETY: both pointers lie in glibc's buffer of this FILE, from < to.
            unsafe { to.offset_from(from) as u64 }
        }
    };
    // glibc's buffer holds the stream's bytes [stream.pos - buffered, stream.pos), of which
    // the caller has consumed those before read_ptr.
    let (held, buffered) = (span(read_ptr, read_end), span(read_base, read_end));
    let here = stream.position() - held;
    let target = match whence {
        libc::SEEK_SET => Some(offset),
        libc::SEEK_CUR => (here as i64).checked_add(offset),
        libc::SEEK_END => (stream.size() as i64).checked_add(offset),
        _ => None,
    }
    .filter(|&t| t >= 0)
    .map(|t| t as u64);
    let result = match target {
        None => {
            // SAFETY: this thread's errno slot.
            unsafe { *libc::__errno_location() = libc::EINVAL };
            -1
        }
        Some(t) => {
            let window_start = stream.position() - buffered;
            // SAFETY: the FILE's own buffer pointers, under its lock: read_ptr moves within
            // [read_base, read_end] (the target lies in that window), or all three become
            // read_base (an empty buffer, which glibc refills at the stream's position).
            unsafe {
                if buffered > 0 && (window_start..=stream.position()).contains(&t) {
                    (*head).read_ptr = read_base.add((t - window_start) as usize);
                } else {
                    (*head).read_ptr = read_base;
                    (*head).read_end = read_base;
                    stream.set_position(t);
                }
                // fseek clears end-of-file.
                (*head).flags &= !IO_EOF_SEEN;
            }
            0
        }
    };
    // SAFETY: balances flockfile above.
    unsafe { funlockfile(fp) };
    Some(result)
}

/// Without glibc no stream is ours: every seek goes to the C library.
///
/// # Safety
/// None needed; the signature matches the glibc version.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub unsafe fn fseek_ours(
    _fp: *mut libc::FILE,
    _offset: i64,
    _whence: libc::c_int,
) -> Option<libc::c_int> {
    None
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

    /// One of our cookie `FILE *`s over a temporary file holding `bytes` (remove the file
    /// after dropping the stream).
    fn cookie_file_over(bytes: &[u8], tag: &str) -> (CookieFile, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("dcgguf-{tag}-{}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let stream = Stream::new(
            Path::new("t"),
            Source::Plain(std::fs::File::open(&path).unwrap()),
            None,
        )
        .unwrap();
        (CookieFile::open(stream).unwrap(), path)
    }

    /// A small read fills glibc's buffer; a tensor-sized read after a seek back into that
    /// buffer must return the buffered bytes, then the rest straight from the stream.
    #[test]
    fn buffered_bytes_come_first_then_the_stream() {
        let bytes: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let (file, path) = cookie_file_over(&bytes, "fread");
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

    /// Seeks of every kind, inside and outside what glibc buffered, then reads small
    /// (through glibc's buffer) and large (ours), against the file's bytes; `ftell` and EOF
    /// follow. No seek may read: the stream's position is where the seek put it.
    #[test]
    fn seeks_move_without_reading_and_reads_follow() {
        let bytes: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i * 13 + i / 509) as u8)
            .collect();
        let (file, path) = cookie_file_over(&bytes, "fseek");
        let fp = file.as_ptr();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut at: u64 = 0;
        for step in 0..400 {
            let (offset, whence, target) = match next(3) {
                0 => {
                    let t = next(bytes.len() as u64 + 10);
                    (t as i64, libc::SEEK_SET, t)
                }
                1 => {
                    // Mostly short hops, which land inside glibc's buffer.
                    let d = next(600_000) as i64 - 300_000;
                    let t = (at as i64 + d).max(0);
                    (t - at as i64, libc::SEEK_CUR, t as u64)
                }
                _ => {
                    let back = next(bytes.len() as u64);
                    (-(back as i64), libc::SEEK_END, bytes.len() as u64 - back)
                }
            };
            // SAFETY: `fp` is the open cookie FILE.
            assert_eq!(
                unsafe { fseek_ours(fp, offset, whence) },
                Some(0),
                "step {step}"
            );
            // SAFETY: as above.
            assert_eq!(unsafe { libc::ftell(fp) } as u64, target, "step {step}");
            // SAFETY: as above.
            assert_eq!(
                unsafe { libc::feof(fp) },
                0,
                "fseek clears EOF (step {step})"
            );
            let len = if next(2) == 0 {
                1 + next(4000)
            } else {
                65_536 + next(400_000)
            } as usize;
            let mut buf = vec![0u8; len];
            // SAFETY: as above; `buf` has `len` bytes.
            let got = unsafe {
                if len < 65_536 {
                    libc::fread(buf.as_mut_ptr().cast(), 1, len, fp)
                } else {
                    fread_ours(buf.as_mut_ptr().cast(), 1, len, fp).unwrap()
                }
            };
            let from = (target as usize).min(bytes.len());
            let want = &bytes[from..(from + len).min(bytes.len())];
            assert_eq!(got, want.len(), "step {step}");
            assert!(buf[..got] == *want, "step {step}: wrong bytes");
            at = target + got as u64;
            // SAFETY: as above.
            assert_eq!(unsafe { libc::ftell(fp) } as u64, at, "step {step}");
        }
        // A seek before the start fails with EINVAL and moves nothing.
        // SAFETY: as above.
        unsafe {
            assert_eq!(fseek_ours(fp, -1, libc::SEEK_SET), Some(-1));
            assert_eq!(*libc::__errno_location(), libc::EINVAL);
            assert_eq!(libc::ftell(fp) as u64, at);
        }
        // Not our stream: left to the C library.
        // SAFETY: a valid FILE of the C library's own.
        unsafe {
            let other = libc::fopen(c"/dev/null".as_ptr(), c"r".as_ptr());
            assert!(!other.is_null());
            assert_eq!(fseek_ours(other, 0, libc::SEEK_SET), None);
            libc::fclose(other);
        }
        drop(file);
        std::fs::remove_file(&path).unwrap();
    }
}
