//! Byte transforms that separate statistically different bytes of a ggml tensor into planes.
//!
//! Each transform is a fixed, reversible permutation of a chunk's bytes (plus, for floats, a
//! one-bit rotation of each element). Decoding merges the planes back, writing straight into
//! the caller's buffer.

use crate::gguf::{Field, GgmlType};

/// The transform applied to a tensor's chunks before entropy coding. The numbers are the
/// on-disk ids (docs/FORMAT.md); they are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    /// Bytes as they are: one plane.
    Identity,
    /// Element byte `k` goes to plane `k` (little-endian elements of `width` bytes).
    ByteSplit { width: u8 },
    /// Each little-endian float element is rotated left by one bit, moving the sign below
    /// the mantissa so that the exponent fills the top byte, then byte-split.
    FloatRotate { width: u8 },
    /// Quantization blocks are split field by field (ggml's block layout): fp16 scales into a
    /// low-byte and a high-byte plane, byte arrays (quants, packed scales) into one plane each.
    BlockFields,
    /// As `BlockFields`, and quant fields are further split into a plane of high bits and a
    /// plane of low bits, two quant bytes' high halves packed per byte: the near-uniform low
    /// bits are stored raw and the entropy coder handles half as many symbols, which doubles
    /// decode speed for a ~0.5% larger quant plane.
    QuantSplit,
    /// As `QuantSplit` for scales and int8 quants, but 4-bit and 2-bit quants are first
    /// *folded*: the second-highest bit of each value is replaced by its XOR with the highest
    /// bit. Quants are centred on the middle of their range, so that bit says "near the
    /// middle" and carries all of the top bits' redundancy (measured on Qwen2.5 Q4_K: 0.887
    /// bits of entropy, against 1.887 for the two top bits together, and the highest bit alone
    /// is uniform). Only those folded bits, one per value, go to the entropy coder, half as
    /// many bytes as `QuantSplit` codes for the same saving, which is what decode time is
    /// spent on for K-quants. Int8 quants (version 4) are folded by their sign: a negative
    /// value's low seven bits are inverted, so bits 4-6 hold the magnitude's high bits (near
    /// zero for most weights); only bits 5 and 6 go to the entropy coder, four values a byte,
    /// half the symbols of `QuantSplit`'s high nibbles for a 0.15% larger plane (measured on
    /// MiniLM Q8_0), and the sign and bit 4 (0.3% compressible) stay raw.
    FoldSplit,
}

impl Transform {
    pub fn id(self) -> u8 {
        match self {
            Transform::Identity => 0,
            Transform::ByteSplit { .. } => 1,
            Transform::FloatRotate { .. } => 2,
            Transform::BlockFields => 3,
            Transform::QuantSplit => 4,
            Transform::FoldSplit => 5,
        }
    }

    /// Rebuilds a transform from its id for a tensor of type `ty`; `None` if the pairing is
    /// not one the encoder could have written.
    pub fn from_id(id: u8, ty: GgmlType) -> Option<Transform> {
        let width = ty.block_bytes();
        let t = match id {
            0 => Transform::Identity,
            1 if ty.block_elems() == 1 && matches!(width, 2 | 4 | 8) => {
                Transform::ByteSplit { width: width as u8 }
            }
            2 if [GgmlType::F16, GgmlType::BF16, GgmlType::F32].contains(&ty) => {
                Transform::FloatRotate { width: width as u8 }
            }
            3 if !ty.fields().is_empty() => Transform::BlockFields,
            4 if has_quant_fields(ty) => Transform::QuantSplit,
            5 if has_fold_fields(ty) || has_int8_fields(ty) => Transform::FoldSplit,
            _ => return None,
        };
        Some(t)
    }

    /// The transform the encoder uses for a type by default.
    pub fn default_for(ty: GgmlType) -> Transform {
        if [GgmlType::F16, GgmlType::BF16, GgmlType::F32].contains(&ty) {
            Transform::FloatRotate {
                width: ty.block_bytes() as u8,
            }
        } else if ty.block_elems() == 1 && matches!(ty.block_bytes(), 2 | 4 | 8) {
            Transform::ByteSplit {
                width: ty.block_bytes() as u8,
            }
        } else if FOLD_BY_DEFAULT.contains(&ty) {
            Transform::FoldSplit
        } else if has_quant_fields(ty) {
            Transform::QuantSplit
        } else if !ty.fields().is_empty() {
            Transform::BlockFields
        } else {
            Transform::Identity
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Transform::Identity => "identity",
            Transform::ByteSplit { .. } => "byte-split",
            Transform::FloatRotate { .. } => "float-rotate",
            Transform::BlockFields => "block-fields",
            Transform::QuantSplit => "quant-split",
            Transform::FoldSplit => "fold-split",
        }
    }
}

/// The types `FoldSplit` is the default for: those measured on real models (docs/FORMAT.md
/// has the numbers). Other types with nibble or crumb fields can be written with it on
/// request and read back, but keep `QuantSplit` until measured.
const FOLD_BY_DEFAULT: [GgmlType; 5] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
    GgmlType::Q8_0,
];

fn has_fold_fields(ty: GgmlType) -> bool {
    ty.fields()
        .iter()
        .any(|f| matches!(f, Field::Nibbles(_) | Field::Crumbs(_)))
}

fn has_int8_fields(ty: GgmlType) -> bool {
    ty.fields().iter().any(|f| matches!(f, Field::Int8(_)))
}

fn has_quant_fields(ty: GgmlType) -> bool {
    ty.fields()
        .iter()
        .any(|f| matches!(f, Field::Nibbles(_) | Field::Int8(_)))
}

/// A run of bytes at offset `off` of every unit and the plane(s) it goes to.
#[derive(Clone, Copy, Debug)]
enum Part {
    /// `width` bytes go to one plane.
    Copy { off: usize, width: usize },
    /// `width` bytes (even) are taken in pairs `(a, b)` (each XORed with `xor` first);
    /// plane H gets `(a & M) >> s | (b & M)` and plane L gets `(a & !M) | (b & !M) << s`,
    /// where `M` is `hi_mask` and `s` is `shift`.
    PairSplit {
        off: usize,
        width: usize,
        shift: u32,
        hi_mask: u8,
        xor: u8,
    },
    /// `width` bytes of packed nibbles (width a multiple of 4), folded (bit 2 of each nibble
    /// XORed with bit 3) and split into three planes: M, the folded bits (`width / 4` bytes),
    /// H, the top bits (`width / 4`), and L, the two low bits (`width / 2`). With
    /// `q = width / 4`, byte `k` of M holds the folded bits of field bytes `k + j * q` for
    /// `j` in 0..4, at bits `j` and `j + 4`; H likewise; byte `k` of L holds the low bits of
    /// field bytes `k` (bits 0, 1, 4, 5) and `k + width / 2` (bits 2, 3, 6, 7). Strided rather
    /// than adjacent groups make the merge a few straight vectorizable loops.
    NibbleFold { off: usize, width: usize },
    /// `width` bytes of packed 2-bit values (width even), folded (bit 0 of each XORed with
    /// bit 1) and split into two planes: M, the folded bits, and H, the top bits, each
    /// `width / 2` bytes: byte `k` holds the bits of field bytes `k` (even bit positions) and
    /// `k + width / 2` (odd positions).
    CrumbFold { off: usize, width: usize },
    /// `width` bytes of int8 values (width a multiple of 4), sign-folded (`y = x ^ 0x7F` for
    /// negative `x`) and split into three planes: M, bits 5 and 6 (`width / 4` bytes), S, bit
    /// 4 and the sign bit (`width / 4`), and L, the low nibbles (`width / 2`). With
    /// `q = width / 4`, byte `k` of M holds bits 5-6 of field bytes `k + j * q` for `j` in
    /// 0..4 at bits `2j, 2j + 1`; S holds bit 4 at `2j` and bit 7 at `2j + 1`; byte `k` of L
    /// holds the low nibbles of field bytes `k` (bits 0-3) and `k + width / 2` (bits 4-7).
    Int8Fold { off: usize, width: usize },
}

