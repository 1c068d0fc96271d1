//! Measurements of this machine: decode throughput of DC-GGUF files versus memcpy.

mod decode_bench;

pub use decode_bench::{DecodeBench, measure_decode};
