//! Gives this library's own file pages back after a model load, and keeps them out. "This
//! library" is whichever shared object the code is linked into: libdcgguf_preload.so (its
//! interposers call [`before_load`], [`after_load`], [`after_compute`] and
//! [`after_allocation`]) or libdcgguf.so (the C API's `dcgguf_llama_model_load` and
//! `dcgguf_llama_init_from_model` call [`before_load`], [`after_load`] and
//! [`after_context`]); each finds its own segments and file.
//!
//! A memory cgroup charges the page cache of every file a process maps, and the dynamic loader
//! brings this whole library in (3.1 MB; this VM's disk has an 8 MiB readahead window), of
//! which a load maps about 2.3 MB (the decoder and the C API around it). After the load only
//! the interposers and the budget paths run. So at the end of each load, and at the end of
//! the first computes after it and after each large allocation in them
//! ([`after_allocation`]), the read-only segments' page-table entries are dropped and the
//! file's pages that no process maps leave the page cache ([`Own::shed`]). Not after
//! the computes of a model whose computes decode (a budget, lookup tables kept compressed):
//! each next compute read the decoder back from the disk, a 64 KiB fault at a time
//! ([`after_load`]).
//!
//! In a host that links libdcgguf.so (llama-cpp-python through the `dcgguf.llama_cpp`
//! module, a C program) no code of ours runs in a compute, so the pages also go once a
//! context is made ([`after_context`]). Kept, they set the run's peak: SmolLM2 through
//! llama-cpp-python (n_ctx 1024, 32 tokens, no limit, 2026-12-08) held 2.3 MiB of
//! libdcgguf.so mapped and 3.8 MiB of it cached while it generated, and peaked 240.4 MiB
//! against plain mmap's 237.
//!
//! Two things keep what comes back small:
//!
//! - The code every compute runs (the compute and allocation interposers, the graph
//!   callbacks, the shedding itself) is one section, `.text.hot` (`#[link_section]` and
//!   build.rs), of one or two pages. Its pages are never unmapped nor dropped, so a compute
//!   touches no other page of ours. Before (session 19), the per-compute code was spread
//!   over the 2.4 MB text: 684 KiB of it stayed mapped at steady state (each fault maps the
//!   64 KiB around it), 12 KiB now.
//! - The read-only segments are split into mappings of 64 KiB ([`limit_readahead`]). On this
//!   VM's kernel (6.18) a fault in code reads around it within its mapping whatever the
//!   advice (`MADV_RANDOM` is only a hint): in one 2.4 MB mapping, the first cold call after
//!   a shed (`llama_model_free` at exit, with the weights still resident) read the whole text
//!   segment and set the run's peak (2.4 MB above the steady state); in a 64 KiB piece it
//!   reads at most the piece.
//!
//! What a load runs would then come in a 64 KiB fault at a time, each a wait for the disk:
//! before each load the file is read into the page cache in one request ([`before_load`]),
//! and once a DC load's tensor reads begin what it has not mapped is dropped again
//! ([`at_tensor_reads`]), before the load's peak.
//!
//! Only where no memory cgroup limit binds the process ([`Own::gives_back`]). Under one, the
//! limit's reclaim takes these clean file pages itself once the limit is reached, and
//! giving them back sooner only had the code that ran next read them again from the disk,
//! a 64 KiB fault at a time: MiniLM F16 (llama-embedding, cold page cache, 2 vCPUs, Intel
//! Xeon VM, 2026-12-04, 10-16 alternating rounds a cap, medians) took 132-163 major faults
//! a run kept against 256-264 given back under 92% of plain mmap's peak, 151-161 against
//! 233-246 under 94%, 85-104 against 201-203 under 96%, 43-47 against 138 under 100%; its
//! speed, paired round by round, moved by -1% to +4% (the VM's noise is about as large).
//! Without a limit the pages still go: a run's charge then peaks where plain mmap's does
//! (uncapped, 12 rounds: 381.3 MiB given back, 384.2 kept, plain mmap 381.2).
//!
//! Only segments without write permission are touched: their pages are the file's own
//! (never copied on write), so dropping a mapping only means the next access maps the same
//! bytes again. The writable segments (data, and the relocated read-only-after-relocation
//! part) hold private copies and are left alone.

