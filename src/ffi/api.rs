//! `dcgguf_file`: open a DC-GGUF file, inspect its tensors, decompress tensors or byte ranges.

use std::ffi::{CStr, CString, c_char, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

use super::dcgguf_result::{self, *};
use super::{Error, guard};
use crate::dc::DcFile;

/// An open DC-GGUF file. Opaque to C.
pub struct dcgguf_file {
    pub(crate) dc: DcFile,
    names: Vec<CString>,
    /// The threads that decode this handle's reads of several chunks: `dcgguf_set_threads`'s,
    /// else one per CPU, started by the first such read. The handle's own, so they end with
    /// `dcgguf_free`: rayon's global pool would leave idle threads in the host for the rest
    /// of its life. None where the system gave no threads (such reads then run on rayon's
    /// global pool).
    pool: OnceLock<Option<rayon::ThreadPool>>,
}

impl dcgguf_file {
    /// Runs a read on this handle's pool where it may decode several chunks (in parallel),
    /// else on the calling thread: a read of one chunk would only pay the hand-over.
    fn run<R: Send>(&self, several_chunks: bool, f: impl FnOnce(&DcFile) -> R + Send) -> R {
        if !several_chunks {
            return f(&self.dc);
        }
        let pool = self
            .pool
            .get_or_init(|| decode_pool(crate::io::cpus()).ok());
        match pool {
            Some(p) => p.install(|| f(&self.dc)),
            None => f(&self.dc),
        }
    }

    /// Whether bytes `[offset, offset + len)` of tensor `i` lie in more than one chunk.
    fn spans_chunks(&self, i: usize, offset: u64, len: usize) -> bool {
        let chunk = u64::from(self.dc.index.tensors[i].chunk_raw).max(1);
        let last = offset.saturating_add(len as u64).saturating_sub(1);
        len > 0 && offset / chunk != last / chunk
    }

    fn tensor(&self, i: usize) -> Result<usize, Error> {
        if i < self.dc.tensor_count() {
            Ok(i)
        } else {
            Err(Error::new(
                DCGGUF_ERR_NO_SUCH_TENSOR,
                format!(
                    "tensor index {i} out of range ({} tensors)",
                    self.dc.tensor_count()
                ),
            ))
        }
    }
}

/// Borrows `*const dcgguf_file` as a reference.
///
/// # Safety
/// `f` must be NULL or a live handle from `dcgguf_open`.
unsafe fn file<'a>(f: *const dcgguf_file) -> Result<&'a dcgguf_file, Error> {
    // SAFETY: per the contract, non-NULL `f` is a live handle not being freed concurrently.
    unsafe { f.as_ref() }.ok_or_else(|| Error::null("file handle"))
}

/// Writes `v` to a non-NULL out-pointer.
///
/// # Safety
/// `out` must be NULL or valid for a write of `T`.
unsafe fn put<T>(out: *mut T, v: T) -> Result<(), Error> {
    if out.is_null() {
        return Err(Error::null("output pointer"));
    }
    // SAFETY: non-NULL and, per the contract, valid for writes.
    unsafe { out.write(v) };
    Ok(())
}

fn check_out<T>(out: *mut T) -> Result<(), Error> {
    if out.is_null() {
        Err(Error::null("output pointer"))
    } else {
        Ok(())
    }
}

/// Opens the DC-GGUF file at `path` (checks its header, index and side blobs; chunks are
/// checked as they are decoded). On success stores a new handle in `*out`.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_open(path: *const c_char, out: *mut *mut dcgguf_file) -> dcgguf_result {
    guard(|| {
        if path.is_null() {
            return Err(Error::null("path"));
        }
        check_out(out)?;
        // SAFETY: non-NULL `path` is a NUL-terminated string (documented contract).
        let p = unsafe { CStr::from_ptr(path) };
        let dc = DcFile::open(Path::new(std::ffi::OsStr::from_bytes(p.to_bytes())))?;
        let names = (0..dc.tensor_count())
            .map(|i| CString::new(dc.tensor_info(i).name.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Error::new(DCGGUF_ERR_BAD_GGUF, "a tensor name contains a NUL byte"))?;
        let h = Box::into_raw(Box::new(dcgguf_file {
            dc,
            names,
            pool: OnceLock::new(),
        }));
        // SAFETY: `out` checked non-NULL above; valid for writes per the contract.
        unsafe { put(out, h) }
    })
}

/// Closes a handle. NULL is accepted and ignored.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_free(f: *mut dcgguf_file) {
    if f.is_null() {
        return;
    }
    // SAFETY: non-NULL `f` came from dcgguf_open (Box::into_raw) and is freed once (contract).
    let b = unsafe { Box::from_raw(f) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(b)));
}