impl Part {
    fn planes(self) -> usize {
        match self {
            Part::Copy { .. } => 1,
            Part::PairSplit { .. } | Part::CrumbFold { .. } => 2,
            Part::NibbleFold { .. } | Part::Int8Fold { .. } => 3,
        }
    }

    /// Bytes per unit of each of this part's planes.
    fn plane_widths(self) -> impl Iterator<Item = usize> {
        let w = match self {
            Part::Copy { width, .. } => [width, 0, 0],
            Part::PairSplit { width, .. } | Part::CrumbFold { width, .. } => {
                [width / 2, width / 2, 0]
            }
            Part::NibbleFold { width, .. } | Part::Int8Fold { width, .. } => {
                [width / 4, width / 4, width / 2]
            }
        };
        w.into_iter().take(self.planes())
    }
}

/// Int8 quants: offset binary, high nibbles of two quants per byte.
const INT8_SPLIT: (u32, u8, u8) = (4, 0xF0, 0x80);
/// Packed nibbles: the top two bits of each of four nibbles per byte.
const NIBBLE_SPLIT: (u32, u8, u8) = (2, 0xCC, 0x00);

/// The fold-split layouts whose merges have every size fixed at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FixedFold {
    Q4K,
    Q6K,
    Q8_0,
    /// Q4_0 (2 single-byte copies) and Q4_1 (4), then a 16-byte nibble fold.
    Q4Nibbles {
        copies: usize,
    },
}

/// How one chunk's bytes map onto planes: a chunk is a run of units (elements or blocks) of
/// `unit` bytes, and each part takes the same byte positions from every unit.
#[derive(Clone, Debug)]
pub struct Layout {
    transform: Transform,
    unit: usize,
    parts: Vec<Part>,
}

impl Layout {
    pub fn new(transform: Transform, ty: GgmlType) -> Layout {
        let unit = ty.block_bytes() as usize;
        let bytes_of = |width: usize| (0..width).map(|off| Part::Copy { off, width: 1 }).collect();
        let (unit, parts) = match transform {
            Transform::Identity => (1, vec![Part::Copy { off: 0, width: 1 }]),
            Transform::ByteSplit { width } | Transform::FloatRotate { width } => {
                (width as usize, bytes_of(width as usize))
            }
            Transform::BlockFields | Transform::QuantSplit | Transform::FoldSplit => {
                let split = transform != Transform::BlockFields;
                let fold = transform == Transform::FoldSplit;
                let mut parts = Vec::new();
                let mut off = 0;
                for f in ty.fields() {
                    let pair = match f {
                        Field::Int8(_) if split => Some(INT8_SPLIT),
                        Field::Nibbles(_) if split && !fold => Some(NIBBLE_SPLIT),
                        _ => None,
                    };
                    match (f, pair) {
                        (Field::Int8(n), _) if fold && n % 4 == 0 => {
                            parts.push(Part::Int8Fold {
                                off,
                                width: f.byte_len(),
                            });
                        }
                        (Field::Nibbles(n), _) if fold && n % 4 == 0 => {
                            parts.push(Part::NibbleFold {
                                off,
                                width: f.byte_len(),
                            });
                        }
                        (Field::Crumbs(n), _) if fold && n % 2 == 0 => {
                            parts.push(Part::CrumbFold {
                                off,
                                width: f.byte_len(),
                            });
                        }
                        (Field::Half | Field::Float, _) => {
                            parts.extend((0..f.byte_len()).map(|k| Part::Copy {
                                off: off + k,
                                width: 1,
                            }));
                        }
                        (_, Some((shift, hi_mask, xor))) => parts.push(Part::PairSplit {
                            off,
                            width: f.byte_len(),
                            shift,
                            hi_mask,
                            xor,
                        }),
                        (_, None) => parts.push(Part::Copy {
                            off,
                            width: f.byte_len(),
                        }),
                    }
                    off += f.byte_len();
                }
                (unit, parts)
            }
        };
        Layout {
            transform,
            unit,
            parts,
        }
    }

    /// Bytes per unit; chunk sizes are multiples of it.
    pub fn unit(&self) -> usize {
        self.unit
    }

    pub fn plane_count(&self) -> usize {
        self.parts.iter().map(|p| p.planes()).sum()
    }

