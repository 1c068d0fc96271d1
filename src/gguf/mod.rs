//! GGUF container: a strict, bounds-checked reader and a byte-exact writer.
//!
//! The reader parses the header (metadata and tensor infos) from a byte slice, normally a
//! memory map of the file, so tensor data is never copied. Every count, length and offset read
//! from the file is checked against the bytes that remain and against llama.cpp's own limits
//! before it is used; violations come back as a [`GgufError`] naming the offset or tensor.

mod ggml_type;
mod parse;
pub mod split;
mod value;
mod write;

pub use ggml_type::{Field, GgmlType};
pub use parse::{GgufHeader, TensorInfo};
pub use value::{ArrayValue, KeyValue, Value, ValueType};
pub use write::{HeaderWriter, TensorEntry, align_up, build_file, tensor_entries};

/// "GGUF" read as a little-endian u32.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Bytes before the metadata: magic, version, tensor count, metadata count.
pub const PREAMBLE_LEN: u64 = 24;
/// Alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// llama.cpp's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// llama.cpp's `GGML_MAX_NAME`: a tensor name must be shorter than this.
pub const MAX_NAME_LEN: usize = 64;
/// Largest string or array llama.cpp accepts (1 GiB).
pub const MAX_STRING_OR_ARRAY_BYTES: u64 = 1 << 30;
/// Deepest nesting of arrays inside arrays we accept.
pub const MAX_ARRAY_NESTING: usize = 8;

/// Everything that can be wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a GGUF file: magic is {found:?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error(
        "big-endian GGUF files are not supported (version field reads {raw:#010x}); convert it to little-endian"
    )]
    BigEndian { raw: u32 },
    #[error("unsupported GGUF version {0} (supported: 2 and 3)")]
    UnsupportedVersion(u32),
    #[error(
        "file truncated: reading {what} at offset {offset} needs {need} bytes, only {have} left"
    )]
    Truncated {
        what: String,
        offset: u64,
        need: u64,
        have: u64,
    },
    #[error("{what} at offset {offset} is {value}, over the limit of {limit}")]
    TooLarge {
        what: String,
        offset: u64,
        value: u64,
        limit: u64,
    },
    #[error("metadata key {key:?} at offset {offset}: unknown value type {code}")]
    BadValueType { key: String, offset: u64, code: u32 },
    #[error("metadata key {key:?}: arrays nested deeper than {MAX_ARRAY_NESTING}")]
    NestingTooDeep { key: String },
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    #[error("general.alignment must be a u32 power of two, found {0}")]
    BadAlignment(String),
    #[error("tensor #{index} name at offset {offset} is not valid UTF-8")]
    BadTensorName { index: u64, offset: u64 },
    #[error("tensor {name:?}: name is {len} bytes, llama.cpp allows at most {}", MAX_NAME_LEN - 1)]
    NameTooLong { name: String, len: usize },
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    #[error("tensor {name:?}: {n_dims} dimensions, at most {MAX_DIMS} are allowed")]
    TooManyDims { name: String, n_dims: u32 },
    #[error("tensor {name:?}: dimension {dim} is {value}, which is out of range")]
    BadDim {
        name: String,
        dim: usize,
        value: u64,
    },
    #[error("tensor {name:?}: unknown or retired ggml type id {id}")]
    UnknownType { name: String, id: u32 },
    #[error("tensor {name:?}: {elems} elements is not a whole number of {ty} blocks or too large")]
    BadShape {
        name: String,
        ty: GgmlType,
        elems: u64,
    },
    #[error("tensor {name:?}: data offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedOffset {
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensors {first:?} and {second:?} overlap in the data section")]
    Overlap { first: String, second: String },
    #[error(
        "tensor {name:?}: data [{start}, {end}) ends past the end of the file ({file_len} bytes)"
    )]
    DataPastEof {
        name: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
}

pub type Result<T> = std::result::Result<T, GgufError>;