/// Decode with `n` threads for this handle (0: one per core, the default). The threads are the
/// handle's own, started by its first read of several chunks (a read of one chunk decodes on
/// the calling thread), and end with `dcgguf_free`. Do not call while another thread uses
/// the handle.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_set_threads(f: *mut dcgguf_file, n: u32) -> dcgguf_result {
    guard(|| {
        // SAFETY: non-NULL `f` is a live handle used by no other thread now (contract).
        let f = unsafe { f.as_mut() }.ok_or_else(|| Error::null("file handle"))?;
        let cap = crate::io::max_threads();
        if n as usize > cap {
            return Err(Error::new(
                DCGGUF_ERR_INVALID_ARGUMENT,
                format!("{n} threads: at most {cap} on this machine (4 per CPU)"),
            ));
        }
        f.pool = if n == 0 {
            OnceLock::new()
        } else {
            OnceLock::from(Some(decode_pool(n as usize)?))
        };
        Ok(())
    })
}

/// A pool of `n` decode threads, which end when it is dropped.
pub(super) fn decode_pool(n: usize) -> Result<rayon::ThreadPool, Error> {
    crate::io::thread_pool(n, "dcgguf").map_err(|e| Error::new(DCGGUF_ERR_THREADS, e.to_string()))
}

/// Size in bytes of the original GGUF file.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_original_size(f: *const dcgguf_file, out: *mut u64) -> dcgguf_result {
    // SAFETY (both calls): `f` and `out` follow the documented pointer contract.
    guard(|| unsafe { put(out, file(f)?.dc.original_size()) })
}

/// Size in bytes of the DC-GGUF file.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_stored_size(f: *const dcgguf_file, out: *mut u64) -> dcgguf_result {
    // SAFETY: `f` and `out` follow the documented pointer contract.
    guard(|| unsafe { put(out, file(f)?.dc.stored_size()) })
}

/// Number of tensors of the original model.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_tensor_count(f: *const dcgguf_file, out: *mut usize) -> dcgguf_result {
    // SAFETY: `f` and `out` follow the documented pointer contract.
    guard(|| unsafe { put(out, file(f)?.dc.tensor_count()) })
}

/// Index of the tensor called `name`.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_find_tensor(
    f: *const dcgguf_file,
    name: *const c_char,
    out: *mut usize,
) -> dcgguf_result {
    guard(|| {
        // SAFETY: `f` follows the documented pointer contract.
        let f = unsafe { file(f)? };
        if name.is_null() {
            return Err(Error::null("name"));
        }
        check_out(out)?;
        // SAFETY: non-NULL `name` is NUL-terminated (contract).
        let name = unsafe { CStr::from_ptr(name) };
        let i = f
            .names
            .iter()
            .position(|n| n.as_c_str() == name)
            .ok_or_else(|| {
                Error::new(
                    DCGGUF_ERR_NO_SUCH_TENSOR,
                    format!("no tensor named {:?}", name.to_string_lossy()),
                )
            })?;
        // SAFETY: `out` checked non-NULL; valid per contract.
        unsafe { put(out, i) }
    })
}

/// Name of tensor `i`: a NUL-terminated string owned by the handle, valid until
/// `dcgguf_free`.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_tensor_name(
    f: *const dcgguf_file,
    i: usize,
    out: *mut *const c_char,
) -> dcgguf_result {
    guard(|| {
        // SAFETY: `f` follows the documented pointer contract.
        let f = unsafe { file(f)? };
        let i = f.tensor(i)?;
        // SAFETY: `out` follows the documented pointer contract.
        unsafe { put(out, f.names[i].as_ptr()) }
    })
}

/// ggml type id (`enum ggml_type` value) of tensor `i`.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_tensor_type(
    f: *const dcgguf_file,
    i: usize,
    out: *mut u32,
) -> dcgguf_result {
    tensor_value(f, i, out, |dc, i| dc.tensor_info(i).ty.id())
}

/// Shape of tensor `i` in ggml order (`dims[0]` varies fastest). Writes the number of
/// dimensions to `*n_dims` and the dimensions to `dims[0..n]`; fails with
/// `DCGGUF_ERR_BUFFER_TOO_SMALL` (writing nothing) if `cap` is less than that number.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_tensor_shape(
    f: *const dcgguf_file,
    i: usize,
    dims: *mut u64,
    cap: usize,
    n_dims: *mut usize,
) -> dcgguf_result {
    guard(|| {
        // SAFETY: `f` follows the documented pointer contract.
        let f = unsafe { file(f)? };
        let i = f.tensor(i)?;
        check_out(n_dims)?;
        let shape = &f.dc.tensor_info(i).dims;
        if shape.len() > cap {
            return Err(Error::new(
                DCGGUF_ERR_BUFFER_TOO_SMALL,
                format!("tensor has {} dimensions, cap is {cap}", shape.len()),
            ));
        }
        if !shape.is_empty() {
            check_out(dims)?;
            // SAFETY: `dims` is non-NULL with room for `cap >= shape.len()` u64s (contract).
            unsafe { std::ptr::copy_nonoverlapping(shape.as_ptr(), dims, shape.len()) };
        }
        // SAFETY: checked non-NULL above.
        unsafe { put(n_dims, shape.len()) }
    })
}

