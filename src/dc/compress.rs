//! GGUF -> DC-GGUF. Streams chunks through a bounded window, so memory does not grow with
//! the model: workers encode chunks in input order while this thread writes them, hashes the
//! input as it goes and releases the input pages behind it. The input is only ever mapped
//! read-only.

use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::{Condvar, Mutex, mpsc};

use crate::io::hash::{Xxh3, xxh3_64};
use memmap2::{Advice, Mmap, UncheckedAdvice};

use super::index::{BlobRef, ChunkEntry, INDEX_VERSION, Index, TensorEntry};
use super::job::Job;
use super::layout::{Piece, segments};
use super::{
    DATA_TENSOR, DC_ARCHITECTURE, DcError, FORMAT_VERSION, HEADER_RAW_SLACK, INDEX_TENSOR,
    KEY_FORMAT_VERSION, KEY_MOVED_KEYS, KEY_ORIGINAL_ARCH, KEY_ORIGINAL_SIZE, KEY_ORIGINAL_XXH3,
    KEY_WRITER, MAX_CHUNK_RAW, MAX_CLEAR_VALUE, MAX_DC_ALIGNMENT, MAX_GAP_RAW, MAX_HEADER_RATIO,
    MAX_HEADER_RAW, Result,
};
use crate::codec::{
    ChunkMode, EncodeOptions, LEVEL_DEFAULT, LEVEL_MAX, Layout, PlaneStats, Transform,
    encode_chunk_into,
};
use crate::gguf::{ArrayValue, GgmlType, GgufHeader, HeaderWriter, KeyValue, Value, align_up};
use crate::io::{AtomicOutput, map_readonly};

/// Zstd level for the side blobs (original header, gaps) at a tensor `level`. Level 19 took
/// 3.6 s on Qwen2.5-1.5B's 6 MB header (tokenizer), a serial step longer than all its tensors
/// at the default level; level 9 took 0.2 s for a blob 14% larger, 0.02% of the file. So
/// the default uses 9, `max` and Zstd levels from 19 up use 19, and other levels theirs,
/// clamped to 9..=19.
fn blob_level(level: i32) -> i32 {
    match level {
        LEVEL_DEFAULT => 9,
        LEVEL_MAX => 19,
        l => l.clamp(9, 19),
    }
}

/// Compresses a side blob with a 1 MiB window and 1 MiB match tables: zstd's level-19
/// defaults size them by the input (a 7.7 MB header took ~90 MB of tables) for a gain of
/// well under 1% on a blob that is 1-2% of the file.
fn compress_blob(raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::CParameter as P;
    let mut c = zstd::bulk::Compressor::new(blob_level(level))?;
    c.include_checksum(false)?;
    c.include_contentsize(true)?;
    for p in [P::WindowLog(20), P::ChainLog(20), P::HashLog(20)] {
        c.set_parameter(p)?;
    }
    c.compress(raw)
}

/// Raw bytes per chunk, at most, of a token embedding that only row lookups read
/// ([`crate::gguf::GgufHeader::token_embedding_is_lookup_only`]): a lookup decodes (and, from
/// a cold page cache, reads) every chunk holding a row it needs, and a prompt's tokens fall
/// in about as many chunks as they are tokens. Measured against 1 MiB chunks (the default loads without
/// a budget keep such a table compressed; cold page cache, llama.cpp's tools as in the
/// memcap bench, 2-core EPYC VM, 2026-12-01 06:20 UTC): Qwen2.5-Coder-1.5B (151936 rows of
/// 864 bytes; three runs each, 32 tokens) decoded 3.4 MB for its lookups instead of 27.3,
/// stalled 32-37 ms instead of 54-59, peaked at 1026.6-1026.8 MiB instead of 1041.0-1041.2,
/// its table 1.1% larger (125.4 MB against 124.0; the file 0.13%); MiniLM BF16 (30522 rows,
/// 159 sentences, four runs each) decoded 20.4 MB instead of 39.8, peaked 6.6 MiB lower,
/// whole runs 1080-1110 ms against 1096-1133, the file 0.24% larger.
pub const LOOKUP_CHUNK: usize = 64 << 10;
/// ... for a table of at least this many rows (a vocabulary of that size), where a prompt's
/// tokens touch few of its chunks. A smaller table qualifies only by its bytes (below): its
/// batches touch most of its chunks whatever their size (MiniLM's 30522 rows: 22 of 22 1 MiB
/// chunks at its first batch), and small chunks grow its file (the DC-INT8 file of
/// `compress --calib --step 2.1 --embd-step 6.5` went from 0.68x Q8_0 to 0.6801x, past its
/// target in tests/quant_gptq.rs).
const LOOKUP_CHUNK_MIN_ROWS: u64 = 1 << 16;
/// ... or of at least this many bytes, whatever its rows: each lookup that gives its rows back
/// decodes every chunk it touches, and a large table's bytes sit decoded meanwhile. MiniLM BF16
/// (30522 rows, 23.4 MB; llama-embedding of the 159 sentences, cold page cache, Intel Xeon
/// VM, 2 vCPUs, 2026-12-02 09:05-09:10 UTC, 30 alternating rounds): the uncapped cgroup peak
/// 370.6 MiB against 377.6 with 1 MiB chunks (plain mmap 380.7), its lookups decoded 20.4 MB
/// instead of 39.8 in the same 22 ms, the whole runs' medians 1.452 s against 1.458 (plain
/// mmap 1.387; single runs spread 1.24-1.97 s), the file 0.24% larger. A DC-INT8 table of the
/// same model (Q8_0, 12.4 MB) keeps 1 MiB chunks, and with them its size target (above).
const LOOKUP_CHUNK_MIN_BYTES: u64 = 16 << 20;

