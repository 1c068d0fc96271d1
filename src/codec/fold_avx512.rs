//! The fold-split merges of Q4_K, Q6_K, Q8_0, Q4_0 and Q4_1 blocks with AVX-512 (F + BW),
//! picked at run time by `transform::Layout::merge` (builds stay portable). The compiler's
//! AVX2 code of the portable merges ran Q4_K at about 20 GB/s cache-resident, and the merge
//! was 27% of decoding a Q4_K_M model: here a 64-byte vector makes two of a field's four
//! 32-byte quarters at once, and bit selects are single `vpternlog`s.
//!
//! Field layouts and the fold itself are `transform.rs`'s (`Part::NibbleFold`,
//! `Part::CrumbFold`, `Part::Int8Fold`); the tests there check these against the portable
//! merges on every layout.

use std::arch::x86_64::*;

/// `vpternlog` immediate of `(a & b) | (!a & c)`: bits of `b` where the mask `a` is set, of
/// `c` elsewhere.
const SELECT: i32 = 0xCA;

/// Bits of `b` where `mask` is set, of `c` elsewhere.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
fn select(mask: __m512i, b: __m512i, c: __m512i) -> __m512i {
    _mm512_ternarylogic_epi32::<SELECT>(mask, b, c)
}

/// The 32 bytes at `p`, in both halves of a vector.
///
/// # Safety
/// `p` must be valid for reading 32 bytes.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn broadcast32(p: *const u8) -> __m512i {
    // SAFETY: the caller's contract.
    _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(p.cast()) })
}

/// The 128 bytes of a nibble-fold field from its M (32 bytes), H (32) and L (64) planes'
/// bytes, written to `out`. Output byte `32 j + k` is
/// `fold_nibbles((l[32 (j % 2) + k] >> 2 (j / 2)) & 0x33 | ((m[k] >> j) & 0x11) << 2 | ((h[k] >> j) & 0x11) << 3)`;
/// the fold (bit 2 of a nibble ^= bit 3) is applied to M before it is placed: bit 2 takes
/// `m ^ h`.
///
/// # Safety
/// `m`, `h` readable for 32 bytes, `l` for 64, `out` writable for 128.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn nibble_fold_128(out: *mut u8, m: *const u8, h: *const u8, l: *const u8) {
    // SAFETY: the caller's contract.
    unsafe {
        let (m, h) = (broadcast32(m), broadcast32(h));
        let l = _mm512_loadu_si512(l.cast());
        let mh = _mm512_xor_si512(m, h);
        let low = _mm512_set1_epi8(0x33);
        let b2 = _mm512_set1_epi8(0x44);
        // Bit 2 (and 6) of output quarter j is bit j (4 + j) of m ^ h, bit 3 (7) bit j (4 + j)
        // of h: a rotation of each 64-bit lane by 2 - j and 3 - j (quarters 0 and 2 in the
        // low half of a vector, 1 and 3 in the high half). Every bit the selects keep comes
        // from its own byte (a shift would lose the top bits of a lane's last byte).
        for half in 0..2 {
            let j0 = 2 * half;
            let rot = |to: i64| {
                _mm512_set_epi64(
                    (to - j0 - 1) & 63,
                    (to - j0 - 1) & 63,
                    (to - j0 - 1) & 63,
                    (to - j0 - 1) & 63,
                    (to - j0) & 63,
                    (to - j0) & 63,
                    (to - j0) & 63,
                    (to - j0) & 63,
                )
            };
            // Quarters 2 and 3 take the high crumbs of each of L's nibbles.
            let lbits = if half == 0 {
                l
            } else {
                _mm512_srli_epi64::<2>(l)
            };
            let y = select(
                low,
                lbits,
                select(
                    b2,
                    _mm512_rolv_epi64(mh, rot(2)),
                    _mm512_rolv_epi64(h, rot(3)),
                ),
            );
            _mm512_storeu_si512(out.add(64 * half as usize).cast(), y);
        }
    }
}

