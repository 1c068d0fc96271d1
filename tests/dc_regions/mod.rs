//! The regions of a DC-GGUF file (format 2), for the bit-flip tests (tests/bitflip.rs,
//! tests/llama_bitflip.rs): the DC file's own GGUF header, `dc.index`, the two blobs, every
//! tensor chunk, and the padding nothing refers to. Needs `mod common` in the test crate.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ops::Range;

use crate::common::{Rng, chunk_range, dc_data_range, dc_index_range};
use dcgguf::dc::DcFile;

/// What a byte of the DC file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The DC file's own GGUF header, `[0, data section)`, padding to the data section
    /// included (covered by the header checksum in `dc.index`).
    DcHeader,
    Index,
    HeaderBlob,
    GapBlob,
    /// Chunk `chunk` of original tensor `tensor`.
    Chunk {
        tensor: usize,
        chunk: usize,
    },
    /// Bytes nothing refers to: alignment padding (never read).
    Padding(&'static str),
}

impl Kind {
    /// The row of the outcome table.
    pub fn row(&self) -> &'static str {
        match self {
            Kind::DcHeader => "DC GGUF header",
            Kind::Index => "dc.index",
            Kind::HeaderBlob => "original-header blob",
            Kind::GapBlob => "gap blob",
            Kind::Chunk { .. } => "tensor chunks",
            Kind::Padding(p) => p,
        }
    }
}

/// The DC file cut into regions: sorted, disjoint, covering `[0, file length)`.
pub fn region_map(dc: &DcFile, file_len: u64) -> Vec<(Range<u64>, Kind)> {
    let index = dc_index_range(dc);
    let data = dc_data_range(dc);
    let mut known: Vec<(Range<u64>, Kind)> = vec![
        (0..dc.dc_header.data_offset, Kind::DcHeader),
        (index.clone(), Kind::Index),
    ];
    for (b, kind) in [
        (&dc.index.header, Kind::HeaderBlob),
        (&dc.index.gaps, Kind::GapBlob),
    ] {
        let start = data.start + b.offset;
        known.push((start..start + b.stored_len, kind));
    }
    for (i, e) in dc.index.tensors.iter().enumerate() {
        for c in 0..e.chunks.len() {
            known.push((
                chunk_range(dc, i, c),
                Kind::Chunk {
                    tensor: i,
                    chunk: c,
                },
            ));
        }
    }
    known.retain(|(r, _)| !r.is_empty());
    known.sort_by_key(|(r, _)| r.start);
    // Fill the holes with padding, named after where they are.
    let mut map = Vec::new();
    let mut pos = 0;
    let hole = |r: Range<u64>| {
        let label = if r.start >= data.end {
            "padding after dc.data"
        } else if r.start >= index.end && r.end <= data.start {
            "padding after dc.index"
        } else if r.start >= data.start && r.end <= data.end {
            "unreferenced dc.data bytes"
        } else {
            "other padding"
        };
        (r, Kind::Padding(label))
    };
    for (r, k) in known {
        assert!(r.start >= pos, "regions overlap at {}: {k:?}", r.start);
        if r.start > pos {
            map.push(hole(pos..r.start));
        }
        pos = r.end;
        map.push((r, k));
    }
    assert!(
        pos <= file_len,
        "regions end past the file ({pos} > {file_len})"
    );
    if pos < file_len {
        map.push(hole(pos..file_len));
    }
    map
}

/// Random byte of the regions selected by `pick`, uniform over their bytes.
pub fn pick_byte(
    map: &[(Range<u64>, Kind)],
    rng: &mut Rng,
    pick: impl Fn(&Kind) -> bool,
) -> Option<(u64, Kind)> {
    let sel: Vec<&(Range<u64>, Kind)> = map.iter().filter(|(_, k)| pick(k)).collect();
    let total: u64 = sel.iter().map(|(r, _)| r.end - r.start).sum();
    if total == 0 {
        return None;
    }
    let mut x = rng.below(total);
    for (r, k) in sel {
        let len = r.end - r.start;
        if x < len {
            return Some((r.start + x, k.clone()));
        }
        x -= len;
    }
    unreachable!()
}

/// The chunk regions of `map`, grouped by tensor (tensors without chunks left out).
pub fn chunks_by_tensor(map: &[(Range<u64>, Kind)]) -> Vec<Vec<(Range<u64>, Kind)>> {
    let mut by_tensor: BTreeMap<usize, Vec<(Range<u64>, Kind)>> = BTreeMap::new();
    for (r, k) in map {
        if let Kind::Chunk { tensor, .. } = k {
            by_tensor
                .entry(*tensor)
                .or_default()
                .push((r.clone(), k.clone()));
        }
    }
    by_tensor.into_values().collect()
}

/// A random byte of a random chunk of a random tensor (so that the small tensors, norms and
/// biases, are hit as often as the big matrices).
pub fn pick_chunk_byte(chunks: &[Vec<(Range<u64>, Kind)>], rng: &mut Rng) -> (u64, Kind) {
    let t = &chunks[rng.below(chunks.len() as u64) as usize];
    let (r, kind) = &t[rng.below(t.len() as u64) as usize];
    (rng.range(r.start, r.end), kind.clone())
}