/// Whether a sample of `table` (1 MiB from its middle: a vocabulary's first rows are often
/// unused tokens) compresses to at most [`LOOKUP_KEPT_RATIO`] of its bytes: only such a table
/// stays compressed under the default (which keeps a lookup table written in small chunks
/// compressed), and only there do small chunks pay. A table that is decoded at load instead
/// loads slower in small chunks: MiniLM F16's (18.9 of 22.4 MB stored, 84%) took 88 ms of
/// tensor reads in 64 KiB chunks against 42 in 1 MiB ones (2026-12-02, Intel Xeon VM), and
/// peaked 0.3 MiB higher; kept compressed in 64 KiB chunks (session 43) it peaked 6.1 MiB
/// lower than decoded in 1 MiB ones.
fn sample_compresses_to_kept(layout: &Layout, table: &[u8], encode: EncodeOptions) -> bool {
    const SAMPLE: usize = 1 << 20;
    let unit = layout.unit().max(1);
    let len = (table.len().min(SAMPLE) / unit) * unit;
    if len == 0 {
        return false;
    }
    let from = ((table.len() - len) / 2 / unit) * unit;
    let mut payload = Vec::new();
    encode_chunk_into(layout, &table[from..from + len], encode, None, &mut payload);
    (payload.len() as f64) <= len as f64 * LOOKUP_KEPT_RATIO
}

/// See [`sample_compresses_to_kept`]: MiniLM BF16's table compresses to 63%, F16's to 84%,
/// both kept compressed. A batch's lookups read the chunks holding its rows (MiniLM over the
/// 159 evaluation sentences: about 60% of the 64 KiB chunks), so a table held compressed
/// takes their stored bytes and the rows decoded, which saves memory down to a ratio near
/// 0.9. MiniLM F16, llama-embedding of the evaluation sentences, uncapped cgroup peak (Intel
/// Xeon VM, 2 vCPUs, 2026-12-04, 8 alternating cold rounds): 374.6 MiB against 380.8 with
/// its table decoded and plain mmap's 380.7, runs 0.97x plain mmap's speed against 0.98x
/// (medians of paired ratios, both within this VM's noise). The file grew 0.26%.
const LOOKUP_KEPT_RATIO: f64 = 0.9;

/// The bytes of `range` in `src`; `None` where it does not fit (in usize or in `src`).
fn tensor_bytes(src: &[u8], range: std::ops::Range<u64>) -> Option<&[u8]> {
    src.get(usize::try_from(range.start).ok()?..usize::try_from(range.end).ok()?)
}

#[derive(Clone, Debug)]
pub struct CompressOptions {
    pub encode: EncodeOptions,
    /// Target raw bytes per chunk (rounded down to whole blocks).
    pub chunk_size: usize,
    /// Overwrite an existing output.
    pub force: bool,
    /// Transform override per tensor type; `None` uses [`Transform::default_for`].
    pub transform: Option<fn(GgmlType) -> Transform>,
    /// With a cost model, types that decode slower than the target storage reads are
    /// stored raw (the cost layer's `LoadModel` implements [`LoadCost`]).
    pub load_model: Option<std::sync::Arc<dyn LoadCost>>,
    /// With a cost model: the output must not exceed this many bytes; tensors the model
    /// would store raw are compressed, cheapest load time per byte saved first, until it fits.
    pub target_size: Option<u64>,
    /// Byte total and cancellation (see [`Job`]); clones of the options share it.
    pub job: Job,
}

