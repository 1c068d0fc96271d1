//! Opens a DC-GGUF file, checks it, and serves the original file's bytes at any offset:
//! the primitive behind `decompress`, `verify`, the C API and the llama.cpp hook.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::io::hash::{Xxh3, xxh3_64};
use memmap2::Mmap;
use rayon::prelude::*;

use super::index::{BlobRef, Index};
use super::job::Job;
use super::layout::{Piece, Segment, segments};
use super::{
    DATA_TENSOR, DcError, FORMAT_VERSION, FORMAT_VERSION_1, FORMAT_VERSION_2, FORMAT_VERSION_3,
    HEADER_RAW_SLACK, INDEX_TENSOR, KEY_FORMAT_VERSION, KEY_ORIGINAL_SIZE, KEY_ORIGINAL_XXH3,
    MAX_CHUNK_RAW, MAX_GAP_RAW, MAX_HEADER_RATIO, MAX_HEADER_RAW, Result,
};
use crate::codec::{ChunkMode, Layout, Transform, decode_chunk};
use crate::gguf::{GgmlType, GgufHeader, TensorInfo};
use crate::io::{AtomicOutput, map_readonly};

/// An open DC-GGUF file.
pub struct DcFile {
    path: PathBuf,
    map: Storage,
    /// The DC file's own GGUF header.
    pub dc_header: GgufHeader,
    /// The original file's header, rebuilt from the stored copy.
    pub original: GgufHeader,
    pub index: Index,
    /// The original file's header bytes; `None` once released after a load
    /// ([`DcFile::release_original_header`]), decoded again (and checked) if read later.
    original_header: std::sync::Mutex<Option<Arc<Vec<u8>>>>,
    /// Where the header blob's stored bytes are in the map.
    header_range: std::ops::Range<usize>,
    /// Decoded gap bytes, filled on first use ([`DcFile::gaps`]).
    gaps: std::sync::OnceLock<Vec<u8>>,
    /// Where the gap blob's stored bytes are in the map.
    gaps_range: std::ops::Range<usize>,
    segments: Vec<Segment>,
    tensors: Vec<TensorState>,
    release_after_decode: std::sync::atomic::AtomicBool,
    /// See [`DcFile::set_uncache_after_decode`].
    uncache: std::sync::atomic::AtomicBool,
    /// The last load turned uncaching on (the file was cold): what it dropped stays dropped
    /// ([`DcFile::uncache_around`]).
    loaded_cold: std::sync::atomic::AtomicBool,
    /// The mapping reads only the pages a fault asks for (`MADV_RANDOM`, set for uncaching
    /// and kept after it): each decode first asks for its whole chunk in one request.
    chunk_reads: std::sync::atomic::AtomicBool,
    /// With `chunk_reads`: where the stored bytes asked for ahead of a run of decodes in file
    /// order (a load) end; 0 before the first decode, `usize::MAX` after the load. See
    /// [`DcFile::ask_ahead`].
    asked_until: std::sync::atomic::AtomicUsize,
    original_xxh3: u64,
}

/// How many stored bytes past a chunk a run of decodes in file order (a load) asks the
/// kernel for ahead of its decodes, so that the reads of the next chunks overlap this one's
/// decode instead of each decode waiting for its own read.
const READ_AHEAD: usize = 1 << 20;
/// How far behind the bytes asked for ahead a chunk may start and still count as part of
/// the run: the load's threads decode chunks in parallel, not strictly in order.
const RUN_SLACK: usize = 16 << 20;

struct TensorState {
    layout: Layout,
    transform: Transform,
    /// Absolute offset in the map of each chunk's payload, plus one past the last.
    chunk_starts: Vec<usize>,
}

/// The DC file's bytes: a read-only map of the file, or bytes handed over in memory.
enum Storage {
    /// The file is kept open to drop its page cache behind a load, and which of its pages
    /// were in the page cache before this reader touched any ([`DcFile::set_uncache_after_decode`]).
    Mapped(Mmap, std::fs::File, Vec<bool>),
    Owned(Vec<u8>),
}

/// Maps `path`, noting which pages were cached before any is read.
fn mapped(path: &Path) -> Result<Storage> {
    let (file, map) = map_readonly(path).map_err(DcError::io(path))?;
    let resident = crate::io::resident_pages(&map);
    Ok(Storage::Mapped(map, file, resident))
}

impl std::ops::Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mapped(m, ..) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// One piece of a read: bytes already in memory, or (part of) a chunk to decode.
enum ReadJob<'a> {
    Copy {
        src: &'a [u8],
        dst: &'a mut [u8],
    },
    Chunk {
        tensor: usize,
        chunk: usize,
        within: usize,
        dst: &'a mut [u8],
    },
}

/// A summary of one original tensor as stored.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TensorView {
    pub name: String,
    pub ggml_type: &'static str,
    pub shape: Vec<u64>,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub ratio: f64,
    pub transform: &'static str,
    pub chunks: usize,
    pub raw_chunks: usize,
    /// Order-0 entropy bound of the tensor's planes, in bytes.
    pub entropy_bound_bytes: u64,
}

/// Totals of a DC-GGUF file and its per-tensor table: what `dcgguf inspect --json` prints
/// (besides the command and path) and the C API's `dcgguf_inspect_json` returns.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub format_version: u32,
    pub original_bytes: u64,
    pub file_bytes: u64,
    pub ratio: f64,
    pub tensor_raw_bytes: u64,
    pub tensor_stored_bytes: u64,
    pub entropy_bound_bytes: u64,
    pub tensors: Vec<TensorView>,
}

impl DcFile {
    /// Opens and checks a DC-GGUF file (memory-mapped, read-only). Every byte this reader
    /// hands out is covered by a checksum that was checked first: the DC file's own header,
    /// the index and both blobs here, each chunk as it is decoded.
    pub fn open(path: &Path) -> Result<DcFile> {
        Self::from_storage(path, mapped(path)?, Arrays::Keep, Versions::Checked)
    }

    /// [`DcFile::open`] for a reader that only serves bytes (the llama.cpp hook, `inspect`
    /// without metadata): array metadata (tokenizer vocabularies, merges) is checked but not
    /// kept in the parsed headers; it stays in the original header's bytes. Saves megabytes
    /// for the life of a loaded model and ~5 ms of string allocations per open.
    pub fn open_without_arrays(path: &Path) -> Result<DcFile> {
        Self::from_storage(path, mapped(path)?, Arrays::Skip, Versions::Checked)
    }

    /// [`DcFile::open`] that also accepts version-1 files, whose header and blobs have no
    /// checksum of their own. Only for callers that check the whole-file checksum
    /// ([`DcFile::for_each_block`]) before anything they produce is used: `decompress`
    /// (writes a temporary file, renamed into place only after the check) and `verify`.
    pub fn open_for_full_check(path: &Path) -> Result<DcFile> {
        Self::from_storage(path, mapped(path)?, Arrays::Keep, Versions::AlsoV1)
    }

    /// Opens DC-GGUF bytes held in memory (`name` is used in messages).
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<DcFile> {
        Self::from_storage(
            Path::new(name),
            Storage::Owned(bytes),
            Arrays::Keep,
            Versions::Checked,
        )
    }

    /// The format version of this file (docs/FORMAT.md).
    pub fn format_version(&self) -> u32 {
        self.index.version
    }

