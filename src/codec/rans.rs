//! Order-0 rANS for byte planes: the entropy coder of plane codec 2 (docs/FORMAT.md §6).
//!
//! Why not zstd's Huffman stage for these planes: on K-quant models the entropy-coded planes
//! (one bit per value of the fold transform, packed eight to a byte, plus scales) are at
//! their order-0 bound, and zstd's Huffman decoder takes about half of the decode time at
//! ~1.4 GB/s. rANS with 64 interleaved states decodes sixteen states per AVX-512 instruction,
//! or eight per AVX2 one (chosen at run time; builds stay portable): 2.4 and 2.0 GB/s on a
//! fold-split M plane here. Its 12-bit probabilities code the planes closer to their
//! entropy than Huffman's whole-bit code lengths. (128 states were measured no faster: the
//! gathers bound it, not latency.)
//!
//! Body of a rANS plane (all integers little-endian):
//!
//! ```text
//! presence   [u8; 32]   bit s of byte s/8: symbol s occurs
//! freqs      per present symbol, ascending: 1 byte (f < 128) or 2 bytes (0x80 | f >> 8, f & 0xff)
//!            1 <= f <= 4095, summing to 4096
//! states     [u32; 64]  final encoder states = the decoder's initial states
//! words      u16 ...    renormalization words, in the order the decoder reads them
//! ```
//!
//! Symbol `i` belongs to state `i % 64`. Every state starts (encoder) and must end (decoder)
//! at 2^16, and every word must be consumed: a corrupt plane is an error, never a short or
//! padded output.

use std::cell::RefCell;

use super::{CodecError, Result};

/// Probabilities are multiples of 2^-12.
const SCALE_BITS: u32 = 12;
const TOTAL: u32 = 1 << SCALE_BITS;
const SLOT_MASK: u32 = TOTAL - 1;
/// Interleaved states: four AVX-512 registers of sixteen, eight AVX2 registers of eight.
pub const LANES: usize = 64;
/// AVX2 registers of eight states.
const REGS: usize = LANES / 8;
/// States live in `[LOWER, 2^32)`; the decoder reads a 16-bit word when one falls below.
const LOWER: u32 = 1 << 16;
const PRESENCE: usize = 32;
const STATES: usize = LANES * 4;

fn corrupt(what: &'static str) -> CodecError {
    CodecError::Rans(what)
}

/// Cache lines to bring in while symbols decode, a few per group of [`LANES`]: the chunk's
/// output, which the merge writes after the planes are decoded, and its raw planes, which
/// the merge reads.
///
/// Why: the decoder is bound by its table gathers and leaves the memory system idle, and the
/// merge after it is bound by memory: each store first reads its line, and the raw planes
/// come from the page cache. Prefetched during the decode, those reads overlap the gathers
/// (Qwen2.5-Coder-1.5B Q4_K_M, one thread: 3.6-3.9 -> 4.2-4.3 GB/s, the output alone,
/// measured here). A prefetch never faults and changes no memory, so the addresses are
/// plain numbers.
pub struct Prefetch {
    regions: [Lines; 2],
}

/// A range of cache lines and how many of them to prefetch per group.
#[derive(Clone, Copy)]
struct Lines {
    next: usize,
    end: usize,
    per_group: usize,
}

const LINE: usize = 64;

impl Prefetch {
    /// Nothing to prefetch.
    pub fn none() -> Prefetch {
        let nothing = Lines {
            next: 0,
            end: 0,
            per_group: 0,
        };
        Prefetch {
            regions: [nothing; 2],
        }
    }

    /// The lines of `output` and `input`, spread over the decode of `symbols` symbols.
    pub fn spread(output: &[u8], input: &[u8], symbols: usize) -> Prefetch {
        let groups = (symbols / LANES).max(1);
        let lines = |region: &[u8]| {
            let start = region.as_ptr() as usize & !(LINE - 1);
            let end = region.as_ptr() as usize + region.len();
            Lines {
                next: start,
                end,
                per_group: (end - start).div_ceil(LINE).div_ceil(groups),
            }
        };
        Prefetch {
            regions: [lines(output), lines(input)],
        }
    }