use std::ffi::{CStr, OsStr, c_void};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::llama::budget::ComputeDecoding;

const PAGE: usize = 4096;

/// The page ranges of this library's loaded segments: read-only ones and writable ones.
struct Segments {
    /// Where the object is loaded: section addresses are relative to it.
    base: usize,
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
            base,
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
        base: 0,
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

/// Once per process, before the first load: limits what a fault in this library reads
/// ([`limit_readahead`]) and has each DC load's tensor reads drop what the load has not
/// mapped ([`at_tensor_reads`]). The preload library calls it from its constructor,
/// libdcgguf.so's `dcgguf_llama_model_load` before each load.
pub fn prepare() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        limit_readahead();
        crate::llama::hooks::on_tensor_reads_begin(at_tensor_reads);
    });
}

/// Asks for no readahead on faults in all of this library's segments (a hint; see the
/// module doc for what this kernel does with it), and splits the read-only ones into
/// mappings of [`PIECE`] bytes, which bound what one fault reads.
fn limit_readahead() {
    let s = own_segments(anchor());
    for &(start, end) in s.read_only.iter().chain(&s.writable) {
        // SAFETY: MADV_RANDOM only changes the kernel's readahead policy for these pages of
        // our own mapping.
        unsafe { libc::madvise(start as *mut c_void, end - start, libc::MADV_RANDOM) };
    }
    // Every other piece of the read-only segments is left out of core dumps, a flag of the
    // mapping, so that the kernel splits them into mappings of PIECE bytes. A fault in
    // code this kernel reads around within the faulting mapping whatever the advice (the
    // whole 2.4 MB text segment otherwise); a piece bounds what one fault reads. The first
    // piece of each segment stays in (it holds the ELF header that debuggers look for).
    for &(start, end) in &s.read_only {
        for piece in (start + PIECE..end).step_by(2 * PIECE) {
            let len = PIECE.min(end - piece);
            // SAFETY: MADV_DONTDUMP only changes what a core dump of this process holds.
            unsafe { libc::madvise(piece as *mut c_void, len, libc::MADV_DONTDUMP) };
        }
    }
}

/// The size of the mappings the read-only segments are split into ([`limit_readahead`]).
const PIECE: usize = 64 << 10;

/// Computes after a load that still drop the file's unmapped pages ([`after_compute`]).
static DROPS_LEFT: AtomicU32 = AtomicU32::new(0);

/// How many computes after a load end with [`Own::shed`]: the first ones run code the load did
/// not (context setup, the graph, the first batches' allocations), and each fault in it may
/// read ahead again.
const DROPS_AFTER_LOAD: u32 = 4;

/// This library as loaded: its file (kept open, so that a drop is one system call), the
/// file pages of its `.text.hot` section, and its read-only address ranges but for those
/// pages (never unmapped: the code that unmaps runs there).
struct Own {
    /// Whether it gives its pages back: not where a memory cgroup limit binds the process
    /// (`crate::llama::budget::limit::binding_cgroup`, read once, at the first load). See
    /// the module doc.
    gives_back: bool,
    file: std::fs::File,
    len: u64,
    hot: Option<(u64, u64)>,
    read_only: Vec<(usize, usize)>,
    /// All read-only ranges, `.text.hot`'s included.
    all_read_only: Vec<(usize, usize)>,
    /// The path, for the log.
    path: PathBuf,
}

