//! Measurements of this machine and the load-time cost model built on them: what to
//! compress at convert time, and what loading a DC file will cost.

mod decode_bench;
pub mod model;
pub mod probe;

pub use decode_bench::{DecodeBench, measure_decode};
pub use model::LoadModel;
pub use probe::{ProbeOptions, Profile, Stale, default_profile_path, load_or_probe, load_profile};
