//! Encodes one chunk to its stored payload and decodes it back into a caller's buffer.
//!
//! Payload of a `Planes` chunk (little-endian): for each plane of the layout, a 5-byte entry
//! `codec: u8` (0 raw, 1 zstd, 2 rANS) and `stored_len: u32`; then the plane bodies back to back.

use std::cell::RefCell;

use super::entropy::{PlaneStats, histogram, order0_bytes};
use super::rans;
use super::transform::Layout;
use super::{CodecError, Result};

/// How a chunk is stored. Numbers are on-disk ids (docs/FORMAT.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkMode {
    /// The chunk's bytes as they are: decoding is a copy.
    Raw = 0,
    /// The chunk's planes, each raw or Zstd-compressed.
    Planes = 1,
}

impl ChunkMode {
    pub fn from_id(id: u8) -> Option<ChunkMode> {
        match id {
            0 => Some(ChunkMode::Raw),
            1 => Some(ChunkMode::Planes),
            _ => None,
        }
    }
}

const PLANE_RAW: u8 = 0;
const PLANE_ZSTD: u8 = 1;
/// Order-0 rANS ([`super::rans`]): taken where it is smaller than zstd's frame, which is
/// where zstd found no matches worth having; it decodes faster than zstd's Huffman stage.
const PLANE_RANS: u8 = 2;
const PLANE_ENTRY: usize = 5;

/// The Zstd levels callers may ask for by number (`--level`, the C API): 1..=22 and Zstd's
/// fast levels -7..=-1 (Zstd clamps others silently; callers are told instead). 0, Zstd's
/// "default level", is dcgguf's default setting, [`LEVEL_DEFAULT`].
pub const LEVELS: std::ops::RangeInclusive<i32> = -7..=22;

/// `level` of dcgguf's default setting (`--level default`, `DCGGUF_LEVEL_DEFAULT`): Zstd's
/// fastest full-entropy strategy, with a retry per plane when it lands well above the
/// plane's order-0 bound (see [`new_compressor`]). Weight planes have almost no long matches,
/// so the Huffman stage decides the ratio: measured within 0.1% of level 19 on Q4_K_M,
/// Q4_1, Q8_0, F16, BF16 and F32 models, compressing 9-30x faster end to end (README,
/// "Compression speed"; `examples/levels.rs` measures settings).
pub const LEVEL_DEFAULT: i32 = 0;

/// `level` of the best-ratio setting (`--level max`, `DCGGUF_LEVEL_MAX`): a deeper
/// btultra2 search than level 19's, and each plane also tried with the default's fallback,
/// the smaller kept. About level 19's speed; 0.04-0.11% smaller than it on the same models.
pub const LEVEL_MAX: i32 = 100;

/// Whether `level` is one callers may ask for: a Zstd level of [`LEVELS`] or [`LEVEL_MAX`].
pub fn level_is_valid(level: i32) -> bool {
    LEVELS.contains(&level) || level == LEVEL_MAX
}

/// Parses `default`, `max` or a number of [`LEVELS`] (the CLI's `--level`).
pub fn parse_level(s: &str) -> Option<i32> {
    match s {
        "default" => Some(LEVEL_DEFAULT),
        "max" => Some(LEVEL_MAX),
        _ => s.parse().ok().filter(|l| LEVELS.contains(l)),
    }
}

/// Encoder settings.
#[derive(Clone, Copy, Debug)]
pub struct EncodeOptions {
    /// [`LEVEL_DEFAULT`], [`LEVEL_MAX`], or a Zstd level (1..=22; negative levels are Zstd's
    /// fast modes) used with Zstd's own parameters.
    pub level: i32,
    /// At Zstd levels >= 19, use a shallow match search (btultra2 parsing, 128 KiB window,
    /// one search attempt). Weight planes have almost no long matches, so this keeps level
    /// 19's ratio to four digits while encoding about 7x faster (measured on MiniLM and
    /// SmolLM2).
    pub shallow_search: bool,
    /// A plane or chunk is stored compressed only if that saves at least this fraction of
    /// its bytes; smaller savings are not worth the decode time.
    pub min_saving: f64,
    /// Store chunks raw without trying to compress (the cost model found that decoding
    /// this type is slower than reading it raw from the target storage).
    pub store_raw: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            level: LEVEL_DEFAULT,
            shallow_search: true,
            min_saving: 0.005,
            store_raw: false,
        }
    }
}

