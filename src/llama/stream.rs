//! A `FILE *` (glibc `fopencookie`) that serves the ORIGINAL GGUF byte stream of a DC-GGUF
//! file, so llama.cpp's own loader (`llama_model_load_from_file_ptr`) can read it unchanged.
//!
//! `fread` calls on the stream are served by [`super::fread`] straight into the caller's
//! memory (a tensor read is one parallel decode of whole chunks into llama.cpp's tensor);
//! anything glibc reads through its own buffer comes through the cookie callbacks. Chunks read
//! piecewise are decoded once into a small cache, so the extra memory is a few chunks.
//! With a memory budget ([`crate::llama::budget`]), tensors chosen for on-demand decoding are not
//! read at load at all: the stream records where llama.cpp put them and skips them.
//!
//! While llama.cpp still parses metadata, [`super::early`] decodes the first chunks on a spare
//! core; the stream serves them when llama.cpp gets there.
//!
//! Bench mode: `DCGGUF_THROTTLE_BPS=<bytes/s>` simulates slow storage ([`super::throttle`],
//! with the `bench-throttle` feature only).

// Off linux-gnu the glibc parts are compiled out and some helpers go unused.
#![cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(unused))]

use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_void};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::budget::spill::Spiller;
use super::early::{EarlyDecode, Limits};
use super::throttle::Throttle;
use crate::dc::DcFile;
use crate::llama::budget::Residency;

/// The `FILE *` buffer. glibc refills it after every seek, and llama.cpp seeks before each
/// tensor, so it stays modest: 256 KiB cut read calls 15x against the 8 KiB default.
const STREAM_BUFFER: usize = 256 << 10;
/// How many decoded bytes the stream keeps for piecewise reads and the chunks decoded with
/// them: four full (1 MiB) chunks, rather than 12 and 8: the cache was the transient at the
/// end of a load; uncapped peak charge by cgroup, three cold runs each (2026-11-29 about 22:47
/// UTC, 2-core EPYC VM): SmolLM2 142-143 -> 141 MiB (= its steady state),
/// Qwen2.5-Coder-1.5B 1163-1168 -> 1159 MiB; load time unchanged within run-to-run noise
/// (Qwen warm: 1310-1353 ms against 1243-1466). Counted in bytes, not chunks (session 22):
/// a small model's tensors are one small chunk each (SmolLM2: 69 to 553 KB), and four of
/// them held less than the layer that llama.cpp reads out of file order, so chunks decoded
/// ahead were evicted before their read and decoded again, 76 times in one SmolLM2 load.
const CACHE_BYTES: u64 = 4 << 20;
/// Spare chunk buffers kept for reuse: one. With four, the buffers still held as the load
/// ends raised SmolLM2's uncapped peak (cgroup charge, which forms there) to 140.1-141.2 MiB
/// against 140.0-140.3 with one and plain mmap's 140.7-140.8, for the same time inside
/// dcgguf (60.5 and 60 ms, medians of 10 alternating cold runs, 2026-12-03).
const SPARE_BUFFERS: usize = 1;
/// At most this many chunks are decoded together when a read misses the cache (and no
/// more bytes than the cache holds).
const PREFETCH_CHUNKS: usize = 4;
/// Copies into the caller's memory at least this long populate its pages first
/// ([`super::prefault::populate_for_copy`]). MiniLM Q8_0, whose early-decoded weights are
/// all copied into llama.cpp's buffer (2026-12-05, AMD EPYC VM): first batch 129.5 ms after
/// start against 136.5 without (plain mmap 112; medians of 14 alternating cold runs); memcap
/// bench at the top, 20 rounds: 0.97x and 0.96x plain mmap's embeddings/s in two runs,
/// against 0.93x without in the run before them (0.94-0.95x in session 49).
const POPULATE_MIN: usize = 64 << 10;
/// Drop the DC file's mapped pages from our RSS after this many bytes are served (or decoded
/// early, [`super::early`]).
pub(super) const RELEASE_EVERY: u64 = 8 << 20;

/// Where the bytes come from.
pub enum Source {
    Dc(Arc<DcFile>),
    /// A plain GGUF read through the same stream (bench mode only).
    Plain(File),
}

