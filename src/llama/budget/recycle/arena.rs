//! Decoding into buffers carved from one arena of memory per model, handed from evicted
//! tensors to the tensors decoded next: no page moves, so no TLB shootdowns.
//!
//! Once a graph node has read a streamed weight, the runtime decodes it into a buffer taken
//! here and points the weight's `ggml_tensor` (and the views of it that nodes read) at it
//! while it is present ([`crate::llama::budget::runtime`] writes the pointer in the graph
//! callback's ask phase, when no graph computes); evicted, the tensor points back at its own
//! memory in llama.cpp's buffer, which stays untouched and costs nothing, and its buffer
//! comes back here. The arena's pages, once written, stay: decoding a token maps, moves,
//! clears or faults in no page at all.
//!
//! The arena is the budget's room for streamed tensors plus a page a tensor ([`slack`])
//! (address space only until written). Free space coalesces, so a tensor of
//! any size can take it. Small tensors are placed as high as they fit and big ones (over a
//! quarter of the arena) as low, so that the layers decoded around a big tensor leave it one
//! piece (placed by the best fit instead, SmolLM2's layers wandered over the arena). A tensor
//! that finds no piece big enough first evicts the tensors of the cheapest stretch of the
//! arena that the range being computed does not need ([`Buffers::window`]); only where
//! there is none does it get a mapping of its own ([`Buffers::own`]), for which as many free
//! pages of the arena are given back first ([`Buffers::release_free`]).

use memmap2::MmapMut;

/// Where a tensor's decoded bytes are while it is present.
pub enum Buffer {
    /// `len` bytes at `addr` in the arena.
    Arena { addr: usize, len: usize },
    /// A mapping of its own: the arena had no piece big enough.
    Own(MmapMut),
}

impl Buffer {
    pub fn addr(&self) -> usize {
        match self {
            Buffer::Arena { addr, .. } => *addr,
            Buffer::Own(m) => m.as_ptr() as usize,
        }
    }
}

/// The arena of one model's streamed tensors.
pub struct Buffers {
    /// Its mapping (`None` until first used, or if it could not be mapped) and size.
    arena: Option<MmapMut>,
    size: usize,
    /// Free pieces (address, bytes), sorted by address, neighbours coalesced.
    free: Vec<(usize, usize)>,
    /// Which of its pages have been written (a bit a page): a decode into them faults
    /// nothing in.
    written: Vec<u64>,
}

/// `len` bytes rounded up to whole pages: the size of a buffer for them.
pub fn buffer_size(len: usize) -> usize {
    len.next_multiple_of(crate::io::page_size())
}

/// What an arena for a room of `room` bytes, for tensors of `smallest` bytes or more,
/// holds beyond it: a page for each tensor it can hold, rounded up to whole pages. Nothing
/// for fragmentation: the arena is memory the budget counts (a memory limit's default
/// budget is what the limit leaves), so a tensor that finds no piece evicts others
/// ([`Buffers::window`]) rather than the arena growing.
pub fn slack(room: u64, smallest: u64) -> u64 {
    let tensors = room / smallest.max(1) + 1;
    tensors.saturating_mul(crate::io::page_size() as u64)
}

impl Buffers {
    /// The arena for streamed tensors of `smallest` bytes or more that may occupy `room`
    /// bytes decoded at once.
    pub fn new(room: u64, smallest: u64) -> Buffers {
        let size =
            usize::try_from(room.saturating_add(slack(room, smallest))).unwrap_or(usize::MAX);
        Buffers {
            arena: None,
            size: buffer_size(size.min(isize::MAX as usize / 2)),
            free: Vec::new(),
            written: Vec::new(),
        }
    }

    /// Maps the arena at first use (address space only: pages come in as decodes write
    /// them). False if it cannot be mapped.
    fn mapped(&mut self) -> bool {
        if self.arena.is_none() && self.free.is_empty() && self.size > 0 {
            if let Ok(m) = memmap2::MmapOptions::new().len(self.size).map_anon() {
                self.free.push((m.as_ptr() as usize, self.size));
                let pages = self.size / crate::io::page_size();
                self.written = vec![0; pages.div_ceil(64)];
                self.arena = Some(m);
            } else {
                self.size = 0;
            }
        }
        self.arena.is_some()
    }

