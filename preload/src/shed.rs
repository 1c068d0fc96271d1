//! Gives this library's own file pages back after a model load.
//!
//! A memory cgroup charges the page cache of every file a process maps, and the dynamic loader
//! brings this whole library in (3.1 MB; this VM's disk has an 8 MiB readahead window), of
//! which a load maps about 2.3 MB (the decoder and the C API around it). After the load only
//! the interposers and the budget paths run. So at the end of each load the read-only
//! segments' page-table entries are dropped and the file's pages that no process maps leave
//! the page cache. Code that runs later faults back in, and on this VM's kernel each such
//! fault reads 1.4-1.7 MB around it whatever the mapping's advice (`MADV_RANDOM`, set when the
//! library is loaded, is only a hint): so the first computes after a load drop the unmapped
//! pages once more, at their end and before each of their large allocations, where a run's
//! peak forms (MiniLM BF16 under llama-embedding: 1.3-1.6 MB less at the peak).
//!
//! Only segments without write permission are touched: their pages are the file's own
//! (never copied on write), so dropping a mapping only means the next access maps the same
//! bytes again. The writable segments (data, and the relocated read-only-after-relocation
//! part) hold private copies and are left alone.

use std::ffi::{CStr, OsStr, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

const PAGE: usize = 4096;

/// The page ranges of this library's loaded segments: read-only ones and writable ones.
struct Segments {
    read_only: Vec<(usize, usize)>,
    writable: Vec<(usize, usize)>,
}

/// This library's segments, found by looking for the object that contains `anchor`.
fn own_segments(anchor: usize) -> Segments {
    struct Search {
        anchor: usize,
        found: Option<Segments>,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid dl_phdr_info for the duration of the call,
        // whose dlpi_phdr points to dlpi_phnum program headers, and `data` is the &mut Search
        // given to it below, alive for the whole iteration.
        let (info, search) = unsafe { (&*info, &mut *data.cast::<Search>()) };
        let phdrs = if info.dlpi_phdr.is_null() {
            &[][..]
        } else {
            // SAFETY: as above.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
        };
        let base = info.dlpi_addr as usize;
        let range = |p: &libc::Elf64_Phdr| {
            let start = base + p.p_vaddr as usize;
            (
                start & !(PAGE - 1),
                (start + p.p_memsz as usize).next_multiple_of(PAGE),
            )
        };
        let loads = || phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD);
        if !loads().any(|p| {
            let (s, e) = range(p);
            (s..e).contains(&search.anchor)
        }) {
            return 0;
        }
        search.found = Some(Segments {
            read_only: loads()
                .filter(|p| p.p_flags & libc::PF_W == 0)
                .map(range)
                .collect(),
            writable: loads()
                .filter(|p| p.p_flags & libc::PF_W != 0)
                .map(range)
                .collect(),
        });
        1
    }
    let mut search = Search {
        anchor,
        found: None,
    };
    // SAFETY: `each` follows dl_iterate_phdr's callback contract and only reads what it is
    // given; `search` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut search).cast()) };
    search.found.unwrap_or(Segments {
        read_only: Vec::new(),
        writable: Vec::new(),
    })
}

/// The read-only ranges minus every page a writable segment shares with them.
fn droppable(s: &Segments) -> Vec<(usize, usize)> {
    s.read_only
        .iter()
        .filter_map(|&(mut start, mut end)| {
            for &(ws, we) in &s.writable {
                if ws < end && start < we {
                    // Overlap at one end (segments are ordered and do not nest).
                    if ws <= start {
                        start = we;
                    } else {
                        end = ws;
                    }
                }
            }
            (start < end).then_some((start, end))
        })
        .collect()
}

fn anchor() -> usize {
    own_segments as *const () as usize
}