/// Q4_K blocks (d, dmin: two bytes each from four planes; scales: 12; qs: a 128-byte nibble
/// fold) from their eight planes.
///
/// # Safety
/// The CPU must support AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn merge_q4_k(planes: [&[u8]; 8], dst: &mut [u8]) {
    let [d0, d1, m0, m1, sc, nm, nh, nl] = planes;
    let blocks = dst.len() / 144;
    // Every load below is inside these lengths (checked once here, not per block).
    assert!([d0, d1, m0, m1].iter().all(|p| p.len() >= blocks));
    assert!(sc.len() >= 12 * blocks && nm.len() >= 32 * blocks && nh.len() >= 32 * blocks);
    assert!(nl.len() >= 64 * blocks);
    for u in 0..blocks {
        // SAFETY: block u reads the planes at [u], [12u, 12u + 12) (or the 16 bytes ending
        // there, for u > 0), [32u, 32u + 32) and [64u, 64u + 64), inside the lengths asserted
        // above, and writes dst at [144u, 144u + 144) with u < dst.len() / 144.
        unsafe {
            let out = dst.as_mut_ptr().add(144 * u);
            let head = u32::from_le_bytes([d0[u], d1[u], m0[u], m1[u]]) as i32;
            if u > 0 {
                // The 16 bytes ending at this block's scales, their first four replaced.
                let v = _mm_loadu_si128(sc.as_ptr().add(12 * u - 4).cast());
                _mm_storeu_si128(out.cast(), _mm_insert_epi32::<0>(v, head));
            } else {
                out.cast::<[u8; 4]>().write_unaligned(head.to_le_bytes());
                std::ptr::copy_nonoverlapping(sc.as_ptr(), out.add(4), 12);
            }
            nibble_fold_128(
                out.add(16),
                nm.as_ptr().add(32 * u),
                nh.as_ptr().add(32 * u),
                nl.as_ptr().add(64 * u),
            );
        }
    }
}

/// Q6_K blocks (ql: a 128-byte nibble fold; qh: a 64-byte crumb fold; scales: 16; d: two
/// bytes from two planes) from their eight planes.
///
/// # Safety
/// The CPU must support AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn merge_q6_k(planes: [&[u8]; 8], dst: &mut [u8]) {
    let [nm, nh, nl, cm, ch, sc, d0, d1] = planes;
    let blocks = dst.len() / 210;
    assert!(nm.len() >= 32 * blocks && nh.len() >= 32 * blocks && nl.len() >= 64 * blocks);
    assert!(cm.len() >= 32 * blocks && ch.len() >= 32 * blocks && sc.len() >= 16 * blocks);
    assert!(d0.len() >= blocks && d1.len() >= blocks);
    let crumb0 = _mm512_set1_epi8(0x55);
    let shift_x = _mm512_set_epi64(1, 1, 1, 1, 0, 0, 0, 0);
    let shift_h = _mm512_set_epi64(0, 0, 0, 0, 1, 1, 1, 1);
    for u in 0..blocks {
        // SAFETY: block u reads the planes at [32u, 32u + 32), [64u, 64u + 64),
        // [16u, 16u + 16) and [u], inside the lengths asserted above, and writes dst at
        // [210u, 210u + 210) with u < dst.len() / 210.
        unsafe {
            let out = dst.as_mut_ptr().add(210 * u);
            nibble_fold_128(
                out,
                nm.as_ptr().add(32 * u),
                nh.as_ptr().add(32 * u),
                nl.as_ptr().add(64 * u),
            );
            // qh: bytes k < 32 take crumb bits 0 from M's even bits, 1 from H's even bits;
            // bytes 32 + k the odd bits; the fold puts m ^ h in bit 0 of each crumb.
            let (m, h) = (
                broadcast32(cm.as_ptr().add(32 * u)),
                broadcast32(ch.as_ptr().add(32 * u)),
            );
            let x = _mm512_srlv_epi64(_mm512_xor_si512(m, h), shift_x);
            let qh = select(crumb0, x, _mm512_sllv_epi64(h, shift_h));
            _mm512_storeu_si512(out.add(128).cast(), qh);
            _mm_storeu_si128(
                out.add(192).cast(),
                _mm_loadu_si128(sc.as_ptr().add(16 * u).cast()),
            );
            *out.add(208) = d0[u];
            *out.add(209) = d1[u];
        }
    }
}

