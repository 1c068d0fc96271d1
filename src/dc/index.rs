//! The `dc.index` blob: where every stored piece of a DC-GGUF file lives and how to check it.
//!
//! Layout (little-endian, docs/FORMAT.md "dc.index"), version 2:
//! ```text
//! "DCIX" u32:version u64:n_tensors u64:original_size u64:xxh3_64(DC file's GGUF header)
//! blob header   {u64 offset, u64 stored_len, u64 raw_len, u64 xxh3_64(raw)}   original header
//! blob gaps     {u64 offset, u64 stored_len, u64 raw_len, u64 xxh3_64(raw)}   bytes between tensors
//! per tensor:   u8 transform, u8 reserved=0, u16 reserved=0, u32 chunk_raw, u64 n_chunks,
//!               u64 data_offset, u64 entropy_bound
//!   per chunk:  u32 stored_len, u8 mode, u64 xxh3_64(decoded bytes)
//! u64 xxh3_64 of everything above
//! ```
//! Offsets are relative to the start of the `dc.data` tensor. A tensor's chunks are stored
//! back to back from its `data_offset`.
//!
//! Version 1 had neither the header checksum nor the blob checksums; it is still decoded (for
//! `decompress`/`verify`, which check the whole-file checksum before trusting anything).

use crate::io::hash::xxh3_64;

use super::{DcError, Result};

pub const INDEX_MAGIC: [u8; 4] = *b"DCIX";
pub const INDEX_VERSION: u32 = 4;
/// Laid out as version 4 (it differs only in the plane codecs its chunks may use).
pub const INDEX_VERSION_3: u32 = 3;
/// Laid out as version 4 (it differs only in the transforms and plane codecs its chunks
/// may use).
pub const INDEX_VERSION_2: u32 = 2;
/// The first version, without header and blob checksums.
pub const INDEX_VERSION_1: u32 = 1;
const FIXED_LEN: usize = 4 + 4 + 8 + 8 + 8 + 2 * 32 + 8;
const FIXED_LEN_V1: usize = 4 + 4 + 8 + 8 + 2 * 24 + 8;
const TENSOR_LEN: usize = 4 + 4 + 8 + 8 + 8;
const CHUNK_LEN: usize = 4 + 1 + 8;

/// A zstd-compressed side blob (original header, gap bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlobRef {
    pub offset: u64,
    pub stored_len: u64,
    pub raw_len: u64,
    /// XXH3-64 of the decoded bytes; `None` in version-1 files.
    pub hash: Option<u64>,
}

/// One stored chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkEntry {
    pub stored_len: u32,
    pub mode: u8,
    pub hash: u64,
}

/// How one original tensor is stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TensorEntry {
    pub transform: u8,
    /// Raw bytes per chunk; the last chunk may be shorter.
    pub chunk_raw: u32,
    pub data_offset: u64,
    /// Order-0 entropy bound of the tensor's planes, in bytes.
    pub entropy_bound: u64,
    pub chunks: Vec<ChunkEntry>,
}

impl TensorEntry {
    pub fn stored_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.stored_len)).sum()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    pub version: u32,
    pub original_size: u64,
    /// XXH3-64 of the DC file's own GGUF header, `[0, data section)`; `None` in version 1.
    pub dc_header_hash: Option<u64>,
    pub header: BlobRef,
    pub gaps: BlobRef,
    pub tensors: Vec<TensorEntry>,
}

impl Index {
    /// Encoded size for tensors with the given chunk counts.
    pub fn encoded_len(chunk_counts: impl Iterator<Item = usize>) -> usize {
        FIXED_LEN
            + chunk_counts
                .map(|n| TENSOR_LEN + n * CHUNK_LEN)
                .sum::<usize>()
    }