    fn from_storage(
        path: &Path,
        map: Storage,
        arrays: Arrays,
        versions: Versions,
    ) -> Result<DcFile> {
        let parse = match arrays {
            Arrays::Keep => GgufHeader::parse,
            Arrays::Skip => GgufHeader::parse_without_arrays,
        };
        // Once a file looks like DC-GGUF, every problem is reported as damage to a DC file
        // (not as "not DC", which would hand it to llama.cpp as a plain model).
        let looks_dc = looks_like_dc(&map);
        let damaged = |what: String| DcError::DamagedDc {
            path: path.to_path_buf(),
            what,
        };
        let gguf_err = |source: crate::gguf::GgufError| match looks_dc {
            true => damaged(source.to_string()),
            false => DcError::Gguf {
                path: path.to_path_buf(),
                source,
            },
        };
        let not_dc = |reason: &str| match looks_dc {
            true => damaged(reason.to_string()),
            false => DcError::NotDc {
                path: path.to_path_buf(),
                reason: reason.to_string(),
            },
        };
        // A file that does not look like DC-GGUF is refused below (not DC, or not GGUF) but
        // for a DC header past the first MiB: its arrays (a plain GGUF's vocabulary, 10^5
        // strings) are checked, not kept, unless it turns out to be DC. Keeping them left
        // llama-cpp-python's heap 2.2-2.5 MiB larger after the module asked whether a plain
        // SmolLM2 was DC.
        let dc_header = match looks_dc {
            true => parse(&map),
            false => GgufHeader::parse_without_arrays(&map).and_then(|h| {
                match h.get(KEY_FORMAT_VERSION).is_some() && matches!(arrays, Arrays::Keep) {
                    true => GgufHeader::parse(&map),
                    false => Ok(h),
                }
            }),
        }
        .map_err(gguf_err)?;
        dc_header
            .check_data_fits(map.len() as u64)
            .map_err(gguf_err)?;
        let version = dc_header
            .get(KEY_FORMAT_VERSION)
            .ok_or_else(|| not_dc("no dc.format_version key"))?
            .as_u64()
            .ok_or_else(|| not_dc("dc.format_version is not an integer"))?;
        let blob_tensor = |name: &str| -> Result<std::ops::Range<usize>> {
            let t = dc_header
                .tensors
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| not_dc(&format!("no {name} tensor")))?;
            if t.ty != GgmlType::I8 || t.dims.len() != 1 {
                return Err(not_dc(&format!("{name} is not a 1-D I8 tensor")));
            }
            let r = dc_header.tensor_range(t);
            Ok(r.start as usize..r.end as usize)
        };
        let index_range = blob_tensor(INDEX_TENSOR)?;
        let data = blob_tensor(DATA_TENSOR)?;
        // The index says which version this is (its own checksum covers that), and in
        // version 2 it checksums the header: a damaged `dc.format_version` is then reported as
        // damage, not as a version this build does not know.
        let index = Index::decode(&map[index_range])?;
        if let Some(want) = index.dc_header_hash {
            let head = map.get(..dc_header.data_offset as usize);
            if head.is_none_or(|h| xxh3_64(h) != want) {
                return Err(DcError::CorruptDcHeader);
            }
        }
        if u64::from(index.version) != version {
            return Err(DcError::BadIndex {
                offset: 4,
                what: format!(
                    "index version {} in a file whose dc.format_version is {version}",
                    index.version
                ),
            });
        }
        match (index.version, versions) {
            (FORMAT_VERSION | FORMAT_VERSION_3 | FORMAT_VERSION_2, _)
            | (FORMAT_VERSION_1, Versions::AlsoV1) => {}
            (FORMAT_VERSION_1, Versions::Checked) => {
                return Err(DcError::LegacyVersion(path.to_path_buf()));
            }
            (v, _) => return Err(DcError::UnsupportedVersion(v)),
        }
        let key_u64 = |key: &str| {
            dc_header
                .get(key)
                .and_then(|v| v.as_u64())
                .ok_or_else(|| not_dc(&format!("missing {key}")))
        };
        if key_u64(KEY_ORIGINAL_SIZE)? != index.original_size {
            return Err(not_dc("dc.original_size disagrees with dc.index"));
        }
        let original_xxh3 = key_u64(KEY_ORIGINAL_XXH3)?;