thread_local! {
    static ENCODER: RefCell<Option<(EncodeKey, Encoder)>> = const { RefCell::new(None) };
    static DECODER: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    static SCRATCH: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    static DECODE_PLANES: RefCell<PlaneRoom> = const { RefCell::new(PlaneRoom::Empty) };
}

/// Room for one chunk's decoded planes before they merge, kept by each decoding thread.
/// Mapped memory of its own rather than the C heap: the threads that decode a load are
/// mostly pool threads, each with a glibc arena of its own, and glibc leaves a freed buffer
/// at the top of such an arena resident until the top outgrows the trim threshold, which
/// earlier large frees have raised. SmolLM2 through the preload kept 400 KiB that way in
/// one idle thread for the model's life (its 324 KiB planes, zstd context and rANS table),
/// charged to the host's memory cgroup. Unmapping gives it back at once.
enum PlaneRoom {
    Empty,
    Mapped(memmap2::MmapMut),
    /// Where the system refused a mapping: the heap, as before.
    Heap(Vec<u8>),
}

impl PlaneRoom {
    /// At least `need` bytes (contents unspecified: every decoded plane overwrites its part).
    fn at_least(&mut self, need: usize) -> &mut [u8] {
        let room = match self {
            PlaneRoom::Empty => 0,
            PlaneRoom::Mapped(m) => m.len(),
            PlaneRoom::Heap(v) => v.len(),
        };
        if room < need {
            // The old room goes first, so that both are never held at once.
            *self = PlaneRoom::Empty;
            let size = need.next_multiple_of(64 << 10);
            *self = match memmap2::MmapMut::map_anon(size) {
                Ok(m) => PlaneRoom::Mapped(m),
                Err(_) => PlaneRoom::Heap(vec![0; size]),
            };
        }
        match self {
            PlaneRoom::Empty => &mut [],
            PlaneRoom::Mapped(m) => &mut m[..need],
            PlaneRoom::Heap(v) => &mut v[..need],
        }
    }
}

/// Frees this thread's decode and encode buffers (plane scratch, up to a chunk's planes,
/// and the zstd contexts); the next chunk allocates them again. For threads that decoded a
/// model load and then sit idle while it runs.
pub fn release_thread_buffers() {
    SCRATCH.with_borrow_mut(|(planes, spare)| {
        *planes = Vec::new();
        *spare = Vec::new();
    });
    DECODE_PLANES.with_borrow_mut(|room| *room = PlaneRoom::Empty);
    DECODER.with_borrow_mut(|d| *d = None);
    ENCODER.with_borrow_mut(|e| *e = None);
}

/// Outside `--level max`, a plane takes rANS when it is at most 1/RANS_OVER_ZSTD larger
/// than zstd's frame. zstd wins on size where it finds matches or its smaller table pays
/// (rANS's table and states cost ~400 bytes a plane), and those frames decode slowest:
/// MiniLM Q8_0's F32 position embedding decoded at 1.32 GB/s with 1/128 and 1.68 with 1/32
/// (one thread, 2026-11-29). 1/32 made the five test models' files 0.011-0.069% larger.
const RANS_OVER_ZSTD: usize = 32;

fn pays(stored: usize, raw: usize, min_saving: f64) -> bool {
    (stored as f64) < raw as f64 * (1.0 - min_saving)
}

