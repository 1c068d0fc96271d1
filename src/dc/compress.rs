//! GGUF -> DC-GGUF. Streams chunks through a bounded window, so memory does not grow with
//! the model; the input is only ever mapped read-only.

use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use super::index::{BlobRef, ChunkEntry, INDEX_VERSION, Index, TensorEntry};
use super::job::Job;
use super::layout::{Piece, segments};
use super::{
    DATA_TENSOR, DC_ARCHITECTURE, DcError, FORMAT_VERSION, HEADER_RAW_SLACK, INDEX_TENSOR,
    KEY_FORMAT_VERSION, KEY_MOVED_KEYS, KEY_ORIGINAL_ARCH, KEY_ORIGINAL_SIZE, KEY_ORIGINAL_XXH3,
    KEY_WRITER, MAX_CHUNK_RAW, MAX_CLEAR_VALUE, MAX_DC_ALIGNMENT, MAX_GAP_RAW, MAX_HEADER_RATIO,
    MAX_HEADER_RAW, Result,
};
use crate::codec::{EncodeOptions, Layout, PlaneStats, Transform, encode_chunk};
use crate::gguf::{ArrayValue, GgmlType, GgufHeader, HeaderWriter, KeyValue, Value, align_up};
use crate::io::{AtomicOutput, map_readonly};

/// Level for the small side blobs (original header, gaps): they are small, so spend effort.
const BLOB_LEVEL: i32 = 19;

/// Compresses a side blob at [`BLOB_LEVEL`] with a 1 MiB window and 1 MiB match tables:
/// zstd's level-19 defaults size them by the input (a 7.7 MB header took ~90 MB of tables)
/// for a gain of well under 1% on a blob that is 1-2% of the file.
fn compress_blob(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::CParameter as P;
    let mut c = zstd::bulk::Compressor::new(BLOB_LEVEL)?;
    c.include_checksum(false)?;
    c.include_contentsize(true)?;
    for p in [P::WindowLog(20), P::ChainLog(20), P::HashLog(20)] {
        c.set_parameter(p)?;
    }
    c.compress(raw)
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
            let chunk_raw = (opts.chunk_size.min(cap) / unit).max(1) * unit;
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

    let original_xxh3 = {
        let mut h = Xxh3::new();
        h.update(src);
        h.digest()
    };
    let index_len = Index::encoded_len(plans.iter().map(|p| p.n_chunks)) as u64;
    let alignment = dc_alignment(&header);
    let dc_header = |data_len: u64| {
        dc_header(
            &header,
            src.len() as u64,
            original_xxh3,
            index_len,
            data_len,
        )
    };
    let header_len = dc_header(0).len() as u64;
    let data_start = header_len + align_up(index_len, alignment).expect("index fits");

    let path = out.path().to_path_buf();
    let file = out.file();
    file.seek(SeekFrom::Start(data_start))
        .map_err(DcError::io(&path))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut pos: u64 = 0;
    let mut put_blob = |w: &mut BufWriter<_>, raw: &[u8]| -> Result<BlobRef> {
        let stored = compress_blob(raw).map_err(DcError::io(&path))?;
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
            src,
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
        tensors[t].chunks.push(ChunkEntry {
            stored_len: e.payload.len() as u32,
            mode: e.mode as u8,
            hash: e.hash,
        });
        if let Some((_, s)) = &mut stats {
            s.merge(&e.stats);
        }
        progress(e.raw_len as u64);
        n_chunks += 1;
        opts.job.check()
    })?;
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
    let head = dc_header(pos);
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

/// One encoded chunk on its way to the file.
struct EncodedChunk {
    mode: crate::codec::ChunkMode,
    payload: Vec<u8>,
    hash: u64,
    stats: PlaneStats,
    raw_len: usize,
}

/// Encodes every chunk of every planned tensor, a bounded window at a time and in parallel
/// within the window, handing each to `sink` in file order (`sink(tensor, chunk, encoded)`).
fn encode_chunks(
    plans: &[Plan],
    src: &[u8],
    mut sink: impl FnMut(usize, usize, EncodedChunk) -> Result<()>,
) -> Result<()> {
    let jobs: Vec<(usize, usize)> = plans
        .iter()
        .enumerate()
        .flat_map(|(t, p)| (0..p.n_chunks).map(move |c| (t, c)))
        .collect();
    // A few chunks per thread in flight keeps every core busy while bounding memory.
    let window = (rayon::current_num_threads() * 4).max(8);
    for batch in jobs.chunks(window) {
        let encoded: Vec<EncodedChunk> = batch
            .par_iter()
            .map(|&(t, c)| {
                let p = &plans[t];
                let from = p.start + c * p.chunk_raw;
                let raw = &src[from..from + p.chunk_raw.min(p.nbytes - c * p.chunk_raw)];
                let mut stats = PlaneStats::new(p.layout.plane_count());
                let (mode, payload) = encode_chunk(&p.layout, raw, p.encode, Some(&mut stats));
                EncodedChunk {
                    mode,
                    payload,
                    hash: xxh3_64(raw),
                    stats,
                    raw_len: raw.len(),
                }
            })
            .collect();
        for (&(t, c), e) in batch.iter().zip(encoded) {
            sink(t, c, e)?;
        }
    }
    Ok(())
}

/// Chooses which tensors to store raw so that the file fits `target` bytes with the least
/// predicted load time: starts from the cost model's per-type choice, then compresses raw
/// tensors, the least extra load time per byte saved first. `fixed` is every byte that is not
/// tensor data. Compressed sizes come from a full encoding pass.
fn fit_target(
    plans: &mut [Plan],
    tys: &[GgmlType],
    src: &[u8],
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
    encode_chunks(&trial, src, |t, _, e| {
        compressed[t] += e.payload.len() as u64;
        job.check()
    })?;
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