    /// Length of each plane for a chunk of `raw_len` bytes (a multiple of `unit`).
    pub fn plane_lens(&self, raw_len: usize) -> impl Iterator<Item = usize> + '_ {
        let units = raw_len / self.unit;
        self.parts
            .iter()
            .flat_map(move |p| p.plane_widths().map(move |w| w * units))
    }

    /// Splits `src` into planes, appending them one after another to `out`.
    pub fn split(&self, src: &[u8], out: &mut Vec<u8>) {
        debug_assert_eq!(src.len() % self.unit, 0);
        out.clear();
        out.reserve(src.len());
        match self.transform {
            Transform::Identity => out.extend_from_slice(src),
            Transform::FloatRotate { width: 2 } => split_u16(src, out, 1),
            Transform::ByteSplit { width: 2 } => split_u16(src, out, 0),
            Transform::FloatRotate { width: 4 } => split_u32(src, out, 1),
            Transform::ByteSplit { width: 4 } => split_u32(src, out, 0),
            // Every block layout: one block at a time (what FoldSplit needs, and one pass
            // over the chunk for the others too).
            _ => self.split_block_major(src, out),
        }
    }

    /// [`Layout::split`] one block at a time, each plane written at its place in `out`: one
    /// read of the chunk, each byte folded once.
    fn split_block_major(&self, src: &[u8], out: &mut Vec<u8>) {
        out.resize(src.len(), 0);
        let mut planes: Vec<&mut [u8]> = Vec::with_capacity(self.plane_count());
        let mut rest = out.as_mut_slice();
        for len in self.plane_lens(src.len()) {
            let (plane, tail) = std::mem::take(&mut rest).split_at_mut(len);
            planes.push(plane);
            rest = tail;
        }
        for (u, block) in src.chunks_exact(self.unit).enumerate() {
            let mut p = 0;
            for &part in &self.parts {
                match part {
                    Part::Copy { off, width } => planes[p][u * width..(u + 1) * width]
                        .copy_from_slice(&block[off..off + width]),
                    Part::PairSplit {
                        off,
                        width,
                        shift,
                        hi_mask: m,
                        xor,
                    } => {
                        let half = width / 2;
                        let [hi, lo] = &mut planes[p..p + 2] else {
                            unreachable!("two planes per pair part")
                        };
                        let (hi, lo) = (&mut hi[u * half..][..half], &mut lo[u * half..][..half]);
                        for (k, pair) in block[off..off + width].chunks_exact(2).enumerate() {
                            let (a, b) = (pair[0] ^ xor, pair[1] ^ xor);
                            hi[k] = (a & m) >> shift | (b & m);
                            lo[k] = (a & !m) | (b & !m) << shift;
                        }
                    }
                    Part::NibbleFold { off, width } => {
                        let (q, half) = (width / 4, width / 2);
                        let [m, h, l] = &mut planes[p..p + 3] else {
                            unreachable!("three planes per nibble-fold part")
                        };
                        split_nibble_fold(
                            &block[off..off + width],
                            &mut m[u * q..][..q],
                            &mut h[u * q..][..q],
                            &mut l[u * half..][..half],
                        );
                    }
                    Part::Int8Fold { off, width } => {
                        let (q, half) = (width / 4, width / 2);
                        let [m, s, l] = &mut planes[p..p + 3] else {
                            unreachable!("three planes per int8-fold part")
                        };
                        split_int8_fold(
                            &block[off..off + width],
                            &mut m[u * q..][..q],
                            &mut s[u * q..][..q],
                            &mut l[u * half..][..half],
                        );
                    }
                    Part::CrumbFold { off, width } => {
                        let half = width / 2;
                        let [m, h] = &mut planes[p..p + 2] else {
                            unreachable!("two planes per crumb-fold part")
                        };
                        split_crumb_fold(
                            &block[off..off + width],
                            &mut m[u * half..][..half],
                            &mut h[u * half..][..half],
                        );
                    }
                }
                p += part.planes();
            }
        }
    }

    /// Merges `planes` (as produced by [`Layout::split`]) back into `dst`.
    /// `planes[p]` must have length `plane_lens(dst.len())[p]`.
    pub fn merge(&self, planes: &[&[u8]], dst: &mut [u8]) {
        debug_assert_eq!(planes.len(), self.plane_count());
        match self.transform {
            Transform::Identity => dst.copy_from_slice(planes[0]),
            Transform::FloatRotate { width: 2 } => merge_u16(planes, dst, 1),
            Transform::ByteSplit { width: 2 } => merge_u16(planes, dst, 0),
            Transform::FloatRotate { width: 4 } => merge_u32(planes, dst, 1),
            Transform::ByteSplit { width: 4 } => merge_u32(planes, dst, 0),
            Transform::FoldSplit if self.merge_fold_blocks(planes, dst) => {}
            _ if self.merge_quant_blocks(planes, dst) => {}
            _ => self.merge_block_major(planes, dst),
        }
    }

    /// Which of the fold-split layouts with a merge of fixed sizes this is, if any.
    fn fixed_fold(&self) -> Option<FixedFold> {
        match (self.parts.as_slice(), self.unit) {
            // Q4_K: d, dmin (two bytes each), scales:12, qs:128n.
            (
                [
                    Part::Copy { off: 0, width: 1 },
                    Part::Copy { off: 1, width: 1 },
                    Part::Copy { off: 2, width: 1 },
                    Part::Copy { off: 3, width: 1 },
                    Part::Copy { off: 4, width: 12 },
                    Part::NibbleFold {
                        off: 16,
                        width: 128,
                    },
                ],
                144,
            ) => Some(FixedFold::Q4K),
            // Q6_K: ql:128n, qh:64 (crumbs), scales:16, d.
            (
                [
                    Part::NibbleFold { off: 0, width: 128 },
                    Part::CrumbFold {
                        off: 128,
                        width: 64,
                    },
                    Part::Copy {
                        off: 192,
                        width: 16,
                    },
                    Part::Copy { off: 208, width: 1 },
                    Part::Copy { off: 209, width: 1 },
                ],
                210,
            ) => Some(FixedFold::Q6K),
            // Q8_0: d, then qs:32q.
            (
                [
                    Part::Copy { off: 0, width: 1 },
                    Part::Copy { off: 1, width: 1 },
                    Part::Int8Fold { off: 2, width: 32 },
                ],
                34,
            ) => Some(FixedFold::Q8_0),
            // Q4_0 and Q4_1: the fp16 bytes, then qs:16n.
            ([copies @ .., Part::NibbleFold { off, width: 16 }], unit)
                if unit == off + 16
                    && copies
                        .iter()
                        .enumerate()
                        .all(|(k, p)| matches!(p, Part::Copy { off, width: 1 } if *off == k)) =>
            {
                Some(FixedFold::Q4Nibbles {
                    copies: copies.len(),
                })
            }
            _ => None,
        }
    }

    /// The fold-split layouts of Q4_K and Q6_K (what Q4_K_M models are made of), Q4_0 and
    /// Q4_1 with every size fixed at compile time: no per-field dispatch, no bounds checks inside a
    /// block. Returns false, leaving `dst` alone, for any other layout.
    fn merge_fold_blocks(&self, planes: &[&[u8]], dst: &mut [u8]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            // SAFETY: the CPU has AVX-512 F, BW and VL (BW implies F; detected just above).
            && unsafe { self.merge_fold_blocks_avx512(planes, dst) }
        {
            return true;
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (detected just above), the one requirement of calling a
            // `target_feature(enable = "avx2")` function; the function itself is safe code.
            return unsafe { self.merge_fold_blocks_avx2(planes, dst) };
        }
        self.merge_fold_blocks_inline(planes, dst)
    }

    /// [`Layout::merge_fold_blocks`] compiled for AVX2: builds stay portable (baseline
    /// x86-64), and CPUs that have AVX2 merge with 32-byte vectors.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn merge_fold_blocks_avx2(&self, planes: &[&[u8]], dst: &mut [u8]) -> bool {
        self.merge_fold_blocks_inline(planes, dst)
    }

    /// Q4_K, Q6_K, Q8_0, Q4_0 and Q4_1 fold-split blocks with AVX-512
    /// (`codec::fold_avx512`); false, leaving `dst` alone, for any other layout.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VL.
    #[cfg(target_arch = "x86_64")]
    unsafe fn merge_fold_blocks_avx512(&self, planes: &[&[u8]], dst: &mut [u8]) -> bool {
        use super::fold_avx512::{merge_q4_k, merge_q4_nibbles, merge_q6_k, merge_q8_0};
        match self.fixed_fold() {
            // SAFETY: the caller's contract (AVX-512 F and BW).
            Some(FixedFold::Q4Nibbles { copies: 2 }) => unsafe {
                merge_q4_nibbles::<2>(planes, dst)
            },
            // SAFETY: as above.
            Some(FixedFold::Q4Nibbles { copies: 4 }) => unsafe {
                merge_q4_nibbles::<4>(planes, dst)
            },
            Some(FixedFold::Q4K) => {
                let Ok(planes) = planes.try_into() else {
                    return false;
                };
                // SAFETY: the caller's contract.
                unsafe { merge_q4_k(planes, dst) };
            }
            Some(FixedFold::Q6K) => {
                let Ok(planes) = planes.try_into() else {
                    return false;
                };
                // SAFETY: the caller's contract.
                unsafe { merge_q6_k(planes, dst) };
            }
            Some(FixedFold::Q8_0) => {
                let Ok(planes) = planes.try_into() else {
                    return false;
                };
                // SAFETY: the caller's contract.
                unsafe { merge_q8_0(planes, dst) };
            }
            _ => return false,
        }
        true
    }

    #[inline(always)]
    fn merge_fold_blocks_inline(&self, planes: &[&[u8]], dst: &mut [u8]) -> bool {
        match self.fixed_fold() {
            Some(FixedFold::Q4K) => {
                let [d0, d1, m0, m1, sc, nm, nh, nl] = planes else {
                    return false;
                };
                // Index loops: the nested iterator adapters of a zip chain this long were not
                // inlined into the AVX2 copy (measured: 10% of the merge in `next`).
                for (u, b) in dst.chunks_exact_mut(144).enumerate() {
                    let (head, qs) = b.split_at_mut(16);
                    head[..4].copy_from_slice(&[d0[u], d1[u], m0[u], m1[u]]);
                    head[4..].copy_from_slice(&sc[u * 12..u * 12 + 12]);
                    let (m, h) = (&nm[u * 32..u * 32 + 32], &nh[u * 32..u * 32 + 32]);
                    merge_nibble_fold::<128>(qs, m, h, &nl[u * 64..u * 64 + 64]);
                }
                true
            }
            Some(FixedFold::Q6K) => {
                let [nm, nh, nl, cm, ch, sc, d0, d1] = planes else {
                    return false;
                };
                for (u, b) in dst.chunks_exact_mut(210).enumerate() {
                    let (ql, rest) = b.split_at_mut(128);
                    let (qh, tail) = rest.split_at_mut(64);
                    let (m, h) = (&nm[u * 32..u * 32 + 32], &nh[u * 32..u * 32 + 32]);
                    merge_nibble_fold::<128>(ql, m, h, &nl[u * 64..u * 64 + 64]);
                    let (m, h) = (&cm[u * 32..u * 32 + 32], &ch[u * 32..u * 32 + 32]);
                    merge_crumb_fold::<64>(qh, m, h);
                    tail[..16].copy_from_slice(&sc[u * 16..u * 16 + 16]);
                    tail[16..].copy_from_slice(&[d0[u], d1[u]]);
                }
                true
            }
            Some(FixedFold::Q8_0) => {
                let [d0, d1, m, s, l] = planes else {
                    return false;
                };
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (detected just above).
                    unsafe { merge_q8_0_fold_avx2([d0, d1, m, s, l], dst) };
                    return true;
                }
                for (u, b) in dst.chunks_exact_mut(34).enumerate() {
                    let (head, qs) = b.split_at_mut(2);
                    head.copy_from_slice(&[d0[u], d1[u]]);
                    let (m, s) = (&m[u * 8..u * 8 + 8], &s[u * 8..u * 8 + 8]);
                    merge_int8_fold::<32>(qs, m, s, &l[u * 16..u * 16 + 16]);
                }
                true
            }
            Some(FixedFold::Q4Nibbles { copies: 2 }) => {
                merge_fold_nibble_blocks::<2, 16>(planes, dst);
                true
            }
            Some(FixedFold::Q4Nibbles { copies: 4 }) => {
                merge_fold_nibble_blocks::<4, 16>(planes, dst);
                true
            }
            _ => false,
        }
    }

    /// Merges one block at a time, every field of it, so each block is written once while it
    /// is in L1 (a pass per plane re-reads the whole chunk for every scale byte). The fields
    /// of the common widths go through fixed-size functions the compiler vectorizes.
    fn merge_block_major(&self, planes: &[&[u8]], dst: &mut [u8]) {
        let unit = self.unit;
        for (u, block) in dst.chunks_exact_mut(unit).enumerate() {
            let mut p = 0;
            for &part in &self.parts {
                match part {
                    Part::Copy { off, width: 1 } => block[off] = planes[p][u],
                    Part::Copy { off, width } => block[off..off + width]
                        .copy_from_slice(&planes[p][u * width..(u + 1) * width]),
                    Part::PairSplit {
                        off,
                        width,
                        shift,
                        hi_mask,
                        xor,
                    } => {
                        let half = width / 2;
                        merge_pair_field(
                            &mut block[off..off + width],
                            &planes[p][u * half..(u + 1) * half],
                            &planes[p + 1][u * half..(u + 1) * half],
                            (shift, hi_mask, xor),
                        );
                    }
                    Part::NibbleFold { off, width } => {
                        let (q, field) = (width / 4, &mut block[off..off + width]);
                        let m = &planes[p][u * q..(u + 1) * q];
                        let h = &planes[p + 1][u * q..(u + 1) * q];
                        let l = &planes[p + 2][u * 2 * q..(u + 1) * 2 * q];
                        match width {
                            128 => merge_nibble_fold::<128>(field, m, h, l),
                            16 => merge_nibble_fold::<16>(field, m, h, l),
                            _ => merge_nibble_fold_any(field, m, h, l),
                        }
                    }
                    Part::Int8Fold { off, width } => {
                        let (q, field) = (width / 4, &mut block[off..off + width]);
                        let m = &planes[p][u * q..(u + 1) * q];
                        let s = &planes[p + 1][u * q..(u + 1) * q];
                        let l = &planes[p + 2][u * 2 * q..(u + 1) * 2 * q];
                        match width {
                            32 => merge_int8_fold::<32>(field, m, s, l),
                            _ => merge_int8_fold_any(field, m, s, l),
                        }
                    }
                    Part::CrumbFold { off, width } => {
                        let (half, field) = (width / 2, &mut block[off..off + width]);
                        let m = &planes[p][u * half..(u + 1) * half];
                        let h = &planes[p + 1][u * half..(u + 1) * half];
                        match width {
                            64 => merge_crumb_fold::<64>(field, m, h),
                            _ => merge_crumb_fold_any(field, m, h),
                        }
                    }
                }
                p += part.planes();
            }
        }
    }

    /// One pass over the chunk for the common quant-split layouts (Q8_0, Q4_0, Q4_1: one
    /// single-byte plane per scale byte, then one pair-split field) instead of one pass per
    /// plane; fixed sizes let the compiler vectorize each block. 8% faster decoding of a
    /// Q4_1/Q8_0 model. Returns false, leaving `dst` alone, for any other layout.
    fn merge_quant_blocks(&self, planes: &[&[u8]], dst: &mut [u8]) -> bool {
        let [
            copies @ ..,
            Part::PairSplit {
                off,
                width,
                shift,
                hi_mask,
                xor,
            },
        ] = self.parts.as_slice()
        else {
            return false;
        };
        let single_bytes = copies
            .iter()
            .enumerate()
            .all(|(k, p)| matches!(p, Part::Copy { off, width: 1 } if *off == k));
        if !single_bytes || *off != copies.len() || self.unit != off + width {
            return false;
        }
        let pair = (*shift, *hi_mask, *xor);
        match (copies.len(), *width) {
            (2, 32) => merge_blocks::<2, 16>(dst, planes, pair), // Q8_0
            (2, 16) => merge_blocks::<2, 8>(dst, planes, pair),  // Q4_0
            (4, 16) => merge_blocks::<4, 8>(dst, planes, pair),  // Q4_1
            _ => return false,
        }
        true
    }
}