/// [`Own`], found at the first load; `None` if the file cannot be opened.
#[unsafe(link_section = ".text.hot.dcgguf")]
fn own() -> Option<&'static Own> {
    static OWN: std::sync::OnceLock<Option<Own>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| {
        let path = own_path()?;
        let file = std::fs::File::open(&path).ok()?;
        let len = file.metadata().ok()?.len();
        let segments = own_segments(anchor());
        let hot = hot_pages(&file).filter(|h| h.offset.1 <= len);
        let all_read_only = droppable(&segments);
        let mut read_only = all_read_only.clone();
        if let Some(h) = &hot {
            let (start, end) = (segments.base + h.addr.0, segments.base + h.addr.1);
            read_only = read_only
                .into_iter()
                .flat_map(|(s, e)| [(s, e.min(start)), (s.max(end), e)])
                .filter(|(s, e)| s < e)
                .collect();
        }
        let binding = crate::llama::budget::limit::binding_cgroup();
        if let Some(limit) = &binding
            && crate::llama::verbose()
        {
            crate::log_line!(
                "dcgguf: {}: a memory limit binds ({}): the library keeps its pages, which \
                 the limit reclaims when it is reached",
                path.display(),
                limit.name()
            );
        }
        Some(Own {
            gives_back: binding.is_none(),
            file,
            len,
            hot: hot.map(|h| h.offset),
            read_only,
            all_read_only,
            path,
        })
    })
    .as_ref()
}

/// Before a load: read this library's file into the page cache in one request. A load runs
/// most of its code (telling a DC file from a plain GGUF, the decoder, the stream, the
/// budget's choice), which came in a 64 KiB fault at a time otherwise ([`limit_readahead`]),
/// each a wait for the disk. MiniLM F16 (llama-embedding, cold page cache, Intel Xeon VM,
/// 2026-12-02 15:20-15:50 UTC): 127 major faults a run against 199 (plain mmap 15), context
/// ready 251 ms against 264 (12 alternating rounds; plain mmap 210); SmolLM2 87 against 160,
/// BF16 39 against 115; peaks unchanged (with [`at_tensor_reads`]). Read after the file was
/// told apart (DC files only), it saved 4 faults of F16's 72: telling them apart runs most.
pub fn before_load() {
    if let Some(own) = own() {
        // SAFETY: posix_fadvise only starts reads of our own open file into the page cache.
        let _ = unsafe {
            libc::posix_fadvise(
                own.file.as_raw_fd(),
                0,
                libc::off_t::try_from(own.len).unwrap_or(0),
                libc::POSIX_FADV_WILLNEED,
            )
        };
    }
}

/// When a DC load's tensor reads begin: drop from the page cache what [`before_load`] read
/// of this library and the load has not mapped by then (most of what it will run is). Kept
/// to the end of the load instead, it was there when SmolLM2's uncapped peak formed (as the
/// last tensors are read): 140.9 MiB against 139.7 without reading ahead (plain mmap 139.4);
/// dropped here, 138.6 against 138.4 (eight alternating rounds each).
pub fn at_tensor_reads() {
    let Some(own) = own() else { return };
    let before = crate::llama::verbose().then(|| own.cached_kib());
    own.drop_unmapped(Keep::Nothing);
    if let Some(before) = before {
        let read_only: usize = own.all_read_only.iter().map(|(s, e)| e - s).sum();
        let after = if own.gives_back {
            format!(
                "{} KiB after dropping what the load has not mapped",
                own.cached_kib()
            )
        } else {
            "kept under the memory limit".to_owned()
        };
        crate::log_line!(
            "dcgguf: {}: {before} of {} KiB in the page cache as the tensor reads begin, {after}",
            own.path.display(),
            read_only / 1024,
        );
    }
}

