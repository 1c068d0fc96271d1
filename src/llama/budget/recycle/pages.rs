//! Decoding in place: the memory pages of evicted weights go to the weights decoded next
//! (`mremap`).
//!
//! Releasing an evicted tensor's pages (`MADV_DONTNEED`) and decoding another one into fresh
//! pages costs a page fault and a cleared page per 4 KiB: measured on SmolLM2's weights on 2
//! cores, decoding into released memory ran at 1.0 GB/s, against 1.7 GB/s into pages moved
//! over from evicted tensors. So an evicted tensor's whole pages go to a pool where they lie,
//! and a decode first moves pool pages into the tensor's range, straight from the evicted
//! tensor's (`MREMAP_FIXED` replaces the range's empty pages; `MREMAP_DONTUNMAP` leaves the
//! source range mapped, reading as zeros). Pages only change place, so memory use is what
//! it was with releases: the pool counts toward the budget and is trimmed to it. (Until
//! session 56 an eviction moved the pages out to a mapping of the pool's own, and a decode
//! moved them back: two moves a tensor where one does; SmolLM2 at a 50% budget generated
//! 7.8% faster with one, 12 alternating rounds of 256 tokens on 2 vCPUs.)
//!
//! `mremap` needs page-aligned ranges that each lie in one mapping: every tensor keeps the
//! boundaries its range was assembled from ([`Layout`]), and only private anonymous memory
//! outside the brk heap takes part (llama.cpp's weight buffers are such mappings). A move
//! that fails falls back to releasing, and turns recycling off for the process.
//!
//! Every move costs a TLB flush on every CPU running the process (an interrupt each, and a
//! slow one in a VM), so ranges must not splinter: a decode takes the pool piece that fits
//! best (layers of one model repeat the same tensor sizes), a tensor is filled from at most
//! [`max_pieces`] pieces, leftovers smaller than [`MIN_PIECE`] are freed, and a tensor whose
//! range has become more pieces than that is mapped afresh when evicted. (Splitting freely
//! was measured at 540 moves per generated token on SmolLM2, and slower than releasing.) A
//! big tensor may take many pieces, such as an output head assembled from a layer's worth
//! of evicted tensors: a move costs far less than faulting the same bytes in (one TLB flush
//! against one fault per 4 KiB), and the pieces go back to tensors of their own size.

use std::sync::atomic::{AtomicBool, Ordering};

/// Leftovers of a piece smaller than this are freed, not pooled.
const MIN_PIECE: usize = 256 << 10;

/// How many pool pieces a range of `bytes` may be filled from, and be made of when it is
/// evicted (more, and it is mapped afresh): 8, or one per 512 KiB.
fn max_pieces(bytes: usize) -> usize {
    (bytes / (512 << 10)).max(8)
}

/// Set after a move failed (an old kernel without `MREMAP_DONTUNMAP`, say).
static BROKEN: AtomicBool = AtomicBool::new(false);

/// The mapping pieces that a tensor's whole pages `[first, last]` are made of: sorted
/// boundaries, each consecutive pair lying inside one mapping. Empty when the tensor does
/// not take part in recycling.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout(Vec<usize>);

