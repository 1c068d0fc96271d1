//! DC-GGUF files: compress a GGUF into one, open one, and serve the original bytes back.
//!
//! A DC-GGUF file is a valid GGUF v3 file (docs/FORMAT.md). Its metadata is the original
//! metadata with `general.architecture` set to `dcgguf` (so llama.cpp refuses to compute on it)
//! plus `dc.*` keys; its two tensors are `dc.index` (the chunk table) and `dc.data` (the
//! compressed original header, the bytes between tensors and every tensor's chunks).

mod compress;
mod index;
mod job;
mod layout;
mod parts;
mod reader;
#[cfg(test)]
pub(crate) mod test_files;

use std::path::PathBuf;

pub use compress::{CompressOptions, CompressReport, LOOKUP_CHUNK, LoadCost, compress_file};
pub use index::{BlobRef, ChunkEntry, Index, TensorEntry};
pub use job::Job;
pub use parts::{DecompressReport, compress_parts, decompress_parts, precheck, verify_file};
pub use reader::{
    DcFile, Summary, TensorView, decompress_file, decompress_file_with, looks_like_dc,
    verify_against, verify_against_with,
};

use crate::codec::CodecError;
use crate::gguf::GgufError;

/// Version of the DC-GGUF layout written to `dc.format_version`.
pub const FORMAT_VERSION: u32 = 4;
/// Version 4 without the rANS plane codec (2); read like version 4.
pub const FORMAT_VERSION_3: u32 = 3;
/// Version 3 without the fold-split transform (id 5); read like version 4.
pub const FORMAT_VERSION_2: u32 = 2;
/// The first version: its header and blobs carry no checksum of their own, so only readers
/// that check the whole-file checksum before anything leaves them (`decompress`, `verify`)
/// accept it.
pub const FORMAT_VERSION_1: u32 = 1;
pub const KEY_FORMAT_VERSION: &str = "dc.format_version";
pub const KEY_ORIGINAL_ARCH: &str = "dc.original.general.architecture";
pub const KEY_ORIGINAL_SIZE: &str = "dc.original_size";
pub const KEY_ORIGINAL_XXH3: &str = "dc.original_xxh3";
pub const KEY_WRITER: &str = "dc.writer";
pub const KEY_MOVED_KEYS: &str = "dc.moved_keys";
/// Metadata values larger than this (serialized) are kept only in the compressed copy of the
/// original header: tokenizer vocabularies are ~1-2% of a small model and compress ~5x.
pub const MAX_CLEAR_VALUE: usize = 1024;
pub const DC_ARCHITECTURE: &str = "dcgguf";
pub const INDEX_TENSOR: &str = "dc.index";
pub const DATA_TENSOR: &str = "dc.data";
/// Largest chunk (decoded bytes) readers accept, so that a hostile index cannot make a
/// reader allocate or decode gigabytes for one chunk. The encoder's `--chunk-size` is capped
/// to it as well.
pub const MAX_CHUNK_RAW: u64 = 64 << 20;
/// The original header blob (metadata and tensor table of the original) is decoded at every
/// open, so its size is bounded twice before anything is allocated: absolutely, and relative
/// to its stored size. Real headers (tokenizers) compress 2-6x; a zstd "bomb" reaches ~32000x.
pub const MAX_HEADER_RAW: u64 = 256 << 20;
/// Decoded bytes the header blob may have beyond [`MAX_HEADER_RATIO`] times its stored bytes.
pub const HEADER_RAW_SLACK: u64 = 4 << 20;
pub const MAX_HEADER_RATIO: u64 = 64;
/// Bytes outside the header and the tensors (alignment padding, trailing bytes) that a file
/// may have. They are decoded only when a read reaches them (never by `inspect`).
pub const MAX_GAP_RAW: u64 = 64 << 20;
/// The DC file's own alignment is the original's, capped here so that a hostile
/// `general.alignment` (up to 2^31) cannot make the output larger than the input by more
/// than a few pages.
pub const MAX_DC_ALIGNMENT: u64 = 4096;