/// Shared body of the per-tensor scalar getters: check the handle and index, write `get`'s
/// value to `out` on success only.
fn tensor_value<T>(
    f: *const dcgguf_file,
    i: usize,
    out: *mut T,
    get: impl FnOnce(&DcFile, usize) -> T,
) -> dcgguf_result {
    guard(|| {
        // SAFETY: `f` follows the documented pointer contract.
        let f = unsafe { file(f)? };
        let i = f.tensor(i)?;
        // SAFETY: `out` follows the documented pointer contract.
        unsafe { put(out, get(&f.dc, i)) }
    })
}

/// Size in bytes of tensor `i` in the original file.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_tensor_raw_size(
    f: *const dcgguf_file,
    i: usize,
    out: *mut u64,
) -> dcgguf_result {
    tensor_value(f, i, out, |dc, i| dc.tensor_info(i).nbytes)
}

/// Absolute offset of tensor `i`'s data in the original GGUF file.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_tensor_offset(
    f: *const dcgguf_file,
    i: usize,
    out: *mut u64,
) -> dcgguf_result {
    tensor_value(f, i, out, |dc, i| {
        dc.original.data_offset + dc.tensor_info(i).offset
    })
}

/// Size in bytes tensor `i` takes compressed in the DC file.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_tensor_stored_size(
    f: *const dcgguf_file,
    i: usize,
    out: *mut u64,
) -> dcgguf_result {
    tensor_value(f, i, out, |dc, i| dc.index.tensors[i].stored_bytes())
}

/// Borrows a caller buffer.
///
/// # Safety
/// `buf` must be NULL or valid for `len` writable bytes.
unsafe fn out_buf<'a>(buf: *mut c_void, len: usize) -> Result<&'a mut [u8], Error> {
    if len == 0 {
        return Ok(&mut []);
    }
    if buf.is_null() {
        return Err(Error::null("buffer"));
    }
    // SAFETY: non-NULL with `len` writable bytes, not aliased during the call (contract).
    Ok(unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, len) })
}

/// Decompresses all of tensor `i` into `buf` (`len` must be at least its raw size; exactly
/// that many bytes are written). Every chunk's checksum is checked; on failure the buffer's
/// contents are unspecified and the last error names the tensor and chunk.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_read_tensor(
    f: *const dcgguf_file,
    i: usize,
    buf: *mut c_void,
    len: usize,
) -> dcgguf_result {
    guard(|| {
        // SAFETY: `f` follows the documented pointer contract.
        let f = unsafe { file(f)? };
        let i = f.tensor(i)?;
        let n = f.dc.tensor_info(i).nbytes;
        if (len as u64) < n {
            return Err(Error::new(
                DCGGUF_ERR_BUFFER_TOO_SMALL,
                format!("tensor needs {n} bytes, buffer has {len}"),
            ));
        }
        // SAFETY: `buf` follows the documented pointer contract.
        let dst = unsafe { out_buf(buf, n as usize)? };
        f.run(f.spans_chunks(i, 0, dst.len()), |dc| {
            dc.read_tensor(i, 0, dst)
        })?;
        Ok(())
    })
}

/// Decompresses bytes `[offset, offset + len)` of tensor `i` into `buf`.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_read_tensor_range(
    f: *const dcgguf_file,
    i: usize,
    offset: u64,
    buf: *mut c_void,
    len: usize,
) -> dcgguf_result {
    guard(|| {
        // SAFETY: `f` follows the documented pointer contract.
        let f = unsafe { file(f)? };
        let i = f.tensor(i)?;
        // SAFETY: `buf` follows the documented pointer contract.
        let dst = unsafe { out_buf(buf, len)? };
        let several = f.spans_chunks(i, offset, dst.len());
        f.run(several, |dc| dc.read_tensor(i, offset, dst))?;
        Ok(())
    })
}

/// Reads up to `len` bytes of the ORIGINAL GGUF file from `offset` into `buf`; writes the
/// count (fewer only at the end of the file, 0 past it) to `*out_n`.
#[unsafe(no_mangle)]
pub extern "C" fn dcgguf_read_at(
    f: *const dcgguf_file,
    offset: u64,
    buf: *mut c_void,
    len: usize,
    out_n: *mut usize,
) -> dcgguf_result {
    guard(|| {
        // SAFETY: `f` follows the documented pointer contract.
        let f = unsafe { file(f)? };
        check_out(out_n)?;
        // SAFETY: `buf` follows the documented pointer contract.
        let dst = unsafe { out_buf(buf, len)? };
        // One chunk's bytes, or none (the header, past the end): no hand-over.
        let several =
            f.dc.chunk_range_at(offset)
                .is_none_or(|c| offset.saturating_add(dst.len() as u64) > c.end);
        let n = f.run(several, |dc| dc.read_at(offset, dst))?;
        // SAFETY: checked non-NULL above.
        unsafe { put(out_n, n) }
    })
}
