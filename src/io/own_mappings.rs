//! A global allocator for a library that runs inside someone else's process (the preload
//! library and the C API library, capi/, declare it): allocations of 128 KiB and up get an anonymous mapping of their own;
//! smaller ones go to a dlmalloc of our own (the `dlmalloc` crate, whose memory comes from
//! anonymous mappings too), never to the C library's `malloc`: nothing we allocate lives in,
//! or changes, the host's heap.
//!
//! Why: by default a Rust library's allocations share the host's heap. A model load makes
//! many short-lived buffers (chunk reads, indexes, plans), and in glibc's main heap they
//! leave free chunks behind, below whatever stays live. The
//! host's next big `calloc`s then land in those chunks, which glibc must clear, instead of
//! fresh heap top, which it knows is zero and leaves untouched: measured on SmolLM2 under
//! llama-completion, the four `calloc(132736, 4)` hash arrays of `ggml_backend_sched_new`
//! were whole-resident in the DC process (4 x 518 KiB) and 35-130 pages each in plain
//! llama.cpp's, 764 KiB of a 900 KiB heap gap at steady state. A big buffer of ours freed
//! through glibc also raises its dynamic mmap threshold, so that the host's later big
//! allocations move into the heap. Mapped on their own, our big buffers leave nothing in the
//! heap when they go and never touch glibc's threshold. Measured (SmolLM2, llama-completion,
//! 2026-11-30): heap resident at rest 18388 KiB against plain llama.cpp's 18520 (19340
//! before), uncapped peak charge 137.6-137.7 MiB against 138.5-138.7 (plain 138.5-138.7),
//! llama.cpp's load time within the runs' spread (467-528 ms against 414-724); the price,
//! a fresh mapping's zero-fill faults for each big buffer, did not show.
//!
//! Small blocks were still glibc's until 2026-12-01, and the host's heap at rest then
//! depended on chance: glibc gives every thread a cache of small chunks and an arena of its
//! own, so which free chunks our load's small short-lived buffers left in the main heap
//! depended on which thread freed what when (the load's decode runs on llama.cpp's OpenMP
//! threads too), and the scheduler's hash arrays landed in zero, one or two of them. Measured
//! (SmolLM2, llama-completion at rest, 16 runs, 2026-12-01): heap resident 18380-18400 KiB in
//! 2 runs, 18770-18820 in 10, 19260-19320 in 4, against plain llama.cpp's 18528-18532 every
//! time; with the small blocks in our dlmalloc, 18524 KiB in each of 15 runs (3 of them with
//! the page cache dropped first). The uncapped peak charge, before and after: SmolLM2
//! 137.7-138.1 MiB and 138.0, Qwen2.5-Coder-1.5B 1039.5-1039.7 and 1039.8-1040.2, MiniLM
//! 375.8-375.9 and 376.2; llama.cpp's load times within their spread.
//!
//! The path an allocation takes depends on its layout alone (size and alignment), which Rust
//! passes back unchanged to `dealloc`, so each pointer is freed the way it was allocated. The
//! library hands no Rust allocation to C code to free, nor frees C memory through Rust.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// Allocations of this many bytes and up are mapped on their own (glibc's own default mmap
/// threshold, before large frees raise it).
const OWN_MAPPING_FROM: usize = 128 << 10;

/// Mappings are whole pages of at least this alignment (4 KiB on every Linux target we build).
const PAGE: usize = 4096;

/// The allocator (`#[global_allocator] static A: OwnMappings = OwnMappings;`).
pub struct OwnMappings;