    /// A buffer in the arena for a tensor of `len` bytes (more than 0), and how many of its
    /// bytes were written before (a decode into them costs no page fault): the top of the
    /// highest free piece that holds it, or for a big tensor the bottom of the lowest.
    /// `None` where none does.
    pub fn take(&mut self, len: usize) -> Option<(Buffer, u64)> {
        let size = buffer_size(len);
        if !self.mapped() {
            return None;
        }
        let big = size > self.size / 4;
        let fits = |i: &usize| self.free[*i].1 >= size;
        let i = if big {
            (0..self.free.len()).find(fits)?
        } else {
            (0..self.free.len()).rev().find(fits)?
        };
        let (at, n) = self.free[i];
        let addr = if big {
            self.free[i] = (at + size, n - size);
            at
        } else {
            self.free[i].1 = n - size;
            at + n - size
        };
        if self.free[i].1 == 0 {
            self.free.remove(i);
        }
        let written = self.mark_written(addr, size);
        Some((Buffer::Arena { addr, len: size }, written))
    }

    /// A mapping of its own for a tensor of `len` bytes, where the arena has no room.
    pub fn own(len: usize) -> Option<Buffer> {
        MmapMut::map_anon(buffer_size(len)).ok().map(Buffer::Own)
    }

    /// Where a tensor of `len` bytes that [`Buffers::take`] found no piece for could go:
    /// the stretch of the arena whose buffers in `held` (address, bytes, whether its tensor
    /// may be evicted; every buffer taken and not given back) are all evictable and fewest
    /// bytes. Returns their indices in `held`, to evict before taking again; `None` where no
    /// stretch is free of unevictable buffers.
    pub fn window(&self, len: usize, held: &[(usize, usize, bool)]) -> Option<Vec<usize>> {
        let arena = self.arena.as_ref()?;
        let (base, size) = (arena.as_ptr() as usize, buffer_size(len));
        let top = base + self.size;
        let starts = std::iter::once(base)
            .chain(self.free.iter().map(|&(a, _)| a))
            .chain(held.iter().map(|&(a, _, _)| a));
        let mut best: Option<(u64, Vec<usize>)> = None;
        for start in starts {
            if start < base || start + size > top {
                continue;
            }
            let inside: Vec<usize> = (0..held.len())
                .filter(|&i| held[i].0 < start + size && start < held[i].0 + held[i].1)
                .collect();
            if inside.iter().any(|&i| !held[i].2) {
                continue;
            }
            let cost: u64 = inside.iter().map(|&i| held[i].1 as u64).sum();
            if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                best = Some((cost, inside));
            }
        }
        best.map(|(_, inside)| inside)
    }

    /// Marks the pages of `[addr, addr + len)` written; returns the bytes that were already.
    fn mark_written(&mut self, addr: usize, len: usize) -> u64 {
        let page = crate::io::page_size();
        let base = self.arena.as_ref().map_or(0, |m| m.as_ptr() as usize);
        let mut before = 0;
        for p in (addr - base) / page..(addr - base + len) / page {
            let (word, bit) = (p / 64, 1u64 << (p % 64));
            if self.written[word] & bit != 0 {
                before += page as u64;
            }
            self.written[word] |= bit;
        }
        before
    }

    /// Takes back the buffer of an evicted tensor: its arena piece is free again (its pages
    /// stay, for the next decodes), a mapping of its own is unmapped.
    pub fn give(&mut self, buf: Buffer) {
        let Buffer::Arena { addr, len } = buf else {
            return;
        };
        let i = self.free.partition_point(|&(a, _)| a < addr);
        self.free.insert(i, (addr, len));
        if i + 1 < self.free.len() && addr + len == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == addr {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }

    /// Gives back the written pages of free pieces (the largest first) until `bytes` of them
    /// went or none are left: room for a mapping of its own ([`Buffers::own`]) without the
    /// process holding more than the arena.
    pub fn release_free(&mut self, bytes: usize) {
        let page = crate::io::page_size();
        let base = self.arena.as_ref().map_or(0, |m| m.as_ptr() as usize);
        let mut pieces = self.free.clone();
        pieces.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
        let mut released = 0;
        for (at, n) in pieces {
            if released >= bytes {
                break;
            }
            // SAFETY: a free piece of the arena, which this struct maps and no tensor uses:
            // its pages may be given back; they read as zeros until written again.
            unsafe { libc::madvise(at as *mut libc::c_void, n, libc::MADV_DONTNEED) };
            for p in (at - base) / page..(at - base + n) / page {
                self.written[p / 64] &= !(1u64 << (p % 64));
            }
            released += n;
        }
    }

    /// Bytes of the arena's written pages (what it holds in memory).
    pub fn written_bytes(&self) -> u64 {
        let ones: u32 = self.written.iter().map(|w| w.count_ones()).sum();
        u64::from(ones) * crate::io::page_size() as u64
    }

    /// Unmaps the arena (the model is being freed): every buffer taken has been given back.
    pub fn unmap(&mut self) {
        self.arena = None;
        self.free.clear();
        self.written.clear();
        self.size = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arena_addr(b: &Buffer) -> usize {
        match b {
            Buffer::Arena { addr, .. } => *addr,
            Buffer::Own(_) => panic!("not in the arena"),
        }
    }

    #[test]
    fn pieces_coalesce_and_a_big_tensor_finds_the_space_small_ones_left() {
        let page = crate::io::page_size();
        // An arena of 64 pages (the room) plus its slack.
        let room = 64 * page as u64;
        let mut b = Buffers::new(room, page as u64);
        let size = b.size;
        assert_eq!(size, 64 * page + 65 * page);
        // Small tensors go to the top, the first fresh, the next reusing its pages.
        let (s1, w) = b.take(3 * page - 5).unwrap();
        assert_eq!(w, 0);
        let top = arena_addr(&s1) + 3 * page;
        let (s2, _) = b.take(2 * page).unwrap();
        assert_eq!(arena_addr(&s2) + 2 * page, arena_addr(&s1));
        b.give(s1);
        let (s3, w) = b.take(3 * page).unwrap();
        assert_eq!((arena_addr(&s3) + 3 * page, w), (top, 3 * page as u64));
        // A big tensor goes to the bottom, whatever the small ones hold.
        let (big, w) = b.take(size / 2).unwrap();
        assert_eq!(arena_addr(&big), top - size);
        assert_eq!(w, 0);
        b.give(s2);
        b.give(s3);
        b.give(big);
        assert_eq!(b.free, vec![(top - size, size)], "all one piece again");
        // Nothing fits.
        assert!(b.take(size + page).is_none());
        let own = Buffers::own(size + page).unwrap();
        assert!(matches!(own, Buffer::Own(_)));
        b.give(own);
        assert_eq!(b.free.len(), 1);
    }

    #[test]
    fn a_big_tensor_that_finds_no_piece_evicts_the_cheapest_stretch_it_may() {
        let page = crate::io::page_size();
        let mut b = Buffers::new(256 * page as u64, 8 * page as u64);
        let size = b.size;
        // Small tensors spread over the arena: 8 pages each, every 32 pages.
        let (probe, _) = b.take(page).unwrap();
        let base = arena_addr(&probe) + page - size;
        b.give(probe);
        let mut held = Vec::new();
        for k in 0..size / (32 * page) {
            let at = base + k * 32 * page;
            let i = b
                .free
                .iter()
                .position(|&(a, n)| a <= at && at + 8 * page <= a + n)
                .unwrap();
            let (a, n) = b.free.remove(i);
            if at > a {
                b.free.insert(i, (a, at - a));
            }
            if a + n > at + 8 * page {
                let j = b.free.partition_point(|&(x, _)| x < at);
                b.free.insert(j, (at + 8 * page, a + n - at - 8 * page));
            }
            held.push((at, 8 * page, k != 1));
        }
        // 40 pages fit nowhere; the stretches holding one buffer cost 8 pages, but not
        // the one holding the unevictable buffer 1.
        assert!(b.take(40 * page).is_none());
        let evict = b.window(40 * page, &held).unwrap();
        assert_eq!(evict.len(), 1);
        assert_ne!(evict[0], 1);
        // Everything unevictable: nowhere.
        let pinned: Vec<_> = held.iter().map(|&(a, n, _)| (a, n, false)).collect();
        assert_eq!(b.window(40 * page, &pinned), None);
        // Evicted, the stretch is one piece.
        let (a, n, _) = held[evict[0]];
        b.give(Buffer::Arena { addr: a, len: n });
        assert!(b.take(40 * page).is_some());
    }
}