    /// Encodes the index: as version 2 or 3 when `version` says so (same layout; the writer
    /// of such a file chose only what that version has), else in the current version (a
    /// decoded version-1 index is written as the current version, missing hashes as 0).
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(Self::encoded_len(
            self.tensors.iter().map(|t| t.chunks.len()),
        ));
        let version = if [INDEX_VERSION_2, INDEX_VERSION_3].contains(&self.version) {
            self.version
        } else {
            INDEX_VERSION
        };
        o.extend_from_slice(&INDEX_MAGIC);
        o.extend_from_slice(&version.to_le_bytes());
        o.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        o.extend_from_slice(&self.original_size.to_le_bytes());
        o.extend_from_slice(&self.dc_header_hash.unwrap_or(0).to_le_bytes());
        for b in [&self.header, &self.gaps] {
            for v in [b.offset, b.stored_len, b.raw_len, b.hash.unwrap_or(0)] {
                o.extend_from_slice(&v.to_le_bytes());
            }
        }
        for t in &self.tensors {
            o.extend_from_slice(&[t.transform, 0, 0, 0]);
            o.extend_from_slice(&t.chunk_raw.to_le_bytes());
            o.extend_from_slice(&(t.chunks.len() as u64).to_le_bytes());
            o.extend_from_slice(&t.data_offset.to_le_bytes());
            o.extend_from_slice(&t.entropy_bound.to_le_bytes());
            for c in &t.chunks {
                o.extend_from_slice(&c.stored_len.to_le_bytes());
                o.push(c.mode);
                o.extend_from_slice(&c.hash.to_le_bytes());
            }
        }
        let sum = xxh3_64(&o);
        o.extend_from_slice(&sum.to_le_bytes());
        o
    }

    /// Decodes and checks an index. Structural checks only; the reader checks it against the
    /// original header and the data blob.
    pub fn decode(b: &[u8]) -> Result<Index> {
        let bad = |at: usize, what: String| DcError::BadIndex {
            offset: at as u64,
            what,
        };
        // The shorter (version 1) fixed part; the cursor catches a truncated version 2.
        if b.len() < FIXED_LEN_V1 {
            return Err(bad(
                0,
                format!("{} bytes is shorter than the fixed part", b.len()),
            ));
        }
        let (body, sum) = b.split_at(b.len() - 8);
        if xxh3_64(body) != u64::from_le_bytes(sum.try_into().unwrap()) {
            return Err(bad(
                body.len(),
                "checksum mismatch: the index is corrupt".into(),
            ));
        }
        let mut r = Cursor { b: body, pos: 0 };
        if r.bytes(4)? != INDEX_MAGIC {
            return Err(bad(0, "wrong magic".into()));
        }
        let version = r.u32()?;
        if ![
            INDEX_VERSION,
            INDEX_VERSION_3,
            INDEX_VERSION_2,
            INDEX_VERSION_1,
        ]
        .contains(&version)
        {
            return Err(DcError::UnsupportedVersion(version));
        }
        let v2 = version != INDEX_VERSION_1;
        let n_tensors = r.u64()?;
        let original_size = r.u64()?;
        let dc_header_hash = if v2 { Some(r.u64()?) } else { None };
        let mut blob = || -> Result<BlobRef> {
            Ok(BlobRef {
                offset: r.u64()?,
                stored_len: r.u64()?,
                raw_len: r.u64()?,
                hash: if v2 { Some(r.u64()?) } else { None },
            })
        };
        let header = blob()?;
        let gaps = blob()?;
        if n_tensors > (r.left() / TENSOR_LEN) as u64 {
            return Err(bad(
                8,
                format!("tensor count {n_tensors} does not fit the index"),
            ));
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let at = r.pos;
            let head = r.bytes(4)?;
            let transform = head[0];
            if head[1..] != [0, 0, 0] {
                return Err(bad(at, "reserved bytes are not zero".into()));
            }
            let chunk_raw = r.u32()?;
            let n_chunks = r.u64()?;
            let data_offset = r.u64()?;
            let entropy_bound = r.u64()?;
            if n_chunks > (r.left() / CHUNK_LEN) as u64 {
                return Err(bad(
                    at,
                    format!("chunk count {n_chunks} does not fit the index"),
                ));
            }
            let chunks = (0..n_chunks)
                .map(|_| {
                    Ok(ChunkEntry {
                        stored_len: r.u32()?,
                        mode: r.bytes(1)?[0],
                        hash: r.u64()?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            tensors.push(TensorEntry {
                transform,
                chunk_raw,
                data_offset,
                entropy_bound,
                chunks,
            });
        }
        if r.left() != 0 {
            return Err(bad(
                r.pos,
                format!("{} unexpected trailing bytes", r.left()),
            ));
        }
        Ok(Index {
            version,
            original_size,
            dc_header_hash,
            header,
            gaps,
            tensors,
        })
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.pos
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(DcError::BadIndex {
                offset: self.pos as u64,
                what: "truncated".into(),
            });
        }
        self.pos += n;
        Ok(&self.b[self.pos - n..self.pos])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().unwrap()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips_and_detects_corruption() {
        let idx = Index {
            version: INDEX_VERSION,
            original_size: 1234,
            dc_header_hash: Some(99),
            header: BlobRef {
                offset: 0,
                stored_len: 10,
                raw_len: 100,
                hash: Some(5),
            },
            gaps: BlobRef {
                offset: 10,
                stored_len: 9,
                raw_len: 3,
                hash: Some(6),
            },
            tensors: vec![TensorEntry {
                transform: 2,
                chunk_raw: 64,
                data_offset: 19,
                entropy_bound: 77,
                chunks: vec![ChunkEntry {
                    stored_len: 40,
                    mode: 1,
                    hash: 42,
                }],
            }],
        };
        let bytes = idx.encode();
        assert_eq!(bytes.len(), Index::encoded_len([1].into_iter()));
        assert_eq!(Index::decode(&bytes).unwrap(), idx);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(Index::decode(&bad).is_err(), "flip at {i} undetected");
        }
        for cut in 0..bytes.len() {
            assert!(Index::decode(&bytes[..cut]).is_err());
        }
    }
}