/// [`Layout::merge`] for blocks of `COPIES` single-byte planes followed by a pair-split field
/// of `2 * HALF` bytes.
fn merge_blocks<const COPIES: usize, const HALF: usize>(
    dst: &mut [u8],
    planes: &[&[u8]],
    (shift, m, xor): (u32, u8, u8),
) {
    let unit = COPIES + 2 * HALF;
    let (copies, pair) = planes.split_at(COPIES);
    let (hi, lo) = (pair[0], pair[1]);
    for (u, block) in dst.chunks_exact_mut(unit).enumerate() {
        for (k, plane) in copies.iter().enumerate() {
            block[k] = plane[u];
        }
        let h: &[u8; HALF] = hi[u * HALF..(u + 1) * HALF].try_into().expect("HALF bytes");
        let l: &[u8; HALF] = lo[u * HALF..(u + 1) * HALF].try_into().expect("HALF bytes");
        let field: &mut [u8] = &mut block[COPIES..];
        for i in 0..HALF {
            field[2 * i] = (((h[i] << shift) & m) | (l[i] & !m)) ^ xor;
            field[2 * i + 1] = ((h[i] & m) | ((l[i] >> shift) & !m)) ^ xor;
        }
    }
}

/// Fold-split blocks of `COPIES` single-byte planes followed by a nibble field of `W` bytes.
#[inline(always)]
pub(super) fn merge_fold_nibble_blocks<const COPIES: usize, const W: usize>(
    planes: &[&[u8]],
    dst: &mut [u8],
) {
    let (copies, nibbles) = planes.split_at(COPIES);
    let (q, half) = (W / 4, W / 2);
    for (u, b) in dst.chunks_exact_mut(COPIES + W).enumerate() {
        let (head, qs) = b.split_at_mut(COPIES);
        for (k, plane) in copies.iter().enumerate() {
            head[k] = plane[u];
        }
        let (m, h) = (
            &nibbles[0][u * q..(u + 1) * q],
            &nibbles[1][u * q..(u + 1) * q],
        );
        merge_nibble_fold::<W>(qs, m, h, &nibbles[2][u * half..(u + 1) * half]);
    }
}

