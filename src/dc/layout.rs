//! How an original GGUF file divides into header, tensor data and the gap bytes in between.
//! Compressor and reader share this so that gaps are collected and restored identically.

use crate::gguf::GgufHeader;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// The original header bytes (metadata, tensor infos, padding).
    Header,
    /// Bytes between or after tensors; `at` is their offset in the concatenated gap blob.
    Gap { at: u64 },
    /// Data of the tensor with this index in the original tensor table.
    Tensor(usize),
}

/// A run `[start, start + len)` of the original file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub len: u64,
    pub piece: Piece,
}

impl Segment {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Splits a file of `file_len` bytes with this header into ordered, contiguous segments.
/// The header must have passed `check_data_fits(file_len)`.
pub fn segments(header: &GgufHeader, file_len: u64) -> Vec<Segment> {
    let header_len = header.data_offset.min(file_len);
    let mut out = vec![Segment {
        start: 0,
        len: header_len,
        piece: Piece::Header,
    }];
    let mut order: Vec<usize> = (0..header.tensors.len())
        .filter(|&i| header.tensors[i].nbytes > 0)
        .collect();
    order.sort_by_key(|&i| header.tensors[i].offset);
    let mut pos = header_len;
    let mut gap_at = 0;
    let mut gap = |out: &mut Vec<Segment>, from: u64, to: u64| {
        if to > from {
            out.push(Segment {
                start: from,
                len: to - from,
                piece: Piece::Gap { at: gap_at },
            });
            gap_at += to - from;
        }
    };
    for i in order {
        let range = header.tensor_range(&header.tensors[i]);
        gap(&mut out, pos, range.start);
        out.push(Segment {
            start: range.start,
            len: range.end - range.start,
            piece: Piece::Tensor(i),
        });
        pos = range.end;
    }
    gap(&mut out, pos, file_len);
    out
}