impl Default for CompressOptions {
    fn default() -> Self {
        CompressOptions {
            encode: EncodeOptions::default(),
            chunk_size: 1 << 20,
            force: false,
            transform: None,
            load_model: None,
            target_size: None,
            job: Job::default(),
        }
    }
}

/// What a compression run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CompressReport {
    pub input: PathBuf,
    pub output: PathBuf,
    pub original_bytes: u64,
    pub output_bytes: u64,
    pub tensors: usize,
    pub chunks: usize,
    pub ratio: f64,
    pub seconds: f64,
}

/// What the writer asks of a load-time cost model (implemented by `cost::LoadModel`, a layer
/// above this one): whether compressing a type pays at load, and what it costs.
pub trait LoadCost: std::fmt::Debug + Send + Sync {
    /// Whether tensors of this type load faster compressed than raw.
    fn compress_pays(&self, ty: GgmlType) -> bool;
    /// Load seconds that storing `raw` bytes of `ty` in `stored` bytes adds over reading
    /// them raw (negative when compression makes the load faster).
    fn extra_load_seconds(&self, ty: GgmlType, raw: u64, stored: u64) -> f64;
}

#[derive(Clone)]
struct Plan {
    /// Shared by every tensor of the same type and transform: a model may have 10^5 tensors.
    layout: std::sync::Arc<Layout>,
    encode: EncodeOptions,
    transform: Transform,
    chunk_raw: usize,
    n_chunks: usize,
    start: usize,
    nbytes: usize,
}