/// One nibble field `x` split into its M, H and L planes' bytes (see [`Part::NibbleFold`]).
fn split_nibble_fold(x: &[u8], m: &mut [u8], h: &mut [u8], l: &mut [u8]) {
    if m.len().is_multiple_of(8) {
        split_nibble_fold_words(x, m, h, l)
    } else {
        split_nibble_fold_bytes(x, m, h, l)
    }
}

/// [`split_nibble_fold`] a byte at a time, for any field width.
fn split_nibble_fold_bytes(x: &[u8], m: &mut [u8], h: &mut [u8], l: &mut [u8]) {
    let (q, half) = (m.len(), l.len());
    m.fill(0);
    h.fill(0);
    for j in 0..4 {
        for k in 0..q {
            let y = fold_nibbles(x[j * q + k]);
            m[k] |= ((y >> 2) & 0x11) << j;
            h[k] |= ((y >> 3) & 0x11) << j;
        }
    }
    for k in 0..half {
        l[k] = (x[k] & 0x33) | (x[k + half] & 0x33) << 2;
    }
}

/// Eight bytes at `i` of `x`, as a little-endian word.
#[inline(always)]
fn word(x: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(x[i..i + 8].try_into().expect("eight bytes"))
}

/// A word with `b` in each of its eight bytes.
const fn bytes(b: u8) -> u64 {
    u64::from_le_bytes([b; 8])
}

/// [`split_nibble_fold`] eight bytes a step, for fields whose quarter is a multiple of eight
/// bytes (Q4_K's and Q6_K's 128): the byte loop was the biggest part of a K-quant model's
/// compression. Each step's shifts and masks keep every bit inside its own byte.
fn split_nibble_fold_words(x: &[u8], m: &mut [u8], h: &mut [u8], l: &mut [u8]) {
    let (q, half) = (m.len(), l.len());
    for k in (0..q).step_by(8) {
        let (mut mw, mut hw) = (0u64, 0u64);
        for j in 0..4 {
            let v = word(x, j * q + k);
            let y = v ^ ((v & bytes(0x88)) >> 1);
            mw |= ((y >> 2) & bytes(0x11)) << j;
            hw |= ((y >> 3) & bytes(0x11)) << j;
        }
        m[k..k + 8].copy_from_slice(&mw.to_le_bytes());
        h[k..k + 8].copy_from_slice(&hw.to_le_bytes());
    }
    for k in (0..half).step_by(8) {
        let lw = (word(x, k) & bytes(0x33)) | (word(x, k + half) & bytes(0x33)) << 2;
        l[k..k + 8].copy_from_slice(&lw.to_le_bytes());
    }
}

/// One int8 field `x` split into its M, S and L planes' bytes (see [`Part::Int8Fold`]).
fn split_int8_fold(x: &[u8], m: &mut [u8], s: &mut [u8], l: &mut [u8]) {
    if m.len().is_multiple_of(8) {
        split_int8_fold_words(x, m, s, l)
    } else {
        split_int8_fold_bytes(x, m, s, l)
    }
}

/// [`split_int8_fold`] a byte at a time, for any field width.
fn split_int8_fold_bytes(x: &[u8], m: &mut [u8], s: &mut [u8], l: &mut [u8]) {
    let (q, half) = (m.len(), l.len());
    m.fill(0);
    s.fill(0);
    for j in 0..4 {
        for k in 0..q {
            let y = fold_int8(x[j * q + k]);
            m[k] |= ((y >> 5) & 3) << (2 * j);
            s[k] |= (((y >> 4) & 1) | (y >> 7) << 1) << (2 * j);
        }
    }
    for k in 0..half {
        l[k] = (fold_int8(x[k]) & 0x0F) | fold_int8(x[k + half]) << 4;
    }
}

/// [`fold_int8`] of eight bytes at once: a negative byte's sign bit, moved to bit 0 and
/// multiplied by 0x7F, is that byte's XOR mask (no carry leaves a byte).
#[inline(always)]
fn fold_int8_word(v: u64) -> u64 {
    v ^ (((v >> 7) & bytes(0x01)) * 0x7F)
}

/// [`split_int8_fold`] eight bytes a step, for fields whose quarter is a multiple of eight
/// bytes (Q8_0's 32): its byte loop was 35% of a Q8_0 model's compression in `perf`. Each
/// step's shifts and masks keep every bit inside its own byte.
fn split_int8_fold_words(x: &[u8], m: &mut [u8], s: &mut [u8], l: &mut [u8]) {
    let (q, half) = (m.len(), l.len());
    for k in (0..q).step_by(8) {
        let (mut mw, mut sw) = (0u64, 0u64);
        for j in 0..4 {
            let y = fold_int8_word(word(x, j * q + k));
            mw |= ((y >> 5) & bytes(0x03)) << (2 * j);
            sw |= (((y >> 4) & bytes(0x01)) | ((y >> 7) & bytes(0x01)) << 1) << (2 * j);
        }
        m[k..k + 8].copy_from_slice(&mw.to_le_bytes());
        s[k..k + 8].copy_from_slice(&sw.to_le_bytes());
    }
    for k in (0..half).step_by(8) {
        let (lo, hi) = (
            fold_int8_word(word(x, k)),
            fold_int8_word(word(x, k + half)),
        );
        let lw = (lo & bytes(0x0F)) | (hi & bytes(0x0F)) << 4;
        l[k..k + 8].copy_from_slice(&lw.to_le_bytes());
    }
}

/// Int8 sign fold: a negative value's low seven bits are inverted (its own inverse: the sign
/// bit is kept).
#[inline(always)]
fn fold_int8(x: u8) -> u8 {
    x ^ (((x as i8) >> 7) as u8 & 0x7F)
}

/// Inverse of the int8-fold split for one field of `W` bytes (see [`Part::Int8Fold`]).
#[inline(always)]
fn merge_int8_fold<const W: usize>(field: &mut [u8], m: &[u8], s: &[u8], l: &[u8]) {
    let field: &mut [u8; W] = field.try_into().expect("W bytes");
    merge_int8_fold_any(field, &m[..W / 4], &s[..W / 4], &l[..W / 2]);
}