/// Encodes `raw` (a whole number of layout units). When `stats` is given, the byte histogram
/// of each plane is added to it.
pub fn encode_chunk(
    layout: &Layout,
    raw: &[u8],
    opts: EncodeOptions,
    stats: Option<&mut PlaneStats>,
) -> (ChunkMode, Vec<u8>) {
    let mut payload = Vec::new();
    let mode = encode_chunk_into(layout, raw, opts, stats, &mut payload);
    (mode, payload)
}

/// [`encode_chunk`] into the caller's `payload` (cleared first), so that a stream of chunks
/// can reuse its buffers.
pub fn encode_chunk_into(
    layout: &Layout,
    raw: &[u8],
    opts: EncodeOptions,
    stats: Option<&mut PlaneStats>,
    payload: &mut Vec<u8>,
) -> ChunkMode {
    payload.clear();
    let mut stats = stats;
    if opts.store_raw {
        if let Some(s) = stats {
            SCRATCH.with_borrow_mut(|(planes, _)| {
                layout.split(raw, planes);
                let mut start = 0;
                for (p, len) in layout.plane_lens(raw.len()).enumerate() {
                    s.add(p, &planes[start..start + len]);
                    start += len;
                }
            });
        }
        payload.extend_from_slice(raw);
        return ChunkMode::Raw;
    }
    let mode = SCRATCH.with_borrow_mut(|(planes, spare)| {
        layout.split(raw, planes);
        let n_planes = layout.plane_count();
        payload.reserve(raw.len() / 2 + n_planes * PLANE_ENTRY);
        payload.resize(n_planes * PLANE_ENTRY, 0);
        let mut start = 0;
        for (p, len) in layout.plane_lens(raw.len()).enumerate() {
            let plane = &planes[start..start + len];
            start += len;
            let counts = histogram(plane);
            if let Some(s) = stats.as_deref_mut() {
                s.add_histogram(p, &counts);
            }
            let body_start = payload.len();
            let zstd_len = zstd_append(plane, &counts, opts, payload, spare);
            let mut codec = match zstd_len {
                Some(n) if pays(n, plane.len(), opts.min_saving) => PLANE_ZSTD,
                _ => PLANE_RAW,
            };
            let best = if codec == PLANE_ZSTD {
                zstd_len.unwrap_or(usize::MAX)
            } else {
                plane.len()
            };
            // rANS decodes faster than zstd's Huffman stage, so outside `--level max` it is
            // taken even when somewhat larger than zstd's frame (see RANS_OVER_ZSTD).
            // Encoded only when its estimate gets there: encoding costs time.
            let limit = match (codec, opts.level) {
                (PLANE_ZSTD, l) if l != LEVEL_MAX => best + best / RANS_OVER_ZSTD,
                _ => best.saturating_sub(1),
            };
            if rans::estimated_len(&counts).is_some_and(|e| e <= limit) {
                spare.clear();
                if let Some(n) = rans::encode(plane, &counts, spare)
                    && n <= limit
                    && pays(n, plane.len(), opts.min_saving)
                {
                    payload.truncate(body_start);
                    payload.extend_from_slice(spare);
                    codec = PLANE_RANS;
                }
            }
            if codec == PLANE_RAW {
                payload.truncate(body_start);
                payload.extend_from_slice(plane);
            }
            let stored = (payload.len() - body_start) as u32;
            let entry = &mut payload[p * PLANE_ENTRY..(p + 1) * PLANE_ENTRY];
            entry[0] = codec;
            entry[1..5].copy_from_slice(&stored.to_le_bytes());
        }
        if pays(payload.len(), raw.len(), opts.min_saving) {
            ChunkMode::Planes
        } else {
            ChunkMode::Raw
        }
    });
    if mode == ChunkMode::Raw {
        payload.clear();
        payload.extend_from_slice(raw);
    }
    mode
}

type EncodeKey = (i32, bool);