    /// Issues this group's prefetches.
    #[inline(always)]
    fn group(&mut self) {
        #[cfg(target_arch = "x86_64")]
        for r in &mut self.regions {
            for _ in 0..r.per_group {
                if r.next >= r.end {
                    break;
                }
                // SAFETY: a prefetch is a hint: it reads no memory the program sees and
                // cannot fault, whatever the address; SSE is part of x86-64.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        r.next as *const i8,
                    )
                };
                r.next += LINE;
            }
        }
    }
}

/// Scales `counts` (of `n` bytes) to frequencies summing to [`TOTAL`], every present symbol
/// at least 1. `None` if fewer than two symbols occur (a constant plane: zstd stores it in a
/// few bytes, and one symbol at 4096 does not fit the decode table's 12 bits).
fn normalize(counts: &[u64; 256], n: u64) -> Option<[u32; 256]> {
    if counts.iter().filter(|&&c| c > 0).count() < 2 {
        return None;
    }
    let mut f = [0u32; 256];
    let mut sum = 0i64;
    for (s, &c) in counts.iter().enumerate() {
        if c > 0 {
            // Round to nearest, at least 1: u128 keeps c * TOTAL exact for any plane size.
            let scaled = (u128::from(c) * u128::from(TOTAL) + u128::from(n / 2)) / u128::from(n);
            f[s] = (scaled as u32).clamp(1, TOTAL - 1);
            sum += i64::from(f[s]);
        }
    }
    // Move the rounding error onto the symbols where it costs least: the most frequent ones
    // (a change of one in a large frequency changes its code length least).
    while sum != i64::from(TOTAL) {
        let step: i64 = if sum > i64::from(TOTAL) { -1 } else { 1 };
        let best = (0..256)
            .filter(|&s| {
                let next = i64::from(f[s]) + step;
                counts[s] > 0 && next >= 1 && next < i64::from(TOTAL)
            })
            .max_by_key(|&s| counts[s])?;
        // Adjust the largest in one go, by as much as it can take.
        let room = if step < 0 {
            i64::from(f[best]) - 1
        } else {
            i64::from(TOTAL - 1) - i64::from(f[best])
        };
        let by = (i64::from(TOTAL) - sum).abs().min(room).max(1);
        f[best] = (i64::from(f[best]) + step * by) as u32;
        sum += step * by;
    }
    Some(f)
}

/// Bytes an encode of a plane with these `counts` would take: the order-0 cost under the
/// normalized frequencies plus the table, states and rounding. Lets the encoder skip
/// encoding when zstd already did better.
pub fn estimated_len(counts: &[u64; 256]) -> Option<usize> {
    let n: u64 = counts.iter().sum();
    let f = normalize(counts, n)?;
    let bits: f64 = counts
        .iter()
        .zip(&f)
        .filter(|(c, _)| **c > 0)
        .map(|(&c, &f)| c as f64 * (f64::from(SCALE_BITS) - f64::from(f).log2()))
        .sum();
    let table: usize = f
        .iter()
        .filter(|&&f| f > 0)
        .map(|&f| 1 + (f >= 128) as usize)
        .sum();
    // The final states carry the last ~16 bits of information of each lane; the other half
    // of their bytes is what the flush costs.
    Some(PRESENCE + table + STATES / 2 + (bits / 8.0) as usize)
}

