//! Faults in llama.cpp's tensor memory ahead of the copy, on an idle decode thread.
//!
//! Once chunks are decoded (see [`super::early`]), most of a load's remaining time is the
//! first touch of llama.cpp's freshly allocated tensor buffer: one page fault, and one page
//! cleared, per 4 KiB. A plain GGUF load pays the same faults inside `read()`. Here a pool
//! thread asks the kernel to populate the pages just ahead of the reader with
//! `MADV_POPULATE_WRITE`, so that work runs on another core while llama.cpp's thread copies.
//! A copy out of the stream's decoded chunks populates its destination first, on the
//! copying thread ([`populate_for_copy`]): one call instead of a fault per page, also on the
//! brk heap, where a small model's weights buffer lives and the lookahead never goes.
//!
//! Populating does not change a page's contents, only when it is faulted in. Ahead of a
//! read, only private, anonymous, writable memory is touched (the mapping holding the read's
//! destination, found in `/proc/self/maps`; not the brk heap), never more than
//! [`LOOKAHEAD`] beyond the current read, in a mapping of at least [`MIN_BUFFER`], and
//! llama.cpp writes those pages next; for a copy, only the pages it writes.

use std::ops::Range;
use std::sync::Arc;

/// How far ahead of the current read pages are populated.
const LOOKAHEAD: usize = 4 << 20;
/// Mappings smaller than this are populated only where a read lands.
const MIN_BUFFER: usize = 16 << 20;
/// Requests smaller than this wait for more.
const MIN_STEP: usize = 1 << 20;

/// The populating state of one stream.
#[derive(Default)]
pub struct Prefault {
    /// The writable anonymous mapping the reads land in, and how far it is populated.
    area: Option<(Range<usize>, usize)>,
    /// The last address looked up that is not in such a mapping.
    not_anonymous: Option<Range<usize>>,
}

impl Prefault {
    /// A read of `len` bytes is about to write at `addr`: populate the pages just past it on
    /// `pool`.
    pub fn ahead_of(&mut self, addr: usize, len: usize, pool: Option<&Arc<rayon::ThreadPool>>) {
        if self
            .not_anonymous
            .as_ref()
            .is_some_and(|r| r.contains(&addr))
        {
            return;
        }
        if !self.area.as_ref().is_some_and(|(r, _)| r.contains(&addr)) {
            // Finding the mapping reads /proc/self/maps (a fraction of a millisecond). A read
            // smaller than MIN_BUFFER outside the known area is most likely a staging buffer
            // of its own size (llama.cpp allocates one per repacked tensor), which is never
            // populated past the read: no lookup.
            if len < MIN_BUFFER {
                return;
            }
            match anonymous_mapping_at(addr) {
                Ok(range) => self.area = Some((range, addr)),
                Err(other) => {
                    self.not_anonymous = other;
                    return;
                }
            }
        }
        let (range, done) = self.area.as_mut().expect("set above");
        let page = crate::io::page_size();
        let from = (*done).max(addr / page * page);
        // Only a big mapping of its own (an allocation for a whole weights buffer) is populated
        // past the read: a smaller one may hold other, idle allocations.
        let ahead = if range.len() >= MIN_BUFFER {
            LOOKAHEAD
        } else {
            0
        };
        let to = addr.saturating_add(ahead).min(range.end) / page * page;
        let end = range.end;
        if to <= from || (to - from < MIN_STEP && to < end) {
            return;
        }
        *done = to;
        let job = move || populate(from, to - from);
        match pool {
            Some(p) => p.spawn(job),
            None => rayon::spawn(job),
        }
    }
}

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
    // slice the caller is about to write, or pages in one private anonymous writable mapping
    // (checked in /proc/self/maps). It never changes the bytes of a page, so llama.cpp's
    // data, also where a slice's edge pages hold other data, is untouched. Where a page
    // cannot be populated (the mapping has gone, or is of a kind that cannot be), the kernel
    // returns an error instead of faulting, which we ignore: populating is only an
    // optimization.
    unsafe {
        libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE);
    }
}

/// The private, anonymous, writable mapping holding `addr`; otherwise the range to skip
/// (the mapping of another kind holding it, if any).
pub(crate) fn anonymous_mapping_at(addr: usize) -> Result<Range<usize>, Option<Range<usize>>> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|_| None)?;
    for line in maps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(_offset), Some(_dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        if !(start..end).contains(&addr) {
            continue;
        }
        let path = fields.next().unwrap_or("");
        // Not [heap]: llama.cpp's small staging vectors live there, next to free memory that
        // populating would make resident for nothing.
        let anonymous = inode == "0" && path.is_empty();
        return if perms.starts_with("rw-p") && anonymous {
            Ok(start..end)
        } else {
            Err(Some(start..end))
        };
    }
    Err(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_anonymous_memory_and_rejects_file_mappings() {
        let anon = memmap2::MmapMut::map_anon(8 << 20).unwrap();
        let a = anon.as_ptr() as usize;
        let r = anonymous_mapping_at(a + 4096).expect("an anonymous mapping");
        assert!(r.start <= a && r.end >= a + (8 << 20));

        let path = std::env::temp_dir().join(format!("dcgguf-prefault-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 1 << 16]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a read-only map of our own temporary file.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let f = map.as_ptr() as usize;
        assert!(matches!(anonymous_mapping_at(f), Err(Some(r)) if r.contains(&f)));
        std::fs::remove_file(&path).unwrap();
    }

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
        let mut p = Prefault::default();
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap(),
        );
        p.ahead_of(anon.as_ptr() as usize, 16 << 20, Some(&pool));
        assert_eq!(anon[5], 42);
        assert_eq!(anon[(16 << 20) - 1], 9);
        assert!(anon[6..(16 << 20) - 1].iter().all(|&b| b == 0));
        let (range, done) = p.area.clone().expect("an area");
        assert!(done > anon.as_ptr() as usize && done <= range.end);
    }
}