        // Cheap checks of both blobs before either is decoded.
        let header_frame = blob_frame(&map, &data, &index.header, "original header")?;
        let header_cap = MAX_HEADER_RAW.min(
            HEADER_RAW_SLACK
                .saturating_add(MAX_HEADER_RATIO.saturating_mul(index.header.stored_len)),
        );
        if index.header.raw_len > header_cap.min(index.original_size) {
            return Err(DcError::CorruptBlob {
                blob: "original header",
                what: format!(
                    "claims {} decoded bytes from {} stored (at most {} allowed)",
                    index.header.raw_len,
                    index.header.stored_len,
                    header_cap.min(index.original_size)
                ),
            });
        }
        blob_frame(&map, &data, &index.gaps, "gap")?;
        if index.gaps.raw_len > MAX_GAP_RAW {
            return Err(DcError::CorruptBlob {
                blob: "gap",
                what: format!(
                    "claims {} decoded bytes (at most {MAX_GAP_RAW} allowed)",
                    index.gaps.raw_len
                ),
            });
        }
        let header_range = {
            let start = header_frame.as_ptr() as usize - map.as_ptr() as usize;
            start..start + header_frame.len()
        };
        let original_header = decode_blob(header_frame, &index.header, "original header")?;
        let original = parse(&original_header).map_err(DcError::OriginalHeader)?;
        original
            .check_data_fits(index.original_size)
            .map_err(DcError::OriginalHeader)?;
        if original_header.len() as u64 != original.data_offset.min(index.original_size) {
            return Err(DcError::CorruptBlob {
                blob: "original header",
                what: "its length disagrees with the header it holds".into(),
            });
        }
        if original.tensors.len() != index.tensors.len() {
            return Err(DcError::BadIndex {
                offset: 8,
                what: format!(
                    "{} tensor entries for {} tensors",
                    index.tensors.len(),
                    original.tensors.len()
                ),
            });
        }
        let segments = segments(&original, index.original_size);
        let gap_total: u64 = segments
            .iter()
            .filter(|s| matches!(s.piece, Piece::Gap { .. }))
            .map(|s| s.len)
            .sum();
        if gap_total != index.gaps.raw_len {
            return Err(DcError::CorruptBlob {
                blob: "gap",
                what: format!(
                    "holds {} bytes, the layout has {gap_total}",
                    index.gaps.raw_len
                ),
            });
        }
        let tensors = original
            .tensors
            .iter()
            .zip(&index.tensors)
            .map(|(t, e)| check_tensor(t, e, &data, index.version))
            .collect::<Result<Vec<_>>>()?;
        let gaps_range = {
            let start = data.start + index.gaps.offset as usize;
            start..start + index.gaps.stored_len as usize
        };
        Ok(DcFile {
            path: path.to_path_buf(),
            map,
            dc_header,
            original,
            index,
            original_header: std::sync::Mutex::new(Some(Arc::new(original_header))),
            header_range,
            gaps: std::sync::OnceLock::new(),
            gaps_range,
            segments,
            tensors,
            original_xxh3,
            release_after_decode: std::sync::atomic::AtomicBool::new(false),
            uncache: std::sync::atomic::AtomicBool::new(false),
            loaded_cold: std::sync::atomic::AtomicBool::new(false),
            chunk_reads: std::sync::atomic::AtomicBool::new(false),
            asked_until: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The original file's header bytes: kept from the open, or decoded and checked again
    /// after [`DcFile::release_original_header`].
    fn original_header(&self) -> Result<Arc<Vec<u8>>> {
        let mut kept = self
            .original_header
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(h) = &*kept {
            return Ok(h.clone());
        }
        let h = Arc::new(decode_blob(
            &self.map[self.header_range.clone()],
            &self.index.header,
            "original header",
        )?);
        *kept = Some(h.clone());
        Ok(h)
    }

    /// Frees the original header's bytes (1.8 MB on SmolLM2, 6 MB on Qwen2.5-1.5B: mostly
    /// the vocabulary) once a load has read them; a later read of that range decodes them
    /// again from the file and checks them against the blob's checksum first. Kept when the
    /// blob has no checksum of its own (version 1: nothing could check a second decode).
    pub fn release_original_header(&self) {
        if self.index.header.hash.is_some() {
            *self
                .original_header
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Whether the original header's decoded bytes are held ([`DcFile::release_original_header`]
    /// frees them).
    pub fn holds_original_header(&self) -> bool {
        self.original_header
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The gap bytes, decoded (and checked) on first use: `inspect` and metadata readers
    /// never pay for them.
    fn gaps(&self) -> Result<&[u8]> {
        if let Some(g) = self.gaps.get() {
            return Ok(g);
        }
        let raw = decode_blob(&self.map[self.gaps_range.clone()], &self.index.gaps, "gap")?;
        // A concurrent first use may have won the race: both decoded the same bytes.
        Ok(self.gaps.get_or_init(|| raw))
    }

    /// After each chunk is decoded, drop this process's mapping of its compressed bytes
    /// (the page cache keeps them). For long streaming reads (model loads, budgeted runs):
    /// the resident set then never holds more than the chunks being decoded.
    pub fn set_release_after_decode(&self, on: bool) {
        self.release_after_decode
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// With [`DcFile::set_release_after_decode`]: when the file was cold (under a tenth of
    /// it in the page cache when it was opened), also drop from the page cache the
    /// compressed bytes of each decoded chunk that was not cached then. A cold load is then
    /// not held twice (compressed in the cache, decoded in llama.cpp's buffers), which a
    /// memory limit counting the page cache would charge; a warm or partly warm file is left
    /// alone and ends up fully cached for the next load (dropping only its uncached part
    /// would keep that part on disk for every load to come). A budgeted load defers the
    /// tensors it streams, so it too decodes only chunks that nothing reads again.
    pub fn set_uncache_after_decode(&self, on: bool) {
        let on = on
            && match &self.map {
                Storage::Mapped(_, _, resident) => {
                    // Over the tensor chunks only: a reader before us (llama-completion's
                    // fitting pass) may have cached the metadata, which for a small model
                    // with a large vocabulary is more than a tenth of the file.
                    let page = crate::io::page_size();
                    let (from, to) = self.chunk_span();
                    let pages = &resident
                        [(from / page).min(resident.len())..to.div_ceil(page).min(resident.len())];
                    pages.iter().filter(|&&r| r).count() * 10 < pages.len()
                }
                Storage::Owned(_) => false,
            };
        if on && let Storage::Mapped(m, ..) = &self.map {
            // No read-around or readahead of the kernel's own (read-around would fetch the
            // pages before each chunk, which the previous chunk's decode has dropped, back
            // into the cache; readahead runs ahead of every decoding thread): each chunk's
            // bytes are asked for just before its decode (`decode_chunk`), so the cache
            // holds only the chunks being decoded.
            let _ = m.advise(memmap2::Advice::Random);
            self.chunk_reads
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.uncache.store(on, std::sync::atomic::Ordering::Relaxed);
        self.loaded_cold
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the last load found the file cold and dropped what it decoded from the page
    /// cache ([`DcFile::set_uncache_after_decode`]).
    pub fn loaded_cold(&self) -> bool {
        self.loaded_cold.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The map spans of the stored bytes of `tensors` (from each one's first chunk to the end
    /// of its last), sorted, contiguous ones merged: what [`DcFile::uncache_around`] keeps.
    pub fn stored_spans(&self, tensors: &[usize]) -> Vec<(usize, usize)> {
        let mut spans: Vec<(usize, usize)> = tensors
            .iter()
            .filter_map(|&i| {
                let c = &self.tensors.get(i)?.chunk_starts;
                Some((*c.first()?, *c.last()?))
            })
            .filter(|(a, b)| b > a)
            .collect();
        spans.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
        for (a, b) in spans {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged
    }

    /// After a cold load ([`DcFile::set_uncache_after_decode`] acted): drops from the page
    /// cache the pages of stored chunks within `window` bytes of the chunks `(tensor, chunk)`
    /// just read that lie outside every span of `kept` ([`DcFile::stored_spans`]) and were
    /// not cached when the file was opened. A page fault on a chunk not in the cache reads
    /// around it (the disk's readahead maximum, centred on the fault: 8 MiB on this VM's
    /// disk), bringing back the compressed bytes of the tensors around it that the load
    /// decoded and dropped, and the metadata the load read, which nothing reads again; a
    /// limit charges them until it reclaims them. Pages `kept` spans share stay.
    pub fn uncache_around(
        &self,
        chunks: &[(usize, usize)],
        kept: &[(usize, usize)],
        window: usize,
    ) {
        if !self.loaded_cold() {
            return;
        }
        let starts = chunks.iter().map(|&(i, c)| self.tensors[i].chunk_starts[c]);
        let ends = chunks
            .iter()
            .map(|&(i, c)| self.tensors[i].chunk_starts[c + 1]);
        let (Some(from), Some(to)) = (starts.min(), ends.max()) else {
            return;
        };
        let lo = from.saturating_sub(window);
        let hi = to.saturating_add(window).min(self.map.len());
        let mut at = lo;
        for &(a, b) in kept {
            if b <= at {
                continue;
            }
            if a >= hi {
                break;
            }
            if a > at {
                self.uncache_inside(at, a);
            }
            at = at.max(b);
        }
        if at < hi {
            self.uncache_inside(at, hi);
        }
    }

    /// Drops this process's mappings of the stored bytes of `tensors`, keeping their page
    /// cache: mapped, a memory limit's headroom counts them as used; unmapped, as page cache
    /// it may reclaim. A later decode maps them again (from the disk if they went).
    pub fn unmap_stored(&self, tensors: &[usize]) {
        for (from, to) in self.stored_spans(tensors) {
            self.unmap_range(from, to);
        }
    }

    /// Gives back the stored bytes of `tensors`, decoded for good and never read again: this
    /// process's mappings of them, and their page cache where the load found it cold (pages
    /// cached when the file was opened stay, as another reader's).
    pub fn release_stored(&self, tensors: &[usize]) {
        for (from, to) in self.stored_spans(tensors) {
            self.unmap_range(from, to);
            if self.loaded_cold() {
                self.uncache_inside(from, to);
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file's metadata (what identifies it: device, inode, size, modification and
    /// change times); `None` for bytes held in memory.
    pub fn file_metadata(&self) -> Option<std::fs::Metadata> {
        match &self.map {
            Storage::Mapped(_, file, _) => file.metadata().ok(),
            Storage::Owned(_) => None,
        }
    }

    /// Puts a reader that served a load back in the state of a fresh open, for another load:
    /// no uncaching, the kernel's own readahead, no run of decodes under way, pages released
    /// after each decode only where the next load asks. The original header is decoded again
    /// if a load released it.
    pub fn rewind_for_another_load(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.uncache.store(false, Relaxed);
        self.release_after_decode.store(false, Relaxed);
        self.asked_until.store(0, Relaxed);
        self.end_chunk_reads(&[]);
    }

    /// With [`DcFile::set_uncache_after_decode`] on: drops the bytes before the first chunk
    /// (header and metadata) from the page cache, cached or not when the load began (an
    /// earlier pass over the metadata, like llama-completion's fitting load, caches them).
    /// For when the metadata has been parsed: from then on only chunks are read.
    pub fn uncache_metadata(&self) {
        if self.uncache.load(std::sync::atomic::Ordering::Relaxed)
            && let Storage::Mapped(m, file, _) = &self.map
        {
            let (first_chunk, _) = self.chunk_span();
            // SAFETY: as in release_mapped_pages; the range starts the mapping.
            let _ = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, 0, first_chunk)
            };
            crate::io::drop_cached(file, 0, first_chunk as u64);
        }
    }

    /// Reads tensor `i`'s stored chunks from the file twice, so that the kernel counts them
    /// as recently used (its second access to a cached page moves the page to the active
    /// list). For compressed bytes a budget starts decoding from while memory is already
    /// tight (the batch-time switch of the llama layer's memory budget): read in once under
    /// a cap, they would join the inactive list and be the first pages reclaimed, and every
    /// later decode would read them from storage again (MiniLM BF16 under a 362 MiB cap:
    /// 12240 major faults against 131 when the budget was chosen at load, decodes 0.65 s
    /// against 0.08 s).
    pub fn warm_stored(&self, i: usize) {
        let Storage::Mapped(_, file, _) = &self.map else {
            return;
        };
        let (Some(&from), Some(&to)) = (
            self.tensors[i].chunk_starts.first(),
            self.tensors[i].chunk_starts.last(),
        ) else {
            return;
        };
        use std::os::unix::fs::FileExt;
        // Only these bytes: readahead would fill the cache with the rest of the file.
        crate::io::no_readahead(file);
        let mut buf = vec![0u8; (to - from).min(1 << 20)];
        for _ in 0..2 {
            let mut at = from;
            while at < to {
                let n = (to - at).min(buf.len());
                if file.read_exact_at(&mut buf[..n], at as u64).is_err() {
                    return;
                }
                at += n;
            }
        }
    }

    /// Map offsets of the first and one past the last byte of all stored chunks.
    fn chunk_span(&self) -> (usize, usize) {
        let starts = self.tensors.iter().filter_map(|t| t.chunk_starts.first());
        let ends = self.tensors.iter().filter_map(|t| t.chunk_starts.last());
        match (starts.min(), ends.max()) {
            (Some(&a), Some(&b)) if b > a => (a, b),
            _ => (0, 0),
        }
    }

    /// Size of the original GGUF file.
    pub fn original_size(&self) -> u64 {
        self.index.original_size
    }

    /// Size of this DC-GGUF file.
    pub fn stored_size(&self) -> u64 {
        self.map.len() as u64
    }

    /// xxh3-64 of the whole original file, as recorded at compression.
    pub fn original_xxh3(&self) -> u64 {
        self.original_xxh3
    }

    pub fn tensor_count(&self) -> usize {
        self.original.tensors.len()
    }

    pub fn tensor_info(&self, i: usize) -> &TensorInfo {
        &self.original.tensors[i]
    }

    pub fn find_tensor(&self, name: &str) -> Option<usize> {
        self.original.tensors.iter().position(|t| t.name == name)
    }

    pub fn tensor_view(&self, i: usize) -> TensorView {
        let t = &self.original.tensors[i];
        let e = &self.index.tensors[i];
        let stored = e.stored_bytes();
        TensorView {
            name: t.name.clone(),
            ggml_type: t.ty.name(),
            shape: t.dims.clone(),
            raw_bytes: t.nbytes,
            stored_bytes: stored,
            ratio: if stored == 0 {
                1.0
            } else {
                t.nbytes as f64 / stored as f64
            },
            transform: self.tensors[i].transform.name(),
            chunks: e.chunks.len(),
            raw_chunks: e
                .chunks
                .iter()
                .filter(|c| c.mode == ChunkMode::Raw as u8)
                .count(),
            entropy_bound_bytes: e.entropy_bound,
        }
    }

    /// The file's totals and every tensor's [`TensorView`].
    pub fn summary(&self) -> Summary {
        let tensors: Vec<TensorView> = (0..self.tensor_count())
            .map(|i| self.tensor_view(i))
            .collect();
        Summary {
            format_version: self.format_version(),
            original_bytes: self.original_size(),
            file_bytes: self.stored_size(),
            ratio: self.original_size() as f64 / self.stored_size() as f64,
            tensor_raw_bytes: tensors.iter().map(|v| v.raw_bytes).sum(),
            tensor_stored_bytes: tensors.iter().map(|v| v.stored_bytes).sum(),
            entropy_bound_bytes: tensors.iter().map(|v| v.entropy_bound_bytes).sum(),
            tensors,
        }
    }

    /// Raw bytes of a chunk of tensor `i`.
    fn chunk_len(&self, i: usize, c: usize) -> usize {
        let raw = self.index.tensors[i].chunk_raw as usize;
        let n = self.original.tensors[i].nbytes as usize;
        raw.min(n - c * raw)
    }

    /// The stored bytes to ask for ahead of a chunk stored at `[start, end)`: none for a
    /// chunk away from the run of decodes in file order (a row lookup, a budget's tensor
    /// elsewhere in the file), else what of the [`READ_AHEAD`] bytes past it was not asked
    /// for yet. A load decodes chunks in file order on several threads: a chunk that starts
    /// past what was asked for (the load skipped a tensor), or less than [`RUN_SLACK`] before
    /// its end, continues the run; one further behind does not; after the load
    /// ([`DcFile::finish_uncache`]) none does, and what was asked for ahead and not decoded
    /// is dropped there. Only bytes never asked for are asked for: asking again for bytes
    /// already decoded would read them back into the page cache, where uncaching has
    /// dropped them (asking from each chunk's start to READ_AHEAD past it raised SmolLM2's
    /// uncapped peak by 8-9 MiB; 4 MiB ahead, by 1.2 MiB). Measured from a cold page cache,
    /// five runs each, before and after, alternating (2026-12-01 05:52 UTC, 2-core EPYC VM
    /// with AVX-512), peaks unchanged: MiniLM BF16's tensor reads 19-28 -> 14-20 ms inside
    /// dcgguf (13 ms with the file cached); SmolLM2 Q4_1's load 223-256 -> 184-213 ms
    /// (llama.cpp's load time); Qwen2.5-Coder-1.5B, three runs, 1409-1557 -> 1373-1432 ms.
    fn ask_ahead(&self, start: usize, end: usize) -> Option<std::ops::Range<usize>> {
        use std::sync::atomic::Ordering::Relaxed;
        let asked = self.asked_until.load(Relaxed);
        let in_run = asked == 0 || start.saturating_add(RUN_SLACK) > asked;
        if !in_run {
            return None;
        }
        let until = end.saturating_add(READ_AHEAD).min(self.map.len());
        let before = self.asked_until.fetch_max(until, Relaxed);
        let from = end.max(before);
        (until > from).then_some(from..until)
    }

    /// Asks the kernel for the stored bytes of `chunks` (tensor, chunk) all at once, in the
    /// background, before they are decoded (one after another or on several threads): a row
    /// lookup decodes a set of chunks it knows in advance. Only where decodes read their
    /// chunks one request each ([`DcFile::set_uncache_after_decode`]); otherwise nothing.
    /// MiniLM BF16's lookup stalls over a run from a cold page cache, five runs each (the
    /// runs of [`DcFile::ask_ahead`]): 25-36 ms (median 32) -> 22-36 (25); in five runs
    /// before those, 27-42 (32) -> 22-28 (23.5).
    pub fn prefetch_chunks(&self, chunks: &[(usize, usize)]) {
        if self.chunk_reads.load(std::sync::atomic::Ordering::Relaxed) {
            self.ask_for_chunks(chunks);
        }
    }

    /// Asks the kernel for the stored bytes of `chunks` (tensor, chunk) in the background,
    /// one request a chunk (the kernel reads at most its readahead maximum of one request),
    /// whatever the mapping's advice: for decodes that know their chunks ahead.
    pub fn ask_for_chunks(&self, chunks: &[(usize, usize)]) {
        let Storage::Mapped(_, file, _) = &self.map else {
            return;
        };
        for &(i, c) in chunks {
            let starts = &self.tensors[i].chunk_starts;
            crate::io::prefetch_cached(file, starts[c] as u64, (starts[c + 1] - starts[c]) as u64);
        }
    }

    /// Decodes chunk `c` of tensor `i` into `dst` (exactly the chunk's length) and checks it.
    pub fn decode_chunk(&self, i: usize, c: usize, dst: &mut [u8]) -> Result<()> {
        let st = &self.tensors[i];
        let e = &self.index.tensors[i].chunks[c];
        let name = &self.original.tensors[i].name;
        let payload = &self.map[st.chunk_starts[c]..st.chunk_starts[c + 1]];
        if self.chunk_reads.load(std::sync::atomic::Ordering::Relaxed)
            && let Storage::Mapped(_, file, _) = &self.map
        {
            // One read of the whole chunk instead of a page per fault (see
            // set_uncache_after_decode). Also after the load: a budget that starts later (the
            // batch-time switch, the default's lookup tables) reads chunks that a cap, or the
            // load's uncaching, evicted; page by page, MiniLM BF16 under a 363 MiB cap took
            // 5950 major faults where a budget from the load took 130. The kernel's readahead
            // instead would cache the chunks around it too (8 MiB of them on this VM's disk).
            let (start, end) = (st.chunk_starts[c], st.chunk_starts[c + 1]);
            crate::io::prefetch_cached(file, start as u64, (end - start) as u64);
            if let Some(ahead) = self.ask_ahead(start, end) {
                crate::io::prefetch_cached(file, ahead.start as u64, ahead.len() as u64);
            }
        }
        let mode = ChunkMode::from_id(e.mode).expect("mode checked at open");
        let decoded = decode_chunk(&st.layout, mode, payload, dst);
        if self
            .release_after_decode
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.release_range(st.chunk_starts[c], st.chunk_starts[c + 1]);
        }
        decoded.map_err(DcError::chunk(name, c))?;
        if xxh3_64(dst) != e.hash {
            return Err(DcError::Corrupt {
                tensor: name.clone(),
                chunk: c as u64,
                what: "checksum mismatch: decoded bytes differ from the original".into(),
            });
        }
        Ok(())
    }

    /// Decodes bytes `[offset, offset + dst.len())` of tensor `i` into `dst`, chunks in
    /// parallel. Whole chunks decode straight into `dst`.
    pub fn read_tensor(&self, i: usize, offset: u64, dst: &mut [u8]) -> Result<()> {
        let t = &self.original.tensors[i];
        let end = offset.checked_add(dst.len() as u64);
        if end.is_none_or(|e| e > t.nbytes) {
            return Err(DcError::OutOfRange {
                tensor: t.name.clone(),
                start: offset,
                end: end.unwrap_or(u64::MAX),
                len: t.nbytes,
            });
        }
        let mut jobs = Vec::new();
        self.plan_tensor_read(i, offset, dst, &mut jobs);
        self.run_jobs(jobs)
    }

    /// Splits a read of tensor `i` into per-chunk pieces.
    fn plan_tensor_read<'a>(
        &self,
        i: usize,
        offset: u64,
        dst: &'a mut [u8],
        jobs: &mut Vec<ReadJob<'a>>,
    ) {
        let chunk_raw = u64::from(self.index.tensors[i].chunk_raw);
        let mut rest = dst;
        let mut pos = offset;
        while !rest.is_empty() {
            let c = (pos / chunk_raw) as usize;
            let within = (pos - c as u64 * chunk_raw) as usize;
            let take = (self.chunk_len(i, c) - within).min(rest.len());
            let (piece, tail) = std::mem::take(&mut rest).split_at_mut(take);
            jobs.push(ReadJob::Chunk {
                tensor: i,
                chunk: c,
                within,
                dst: piece,
            });
            rest = tail;
            pos += take as u64;
        }
    }

    /// Runs read pieces, in parallel when there are several chunks.
    fn run_jobs(&self, jobs: Vec<ReadJob<'_>>) -> Result<()> {
        let run = |job: ReadJob<'_>| -> Result<()> {
            match job {
                ReadJob::Copy { src, dst } => {
                    dst.copy_from_slice(src);
                    Ok(())
                }
                ReadJob::Chunk {
                    tensor,
                    chunk,
                    within,
                    dst,
                } => {
                    let len = self.chunk_len(tensor, chunk);
                    if within == 0 && dst.len() == len {
                        self.decode_chunk(tensor, chunk, dst)
                    } else {
                        let mut whole = vec![0u8; len];
                        self.decode_chunk(tensor, chunk, &mut whole)?;
                        dst.copy_from_slice(&whole[within..within + dst.len()]);
                        Ok(())
                    }
                }
            }
        };
        let chunks = jobs
            .iter()
            .filter(|j| matches!(j, ReadJob::Chunk { .. }))
            .count();
        if chunks <= 1 {
            jobs.into_iter().try_for_each(run)
        } else {
            jobs.into_par_iter().try_for_each(run)
        }
    }

    /// Where the file is mapped in this process (tests read its resident pages in smaps).
    #[cfg(test)]
    pub(crate) fn mapped_at(&self) -> Option<usize> {
        match &self.map {
            Storage::Mapped(m, ..) => Some(m.as_ptr() as usize),
            Storage::Owned(_) => None,
        }
    }

    /// Reads chunks through the mapping again, with the kernel's readahead, as a fresh open
    /// does ([`DcFile::set_uncache_after_decode`] turned reads of one request a chunk on).
    /// Where it was on (a cold load), first asks the kernel for the stored bytes of tensors
    /// `ahead` (a `ram` budget's streamed tensors, which stay mapped once read) in the
    /// background: their first decodes then find their pages cached, and no page fault
    /// reads ahead into the tensors around them, which the load dropped from the cache.
    /// SmolLM2 `50%,ram`, cold: 42.0 MiB of the file cached after a run (its streamed
    /// tensors' 41.9), 60 MiB with the readahead of faults (read_ahead_kb 8192); reading one
    /// request a chunk after the load instead, 16.6-22.5 ms a token against 14.1-20.6. Not for
    /// bytes mapped anew on each use (`file`): the pages asked for so are single pages, where
    /// a fault's readahead brings large folios, and mapping them back every token took more
    /// faults (Qwen2.5-Coder-1.5B `40%,file`, 48 tokens: 595 thousand against 361, 142-192
    /// ms a token against 126-168; session 59).
    pub fn end_chunk_reads(&self, ahead: &[usize]) {
        if !self
            .chunk_reads
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        if let Storage::Mapped(m, file, _) = &self.map {
            // A chunk a request: the kernel reads at most its readahead maximum (8 MiB on
            // this VM's disk) of one request, and a tensor may be larger.
            for &i in ahead {
                for span in self.tensors[i].chunk_starts.windows(2) {
                    crate::io::prefetch_cached(file, span[0] as u64, (span[1] - span[0]) as u64);
                }
            }
            let _ = m.advise(memmap2::Advice::Normal);
        }
    }

    /// Drops this process's page mappings of the DC file; the page cache keeps the data and
    /// later reads fault it back in. Keeps RSS flat while a long read streams the file.
    pub fn release_mapped_pages(&self) {
        if let Storage::Mapped(m, ..) = &self.map {
            // SAFETY: MADV_DONTNEED on a read-only, file-backed mapping we never write only
            // drops page-table entries; the next access re-reads the same bytes from the file.
            let _ = unsafe { m.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }

    /// At the end of a load with [`DcFile::set_uncache_after_decode`] on: drops from the page
    /// cache every page of the file that was not cached when it was turned on, what readahead
    /// brought back after a chunk's own drop included; then turns uncaching off.
    pub fn finish_uncache(&self) {
        self.end_uncache(false);
    }

    /// [`DcFile::finish_uncache`] for a load that read only the metadata: the metadata stays
    /// cached (the full load that usually follows reads it again: dropped, it came back a
    /// page fault at a time), the chunks that readahead brought in past it go.
    pub fn finish_uncache_keeping_metadata(&self) {
        self.end_uncache(true);
    }

    fn end_uncache(&self, keep_metadata: bool) {
        // Decodes after the load (row lookups) no longer ask ahead.
        self.asked_until
            .store(usize::MAX, std::sync::atomic::Ordering::Relaxed);
        if self.uncache.load(std::sync::atomic::Ordering::Relaxed) {
            let from = if keep_metadata {
                // A page the metadata shares with the first chunk stays cached: only pages
                // wholly inside the range go.
                self.chunk_span().0
            } else {
                self.uncache_metadata();
                0
            };
            self.release_range(from, self.map.len());
            self.uncache
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Drops this process's page mappings of the stored chunks `(tensor, chunk)` listed,
    /// with one call over the span they cover, widened by the kernel's fault-around window
    /// (which maps neighbouring pages of the file along with each faulting one).
    pub fn release_chunks(&self, chunks: &[(usize, usize)]) {
        self.release_chunk_span(chunks, false);
    }

    /// [`DcFile::release_chunks`], and after a cold load ([`DcFile::set_uncache_after_decode`]
    /// turned on) also drops from the page cache what of their span was not cached when the
    /// file was opened: for compressed bytes read after the load that nothing needs until
    /// the next lookup, which then reads them again.
    pub fn release_and_uncache_chunks(&self, chunks: &[(usize, usize)]) {
        let cold = self.chunk_reads.load(std::sync::atomic::Ordering::Relaxed);
        self.release_chunk_span(chunks, cold);
    }

    fn release_chunk_span(&self, chunks: &[(usize, usize)], uncache: bool) {
        const FAULT_AROUND: usize = 64 << 10;
        let starts = chunks.iter().map(|&(i, c)| self.tensors[i].chunk_starts[c]);
        let ends = chunks
            .iter()
            .map(|&(i, c)| self.tensors[i].chunk_starts[c + 1]);
        if let (Some(from), Some(to)) = (starts.min(), ends.max()) {
            let around_to = to.saturating_add(FAULT_AROUND).min(self.map.len());
            let around_from = from.saturating_sub(FAULT_AROUND);
            self.unmap_range(around_from, around_to);
            if uncache || self.uncache.load(std::sync::atomic::Ordering::Relaxed) {
                // Only the span itself: the pages around it hold the neighbouring chunks,
                // which a lookup may have asked for ahead or be decoding on another thread.
                // Dropped with the span widened by FAULT_AROUND, MiniLM BF16's 64 KiB chunks
                // under a cap at plain mmap's peak read them back a page per major fault (409
                // a run against 166 uncapped, 2026-12-02).
                self.uncache_inside(from, to);
            }
        }
    }

    /// Drops this process's page mappings of map bytes `[from, to)` and, while uncaching
    /// ([`DcFile::set_uncache_after_decode`]), the pages wholly inside them that the page
    /// cache did not hold at open ([`DcFile::uncache_inside`]).
    fn release_range(&self, from: usize, to: usize) {
        self.unmap_range(from, to);
        if self.uncache.load(std::sync::atomic::Ordering::Relaxed) {
            self.uncache_inside(from, to);
        }
    }

    /// Drops this process's page mappings of map bytes `[from, to)` (whole pages around
    /// them; see [`DcFile::release_mapped_pages`]): the next access maps the same bytes again.
    fn unmap_range(&self, from: usize, to: usize) {
        let Storage::Mapped(m, ..) = &self.map else {
            return;
        };
        let page = crate::io::page_size();
        let start = from / page * page;
        if to > start {
            // SAFETY: as in release_mapped_pages; the range lies inside the mapping (chunk
            // offsets were checked at open) and starts on a page boundary.
            let _ = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, to - start)
            };
        }
    }

    /// Drops from the page cache the pages wholly inside map bytes `[from, to)` (the file's
    /// end counts as a page's end) that it did not hold when the file was opened. A page
    /// that `from` or `to` cuts holds bytes of a neighbour, which stays: the metadata before
    /// the first chunk, or the next chunk, which another thread may be decoding or has asked
    /// for. Dropped with its chunk, the page that the gap blob shares with the first chunk
    /// went at llama.cpp's metadata-only load (whose header reads end inside the first
    /// tensors), and the full load's first look at the metadata read it back with a major
    /// fault and 8 MiB of readaround around it: 11-14 ms of its 96 (MiniLM F16, Intel Xeon
    /// VM, 2026-12-02).
    fn uncache_inside(&self, from: usize, to: usize) {
        let Storage::Mapped(_, file, resident) = &self.map else {
            return;
        };
        let page = crate::io::page_size();
        let inside_to = if to >= self.map.len() {
            self.map.len()
        } else {
            to / page * page
        };
        // Runs of the pages inside that were not in the page cache when the load began.
        let pages = from.div_ceil(page)..inside_to.div_ceil(page).min(resident.len());
        let mut p = pages.start;
        while p < pages.end {
            if resident[p] {
                p += 1;
                continue;
            }
            let run = p;
            while p < pages.end && !resident[p] {
                p += 1;
            }
            crate::io::drop_cached(file, (run * page) as u64, ((p - run) * page) as u64);
        }
    }

    /// The tensor whose data starts at byte `offset` of the original file.
    pub fn tensor_starting_at(&self, offset: u64) -> Option<usize> {
        let s = self
            .segments
            .get(self.segments.partition_point(|s| s.end() <= offset))?;
        match s.piece {
            Piece::Tensor(i) if s.start == offset => Some(i),
            _ => None,
        }
    }

    /// Original-file byte range of the tensor chunk holding byte `offset`; `None` in the
    /// header, a gap or past the end. Lets callers (the llama.cpp FILE* hook) cache chunks
    /// that are read piecewise instead of decoding them once per piece.
    pub fn chunk_range_at(&self, offset: u64) -> Option<std::ops::Range<u64>> {
        let s = self.segments[self.segments.partition_point(|s| s.end() <= offset)..].first()?;
        let Piece::Tensor(i) = s.piece else {
            return None;
        };
        if offset < s.start {
            return None;
        }
        let chunk_raw = self.index.tensors[i].chunk_raw as u64;
        let c = (offset - s.start) / chunk_raw;
        let start = s.start + c * chunk_raw;
        Some(start..start + self.chunk_len(i, c as usize) as u64)
    }

    /// The first tensor chunk that ends after `offset` (the one holding it, or the next one
    /// in file order); `None` past the last tensor.
    pub fn next_chunk_range(&self, offset: u64) -> Option<std::ops::Range<u64>> {
        let first = self.segments.partition_point(|s| s.end() <= offset);
        self.segments[first..].iter().find_map(|s| match s.piece {
            Piece::Tensor(_) => self.chunk_range_at(offset.max(s.start)),
            _ => None,
        })
    }

    /// Fills `dst` with the original file's bytes from `offset`; returns how many were
    /// available (fewer only at the end of the file). All chunks the range touches, across
    /// tensors, are decoded in one parallel pass.
    pub fn read_at(&self, offset: u64, dst: &mut [u8]) -> Result<usize> {
        let size = self.index.original_size;
        if offset >= size {
            return Ok(0);
        }
        let n = (dst.len() as u64).min(size - offset) as usize;
        let mut seg = self.segments.partition_point(|s| s.end() <= offset);
        let mut pos = offset;
        let mut rest = &mut dst[..n];
        // Held for the jobs below to borrow from, when the range starts in the header.
        let header = match self.segments[seg].piece {
            Piece::Header => Some(self.original_header()?),
            _ => None,
        };
        let mut jobs = Vec::new();
        while !rest.is_empty() {
            let s = self.segments[seg];
            let within = pos - s.start;
            let take = ((s.len - within) as usize).min(rest.len());
            let (piece, tail) = std::mem::take(&mut rest).split_at_mut(take);
            let w = within as usize;
            match s.piece {
                Piece::Header => jobs.push(ReadJob::Copy {
                    src: &header.as_ref().expect("the header is the first segment")[w..w + take],
                    dst: piece,
                }),
                Piece::Gap { at } => jobs.push(ReadJob::Copy {
                    src: &self.gaps()?[at as usize + w..at as usize + w + take],
                    dst: piece,
                }),
                Piece::Tensor(i) => self.plan_tensor_read(i, within, piece, &mut jobs),
            }
            rest = tail;
            pos += take as u64;
            seg += 1;
        }
        self.run_jobs(jobs)?;
        Ok(n)
    }

    /// Streams the whole original file through `sink`, checking every chunk and the
    /// whole-file checksum. `progress` gets byte counts as they are done.
    pub fn for_each_block(
        &self,
        block: usize,
        progress: &dyn Fn(u64),
        mut sink: impl FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut buf = vec![0u8; block.max(1 << 16)];
        let mut hasher = Xxh3::new();
        let mut pos = 0u64;
        loop {
            let n = self.read_at(pos, &mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            sink(pos, &buf[..n])?;
            pos += n as u64;
            progress(n as u64);
        }
        if hasher.digest() != self.original_xxh3 {
            return Err(DcError::Mismatch {
                what: "whole-file checksum differs from the one recorded at compression".into(),
            });
        }
        Ok(())
    }
}

/// Which metadata values a parse keeps.
#[derive(Clone, Copy)]
enum Arrays {
    Keep,
    Skip,
}

/// Which format versions an open accepts.
#[derive(Clone, Copy)]
enum Versions {
    /// Only versions whose every byte is covered by a checksum checked before use.
    Checked,
    /// Version 1 too, for readers that check the whole-file checksum first.
    AlsoV1,
}

/// Whether `bytes` carry a DC-GGUF marker in their first MiB: the `dc.format_version` key or
/// the `dc.index` tensor name, each with its GGUF length prefix. Decides whether a file that
/// fails to parse is reported as a damaged DC file or left to llama.cpp as a plain one.
pub fn looks_like_dc(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(1 << 20)];
    let marker = |s: &str| {
        let mut m = (s.len() as u64).to_le_bytes().to_vec();
        m.extend_from_slice(s.as_bytes());
        head.windows(m.len()).any(|w| w == m)
    };
    marker(KEY_FORMAT_VERSION) || marker(INDEX_TENSOR)
}

/// The stored bytes of a blob after cheap checks: they lie inside `dc.data` and are exactly
/// one zstd frame that declares `raw_len` decoded bytes.
fn blob_frame<'m>(
    map: &'m [u8],
    data: &std::ops::Range<usize>,
    b: &BlobRef,
    name: &'static str,
) -> Result<&'m [u8]> {
    let corrupt = |what: String| DcError::CorruptBlob { blob: name, what };
    let data_len = (data.end - data.start) as u64;
    let end = b.offset.checked_add(b.stored_len);
    if end.is_none_or(|e| e > data_len) {
        return Err(corrupt("points past the end of dc.data".into()));
    }
    let start = data.start + b.offset as usize;
    let stored = &map[start..start + b.stored_len as usize];
    match zstd::zstd_safe::find_frame_compressed_size(stored) {
        Ok(n) if n == stored.len() => {}
        _ => return Err(corrupt("is not exactly one zstd frame".into())),
    }
    match zstd::zstd_safe::get_frame_content_size(stored) {
        Ok(Some(n)) if n == b.raw_len => Ok(stored),
        Ok(Some(n)) => Err(corrupt(format!(
            "its frame declares {n} bytes, the index {}",
            b.raw_len
        ))),
        _ => Err(corrupt("its frame does not declare its size".into())),
    }
}

/// Decodes a blob whose frame passed [`blob_frame`] and whose size passed the caller's
/// caps, into memory allocated fallibly, and checks its checksum (version 2).
fn decode_blob(stored: &[u8], b: &BlobRef, name: &'static str) -> Result<Vec<u8>> {
    let corrupt = |what: String| DcError::CorruptBlob { blob: name, what };
    let mut raw = Vec::new();
    raw.try_reserve_exact(b.raw_len as usize)
        .map_err(|_| DcError::OutOfMemory {
            what: name,
            bytes: b.raw_len,
        })?;
    raw.resize(b.raw_len as usize, 0);
    let n = zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(stored, &mut raw[..]))
        .map_err(|e| corrupt(e.to_string()))?;
    if n != raw.len() {
        return Err(corrupt(format!(
            "decoded {n} bytes, expected {}",
            raw.len()
        )));
    }
    if b.hash.is_some_and(|h| h != xxh3_64(&raw)) {
        return Err(corrupt(
            "checksum mismatch: decoded bytes differ from the original".into(),
        ));
    }
    Ok(raw)
}

/// The first format version whose files may name transform `t` (docs/FORMAT.md §5): an
/// older file naming a newer transform is damaged, not merely unusual.
fn first_version_with(t: Transform) -> u32 {
    match t {
        Transform::FoldSplit => 3,
        _ => FORMAT_VERSION_1,
    }
}

fn check_tensor(
    t: &TensorInfo,
    e: &super::TensorEntry,
    data: &std::ops::Range<usize>,
    version: u32,
) -> Result<TensorState> {
    let bad = |what: String| DcError::Corrupt {
        tensor: t.name.clone(),
        chunk: 0,
        what: format!("index entry: {what}"),
    };
    let transform = Transform::from_id(e.transform, t.ty)
        .filter(|tr| version >= first_version_with(*tr))
        .ok_or_else(|| {
            bad(format!(
                "transform {} is not valid for {} in a version {version} file",
                e.transform, t.ty
            ))
        })?;
    let layout = Layout::new(transform, t.ty);
    let chunk_raw = e.chunk_raw as u64;
    let want_chunks = if t.nbytes == 0 {
        0
    } else if chunk_raw == 0
        || !chunk_raw.is_multiple_of(layout.unit() as u64)
        || chunk_raw > MAX_CHUNK_RAW.max(layout.unit() as u64)
    {
        return Err(bad(format!(
            "chunk size {chunk_raw} is not a positive multiple of {} up to {MAX_CHUNK_RAW}",
            layout.unit()
        )));
    } else {
        t.nbytes.div_ceil(chunk_raw)
    };
    if e.chunks.len() as u64 != want_chunks {
        return Err(bad(format!(
            "{} chunks, {want_chunks} expected for {} bytes",
            e.chunks.len(),
            t.nbytes
        )));
    }
    let mut starts = Vec::with_capacity(e.chunks.len() + 1);
    let mut pos = e.data_offset;
    for (c, ch) in e.chunks.iter().enumerate() {
        let raw_len = chunk_raw.min(t.nbytes - c as u64 * chunk_raw);
        let mode = ChunkMode::from_id(ch.mode).ok_or_else(|| DcError::Corrupt {
            tensor: t.name.clone(),
            chunk: c as u64,
            what: format!("unknown chunk mode {}", ch.mode),
        })?;
        if mode == ChunkMode::Raw && u64::from(ch.stored_len) != raw_len {
            return Err(DcError::Corrupt {
                tensor: t.name.clone(),
                chunk: c as u64,
                what: format!("raw chunk stores {} of {raw_len} bytes", ch.stored_len),
            });
        }
        starts.push(pos);
        pos = pos.saturating_add(u64::from(ch.stored_len));
    }
    starts.push(pos);
    let data_len = (data.end - data.start) as u64;
    if pos > data_len {
        let c = starts.iter().position(|&s| s > data_len).unwrap_or(1);
        return Err(DcError::Corrupt {
            tensor: t.name.clone(),
            chunk: c.saturating_sub(1) as u64,
            what: format!("chunk table points past the end of dc.data ({pos} > {data_len})"),
        });
    }
    Ok(TensorState {
        layout,
        transform,
        chunk_starts: starts.iter().map(|&s| data.start + s as usize).collect(),
    })
}

/// Rebuilds the original GGUF file from a DC-GGUF file, bit for bit.
pub fn decompress_file(
    input: &Path,
    output: &Path,
    force: bool,
    progress: &dyn Fn(u64),
) -> Result<u64> {
    decompress_file_with(input, output, force, progress, &Job::default())
}

/// [`decompress_file`] with a [`Job`]: records the original size as the progress total,
/// and stops with [`DcError::Cancelled`], leaving no output, once the job is cancelled.
pub fn decompress_file_with(
    input: &Path,
    output: &Path,
    force: bool,
    progress: &dyn Fn(u64),
    job: &Job,
) -> Result<u64> {
    let dc = DcFile::open_for_full_check(input)?;
    let mut out = AtomicOutput::create(output, Some(input), force)?;
    job.set_total(dc.original_size());
    let path = out.path().to_path_buf();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, out.file());
    dc.for_each_block(64 << 20, progress, |_, bytes| {
        job.check()?;
        w.write_all(bytes).map_err(DcError::io(&path))
    })?;
    w.flush().map_err(DcError::io(&path))?;
    drop(w);
    // A cancel from the last progress call.
    job.check()?;
    out.commit()?;
    Ok(dc.original_size())
}

/// Checks that `dc` decodes to exactly the bytes of `original`.
pub fn verify_against(dc: &DcFile, original: &Path, progress: &dyn Fn(u64)) -> Result<()> {
    verify_against_with(dc, original, progress, &Job::default())
}

/// [`verify_against`] with a [`Job`] (progress total: the original size; cancellation).
pub fn verify_against_with(
    dc: &DcFile,
    original: &Path,
    progress: &dyn Fn(u64),
    job: &Job,
) -> Result<()> {
    let (_f, map) = map_readonly(original).map_err(DcError::io(original))?;
    if map.len() as u64 != dc.original_size() {
        return Err(DcError::Mismatch {
            what: format!(
                "{} has {} bytes, the DC file decodes to {}",
                original.display(),
                map.len(),
                dc.original_size()
            ),
        });
    }
    job.set_total(dc.original_size());
    dc.for_each_block(64 << 20, progress, |pos, bytes| {
        job.check()?;
        let want = &map[pos as usize..pos as usize + bytes.len()];
        match bytes.iter().zip(want).position(|(a, b)| a != b) {
            None => Ok(()),
            Some(k) => Err(DcError::Mismatch {
                what: format!("first difference at byte {}", pos + k as u64),
            }),
        }
    })?;
    job.check()
}

#[cfg(test)]
mod tests {
    /// A load's decodes in file order ask READ_AHEAD past each chunk; a decode that skips
    /// ahead starts a new run; one far behind the run (a row lookup) and any after the load
    /// ask for their own chunk only.
    #[test]
    fn only_a_run_of_decodes_in_file_order_asks_ahead() {
        use super::READ_AHEAD;
        use crate::dc::test_files::small_dc;
        use crate::gguf::GgmlType;
        // 24 MiB of bytes that do not compress: a file longer than the run's slack.
        let data = crate::dc::test_files::incompressible(24 << 20);
        let tensors = vec![("w".to_string(), vec![(24 << 20) / 4], GgmlType::F32, data)];
        let (_, dir, _, dc) = small_dc("ask-ahead", &tensors, 1 << 20);
        let len = dc.map.len();
        let mib = 1usize << 20;
        assert!(len > 24 * mib, "{len}");
        assert_eq!(READ_AHEAD, mib);
        // The first decode starts a run.
        assert_eq!(dc.ask_ahead(mib, 2 * mib), Some(2 * mib..3 * mib));
        // The next chunks continue it, each asking only for what past itself was not asked
        // for yet (its own chunk it asks for anyway), also when parallel threads decode
        // them out of order.
        assert_eq!(dc.ask_ahead(4 * mib, 5 * mib), Some(5 * mib..6 * mib));
        assert_eq!(dc.ask_ahead(2 * mib, 3 * mib), None);
        assert_eq!(dc.ask_ahead(5 * mib, 6 * mib), Some(6 * mib..7 * mib));
        // Skipping ahead (a tensor the load defers) starts a new run, up to the file's end.
        assert_eq!(dc.ask_ahead(len - 2 * mib, len - mib), Some(len - mib..len));
        // A chunk well behind the run asks for nothing more.
        assert_eq!(dc.ask_ahead(mib, 2 * mib), None);
        // After the load nothing asks ahead.
        dc.finish_uncache();
        assert_eq!(
            dc.asked_until.load(std::sync::atomic::Ordering::Relaxed),
            usize::MAX
        );
        assert_eq!(dc.ask_ahead(len - mib / 2, len - mib / 4), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// After a cold load, what read-around brought back outside the kept tensors' spans goes
    /// again: the pages wholly inside the other tensors within the window, none of the kept
    /// ones', nothing outside the window; a warm load's file is left alone.
    #[test]
    fn uncache_around_drops_only_the_tensors_not_kept_within_the_window() {
        use crate::dc::test_files::{incompressible, small_dc};
        use crate::gguf::GgmlType;
        let mib = 1usize << 20;
        let tensors: Vec<_> = (0..6)
            .map(|i| {
                let mut data = incompressible(mib);
                data.rotate_left(i * 4099);
                (format!("t{i}"), vec![(mib / 4) as u64], GgmlType::F32, data)
            })
            .collect();
        let (_, dir, path, _) = small_dc("uncache-around", &tensors, 256 << 10);
        // Pages of a span cached, and its pages.
        let cached_in = |dc: &super::DcFile, (a, b): (usize, usize)| {
            let page = crate::io::page_size();
            let super::Storage::Mapped(m, ..) = &dc.map else {
                unreachable!()
            };
            let pages = &crate::io::resident_pages(m)[a.div_ceil(page)..b / page];
            (pages.iter().filter(|&&r| r).count(), pages.len())
        };
        let open_cold = || {
            let f = std::fs::File::open(&path).unwrap();
            f.sync_all().unwrap();
            crate::io::drop_cached(&f, 0, f.metadata().unwrap().len());
            let dc = super::DcFile::open(&path).unwrap();
            dc.set_uncache_after_decode(true);
            assert!(dc.loaded_cold(), "the file is still cached: cannot test");
            // The load is over; read-around brings the whole file back.
            std::fs::read(&path).unwrap();
            dc
        };
        let dc = open_cold();
        let spans: Vec<(usize, usize)> = (0..6).map(|i| dc.stored_spans(&[i])[0]).collect();
        let span = |i: usize| spans[i];
        assert_eq!(dc.stored_spans(&[3, 1]), vec![span(1), span(3)]);
        let kept = dc.stored_spans(&[1, 3]);
        // Chunks of t2 just read; the window reaches t0 and t4 but not t5.
        let window = span(2).0 - span(0).0;
        let chunks: Vec<(usize, usize)> = (0..4).map(|c| (2, c)).collect();
        dc.uncache_around(&chunks, &kept, window);
        // A large folio of the page cache that a kept span shares stays whole: a few pages at
        // a dropped span's ends may stay.
        for (i, dropped) in [
            (0, true),
            (1, false),
            (2, true),
            (3, false),
            (4, true),
            (5, false),
        ] {
            let (n, all) = cached_in(&dc, span(i));
            let as_expected = if dropped { n * 4 < all } else { n == all };
            assert!(as_expected, "t{i}: {n} of {all} pages cached");
        }
        drop(dc);
        // Warm at open: nothing is dropped.
        std::fs::read(&path).unwrap();
        let dc = super::DcFile::open(&path).unwrap();
        dc.set_uncache_after_decode(true);
        assert!(!dc.loaded_cold());
        dc.uncache_around(&[(2, 0)], &dc.stored_spans(&[1]), 8 * mib);
        assert!(cached_in(&dc, span(0)).0 > 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