/// After a load: drop the mappings of this library's read-only pages, then the file's
/// pages that no process maps from the page cache. `decoding`, what the model's computes
/// decode, says what stays. Under `DCGGUF_VERBOSE=1` the log says how much of the file was
/// cached before and after.
///
/// Not when the model's computes decode only its lookup tables' rows: what the load mapped
/// stays, the decoder among it, which each batch's lookup runs. Given back, the first batches
/// read it again from the disk, 64 KiB a fault: MiniLM BF16 (llama-embedding, cold page
/// cache, Intel Xeon VM, 2026-12-02, 16 alternating rounds) took 168 major faults a run
/// against 120 kept, ran at 0.98x plain mmap's speed against 0.99x (medians of the paired
/// ratios; by a switch tried before: 0.94x against 0.98x in 30 rounds, 0.93x against 0.96x in
/// 12) and peaked 0.7 MiB lower (370.7 MiB against 371.4; plain mmap 380.8). Under a budget
/// (streamed weights) it is given back once: there the limit is near, and the kernel would
/// reclaim the pages anyway.
pub fn after_load(decoding: ComputeDecoding) {
    let verbose = crate::llama::verbose();
    let path = own_path();
    let before = verbose
        .then(|| path.as_deref().and_then(cached_kib))
        .flatten();
    let gives_back = own().is_none_or(|o| o.gives_back);
    let keep_all = decoding == ComputeDecoding::LookupRows || !gives_back;
    if !keep_all && let Some(own) = own() {
        // `.text.hot` too: its pages may share a large folio (read in one piece when the
        // library was loaded) with pages of the rest, and a folio goes from the page cache
        // only whole and unmapped. Faulted back in, they come in pieces (limit_readahead).
        own.shed(Keep::Nothing);
    }
    if let (Some(before), Some(path)) = (before, &path) {
        let after = if !gives_back {
            "kept under the memory limit".to_owned()
        } else if keep_all {
            "kept: the model's computes decode its lookup tables".to_owned()
        } else {
            format!(
                "{} KiB after giving back what no process maps",
                cached_kib(path).unwrap_or(0)
            )
        };
        crate::log_line!(
            "dcgguf: {}: {before} KiB in the page cache after the load, {after}",
            path.display()
        );
    }
    // A model whose computes decode runs the decoder in each: a shed after a compute would
    // have the next read it back from the disk (MiniLM BF16's second batch under
    // llama-embedding: 35 major faults).
    let drops = match decoding {
        ComputeDecoding::Nothing => DROPS_AFTER_LOAD,
        ComputeDecoding::LookupRows | ComputeDecoding::Weights => 0,
    };
    DROPS_LEFT.store(drops, Ordering::Relaxed);
    if verbose && !keep_all {
        REPORT_LEFT.store(REPORT_AT, Ordering::Relaxed);
    }
}

/// After a context is made through libdcgguf.so's `dcgguf_llama_init_from_model`: in a host
/// without the preload's interposers no code of ours runs in a compute, so what the context's
/// creation ran (its memory check, the graph callback's setup) and what the load left go,
/// unless the model's computes decode (its graph callback runs the decoder in each; see
/// [`after_load`]). Under `DCGGUF_VERBOSE=1` the log says how much of the file was cached
/// before and after.
pub fn after_context(decoding: ComputeDecoding) {
    let Some(own) = own() else { return };
    if !own.gives_back || decoding != ComputeDecoding::Nothing {
        return;
    }
    let before = crate::llama::verbose().then(|| own.cached_kib());
    own.shed(Keep::Nothing);
    if let Some(before) = before {
        log_context(&own.path, before, own.cached_kib());
    }
}

/// The log line of [`after_context`] (`DCGGUF_VERBOSE=1`).
#[cold]
fn log_context(path: &Path, before: u64, after: u64) {
    crate::log_line!(
        "dcgguf: {}: {before} KiB in the page cache after the context was made, {after} KiB \
         after giving back what no process maps",
        path.display()
    );
}

/// After a compute (decode, encode): the first few after a load unmap what ran once
/// (context setup, the first batches) and drop what their faults read ahead. What runs on
/// every compute is in `.text.hot`, whose pages stay cached: mapping them again is a minor
/// fault, without a read from the disk.
#[unsafe(link_section = ".text.hot.dcgguf")]
pub fn after_compute() {
    let count_down = |n: u32| n.checked_sub(1);
    let shed = DROPS_LEFT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, count_down);
    let reports = REPORT_LEFT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, count_down);
    let first = reports == Ok(REPORT_AT);
    let report = reports == Ok(1);
    if shed.is_err() && !report && !first {
        return;
    }
    let Some(own) = own() else { return };
    // Counted before the shed and the log's own code.
    let first_kib = first.then(|| own.cached_kib());
    if shed.is_ok() {
        own.shed(Keep::Hot);
    }
    if let Some(kib) = first_kib {
        log_first(&own.path, kib);
    }
    if report {
        // Counted before the log's own code faults pages back in.
        let kib = own.cached_kib();
        log_steady(&own.path, kib);
    }
}

/// Under `DCGGUF_VERBOSE=1`, computes left until the log says what of the library is cached:
/// at the end of the first compute after a load (before its shed: what the run's peak, which
/// forms in it, holds of ours) and at [`REPORT_AT`].
static REPORT_LEFT: AtomicU32 = AtomicU32::new(0);