/// A thread's compressors for one [`EncodeKey`]: the main one and, for the named levels,
/// the fallback (see [`new_compressor`]).
struct Encoder {
    main: zstd::bulk::Compressor<'static>,
    fallback: Option<zstd::bulk::Compressor<'static>>,
}

/// When the default setting's output for a plane exceeds the plane's order-0 bound by more
/// than this fraction (plus [`RETRY_SLACK`] bytes of frame and table overhead), the plane is
/// compressed again with the fallback. Below it, the Huffman stage is already near the bound
/// and a retry cannot win much; above it, the fast match finder took matches that cost more
/// than the literals they replace.
const RETRY_EXCESS: f64 = 0.01;
const RETRY_SLACK: f64 = 64.0;

/// Zstd parameters for `(level, shallow_search)`.
///
/// - [`LEVEL_DEFAULT`]: `ZSTD_fast` (level 1) with 7-byte minimum matches: fewer short
///   matches that cost more than the literals they replace (measured smaller than level 1's 6
///   on Q4_K_M, Q4_1, Q8_0, BF16 and F32 models, and faster). Fallback: the same with a
///   64-entry hash table (`hashLog` 6), which finds almost no matches, so a plane is coded
///   as Huffman literals: for skewed planes (float exponents) that is 1-10% smaller than
///   what the fast match finder does, and near level 19's result.
/// - [`LEVEL_MAX`]: btultra2 with a 128 KiB window, 4-byte minimum matches, two search
///   attempts and 64-byte target length (measured smaller than level 19 on every model
///   above); fallback always tried, the smaller kept.
/// - Zstd levels: Zstd's parameters, except the shallow search at >= 19.
fn new_compressor(level: i32, shallow_search: bool) -> std::io::Result<Encoder> {
    use zstd::zstd_safe::{CParameter as P, Strategy};
    let fresh = |level: i32| -> std::io::Result<zstd::bulk::Compressor<'static>> {
        let mut c = zstd::bulk::Compressor::new(level)?;
        // Our own checksums cover the decoded bytes; the frame checksum would be redundant.
        c.include_checksum(false)?;
        c.include_contentsize(true)?;
        Ok(c)
    };
    let tuned = |level: i32, params: &[P]| -> std::io::Result<zstd::bulk::Compressor<'static>> {
        let mut c = fresh(level)?;
        for &p in params {
            c.set_parameter(p)?;
        }
        Ok(c)
    };
    let literals = || tuned(1, &[P::MinMatch(7), P::HashLog(6)]);
    let deep = |search_log: u32, min_match: u32, target_length: u32| {
        [
            P::Strategy(Strategy::ZSTD_btultra2),
            P::WindowLog(17),
            P::ChainLog(16),
            P::HashLog(16),
            P::SearchLog(search_log),
            P::MinMatch(min_match),
            P::TargetLength(target_length),
        ]
    };
    Ok(match level {
        LEVEL_DEFAULT => Encoder {
            main: tuned(1, &[P::MinMatch(7)])?,
            fallback: Some(literals()?),
        },
        LEVEL_MAX => Encoder {
            main: tuned(19, &deep(2, 4, 64))?,
            fallback: Some(literals()?),
        },
        l if shallow_search && l >= 19 => Encoder {
            main: tuned(l, &deep(1, 3, 8))?,
            fallback: None,
        },
        l => Encoder {
            main: fresh(l)?,
            fallback: None,
        },
    })
}