/// A decoded chunk in the cache.
enum ChunkBuf {
    /// A buffer the stream reuses for later chunks.
    Heap(Vec<u8>),
    /// An early chunk's own pages, returned to the system as soon as it is dropped (a freed
    /// heap buffer of another thread's arena would stay resident).
    Pages(memmap2::MmapMut),
}

impl std::ops::Deref for ChunkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ChunkBuf::Heap(v) => v,
            ChunkBuf::Pages(m) => m,
        }
    }
}

/// The state behind one cookie `FILE *`.
pub struct Stream {
    path: PathBuf,
    src: Source,
    size: u64,
    pos: u64,
    cache: VecDeque<(u64, ChunkBuf)>,
    /// Buffers of evicted chunks, reused so that steady-state reads allocate nothing.
    spare: Vec<Vec<u8>>,
    /// Starts of the chunks this load has decoded (or taken from early decoding): not
    /// decoded again ahead of a read ([`Stream::fill_cache`]).
    decoded: std::collections::HashSet<u64>,
    throttle: Option<Arc<Throttle>>,
    /// Chunks decoded while llama.cpp was busy with metadata.
    early: Option<EarlyDecode>,
    pool: Option<Arc<rayon::ThreadPool>>,
    since_release: u64,
    residency: Option<Arc<Residency>>,
    /// Moves each tensor's decoded pages to a file as it is read ([`Spiller`]).
    spill: Option<Arc<std::sync::Mutex<Spiller>>>,
    /// Where the model's lookup table starts in the original file, with a spill.
    spill_lookup: Option<u64>,
    /// Reads come straight into the caller's memory (our `fread`).
    direct: bool,
    /// Where the caller's current direct read began (our `fread` serves it in pieces).
    request_start: Option<u64>,
    /// First read error, kept for the caller after llama.cpp gives up.
    error: ErrorSlot,
    /// Where the tensor phase of a load spends its time (said under DCGGUF_VERBOSE).
    timeline: ReadTimeline,
}

/// Time inside the stream's reads (direct or through glibc's buffer) from the first tensor
/// read on, against the whole tensor phase: the rest is llama.cpp's own work between reads
/// (repacking, page faults of its buffers).
#[derive(Default)]
struct ReadTimeline {
    first: Option<Instant>,
    last_end: Option<Instant>,
    inside: std::time::Duration,
    bytes: u64,
    calls: u64,
    /// Chunk bytes decoded into the stream's cache (the rest of `bytes` decoded straight
    /// into the caller's memory or came from early decoding).
    cached: u64,
}

impl Drop for Stream {
    fn drop(&mut self) {
        let t = &self.timeline;
        if let (Some(first), Some(end)) = (t.first, t.last_end)
            && crate::llama::verbose()
        {
            let span = end.duration_since(first).as_secs_f64() * 1e3;
            let inside = t.inside.as_secs_f64() * 1e3;
            crate::log_line!(
                "dcgguf: tensor reads: {} calls, {:.1} MB in {inside:.0} ms inside dcgguf, \
                 {:.0} ms in llama.cpp between them ({span:.0} ms from first to last); {:.1} MB \
                 decoded into the stream's cache",
                t.calls,
                t.bytes as f64 / 1e6,
                span - inside,
                t.cached as f64 / 1e6,
            );
        }
    }
}

/// Why a read of the stream failed. Kept typed so that the C API reports a corrupt chunk as
/// corrupt and a failing disk as I/O, whatever llama.cpp makes of the short read.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Dc(#[from] crate::dc::DcError),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("internal error (panic) while decoding")]
    Panic,
}

/// The stream's first error, readable after the `FILE *` is closed.
pub type ErrorSlot = Arc<Mutex<Option<StreamError>>>;