/// Appends the rANS body of `src` (whose byte counts are `counts`) to `out`; returns its
/// length. `None` (nothing appended) when fewer than two symbols occur.
pub fn encode(src: &[u8], counts: &[u64; 256], out: &mut Vec<u8>) -> Option<usize> {
    let f = normalize(counts, src.len() as u64)?;
    let start = out.len();
    let mut presence = [0u8; PRESENCE];
    let mut cum = [0u32; 256];
    let mut acc = 0;
    for s in 0..256 {
        cum[s] = acc;
        acc += f[s];
        if f[s] > 0 {
            presence[s / 8] |= 1 << (s % 8);
        }
    }
    out.extend_from_slice(&presence);
    for &f in f.iter().filter(|&&f| f > 0) {
        if f < 128 {
            out.push(f as u8);
        } else {
            out.extend_from_slice(&[0x80 | (f >> 8) as u8, f as u8]);
        }
    }
    // x / f by multiplication: with r = ceil(2^44 / f), (x * r) >> 44 is exact for x < 2^32
    // and f <= 4096 (the error is below x / 2^44 < 2^-12 <= 1/f, less than the distance of
    // x / f to the next integer). Divisions made encoding 3x slower.
    let mut rcp = [0u64; 256];
    for (r, &f) in rcp.iter_mut().zip(&f) {
        if f > 0 {
            *r = (1u64 << 44).div_ceil(u64::from(f));
        }
    }
    let mut states = [LOWER; LANES];
    // At most one word per symbol, plus the slot the last store may write without keeping.
    let mut words = vec![0u16; src.len() + 1];
    let mut n_words = 0;
    for (i, &s) in src.iter().enumerate().rev() {
        let (fs, cs, r) = (f[s as usize], cum[s as usize], rcp[s as usize]);
        let x = &mut states[i % LANES];
        // Largest state that stays below 2^32 after coding s (fs <= 4095, so no overflow).
        let x_max = ((LOWER >> SCALE_BITS) << 16) * fs;
        // Branch-free: whether a word goes out is a coin flip per symbol, and mispredicted
        // branches made encoding 3x slower.
        let emit = *x >= x_max;
        words[n_words] = *x as u16;
        n_words += usize::from(emit);
        *x >>= u32::from(emit) << 4;
        let q = ((u128::from(*x) * u128::from(r)) >> 44) as u32;
        *x = (q << SCALE_BITS) + (*x - q * fs) + cs;
    }
    words.truncate(n_words);
    for x in states {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.reserve(words.len() * 2);
    for w in words.iter().rev() {
        out.extend_from_slice(&w.to_le_bytes());
    }
    Some(out.len() - start)
}

/// Decode table: for each of the 4096 slots, `sym | freq << 8 | (slot - cum) << 20`, and
/// [`FILL_SPILL`] entries past the last slot that the vector fill may write over (decoders
/// mask their indices to 12 bits and never read them).
type Table = [u32; TOTAL as usize + FILL_SPILL];

/// How far past a symbol's run the vector fill may write: one 16-entry store.
const FILL_SPILL: usize = 16;

/// A symbol's run of slots: `first..first + freq`, each `entry | (slot - first) << 20`.
#[derive(Clone, Copy, Default)]
struct Run {
    first: u32,
    freq: u32,
    entry: u32,
}

/// Parses the presence map and frequencies; returns the decode table and the rest of `src`.
fn read_table<'a>(simd: Simd, src: &'a [u8], table: &mut Table) -> Result<&'a [u8]> {
    let (presence, mut rest) = src
        .split_at_checked(PRESENCE)
        .ok_or(corrupt("shorter than its symbol map"))?;
    let mut slot = 0u32;
    // The present symbols, in ascending order, from the set bits of the map's four words:
    // testing each of the 256 bits mispredicted a branch per bit of a half-full map.
    let present = presence.chunks_exact(8).enumerate().flat_map(|(w, bytes)| {
        let mut bits = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        std::iter::from_fn(move || {
            (bits != 0).then(|| {
                let s = 64 * w as u32 + bits.trailing_zeros();
                bits &= bits - 1;
                s
            })
        })
    });
    let mut runs = [Run::default(); 256];
    let mut n = 0;
    for s in present {
        let (&b0, tail) = rest
            .split_first()
            .ok_or(corrupt("frequency table cut short"))?;
        let f = if b0 < 0x80 {
            rest = tail;
            u32::from(b0)
        } else {
            let (&b1, tail) = tail
                .split_first()
                .ok_or(corrupt("frequency table cut short"))?;
            rest = tail;
            u32::from(b0 & 0x7f) << 8 | u32::from(b1)
        };
        if f == 0 || f >= TOTAL || slot + f > TOTAL {
            return Err(corrupt("frequencies are not a partition of 4096"));
        }
        runs[n] = Run {
            first: slot,
            freq: f,
            entry: s | f << 8,
        };
        n += 1;
        slot += f;
    }
    if slot != TOTAL {
        return Err(corrupt("frequencies are not a partition of 4096"));
    }
    fill(simd, &runs[..n], table);
    Ok(rest)
}

