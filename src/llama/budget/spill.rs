//! Decoded weights as evictable file pages: what plain llama.cpp's mmap load gives.
//!
//! A DC load decodes weights into llama.cpp's CPU weight buffer: anonymous memory, which a
//! memory limit cannot reclaim without swap. Plain llama.cpp maps the GGUF file instead, so
//! under a limit the kernel drops weight pages and reads them back when they are used:
//! slower, but it runs. Where the decoded model does not fit and a budget cannot save enough
//! (weights that compression barely shrinks: Q4_1, Q4_K), this moves the decoded bytes into
//! an unnamed temporary file on a disk (`O_TMPFILE`: it has no name, and the kernel deletes
//! it when the last mapping goes, Ctrl-C or crash included) and maps that file, shared, over
//! the same addresses. Pointers do not change; llama.cpp sees the same bytes; the pages are
//! now clean page cache that the limit may reclaim, as plain's are. A spiller moves at most
//! what it was opened for ([`Spiller::open`]; the default load opens it for twice what the
//! limit lacks, `limit::spill_quota`): the kernel then evicts, and a pass reads back, only
//! those pages.
//!
//! Each piece is written, flushed to the disk (so its pages are clean, hence reclaimable)
//! and only then mapped over the anonymous pages, which the kernel frees: at most one piece
//! is held twice. Whole pages only: as each tensor is read ([`Spiller::take`]) its partial
//! first and last pages stay; once the load is done, the pages neighbouring tensors share
//! and the small tensors read through the C library's buffer follow ([`Spiller::take_rest`]).
//! Measured (SmolLM2 Q4_1, 92.1 MiB, under a 127 MiB cap): all of it moved; llama.cpp's load
//! took 2.9 s, against 1.2-1.5 s uncapped without moving (and with early decoding).
//!
//! llama.cpp reads a tensor it repacks (Q4_0, Q4_K on AVX2: interleaved blocks for faster
//! kernels) into a staging buffer and hands that to `ggml_backend_tensor_set`, which converts
//! it into the tensor's memory in a `CPU_REPACK` buffer: a read therefore moves one read later
//! ([`after_read`]), and a read that was staged moves the tensor's converted memory instead
//! ([`staged`], from the preload's interposer). Repacking stays on, and the output is plain
//! llama.cpp's (sessions 19-28 turned it off: another score, another text).
//!
//! The quota goes to a lookup table first (the token embedding of a model with its own
//! output head, [`Spiller::keep_for_lookups`]): a token reads one row of it, so its pages
//! read back from the file cost one page a token, where any other weight's are all read
//! back by every token. llama.cpp loads repacked tensors first (Qwen2.5-Coder-1.5B: its
//! token embedding, 125 MiB, after 862 MiB of layers).
//!
//! Of a lookup table the last pages move first ([`Spiller::take_lookup`],
//! [`Spiller::take_rest_of_lookup`]): vocabularies number their tokens roughly by how often
//! they occur (BPE in the order of its merges, MiniLM's WordPiece after its characters), so
//! the last rows are the rarest tokens', the rows a token least often reads back from the
//! disk. MiniLM's evaluation sentences (1932 tokens, 1039 of them different) read 145 of
//! the 2560 pages of its F16 table's last 10 MiB, 697 of its first 10 MiB's.
//!
//! After the load, a batch whose buffers would not fit moves more ([`super::refit`]), and so
//! does a model loaded without a budget whose switch to one finds nothing to stream.
//!
//! Trust: the bytes were checked (each chunk's checksum) when decoded; read back from the
//! temporary file they are the same trust as plain llama.cpp's GGUF read back from its disk.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Bytes written and flushed before they are mapped over the anonymous copy: the most that
/// is held twice at any moment.
const PIECE: usize = 8 << 20;

/// Tensors of one ggml buffer at most this far apart are neighbours (ggml aligns each to 32
/// bytes): the padding between them is the buffer's, so the page they share moves whole.
const TENSOR_GAP: usize = 64;

/// Free disk space kept beyond the file.
const DISK_MARGIN: u64 = 256 << 20;

/// Why weights could not move to a file.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error("no directory for the decoded weights: {0} is on a memory file system")]
    MemoryFileSystem(PathBuf),
    #[error("{dir}: {free} bytes free, the decoded weights need {need}")]
    NoRoom { dir: PathBuf, free: u64, need: u64 },
    #[error("{dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a spill moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spilled {
    pub bytes: u64,
    pub spans: usize,
}