impl Stream {
    pub fn new(path: &Path, src: Source, throttle_bps: Option<f64>) -> std::io::Result<Stream> {
        let size = match &src {
            Source::Dc(dc) => dc.original_size(),
            Source::Plain(f) => f.metadata()?.len(),
        };
        let cost = match &src {
            Source::Dc(dc) if dc.original_size() > 0 => {
                dc.stored_size() as f64 / dc.original_size() as f64
            }
            _ => 1.0,
        };
        let throttle = Throttle::new(throttle_bps, cost).map(Arc::new);
        Ok(Stream {
            path: path.to_path_buf(),
            src,
            size,
            pos: 0,
            cache: VecDeque::new(),
            spare: Vec::new(),
            decoded: std::collections::HashSet::new(),
            throttle,
            early: None,
            spill: None,
            spill_lookup: None,
            pool: None,
            since_release: 0,
            residency: None,
            direct: false,
            request_start: None,
            error: Arc::new(Mutex::new(None)),
            timeline: ReadTimeline::default(),
        })
    }

    /// Decode on this pool instead of rayon's global one.
    pub fn with_pool(mut self, pool: Option<Arc<rayon::ThreadPool>>) -> Stream {
        self.pool = pool;
        self
    }

    /// Decode the first chunks on a spare thread while llama.cpp parses metadata (a DC file
    /// loaded without a memory budget). After [`Stream::with_residency`], whose deferred
    /// tensors it skips.
    pub fn with_early_decode(mut self, on: bool) -> Stream {
        if let (true, Source::Dc(dc)) = (on, &self.src) {
            // As far ahead as the whole model: a waiting chunk belongs to a tensor llama.cpp
            // has not read yet, whose pages in its buffers are untouched, so waiting and
            // loaded bytes together stay within the decoded model. A smaller bound (256 MiB
            // was) fills up early with the tensors llama.cpp reads last (it reads its
            // repacked tensors first; on Qwen2.5-1.5B Q4_K_M the 191 MB Q6_K token embedding,
            // first in the file, is read last), and then the thread idles while llama.cpp
            // repacks: measured on that model, 2 cores under load, the time inside the
            // stream's reads fell from 1.55-1.77 s to 0.94-1.08 s.
            let limits = Limits {
                pending_bytes: dc.original_size().max(Limits::default().pending_bytes),
            };
            // Tensors the stream defers are not read at load: not decoded ahead either.
            let skip = self
                .residency
                .as_ref()
                .map(|r| r.streamed_ranges())
                .unwrap_or_default();
            self.early = Some(EarlyDecode::start(
                dc.clone(),
                self.throttle.clone(),
                limits,
                &skip,
            ));
        }
        self
    }

    /// Move the whole pages of each tensor read into the caller's memory to `spill`'s file
    /// once read ([`super::budget::spill::after_read`]). The caller's memory must be
    /// llama.cpp's CPU weight buffer, or a staging buffer for a repacked CPU buffer (no
    /// device: llama.cpp reads each tensor straight into its place, or stages it and hands
    /// it to `ggml_backend_tensor_set`, whose interposer moves the tensor). No early decoding
    /// with it ([`Stream::with_early_decode`]: chunks decoded ahead wait in anonymous memory,
    /// which a limit the model does not fit in cannot reclaim).
    pub fn with_spill(mut self, spill: Option<Arc<std::sync::Mutex<Spiller>>>) -> Stream {
        debug_assert!(
            spill.is_none() || self.early.is_none(),
            "a spill does not go with early decoding"
        );
        // The lookup table's read may use the quota kept for it (Spiller::keep_for_lookups).
        self.spill_lookup = match (&spill, &self.src) {
            (Some(_), Source::Dc(dc)) => dc
                .original
                .lookup_table()
                .map(|t| dc.original.tensor_range(t).start),
            _ => None,
        };
        self.spill = spill;
        self
    }

    /// Defer the tensors `residency` streams instead of reading them at load. The stream's
    /// cache stays one chunk deep under a budget; not with the default's lookups-only plan
    /// ([`Residency::is_lookups_only`]), whose other tensors load as without one.
    pub fn with_residency(mut self, residency: Option<Arc<Residency>>) -> Stream {
        self.residency = residency;
        self
    }

