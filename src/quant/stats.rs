//! Per-input-channel activation statistics: llama.cpp imatrix files (current GGUF format and
//! the legacy `.dat` format of `tools/imatrix/imatrix.cpp`), validated strictly.
//!
//! GGUF imatrix: `general.type = "imatrix"`; per weight `W`, tensors `W.in_sum2` (F32,
//! `[n_in, n_mat]`, sums of x^2) and `W.counts` (F32, `[1, n_mat]`, rows seen). Mean x^2 is
//! `in_sum2 / counts`, averaged over experts when `n_mat > 1`.
//!
//! Legacy `.dat`: `i32 n_entries`, then per entry `i32 len, name, i32 ncall, i32 nval,
//! f32[nval]` holding `mean(x^2) * ncall`; optionally trailed by `i32 last_chunk, i32 len,
//! dataset name`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::gguf::{GgmlType, GgufHeader, Value};

/// Statistics of one weight's input channels.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelStats {
    /// Mean of x_j^2 over the calibration tokens.
    pub mean_sq: Vec<f32>,
    /// max |x_j| over the calibration tokens, when recorded (`dcgguf calibrate` adds it as
    /// `W.in_max` tensors; plain llama-imatrix files do not have it).
    pub max_abs: Option<Vec<f32>>,
}

impl ChannelStats {
    pub fn rms(&self) -> Vec<f32> {
        self.mean_sq.iter().map(|v| v.sqrt()).collect()
    }

    /// Per-channel magnitude used for scaling: the paper's max|X_j| where recorded, else the
    /// RMS sqrt(mean x^2) standing in for it (docs/QUANT.md).
    pub fn magnitude(&self) -> Vec<f32> {
        self.max_abs.clone().unwrap_or_else(|| self.rms())
    }
}

/// Activation statistics keyed by weight tensor name (`blk.0.attn_q.weight`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActStats {
    pub tensors: BTreeMap<String, ChannelStats>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: invalid activation statistics: {what}")]
pub struct StatsError {
    /// The file, or "(in memory)" for bytes handed over directly.
    pub path: String,
    pub what: String,
}

impl StatsError {
    fn in_memory(what: String) -> StatsError {
        StatsError {
            path: "(in memory)".into(),
            what,
        }
    }

    /// Whether the description mentions `s` (for tests and callers that match on it).
    pub fn contains(&self, s: &str) -> bool {
        self.what.contains(s)
    }
}

impl ActStats {
    /// Reads an imatrix file, GGUF or legacy, chosen by its magic.
    pub fn load(path: &Path) -> Result<ActStats, StatsError> {
        let err = |what: String| StatsError {
            path: path.display().to_string(),
            what,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        Self::from_bytes(&bytes).map_err(|e| err(e.what))
    }

    /// [`ActStats::load`] on a file's bytes: GGUF or legacy, chosen by the magic.
    pub fn from_bytes(bytes: &[u8]) -> Result<ActStats, StatsError> {
        if bytes.starts_with(b"GGUF") {
            Self::parse_gguf(bytes)
        } else {
            Self::parse_legacy(bytes)
        }
    }

    pub fn get(&self, weight: &str) -> Option<&ChannelStats> {
        self.tensors.get(weight)
    }

    pub fn parse_gguf(bytes: &[u8]) -> Result<ActStats, StatsError> {
        Self::parse_gguf_inner(bytes).map_err(StatsError::in_memory)
    }

    fn parse_gguf_inner(bytes: &[u8]) -> Result<ActStats, String> {
        let h = GgufHeader::parse(bytes).map_err(|e| format!("not a valid GGUF: {e}"))?;
        h.check_data_fits(bytes.len() as u64)
            .map_err(|e| format!("not a valid GGUF: {e}"))?;
        match h.kvs.iter().find(|kv| kv.key == b"general.type") {
            Some(kv) if matches!(&kv.value, Value::String(s) if s == b"imatrix") => {}
            Some(kv) => {
                return Err(format!(
                    "general.type is {}, not \"imatrix\" (is this a model file?)",
                    kv.value
                ));
            }
            None => return Err("no general.type = \"imatrix\" key (not an imatrix file)".into()),
        }
        let data = |name: &str| -> Result<(Vec<u64>, Vec<f32>), String> {
            let t = h
                .tensors
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| format!("missing tensor {name:?}"))?;
            if t.ty != GgmlType::F32 {
                return Err(format!("tensor {name:?} is {}, expected F32", t.ty));
            }
            let start = (h.data_offset + t.offset) as usize;
            let raw = &bytes[start..start + t.nbytes as usize];
            let v = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((t.dims.clone(), v))
        };
        let mut out = ActStats::default();
        for t in &h.tensors {
            let Some(weight) = t.name.strip_suffix(".in_sum2") else {
                if !t.name.ends_with(".counts") && !t.name.ends_with(".in_max") {
                    return Err(format!("unexpected tensor {:?}", t.name));
                }
                continue;
            };
            let (dims, sums) = data(&t.name)?;
            let (cdims, counts) = data(&format!("{weight}.counts"))?;
            // [n_in] or [n_in, n_mat]; the values fill it exactly (no zero-sized dimension
            // hiding a huge n_in, no third dimension).
            let (n_in, n_mat) = match dims[..] {
                [n_in] => (n_in as usize, 1),
                [n_in, n_mat] => (n_in as usize, n_mat as usize),
                _ => return Err(format!("{}: shape {dims:?} is not [n_in, n_mat]", t.name)),
            };
            if n_in == 0 || n_mat == 0 || n_in.checked_mul(n_mat) != Some(sums.len()) {
                return Err(format!("{}: shape {dims:?} holds no data", t.name));
            }
            if counts.len() != n_mat || cdims.first() != Some(&1) {
                return Err(format!(
                    "{weight}: {} counts for {n_mat} matrices",
                    counts.len()
                ));
            }
            let mut mean = vec![0f64; n_in];
            let mut used = 0;
            for (m, &c) in counts.iter().enumerate() {
                if !c.is_finite() || c < 0.0 {
                    return Err(format!("{weight}: count {c} is not a finite count"));
                }
                if c == 0.0 {
                    continue;
                }
                used += 1;
                for (j, acc) in mean.iter_mut().enumerate() {
                    *acc += f64::from(sums[m * n_in + j]) / f64::from(c);
                }
            }
            if used == 0 {
                return Err(format!("{weight}: all counts are zero (no data)"));
            }
            let mean_sq = mean.iter().map(|v| (v / used as f64) as f32).collect();
            out.insert(weight, mean_sq)?;
        }
        if out.tensors.is_empty() {
            return Err("no *.in_sum2 tensors".into());
        }
        for t in &h.tensors {
            let Some(weight) = t.name.strip_suffix(".in_max") else {
                continue;
            };
            let (_, max) = data(&t.name)?;
            let st = out
                .tensors
                .get_mut(weight)
                .ok_or_else(|| format!("{weight}.in_max without {weight}.in_sum2"))?;
            if max.len() != st.mean_sq.len() {
                return Err(format!(
                    "{weight}.in_max has {} values for {} channels",
                    max.len(),
                    st.mean_sq.len()
                ));
            }
            if let Some(j) = max.iter().position(|v| !v.is_finite() || *v < 0.0) {
                return Err(format!("{weight}: channel {j} has max|x| = {}", max[j]));
            }
            st.max_abs = Some(max);
        }
        Ok(out)
    }