/// Everything that can go wrong reading or writing DC-GGUF files.
#[derive(Debug, thiserror::Error)]
pub enum DcError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Gguf { path: PathBuf, source: GgufError },
    #[error("stored original header is invalid: {0}")]
    OriginalHeader(GgufError),
    #[error("{path}: not a DC-GGUF file ({reason})")]
    NotDc { path: PathBuf, reason: String },
    #[error("{0}: is already a DC-GGUF file; decompress it first")]
    AlreadyDc(PathBuf),
    #[error("input has a metadata key {0:?} in the reserved dc.* namespace")]
    ReservedKey(String),
    #[error("unsupported DC-GGUF version {0} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u32),
    #[error(
        "{0}: DC-GGUF version 1 files carry no checksum for their metadata, so this reader \
         refuses them; `dcgguf decompress` still reads them (it checks the whole-file \
         checksum before writing): decompress, then compress again to get version {FORMAT_VERSION}"
    )]
    LegacyVersion(PathBuf),
    #[error("the DC file's GGUF header is corrupt: its checksum does not match dc.index")]
    CorruptDcHeader,
    #[error("{path}: damaged DC-GGUF file: {what}")]
    DamagedDc { path: PathBuf, what: String },
    #[error("{what} needs {bytes} bytes of memory, which could not be allocated")]
    OutOfMemory { what: &'static str, bytes: u64 },
    #[error("{path}: {what}; at most {limit} bytes are supported")]
    Unsupported {
        path: PathBuf,
        what: String,
        limit: u64,
    },
    #[error("dc.index is corrupt at byte {offset}: {what}")]
    BadIndex { offset: u64, what: String },
    #[error("tensor {tensor:?} chunk {chunk}: {what}")]
    Corrupt {
        tensor: String,
        chunk: u64,
        what: String,
    },
    #[error("{blob} blob is corrupt: {what}")]
    CorruptBlob { blob: &'static str, what: String },
    #[error("decoded file does not match: {what}")]
    Mismatch { what: String },
    /// Writing an output failed or was refused (exists, is the input, is not a regular file).
    #[error(transparent)]
    Output(#[from] crate::io::OutputError),
    #[error("tensor {tensor:?}: range [{start}, {end}) is outside its {len} bytes")]
    OutOfRange {
        tensor: String,
        start: u64,
        end: u64,
        len: u64,
    },
    /// The size asked for is smaller than this file can be compressed to.
    #[error("target size {target}: the smallest this file compresses to is {smallest} bytes")]
    TargetTooSmall { target: u64, smallest: u64 },
    /// The caller stopped the operation through its [`Job`]; nothing was left behind.
    #[error("cancelled")]
    Cancelled,
}

/// What kind of failure a [`DcError`] is: the one place that sorts the variants, from which
/// the CLI's exit codes and the C API's result codes are both derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Reading or writing failed.
    Io,
    /// The input is not valid GGUF.
    BadGguf,
    /// The input is not a DC-GGUF file (when one was expected).
    NotDc,
    /// A DC-GGUF version this reader does not read (or no longer trusts).
    UnsupportedVersion,
    /// Valid input that this operation refuses (already DC, reserved keys, over a cap).
    InvalidInput,
    /// A request outside the file (a byte range past a tensor).
    OutOfRange,
    /// The data is damaged: a checksum, a structure or the decoded bytes do not match.
    Corrupt,
    /// What the file declares could not be allocated.
    OutOfMemory,
    /// An option the data cannot satisfy (a target size too small).
    BadOption,
    /// The output could not be placed (exists, is the input, is not a regular file).
    Output,
    /// The caller cancelled the operation ([`Job::cancel`]).
    Cancelled,
}

impl DcError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            DcError::Io { .. } => ErrorKind::Io,
            DcError::Gguf { .. } => ErrorKind::BadGguf,
            DcError::NotDc { .. } => ErrorKind::NotDc,
            DcError::UnsupportedVersion(_) | DcError::LegacyVersion(_) => {
                ErrorKind::UnsupportedVersion
            }
            DcError::AlreadyDc(_) | DcError::ReservedKey(_) | DcError::Unsupported { .. } => {
                ErrorKind::InvalidInput
            }
            DcError::OutOfRange { .. } => ErrorKind::OutOfRange,
            DcError::OriginalHeader(_)
            | DcError::CorruptDcHeader
            | DcError::DamagedDc { .. }
            | DcError::BadIndex { .. }
            | DcError::Corrupt { .. }
            | DcError::CorruptBlob { .. }
            | DcError::Mismatch { .. } => ErrorKind::Corrupt,
            DcError::OutOfMemory { .. } => ErrorKind::OutOfMemory,
            DcError::TargetTooSmall { .. } => ErrorKind::BadOption,
            DcError::Cancelled => ErrorKind::Cancelled,
            DcError::Output(crate::io::OutputError::Io { .. }) => ErrorKind::Io,
            DcError::Output(_) => ErrorKind::Output,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DcError {
        let path = path.into();
        move |source| DcError::Io { path, source }
    }

    pub(crate) fn chunk(tensor: &str, chunk: usize) -> impl FnOnce(CodecError) -> DcError + '_ {
        move |e| DcError::Corrupt {
            tensor: tensor.to_string(),
            chunk: chunk as u64,
            what: e.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, DcError>;
