//! Populates the pages of llama.cpp's memory that a copy out of the stream's decoded chunks is
//! about to fill ([`populate_for_copy`]): one `madvise(MADV_POPULATE_WRITE)` call faults them
//! all in inside the kernel, where the copy would take one page fault exception per 4 KiB as
//! it first touches each. Populating does not change a page's contents, only when it is
//! faulted in, and only the pages the copy writes are touched.
//!
//! No thread populates ahead of the reads any more. Until session 52 a pool thread populated
//! llama.cpp's weight buffer 4 MiB ahead of the reader. On the 2-core AMD EPYC VM (free page
//! reporting on; llama.cpp's load time, medians of alternating cold runs, 2026-12-05) it made
//! Qwen2.5-Coder-1.5B's load 3167, 1444 and 3010 ms instead of 1570, 1347 and 1383 in three
//! rounds of runs on settled memory (5, 8 and 5 runs), 1551 instead of 1355 right after a
//! page-cache drop, and 3046 instead of 1331 warm; SmolLM2's 160-168 ms instead of 153-159.
//! perf saw that thread spend 1.8 s clearing the pages it populated. Populating only once
//! the early thread had finished still took 2516 ms. Small models, whose weights are all
//! decoded before llama.cpp's first read, did not need it either: MiniLM BF16's first batch
//! began 128.0 ms after start with it and 126.0 without (12 cold runs each).

/// Populates the pages of `dst`, which the calling thread is about to fill with a copy: one
/// `madvise` call faults them all in inside the kernel, where the copy would take one page
/// fault exception per 4 KiB as it first touches each. Not for memory that pool threads
/// decode into: they fault its pages in parallel, which one thread populating first
/// serializes (Qwen2.5-1.5B's load took 11% longer that way).
pub(crate) fn populate_for_copy(dst: &mut [u8]) {
    let page = crate::io::page_size();
    let addr = dst.as_ptr() as usize;
    let from = addr / page * page;
    let to = (addr + dst.len()).next_multiple_of(page);
    populate(from, to - from);
}

fn populate(addr: usize, len: usize) {
    // SAFETY: MADV_POPULATE_WRITE only faults in pages of [addr, addr+len): the pages of a
    // slice the caller is about to write (or, in the tests, of their own mapping). It never
    // changes the bytes of a page, so llama.cpp's data, also where a slice's edge pages hold
    // other data, is untouched. Where a page cannot be populated (the mapping has gone, or
    // is of a kind that cannot be), the kernel returns an error instead of faulting, which we
    // ignore: populating is only an optimization.
    unsafe {
        libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which pages of `[addr, addr + len)` are resident, per `mincore`.
    fn resident_pages(addr: usize, len: usize) -> Vec<bool> {
        let page = crate::io::page_size();
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: `addr` is page-aligned and `[addr, addr+len)` is mapped (the caller's own
        // anonymous mapping); `vec` has one byte per page of it.
        let r = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().map(|&b| b & 1 == 1).collect()
    }

    #[test]
    fn populating_for_a_copy_touches_the_slices_pages_only() {
        let page = crate::io::page_size();
        let mut anon = memmap2::MmapMut::map_anon(64 * page).unwrap();
        let a = anon.as_ptr() as usize;
        // One page already holds another allocation's bytes, next to where the copy lands.
        anon[10 * page + 7] = 42;
        // A slice from inside page 10 to inside page 20.
        populate_for_copy(&mut anon[10 * page + 100..20 * page + 100]);
        let resident = resident_pages(a, 64 * page);
        for (i, r) in resident.iter().enumerate() {
            assert_eq!(*r, (10..=20).contains(&i), "page {i}");
        }
        assert_eq!(anon[10 * page + 7], 42);
        assert!(anon[..10 * page + 7].iter().all(|&b| b == 0));
        assert!(anon[10 * page + 8..].iter().all(|&b| b == 0));
    }

    #[test]
    fn populating_keeps_the_contents() {
        let mut anon = memmap2::MmapMut::map_anon(16 << 20).unwrap();
        anon[5] = 42;
        anon[(16 << 20) - 1] = 9;
        populate(anon.as_ptr() as usize, 16 << 20);
        assert_eq!(anon[5], 42);
        assert_eq!(anon[(16 << 20) - 1], 9);
        assert!(anon[6..(16 << 20) - 1].iter().all(|&b| b == 0));
    }
}