/// Compresses one GGUF file into a DC-GGUF file. `progress` receives the count of input
/// bytes finished since its last call; they add up to the input's size, which is recorded in
/// `opts.job` before the first call. Cancelled through `opts.job`, it returns
/// [`DcError::Cancelled`] and leaves no output.
pub fn compress_file(
    input: &Path,
    output: &Path,
    opts: &CompressOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<CompressReport> {
    let started = Instant::now();
    let (_file, map) = map_readonly(input).map_err(DcError::io(input))?;
    // Read ahead generously: the input is read front to back (only advice, so its failure
    // is harmless).
    let _ = map.advise(Advice::Sequential);
    let src: &[u8] = &map;
    let gguf_err = |source| DcError::Gguf {
        path: input.to_path_buf(),
        source,
    };
    let header = GgufHeader::parse(src).map_err(gguf_err)?;
    header.check_data_fits(src.len() as u64).map_err(gguf_err)?;
    if header.get(KEY_FORMAT_VERSION).is_some() {
        return Err(DcError::AlreadyDc(input.to_path_buf()));
    }
    if let Some(kv) = header.kvs.iter().find(|kv| kv.key.starts_with(b"dc.")) {
        return Err(DcError::ReservedKey(kv.key_str().into_owned()));
    }
    let mut out = AtomicOutput::create(output, Some(input), opts.force)?;
    opts.job.set_total(src.len() as u64);

    let mut layouts = std::collections::HashMap::new();
    let lookup_only = header.token_embedding_is_lookup_only();
    let mut plans: Vec<Plan> = header
        .tensors
        .iter()
        .map(|t| {
            let transform = opts
                .transform
                .map_or_else(|| Transform::default_for(t.ty), |choose| choose(t.ty));
            let layout: std::sync::Arc<Layout> = layouts
                .entry((transform.id(), t.ty))
                .or_insert_with(|| std::sync::Arc::new(Layout::new(transform, t.ty)))
                .clone();
            let unit = layout.unit();
            let cap = (MAX_CHUNK_RAW as usize).max(unit);
            let rows = t.dims.get(1).copied().unwrap_or(1);
            let small_chunks = lookup_only
                && t.name == "token_embd.weight"
                && (rows >= LOOKUP_CHUNK_MIN_ROWS
                    || (t.nbytes >= LOOKUP_CHUNK_MIN_BYTES
                        && tensor_bytes(src, header.tensor_range(t)).is_some_and(|table| {
                            sample_compresses_to_kept(&layout, table, opts.encode)
                        })));
            let chunk_size = if small_chunks {
                opts.chunk_size.min(LOOKUP_CHUNK)
            } else {
                opts.chunk_size
            };
            let chunk_raw = (chunk_size.min(cap) / unit).max(1) * unit;
            let nbytes = t.nbytes as usize;
            let store_raw = opts
                .load_model
                .as_ref()
                .is_some_and(|m| !m.compress_pays(t.ty));
            Plan {
                layout,
                encode: EncodeOptions {
                    store_raw,
                    ..opts.encode
                },
                transform,
                chunk_raw,
                n_chunks: nbytes.div_ceil(chunk_raw),
                start: header.tensor_range(t).start as usize,
                nbytes,
            }
        })
        .collect();

    let index_len = Index::encoded_len(plans.iter().map(|p| p.n_chunks)) as u64;
    let alignment = dc_alignment(&header);
    // The original's hash is known once the input has streamed through; the header is
    // written last, and every value that changes has a fixed width.
    let dc_header = |original_xxh3: u64, data_len: u64| {
        dc_header(
            &header,
            src.len() as u64,
            original_xxh3,
            index_len,
            data_len,
        )
    };
    let header_len = dc_header(0, 0).len() as u64;
    let data_start = header_len + align_up(index_len, alignment).expect("index fits");

    let path = out.path().to_path_buf();
    let file = out.file();
    file.seek(SeekFrom::Start(data_start))
        .map_err(DcError::io(&path))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut pos: u64 = 0;
    let mut put_blob = |w: &mut BufWriter<_>, raw: &[u8]| -> Result<BlobRef> {
        let stored = compress_blob(raw, opts.encode.level).map_err(DcError::io(&path))?;
        w.write_all(&stored).map_err(DcError::io(&path))?;
        let blob = BlobRef {
            offset: pos,
            stored_len: stored.len() as u64,
            raw_len: raw.len() as u64,
            hash: Some(xxh3_64(raw)),
        };
        pos += blob.stored_len;
        Ok(blob)
    };

    let segs = segments(&header, src.len() as u64);
    let gap_total: u64 = segs
        .iter()
        .filter(|s| matches!(s.piece, Piece::Gap { .. }))
        .map(|s| s.len)
        .sum();
    // Readers refuse blobs over these caps (they bound what a hostile file can make them
    // allocate), so the writer refuses inputs that would need them.
    let unsupported = |what: String, limit: u64| DcError::Unsupported {
        path: input.to_path_buf(),
        what,
        limit,
    };
    if gap_total > MAX_GAP_RAW {
        return Err(unsupported(
            format!("{gap_total} bytes lie outside the header and the tensors"),
            MAX_GAP_RAW,
        ));
    }
    if segs[0].len > MAX_HEADER_RAW {
        return Err(unsupported(
            format!("the header has {} bytes", segs[0].len),
            MAX_HEADER_RAW,
        ));
    }
    let header_blob = put_blob(&mut w, &src[..segs[0].len as usize])?;
    let header_cap = HEADER_RAW_SLACK + MAX_HEADER_RATIO * header_blob.stored_len;
    if header_blob.raw_len > header_cap {
        return Err(unsupported(
            format!(
                "the header ({} bytes) compresses to {} bytes, more than {MAX_HEADER_RATIO}:1",
                header_blob.raw_len, header_blob.stored_len
            ),
            header_cap,
        ));
    }
    let gap_bytes: Vec<u8> = segs
        .iter()
        .filter(|s| matches!(s.piece, Piece::Gap { .. }))
        .flat_map(|s| &src[s.start as usize..s.end() as usize])
        .copied()
        .collect();
    let gaps_blob = put_blob(&mut w, &gap_bytes)?;
    progress((segs[0].len + gap_bytes.len() as u64).min(src.len() as u64));
    opts.job.check()?;
    if let (Some(target), Some(model)) = (opts.target_size, &opts.load_model) {
        let fixed = data_start + header_blob.stored_len + gaps_blob.stored_len + alignment;
        let tys: Vec<GgmlType> = header.tensors.iter().map(|t| t.ty).collect();
        fit_target(
            &mut plans,
            &tys,
            &map,
            model.as_ref(),
            target,
            fixed,
            &opts.job,
        )?;
    }

    let mut tensors: Vec<TensorEntry> = plans
        .iter()
        .map(|p| TensorEntry {
            transform: p.transform.id(),
            chunk_raw: p.chunk_raw as u32,
            data_offset: 0,
            entropy_bound: 0,
            chunks: Vec::with_capacity(p.n_chunks),
        })
        .collect();
    // Entropy statistics of the tensor being written (chunks arrive in file order, one
    // tensor after another): O(1) memory however many tensors the input has.
    let mut stats: Option<(usize, PlaneStats)> = None;
    let mut n_chunks = 0;
    let mut stream = InputStream::new(&map, true);
    let mut writeback_from = pos;
    encode_chunks(&plans, src, |t, c, e| {
        if c == 0 {
            tensors[t].data_offset = pos;
            if let Some((done, s)) = stats.take() {
                tensors[done].entropy_bound = s.bound_bytes().ceil() as u64;
            }
            stats = Some((t, PlaneStats::new(plans[t].layout.plane_count())));
        }
        w.write_all(&e.payload).map_err(DcError::io(&path))?;
        pos += e.payload.len() as u64;
        if pos - writeback_from >= WRITEBACK_STEP {
            w.flush().map_err(DcError::io(&path))?;
            start_writeback(
                w.get_ref(),
                data_start + writeback_from,
                pos - writeback_from,
            );
            writeback_from = pos;
        }
        tensors[t].chunks.push(ChunkEntry {
            stored_len: e.payload.len() as u32,
            mode: e.mode as u8,
            hash: e.hash,
        });
        if let Some((_, s)) = &mut stats {
            s.merge(&e.stats);
        }
        stream.advance(plans[t].start + c * plans[t].chunk_raw + e.raw_len);
        progress(e.raw_len as u64);
        n_chunks += 1;
        opts.job.check()
    })?;
    stream.advance(src.len());
    let original_xxh3 = stream.finish();
    if let Some((done, s)) = stats.take() {
        tensors[done].entropy_bound = s.bound_bytes().ceil() as u64;
    }
    for t in &mut tensors {
        if t.chunks.is_empty() {
            t.data_offset = pos;
        }
    }
    let mut index = Index {
        version: INDEX_VERSION,
        original_size: src.len() as u64,
        dc_header_hash: None,
        header: header_blob,
        gaps: gaps_blob,
        tensors,
    };
    // llama.cpp reads the data section as tensors each padded to the alignment, the last one
    // included, so the file ends on an aligned boundary.
    let padded_end = align_up(pos, alignment).expect("data fits");
    w.write_all(&vec![0u8; (padded_end - pos) as usize])
        .map_err(DcError::io(&path))?;
    let file = w.into_inner().map_err(|e| DcError::Io {
        path: output.to_path_buf(),
        source: e.into_error(),
    })?;
    let head = dc_header(original_xxh3, pos);
    debug_assert_eq!(head.len() as u64, header_len);
    index.dc_header_hash = Some(xxh3_64(&head));
    let index_bytes = index.encode();
    debug_assert_eq!(index_bytes.len() as u64, index_len);
    let write_head = |file: &mut std::fs::File| -> std::io::Result<()> {
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&head)?;
        file.write_all(&index_bytes)?;
        // The padding up to dc.data was skipped by the seek; make it explicit zeros.
        let pad = data_start - header_len - index_len;
        file.write_all(&vec![0u8; pad as usize])
    };
    write_head(file).map_err(DcError::io(output))?;
    let output_bytes = data_start + padded_end;
    if let Some(target) = opts.target_size.filter(|&t| output_bytes > t) {
        return Err(DcError::TargetTooSmall {
            target,
            smallest: output_bytes,
        });
    }
    opts.job.check()?;
    out.commit()?;
    Ok(CompressReport {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        original_bytes: src.len() as u64,
        output_bytes,
        tensors: plans.len(),
        chunks: n_chunks,
        ratio: src.len() as f64 / output_bytes as f64,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The DC file's alignment: the original's, capped at [`MAX_DC_ALIGNMENT`].
fn dc_alignment(original: &GgufHeader) -> u64 {
    original.alignment.min(MAX_DC_ALIGNMENT)
}

/// The DC-GGUF header: original metadata (architecture replaced, `general.alignment` capped,
/// large values moved into the compressed original-header blob and listed in
/// `dc.moved_keys`), `dc.*` keys and the two tensor infos, padded to the DC alignment (the
/// whole is the start of the file up to its data section, which `dc.index` checksums).
/// Every value that changes between the placeholder and the final header has a fixed
/// width, so both have the same length.
fn dc_header(
    original: &GgufHeader,
    original_size: u64,
    original_xxh3: u64,
    index_len: u64,
    data_len: u64,
) -> Vec<u8> {
    let mut w = HeaderWriter::new(3);
    let arch = original.get("general.architecture");
    if arch.is_none() {
        w.kv(&KeyValue::new(
            "general.architecture",
            Value::string(DC_ARCHITECTURE),
        ));
    }
    let mut moved = Vec::new();
    for kv in &original.kvs {
        if kv.key == b"general.architecture" {
            w.kv(&KeyValue::new(
                "general.architecture",
                Value::string(DC_ARCHITECTURE),
            ));
        } else if kv.key == b"general.alignment" {
            w.kv(&KeyValue::new(
                "general.alignment",
                Value::u32(dc_alignment(original) as u32),
            ));
        } else if kv.value.encoded_len() > MAX_CLEAR_VALUE {
            moved.push(kv.key.clone());
        } else {
            w.kv(kv);
        }
    }
    w.kv(&KeyValue::new(
        KEY_FORMAT_VERSION,
        Value::u32(FORMAT_VERSION),
    ));
    if let Some(arch) = arch {
        w.kv(&KeyValue::new(KEY_ORIGINAL_ARCH, arch.clone()));
    }
    if !moved.is_empty() {
        w.kv(&KeyValue::new(
            KEY_MOVED_KEYS,
            Value::Array(ArrayValue::Strings(moved)),
        ));
    }
    w.kv(&KeyValue::new(KEY_ORIGINAL_SIZE, Value::u64(original_size)));
    w.kv(&KeyValue::new(KEY_ORIGINAL_XXH3, Value::u64(original_xxh3)));
    w.kv(&KeyValue::new(
        KEY_WRITER,
        Value::string(concat!("dcgguf ", env!("CARGO_PKG_VERSION"))),
    ));
    w.tensor(INDEX_TENSOR, &[index_len], GgmlType::I8, 0);
    let alignment = dc_alignment(original);
    let data_off = align_up(index_len, alignment).expect("index fits");
    w.tensor(DATA_TENSOR, &[data_len], GgmlType::I8, data_off);
    w.finish(alignment)
}

/// Reads the mapped input once, front to back: hashes it (the original's XXH3, recorded in
/// the DC header) and releases the pages behind it, so that the input's share of the
/// resident set stays bounded on inputs larger than RAM (the page cache keeps them while
/// memory allows; re-reading a released page would only fault it in again).
struct InputStream<'a> {
    map: &'a Mmap,
    pos: usize,
    released: usize,
    hasher: Option<Xxh3>,
}

/// Pages are released in steps of this many bytes (one `madvise` call each).
const RELEASE_STEP: usize = 8 << 20;

impl<'a> InputStream<'a> {
    fn new(map: &'a Mmap, hash: bool) -> InputStream<'a> {
        InputStream {
            map,
            pos: 0,
            released: 0,
            hasher: hash.then(Xxh3::new),
        }
    }

    /// Everything before `to` has been read for the last time (`to` never goes back).
    fn advance(&mut self, to: usize) {
        if to <= self.pos {
            return;
        }
        if let Some(h) = &mut self.hasher {
            h.update(&self.map[self.pos..to]);
        }
        self.pos = to;
        if self.pos - self.released >= RELEASE_STEP {
            self.release();
        }
    }

    fn release(&mut self) {
        let end = self.pos / crate::io::page_size() * crate::io::page_size();
        if end > self.released {
            // SAFETY: the map is a read-only shared file mapping that nothing writes through;
            // MADV_DONTNEED only drops this process's page-table entries for the range, and a
            // later read faults the same file bytes back in. No reference into the range is
            // held across the call that relies on its pages staying resident.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    UncheckedAdvice::DontNeed,
                    self.released,
                    end - self.released,
                )
            };
            self.released = end;
        }
    }

    /// Releases what is left and returns the hash of the bytes streamed through.
    fn finish(mut self) -> u64 {
        self.release();
        self.hasher.as_ref().map_or(0, Xxh3::digest)
    }
}

/// The output is handed to the kernel's writeback in steps of this many bytes.
const WRITEBACK_STEP: u64 = 64 << 20;

/// Starts writing `len` bytes of `file` from `offset` to storage without waiting, so that the
/// final `fsync` (at commit) finds little left to write and disk writes overlap encoding.
/// Only a hint: errors surface at that `fsync`.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor; it reads no memory of ours.
    let _ = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

/// One encoded chunk on its way to the file; its buffers are reused for later chunks.
struct EncodedChunk {
    mode: ChunkMode,
    payload: Vec<u8>,
    hash: u64,
    stats: PlaneStats,
    raw_len: usize,
}

impl EncodedChunk {
    fn empty() -> EncodedChunk {
        EncodedChunk {
            mode: ChunkMode::Raw,
            payload: Vec::new(),
            hash: 0,
            stats: PlaneStats::default(),
            raw_len: 0,
        }
    }
}

/// What the encoding workers and the writing thread share.
struct Window {
    /// Next job to hand out.
    next: usize,
    /// Jobs written so far (a job may start only while `next < written + window`).
    written: usize,
    /// Set when the writer stops early (error, cancellation) or a worker panics.
    stop: bool,
    /// Encoded chunks already written, for reuse.
    free: Vec<EncodedChunk>,
}

/// Stops the other workers (and so the writer) when a worker unwinds, so that the panic
/// reaches the caller instead of leaving the writer waiting for a chunk that never comes.
struct StopOnPanic<'a>(&'a Mutex<Window>, &'a Condvar);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(mut w) = self.0.lock() {
                w.stop = true;
            }
            self.1.notify_all();
        }
    }
}

