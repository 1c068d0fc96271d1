//! A global allocator for a library that runs inside someone else's process (the preload
//! library declares it): allocations of 128 KiB and up get an anonymous mapping of their own;
//! smaller ones go to the C library's `malloc` as before.
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
//! The path an allocation takes depends on its layout alone (size and alignment), which Rust
//! passes back unchanged to `dealloc`, so each pointer is freed the way it was allocated. The
//! library hands no Rust allocation to C code to free, nor frees C memory through Rust.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;

/// Allocations of this many bytes and up are mapped on their own (glibc's own default mmap
/// threshold, before large frees raise it).
const OWN_MAPPING_FROM: usize = 128 << 10;

/// Mappings are whole pages of at least this alignment (4 KiB on every Linux target we build).
const PAGE: usize = 4096;

/// The allocator (`#[global_allocator] static A: OwnMappings = OwnMappings;`).
pub struct OwnMappings;

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

// SAFETY: every pointer returned is either System's (for layouts `mapped` says no to, and
// freed or resized by System with the same layout) or a fresh private mapping of at least
// `layout.size()` bytes, page-aligned (>= the layout's alignment, which `mapped` requires
// to be at most a page), unmapped exactly once in `dealloc` or moved by `realloc`. Nothing
// here allocates through the global allocator (libc calls only), so no call recurses.
unsafe impl GlobalAlloc for OwnMappings {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(layout.size(), layout.align()) {
            map(layout.size())
        } else {
            // SAFETY: the caller's layout, under GlobalAlloc::alloc's contract.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(layout.size(), layout.align()) {
            // A fresh anonymous mapping reads as zeros, and stays unbacked until written.
            map(layout.size())
        } else {
            // SAFETY: as in `alloc`.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if mapped(layout.size(), layout.align()) {
            // SAFETY: `ptr` came from `map` with this same size (GlobalAlloc's contract: the
            // layout it was allocated with), a mapping of `pages(size)` bytes that nothing
            // else unmaps. munmap of such a range cannot fail.
            unsafe { libc::munmap(ptr.cast::<c_void>(), pages(layout.size())) };
        } else {
            // SAFETY: `ptr` came from System with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (align, old_size) = (layout.align(), layout.size());
        match (mapped(old_size, align), mapped(new_size, align)) {
            // SAFETY: `ptr` came from System with `layout` (GlobalAlloc::realloc's contract).
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
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
            // Below the threshold: back on the heap, the first bytes kept.
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
    fn small_or_over_aligned_blocks_stay_with_the_c_library() {
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
}
