//! dcgguf: smaller GGUF model files, losslessly, without slower loads.
//!
//! Data flows one way: the CLI (and the C ABI) call [`dc`], which uses [`codec`] to encode
//! and decode chunks and [`gguf`] to read and write the container; [`cost`] plans what to
//! compress from a measured machine profile, and [`report`] builds the JSON reports both
//! front ends give.

pub mod codec;
pub mod cost;
pub mod dc;
pub mod ffi;
pub mod gguf;
pub mod io;
pub mod llama;
pub mod quant;
pub mod report;