/// The whole pages inside `ranges` (address, length), merged where they are at most
/// `join_gap` bytes apart.
pub fn page_spans(ranges: &[(usize, usize)], page: usize, join_gap: usize) -> Vec<(usize, usize)> {
    let mut r: Vec<(usize, usize)> = ranges
        .iter()
        .filter(|&&(_, len)| len > 0)
        .map(|&(a, len)| (a, a.saturating_add(len)))
        .collect();
    r.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (s, e) in r {
        match merged.last_mut() {
            Some(last) if s <= last.1.saturating_add(join_gap) => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
        .into_iter()
        .filter_map(|(s, e)| {
            let s = s.next_multiple_of(page);
            let e = e - e % page;
            (s < e).then_some((s, e - s))
        })
        .collect()
}

/// Bytes of `ranges` (tensors of one buffer) a spiller moves at most: their whole pages,
/// neighbours' shared pages included ([`Spiller::take_rest`]).
pub fn movable_bytes(ranges: &[(usize, usize)]) -> u64 {
    page_spans(ranges, crate::io::page_size(), TENSOR_GAP)
        .iter()
        .map(|&(_, len)| len as u64)
        .sum()
}

/// The parts of `[start, end)` outside every range of `covered` (sorted by start).
fn uncovered(start: usize, end: usize, covered: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = start;
    for &(s, e) in covered {
        if e <= at || s >= end {
            continue;
        }
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
    }
    if at < end {
        out.push((at, end));
    }
    out
}

/// `f_type` values of file systems held in memory (linux/magic.h): a file there is memory
/// the limit counts and cannot reclaim.
const MEMORY_FILE_SYSTEMS: [i64; 2] = [0x0102_1994 /* tmpfs */, 0x8584_58f6 /* ramfs */];

/// Checks that `dir` is on a disk (not in memory) with room for `need` bytes beside
/// [`DISK_MARGIN`].
fn check_disk(dir: &Path, need: u64) -> Result<(), SpillError> {
    let io = |source| SpillError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))
        .map_err(|_| io(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: all-zero statfs/statvfs are valid values for the calls to overwrite; `c` is a
    // NUL-terminated path alive for the calls.
    let (fs, vfs) = unsafe {
        let mut fs: libc::statfs = std::mem::zeroed();
        let mut vfs: libc::statvfs = std::mem::zeroed();
        if libc::statfs(c.as_ptr(), &mut fs) != 0 || libc::statvfs(c.as_ptr(), &mut vfs) != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        (fs, vfs)
    };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    if MEMORY_FILE_SYSTEMS.contains(&(fs.f_type as i64)) {
        return Err(SpillError::MemoryFileSystem(dir.to_path_buf()));
    }
    #[allow(clippy::unnecessary_cast)]
    let free = (vfs.f_bavail as u64).saturating_mul(vfs.f_frsize as u64);
    if free < need.saturating_add(DISK_MARGIN) {
        return Err(SpillError::NoRoom {
            dir: dir.to_path_buf(),
            free,
            need,
        });
    }
    Ok(())
}

/// Checks that `dir` is on a disk with room for `need` bytes and opens an unnamed file there.
fn open_unnamed(dir: &Path, need: u64) -> Result<File, SpillError> {
    check_disk(dir, need)?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
        .map_err(|source| SpillError::Io {
            dir: dir.to_path_buf(),
            source,
        })
}

/// An unnamed file on a disk that whole pages of memory move into.
pub struct Spiller {
    file: File,
    dir: PathBuf,
    /// Where the next piece goes in the file.
    offset: u64,
    /// The page ranges moved so far (start, end).
    moved: Vec<(usize, usize)>,
    /// The first failure: nothing more moves after it.
    failed: Option<SpillError>,
    /// Bytes it moves at most: what it was opened for (the disk had room for that).
    quota: u64,
    /// The part of the quota that only a lookup table's read may use, until it is read
    /// ([`Spiller::keep_for_lookups`]).
    kept_for_lookups: u64,
    /// Bytes of the lookup table moved ([`Spiller::take_lookup`]).
    lookup_moved: u64,
    /// The page ranges of the lookup table among `moved`: a token reads a row of it, not
    /// all of it, so none of it is kept in memory ([`Spiller::keep_in_memory`]).
    lookup_pieces: Vec<(usize, usize)>,
    /// The kernel's read-ahead window for the file ([`crate::io::read_ahead_bytes`]).
    read_ahead: u64,
    /// Bytes of the moved pages last kept in memory ([`Spiller::keep_in_memory`]).
    kept: u64,
}

/// Writes `len` bytes of `file` from `offset` back to the disk and waits for them: their pages
/// are then clean, which a memory limit can reclaim (dirty ones it must wait for).
pub fn write_back(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    // SAFETY: sync_file_range on a descriptor the caller owns; it only writes back.
    let synced = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset,
            len,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )
    };
    if synced != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// An unnamed file (it goes with its last descriptor or mapping) in the first of `dirs` that
/// is on a disk with room for `need` bytes, and that directory; else the last directory's
/// reason.
pub fn unnamed_file(need: u64, dirs: &[PathBuf]) -> Result<(File, PathBuf), SpillError> {
    let mut last = SpillError::MemoryFileSystem(PathBuf::new());
    for dir in dirs {
        match open_unnamed(dir, need) {
            Ok(file) => return Ok((file, dir.clone())),
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl Spiller {
    /// An unnamed file in the first of `dirs` that is on a disk with room for `need` bytes,
    /// which is the most it moves (whole pages); else the last directory's reason.
    pub fn open(need: u64, dirs: &[PathBuf]) -> Result<Spiller, SpillError> {
        let (file, dir) = unnamed_file(need, dirs)?;
        Ok(Spiller {
            read_ahead: crate::io::read_ahead_bytes(&file),
            lookup_pieces: Vec::new(),
            kept: 0,
            file,
            dir,
            offset: 0,
            moved: Vec::new(),
            failed: None,
            quota: need,
            kept_for_lookups: 0,
            lookup_moved: 0,
        })
    }

    /// The directory the file is in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes moved so far.
    pub fn moved(&self) -> u64 {
        self.offset
    }

    /// Bytes of the whole pages of `ranges` (as [`movable_bytes`] counts them) not moved yet.
    pub fn unmoved_bytes(&self, ranges: &[(usize, usize)]) -> u64 {
        let mut moved = self.moved.clone();
        moved.sort_unstable();
        page_spans(ranges, crate::io::page_size(), TENSOR_GAP)
            .iter()
            .flat_map(|&(start, len)| uncovered(start, start + len, &moved))
            .map(|(s, e)| (e - s) as u64)
            .sum()
    }

    /// Bytes of the moved pages in memory now: the pages a limit may reclaim (and the
    /// kernel read back when they are used). `mincore` of a shared file mapping says
    /// whether each page is in the page cache.
    pub fn resident(&self) -> u64 {
        self.moved
            .iter()
            .map(|&(s, e)| ((e - s) as u64).saturating_sub(crate::io::unwritten_bytes(s, e - s)))
            .sum()
    }

    /// The kernel's read-ahead window for the moved pages: what a fault among those mapped
    /// `MADV_SEQUENTIAL` reads at once.
    pub fn read_ahead(&self) -> u64 {
        self.read_ahead
    }

    /// Keeps about `bytes` of the moved pages (the lookup table's not counted, whole pages,
    /// in the order they moved) mapped with the kernel's usual advice, the rest
    /// `MADV_SEQUENTIAL`, and returns what it keeps so. A pass reads the moved pages in a
    /// cycle, and the kernel ignores a `MADV_SEQUENTIAL` mapping's references, so that under
    /// a limit that holds only part of them it evicts them first in, first out: each pass
    /// then reads all of them back. Pages it sees referenced it keeps (they go to the active
    /// list) while others are there to take: the pages kept so stay in memory, and the
    /// rest cycle through what is left ([`super::limit::moved_kept_in_memory`] sizes it).
    /// A later call moves the line between the two; advice changes no byte.
    pub fn keep_in_memory(&mut self, bytes: u64) -> u64 {
        let page = crate::io::page_size();
        let mut left = usize::try_from(bytes).unwrap_or(usize::MAX) / page * page;
        let mut kept = 0u64;
        for &(s, e) in &self.moved {
            if self.lookup_pieces.contains(&(s, e)) {
                continue;
            }
            let keep = (e - s).min(left);
            left -= keep;
            kept += keep as u64;
            if keep > 0 {
                // SAFETY: advice on a range we moved (llama.cpp's weight buffer, which outlives
                // the model's spiller); MADV_NORMAL and MADV_SEQUENTIAL change only the
                // kernel's read-ahead and reclaim of the range, never a byte of it.
                let _ = unsafe { libc::madvise(s as *mut libc::c_void, keep, libc::MADV_NORMAL) };
            }
            if keep < e - s {
                // SAFETY: as above.
                let _ = unsafe {
                    libc::madvise(
                        (s + keep) as *mut libc::c_void,
                        e - s - keep,
                        libc::MADV_SEQUENTIAL,
                    )
                };
            }
        }
        self.kept = kept;
        kept
    }

    /// Bytes of the moved pages the last [`Spiller::keep_in_memory`] kept (0 before any).
    pub fn kept_in_memory(&self) -> u64 {
        self.kept
    }

    /// Lets it move `more` bytes from now on (where it could move fewer), if the disk has
    /// room for them; else, or after an earlier failure, why not (it moves nothing more).
    pub fn allow(&mut self, more: u64) -> Result<(), &SpillError> {
        if self.failed.is_none() {
            let unused = self.quota.saturating_sub(self.offset);
            match check_disk(&self.dir, more.saturating_sub(unused)) {
                Ok(()) => self.quota = self.offset.saturating_add(unused.max(more)),
                Err(e) => self.failed = Some(e),
            }
        }
        match &self.failed {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Moves at most `more` bytes from now on (where it could move more).
    pub fn cap(&mut self, more: u64) {
        self.quota = self.quota.min(self.offset.saturating_add(more));
    }

    /// Keeps up to `bytes` of the quota for the read of the model's lookup table
    /// ([`Spiller::take_lookup`]): other reads before it move only the rest. A lookup
    /// table's pages in the file cost a token one page read back; any other tensor's cost
    /// it all of them.
    pub fn keep_for_lookups(&mut self, bytes: u64) {
        self.kept_for_lookups = bytes.min(self.quota.saturating_sub(self.offset));
    }

    /// Gives the quota kept for a lookup table to any tensor (the load is over: the table
    /// was read, or is not read).
    pub fn stop_keeping(&mut self) {
        self.kept_for_lookups = 0;
    }

    /// Why moving stopped, if it did.
    pub fn failure(&self) -> Option<&SpillError> {
        self.failed.as_ref()
    }

    /// Moves the whole pages inside `[addr, addr + len)` into the file, mapped shared over
    /// the same addresses. After a failure (said by [`Spiller::failure`]) it moves nothing.
    ///
    /// # Safety
    /// The range is live, readable and writable memory of this process that no other thread
    /// accesses during the call, and whose owner frees it only by `munmap` or `free` (both
    /// of which accept the new mapping).
    pub unsafe fn take(&mut self, addr: usize, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { self.take_within(addr, len, self.kept_for_lookups, false) }
    }

    /// [`Spiller::take`] for the read of the lookup table, which may use the whole quota;
    /// what it leaves of the part kept for it goes to the other tensors.
    ///
    /// # Safety
    /// As for [`Spiller::take`].
    pub unsafe fn take_lookup(&mut self, addr: usize, len: usize) {
        let before = self.offset;
        // SAFETY: forwarded from the caller.
        unsafe { self.take_within(addr, len, 0, true) };
        self.lookup_moved += self.offset - before;
        self.kept_for_lookups = 0;
    }

    /// Bytes of the lookup table moved as it was read ([`Spiller::take_lookup`]).
    pub fn lookup_moved(&self) -> u64 {
        self.lookup_moved
    }

    /// Moves the whole pages of the range up to the quota less `kept`: its first pages, or
    /// its last ones if `last_first` (a lookup table's: see the module doc).
    ///
    /// # Safety
    /// As for [`Spiller::take`].
    unsafe fn take_within(&mut self, addr: usize, len: usize, kept: u64, last_first: bool) {
        if self.failed.is_some() {
            return;
        }
        let page = crate::io::page_size();
        let quota = self.quota.saturating_sub(kept);
        for (start, len) in page_spans(&[(addr, len)], page, 0) {
            // Whole pages up to the quota.
            let left = quota.saturating_sub(self.offset) / page as u64 * page as u64;
            let taken = len.min(usize::try_from(left).unwrap_or(usize::MAX));
            let (start, len) = if last_first {
                (start + len - taken, taken)
            } else {
                (start, taken)
            };
            let mut done = 0;
            while done < len {
                let n = PIECE.min(len - done);
                // SAFETY: forwarded from the caller, for a page-aligned part of its range.
                if let Err(e) = unsafe { self.move_piece(start + done, n, last_first) } {
                    self.failed = Some(SpillError::Io {
                        dir: self.dir.clone(),
                        source: e,
                    });
                    return;
                }
                done += n;
            }
        }
    }

    /// Moves what is left of `ranges` (tensors whose pages were not all moved as they were
    /// read: the pages two tensors share, tensors read through the C library's buffer).
    ///
    /// # Safety
    /// As for [`Spiller::take`], for every range.
    pub unsafe fn take_rest(&mut self, ranges: &[(usize, usize)]) {
        // SAFETY: forwarded from the caller.
        unsafe { self.take_rest_from(ranges, false) }
    }

    /// [`Spiller::take_rest`] for a lookup table: its last pages first (see the module
    /// doc).
    ///
    /// # Safety
    /// As for [`Spiller::take`], for every range.
    pub unsafe fn take_rest_of_lookup(&mut self, ranges: &[(usize, usize)]) {
        // SAFETY: forwarded from the caller.
        unsafe { self.take_rest_from(ranges, true) }
    }

    /// What is left of `ranges`, from their first pages on or from their last back.
    ///
    /// # Safety
    /// As for [`Spiller::take`], for every range.
    unsafe fn take_rest_from(&mut self, ranges: &[(usize, usize)], last_first: bool) {
        let mut moved = self.moved.clone();
        moved.sort_unstable();
        let mut left: Vec<(usize, usize)> = page_spans(ranges, crate::io::page_size(), TENSOR_GAP)
            .into_iter()
            .flat_map(|(start, len)| uncovered(start, start + len, &moved))
            .collect();
        if last_first {
            left.reverse();
        }
        for (s, e) in left {
            // SAFETY: forwarded from the caller, for a part of its range.
            unsafe { self.take_within(s, e - s, self.kept_for_lookups, last_first) };
        }
    }

    /// Moves one piece, of the lookup table if `lookup`.
    ///
    /// # Safety
    /// As for [`Spiller::take`]; `at` and `n` are page-aligned.
    unsafe fn move_piece(&mut self, at: usize, n: usize, lookup: bool) -> std::io::Result<()> {
        let offset = self.offset;
        // SAFETY: [at, at + n) lies in the caller's range, which nothing accesses now.
        let bytes = unsafe { std::slice::from_raw_parts(at as *const u8, n) };
        self.file.write_all_at(bytes, offset)?;
        // Written back before it is mapped: clean pages are what a limit can reclaim.
        write_back(&self.file, offset, n as u64)?;
        // SAFETY: MAP_FIXED replaces the caller's pages at [at, at + n) (page-aligned, inside
        // its range, accessed by no one now) with the file's, which hold the same bytes.
        let mapped = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                n,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                self.file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if mapped as usize != at {
            let err = std::io::Error::last_os_error();
            // A failed MAP_FIXED may have unmapped the range already: put anonymous memory
            // back and read the bytes into it from the file.
            // SAFETY: as above, for an anonymous private mapping.
            let back = unsafe {
                libc::mmap(
                    at as *mut libc::c_void,
                    n,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            // SAFETY: when `back` is `at`, the range is mapped writable again, and ours.
            let restored = back as usize == at
                && self
                    .file
                    .read_exact_at(
                        unsafe { std::slice::from_raw_parts_mut(at as *mut u8, n) },
                        offset,
                    )
                    .is_ok();
            if !restored {
                // The caller's bytes are gone and cannot come back: continuing would compute
                // with garbage.
                crate::log_line!(
                    "dcgguf: fatal: weights moved to a file could not be mapped back ({err})"
                );
                std::process::abort();
            }
            return Err(err);
        }
        // Map the pages in now (`MADV_POPULATE_READ`, Linux 5.14+; a hint before that): just
        // written, they are page cache no process maps, the first a limit reclaims, while
        // the context is created after the load; plain llama.cpp's weights are mapped pages
        // (it maps its file with MAP_POPULATE). SmolLM2 under a 127 MiB cap, two runs each
        // (2026-11-30): 52-56 t/s, 412-444 MiB read from disk, against 13-17 t/s and
        // 1135-1310 MiB without (plain mmap: 25-58 t/s, 580-750 MiB).
        // SAFETY: reads the range we just mapped (its own file's bytes); changes no byte.
        let _ = unsafe { libc::madvise(at as *mut libc::c_void, n, libc::MADV_POPULATE_READ) };
        // Read in order, every pass: `MADV_SEQUENTIAL` (the kernel reads ahead further on a
        // fault, and a reference through this mapping does not make its pages look recently
        // used, so they go before llama.cpp's own code and buffers do). SmolLM2
        // llama-completion, by hand, session 31, generation t/s: under 120.2 MiB 21.6-28.8
        // (median of 7: 24.9) against 13.0-26.1 (15.7); under 113.1 MiB 10.3-15.3 against
        // 10.5-12.4; under 124.4 MiB 21.7-72.5 (37.3) against 19.9-90.7 (42.4), the noise.
        // llama-perplexity under 93.8 MiB (all moved) 13.8 / 14.0 s against 15.5 / 15.0; Qwen
        // under 962.5 MiB 6.04 / 5.62 t/s against 4.76 / 5.37. `MADV_RANDOM` (no read-ahead)
        // took 3.5-4.6 t/s under 120.2 MiB. Nor does a read-ahead of our own beat the
        // kernel's, though its 8 MiB windows are too large for a small room (session 65):
        // session 66 mapped the moved pages `MADV_RANDOM` and had the graph callback ask
        // (`MADV_WILLNEED`) for the next nodes' moved weights, half the room ahead, in the
        // graph's order, cutting the graph's range there, a weight larger than that left
        // to the kernel. SmolLM2 llama-completion `-c 1024`, three runs each against
        // this: under 135 MiB prompt 156-178 t/s against 193-200, generation alike;
        // under 116 MiB 65-113 / 4.6-6.4 against 186-208 / 11.1-12.7. Once batches show
        // how many of them the limit leaves in memory, part of them lose this advice again
        // and stay ([`Spiller::keep_in_memory`]).
        // SAFETY: advice on the range we just mapped; changes no byte.
        let _ = unsafe { libc::madvise(at as *mut libc::c_void, n, libc::MADV_SEQUENTIAL) };
        self.offset += n as u64;
        self.moved.push((at, at + n));
        if lookup {
            self.lookup_pieces.push((at, at + n));
        }
        Ok(())
    }
}

thread_local! {
    /// The load's last read into the caller's memory that has not moved yet: it moves at
    /// the next read ([`after_read`]) or at the end of the load ([`finish_reads`]), unless llama.cpp hands it to `ggml_backend_tensor_set` first
    /// ([`staged`]): then it was a staging buffer and the tensor's memory moves instead.
    static UNMOVED_READ: std::cell::RefCell<Option<UnmovedRead>> =
        const { std::cell::RefCell::new(None) };
}

/// A read waiting to move ([`UNMOVED_READ`]).
struct UnmovedRead {
    spiller: SharedSpiller,
    at: usize,
    len: usize,
    /// The model's lookup table ([`Spiller::take_lookup`]).
    lookup: bool,
}

impl UnmovedRead {
    /// # Safety
    /// The range is as [`Spiller::take`] requires.
    unsafe fn take(self) {
        let mut s = lock(&self.spiller);
        // SAFETY: forwarded from the caller.
        unsafe {
            if self.lookup {
                s.take_lookup(self.at, self.len);
            } else {
                s.take(self.at, self.len);
            }
        }
    }
}

/// A spiller shared by a load's stream and, after the load, the batch-time check.
pub type SharedSpiller = std::sync::Arc<std::sync::Mutex<Spiller>>;

fn lock(s: &SharedSpiller) -> std::sync::MutexGuard<'_, Spiller> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// After llama.cpp's load read `len` bytes into its memory at `at` (the model's lookup
/// table if `lookup`, [`Spiller::take_lookup`]): the previous read's
/// pages move to `spiller`'s file now, and these wait for the next read. llama.cpp reads a
/// tensor straight into its place when its buffer is plain host memory, and into a staging
/// buffer it then passes to `ggml_backend_tensor_set` otherwise (a repacked tensor: the
/// buffer converts the bytes into the tensor's own memory); one read later, [`staged`]
/// has told which.
///
/// # Safety
/// The previous read's range is still as [`Spiller::take`] requires, unless [`staged`] took
/// it back: llama.cpp's weight memory, filled and not freed (the load goes on), touched by
/// no other thread.
pub unsafe fn after_read(spiller: &SharedSpiller, at: usize, len: usize, lookup: bool) {
    READS_WAITING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let read = UnmovedRead {
        spiller: spiller.clone(),
        at,
        len,
        lookup,
    };
    let previous = UNMOVED_READ.with(|r| r.replace(Some(read)));
    if let Some(previous) = previous {
        READS_WAITING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: forwarded from the caller.
        unsafe { previous.take() };
    }
}

/// Whether `data` is the load's read still waiting to move ([`after_read`]): what
/// `ggml_backend_tensor_set` is given is then a staging buffer. Cheap: it is asked at
/// every `ggml_backend_tensor_set` of the process (each batch sets its inputs).
#[unsafe(link_section = ".text.hot.dcgguf")]
#[inline]
pub fn awaits_staging(data: usize) -> bool {
    // One relaxed load where no load moves weights: the thread-local's code (and its first
    // use's registration) stays off the per-batch path.
    READS_WAITING.load(std::sync::atomic::Ordering::Relaxed) > 0
        && UNMOVED_READ.with(|r| matches!(&*r.borrow(), Some(w) if w.at == data))
}

/// Reads waiting to move ([`UNMOVED_READ`]), over all threads.
static READS_WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `ggml_backend_tensor_set` has just copied (or converted) the waiting read at `data` into
/// a tensor, whose memory is `dest` when it is plain host memory that ggml will not write
/// again (a CPU or repacked CPU buffer): that memory moves instead of the staging buffer,
/// which is forgotten (llama.cpp frees it next). `None`: nothing moves.
///
/// # Safety
/// `dest` is as [`Spiller::take`] requires.
pub unsafe fn staged(data: usize, dest: Option<(usize, usize)>) {
    let waiting = UNMOVED_READ.with(|r| {
        let mut r = r.borrow_mut();
        match &*r {
            Some(w) if w.at == data => r.take(),
            _ => None,
        }
    });
    if waiting.is_some() {
        READS_WAITING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    if let (Some(w), Some((at, len))) = (waiting, dest) {
        let moved = UnmovedRead { at, len, ..w };
        // SAFETY: forwarded from the caller.
        unsafe { moved.take() };
    }
}

/// At the end of a load on this thread: its last read moves if `loaded` (the model holds
/// it), else it is forgotten (llama.cpp freed its memory with the failed load).
///
/// # Safety
/// When `loaded`, the last read's range is as [`Spiller::take`] requires.
pub unsafe fn finish_reads(loaded: bool) {
    let last = UNMOVED_READ.with(|r| r.borrow_mut().take());
    if last.is_some() {
        READS_WAITING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(last) = last
        && loaded
    {
        // SAFETY: forwarded from the caller.
        unsafe { last.take() };
    }
}

/// Moves the whole pages of `ranges` (address, length) into an unnamed file in `dir`, mapped
/// shared over the same addresses.
///
/// # Safety
/// As for [`Spiller::take`], for every range.
pub unsafe fn spill(ranges: &[(usize, usize)], dir: &Path) -> Result<Spilled, SpillError> {
    let spans = page_spans(ranges, crate::io::page_size(), 0);
    let need: u64 = spans.iter().map(|&(_, l)| l as u64).sum();
    let mut s = Spiller::open(need, &[dir.to_path_buf()])?;
    for &(at, len) in &spans {
        // SAFETY: forwarded from the caller.
        unsafe { s.take(at, len) };
    }
    match s.failed {
        Some(e) => Err(e),
        None => Ok(Spilled {
            bytes: s.offset,
            spans: spans.len(),
        }),
    }
}

/// Anonymous memory of `len` bytes filled with a pattern (`shift` varies it), the hash of
/// its bytes and its address: weights for the tests to move.
#[cfg(test)]
pub(super) fn patterned_memory(len: usize, shift: u32) -> (memmap2::MmapMut, u64, usize) {
    let mut buf = memmap2::MmapMut::map_anon(len).unwrap();
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> shift) as u8;
    }
    let hash = crate::io::hash::xxh3_64(&buf);
    let base = buf.as_ptr() as usize;
    (buf, hash, base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_whole_pages_inside_merged_ranges() {
        let p = 4096;
        assert_eq!(page_spans(&[(100, 10_000)], p, 0), vec![(4096, 4096)]);
        assert_eq!(
            page_spans(&[(0, 8192), (8192, 4096)], p, 0),
            vec![(0, 12288)]
        );
        assert_eq!(page_spans(&[(8200, 100), (0, 9000)], p, 0), vec![(0, 8192)]);
        assert_eq!(page_spans(&[(10, 100), (0, 0)], p, 0), vec![]);
        assert_eq!(
            page_spans(&[(20_000, 20_000), (0, 8192)], p, 0),
            vec![(0, 8192), (20_480, 16_384)]
        );
        // Neighbours 32 bytes apart share their page when the gap is joined.
        let two = [(0, 6000), (6032, 6256)];
        assert_eq!(page_spans(&two, p, 0), vec![(0, 4096), (8192, 4096)]);
        assert_eq!(page_spans(&two, p, 64), vec![(0, 12288)]);
    }

    #[test]
    fn no_file_on_a_memory_file_system_nor_without_room() {
        let here = std::env::current_dir().unwrap();
        match Spiller::open(u64::MAX / 4, std::slice::from_ref(&here)) {
            Err(SpillError::NoRoom { need, .. }) => assert_eq!(need, u64::MAX / 4),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("room for 4 EiB"),
        }
        // /dev/shm is tmpfs on Linux: memory the limit counts.
        let shm = PathBuf::from("/dev/shm");
        match Spiller::open(1 << 20, std::slice::from_ref(&shm)) {
            Err(SpillError::MemoryFileSystem(d)) => assert_eq!(d, shm),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a file on /dev/shm"),
        }
        // The next directory is tried: the working directory (cargo's: the crate's, on disk).
        let s = Spiller::open(1 << 20, &[shm, here.clone()]).unwrap();
        assert_eq!(s.dir(), here);
        assert_eq!(s.moved(), 0);
        assert!(s.failure().is_none());
    }

    #[test]
    fn what_is_not_covered_yet() {
        assert_eq!(uncovered(0, 100, &[]), vec![(0, 100)]);
        assert_eq!(
            uncovered(0, 100, &[(10, 20), (30, 40)]),
            vec![(0, 10), (20, 30), (40, 100)]
        );
        assert_eq!(uncovered(10, 20, &[(0, 15), (15, 30)]), vec![]);
        assert_eq!(uncovered(10, 20, &[(0, 5), (25, 30)]), vec![(10, 20)]);
    }

    /// The /proc/self/smaps lines of the mapping that holds `addr`, its header line left out.
    fn smaps_of(addr: usize) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        let mut lines = Vec::new();
        for l in smaps.lines() {
            if let Some((range, _)) = l.split_once(' ')
                && let Some((a, b)) = range.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = (a..b).contains(&addr);
                continue;
            }
            if inside {
                lines.push(l.to_string());
            }
        }
        lines
    }

    fn rss_kinds(addr: usize) -> (u64, u64) {
        // (Anonymous kB, Rss kB) of the mapping that holds `addr`.
        let (mut anon, mut rss) = (0, 0);
        for l in smaps_of(addr) {
            let kb = |p: &str| {
                l.strip_prefix(p)
                    .map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap())
            };
            if let Some(v) = kb("Anonymous:") {
                anon = v;
            }
            if let Some(v) = kb("Rss:") {
                rss = v;
            }
        }
        (anon, rss)
    }

    /// The mapping's `VmFlags` (two-letter codes: `sr` for `MADV_SEQUENTIAL`, `rr` for
    /// `MADV_RANDOM`); None where the kernel does not list them.
    fn vm_flags(addr: usize) -> Option<Vec<String>> {
        smaps_of(addr).iter().find_map(|l| {
            l.strip_prefix("VmFlags:")
                .map(|f| f.split_whitespace().map(str::to_string).collect())
        })
    }

    fn populate_supported() -> bool {
        let m = memmap2::MmapMut::map_anon(4096).unwrap();
        // SAFETY: our own mapping, read in place.
        unsafe {
            libc::madvise(
                m.as_ptr() as *mut libc::c_void,
                4096,
                libc::MADV_POPULATE_READ,
            ) == 0
        }
    }

    #[test]
    fn spilled_bytes_read_the_same_from_file_pages() {
        let len = 20 << 20;
        let (mut buf, want, base) = patterned_memory(len, 13);
        // A tensor starting mid-page: its first partial page stays anonymous.
        let dir = std::env::temp_dir();
        // SAFETY: the buffer is ours and untouched during the call.
        let r = unsafe { spill(&[(base + 100, len - 100)], &dir) };
        match r {
            Err(SpillError::MemoryFileSystem(_)) => {
                // /tmp in memory: the working directory (cargo runs tests in the crate's).
                let d = std::env::current_dir().unwrap();
                // SAFETY: as above.
                let r = unsafe { spill(&[(base + 100, len - 100)], &d) }.unwrap();
                assert_eq!(r.bytes as usize, len - 4096);
            }
            r => assert_eq!(r.unwrap().bytes as usize, len - 4096),
        }
        // Mapped in by the move itself, before anything reads them (the first 8 MiB piece is
        // one mapping), where the kernel can (Linux 5.14+).
        let (anon, rss) = rss_kinds(base + 8192);
        assert_eq!(anon, 0, "the moved pages are file pages, not anonymous");
        if populate_supported() {
            assert!(
                rss >= 8 << 10,
                "only {rss} kB of the moved pages are mapped"
            );
        } else {
            eprintln!("MADV_POPULATE_READ not supported here: mapped pages not checked");
        }
        // Read back in order (`MADV_SEQUENTIAL`: the kernel reads ahead further and drops
        // what was read first; measured in move_piece), the file's mapping and no other.
        let flags = vm_flags(base + 8192).expect("smaps lists VmFlags (Linux 3.8+)");
        assert!(
            flags.iter().any(|f| f == "sr") && !flags.iter().any(|f| f == "rr"),
            "the moved pages are not advised sequential: VmFlags {flags:?}"
        );
        let first = vm_flags(base).expect("VmFlags");
        assert!(
            !first.iter().any(|f| f == "sr"),
            "the first partial page stayed anonymous and unadvised: VmFlags {first:?}"
        );
        assert_eq!(
            crate::io::hash::xxh3_64(&buf),
            want,
            "same bytes after the move"
        );
        // Writable still (as llama.cpp's buffer was), and freed by munmap as before.
        buf[len - 1] ^= 1;
        drop(buf);
    }

    #[test]
    fn a_limited_spiller_moves_whole_pages_up_to_its_quota_and_more_only_when_allowed() {
        let page = crate::io::page_size();
        let len = 64 * page;
        let (buf, want, base) = patterned_memory(len, 11);
        let here = std::env::current_dir().unwrap();
        // Opened for ten and a half pages: ten move.
        let quota = (10 * page + page / 2) as u64;
        let mut s = Spiller::open(quota, &[std::env::temp_dir(), here]).unwrap();
        // SAFETY: the buffer is ours and untouched during the calls.
        unsafe {
            s.take(base, 8 * page);
            s.take(base + 8 * page, 8 * page);
            s.take_rest(&[(base, len)]);
        }
        assert!(s.failure().is_none());
        assert_eq!(s.moved() as usize, 10 * page);
        // What of a range has not moved yet: whole pages only, the moved ones left out.
        assert_eq!(s.unmoved_bytes(&[(base, len)]) as usize, 54 * page);
        assert_eq!(s.unmoved_bytes(&[(base, 10 * page)]), 0);
        assert_eq!(
            s.unmoved_bytes(&[(base + 9 * page, 2 * page + 1)]) as usize,
            page,
            "page 10 unmoved, page 11 not whole"
        );
        assert_eq!(rss_kinds(base + 9 * page).0, 0, "page 9 moved");
        let (anon, _) = rss_kinds(base + 10 * page);
        assert!(anon > 0, "page 10 stays anonymous");
        assert_eq!(crate::io::hash::xxh3_64(&buf), want, "same bytes");
        // Just written, the moved pages are in the page cache: the limit may reclaim them.
        assert_eq!(s.resident(), s.moved());
        // Allowed three more pages later (a batch that would not fit): three more move.
        s.allow(3 * page as u64).unwrap();
        // SAFETY: as above.
        unsafe { s.take_rest(&[(base, len)]) };
        assert_eq!(s.moved() as usize, 13 * page);
        assert_eq!(rss_kinds(base + 12 * page).0, 0, "page 12 moved");
        assert!(rss_kinds(base + 13 * page).0 > 0, "page 13 stays anonymous");
        // More than the disk holds: refused, said, and nothing more moves.
        assert!(matches!(
            s.allow(u64::MAX / 4),
            Err(SpillError::NoRoom { .. })
        ));
        assert!(matches!(s.failure(), Some(SpillError::NoRoom { .. })));
        assert!(s.allow(page as u64).is_err());
        // SAFETY: as above.
        unsafe { s.take_rest(&[(base, len)]) };
        assert_eq!(s.moved() as usize, 13 * page);
        assert_eq!(crate::io::hash::xxh3_64(&buf), want, "same bytes");
        drop(s);
        drop(buf);
    }

    #[test]
    fn the_moved_pages_kept_in_memory_lose_the_sequential_advice_a_lookup_tables_never() {
        let page = crate::io::page_size();
        let len = 32 * page;
        let (buf, want, base) = patterned_memory(len, 5);
        let here = std::env::current_dir().unwrap();
        let mut s = Spiller::open(16 * page as u64, &[std::env::temp_dir(), here]).unwrap();
        // A lookup table's four pages (0-3), then twelve of other weights (8-19).
        // SAFETY: the buffer is ours and untouched during the calls.
        unsafe {
            s.take_lookup(base, 4 * page);
            s.take(base + 8 * page, 12 * page);
        }
        assert_eq!(s.moved() as usize, 16 * page);
        let sequential = |at: usize| {
            vm_flags(base + at * page)
                .expect("smaps lists VmFlags (Linux 3.8+)")
                .iter()
                .any(|f| f == "sr")
        };
        assert!((0..4).chain(8..20).all(sequential), "moved: all sequential");
        // Five and a half pages' worth: the first five moved of the others, whole pages.
        assert_eq!(
            s.keep_in_memory((5 * page + page / 2) as u64) as usize,
            5 * page
        );
        assert!((8..13).all(|p| !sequential(p)), "pages 8-12 kept");
        assert!((13..20).all(sequential), "pages 13-19 read in order");
        assert!((0..4).all(sequential), "the table's pages are never kept");
        // A later check moves the line, either way.
        assert_eq!(s.keep_in_memory(u64::MAX) as usize, 12 * page);
        assert!((8..20).all(|p| !sequential(p)) && (0..4).all(sequential));
        assert_eq!(s.keep_in_memory(0), 0);
        assert!((0..4).chain(8..20).all(sequential));
        assert_eq!(
            crate::io::hash::xxh3_64(&buf),
            want,
            "advice changes no byte"
        );
        drop(s);
        drop(buf);
    }

    #[test]
    fn the_quota_kept_for_a_lookup_table_waits_for_its_read() {
        let page = crate::io::page_size();
        let len = 32 * page;
        let (buf, want, base) = patterned_memory(len, 7);
        let here = std::env::current_dir().unwrap();
        // Ten pages, six of them kept for the lookup table (pages 16-23) read after eight
        // pages of other weights: four of those move, then six of the table.
        let mut s = Spiller::open(10 * page as u64, &[std::env::temp_dir(), here]).unwrap();
        s.keep_for_lookups(6 * page as u64);
        // SAFETY: the buffer is ours and untouched during the calls.
        unsafe { s.take(base, 8 * page) };
        assert_eq!(s.moved() as usize, 4 * page);
        assert!(
            rss_kinds(base + 4 * page).0 > 0,
            "page 4 waits: the rest is kept"
        );
        // SAFETY: as above.
        unsafe { s.take_lookup(base + 16 * page, 8 * page) };
        assert_eq!(s.moved() as usize, 10 * page);
        assert_eq!(s.lookup_moved() as usize, 6 * page);
        // Its last six pages (its rarest tokens' rows, see the module doc).
        assert_eq!(
            rss_kinds(base + 23 * page).0,
            0,
            "the table's last page moved"
        );
        assert_eq!(
            rss_kinds(base + 18 * page).0,
            0,
            "the table's sixth page from the end moved"
        );
        assert!(rss_kinds(base + 17 * page).0 > 0, "past the quota");
        // A batch short of memory later moves more of the table, from the end back too.
        s.allow(page as u64).unwrap();
        // SAFETY: as above.
        unsafe { s.take_rest_of_lookup(&[(base + 16 * page, 8 * page)]) };
        assert_eq!(s.moved() as usize, 11 * page);
        assert_eq!(
            rss_kinds(base + 17 * page).0,
            0,
            "the table's next page moved"
        );
        assert!(rss_kinds(base + 16 * page).0 > 0, "its first page stays");
        assert_eq!(
            s.unmoved_bytes(&[(base + 16 * page, 8 * page)]) as usize,
            page
        );
        // A table smaller than what was kept leaves the rest to the others.
        let mut s = Spiller::open(10 * page as u64, &[std::env::temp_dir()]).unwrap();
        s.keep_for_lookups(6 * page as u64);
        // SAFETY: as above.
        unsafe {
            s.take_lookup(base + 24 * page, 2 * page);
            s.take(base + 26 * page, 6 * page);
        }
        assert_eq!(s.moved() as usize, 8 * page);
        // Kept for a table never read: the end of the load gives it to the others.
        let mut s = Spiller::open(4 * page as u64, &[std::env::temp_dir()]).unwrap();
        s.keep_for_lookups(4 * page as u64);
        // SAFETY: as above (pages 8-11: no spiller above moved them).
        unsafe { s.take(base + 8 * page, 4 * page) };
        assert_eq!(s.moved(), 0);
        s.stop_keeping();
        // SAFETY: as above.
        unsafe { s.take_rest(&[(base + 8 * page, 4 * page)]) };
        assert_eq!(s.moved() as usize, 4 * page);
        assert_eq!(crate::io::hash::xxh3_64(&buf), want, "same bytes");
    }
}