/// Where blocks below [`OWN_MAPPING_FROM`] live: one dlmalloc behind a pthread mutex, its
/// segments anonymous mappings (it trims and unmaps what it no longer needs).
static SMALL: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// Makes a child of `fork` able to allocate: the small blocks' lock is taken around each
/// `fork` (`pthread_atfork`) so that no child inherits it held by a thread it does not have,
/// as glibc's malloc does for its own. Run before the first small block (on every small
/// allocation: after the first, one atomic load), so that it holds however the library was
/// linked (libdcgguf.a has no constructor a program is sure to run).
fn keep_usable_after_fork() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: dlmalloc asks to be called before allocations race with it: `Once` runs it once,
    // before the first small block and with no other thread inside it (the others wait), and
    // it touches nothing but its lock and the atfork registration (glibc's, which allocates
    // with glibc's malloc, not through us).
    ONCE.call_once(|| unsafe { dlmalloc::enable_alloc_after_fork() });
}

/// [`keep_usable_after_fork`] when the library is loaded, before a host's threads can race a
/// `fork` with its first small block: a fork while that first block's thread was inside the
/// registration (holding the lock, the `Once` running) left a child that hung in its first
/// allocation (the fork test below: 5 of 100 runs on 2026-12-02; with a 5 ms sleep inside
/// the registration, 2 of 10 runs, 0 of 10 with this constructor). Where a static link drops
/// this constructor, the `Once` in `alloc` still registers. Every program that links the
/// crate runs it, whether or not it uses this allocator: one `pthread_atfork` registration,
/// whose handlers lock and unlock an otherwise unused mutex around each fork.
extern "C" fn register_fork_handlers_at_load() {
    keep_usable_after_fork();
}

#[used]
#[unsafe(link_section = ".init_array")]
static FORK_HANDLERS_AT_LOAD: extern "C" fn() = register_fork_handlers_at_load;

/// Whether an allocation of `layout` gets a mapping of its own: big, and aligned no stricter
/// than a page (the mapping's own alignment).
fn mapped(size: usize, align: usize) -> bool {
    size >= OWN_MAPPING_FROM && align <= PAGE
}

/// `size` rounded up to whole pages (a `Layout`'s size is at most `isize::MAX`, so this
/// cannot overflow).
fn pages(size: usize) -> usize {
    size.div_ceil(PAGE) * PAGE
}