impl Layout {
    /// The whole pages of `[addr, addr + len)` as one piece, if that memory can be recycled
    /// (private anonymous, not the heap) and holds at least a page.
    pub fn of(addr: usize, len: usize) -> Layout {
        let page = crate::io::page_size();
        let start = addr.div_ceil(page) * page;
        let end = (addr + len) / page * page;
        if end <= start || BROKEN.load(Ordering::Relaxed) {
            return Layout::default();
        }
        match crate::io::anonymous_mapping_at(start) {
            Ok(m) if m.start <= start && end <= m.end => Layout(vec![start, end]),
            _ => Layout::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.len() < 2
    }

    fn pieces(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.0.windows(2).map(|w| (w[0], w[1] - w[0]))
    }
}

/// Moves `len` bytes of pages at `from` (to `to` with `MREMAP_FIXED`), as the raw system
/// call: glibc before 2.40 drops the fifth argument unless `MREMAP_FIXED` is set, and the
/// kernel rejects `MREMAP_DONTUNMAP` with the garbage it then finds there (EINVAL).
///
/// # Safety
/// As for `mremap(2)`: the caller owns both ranges.
unsafe fn mremap(from: usize, len: usize, flags: libc::c_int, to: usize) -> *mut libc::c_void {
    // SAFETY: forwarded from the caller; the call has no other preconditions.
    let r = unsafe { libc::syscall(libc::SYS_mremap, from, len, len, flags, to) };
    if r == -1 {
        libc::MAP_FAILED
    } else {
        r as *mut libc::c_void
    }
}

/// Pages of evicted tensors, waiting to be moved into the next decoded one. They stay where
/// they are, in the evicted tensors' ranges of llama.cpp's buffer, until a decode moves them
/// (one `mremap` a piece, rather than one out to a mapping of our own at eviction and one
/// back in at the decode: every move interrupts every other CPU running the process, and on
/// SmolLM2 at a 50% budget the two took about 4 ms of each 20 ms token on 2 vCPUs).
#[derive(Default)]
pub struct Pool {
    /// Pieces (address, bytes) of evicted tensors' ranges whose pages no tensor uses.
    pieces: Vec<(usize, usize)>,
    bytes: u64,
}

impl Pool {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Gives an evicted tensor's pages to the pool, where they stay until a decode moves
    /// them or [`Pool::trim`] releases them. A range of too many pieces is mapped afresh
    /// instead (and `layout` becomes one piece). Returns false if nothing was pooled.
    ///
    /// # Safety
    /// `layout` describes memory that nothing reads or writes until it is decoded again
    /// (which first takes its pieces back: [`Pool::fill`], [`Pool::release_own`]), and that
    /// stays mapped while the pool holds its pieces.
    pub unsafe fn take(&mut self, layout: &mut Layout) -> bool {
        let Some((&start, &end)) = layout.0.first().zip(layout.0.last()) else {
            return false;
        };
        if BROKEN.load(Ordering::Relaxed) {
            return false;
        }
        if layout.pieces().count() > max_pieces(end - start) {
            // SAFETY: `[start, end)` is page-aligned private anonymous memory that nothing
            // uses (caller); a fresh private anonymous mapping in its place reads as zeros,
            // like released pages, and is one mapping again.
            let r = unsafe {
                libc::mmap(
                    start as *mut libc::c_void,
                    end - start,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if r as usize == start {
                *layout = Layout(vec![start, end]);
                return false;
            }
        }
        self.pieces.extend(layout.pieces());
        self.bytes += (end - start) as u64;
        true
    }

    /// Removes and returns the pool's pieces inside `layout`'s range: its own pages, not
    /// moved elsewhere yet, which the range is about to be written over.
    fn take_back(&mut self, layout: &Layout) -> Vec<(usize, usize)> {
        let Some((&start, &end)) = layout.0.first().zip(layout.0.last()) else {
            return Vec::new();
        };
        let (own, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pieces)
            .into_iter()
            .partition(|&(at, len)| at >= start && at + len <= end);
        self.pieces = others;
        self.bytes -= own.iter().map(|&(_, len)| len as u64).sum::<u64>();
        own
    }

    /// Takes back the pool's pieces inside `layout`'s range and releases them: for a range
    /// about to be written only in part (a lookup's rows), whose untouched pages would
    /// otherwise be held and counted nowhere.
    pub fn release_own(&mut self, layout: &Layout) {
        for piece in self.take_back(layout) {
            release(piece);
        }
    }

    /// Moves pool pages into the front of `layout`'s range and returns the range's new
    /// layout: the smallest piece that covers what is left, else the largest, up to
    /// [`max_pieces`] pieces. The range's own pieces are taken back first; where they cover
    /// it all, nothing moves. The rest of the range keeps its pages (or faults in fresh
    /// ones).
    ///
    /// # Safety
    /// Nothing reads or writes `layout`'s range until the caller has written all of it, and
    /// the ranges of the pool's pieces are still mapped (their tensors' buffer lives).
    pub unsafe fn fill(&mut self, layout: &Layout) -> Layout {
        let Some((&start, &end)) = layout.0.first().zip(layout.0.last()) else {
            return layout.clone();
        };
        let own: usize = self.take_back(layout).iter().map(|&(_, len)| len).sum();
        if own == end - start {
            return layout.clone();
        }
        let mut bounds = vec![start];
        let mut at = start;
        for _ in 0..max_pieces(end - start) {
            let rest = end - at;
            if rest == 0 || BROKEN.load(Ordering::Relaxed) {
                break;
            }
            let covering = (0..self.pieces.len())
                .filter(|&i| self.pieces[i].1 >= rest)
                .min_by_key(|&i| self.pieces[i].1);
            let largest = (0..self.pieces.len()).max_by_key(|&i| self.pieces[i].1);
            let Some(pick) = covering.or(largest) else {
                break;
            };
            let (from, len) = self.pieces.swap_remove(pick);
            let n = len.min(rest);
            // SAFETY: `[from, from + n)` is the front of a piece of an evicted tensor's range
            // that no tensor uses (pieces are disjoint and lie outside the caller's range,
            // whose own pieces were taken back above); the destination `[at, at + n)` lies in
            // the caller's range, which nothing uses, so replacing its mapping
            // (MREMAP_FIXED) affects nobody else. MREMAP_DONTUNMAP leaves the source range
            // mapped, reading as zeros: it stays part of its tensor's memory.
            let r = unsafe {
                mremap(
                    from,
                    n,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP,
                    at,
                )
            };
            if r == libc::MAP_FAILED {
                BROKEN.store(true, Ordering::Relaxed);
                self.pieces.push((from, len));
                break;
            }
            self.bytes -= len as u64;
            if len - n >= MIN_PIECE {
                self.pieces.push((from + n, len - n));
                self.bytes += (len - n) as u64;
            } else if len > n {
                release((from + n, len - n));
            }
            at += n;
            bounds.push(at);
        }
        bounds.extend(layout.0.iter().copied().filter(|&b| b > at));
        Layout(bounds)
    }

    /// Gives pool pages back to the system until at most `keep` bytes remain.
    pub fn trim(&mut self, keep: u64) {
        while self.bytes > keep {
            let Some(piece) = self.pieces.pop() else {
                break;
            };
            release(piece);
            self.bytes -= piece.1 as u64;
        }
    }
}

/// Returns a pool piece's pages to the system; its range stays mapped and reads as zeros.
fn release((at, len): (usize, usize)) {
    // SAFETY: a piece of an evicted tensor's whole pages that no tensor uses (the pool's
    // invariant), inside a mapping that lives while the pool holds it.
    unsafe { libc::madvise(at as *mut libc::c_void, len, libc::MADV_DONTNEED) };
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    fn rss_pages_of(map: &memmap2::MmapMut) -> usize {
        let pages = map.len() / PAGE;
        let mut v = vec![0u8; pages];
        // SAFETY: mincore on our own page-aligned mapping into a buffer of one byte per page.
        let r = unsafe { libc::mincore(map.as_ptr() as *mut _, map.len(), v.as_mut_ptr()) };
        assert_eq!(r, 0);
        v.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn pages_move_from_an_evicted_tensor_to_the_next_one() {
        assert_eq!(crate::io::page_size(), PAGE);
        let mut buf = memmap2::MmapMut::map_anon(64 * PAGE).unwrap();
        let base = buf.as_ptr() as usize;
        // Tensor a: bytes 100 .. 20 pages + 7 (whole pages 1..20); tensor b after it.
        let (a_addr, a_len) = (base + 100, 20 * PAGE - 93);
        let (b_addr, b_len) = (base + 24 * PAGE + 5, 30 * PAGE);
        buf[..].fill(0xaa);
        let a = Layout::of(a_addr, a_len);
        assert_eq!(a.0, vec![base + PAGE, base + 20 * PAGE]);
        let b = Layout::of(b_addr, b_len);
        let mut pool = Pool::default();
        // SAFETY: nothing else uses this test buffer.
        assert!(unsafe { pool.take(&mut a.clone()) });
        assert_eq!(pool.bytes(), 19 * PAGE as u64);
        // Pooled pages stay where they are until a decode moves them.
        assert_eq!(rss_pages_of(&buf), 64);

        // SAFETY: b's range is ours and rewritten below.
        let b2 = unsafe { pool.fill(&b) };
        assert_eq!(pool.bytes(), 0);
        // 19 moved pages in front, then b's own pages.
        assert_eq!(
            b2.0,
            vec![base + 25 * PAGE, base + 44 * PAGE, base + 54 * PAGE]
        );
        // Moved pages carry a's old bytes until written: they are not cleared. a's whole
        // pages left it (and read as zeros); the edges it shares keep their bytes.
        assert_eq!(buf[25 * PAGE], 0xaa);
        assert_eq!(rss_pages_of(&buf), 64 - 19);
        assert!(buf[PAGE..20 * PAGE].iter().all(|&x| x == 0));
        assert_eq!((buf[PAGE - 1], buf[20 * PAGE]), (0xaa, 0xaa));
        buf[25 * PAGE..54 * PAGE].fill(7);
        assert!(
            buf[24 * PAGE + 5..54 * PAGE]
                .iter()
                .all(|&x| x == 7 || x == 0xaa)
        );

        // b goes back piece by piece, then a takes the piece of exactly its size.
        // SAFETY: as above.
        assert!(unsafe { pool.take(&mut b2.clone()) });
        assert_eq!(pool.bytes(), 29 * PAGE as u64);
        // SAFETY: as above.
        let a2 = unsafe { pool.fill(&a) };
        assert_eq!(a2, a);
        assert_eq!(pool.bytes(), 10 * PAGE as u64);
        assert!(buf[PAGE..20 * PAGE].iter().all(|&x| x == 7));
        // b's own pages come back in place: nothing moves.
        // SAFETY: as above.
        let b3 = unsafe { pool.fill(&Layout(vec![base + 44 * PAGE, base + 54 * PAGE])) };
        assert_eq!(b3.0, vec![base + 44 * PAGE, base + 54 * PAGE]);
        assert_eq!(pool.bytes(), 0);
        assert!(buf[44 * PAGE..54 * PAGE].iter().all(|&x| x == 7));
        // Trimming releases pooled pages where they lie.
        // SAFETY: as above.
        assert!(unsafe { pool.take(&mut a2.clone()) });
        pool.trim(0);
        assert_eq!(pool.bytes(), 0);
        assert!(buf[PAGE..20 * PAGE].iter().all(|&x| x == 0));
        // Everything is still mapped and writable.
        buf[..].fill(1);
        assert!(!BROKEN.load(Ordering::Relaxed));
    }

    #[test]
    fn a_partial_write_releases_its_own_pooled_pages_first() {
        let mut buf = memmap2::MmapMut::map_anon(8 * PAGE).unwrap();
        buf[..].fill(5);
        let base = buf.as_ptr() as usize;
        let mut pool = Pool::default();
        let mut a = Layout::of(base, 4 * PAGE);
        // SAFETY: nothing else uses this test buffer.
        assert!(unsafe { pool.take(&mut a) });
        pool.release_own(&Layout::of(base + 4 * PAGE, 4 * PAGE));
        assert_eq!(pool.bytes(), 4 * PAGE as u64, "not its range");
        pool.release_own(&a);
        assert_eq!(pool.bytes(), 0);
        assert!(buf[..4 * PAGE].iter().all(|&x| x == 0));
        assert!(buf[4 * PAGE..].iter().all(|&x| x == 5));
    }

    #[test]
    fn small_leftovers_are_freed_and_splintered_ranges_are_mapped_afresh() {
        let big = MIN_PIECE / PAGE + 2;
        let mut buf = memmap2::MmapMut::map_anon(4 * big * PAGE).unwrap();
        buf[..].fill(3);
        let base = buf.as_ptr() as usize;
        let mut pool = Pool::default();
        let mut a = Layout::of(base, big * PAGE);
        // SAFETY: nothing else uses this test buffer.
        assert!(unsafe { pool.take(&mut a) });
        // Taking 4 pages of a `big` piece leaves one too small to keep.
        let small = Layout::of(base + 2 * big * PAGE, 4 * PAGE);
        // SAFETY: as above.
        let s2 = unsafe { pool.fill(&small) };
        assert_eq!(s2, small);
        assert_eq!(pool.bytes(), 0);
        // A range of more pieces than it may have.
        let most = max_pieces(big * PAGE);
        let mut splinters: Vec<usize> = (0..=most + 1).map(|i| base + (i * PAGE)).collect();
        splinters.push(base + big * PAGE);
        let mut many = Layout(splinters);
        // SAFETY: as above.
        assert!(
            !unsafe { pool.take(&mut many) },
            "mapped afresh, not pooled"
        );
        assert_eq!(many, Layout(vec![base, base + big * PAGE]));
        assert_eq!(pool.bytes(), 0);
        assert!(buf[..big * PAGE].iter().all(|&x| x == 0));
        assert!(buf[big * PAGE..].iter().all(|&x| x == 3 || x == 0));
        buf[..].fill(1);
    }

    #[test]
    fn file_maps_and_small_ranges_do_not_take_part() {
        let map = memmap2::MmapMut::map_anon(4 * PAGE).unwrap();
        assert!(Layout::of(map.as_ptr() as usize + 1, PAGE).is_empty());
        let path = std::env::temp_dir().join(format!("dcgguf-recycle-{}", std::process::id()));
        std::fs::write(&path, vec![1u8; 8 * PAGE]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: a read-only map of our own temporary file.
        let m = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        assert!(Layout::of(m.as_ptr() as usize, 8 * PAGE).is_empty());
        std::fs::remove_file(&path).unwrap();
    }
}
