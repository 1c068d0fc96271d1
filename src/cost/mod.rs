//! Measurements of this machine and the load-time cost model built on them: what to
//! compress at convert time, and what loading a DC file will cost.

mod decode_bench;
pub mod model;
pub mod probe;
mod request;

use std::path::PathBuf;

use crate::codec::CodecError;
use crate::dc::DcError;
use crate::io::OutputError;

pub use decode_bench::{DecodeBench, PairedRatio, measure_decode};
pub use model::LoadModel;
pub use probe::{
    ProbeOptions, Profile, Stale, default_profile_path, load_or_probe, load_profile,
    machine_profile,
};
pub use request::{LoadedModel, load_model_for, predicted_load_seconds};

/// What measuring this machine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CostError {
    #[error(transparent)]
    Dc(#[from] DcError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {threads} measuring threads: {source}")]
    Threads {
        threads: usize,
        source: rayon::ThreadPoolBuildError,
    },
    /// A storage bandwidth to plan for that is not a positive, finite number of bytes/s.
    #[error("storage_bps {0}: must be a positive number of bytes per second")]
    StorageBps(f64),
    /// The synthetic sample did not decode: a bug, never the user's data.
    #[error("synthetic sample did not decode: {0}")]
    Codec(#[from] CodecError),
}

impl CostError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CostError {
        let path = path.into();
        move |source| CostError::Io { path, source }
    }
}

pub type Result<T> = std::result::Result<T, CostError>;