/// Q8_0 blocks (d: two bytes from two planes; qs: a 32-byte int8 fold) from their five
/// planes, one block per 32-byte vector as in `transform.rs`'s AVX2 merge (two blocks per
/// 64-byte vector measured slower: the broadcasts become permutes), with AVX-512's bit
/// selects on 256-bit vectors (VL): each plane's bytes for a block are broadcast to the four
/// 8-byte groups of its field and shifted by the group's own count.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn merge_q8_0(planes: [&[u8]; 5], dst: &mut [u8]) {
    let [d0, d1, m, s, l] = planes;
    let blocks = dst.len() / 34;
    assert!(d0.len() >= blocks && d1.len() >= blocks);
    assert!(m.len() >= 8 * blocks && s.len() >= 8 * blocks && l.len() >= 16 * blocks);
    let group_shift = _mm256_setr_epi64x(0, 2, 4, 6);
    let nibble_shift = _mm256_setr_epi64x(0, 0, 4, 4);
    let (low4, m_bits, s_bit0, seven) = (
        _mm256_set1_epi8(0x0F),
        _mm256_set1_epi8(0x60),
        _mm256_set1_epi8(0x10),
        _mm256_set1_epi8(0x7F),
    );
    let select = |mask, b, c| _mm256_ternarylogic_epi32::<SELECT>(mask, b, c);
    for u in 0..blocks {
        // SAFETY: block u reads m and s at [8u, 8u + 8) and l at [16u, 16u + 16), inside
        // the lengths asserted above, and writes dst at [34u, 34u + 34) with
        // u < dst.len() / 34.
        unsafe {
            let mv = _mm256_broadcastq_epi64(_mm_loadl_epi64(m.as_ptr().add(8 * u).cast()));
            let sv = _mm256_broadcastq_epi64(_mm_loadl_epi64(s.as_ptr().add(8 * u).cast()));
            let lv = _mm256_broadcastsi128_si256(_mm_loadu_si128(l.as_ptr().add(16 * u).cast()));
            let mv = _mm256_srlv_epi64(mv, group_shift);
            let sv = _mm256_srlv_epi64(sv, group_shift);
            let lv = _mm256_srlv_epi64(lv, nibble_shift);
            // Byte bits: 0-3 from L, 4 from S's bit 0, 5-6 from M's bits 0-1, 7 from S's
            // bit 1 (left shifts within 64-bit lanes: every kept bit comes from its own byte).
            let sbits = select(
                s_bit0,
                _mm256_slli_epi64::<4>(sv),
                _mm256_slli_epi64::<6>(sv),
            );
            let y = select(low4, lv, select(m_bits, _mm256_slli_epi64::<5>(mv), sbits));
            // Unfold: a negative value's low seven bits were inverted.
            let negative = _mm256_movm_epi8(_mm256_movepi8_mask(y));
            let x = _mm256_ternarylogic_epi32::<0x78>(y, negative, seven);
            let out = dst.as_mut_ptr().add(34 * u);
            *out = d0[u];
            *out.add(1) = d1[u];
            _mm256_storeu_si256(out.add(2).cast(), x);
        }
    }
}

