//! Codec: per-type byte transforms plus Zstd, applied to independently decodable chunks.
//!
//! A chunk is a run of whole units (elements or quantization blocks) of one tensor. It is
//! stored either raw, or as planes (see [`transform`]) each of which is Zstd-compressed or
//! stored raw, whichever is smaller. Decoding writes straight into the caller's buffer.

pub mod chunk;
pub mod entropy;
#[cfg(target_arch = "x86_64")]
mod fold_avx512;
pub mod half;
pub mod rans;
pub mod transform;

pub use chunk::{
    ChunkMode, EncodeOptions, LEVEL_DEFAULT, LEVEL_MAX, LEVELS, decode_chunk, encode_chunk,
    encode_chunk_into, level_is_valid, parse_level, release_thread_buffers,
};
pub use entropy::PlaneStats;
pub use transform::{Layout, Transform};

/// Errors from decoding a chunk, one variant per check. The container layer adds the tensor
/// name and chunk index.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("chunk payload is corrupt: raw chunk holds {got} bytes, expected {want}")]
    RawChunkLength { got: usize, want: usize },
    #[error(
        "chunk payload is corrupt: chunk length {len} is not a multiple of the {unit}-byte unit"
    )]
    UnitMisaligned { len: usize, unit: usize },
    #[error(
        "chunk payload is corrupt: payload of {got} bytes is shorter than its {table}-byte plane table"
    )]
    ShortPlaneTable { got: usize, table: usize },
    #[error(
        "chunk payload is corrupt: plane {plane} claims {stored} bytes, only {left} left in the payload"
    )]
    PlaneOverrun {
        plane: usize,
        stored: usize,
        left: usize,
    },
    #[error("chunk payload is corrupt: raw plane {plane} holds {stored} bytes, expected {want}")]
    RawPlaneLength {
        plane: usize,
        stored: usize,
        want: usize,
    },
    #[error("chunk payload is corrupt: plane {plane}: unknown codec {codec}")]
    UnknownPlaneCodec { plane: usize, codec: u8 },
    #[error("chunk payload is corrupt: {0} trailing bytes after the last plane")]
    TrailingBytes(usize),
    #[error("chunk payload is corrupt: zstd frame decoded to {got} bytes, expected {want}")]
    FrameLength { got: usize, want: usize },
    /// A rANS plane (codec 2) that does not decode to exactly its length.
    #[error("chunk payload is corrupt: rANS plane: {0}")]
    Rans(&'static str),
    /// zstd refused a frame (its own error text: zstd reports codes, not types).
    #[error("zstd: {0}")]
    Zstd(ZstdMessage),
}

/// zstd's description of a failure (`zstd::bulk` returns `std::io::Error`s carrying only
/// zstd's error string), kept as text because zstd offers nothing more typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZstdMessage(pub String);

impl std::fmt::Display for ZstdMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<std::io::Error> for ZstdMessage {
    fn from(e: std::io::Error) -> ZstdMessage {
        ZstdMessage(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, CodecError>;
