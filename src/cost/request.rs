//! The cost model a caller asks for, the one way every front end asks: the CLI's `--profile
//! auto|PATH`, `--storage-bps` and `compress --target-size`, and the same fields of the C
//! API's `dcgguf_options` (and so the Python package's keyword arguments).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::{
    CostError, LoadModel, ProbeOptions, Result, Stale, default_profile_path, load_or_probe,
};
use crate::dc::DcFile;

/// A cost model and where its profile came from.
#[derive(Clone, Debug)]
pub struct LoadedModel {
    pub model: LoadModel,
    /// The profile file read (or written, when measured now).
    pub path: PathBuf,
    /// Why the profile was measured now (missing, corrupt, another machine or version), or
    /// `None` when the saved one was used. The CLI tells the user; the C API does not print.
    pub remeasured: Option<Stale>,
}

/// The cost model for `profile` (`"auto"`: the saved profile at [`default_profile_path`];
/// anything else: the path of a profile JSON) planning for `storage_bps` bytes/s of storage
/// (`None`: the profile's measured storage).
///
/// A `storage_bps` without `profile` implies `"auto"`, and so does `required` (set for
/// `--target-size`, which cannot work without a model). With neither and not `required`,
/// there is no model: `Ok(None)`. A profile that is missing, corrupt or from another machine
/// or dcgguf version is measured now (a few seconds: it writes and reads a temporary file in
/// the profile's directory, which is created if needed) and saved there.
pub fn load_model_for(
    profile: Option<&OsStr>,
    storage_bps: Option<f64>,
    required: bool,
) -> Result<Option<LoadedModel>> {
    let path = match profile {
        None if storage_bps.is_none() && !required => return Ok(None),
        Some(p) if p != "auto" => PathBuf::from(p),
        _ => default_profile_path(),
    };
    if let Some(b) = storage_bps
        && !(b.is_finite() && b > 0.0)
    {
        return Err(CostError::StorageBps(b));
    }
    let opts = ProbeOptions {
        storage_dir: path
            .parent()
            .map_or_else(std::env::temp_dir, Path::to_path_buf),
        ..ProbeOptions::default()
    };
    std::fs::create_dir_all(&opts.storage_dir).map_err(CostError::io(&opts.storage_dir))?;
    let (profile, remeasured) = load_or_probe(&path, &opts)?;
    Ok(Some(LoadedModel {
        model: LoadModel::new(profile, storage_bps),
        path,
        remeasured,
    }))
}

/// The model's predicted load time of every tensor of `dc`, in index order (`inspect` shows
/// it, `bench` compares its sum with a measurement).
pub fn predicted_load_seconds(dc: &DcFile, model: &LoadModel) -> Vec<f64> {
    (0..dc.tensor_count())
        .map(|i| {
            let v = dc.tensor_view(i);
            let raw_stored: u64 = dc.index.tensors[i]
                .chunks
                .iter()
                .filter(|c| c.mode == crate::codec::ChunkMode::Raw as u8)
                .map(|c| u64::from(c.stored_len))
                .sum();
            model.load_seconds(
                dc.tensor_info(i).ty,
                v.raw_bytes,
                v.stored_bytes,
                raw_stored,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_model_unless_asked_and_bad_bandwidths_refused_before_any_measuring() {
        assert!(load_model_for(None, None, false).unwrap().is_none());
        // A path that cannot be created: reaching it would be an I/O error, so the
        // bandwidth check must come first.
        let nowhere = OsStr::new("/proc/dcgguf-no-such-dir/profile.json");
        for b in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = load_model_for(Some(nowhere), Some(b), false).unwrap_err();
            assert!(
                matches!(e, CostError::StorageBps(v) if v.to_bits() == b.to_bits()),
                "{e}"
            );
        }
        let e = load_model_for(Some(nowhere), Some(1e9), false).unwrap_err();
        assert!(matches!(e, CostError::Io { .. }), "{e}");
    }
}
