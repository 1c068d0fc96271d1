//! Test support: small DC-GGUF files made by the real compressor.

use std::path::PathBuf;
use std::sync::Arc;

use super::{CompressOptions, DcFile, compress_file};
use crate::gguf::{TensorEntry, build_file};

/// A GGUF of `tensors` and its DC-GGUF with `chunk_size`-byte chunks, opened, in a directory
/// of its own named after `name` under the temporary directory. Returns the original bytes,
/// the directory (the caller removes it; an open `DcFile` keeps reading after that) and the
/// DC file's path.
pub fn small_dc(
    name: &str,
    tensors: &[TensorEntry],
    chunk_size: usize,
) -> (Vec<u8>, PathBuf, PathBuf, Arc<DcFile>) {
    let original = build_file(&[], tensors);
    let dir = std::env::temp_dir().join(format!("dcgguf-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, dst) = (dir.join("in.gguf"), dir.join("out.dc.gguf"));
    std::fs::write(&src, &original).unwrap();
    let opts = CompressOptions {
        chunk_size,
        force: true,
        ..Default::default()
    };
    compress_file(&src, &dst, &opts, &|_| {}).unwrap();
    let dc = Arc::new(DcFile::open(&dst).unwrap());
    (original, dir, dst, dc)
}

/// `n` bytes that do not compress (xorshift64): a DC file of them stores as many bytes.
pub fn incompressible(n: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