/// Encodes every chunk of every planned tensor, in input file order, handing each to
/// `sink(tensor, chunk, encoded)` in that order on the calling thread. Worker threads (as
/// many as the current rayon pool has) encode ahead of the sink by at most a few chunks each,
/// which bounds memory; encoding and writing overlap (no barrier between batches). Plain
/// threads rather than rayon tasks: the calling thread blocks on the workers, which must not
/// wait for a pool thread it may be occupying.
fn encode_chunks(
    plans: &[Plan],
    src: &[u8],
    mut sink: impl FnMut(usize, usize, &EncodedChunk) -> Result<()>,
) -> Result<()> {
    let mut order: Vec<usize> = (0..plans.len()).collect();
    order.sort_by_key(|&t| plans[t].start);
    let jobs: Vec<(usize, usize)> = order
        .iter()
        .flat_map(|&t| (0..plans[t].n_chunks).map(move |c| (t, c)))
        .collect();
    if jobs.is_empty() {
        return Ok(());
    }
    let workers = rayon::current_num_threads().clamp(1, jobs.len());
    // A few chunks per worker in flight keeps every core busy while bounding memory.
    let window = (workers * 4).max(8);
    let shared = Mutex::new(Window {
        next: 0,
        written: 0,
        stop: false,
        free: Vec::new(),
    });
    let wake = Condvar::new();
    let lock = || shared.lock().unwrap_or_else(|p| p.into_inner());
    let (tx, rx) = mpsc::channel::<(usize, EncodedChunk)>();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (shared, wake, jobs) = (&shared, &wake, &jobs);
            scope.spawn(move || {
                let _stop = StopOnPanic(shared, wake);
                loop {
                    let (i, mut e) = {
                        let mut w = shared.lock().unwrap_or_else(|p| p.into_inner());
                        while !w.stop && w.next < jobs.len() && w.next >= w.written + window {
                            w = wake.wait(w).unwrap_or_else(|p| p.into_inner());
                        }
                        if w.stop || w.next >= jobs.len() {
                            return;
                        }
                        w.next += 1;
                        (w.next - 1, w.free.pop().unwrap_or_else(EncodedChunk::empty))
                    };
                    let (t, c) = jobs[i];
                    let p = &plans[t];
                    let from = p.start + c * p.chunk_raw;
                    let raw = &src[from..from + p.chunk_raw.min(p.nbytes - c * p.chunk_raw)];
                    e.stats.reset(p.layout.plane_count());
                    e.mode = encode_chunk_into(
                        &p.layout,
                        raw,
                        p.encode,
                        Some(&mut e.stats),
                        &mut e.payload,
                    );
                    e.hash = xxh3_64(raw);
                    e.raw_len = raw.len();
                    if tx.send((i, e)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        // Chunks that arrived before their turn, at `index % window` (the jobs in flight are
        // `written..written + window`, so their slots differ).
        let mut pending: Vec<Option<EncodedChunk>> = (0..window).map(|_| None).collect();
        let mut written = 0;
        let result = (|| {
            while written < jobs.len() {
                // Every worker gone before the end: one panicked, which the scope re-raises.
                let Ok((i, e)) = rx.recv() else {
                    return Ok(());
                };
                pending[i % window] = Some(e);
                while let Some(e) = pending[written % window].take() {
                    let (t, c) = jobs[written];
                    sink(t, c, &e)?;
                    written += 1;
                    let mut w = lock();
                    w.written = written;
                    w.free.push(e);
                    drop(w);
                    wake.notify_all();
                    if written == jobs.len() {
                        break;
                    }
                }
            }
            Ok(())
        })();
        if result.is_err() {
            lock().stop = true;
            wake.notify_all();
        }
        result
    })
}

/// Chooses which tensors to store raw so that the file fits `target` bytes with the least
/// predicted load time: starts from the cost model's per-type choice, then compresses raw
/// tensors, the least extra load time per byte saved first. `fixed` is every byte that is not
/// tensor data. Compressed sizes come from a full encoding pass.
fn fit_target(
    plans: &mut [Plan],
    tys: &[GgmlType],
    map: &Mmap,
    model: &dyn LoadCost,
    target: u64,
    fixed: u64,
    job: &Job,
) -> Result<()> {
    let mut compressed = vec![0u64; plans.len()];
    let mut trial: Vec<Plan> = plans.to_vec();
    for p in &mut trial {
        p.encode.store_raw = false;
    }
    // A full encoding pass without progress calls: still stoppable.
    let mut stream = InputStream::new(map, false);
    encode_chunks(&trial, map, |t, c, e| {
        compressed[t] += e.payload.len() as u64;
        stream.advance(trial[t].start + c * trial[t].chunk_raw + e.raw_len);
        job.check()
    })?;
    stream.finish();
    let size_of = |p: &Plan, t: usize| {
        if p.encode.store_raw {
            p.nbytes as u64
        } else {
            compressed[t]
        }
    };
    let mut total = fixed
        + plans
            .iter()
            .enumerate()
            .map(|(t, p)| size_of(p, t))
            .sum::<u64>();
    while total > target {
        let cost_per_byte = |t: usize| {
            let raw = plans[t].nbytes as u64;
            let extra = model.extra_load_seconds(tys[t], raw, compressed[t]);
            extra / (raw - compressed[t]) as f64
        };
        let next = (0..plans.len())
            .filter(|&t| plans[t].encode.store_raw && compressed[t] < plans[t].nbytes as u64)
            .min_by(|&a, &b| cost_per_byte(a).total_cmp(&cost_per_byte(b)));
        let Some(t) = next else {
            return Err(DcError::TargetTooSmall {
                target,
                smallest: total,
            });
        };
        total -= plans[t].nbytes as u64 - compressed[t];
        plans[t].encode.store_raw = false;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::dc::test_files::small_dc;
    use crate::gguf::GgmlType;

    /// The chunk sizes the writer chose for `names`' tensors.
    fn chunk_sizes(tag: &str, names: &[&str], rows: u64) -> Vec<u32> {
        chunk_sizes_of(tag, names, 4, rows, false)
    }

    /// The same for tensors of `cols` F32 columns, of bytes that do not compress if `noise`.
    fn chunk_sizes_of(tag: &str, names: &[&str], cols: u64, rows: u64, noise: bool) -> Vec<u32> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut byte = move || {
            if !noise {
                return 7u8;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        };
        let tensors: Vec<_> = names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    vec![cols, rows],
                    GgmlType::F32,
                    (0..4 * cols * rows).map(|_| byte()).collect(),
                )
            })
            .collect();
        let (_, dir, _, dc) = small_dc(tag, &tensors, 1 << 20);
        std::fs::remove_dir_all(dir).unwrap();
        names
            .iter()
            .map(|n| dc.index.tensors[dc.find_tensor(n).unwrap()].chunk_raw)
            .collect()
    }

    /// A token embedding of a large vocabulary that only row lookups read (the model has
    /// its own output head) is cut into small chunks; one that doubles as the output head,
    /// one of a small vocabulary, and every other tensor, into the chunks asked for.
    #[test]
    fn a_lookup_only_token_embedding_gets_small_chunks() {
        let rows = super::LOOKUP_CHUNK_MIN_ROWS;
        let untied = ["token_embd.weight", "output.weight"];
        assert_eq!(
            chunk_sizes("lookup-chunks", &untied, rows),
            [super::LOOKUP_CHUNK as u32, 1 << 20]
        );
        let tied = ["token_embd.weight", "blk.0.ffn_up.weight"];
        assert_eq!(chunk_sizes("tied-chunks", &tied, rows), [1 << 20, 1 << 20]);
        assert_eq!(
            chunk_sizes("small-vocab-chunks", &untied, rows / 2),
            [1 << 20, 1 << 20]
        );
        // A small vocabulary of wide rows: small chunks from LOOKUP_CHUNK_MIN_BYTES on, if it
        // compresses enough to stay compressed.
        let cols = super::LOOKUP_CHUNK_MIN_BYTES / 4 / (rows / 2);
        assert_eq!(
            chunk_sizes_of("wide-rows-chunks", &untied, cols, rows / 2, false),
            [super::LOOKUP_CHUNK as u32, 1 << 20]
        );
        assert_eq!(
            chunk_sizes_of("narrower-rows-chunks", &untied, cols / 2, rows / 2, false),
            [1 << 20, 1 << 20]
        );
        assert_eq!(
            chunk_sizes_of("wide-noise-chunks", &untied, cols, rows / 2, true),
            [1 << 20, 1 << 20]
        );
    }
}
