//! Codec: per-type byte transforms plus Zstd, applied to independently decodable chunks.
//!
//! A chunk is a run of whole units (elements or quantization blocks) of one tensor. It is
//! stored either raw, or as planes (see [`transform`]) each of which is Zstd-compressed or
//! stored raw, whichever is smaller. Decoding writes straight into the caller's buffer.

pub mod chunk;
pub mod entropy;
pub mod half;
pub mod transform;

pub use chunk::{ChunkMode, EncodeOptions, LEVELS, decode_chunk, encode_chunk};
pub use entropy::PlaneStats;
pub use transform::{Layout, Transform};

/// Errors from decoding a chunk. The container layer adds the tensor name and chunk index.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("chunk payload is corrupt: {0}")]
    Corrupt(String),
    #[error("zstd: {0}")]
    Zstd(String),
}

pub type Result<T> = std::result::Result<T, CodecError>;