    /// Fills `dst` (the caller's own memory, not a stream buffer) from the current position;
    /// returns fewer bytes only at the end of the file. A read that is exactly a deferred
    /// tensor is skipped: its bytes are decoded later, when llama.cpp computes with them.
    pub fn read_into_caller(&mut self, dst: &mut [u8]) -> Result<usize, StreamError> {
        if self.timeline.first.is_none() {
            self.tensor_reads_begin();
        }
        self.direct = true;
        let lookup = self.spill_lookup == Some(self.pos);
        self.request_start = Some(self.pos);
        if let Some(e) = &self.early {
            e.set_reader_busy(true);
        }
        let result = self.read_request(dst);
        if let Some(e) = &self.early {
            e.set_reader_busy(false);
        }
        if let (Ok(n), Some(spill)) = (&result, &self.spill) {
            // SAFETY: `dst` is the caller's memory, just filled: with a spill set, a tensor in
            // llama.cpp's CPU weight buffer (`with_spill`) or a staging buffer that llama.cpp
            // hands to ggml_backend_tensor_set before its next read (then `staged` takes it
            // back); it frees them with free() or munmap, and no other thread touches them
            // while its reading thread is here (no early decoding with a spill; the pool's
            // decodes into `dst` ended inside `read_request`).
            unsafe { super::budget::spill::after_read(spill, dst.as_ptr() as usize, *n, lookup) };
        }
        self.request_start = None;
        result
    }