/// Writes the runs, which partition the 4096 slots in ascending order, into `table`.
fn fill(simd: Simd, runs: &[Run], table: &mut Table) {
    match simd {
        // SAFETY: `simd` is what Simd::detect found on this CPU, or narrower: AVX-512 F is
        // there.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { fill_avx512(runs, table) },
        _ => {
            for r in runs {
                // A slice, not an index per slot: this loop vectorizes.
                let slots = &mut table[r.first as usize..(r.first + r.freq) as usize];
                for (j, t) in slots.iter_mut().enumerate() {
                    *t = r.entry | (j as u32) << 20;
                }
            }
        }
    }
}

/// [`fill`] sixteen slots a store, the last store of each run spilling into the next run's
/// slots (written after it, as runs ascend) or, after the last run, into the table's
/// [`FILL_SPILL`] tail. On MiniLM Q8_0 the compiler's loop, whose runs are mostly shorter
/// than its vector, took 3% of the decode.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fill_avx512(runs: &[Run], table: &mut Table) {
    use std::arch::x86_64::*;
    let offsets = _mm512_setr_epi32(
        0,
        1 << 20,
        2 << 20,
        3 << 20,
        4 << 20,
        5 << 20,
        6 << 20,
        7 << 20,
        8 << 20,
        9 << 20,
        10 << 20,
        11 << 20,
        12 << 20,
        13 << 20,
        14 << 20,
        15 << 20,
    );
    let step = _mm512_set1_epi32(16 << 20);
    for r in runs {
        assert!(r.first + r.freq <= TOTAL);
        let mut v = _mm512_add_epi32(_mm512_set1_epi32(r.entry as i32), offsets);
        let mut j = 0;
        while j < r.freq {
            // SAFETY: first + j < first + freq <= TOTAL (asserted), so the 16 entries end
            // within TOTAL + FILL_SPILL, the table's length.
            unsafe {
                _mm512_storeu_si512(table.as_mut_ptr().add((r.first + j) as usize).cast(), v);
            }
            v = _mm512_add_epi32(v, step);
            j += 16;
        }
    }
}

/// Decodes a rANS body into `dst` (whose length the plane table gives), with the widest
/// vectors this CPU has.
pub fn decode(src: &[u8], dst: &mut [u8]) -> Result<()> {
    decode_prefetching(src, dst, &mut Prefetch::none())
}

/// [`decode`], bringing in `prefetch`'s lines as it goes.
pub fn decode_prefetching(src: &[u8], dst: &mut [u8], prefetch: &mut Prefetch) -> Result<()> {
    decode_using(Simd::detect(), src, dst, prefetch)
}

/// Which group decoder runs before the portable one finishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Simd {
    None,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Simd {
    fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("popcnt") {
                if std::is_x86_feature_detected!("avx512f") {
                    return Simd::Avx512;
                }
                if std::is_x86_feature_detected!("avx2") {
                    return Simd::Avx2;
                }
            }
        }
        Simd::None
    }

    /// Every decoder this CPU can run (for tests: they must agree).
    #[cfg(test)]
    fn available() -> Vec<Simd> {
        let mut all = vec![Simd::None];
        #[cfg(target_arch = "x86_64")]
        {
            let best = Simd::detect();
            if best != Simd::None {
                all.push(Simd::Avx2);
            }
            if best == Simd::Avx512 {
                all.push(Simd::Avx512);
            }
        }
        all
    }
}

/// [`decode`] with a given group decoder, which must be one [`Simd::detect`] allows or a
/// narrower one.
fn decode_using(simd: Simd, src: &[u8], dst: &mut [u8], prefetch: &mut Prefetch) -> Result<()> {
    thread_local! {
        // 16 KiB, refilled for every plane (read_table writes every slot or fails): a fresh
        // zeroed allocation per plane cost ~3% of decode time on Qwen.
        static TABLE: RefCell<Box<Table>> = RefCell::new(
            vec![0u32; TOTAL as usize + FILL_SPILL].into_boxed_slice().try_into().expect("table entries"),
        );
    }
    TABLE.with_borrow_mut(|table| decode_with_table(simd, table, src, dst, prefetch))
}

