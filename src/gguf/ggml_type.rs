//! The ggml tensor types GGUF files can hold: id, name, block geometry and field layout.
//!
//! Numbers follow `ggml.h` / `ggml-common.h` of llama.cpp (ids are stable on disk; retired ids
//! 4, 5, 31..33 and 36..38 are rejected like llama.cpp rejects them).

use std::fmt;

/// A ggml tensor type as stored in GGUF tensor infos.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType(u32);

/// How the bytes of one quantization block are laid out, field by field.
///
/// `Half` fields are IEEE fp16 scales; `Nibbles` are packed 4-bit quants (two per byte),
/// `Crumbs` are packed 2-bit quants or the top two bits of wider quants (four per byte, each
/// the high part of a value centred on the middle of its range), `Int8` are signed 8-bit
/// quants, `Bytes` are other byte arrays (packed scales, sign/high bits, sums). The codec uses
/// this to separate statistically different bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Half,
    Float,
    Bytes(u16),
    Nibbles(u16),
    Crumbs(u16),
    Int8(u16),
}

struct TypeInfo {
    name: &'static str,
    block_elems: u32,
    block_bytes: u32,
    fields: &'static [Field],
}

use Field::{Bytes, Crumbs, Float, Half, Int8, Nibbles};

const fn info(
    name: &'static str,
    block_elems: u32,
    block_bytes: u32,
    fields: &'static [Field],
) -> Option<TypeInfo> {
    Some(TypeInfo {
        name,
        block_elems,
        block_bytes,
        fields,
    })
}

/// Indexed by type id. `None` marks ids that were never assigned or were retired.
static TYPES: [Option<TypeInfo>; 40] = [
    info("F32", 1, 4, &[]),
    info("F16", 1, 2, &[]),
    info("Q4_0", 32, 18, &[Half, Nibbles(16)]),
    info("Q4_1", 32, 20, &[Half, Half, Nibbles(16)]),
    None,
    None,
    info("Q5_0", 32, 22, &[Half, Bytes(4), Nibbles(16)]),
    info("Q5_1", 32, 24, &[Half, Half, Bytes(4), Nibbles(16)]),
    info("Q8_0", 32, 34, &[Half, Int8(32)]),
    info("Q8_1", 32, 36, &[Half, Half, Int8(32)]),
    info("Q2_K", 256, 84, &[Bytes(16), Bytes(64), Half, Half]),
    info("Q3_K", 256, 110, &[Bytes(32), Bytes(64), Bytes(12), Half]),
    info("Q4_K", 256, 144, &[Half, Half, Bytes(12), Nibbles(128)]),
    info(
        "Q5_K",
        256,
        176,
        &[Half, Half, Bytes(12), Bytes(32), Nibbles(128)],
    ),
    info(
        "Q6_K",
        256,
        210,
        &[Nibbles(128), Crumbs(64), Bytes(16), Half],
    ),
    info("Q8_K", 256, 292, &[Float, Int8(256), Bytes(32)]),
    info("IQ2_XXS", 256, 66, &[]),
    info("IQ2_XS", 256, 74, &[]),
    info("IQ3_XXS", 256, 98, &[]),
    info("IQ1_S", 256, 50, &[]),
    info("IQ4_NL", 32, 18, &[Half, Nibbles(16)]),
    info("IQ3_S", 256, 110, &[]),
    info("IQ2_S", 256, 82, &[]),
    info(
        "IQ4_XS",
        256,
        136,
        &[Half, Bytes(2), Bytes(4), Nibbles(128)],
    ),
    info("I8", 1, 1, &[]),
    info("I16", 1, 2, &[]),
    info("I32", 1, 4, &[]),
    info("I64", 1, 8, &[]),
    info("F64", 1, 8, &[]),
    info("IQ1_M", 256, 56, &[]),
    info("BF16", 1, 2, &[]),
    None,
    None,
    None,
    info("TQ1_0", 256, 54, &[]),
    info("TQ2_0", 256, 66, &[]),
    None,
    None,
    None,
    info("MXFP4", 32, 17, &[]),
];

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q5_0: GgmlType = GgmlType(6);
    pub const Q5_1: GgmlType = GgmlType(7);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q2_K: GgmlType = GgmlType(10);
    pub const Q3_K: GgmlType = GgmlType(11);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q5_K: GgmlType = GgmlType(13);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const IQ4_NL: GgmlType = GgmlType(20);
    pub const IQ2_XS: GgmlType = GgmlType(17);
    pub const I8: GgmlType = GgmlType(24);
    pub const I32: GgmlType = GgmlType(26);
    pub const BF16: GgmlType = GgmlType(30);

    /// Returns the type for a raw id, or `None` when ggml does not define it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPES
            .get(id as usize)
            .and_then(|t| t.as_ref())
            .map(|_| GgmlType(id))
    }

    /// Looks a type up by its ggml name (case-insensitive), e.g. `"q8_0"`.
    pub fn from_name(name: &str) -> Option<GgmlType> {
        TYPES.iter().enumerate().find_map(|(id, t)| {
            t.as_ref()
                .filter(|t| t.name.eq_ignore_ascii_case(name))
                .map(|_| GgmlType(id as u32))
        })
    }

    pub fn id(self) -> u32 {
        self.0
    }

    fn info(self) -> &'static TypeInfo {
        TYPES[self.0 as usize]
            .as_ref()
            .expect("GgmlType is only constructed for defined ids")
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Elements per quantization block (1 for plain numeric types).
    pub fn block_elems(self) -> u64 {
        u64::from(self.info().block_elems)
    }

    /// Bytes per quantization block (element size for plain numeric types).
    pub fn block_bytes(self) -> u64 {
        u64::from(self.info().block_bytes)
    }

    /// Field layout of one block; empty for plain numeric and opaque (IQ*, TQ*) types.
    pub fn fields(self) -> &'static [Field] {
        self.info().fields
    }

    /// Byte size of a tensor with `n_elems` elements, or `None` when `n_elems` is not a whole
    /// number of blocks or the size overflows.
    pub fn nbytes(self, n_elems: u64) -> Option<u64> {
        let be = self.block_elems();
        if !n_elems.is_multiple_of(be) {
            return None;
        }
        (n_elems / be).checked_mul(self.block_bytes())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Field {
    /// Bytes this field takes in a block.
    pub fn byte_len(self) -> usize {
        match self {
            Field::Half => 2,
            Field::Float => 4,
            Field::Bytes(n) | Field::Nibbles(n) | Field::Crumbs(n) | Field::Int8(n) => n as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_layouts_add_up_to_block_size() {
        for id in 0..64 {
            if let Some(t) = GgmlType::from_id(id) {
                let sum: usize = t.fields().iter().map(|f| f.byte_len()).sum();
                assert!(
                    t.fields().is_empty() || sum as u64 == t.block_bytes(),
                    "{t}: fields sum {sum} != block {}",
                    t.block_bytes()
                );
            }
        }
    }

    #[test]
    fn retired_and_unknown_ids_are_rejected() {
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 40, 1000, u32::MAX] {
            assert!(GgmlType::from_id(id).is_none(), "id {id}");
        }
        assert_eq!(GgmlType::from_name("q8_0"), Some(GgmlType::Q8_0));
        assert_eq!(GgmlType::Q4_K.nbytes(512), Some(288));
        assert_eq!(GgmlType::Q4_K.nbytes(100), None);
    }
}