    pub fn parse_legacy(bytes: &[u8]) -> Result<ActStats, StatsError> {
        Self::parse_legacy_inner(bytes).map_err(StatsError::in_memory)
    }

    fn parse_legacy_inner(bytes: &[u8]) -> Result<ActStats, String> {
        let mut pos = 0usize;
        let i32_at = |pos: &mut usize, what: &str| -> Result<i32, String> {
            let p = *pos;
            let b = bytes
                .get(p..p + 4)
                .ok_or_else(|| format!("truncated reading {what} at byte {p}"))?;
            *pos += 4;
            Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let n = i32_at(&mut pos, "entry count")?;
        if n <= 0 || n as usize > bytes.len() / 12 {
            return Err(format!(
                "entry count {n} is not plausible for a {}-byte file (not an imatrix?)",
                bytes.len()
            ));
        }
        let mut out = ActStats::default();
        for _ in 0..n {
            let len = i32_at(&mut pos, "name length")?;
            let pos2 = pos;
            if len <= 0 || len > 1024 || pos2 + len as usize > bytes.len() {
                return Err(format!("bad name length {len} at byte {}", pos2 - 4));
            }
            let name = std::str::from_utf8(&bytes[pos2..pos2 + len as usize])
                .map_err(|_| format!("entry name at byte {pos2} is not UTF-8"))?
                .to_string();
            pos = pos2 + len as usize;
            let ncall = i32_at(&mut pos, "ncall")?;
            let nval = i32_at(&mut pos, "value count")?;
            if ncall <= 0 {
                return Err(format!("{name}: ncall {ncall} must be positive"));
            }
            if nval <= 0 || pos + 4 * nval as usize > bytes.len() {
                return Err(format!("{name}: value count {nval} runs past the end"));
            }
            let vals = bytes[pos..pos + 4 * nval as usize]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) / ncall as f32)
                .collect();
            pos += 4 * nval as usize;
            out.insert(&name, vals)?;
        }
        // Optional trailer: last chunk count and dataset name.
        if pos != bytes.len() {
            let _chunks = i32_at(&mut pos, "chunk count")?;
            let len = i32_at(&mut pos, "dataset name length")?;
            if len < 0 || pos + len as usize != bytes.len() {
                return Err(format!("trailing garbage after the entries at byte {pos}"));
            }
        }
        Ok(out)
    }

    fn insert(&mut self, weight: &str, mean_sq: Vec<f32>) -> Result<(), String> {
        if let Some(j) = mean_sq.iter().position(|v| !v.is_finite() || *v < 0.0) {
            return Err(format!(
                "{weight}: channel {j} has mean x^2 = {}, not a finite non-negative number",
                mean_sq[j]
            ));
        }
        if self
            .tensors
            .insert(
                weight.to_string(),
                ChannelStats {
                    mean_sq,
                    max_abs: None,
                },
            )
            .is_some()
        {
            return Err(format!("duplicate entry {weight:?}"));
        }
        Ok(())
    }

    /// Checks that every entry that names a tensor of `model` has one value per input channel
    /// (`dims[0]`). Entries for tensors the model does not have are an error too: the file
    /// was made for another model.
    /// Whether these statistics fit `model` (every weight they name, with its width).
    pub fn check_against(&self, model: &GgufHeader) -> Result<(), StatsError> {
        self.check_against_inner(model)
            .map_err(StatsError::in_memory)
    }

    fn check_against_inner(&self, model: &GgufHeader) -> Result<(), String> {
        for (name, st) in &self.tensors {
            let t = model
                .tensors
                .iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| format!("{name}: no such tensor in the model (wrong model?)"))?;
            if st.mean_sq.len() as u64 != t.dims[0] {
                return Err(format!(
                    "{name}: {} channels, the model's tensor has {} inputs (wrong model?)",
                    st.mean_sq.len(),
                    t.dims[0]
                ));
            }
        }
        Ok(())
    }
}