/// Q8_0 blocks (d, then a 32-byte int8-fold field) from their five planes, one block per
/// 32-byte vector: the compiler does not vectorize [`merge_int8_fold`]'s per-group shifts
/// (measured: 2.5x slower decode of a Q8_0 model than this). Each plane's bytes for a block are
/// broadcast to the four 8-byte groups of the field and shifted by the group's own count.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn merge_q8_0_fold_avx2([d0, d1, m, s, l]: [&[u8]; 5], dst: &mut [u8]) {
    use std::arch::x86_64::*;
    let blocks = dst.len() / 34;
    // The planes of a split chunk of `blocks` blocks; checked so that every load below is
    // in bounds.
    assert!(d0.len() >= blocks && d1.len() >= blocks);
    assert!(m.len() >= blocks * 8 && s.len() >= blocks * 8 && l.len() >= blocks * 16);
    // SAFETY: block u reads m and s at [8u, 8u + 8) and l at [16u, 16u + 16), inside the
    // lengths asserted above, and writes dst at [34u, 34u + 34) with u < dst.len() / 34.
    unsafe {
        let group_shift = _mm256_setr_epi64x(0, 2, 4, 6);
        let nibble_shift = _mm256_setr_epi64x(0, 0, 4, 4);
        let low2 = _mm256_set1_epi8(0x03);
        let bit0 = _mm256_set1_epi8(0x01);
        let bit1 = _mm256_set1_epi8(0x02);
        let low4 = _mm256_set1_epi8(0x0F);
        let seven = _mm256_set1_epi8(0x7F);
        let zero = _mm256_setzero_si256();
        for u in 0..blocks {
            let out = dst.as_mut_ptr().add(34 * u);
            *out = d0[u];
            *out.add(1) = d1[u];
            let mv = _mm256_broadcastq_epi64(_mm_loadl_epi64(m.as_ptr().add(8 * u).cast()));
            let sv = _mm256_broadcastq_epi64(_mm_loadl_epi64(s.as_ptr().add(8 * u).cast()));
            let lv = _mm256_broadcastsi128_si256(_mm_loadu_si128(l.as_ptr().add(16 * u).cast()));
            let mv = _mm256_and_si256(_mm256_srlv_epi64(mv, group_shift), low2);
            let sv = _mm256_srlv_epi64(sv, group_shift);
            let lv = _mm256_and_si256(_mm256_srlv_epi64(lv, nibble_shift), low4);
            // Bits 0-1 of each byte now hold its group's two bits; move them into place
            // (16-bit shifts: the masks keep bits from crossing into the next byte).
            let y = _mm256_or_si256(
                _mm256_or_si256(lv, _mm256_slli_epi16::<5>(mv)),
                _mm256_or_si256(
                    _mm256_slli_epi16::<4>(_mm256_and_si256(sv, bit0)),
                    _mm256_slli_epi16::<6>(_mm256_and_si256(sv, bit1)),
                ),
            );
            let negative = _mm256_cmpgt_epi8(zero, y);
            let x = _mm256_xor_si256(y, _mm256_and_si256(negative, seven));
            _mm256_storeu_si256(out.add(2).cast(), x);
        }
    }
}

/// [`merge_int8_fold`] for any width (a multiple of 4).
#[inline(always)]
fn merge_int8_fold_any(field: &mut [u8], m: &[u8], s: &[u8], l: &[u8]) {
    let q = field.len() / 4;
    for j in 0..4 {
        // Bytes j*q.. take their low nibble from L's low (j < 2) or high (j >= 2) nibbles.
        let (l_from, l_shift) = ((j % 2) * q, (j / 2) * 4);
        for k in 0..q {
            let y = ((l[l_from + k] >> l_shift) & 0x0F)
                | ((s[k] >> (2 * j)) & 1) << 4
                | ((m[k] >> (2 * j)) & 3) << 5
                | ((s[k] >> (2 * j + 1)) & 1) << 7;
            field[j * q + k] = fold_int8(y);
        }
    }
}

/// One crumb field `x` split into its M and H planes' bytes (see [`Part::CrumbFold`]).
fn split_crumb_fold(x: &[u8], m: &mut [u8], h: &mut [u8]) {
    let half = m.len();
    for k in 0..half {
        let (a, b) = (fold_crumbs(x[k]), fold_crumbs(x[k + half]));
        m[k] = (a & 0x55) | (b & 0x55) << 1;
        h[k] = (a & 0xAA) >> 1 | (b & 0xAA);
    }
}

/// Nibble fold: bit 2 of each nibble becomes bit 2 XOR bit 3 (its own inverse).
fn fold_nibbles(x: u8) -> u8 {
    x ^ ((x & 0x88) >> 1)
}

/// Crumb fold: bit 0 of each 2-bit value becomes bit 0 XOR bit 1 (its own inverse).
fn fold_crumbs(x: u8) -> u8 {
    x ^ ((x & 0xAA) >> 1)
}

/// Inverse of the nibble-fold split for one field of `W` bytes (see [`Part::NibbleFold`]);
/// `W` is a constant so that every loop of the inlined body has a fixed trip count and
/// vectorizes.
#[inline(always)]
fn merge_nibble_fold<const W: usize>(field: &mut [u8], m: &[u8], h: &[u8], l: &[u8]) {
    let field: &mut [u8; W] = field.try_into().expect("W bytes");
    merge_nibble_fold_any(field, &m[..W / 4], &h[..W / 4], &l[..W / 2]);
}

/// [`merge_nibble_fold`] for any width (a multiple of 4).
#[inline(always)]
fn merge_nibble_fold_any(field: &mut [u8], m: &[u8], h: &[u8], l: &[u8]) {
    let q = field.len() / 4;
    for j in 0..4 {
        // Bytes j*q.. take their low bits from L's low (j < 2) or high (j >= 2) half-nibbles.
        let (l_from, l_shift) = ((j % 2) * q, (j / 2) * 2);
        for k in 0..q {
            let y = ((l[l_from + k] >> l_shift) & 0x33)
                | (((m[k] >> j) & 0x11) << 2)
                | (((h[k] >> j) & 0x11) << 3);
            field[j * q + k] = fold_nibbles(y);
        }
    }
}

/// Inverse of the crumb-fold split for one field of `W` bytes (see [`Part::CrumbFold`]).
#[inline(always)]
fn merge_crumb_fold<const W: usize>(field: &mut [u8], m: &[u8], h: &[u8]) {
    let field: &mut [u8; W] = field.try_into().expect("W bytes");
    merge_crumb_fold_any(field, &m[..W / 2], &h[..W / 2]);
}

/// [`merge_crumb_fold`] for any even width.
#[inline(always)]
fn merge_crumb_fold_any(field: &mut [u8], m: &[u8], h: &[u8]) {
    let half = field.len() / 2;
    let (lo, hi) = field.split_at_mut(half);
    for k in 0..half {
        lo[k] = fold_crumbs((m[k] & 0x55) | ((h[k] << 1) & 0xAA));
        hi[k] = fold_crumbs(((m[k] >> 1) & 0x55) | (h[k] & 0xAA));
    }
}

/// Inverse of the pair split for one field: `field` gets its bytes back from its high and
/// low planes' bytes `h` and `l` (`field.len() / 2` each).
fn merge_pair_field(field: &mut [u8], h: &[u8], l: &[u8], (shift, m, xor): (u32, u8, u8)) {
    for ((pair, &hb), &lb) in field.chunks_exact_mut(2).zip(h).zip(l) {
        pair[0] = (((hb << shift) & m) | (lb & !m)) ^ xor;
        pair[1] = ((hb & m) | ((lb >> shift) & !m)) ^ xor;
    }
}

fn split_u16(src: &[u8], out: &mut Vec<u8>, rot: u32) {
    let n = src.len() / 2;
    out.resize(src.len(), 0);
    let (lo, hi) = out.split_at_mut(n);
    for ((e, l), h) in src.chunks_exact(2).zip(lo).zip(hi) {
        let v = u16::from_le_bytes([e[0], e[1]]).rotate_left(rot);
        *l = v as u8;
        *h = (v >> 8) as u8;
    }
}