/// Compresses `src` (one plane, whose byte counts are `counts`) onto the end of `out` (no
/// copy) and returns the compressed length, trying the fallback (into `spare`) when
/// `opts.level` calls for it. `None`: Zstd failed; `out` may then hold a partial frame past
/// its old length.
fn zstd_append(
    src: &[u8],
    counts: &[u64; 256],
    opts: EncodeOptions,
    out: &mut Vec<u8>,
    spare: &mut Vec<u8>,
) -> Option<usize> {
    let key = (opts.level, opts.shallow_search);
    ENCODER.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(k, _)| *k != key) {
            *slot = Some((key, new_compressor(opts.level, opts.shallow_search).ok()?));
        }
        let (_, e) = slot.as_mut()?;
        let start = out.len();
        out.reserve(zstd::zstd_safe::compress_bound(src.len()));
        let mut tail = std::io::Cursor::new(&mut *out);
        tail.set_position(start as u64);
        let mut n = e.main.compress_to_buffer(src, &mut tail).ok()?;
        if let Some(fallback) = &mut e.fallback {
            let retry = opts.level == LEVEL_MAX
                || n as f64 > order0_bytes(counts) * (1.0 + RETRY_EXCESS) + RETRY_SLACK;
            if retry {
                spare.clear();
                spare.reserve(zstd::zstd_safe::compress_bound(src.len()));
                if fallback.compress_to_buffer(src, spare).is_ok() && spare.len() < n {
                    out.truncate(start);
                    out.extend_from_slice(spare);
                    n = spare.len();
                }
            }
        }
        Some(n)
    })
}

/// Decodes a chunk stored as `mode`/`payload` into `dst`, whose length is the chunk's raw
/// length. Never panics on hostile payloads: every length is checked first.
pub fn decode_chunk(
    layout: &Layout,
    mode: ChunkMode,
    payload: &[u8],
    dst: &mut [u8],
) -> Result<()> {
    if mode == ChunkMode::Raw {
        if payload.len() != dst.len() {
            return Err(CodecError::RawChunkLength {
                got: payload.len(),
                want: dst.len(),
            });
        }
        dst.copy_from_slice(payload);
        return Ok(());
    }
    if !dst.len().is_multiple_of(layout.unit()) {
        return Err(CodecError::UnitMisaligned {
            len: dst.len(),
            unit: layout.unit(),
        });
    }
    let n_planes = layout.plane_count();
    let table_len = n_planes * PLANE_ENTRY;
    if payload.len() < table_len {
        return Err(CodecError::ShortPlaneTable {
            got: payload.len(),
            table: table_len,
        });
    }
    let (table, mut bodies) = payload.split_at(table_len);
    let mut entries = Vec::with_capacity(n_planes);
    for (p, (entry, want)) in table
        .chunks_exact(PLANE_ENTRY)
        .zip(layout.plane_lens(dst.len()))
        .enumerate()
    {
        let stored = u32::from_le_bytes(entry[1..5].try_into().unwrap()) as usize;
        if stored > bodies.len() {
            return Err(CodecError::PlaneOverrun {
                plane: p,
                stored,
                left: bodies.len(),
            });
        }
        let (body, rest) = bodies.split_at(stored);
        bodies = rest;
        match entry[0] {
            PLANE_RAW if stored == want => {}
            PLANE_ZSTD | PLANE_RANS => {}
            PLANE_RAW => {
                return Err(CodecError::RawPlaneLength {
                    plane: p,
                    stored,
                    want,
                });
            }
            c => return Err(CodecError::UnknownPlaneCodec { plane: p, codec: c }),
        }
        entries.push((entry[0], body, want));
    }
    if !bodies.is_empty() {
        return Err(CodecError::TrailingBytes(bodies.len()));
    }
    if n_planes == 1 && entries[0].0 != PLANE_RAW {
        // One plane is the chunk itself: decode straight into the caller's buffer.
        return decode_plane(entries[0].0, entries[0].1, dst, &mut rans::Prefetch::none());
    }
    DECODE_PLANES.with_borrow_mut(|room| {
        let need: usize = entries
            .iter()
            .filter(|e| e.0 != PLANE_RAW)
            .map(|e| e.2)
            .sum();
        let mut free = room.at_least(need);
        // The merge is bound by memory (its stores read their lines first, its raw planes
        // come from the page cache): the rANS decoder brings both in while it computes
        // (rans::Prefetch).
        let rans_symbols = entries
            .iter()
            .filter(|e| e.0 == PLANE_RANS)
            .map(|e| e.2)
            .sum();
        let mut prefetch = rans::Prefetch::spread(dst, payload, rans_symbols);
        let mut decoded = Vec::with_capacity(n_planes);
        for &(codec, body, want) in &entries {
            if codec == PLANE_RAW {
                decoded.push(body);
            } else {
                let (d, rest) = std::mem::take(&mut free).split_at_mut(want);
                free = rest;
                decode_plane(codec, body, d, &mut prefetch)?;
                decoded.push(&*d);
            }
        }
        layout.merge(&decoded, dst);
        Ok(())
    })
}