    fn read_request(&mut self, dst: &mut [u8]) -> Result<usize, StreamError> {
        let mut done = 0;
        while done < dst.len() {
            let rest = &mut dst[done..];
            if let Some(res) = &self.residency
                && res.defer_load(self.pos, rest.as_mut_ptr() as usize, rest.len())
            {
                self.pos += rest.len() as u64;
                done = dst.len();
                break;
            }
            let n = self.read(rest)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    /// A handle on the stream's first error, readable after the `FILE *` is closed.
    pub fn error_slot(&self) -> ErrorSlot {
        self.error.clone()
    }

    /// The first tensor read (direct, or through glibc's buffer at the tensor data): llama.cpp
    /// has parsed the metadata. Its decoded bytes (1.8 MB on SmolLM2) would otherwise stay
    /// allocated to the end of the load, where the decoded weights are complete and an
    /// uncapped run's charge peaks: dropped here, that peak fell 0.3-0.7 MiB (SmolLM2, three
    /// cold runs each, 2026-11-30). The shared object's code that the load has not run goes
    /// from the page cache too (src/ffi/shed.rs, `at_tensor_reads`).
    fn tensor_reads_begin(&mut self) {
        self.timeline.first = Some(Instant::now());
        if let Source::Dc(dc) = &self.src {
            dc.uncache_metadata();
            dc.release_original_header();
            super::hooks::tensor_reads_begin();
        }
    }

    /// Reads at the current position; returns 0 only at the end of the file.
    pub fn read(&mut self, dst: &mut [u8]) -> Result<usize, StreamError> {
        // Through glibc's buffer (no preload's `fread`), the tensor reads begin with the first
        // read at the original file's tensor data.
        if self.timeline.first.is_none()
            && let Source::Dc(dc) = &self.src
            && self.pos >= dc.original.data_offset
        {
            self.tensor_reads_begin();
        }
        let began = Instant::now();
        let result = self.read_inner(dst);
        let t = &mut self.timeline;
        let end = Instant::now();
        if t.first.is_some() {
            t.last_end = Some(end);
            t.inside += end - began;
            t.calls += 1;
            t.bytes += *result.as_ref().unwrap_or(&0) as u64;
        }
        result
    }

    fn read_inner(&mut self, dst: &mut [u8]) -> Result<usize, StreamError> {
        if self.pos >= self.size || dst.is_empty() {
            return Ok(0);
        }
        let issued = Instant::now();
        let n = match &self.src {
            Source::Plain(f) => {
                let want = (dst.len() as u64).min(self.size - self.pos) as usize;
                f.read_at(&mut dst[..want], self.pos)
                    .map_err(|source| StreamError::Io {
                        path: self.path.clone(),
                        source,
                    })?
            }
            Source::Dc(_) => self.read_dc(dst)?,
        };
        self.since_release += n as u64;
        if self.since_release >= RELEASE_EVERY {
            self.since_release = 0;
            if let Source::Dc(dc) = &self.src {
                dc.release_mapped_pages();
            }
        }
        if let Some(t) = &self.throttle {
            t.charge(self.pos..self.pos + n as u64, issued);
        }
        self.pos += n as u64;
        Ok(n)
    }

    fn read_dc(&mut self, dst: &mut [u8]) -> Result<usize, StreamError> {
        let Source::Dc(dc) = &self.src else {
            unreachable!()
        };
        let pos = self.pos;
        let end = pos + (dst.len() as u64).min(self.size - pos);
        let here = dc.chunk_range_at(pos);
        if let (Some(early), Some(c)) = (&self.early, &here)
            && !self.cache.iter().any(|(s, _)| *s == c.start)
            && let Some(buf) = early.take(c.clone())
        {
            self.make_room(buf.len() as u64);
            self.decoded.insert(c.start);
            self.cache.push_back((c.start, ChunkBuf::Pages(buf)));
        }
        let Source::Dc(dc) = &self.src else {
            unreachable!()
        };
        // A chunk we hold, or one only partly wanted: serve it from the cache.
        if let Some(c) = here {
            let cached = self.cache.iter().position(|(s, _)| *s == c.start);
            // A read of one whole chunk (a small tensor) alone would decode on one core: go
            // through the cache, which decodes the next chunks (the next tensors) with it.
            // Not the last chunk of a larger read: the chunks after it belong to other
            // tensors, which llama.cpp may read much later (it reads one buffer's tensors,
            // e.g. the repacked ones, before the others), so decoding them now is often wasted.
            let single = self.direct
                && !self.lean()
                && c.start == pos
                && c.end == end
                && self.request_start == Some(pos);
            if cached.is_some() || c.start < pos || c.end > end || single {
                let k = match cached {
                    Some(k) => k,
                    None => self.fill_cache(c.start)?,
                };
                let (start, buf) = &self.cache[k];
                let chunk_end = start + buf.len() as u64;
                let take = (chunk_end.min(end) - pos) as usize;
                let from = (pos - start) as usize;
                if take >= POPULATE_MIN {
                    super::prefault::populate_for_copy(&mut dst[..take]);
                }
                dst[..take].copy_from_slice(&buf[from..from + take]);
                if pos + take as u64 == chunk_end {
                    // Read to its end: llama.cpp reads each tensor once, front to back, so the
                    // chunk's memory goes now rather than with the oldest chunks (else the
                    // cache ends a load full, on top of the decoded model).
                    if let Some((_, ChunkBuf::Heap(b))) = self.cache.remove(k) {
                        self.spare.push(b);
                        self.spare.truncate(SPARE_BUFFERS);
                    }
                }
                return Ok(take);
            }
        }
        // Whole chunks (and header/gap bytes) straight into `dst`; stop before a chunk that
        // is only partly wanted or already cached, which the next call serves from the cache.
        let mut direct_end = match dc.chunk_range_at(end - 1) {
            Some(c) if c.end > end && c.start > pos => c.start,
            _ => end,
        };
        if let Some(&(s, _)) = self
            .cache
            .iter()
            .filter(|(s, _)| *s > pos && *s < direct_end)
            .min_by_key(|(s, _)| *s)
        {
            direct_end = s;
        }
        if let Some(e) = &self.early {
            direct_end = e.claim(pos, direct_end);
        }
        let want = (direct_end - pos) as usize;
        let mut at = pos;
        while let Some(c) = dc.next_chunk_range(at).filter(|c| c.start < direct_end) {
            self.decoded.insert(c.start);
            at = c.end;
        }
        let pool = self.pool.clone();
        Ok(run_on(pool.as_deref(), || {
            dc.read_at(pos, &mut dst[..want])
        })?)
    }

    /// Decodes the chunk starting at `start` and the next few chunks in file order that are
    /// not cached yet, in parallel, into the cache; returns the cache slot of the first.
    /// llama.cpp reads a layer's tensors in its own order, close to the file's, and glibc
    /// splits each tensor read at its buffer size, so most reads then hit the cache, and the
    /// decoding of several chunks keeps every core busy.
    fn fill_cache(&mut self, start: u64) -> Result<usize, StreamError> {
        let Source::Dc(dc) = &self.src else {
            unreachable!()
        };
        let dc = dc.clone();
        let mut batch: Vec<std::ops::Range<u64>> = Vec::with_capacity(PREFETCH_CHUNKS);
        let mut next = Some(start);
        let mut bytes = 0u64;
        while let Some(at) = next {
            let Some(c) = dc.next_chunk_range(at) else {
                break;
            };
            next = Some(c.end);
            // Chunks after the asked one that this load decoded already: llama.cpp reads
            // out of file order (the tensors it repacks first), and decoding them again
            // ahead was waste (SmolLM2: 74.7 MB decoded into the cache and 70.7 by early
            // decoding, for a 97.1 MB model).
            if self.cache.iter().any(|(s, _)| *s == c.start)
                || (c.start != start && self.decoded.contains(&c.start))
            {
                continue;
            }
            if !batch.is_empty() && bytes + (c.end - c.start) > CACHE_BYTES {
                break;
            }
            if let Some(e) = &self.early
                && !e.claim_chunk(c.clone())
            {
                break;
            }
            bytes += c.end - c.start;
            batch.push(c);
            if batch.len() == PREFETCH_CHUNKS || self.lean() {
                break;
            }
        }
        self.make_room(bytes);
        let mut jobs: Vec<(u64, Vec<u8>)> = batch
            .iter()
            .map(|c| {
                let mut buf = self.spare.pop().unwrap_or_default();
                buf.resize((c.end - c.start) as usize, 0);
                (c.start, buf)
            })
            .collect();
        let pool = self.pool.clone();
        let issued = Instant::now();
        run_on(pool.as_deref(), || {
            use rayon::prelude::*;
            jobs.par_iter_mut()
                .try_for_each(|(s, buf)| dc.read_at(*s, buf).map(|_| ()))
        })?;
        // Simulated storage: the batch's stored bytes are read now, while it decodes, not
        // when llama.cpp later asks for each piece (which would put the transfer after the
        // decode instead of under it).
        if let Some(t) = &self.throttle {
            for c in &batch {
                t.charge(c.clone(), issued);
            }
        }
        let first = self.cache.len();
        self.timeline.cached += bytes;
        self.decoded.extend(batch.iter().map(|c| c.start));
        self.cache
            .extend(jobs.into_iter().map(|(s, b)| (s, ChunkBuf::Heap(b))));
        Ok(first)
    }

    /// Under a memory budget the cache stays one chunk deep (it only serves the odd partial
    /// chunk) instead of holding batches of decoded chunks.
    fn lean(&self) -> bool {
        self.residency
            .as_ref()
            .is_some_and(|r| !r.is_lookups_only())
    }

    /// Evicts the oldest cached chunks so that `bytes` more fit (under a budget: so that
    /// the cache holds one chunk).
    fn make_room(&mut self, bytes: u64) {
        let lean = self.lean();
        loop {
            let held: u64 = self.cache.iter().map(|(_, b)| b.len() as u64).sum();
            let full = if lean {
                !self.cache.is_empty()
            } else {
                held + bytes > CACHE_BYTES
            };
            if !full || self.cache.is_empty() {
                break;
            }
            if let Some((_, ChunkBuf::Heap(buf))) = self.cache.pop_front() {
                self.spare.push(buf);
            }
        }
        self.spare.truncate(SPARE_BUFFERS);
    }

    /// The stream's position (the end of what glibc's buffer holds).
    pub(super) fn position(&self) -> u64 {
        self.pos
    }

    /// Size of the original file the stream serves.
    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// Moves the stream (the caller empties glibc's buffer).
    pub(super) fn set_position(&mut self, pos: u64) {
        self.pos = pos;
    }

    fn seek(&mut self, offset: i64, whence: c_int) -> Option<u64> {
        let base = match whence {
            libc::SEEK_SET => 0,
            libc::SEEK_CUR => self.pos as i64,
            libc::SEEK_END => self.size as i64,
            _ => return None,
        };
        let new = base.checked_add(offset).filter(|&p| p >= 0)?;
        self.pos = new as u64;
        Some(self.pos)
    }

    /// Keeps the first error (and says it on stderr, where llama.cpp's own complaint about
    /// the short read follows).
    pub(super) fn record(&self, e: StreamError) {
        let mut slot = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            crate::log_line!("dcgguf: error: {}: {e}", self.path.display());
            *slot = Some(e);
        }
    }
}

fn run_on<R: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
/// glibc's `cookie_io_functions_t`.
#[repr(C)]
struct CookieIoFunctions {
    read: Option<unsafe extern "C" fn(*mut c_void, *mut c_char, usize) -> isize>,
    write: Option<unsafe extern "C" fn(*mut c_void, *const c_char, usize) -> isize>,
    seek: Option<unsafe extern "C" fn(*mut c_void, *mut i64, c_int) -> c_int>,
    close: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    fn fopencookie(
        cookie: *mut c_void,
        mode: *const c_char,
        funcs: CookieIoFunctions,
    ) -> *mut libc::FILE;
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" fn cookie_read(cookie: *mut c_void, buf: *mut c_char, size: usize) -> isize {
    // SAFETY: glibc passes back the cookie given to fopencookie: a live `Box<Stream>` that only
    // this stream's callbacks touch, one at a time (the FILE lock serializes them).
    let stream = unsafe { &mut *(cookie as *mut Stream) };
    if size == 0 {
        return 0;
    }
    // SAFETY: glibc hands us a writable buffer of `size` bytes.
    let dst = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, size) };
    match catch_unwind(AssertUnwindSafe(|| stream.read(dst))) {
        Ok(Ok(n)) => n as isize,
        Ok(Err(e)) => {
            stream.record(e);
            set_errno(libc::EIO);
            -1
        }
        Err(_) => {
            stream.record(StreamError::Panic);
            set_errno(libc::EIO);
            -1
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" fn cookie_seek(cookie: *mut c_void, offset: *mut i64, whence: c_int) -> c_int {
    // SAFETY: as in cookie_read; `offset` points to glibc's in/out position.
    let (stream, off) = unsafe { (&mut *(cookie as *mut Stream), &mut *offset) };
    match catch_unwind(AssertUnwindSafe(|| stream.seek(*off, whence))) {
        Ok(Some(p)) => {
            *off = p as i64;
            0
        }
        _ => {
            set_errno(libc::EINVAL);
            -1
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" fn cookie_close(cookie: *mut c_void) -> c_int {
    // SAFETY: glibc calls close exactly once, after which it never uses the cookie again, so we
    // take back ownership of the Box made in CookieFile::open.
    let stream = unsafe { Box::from_raw(cookie as *mut Stream) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(stream)));
    0
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// An open cookie `FILE *`, closed on drop.
///
/// glibc only: `fopencookie`, and the direct reads of `super::fread` that write glibc's
/// private `struct _IO_FILE` fields, compile only for `target_os = "linux"` with
/// `target_env = "gnu"`. On other targets [`CookieFile::open`] fails at run time with
/// `ErrorKind::Unsupported`, so loading a DC-GGUF into llama.cpp reports an error there
/// (the rest of dcgguf, reading and writing DC files, works everywhere).
pub struct CookieFile {
    fp: *mut libc::FILE,
    error: ErrorSlot,
    /// The stream's buffer; must outlive `fp`.
    _buffer: Box<[u8]>,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
impl CookieFile {
    pub fn open(stream: Stream) -> std::io::Result<CookieFile> {
        let error = stream.error_slot();
        let cookie = Box::into_raw(Box::new(stream)) as *mut c_void;
        let funcs = CookieIoFunctions {
            read: Some(cookie_read),
            write: None,
            seek: Some(cookie_seek),
            close: Some(cookie_close),
        };
        // SAFETY: the cookie is a valid Box<Stream> and the callbacks match glibc's signatures;
        // the mode string is NUL-terminated.
        let fp = unsafe { fopencookie(cookie, c"rb".as_ptr(), funcs) };
        if fp.is_null() {
            let err = std::io::Error::last_os_error();
            // SAFETY: fopencookie failed, so glibc did not take the cookie; we still own it.
            drop(unsafe { Box::from_raw(cookie as *mut Stream) });
            return Err(err);
        }
        super::fread::register(fp, cookie);
        // Reads our `fread` does not serve (another libc read function, or a host where our
        // `fread` is not the one called) go through glibc's stream buffer (its cookie xsgetn
        // has no direct-read path); a large buffer turns them into few big reads.
        // glibc ignores the size when it allocates the buffer itself, so we supply it.
        let mut buffer = vec![0u8; STREAM_BUFFER].into_boxed_slice();
        // SAFETY: `fp` is a fresh stream with no I/O done yet, as setvbuf requires; `buffer`
        // is owned by the CookieFile and freed only after fclose (Drop closes first).
        unsafe {
            libc::setvbuf(
                fp,
                buffer.as_mut_ptr() as *mut c_char,
                libc::_IOFBF,
                STREAM_BUFFER,
            )
        };
        Ok(CookieFile {
            fp,
            error,
            _buffer: buffer,
        })
    }

    pub fn as_ptr(&self) -> *mut libc::FILE {
        self.fp
    }

    /// The first read error the stream hit, if any (taken: asked once, after the load).
    pub fn take_error(&self) -> Option<StreamError> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
impl Drop for CookieFile {
    fn drop(&mut self) {
        super::fread::unregister(self.fp);
        // SAFETY: `fp` came from fopencookie and is closed only here.
        unsafe { libc::fclose(self.fp) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
impl CookieFile {
    pub fn open(_stream: Stream) -> std::io::Result<CookieFile> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "loading DC-GGUF into llama.cpp needs glibc (fopencookie); this build is not for \
             linux-gnu",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seek_rules() {
        let f = tempfile_with(b"hello world");
        let mut s =
            Stream::new(Path::new("x"), Source::Plain(File::open(&f).unwrap()), None).unwrap();
        assert_eq!(s.seek(0, libc::SEEK_END), Some(11));
        assert_eq!(s.seek(-5, libc::SEEK_CUR), Some(6));
        assert_eq!(s.seek(-7, libc::SEEK_CUR), None);
        let mut b = [0u8; 16];
        assert_eq!(s.read(&mut b).unwrap(), 5);
        assert_eq!(&b[..5], b"world");
        assert_eq!(s.read(&mut b).unwrap(), 0);
        std::fs::remove_file(f).unwrap();
    }

    /// llama.cpp reads a layer's tensors out of file order (those it repacks first, in its
    /// own order). With one small chunk per tensor, each chunk the stream decodes ahead of a
    /// read must still be there at its read: every chunk decodes once, and the cache is empty
    /// once every chunk has been read to its end.
    #[test]
    fn out_of_order_reads_of_small_tensors_decode_each_chunk_once() {
        use crate::dc::test_files::small_dc;
        use crate::gguf::GgmlType;
        let data = |k: u8| (0..4096).map(|i| (i / 5) as u8 ^ k).collect::<Vec<u8>>();
        let tensors: Vec<_> = (0..8u8)
            .map(|k| (format!("t{k}"), vec![1024], GgmlType::F32, data(k)))
            .collect();
        let (original, dir, dst, dc) = small_dc("stream-order", &tensors, 4096);
        let starts: Vec<u64> = (0..8)
            .map(|i| dc.original.tensor_range(dc.tensor_info(i)).start)
            .collect();
        let mut s = Stream::new(&dst, Source::Dc(dc.clone()), None).unwrap();
        for i in [1usize, 0, 3, 2, 7, 5, 4, 6] {
            s.set_position(starts[i]);
            let mut buf = vec![0u8; 4096];
            assert_eq!(s.read_into_caller(&mut buf).unwrap(), 4096);
            let at = starts[i] as usize;
            assert_eq!(buf, original[at..at + 4096], "tensor t{i}");
        }
        assert_eq!(s.timeline.cached, 8 * 4096, "each chunk decoded once");
        assert!(s.cache.is_empty(), "{} chunks left cached", s.cache.len());
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_with(bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("dcgguf-stream-{}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }
}