/// A fresh zeroed anonymous mapping of `size` bytes, or null.
fn map(size: usize) -> *mut u8 {
    // SAFETY: a new private anonymous mapping: no address hint, no file, nothing existing is
    // touched; failure is MAP_FAILED, checked below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pages(size),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every pointer returned is either SMALL's (for layouts `mapped` says no to, and
// freed or resized by SMALL with the same layout) or a fresh private mapping of at least
// `layout.size()` bytes, page-aligned (>= the layout's alignment, which `mapped` requires
// to be at most a page), unmapped exactly once in `dealloc` or moved by `realloc`. Nothing
// here allocates through the global allocator (libc calls only), so no call recurses.
unsafe impl GlobalAlloc for OwnMappings {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(layout.size(), layout.align()) {
            map(layout.size())
        } else {
            keep_usable_after_fork();
            // SAFETY: the caller's layout, under GlobalAlloc::alloc's contract.
            unsafe { SMALL.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(layout.size(), layout.align()) {
            // A fresh anonymous mapping reads as zeros, and stays unbacked until written.
            map(layout.size())
        } else {
            keep_usable_after_fork();
            // SAFETY: as in `alloc`.
            unsafe { SMALL.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if mapped(layout.size(), layout.align()) {
            // SAFETY: `ptr` came from `map` with this same size (GlobalAlloc's contract: the
            // layout it was allocated with), a mapping of `pages(size)` bytes that nothing
            // else unmaps. munmap of such a range cannot fail.
            unsafe { libc::munmap(ptr.cast::<c_void>(), pages(layout.size())) };
        } else {
            // SAFETY: `ptr` came from SMALL with this layout.
            unsafe { SMALL.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (align, old_size) = (layout.align(), layout.size());
        match (mapped(old_size, align), mapped(new_size, align)) {
            // SAFETY: `ptr` came from SMALL with `layout` (GlobalAlloc::realloc's contract).
            (false, false) => unsafe { SMALL.realloc(ptr, layout, new_size) },
            (true, true) => {
                // The kernel moves the pages if it must: no copy, no zero-fill of the kept ones.
                // SAFETY: `ptr` is the start of our own mapping of `pages(old_size)` bytes;
                // MREMAP_MAYMOVE lets the kernel pick a new address, returned or MAP_FAILED
                // (the old mapping then stays as it was, as realloc's failure requires).
                let p = unsafe {
                    libc::mremap(
                        ptr.cast::<c_void>(),
                        pages(old_size),
                        pages(new_size),
                        libc::MREMAP_MAYMOVE,
                    )
                };
                if p == libc::MAP_FAILED {
                    std::ptr::null_mut()
                } else {
                    p.cast()
                }
            }
            _ => {
                // Crossing the threshold: a new block of the other kind, the bytes copied.
                // SAFETY: `new_size` is non-zero and, rounded to `align`, at most isize::MAX
                // (realloc's contract), so the layout is valid.
                let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, align) };
                // SAFETY: a valid non-zero layout.
                let q = unsafe { self.alloc(new_layout) };
                if !q.is_null() {
                    // SAFETY: both blocks are ours and distinct, each at least the copied
                    // length; the old one is freed with the layout it was allocated with.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, q, old_size.min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                q
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    /// Whether `p` is page-aligned and outside the C library's main heap (`[heap]` in
    /// /proc/self/maps): in a mapping, not a chunk of the heap. (Not "starts a line of
    /// the maps": the kernel merges neighbouring anonymous mappings into one.)
    fn mapped_apart(p: *mut u8) -> bool {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let in_heap = maps.lines().filter(|l| l.ends_with("[heap]")).any(|l| {
            let range = l.split_whitespace().next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let (a, b) = (
                usize::from_str_radix(a, 16).unwrap(),
                usize::from_str_radix(b, 16).unwrap(),
            );
            (a..b).contains(&(p as usize))
        });
        (p as usize).is_multiple_of(PAGE) && !in_heap
    }

    #[test]
    fn big_blocks_are_mapped_zeroed_and_resized_in_place_of_a_copy() {
        let a = OwnMappings;
        let big = layout(OWN_MAPPING_FROM, 8);
        // SAFETY: a valid non-zero layout; every block below is freed with its own layout.
        unsafe {
            let p = a.alloc_zeroed(big);
            assert!(!p.is_null() && mapped_apart(p));
            assert!(
                std::slice::from_raw_parts(p, big.size())
                    .iter()
                    .all(|&b| b == 0)
            );
            p.write_bytes(0xab, big.size());
            // Bigger: the bytes come along.
            let q = a.realloc(p, big, 3 * OWN_MAPPING_FROM + 5);
            assert!(!q.is_null() && mapped_apart(q));
            assert!(
                std::slice::from_raw_parts(q, big.size())
                    .iter()
                    .all(|&b| b == 0xab)
            );
            // Below the threshold: back among the small blocks, the first bytes kept.
            let grown = layout(3 * OWN_MAPPING_FROM + 5, 8);
            let r = a.realloc(q, grown, 100);
            assert!(
                !r.is_null() && !mapped_apart(r),
                "a 100-byte block got a mapping"
            );
            assert!(
                std::slice::from_raw_parts(r, 100)
                    .iter()
                    .all(|&b| b == 0xab)
            );
            // And up again, across the threshold the other way.
            let s = a.realloc(r, layout(100, 8), OWN_MAPPING_FROM * 2);
            assert!(!s.is_null() && mapped_apart(s));
            assert!(
                std::slice::from_raw_parts(s, 100)
                    .iter()
                    .all(|&b| b == 0xab)
            );
            a.dealloc(s, layout(OWN_MAPPING_FROM * 2, 8));
        }
    }

    #[test]
    fn small_or_over_aligned_blocks_come_from_our_own_dlmalloc() {
        let a = OwnMappings;
        for l in [
            layout(64, 8),
            layout(OWN_MAPPING_FROM - 1, 16),
            layout(OWN_MAPPING_FROM, 2 * PAGE),
        ] {
            // SAFETY: a valid non-zero layout, freed with itself.
            unsafe {
                let p = a.alloc(l);
                assert!(!p.is_null());
                assert!((p as usize).is_multiple_of(l.align()));
                p.write_bytes(1, l.size());
                a.dealloc(p, l);
            }
        }
        assert!(!mapped(OWN_MAPPING_FROM, 2 * PAGE) && mapped(OWN_MAPPING_FROM, PAGE));
    }

    /// A child forked while another thread allocates small blocks nonstop can allocate: no
    /// child inherits the small blocks' lock held (each child would hang in `alloc`; killed
    /// by its alarm after 10 s, it fails the test).
    #[test]
    fn a_forked_child_can_allocate_while_another_thread_allocates() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy = stop.clone();
        let churn = std::thread::spawn(move || {
            let l = layout(48, 8);
            while !busy.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: a valid layout, freed with itself.
                unsafe { OwnMappings.dealloc(std::hint::black_box(OwnMappings.alloc(l)), l) };
            }
        });
        for _ in 0..200 {
            // SAFETY: the child calls only our allocator (the code under test), alarm and
            // _exit; the parent waits for it.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                // SAFETY: in the child, as above.
                unsafe {
                    libc::alarm(10);
                    let l = layout(64, 8);
                    let p = OwnMappings.alloc(l);
                    OwnMappings.dealloc(p, l);
                    libc::_exit(if p.is_null() { 1 } else { 0 });
                }
            }
            let mut status = 0;
            // SAFETY: waits for our own child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "a forked child could not allocate (status {status:#x})"
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churn.join().unwrap();
    }

    /// The bytes glibc's malloc holds for callers, all arenas and its own mappings together.
    fn c_library_bytes_in_use() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let m = unsafe { libc::mallinfo2() };
        m.uordblks + m.hblkhd
    }

    /// Nothing of any size reaches the C library's malloc: glibc's counters do not move while
    /// 5 MiB of small and big blocks are live. Runs alone in a child process (this test,
    /// `--exact`), where no other test allocates meanwhile.
    #[test]
    fn no_block_of_any_size_reaches_the_c_librarys_malloc() {
        let name = "io::own_mappings::tests::no_block_of_any_size_reaches_the_c_librarys_malloc";
        if !crate::io::alone_in_a_child(name) {
            return;
        }
        let a = OwnMappings;
        let sizes = (0..200)
            .map(|i| 16 << (i % 13))
            .chain([OWN_MAPPING_FROM, 3 << 20]);
        let blocks: Vec<(*mut u8, Layout)> = sizes
            .map(|n| (std::ptr::null_mut(), layout(n, 8)))
            .collect();
        let before = c_library_bytes_in_use();
        let mut blocks = std::hint::black_box(blocks);
        for (p, l) in &mut blocks {
            // SAFETY: a valid non-zero layout; freed below with itself.
            *p = unsafe { a.alloc(*l) };
            assert!(!p.is_null());
            // SAFETY: the block is `l.size()` bytes, ours.
            unsafe { p.write_bytes(7, l.size()) };
        }
        let live: usize = blocks.iter().map(|(_, l)| l.size()).sum();
        let grew = c_library_bytes_in_use().saturating_sub(before);
        for (p, l) in blocks {
            // SAFETY: allocated above with this layout.
            unsafe { a.dealloc(p, l) };
        }
        assert!(live > 5 << 20, "{live}");
        assert!(
            grew < 4096,
            "glibc's malloc grew by {grew} bytes while ours held {live}"
        );
    }
}