fn merge_u16(planes: &[&[u8]], dst: &mut [u8], rot: u32) {
    let n = dst.len() / 2;
    let (p0, p1) = (&planes[0][..n], &planes[1][..n]);
    // Sixteen elements at a time with SSE2 (every x86-64 has it): the compiler's own
    // vectorization of the loop below measured about a third of this speed (F16/BF16 models
    // spend a tenth of their decode here).
    #[cfg(target_arch = "x86_64")]
    let done = merge_u16_sse2(p0, p1, dst, rot);
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for ((d, &l), &h) in dst[2 * done..]
        .chunks_exact_mut(2)
        .zip(&p0[done..])
        .zip(&p1[done..])
    {
        let v = u16::from_le_bytes([l, h]).rotate_right(rot);
        d.copy_from_slice(&v.to_le_bytes());
    }
}

/// [`merge_u16`] for whole groups of sixteen elements; returns the elements done.
#[cfg(target_arch = "x86_64")]
fn merge_u16_sse2(p0: &[u8], p1: &[u8], dst: &mut [u8], rot: u32) -> usize {
    use std::arch::x86_64::*;
    let groups = p0.len().min(p1.len()).min(dst.len() / 2) / 16;
    // SAFETY: SSE2 is part of x86-64. Group g reads bytes [16g, 16g + 16) of p0 and p1 and
    // writes [32g, 32g + 32) of dst; g < groups keeps all of them in bounds (unaligned
    // loads and stores).
    unsafe {
        let right = _mm_cvtsi32_si128(rot as i32);
        let left = _mm_cvtsi32_si128(16 - rot as i32);
        for g in 0..groups {
            let l = _mm_loadu_si128(p0.as_ptr().add(16 * g).cast());
            let h = _mm_loadu_si128(p1.as_ptr().add(16 * g).cast());
            // A shift by 16 gives 0, so rot = 0 leaves the value as it is.
            let rotate = |v| _mm_or_si128(_mm_srl_epi16(v, right), _mm_sll_epi16(v, left));
            let out = dst.as_mut_ptr().add(32 * g);
            _mm_storeu_si128(out.cast(), rotate(_mm_unpacklo_epi8(l, h)));
            _mm_storeu_si128(out.add(16).cast(), rotate(_mm_unpackhi_epi8(l, h)));
        }
    }
    groups * 16
}

fn split_u32(src: &[u8], out: &mut Vec<u8>, rot: u32) {
    let n = src.len() / 4;
    out.resize(src.len(), 0);
    let (p0, rest) = out.split_at_mut(n);
    let (p1, rest) = rest.split_at_mut(n);
    let (p2, p3) = rest.split_at_mut(n);
    for (i, e) in src.chunks_exact(4).enumerate() {
        let v = u32::from_le_bytes([e[0], e[1], e[2], e[3]]).rotate_left(rot);
        let b = v.to_le_bytes();
        p0[i] = b[0];
        p1[i] = b[1];
        p2[i] = b[2];
        p3[i] = b[3];
    }
}

fn merge_u32(planes: &[&[u8]], dst: &mut [u8], rot: u32) {
    let (p0, p1, p2, p3) = (planes[0], planes[1], planes[2], planes[3]);
    let n = dst.len() / 4;
    let (p0, p1, p2, p3) = (&p0[..n], &p1[..n], &p2[..n], &p3[..n]);
    // As in merge_u16: explicit SSE2 measured faster than the compiler's vectorization.
    #[cfg(target_arch = "x86_64")]
    let done = merge_u32_sse2([p0, p1, p2, p3], dst, rot);
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for (i, d) in dst.chunks_exact_mut(4).enumerate().skip(done) {
        let v = u32::from_le_bytes([p0[i], p1[i], p2[i], p3[i]]).rotate_right(rot);
        d.copy_from_slice(&v.to_le_bytes());
    }
}