/// The log line of the first compute after a load ([`REPORT_LEFT`]).
#[cold]
fn log_first(path: &Path, kib: u64) {
    crate::log_line!(
        "dcgguf: {}: {kib} KiB in the page cache at the end of the first compute after the load",
        path.display()
    );
}

/// At which compute after a load the log says what of the library is cached: some computes
/// after the last shed, so that it tells what a steady run brings back.
const REPORT_AT: u32 = DROPS_AFTER_LOAD + 8;

/// The log line of [`REPORT_AT`] (`DCGGUF_VERBOSE=1`).
#[cold]
fn log_steady(path: &Path, kib: u64) {
    crate::log_line!(
        "dcgguf: {}: {kib} KiB in the page cache after {REPORT_AT} computes",
        path.display()
    );
}

/// After a large allocation (ggml's buffers, 1 MiB and up) inside one of the computes right
/// after a load: unmap what ran since the last shed and drop it. The peak of a run forms as
/// such a buffer fills (llama-embedding's first batch allocates a 241 MiB output buffer), and
/// the budget's check of the allocation (reading the memory limit) has just run code of ours
/// that the rest of the compute does not: MiniLM F16 held 876 KiB of the library at the end
/// of that compute when only the unmapped pages went before the allocation, 104 KiB now, and
/// peaked 364.3 MiB against 364.8 (plain mmap 364.2; Intel Xeon VM, 2026-12-02, ten
/// alternating cold runs each).
#[unsafe(link_section = ".text.hot.dcgguf")]
pub fn after_allocation(size: usize) {
    if size >= 1 << 20
        && DROPS_LEFT.load(Ordering::Relaxed) > 0
        && crate::llama::hooks::in_compute()
        && let Some(own) = own()
    {
        own.shed(Keep::Hot);
    }
}

/// What a shed leaves mapped and cached.
#[derive(Clone, Copy)]
enum Keep {
    Nothing,
    /// `.text.hot`'s pages.
    Hot,
}

impl Own {
    /// Unmaps the read-only pages (but `.text.hot`'s with [`Keep::Hot`]), then drops the
    /// unmapped ones from the page cache. Both run in `.text.hot` and call only the C
    /// library, so with [`Keep::Hot`] nothing between the unmapping and the drop faults
    /// pages of ours back in.
    #[unsafe(link_section = ".text.hot.dcgguf")]
    fn shed(&self, keep: Keep) {
        if !self.gives_back {
            return;
        }
        let ranges = match keep {
            Keep::Nothing => &self.all_read_only,
            Keep::Hot => &self.read_only,
        };
        for &(start, end) in ranges {
            // SAFETY: these pages belong to segments without write permission, mapped
            // private from our file and never written (the writable segments' pages are
            // excluded), so MADV_DONTNEED drops only page-table entries: the next access
            // maps the same file bytes again, and code running on other threads meanwhile
            // just faults.
            unsafe { libc::madvise(start as *mut c_void, end - start, libc::MADV_DONTNEED) };
        }
        self.drop_unmapped(keep);
    }

    /// KiB of this library's read-only segments in the page cache (`mincore`; only the C
    /// library is called, so counting faults nothing in).
    #[unsafe(link_section = ".text.hot.dcgguf")]
    fn cached_kib(&self) -> u64 {
        let mut pages = 0;
        let mut resident = [0u8; 256];
        for &(start, end) in &self.all_read_only {
            for at in (start..end).step_by(resident.len() * PAGE) {
                let len = (end - at).min(resident.len() * PAGE);
                // SAFETY: [at, at + len) lies in our own mapped segment, page-aligned, and
                // `resident` has a byte for each of its len / PAGE pages.
                if unsafe { libc::mincore(at as *mut c_void, len, resident.as_mut_ptr()) } == 0 {
                    pages += resident[..len / PAGE]
                        .iter()
                        .filter(|&&r| r & 1 == 1)
                        .count();
                }
            }
        }
        (pages * PAGE / 1024) as u64
    }