fn decode_with_table(
    simd: Simd,
    table: &mut Table,
    src: &[u8],
    dst: &mut [u8],
    prefetch: &mut Prefetch,
) -> Result<()> {
    let rest = read_table(simd, src, table)?;
    let (state_bytes, words) = rest
        .split_at_checked(STATES)
        .ok_or(corrupt("shorter than its states"))?;
    if words.len() % 2 != 0 {
        return Err(corrupt("odd number of word bytes"));
    }
    let mut x = [0u32; LANES];
    for (x, b) in x.iter_mut().zip(state_bytes.chunks_exact(4)) {
        *x = u32::from_le_bytes(b.try_into().expect("4 bytes"));
        if *x < LOWER {
            return Err(corrupt("initial state out of range"));
        }
    }
    let (done, mut read) = match simd {
        Simd::None => (0, 0),
        // SAFETY: `simd` is what Simd::detect found on this CPU, or narrower: AVX2 and
        // POPCNT are there.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { decode_groups_avx2(table, &mut x, words, dst, prefetch) },
        // SAFETY: as above, with AVX-512 F.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { decode_groups_avx512(table, &mut x, words, dst, prefetch) },
    };
    decode_scalar(
        table,
        &mut x,
        &words[read..],
        &mut dst[done..],
        done,
        &mut read,
    )?;
    if read != words.len() {
        return Err(corrupt("words left over after the last symbol"));
    }
    if x.iter().any(|&x| x != LOWER) {
        return Err(corrupt(
            "final states differ from the encoder's initial ones",
        ));
    }
    Ok(())
}

/// The portable decoder, from symbol `first` (a multiple of [`LANES`]) on; `read` counts the
/// word bytes consumed in total.
fn decode_scalar(
    table: &Table,
    x: &mut [u32; LANES],
    mut words: &[u8],
    dst: &mut [u8],
    first: usize,
    read: &mut usize,
) -> Result<()> {
    debug_assert_eq!(first % LANES, 0);
    for group in dst.chunks_mut(LANES) {
        for (out, x) in group.iter_mut().zip(x.iter_mut()) {
            let e = table[(*x & SLOT_MASK) as usize];
            *out = e as u8;
            *x = ((e >> 8) & SLOT_MASK) * (*x >> SCALE_BITS) + (e >> 20);
            if *x < LOWER {
                let (w, tail) = words
                    .split_first_chunk::<2>()
                    .ok_or(corrupt("ran out of words"))?;
                *x = *x << 16 | u32::from(u16::from_le_bytes(*w));
                words = tail;
                *read += 2;
            }
        }
    }
    Ok(())
}

/// [`decode_groups_avx2`] with AVX-512: sixteen lanes per register, the unsigned compare and
/// the expand of the refill words are single instructions.
///
/// # Safety
/// The CPU must support AVX-512 F and POPCNT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,popcnt")]
unsafe fn decode_groups_avx512(
    table: &Table,
    x: &mut [u32; LANES],
    words: &[u8],
    dst: &mut [u8],
    prefetch: &mut Prefetch,
) -> (usize, usize) {
    use std::arch::x86_64::*;
    let groups = dst.len() / LANES;
    let mut pos = 0usize;
    let mut g = 0usize;
    // SAFETY: as in decode_groups_avx2: `x` has 64 u32 (four registers of 16); `dst` is
    // written 16 bytes at g * 64 + 16 r with g < dst.len() / 64; each 32-byte word load
    // starts at `pos` with pos + 128 <= words.len() at the start of a group and a group
    // advancing pos by at most 4 * 32, so every load ends within `words`; gather indices
    // are masked to 12 bits, inside the 4096-entry table.
    unsafe {
        let mut s = [_mm512_setzero_si512(); 4];
        for (r, s) in s.iter_mut().enumerate() {
            *s = _mm512_loadu_si512(x.as_ptr().add(16 * r).cast());
        }
        let slot_mask = _mm512_set1_epi32(SLOT_MASK as i32);
        let lower = _mm512_set1_epi32(LOWER as i32);
        macro_rules! step {
            ($r:expr) => {{
                let e = _mm512_i32gather_epi32::<4>(
                    _mm512_and_si512(s[$r], slot_mask),
                    table.as_ptr().cast(),
                );
                let freq = _mm512_and_si512(_mm512_srli_epi32::<8>(e), slot_mask);
                let v = _mm512_add_epi32(
                    _mm512_mullo_epi32(freq, _mm512_srli_epi32::<12>(s[$r])),
                    _mm512_srli_epi32::<20>(e),
                );
                let low = _mm512_cmplt_epu32_mask(v, lower);
                let w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(words.as_ptr().add(pos).cast()));
                let w = _mm512_maskz_expand_epi32(low, w);
                s[$r] = _mm512_mask_or_epi32(v, low, _mm512_slli_epi32::<16>(v), w);
                pos += 2 * _popcnt32(i32::from(low)) as usize;
                _mm_storeu_si128(
                    dst.as_mut_ptr().add(g * LANES + 16 * $r).cast(),
                    _mm512_cvtepi32_epi8(e),
                );
            }};
        }
        while g < groups && pos + 2 * LANES <= words.len() {
            step!(0);
            step!(1);
            step!(2);
            step!(3);
            prefetch.group();
            g += 1;
        }
        for (r, v) in s.iter().enumerate() {
            _mm512_storeu_si512(x.as_mut_ptr().add(16 * r).cast(), *v);
        }
    }
    (g * LANES, pos)
}

