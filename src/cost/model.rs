//! The load-time cost model: how long a tensor takes to load from storage of a given
//! bandwidth, stored raw or compressed, and which of the two to write.
//!
//! Loading streams stored bytes from storage while decoding runs on all cores, overlapped
//! (the llama.cpp hook decodes chunks while later ones are read), so a compressed tensor
//! costs `max(stored / storage_bps, raw / decode_bps)` and a raw one `raw / storage_bps`.
//! Compression therefore pays exactly when it saves bytes and the type decodes faster than
//! storage delivers them.

use super::probe::Profile;
use crate::gguf::GgmlType;

/// Bandwidths the model plans with.
#[derive(Clone, Debug)]
pub struct LoadModel {
    pub storage_bps: f64,
    profile: Profile,
}

impl LoadModel {
    /// Plans for the profile's measured storage, or `storage_bps` when given (to plan for
    /// another device, e.g. a network share).
    pub fn new(profile: Profile, storage_bps: Option<f64>) -> LoadModel {
        LoadModel {
            storage_bps: storage_bps.unwrap_or_else(|| profile.storage_bps()),
            profile,
        }
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    pub fn decode_bps(&self, ty: GgmlType) -> f64 {
        self.profile.decode_bps(ty, true)
    }

    /// Predicted seconds to load `raw` bytes of type `ty` stored in `stored` bytes, of which
    /// `raw_stored` are chunks stored raw (no decode).
    pub fn load_seconds(&self, ty: GgmlType, raw: u64, stored: u64, raw_stored: u64) -> f64 {
        let read = stored as f64 / self.storage_bps;
        let decoded = raw.saturating_sub(raw_stored) as f64;
        let copy = raw_stored as f64 / self.profile.memcpy_bps;
        read.max(decoded / self.decode_bps(ty) + copy)
    }

    /// Whether tensors of this type should be stored compressed: only if they decode faster
    /// than storage delivers raw bytes (then `max(stored/B, raw/D) < raw/B` for any saving).
    pub fn compress_pays(&self, ty: GgmlType) -> bool {
        self.decode_bps(ty) > self.storage_bps
    }
}

impl crate::dc::LoadCost for LoadModel {
    fn compress_pays(&self, ty: GgmlType) -> bool {
        LoadModel::compress_pays(self, ty)
    }

    fn extra_load_seconds(&self, ty: GgmlType, raw: u64, stored: u64) -> f64 {
        self.load_seconds(ty, raw, stored, 0) - raw as f64 / self.storage_bps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::probe::{DecodeSpeed, Fingerprint, PROFILE_VERSION};

    fn profile() -> Profile {
        Profile {
            version: PROFILE_VERSION,
            fingerprint: Fingerprint::this_machine(),
            measured_unix: 0,
            storage_dir: "/tmp".into(),
            read_cold_bps: Some(1e9),
            read_warm_bps: 8e9,
            mmap_warm_bps: 8e9,
            memcpy_bps: 10e9,
            threads: 2,
            decode: vec![DecodeSpeed {
                ggml_type: "Q8_0".into(),
                transform: "quant-split".into(),
                sample_ratio: 0.9,
                bps_1_thread: 1.5e9,
                bps_all_threads: 3e9,
            }],
        }
    }

    #[test]
    fn compression_pays_only_below_decode_speed() {
        let slow = LoadModel::new(profile(), Some(200e6));
        assert!(slow.compress_pays(GgmlType::Q8_0));
        let t_raw = slow.load_seconds(GgmlType::Q8_0, 1_000_000_000, 1_000_000_000, 1_000_000_000);
        let t_dc = slow.load_seconds(GgmlType::Q8_0, 1_000_000_000, 900_000_000, 0);
        assert!(t_dc < t_raw, "{t_dc} {t_raw}");
        let fast = LoadModel::new(profile(), Some(5e9));
        assert!(!fast.compress_pays(GgmlType::Q8_0));
        let t_raw = fast.load_seconds(GgmlType::Q8_0, 1_000_000_000, 1_000_000_000, 1_000_000_000);
        let t_dc = fast.load_seconds(GgmlType::Q8_0, 1_000_000_000, 900_000_000, 0);
        assert!(t_dc > t_raw);
        // Unmeasured types fall back to a measured one.
        assert!(fast.decode_bps(GgmlType::Q4_K) > 0.0);
    }
}