    /// Drops this library's file pages that no process maps from the page cache (but for
    /// `.text.hot`'s with [`Keep::Hot`]).
    #[unsafe(link_section = ".text.hot.dcgguf")]
    fn drop_unmapped(&self, keep: Keep) {
        if !self.gives_back {
            return;
        }
        let (keep_start, keep_end) = match (keep, self.hot) {
            (Keep::Hot, Some(hot)) => hot,
            _ => (self.len, self.len),
        };
        for (offset, len) in [(0, keep_start), (keep_end, self.len - keep_end)] {
            let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
            else {
                continue;
            };
            if len > 0 {
                // posix_fadvise itself, not crate::io::drop_cached: that one lies outside
                // `.text.hot`, and calling it after an unmapping would fault a piece back in.
                // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is
                // open (owned by `self`, which lives for the process).
                let _ = unsafe {
                    libc::posix_fadvise(
                        self.file.as_raw_fd(),
                        offset,
                        len,
                        libc::POSIX_FADV_DONTNEED,
                    )
                };
            }
        }
    }
}

/// The pages of a section: file offsets and addresses (relative to the object's base).
struct SectionPages {
    offset: (u64, u64),
    addr: (usize, usize),
}

/// The pages of this library's `.text.hot` section (the code every compute runs, placed
/// together by `#[link_section]` and the linker's `-z keep-text-section-prefix`, see
/// build.rs), from its section headers; `None` if it has no such section.
fn hot_pages(file: &std::fs::File) -> Option<SectionPages> {
    use std::os::unix::fs::FileExt;
    let read = |offset: u64, len: usize| {
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset).ok().map(|()| buf)
    };
    let (addr, offset, size) = elf_section(read, b".text.hot")?;
    let page = PAGE as u64;
    let addr = usize::try_from(addr).ok()?;
    let size_in_memory = usize::try_from(size).ok()?;
    Some(SectionPages {
        offset: (
            offset / page * page,
            offset.checked_add(size)?.next_multiple_of(page),
        ),
        addr: (
            addr / PAGE * PAGE,
            addr.checked_add(size_in_memory)?.next_multiple_of(PAGE),
        ),
    })
}

/// Most sections an ELF file here may declare; ours has about 30.
const MAX_SECTIONS: usize = 4096;

/// Address, file offset and size of the section named `name` in a 64-bit little-endian ELF
/// file, whose bytes `read(offset, len)` returns.
fn elf_section(
    read: impl Fn(u64, usize) -> Option<Vec<u8>>,
    name: &[u8],
) -> Option<(u64, u64, u64)> {
    let u16_at = |b: &[u8], o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |b: &[u8], o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |b: &[u8], o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let header = read(0, 64)?;
    // ELFCLASS64, ELFDATA2LSB.
    if header.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = u64_at(&header, 0x28)?;
    let shnum = usize::from(u16_at(&header, 0x3c)?).min(MAX_SECTIONS);
    let shstrndx = usize::from(u16_at(&header, 0x3e)?);
    // Elf64_Shdr, 64 bytes: sh_name u32 at 0, sh_addr u64 at 16, sh_offset u64 at 24,
    // sh_size u64 at 32.
    if u16_at(&header, 0x3a)? != 64 || shstrndx >= shnum {
        return None;
    }
    let table = read(shoff, shnum * 64)?;
    let field = |i: usize, at: usize| u64_at(&table, i * 64 + at);
    let names = read(
        field(shstrndx, 24)?,
        usize::try_from(field(shstrndx, 32)?).ok()?.min(1 << 20),
    )?;
    (0..shnum).find_map(|i| {
        let at = usize::try_from(u32_at(&table, i * 64)?).ok()?;
        let rest = names.get(at..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        (&rest[..end] == name).then(|| Some((field(i, 16)?, field(i, 24)?, field(i, 32)?)))?
    })
}
/// KiB of `path` in the page cache.
fn cached_kib(path: &Path) -> Option<u64> {
    let (_file, map) = crate::io::map_readonly(path).ok()?;
    let pages = crate::io::resident_pages(&map)
        .iter()
        .filter(|&&r| r)
        .count();
    Some((pages * crate::io::page_size() / 1024) as u64)
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