/// Decodes one entropy-coded plane body (`codec` is zstd or rANS) into `dst`; a rANS
/// decode brings `prefetch`'s lines in as it goes.
fn decode_plane(
    codec: u8,
    body: &[u8],
    dst: &mut [u8],
    prefetch: &mut rans::Prefetch,
) -> Result<()> {
    if codec == PLANE_RANS {
        rans::decode_prefetching(body, dst, prefetch)
    } else {
        zstd_decompress(body, dst)
    }
}

fn zstd_decompress(src: &[u8], dst: &mut [u8]) -> Result<()> {
    DECODER.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| CodecError::Zstd(e.into()))?);
        }
        let d = slot.as_mut().expect("decoder was just created");
        let n = d
            .decompress_to_buffer(src, dst)
            .map_err(|e| CodecError::Zstd(e.into()))?;
        if n != dst.len() {
            return Err(CodecError::FrameLength {
                got: n,
                want: dst.len(),
            });
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Transform;
    use crate::gguf::GgmlType;

    fn sample(n: usize) -> Vec<u8> {
        // bf16-like: a narrow exponent range and noisy mantissas.
        (0..n / 2)
            .flat_map(|i| {
                let x = ((i as u32).wrapping_mul(2654435761) >> 9) as u16;
                (0x3C00u16 | (x & 0x03FF)).to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn planes_round_trip_and_compress() {
        let raw = sample(1 << 16);
        let layout = Layout::new(Transform::FloatRotate { width: 2 }, GgmlType::BF16);
        let mut stats = PlaneStats::new(layout.plane_count());
        let (mode, payload) =
            encode_chunk(&layout, &raw, EncodeOptions::default(), Some(&mut stats));
        assert_eq!(mode, ChunkMode::Planes);
        assert!(payload.len() < raw.len() * 3 / 4, "{}", payload.len());
        let mut out = vec![0u8; raw.len()];
        decode_chunk(&layout, mode, &payload, &mut out).unwrap();
        assert_eq!(out, raw);
        assert!(stats.bound_bytes() > 0.0);
    }

    /// A thread's decoded planes live in a mapping of their own (not its malloc arena, see
    /// [`PlaneRoom`]), which releasing the thread's buffers unmaps.
    #[test]
    fn decoded_planes_live_in_a_mapping_the_release_unmaps() {
        std::thread::spawn(|| {
            let raw = sample(1 << 18);
            let layout = Layout::new(Transform::FloatRotate { width: 2 }, GgmlType::BF16);
            let (mode, payload) = encode_chunk(&layout, &raw, EncodeOptions::default(), None);
            assert_eq!(mode, ChunkMode::Planes);
            let mut out = vec![0u8; raw.len()];
            decode_chunk(&layout, mode, &payload, &mut out).unwrap();
            assert_eq!(out, raw);
            assert!(
                DECODE_PLANES
                    .with_borrow(|r| matches!(r, PlaneRoom::Mapped(m) if m.len() >= raw.len())),
                "the planes are not in a mapping of their own"
            );
            release_thread_buffers();
            assert!(DECODE_PLANES.with_borrow(|r| matches!(r, PlaneRoom::Empty)));
            // The next chunk maps room again.
            decode_chunk(&layout, mode, &payload, &mut out).unwrap();
            assert_eq!(out, raw);
        })
        .join()
        .unwrap();
    }

    /// Planes of a `Planes` payload: (codec, raw length) each.
    fn plane_codecs(layout: &Layout, payload: &[u8], raw_len: usize) -> Vec<(u8, usize)> {
        payload
            .chunks_exact(PLANE_ENTRY)
            .zip(layout.plane_lens(raw_len))
            .map(|(e, len)| (e[0], len))
            .collect()
    }

    /// Q4_K-like blocks whose nibbles are centred on 7.5 (as real quants are): the fold split
    /// entropy-codes half as many bytes as the quant split for at least the same saving.
    #[test]
    fn fold_split_codes_half_the_bytes_of_quant_split_for_the_same_saving() {
        let mut x = 0x2545F4914F6CDD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Sum of three uniform 0..=5 values: a bell over 0..=15.
        let mut nibble = || ((next() % 6) + (next() % 6) + (next() % 6)) as u8;
        let raw: Vec<u8> = (0..4096 * 144)
            .map(|i| match i % 144 {
                0..16 => 0x3C,
                _ => nibble() | nibble() << 4,
            })
            .collect();
        let coded = |t: Transform| {
            let layout = Layout::new(t, GgmlType::Q4_K);
            let (mode, payload) = encode_chunk(&layout, &raw, EncodeOptions::default(), None);
            assert_eq!(mode, ChunkMode::Planes);
            let mut out = vec![0u8; raw.len()];
            decode_chunk(&layout, mode, &payload, &mut out).unwrap();
            assert_eq!(out, raw, "{t:?}");
            let coded_bytes: usize = plane_codecs(&layout, &payload, raw.len())
                .iter()
                .filter(|(c, _)| *c != PLANE_RAW)
                .map(|(_, len)| len)
                .sum();
            (payload.len(), coded_bytes)
        };
        let (split_size, split_coded) = coded(Transform::QuantSplit);
        let (fold_size, fold_coded) = coded(Transform::FoldSplit);
        // The same saving (within 0.1%: rANS codes both at their bound; quant split's wider
        // symbols gained a little more over Huffman's whole-bit lengths).
        assert!(
            fold_size as f64 <= split_size as f64 * 1.001,
            "{fold_size} > {split_size}"
        );
        assert!(
            fold_coded * 2 <= split_coded + 4096 * 16,
            "fold codes {fold_coded} bytes, quant split {split_coded}"
        );
    }

    #[test]
    fn incompressible_chunk_is_stored_raw() {
        let mut x = 0x9E3779B97F4A7C15u64;
        let raw: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let layout = Layout::new(Transform::Identity, GgmlType::I8);
        let (mode, payload) = encode_chunk(&layout, &raw, EncodeOptions::default(), None);
        assert_eq!((mode, &payload), (ChunkMode::Raw, &raw));
    }

    #[test]
    fn hostile_payloads_are_errors_not_panics() {
        let raw = sample(4096);
        let layout = Layout::new(Transform::FloatRotate { width: 2 }, GgmlType::BF16);
        let (mode, payload) = encode_chunk(&layout, &raw, EncodeOptions::default(), None);
        let mut out = vec![0u8; raw.len()];
        for cut in [0, 3, 9, payload.len() - 1] {
            assert!(decode_chunk(&layout, mode, &payload[..cut], &mut out).is_err());
        }
        for i in 0..payload.len().min(64) {
            let mut bad = payload.clone();
            bad[i] ^= 0x5A;
            // Either an error or different bytes: never a panic.
            let _ = decode_chunk(&layout, mode, &bad, &mut out);
        }
        let mut short = vec![0u8; raw.len() - 2];
        assert!(decode_chunk(&layout, mode, &payload, &mut short).is_err());
    }
}