/// [`merge_u32`] for whole groups of sixteen elements; returns the elements done.
#[cfg(target_arch = "x86_64")]
fn merge_u32_sse2([p0, p1, p2, p3]: [&[u8]; 4], dst: &mut [u8], rot: u32) -> usize {
    use std::arch::x86_64::*;
    let n = p0.len().min(p1.len()).min(p2.len()).min(p3.len());
    let groups = n.min(dst.len() / 4) / 16;
    // SAFETY: SSE2 is part of x86-64. Group g reads bytes [16g, 16g + 16) of each plane and
    // writes [64g, 64g + 64) of dst; g < groups keeps all of them in bounds (unaligned
    // loads and stores).
    unsafe {
        let right = _mm_cvtsi32_si128(rot as i32);
        let left = _mm_cvtsi32_si128(32 - rot as i32);
        let rotate = |v| _mm_or_si128(_mm_srl_epi32(v, right), _mm_sll_epi32(v, left));
        for g in 0..groups {
            let load = |p: &[u8]| _mm_loadu_si128(p.as_ptr().add(16 * g).cast());
            let (b0, b1, b2, b3) = (load(p0), load(p1), load(p2), load(p3));
            let (lo01, hi01) = (_mm_unpacklo_epi8(b0, b1), _mm_unpackhi_epi8(b0, b1));
            let (lo23, hi23) = (_mm_unpacklo_epi8(b2, b3), _mm_unpackhi_epi8(b2, b3));
            let out = dst.as_mut_ptr().add(64 * g);
            _mm_storeu_si128(out.cast(), rotate(_mm_unpacklo_epi16(lo01, lo23)));
            _mm_storeu_si128(out.add(16).cast(), rotate(_mm_unpackhi_epi16(lo01, lo23)));
            _mm_storeu_si128(out.add(32).cast(), rotate(_mm_unpacklo_epi16(hi01, hi23)));
            _mm_storeu_si128(out.add(48).cast(), rotate(_mm_unpackhi_epi16(hi01, hi23)));
        }
    }
    groups * 16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `src` split into its planes, one vector each.
    fn planes_of(l: &Layout, src: &[u8]) -> Vec<Vec<u8>> {
        let mut planes = Vec::new();
        l.split(src, &mut planes);
        assert_eq!(planes.len(), src.len());
        let mut rest = &planes[..];
        l.plane_lens(src.len())
            .map(|len| {
                let (a, b) = rest.split_at(len);
                rest = b;
                a.to_vec()
            })
            .collect()
    }

    fn roundtrip(ty: GgmlType, t: Transform, n_units: usize) {
        let l = Layout::new(t, ty);
        let src: Vec<u8> = (0..n_units * l.unit())
            .map(|i| ((i * 2654435761usize) >> 7) as u8)
            .collect();
        let planes = planes_of(&l, &src);
        let parts: Vec<&[u8]> = planes.iter().map(Vec::as_slice).collect();
        let mut dst = vec![0u8; src.len()];
        l.merge(&parts, &mut dst);
        assert_eq!(dst, src, "{ty} {t:?}");
    }

    #[test]
    fn float_merges_give_the_original_at_every_length() {
        // The SSE2 merges take sixteen elements at a time and the portable loop the rest:
        // every split point between the two, with both rotations.
        for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
            for t in [
                Transform::default_for(ty),
                Transform::ByteSplit {
                    width: ty.block_bytes() as u8,
                },
            ] {
                for n in (0..70).chain([1000, 4099]) {
                    roundtrip(ty, t, n);
                }
            }
        }
    }

    /// Five units of patterned bytes for `l`, and their planes.
    fn five_units_split(l: &Layout) -> (Vec<u8>, Vec<Vec<u8>>) {
        let src: Vec<u8> = (0..5 * l.unit()).map(|i| (i * 37 + 11) as u8).collect();
        let planes = planes_of(l, &src);
        (src, planes)
    }

    #[test]
    fn common_quant_layouts_take_the_one_pass_merge() {
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            let l = Layout::new(Transform::QuantSplit, ty);
            let (src, planes) = five_units_split(&l);
            let parts: Vec<&[u8]> = planes.iter().map(Vec::as_slice).collect();
            let mut dst = vec![0u8; src.len()];
            assert!(l.merge_quant_blocks(&parts, &mut dst), "{ty}");
            assert_eq!(dst, src, "{ty}");
        }
        let fields = Layout::new(Transform::BlockFields, GgmlType::Q8_0);
        assert!(!fields.merge_quant_blocks(&[], &mut []));
    }

    #[test]
    fn common_fold_layouts_take_the_fixed_size_merge() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
            GgmlType::Q8_0,
        ] {
            let l = Layout::new(Transform::FoldSplit, ty);
            let (src, planes) = five_units_split(&l);
            let parts: Vec<&[u8]> = planes.iter().map(Vec::as_slice).collect();
            let mut fixed = vec![0u8; src.len()];
            assert!(l.merge_fold_blocks(&parts, &mut fixed), "{ty}");
            assert_eq!(fixed, src, "{ty}");
            // The baseline copy, whichever copy this CPU's dispatch picks.
            let mut baseline = vec![0u8; src.len()];
            assert!(l.merge_fold_blocks_inline(&parts, &mut baseline), "{ty}");
            assert_eq!(baseline, src, "{ty}");
            // The per-field path gives the same bytes (it serves the other fold layouts).
            let mut general = vec![0u8; src.len()];
            l.merge_block_major(&parts, &mut general);
            assert_eq!(general, src, "{ty}");
        }
        let other = Layout::new(Transform::FoldSplit, GgmlType::Q5_K);
        assert!(!other.merge_fold_blocks(&[], &mut []));
    }

    /// `n` pseudo-random bytes from `seed` (xorshift64).
    fn xorshift_bytes(mut state: u64, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// A fold split of one field into its three planes.
    type FoldSplit = fn(&[u8], &mut [u8], &mut [u8], &mut [u8]);

    #[test]
    fn word_splits_equal_the_byte_splits() {
        for width in [32, 64, 128, 256] {
            let x = xorshift_bytes(0x2545_F491_4F6C_DD1D ^ width as u64, width);
            let (q, half) = (width / 4, width / 2);
            let split = |f: FoldSplit| {
                let (mut a, mut b, mut c) = (vec![0xA5; q], vec![0x5A; q], vec![0xC3; half]);
                f(&x, &mut a, &mut b, &mut c);
                (a, b, c)
            };
            assert_eq!(
                split(split_nibble_fold_words),
                split(split_nibble_fold_bytes),
                "nibbles, {width}"
            );
            assert_eq!(
                split(split_int8_fold_words),
                split(split_int8_fold_bytes),
                "int8, {width}"
            );
        }
    }

    #[test]
    fn every_simd_merge_of_the_fold_layouts_gives_the_original_blocks() {
        for ty in [
            GgmlType::Q4_K,
            GgmlType::Q6_K,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
        ] {
            let l = Layout::new(Transform::FoldSplit, ty);
            // 16, 17, 35 and 64: the Q4_0/Q4_1 merge's rounds of sixteen blocks, and tails.
            for blocks in [1, 2, 3, 7, 16, 17, 35, 64] {
                let src = xorshift_bytes(0x9E37_79B9_7F4A_7C15 ^ blocks as u64, blocks * l.unit());
                let planes = planes_of(&l, &src);
                let parts: Vec<&[u8]> = planes.iter().map(Vec::as_slice).collect();
                let mut dst = vec![0u8; src.len()];
                assert!(l.merge_fold_blocks_inline(&parts, &mut dst));
                assert_eq!(dst, src, "{ty} x {blocks}, baseline");
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") {
                    dst.fill(0);
                    // SAFETY: the CPU has AVX2 (detected just above).
                    assert!(unsafe { l.merge_fold_blocks_avx2(&parts, &mut dst) });
                    assert_eq!(dst, src, "{ty} x {blocks}, AVX2");
                }
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                {
                    dst.fill(0);
                    // SAFETY: the CPU has AVX-512 F, BW and VL (detected just above).
                    assert!(unsafe { l.merge_fold_blocks_avx512(&parts, &mut dst) });
                    assert_eq!(dst, src, "{ty} x {blocks}, AVX-512");
                }
            }
        }
    }

    #[test]
    fn folding_moves_the_top_bits_redundancy_into_one_bit_per_value() {
        // Bit 2 of a nibble XOR bit 3 is 1 exactly for the middle values 4..=11.
        for v in 0u8..16 {
            let y = fold_nibbles(v | v << 4);
            assert_eq!((y >> 2) & 1 == 1, (4..=11).contains(&v), "{v}");
            assert_eq!(fold_nibbles(y), v | v << 4);
        }
        // For 2-bit values bit 0 XOR bit 1 is 1 for the middle values 1 and 2.
        for v in 0u8..4 {
            let y = fold_crumbs(v * 0x55);
            assert_eq!(y & 1 == 1, v == 1 || v == 2, "{v}");
            assert_eq!(fold_crumbs(y), v * 0x55);
        }
    }

    #[test]
    fn int8_folding_leaves_the_sign_raw_and_codes_two_magnitude_bits_per_value() {
        // Every int8 value in every position: the fold is exact and its own inverse, the sign
        // lands in S, and small magnitudes give zero M bits whatever their sign.
        for x in 0..=255u8 {
            assert_eq!(fold_int8(fold_int8(x)), x);
        }
        let l = Layout::new(Transform::FoldSplit, GgmlType::Q8_0);
        assert_eq!(l.plane_count(), 5);
        let block = |q: &dyn Fn(usize) -> i8| -> Vec<u8> {
            let mut b = vec![0x00, 0x3C];
            b.extend((0..32).map(|i| q(i) as u8));
            b
        };
        let small = block(&|i| {
            if i % 3 == 0 {
                -((i % 31) as i8)
            } else {
                (i % 31) as i8
            }
        });
        let planes = planes_of(&l, &small);
        assert!(
            planes[2].iter().all(|&m| m == 0),
            "M of |x| < 32: {:?}",
            planes[2]
        );
        let negative = planes_of(&l, &block(&|_| -1));
        assert!(
            negative[3].iter().all(|&s| s == 0xAA),
            "S: sign bits {:?}",
            negative[3]
        );
        assert!(negative[2].iter().all(|&m| m == 0) && negative[4].iter().all(|&l| l == 0));
        for x in [-128i8, -97, -33, -1, 0, 31, 32, 96, 127] {
            let planes = planes_of(&l, &block(&|_| x));
            let mut back = vec![0u8; 34];
            let parts: Vec<&[u8]> = planes.iter().map(Vec::as_slice).collect();
            l.merge(&parts, &mut back);
            assert_eq!(back, block(&|_| x), "{x}");
        }
    }

    #[test]
    fn every_transform_round_trips() {
        for id in 0..64 {
            let Some(ty) = GgmlType::from_id(id) else {
                continue;
            };
            for tid in 0..6 {
                if let Some(t) = Transform::from_id(tid, ty) {
                    roundtrip(ty, t, 37);
                }
            }
        }
    }

    #[test]
    fn float_rotate_puts_the_exponent_in_the_top_plane() {
        let l = Layout::new(Transform::FloatRotate { width: 2 }, GgmlType::BF16);
        let v: u16 = 0b1011_1111_0101_0101; // sign 1, exponent 0x7E, mantissa 0x55
        let mut out = Vec::new();
        l.split(&v.to_le_bytes(), &mut out);
        assert_eq!(out[1], ((v >> 7) & 0xFF) as u8);
        assert_eq!(out[0] & 1, 1, "sign bit moved to the bottom");
    }
}