/// Q4_0 (`COPIES` = 2: d) and Q4_1 (4: d, m) blocks (single-byte copy planes, then a 16-byte
/// nibble fold) from their planes, sixteen blocks a round: a block's quarters 0 and 1 are
/// eight bytes of one vector, its quarters 2 and 3 eight of another. Quarter `j`'s bytes are
/// L's bytes `4 (j % 2)..` of the block shifted right by `2 (j / 2)`, with bits 2 and 3 (6
/// and 7) from bit `j` (`4 + j`) of the block's M and H bytes, bit 2 taking `m ^ h` (the
/// fold). Blocks past the last full round go through the portable merge.
///
/// # Safety
/// The CPU must support AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn merge_q4_nibbles<const COPIES: usize>(planes: &[&[u8]], dst: &mut [u8]) {
    let unit = COPIES + 16;
    let blocks = dst.len() / unit;
    assert!(planes.len() == COPIES + 3 && (COPIES == 2 || COPIES == 4));
    let (copies, nibbles) = planes.split_at(COPIES);
    let (m, h, l) = (nibbles[0], nibbles[1], nibbles[2]);
    assert!(copies.iter().all(|p| p.len() >= blocks));
    assert!(m.len() >= 4 * blocks && h.len() >= 4 * blocks && l.len() >= 8 * blocks);
    let low = _mm512_set1_epi8(0x33);
    let bit0 = _mm512_set1_epi8(0x11);
    // Each block's M (H) dword twice, for its two quarters in one 8-byte group, shifted by
    // the quarter's number.
    let spread = |first: i32| {
        _mm512_set_epi32(
            first + 7,
            first + 7,
            first + 6,
            first + 6,
            first + 5,
            first + 5,
            first + 4,
            first + 4,
            first + 3,
            first + 3,
            first + 2,
            first + 2,
            first + 1,
            first + 1,
            first,
            first,
        )
    };
    let (spread_lo, spread_hi) = (spread(0), spread(8));
    let shift01 = _mm512_set_epi32(1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0);
    let shift23 = _mm512_add_epi32(shift01, _mm512_set1_epi32(2));
    let rounds = blocks / 16;
    let mut qs = [[0u64; 8]; 4];
    for r in 0..rounds {
        // SAFETY: round r reads the copy planes at [16r, 16r + 16), m and h at
        // [64r, 64r + 64) and l at [128r, 128r + 128), inside the lengths asserted above
        // (16r + 16 <= blocks), and writes dst at [16 r unit, 16 (r + 1) unit); `head` holds
        // 16 COPIES <= 64 bytes.
        unsafe {
            let mv = _mm512_loadu_si512(m.as_ptr().add(64 * r).cast());
            let hv = _mm512_loadu_si512(h.as_ptr().add(64 * r).cast());
            for (half, spread) in [spread_lo, spread_hi].into_iter().enumerate() {
                let lv = _mm512_loadu_si512(l.as_ptr().add(128 * r + 64 * half).cast());
                let mh = _mm512_permutexvar_epi32(spread, _mm512_xor_si512(mv, hv));
                let hh = _mm512_permutexvar_epi32(spread, hv);
                for (k, (shift, lbits)) in [(shift01, lv), (shift23, _mm512_srli_epi64::<2>(lv))]
                    .into_iter()
                    .enumerate()
                {
                    // Bits 0-1 (4-5) from L, 2 (6) from m ^ h, 3 (7) from h: every kept bit
                    // comes from its own byte (shifts by at most 3 within a dword).
                    let b2 = _mm512_slli_epi32::<2>(_mm512_and_si512(
                        _mm512_srlv_epi32(mh, shift),
                        bit0,
                    ));
                    let b3 = _mm512_slli_epi32::<3>(_mm512_and_si512(
                        _mm512_srlv_epi32(hh, shift),
                        bit0,
                    ));
                    let y = select(low, lbits, _mm512_or_si512(b2, b3));
                    _mm512_storeu_si512(qs[2 * half + k].as_mut_ptr().cast(), y);
                }
            }
            // The sixteen blocks' copy bytes, interleaved: block b's at [COPIES b, ..+COPIES).
            let mut head = [0u8; 64];
            let byte_plane = |c: usize| _mm_loadu_si128(copies[c].as_ptr().add(16 * r).cast());
            let (p0, p1) = (byte_plane(0), byte_plane(1));
            let (lo01, hi01) = (_mm_unpacklo_epi8(p0, p1), _mm_unpackhi_epi8(p0, p1));
            let interleaved = if COPIES == 4 {
                let (p2, p3) = (byte_plane(2), byte_plane(3));
                let (lo23, hi23) = (_mm_unpacklo_epi8(p2, p3), _mm_unpackhi_epi8(p2, p3));
                [
                    _mm_unpacklo_epi16(lo01, lo23),
                    _mm_unpackhi_epi16(lo01, lo23),
                    _mm_unpacklo_epi16(hi01, hi23),
                    _mm_unpackhi_epi16(hi01, hi23),
                ]
            } else {
                [lo01, hi01, lo01, hi01]
            };
            for (i, v) in interleaved.iter().enumerate().take(COPIES) {
                _mm_storeu_si128(head.as_mut_ptr().add(16 * i).cast(), *v);
            }
            for b in 0..16 {
                let out = dst.as_mut_ptr().add(unit * (16 * r + b));
                std::ptr::copy_nonoverlapping(head.as_ptr().add(COPIES * b), out, COPIES);
                let (half, g) = (b / 8, b % 8);
                out.add(COPIES)
                    .cast::<u64>()
                    .write_unaligned(qs[2 * half][g]);
                out.add(COPIES + 8)
                    .cast::<u64>()
                    .write_unaligned(qs[2 * half + 1][g]);
            }
        }
    }
    let done = 16 * rounds;
    if done == blocks {
        return;
    }
    // The planes from the first block left on (no allocation: at most 4 + 3 planes).
    let mut rest: [&[u8]; 7] = [&[]; 7];
    for (i, (r, p)) in rest.iter_mut().zip(planes).enumerate() {
        let per_block = match i.checked_sub(COPIES) {
            None => 1,
            Some(2) => 8,
            Some(_) => 4,
        };
        *r = &p[per_block * done..];
    }
    super::transform::merge_fold_nibble_blocks::<COPIES, 16>(
        &rest[..planes.len()],
        &mut dst[unit * done..],
    );
}
