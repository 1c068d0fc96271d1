//! dcgguf: smaller GGUF model files, losslessly, without slower loads.
//!
//! Data flows one way: the CLI (and the C ABI) call [`dc`], which uses [`codec`] to encode
//! and decode chunks and [`gguf`] to read and write the container.

pub mod codec;
pub mod cost;
pub mod dc;
pub mod ffi;
pub mod gguf;
pub mod io;
pub mod llama;
pub mod quant;