/// At load: ask for no readahead on faults in all of this library's segments (a hint; see the
/// module doc for what this kernel does with it).
pub fn no_readahead() {
    let s = own_segments(anchor());
    for &(start, end) in s.read_only.iter().chain(&s.writable) {
        // SAFETY: MADV_RANDOM only changes the kernel's readahead policy for these pages of
        // our own mapping.
        unsafe { libc::madvise(start as *mut c_void, end - start, libc::MADV_RANDOM) };
    }
}

/// Computes after a load that still drop the file's unmapped pages ([`after_compute`]).
static DROPS_LEFT: AtomicU32 = AtomicU32::new(0);

/// How many computes after a load end with [`drop_unmapped`]: the first ones run code the load
/// did not (context setup, the graph), and each fault in it may read ahead again.
const DROPS_AFTER_LOAD: u32 = 2;

/// After a load: drop the mappings of this library's read-only pages, then the file's
/// pages that no process maps from the page cache. Under `DCGGUF_VERBOSE=1` the log says how
/// much of the file was cached before and after.
pub fn after_load() {
    for (start, end) in droppable(&own_segments(anchor())) {
        // SAFETY: these pages belong to segments without write permission, mapped private
        // from our file and never written (the writable segments' pages are excluded), so
        // MADV_DONTNEED drops only page-table entries: the next access maps the same file
        // bytes again, and code running on other threads meanwhile just faults.
        unsafe { libc::madvise(start as *mut c_void, end - start, libc::MADV_DONTNEED) };
    }
    let verbose = std::env::var_os("DCGGUF_VERBOSE").is_some_and(|v| v != "0");
    let path = own_path();
    let before = verbose
        .then(|| path.as_deref().and_then(cached_kib))
        .flatten();
    drop_unmapped();
    if let (Some(before), Some(path)) = (before, &path) {
        dcgguf::log_line!(
            "dcgguf: {}: {} KiB in the page cache after the load, {} KiB after giving back \
             what no process maps",
            path.display(),
            before,
            cached_kib(path).unwrap_or(0)
        );
    }
    DROPS_LEFT.store(DROPS_AFTER_LOAD, Ordering::Relaxed);
}

/// After a compute (decode, encode): the first few after a load drop what their faults read
/// ahead; mapped pages (the code that runs per batch) stay.
pub fn after_compute() {
    let left = DROPS_LEFT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    if left.is_ok() {
        drop_unmapped();
    }
}

/// Before a large allocation (ggml's buffers, 1 MiB and up) in the computes right after a
/// load: drop the unmapped pages first. The peak of a run forms there (llama-embedding's
/// first batch allocates a 241 MiB output buffer), and the pages that the faults since the
/// last drop read ahead would count in it.
pub fn before_allocation(size: usize) {
    if size >= 1 << 20 && DROPS_LEFT.load(Ordering::Relaxed) > 0 {
        drop_unmapped();
    }
}

/// Drops this library's file pages that no process maps from the page cache.
fn drop_unmapped() {
    if let Some(file) = own_path().and_then(|p| std::fs::File::open(p).ok()) {
        let len = file.metadata().map_or(0, |m| m.len());
        dcgguf::io::drop_cached(&file, 0, len);
    }
}

/// KiB of `path` in the page cache.
fn cached_kib(path: &Path) -> Option<u64> {
    let (_file, map) = dcgguf::io::map_readonly(path).ok()?;
    let pages = dcgguf::io::resident_pages(&map)
        .iter()
        .filter(|&&r| r)
        .count();
    Some((pages * dcgguf::io::page_size() / 1024) as u64)
}

/// This library's file, as the dynamic loader opened it.
fn own_path() -> Option<PathBuf> {
    // SAFETY: an all-zero Dl_info is a valid value for dladdr to overwrite.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads our own code address and fills `info`.
    if unsafe { libc::dladdr(anchor() as *const c_void, &mut info) } == 0
        || info.dli_fname.is_null()
    {
        return None;
    }
    // SAFETY: dli_fname is the NUL-terminated path of our object, owned by the loader for as
    // long as the object is loaded; it is copied out at once.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Some(PathBuf::from(OsStr::from_bytes(name.to_bytes())))
}