/// For each 8-bit mask of lanes that read a word: the index, among the words read, of each
/// lane's word (lanes outside the mask: don't care).
#[cfg(target_arch = "x86_64")]
static WORD_INDEX: [[u8; 8]; 256] = {
    let mut t = [[0u8; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let mut j = 0;
        let mut k = 0u8;
        while j < 8 {
            if m & (1 << j) != 0 {
                t[m][j] = k;
                k += 1;
            }
            j += 1;
        }
        m += 1;
    }
    t
};

/// Decodes whole groups of [`LANES`] symbols while at least `2 * LANES` word bytes are left
/// (the most one group can read), eight lanes per AVX2 register. Returns (symbols, word bytes) done;
/// the scalar decoder finishes from there with the same states.
///
/// # Safety
/// The CPU must support AVX2 and POPCNT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn decode_groups_avx2(
    table: &Table,
    x: &mut [u32; LANES],
    words: &[u8],
    dst: &mut [u8],
    prefetch: &mut Prefetch,
) -> (usize, usize) {
    use std::arch::x86_64::*;
    let groups = dst.len() / LANES;
    let mut pos = 0usize;
    let mut g = 0usize;
    // SAFETY: all loads and stores below stay inside their slices: `x` has 64 u32 (eight
    // registers); `dst` is written 32 bytes at g * 64 and g * 64 + 32 with g < groups =
    // dst.len() / 64; each register's 16-byte word load starts at `pos` and the loop requires
    // pos + 128 <= words.len() at the start of a group, while a group advances pos by at
    // most 8 * 16 bytes, so every load ends within `words`; the gather indices are masked to
    // 12 bits, inside the 4096-entry table; WORD_INDEX rows are 8 bytes.
    unsafe {
        let mut s = [_mm256_setzero_si256(); REGS];
        for (r, s) in s.iter_mut().enumerate() {
            *s = _mm256_loadu_si256(x.as_ptr().add(8 * r).cast());
        }
        let slot_mask = _mm256_set1_epi32(SLOT_MASK as i32);
        let byte_mask = _mm256_set1_epi32(0xff);
        let zero = _mm256_setzero_si256();
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        // One register's step: gather its slots' entries, update the eight states, refill
        // the ones that fell below 2^16 from the next words (in lane order); returns the
        // symbols. Written out for each register (not a loop) so the states stay in
        // registers instead of a stack array.
        macro_rules! step {
            ($r:expr) => {{
                let e = _mm256_i32gather_epi32::<4>(
                    table.as_ptr().cast(),
                    _mm256_and_si256(s[$r], slot_mask),
                );
                let freq = _mm256_and_si256(_mm256_srli_epi32::<8>(e), slot_mask);
                let v = _mm256_add_epi32(
                    _mm256_mullo_epi32(freq, _mm256_srli_epi32::<12>(s[$r])),
                    _mm256_srli_epi32::<20>(e),
                );
                // v < 2^16 exactly when its top 16 bits are zero (AVX2 has no unsigned compare).
                let low = _mm256_cmpeq_epi32(_mm256_srli_epi32::<16>(v), zero);
                let mask = _mm256_movemask_ps(_mm256_castsi256_ps(low)) as u32;
                let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(words.as_ptr().add(pos).cast()));
                let idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    WORD_INDEX.as_ptr().add(mask as usize).cast(),
                ));
                let w = _mm256_permutevar8x32_epi32(w, idx);
                s[$r] = _mm256_blendv_epi8(v, _mm256_or_si256(_mm256_slli_epi32::<16>(v), w), low);
                pos += 2 * _popcnt32(mask as i32) as usize;
                _mm256_and_si256(e, byte_mask)
            }};
        }
        // Bytes of eight lanes per register, four registers: pack 32 -> 16 -> 8 bits, then
        // undo the per-128-bit-half interleaving of the packs.
        macro_rules! store4 {
            ($a:expr, $b:expr, $c:expr, $d:expr, $at:expr) => {{
                let bytes =
                    _mm256_packus_epi16(_mm256_packus_epi32($a, $b), _mm256_packus_epi32($c, $d));
                let bytes = _mm256_permutevar8x32_epi32(bytes, order);
                _mm256_storeu_si256(dst.as_mut_ptr().add($at).cast(), bytes);
            }};
        }
        while g < groups && pos + 2 * LANES <= words.len() {
            let (a, b, c, d) = (step!(0), step!(1), step!(2), step!(3));
            store4!(a, b, c, d, g * LANES);
            let (a, b, c, d) = (step!(4), step!(5), step!(6), step!(7));
            store4!(a, b, c, d, g * LANES + 32);
            prefetch.group();
            g += 1;
        }
        for (r, v) in s.iter().enumerate() {
            _mm256_storeu_si256(x.as_mut_ptr().add(8 * r).cast(), *v);
        }
    }
    (g * LANES, pos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::entropy::{histogram, order0_bytes};

    /// Bytes whose eight bits are independent with P(1) = `p` (a fold-split M plane).
    fn bernoulli_bytes(n: usize, p: f64, seed: u64) -> Vec<u8> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                let mut b = 0u8;
                for k in 0..8 {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if ((state >> 11) as f64 / (1u64 << 53) as f64) < p {
                        b |= 1 << k;
                    }
                }
                b
            })
            .collect()
    }

    fn round_trip(src: &[u8]) -> Vec<u8> {
        let counts = histogram(src);
        let mut body = Vec::new();
        let n = encode(src, &counts, &mut body).expect("two or more symbols");
        assert_eq!(n, body.len());
        for simd in Simd::available() {
            let mut out = vec![0u8; src.len()];
            decode_using(simd, &body, &mut out, &mut Prefetch::none()).unwrap();
            assert_eq!(out, src, "{simd:?}");
            // Prefetching other memory (here: a region larger than the lines the decode
            // spreads over, and the body itself) changes nothing.
            let (elsewhere, mut again) = (vec![7u8; 3 * src.len() + 100], vec![0u8; src.len()]);
            let mut prefetch = Prefetch::spread(&elsewhere, &body, src.len());
            decode_using(simd, &body, &mut again, &mut prefetch).unwrap();
            assert_eq!(again, src, "{simd:?}, prefetching");
        }
        body
    }

    #[test]
    fn every_table_fill_writes_the_same_table() {
        // Runs of 1, 15, 16, 17 and 33 slots, a long one, and a last run that ends at 4096:
        // the vector fill's stores spill past each run and, at the end, into the spare tail.
        let freqs = [1u32, 15, 16, 17, 33, 1, 2000, 3, 16, 1994];
        assert_eq!(freqs.iter().sum::<u32>(), TOTAL);
        let mut first = 0;
        let runs: Vec<Run> = freqs
            .iter()
            .enumerate()
            .map(|(s, &f)| {
                let r = Run {
                    first,
                    freq: f,
                    entry: (3 * s as u32) | (f << 8),
                };
                first += f;
                r
            })
            .collect();
        let mut want = [0u32; TOTAL as usize + FILL_SPILL];
        fill(Simd::None, &runs, &mut want);
        for simd in Simd::available() {
            let mut got = [u32::MAX; TOTAL as usize + FILL_SPILL];
            fill(simd, &runs, &mut got);
            assert_eq!(got[..TOTAL as usize], want[..TOTAL as usize], "{simd:?}");
        }
        // Slot 17: symbol 2 (entry 6), 16 slots, the second of its run.
        assert_eq!(want[17], 6 | 16 << 8 | 1 << 20);
    }

    #[test]
    fn round_trips_at_every_length_and_skew() {
        for n in [2, 31, 32, 33, 63, 64, 65, 100, 1000, 4097, 100_003] {
            for p in [0.5, 0.7, 0.95, 0.999] {
                let src = bernoulli_bytes(n, p, n as u64);
                if histogram(&src).iter().filter(|&&c| c > 0).count() >= 2 {
                    round_trip(&src);
                }
            }
        }
        // Two symbols, one of them once; all 256 symbols once each.
        let mut src = vec![9u8; 5000];
        src[4321] = 200;
        round_trip(&src);
        round_trip(&(0..=255).collect::<Vec<u8>>());
    }

    #[test]
    fn codes_a_bit_plane_near_its_entropy_and_estimates_its_size() {
        let src = bernoulli_bytes(1 << 18, 0.695, 7);
        let counts = histogram(&src);
        let body = round_trip(&src);
        let bound = order0_bytes(&counts);
        assert!(
            (body.len() as f64) < bound * 1.003 + 600.0,
            "{} bytes, bound {bound:.0}",
            body.len()
        );
        let est = estimated_len(&counts).unwrap();
        assert!(
            (est as f64 - body.len() as f64).abs() < body.len() as f64 * 0.002 + 64.0,
            "estimate {est}, actual {}",
            body.len()
        );
    }

    #[test]
    fn division_by_reciprocal_is_exact_where_the_encoder_uses_it() {
        let mut state = 12345u64;
        for f in (1..4096u32).step_by(7).chain([1, 2, 3, 4095]) {
            let r = (1u64 << 44).div_ceil(u64::from(f));
            for x in [
                0u32,
                1,
                f - 1,
                f,
                f + 1,
                u32::MAX,
                u32::MAX - 1,
                (1 << 20) * f - 1,
            ] {
                assert_eq!(
                    ((u128::from(x) * u128::from(r)) >> 44) as u32,
                    x / f,
                    "{x}/{f}"
                );
            }
            for _ in 0..200 {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                let x = (state >> 32) as u32;
                assert_eq!(
                    ((u128::from(x) * u128::from(r)) >> 44) as u32,
                    x / f,
                    "{x}/{f}"
                );
            }
        }
    }

    #[test]
    fn a_constant_plane_is_left_to_zstd() {
        let src = vec![3u8; 1000];
        let mut out = Vec::new();
        assert!(encode(&src, &histogram(&src), &mut out).is_none());
        assert!(out.is_empty());
        assert!(estimated_len(&histogram(&src)).is_none());
    }

    #[test]
    fn corrupt_bodies_are_errors_with_bounded_output() {
        let src = bernoulli_bytes(10_000, 0.7, 3);
        let body = round_trip(&src);
        let mut out = vec![0u8; src.len()];
        // Every truncation, and a flipped bit in every byte of a sample, is an error or (for
        // a flip that happens to decode) wrong bytes caught by the chunk checksum; never a
        // panic or an out-of-bounds access.
        for simd in Simd::available() {
            for cut in (0..body.len()).step_by(97) {
                let e = decode_using(simd, &body[..cut], &mut out, &mut Prefetch::none());
                assert!(e.is_err(), "{simd:?}: cut at {cut}");
            }
            let mut caught = 0;
            for at in (0..body.len()).step_by(13) {
                let mut bad = body.clone();
                bad[at] ^= 1 << (at % 8);
                if decode_using(simd, &bad, &mut out, &mut Prefetch::none()).is_err() {
                    caught += 1;
                }
            }
            assert!(caught > 0, "{simd:?}");
        }
        // Longer or shorter outputs than encoded: the final-state check catches them.
        assert!(decode(&body, &mut vec![0u8; src.len() + 32]).is_err());
        assert!(decode(&body, &mut vec![0u8; src.len() - 32]).is_err());
        // A table that does not sum to 4096.
        let mut bad = body.clone();
        bad[PRESENCE] = bad[PRESENCE].wrapping_add(1);
        assert!(decode(&bad, &mut out).is_err());
    }
}
