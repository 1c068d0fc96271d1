//! `dcgguf calibrate`: activation statistics from real llama.cpp.
//!
//! Runs `llama-imatrix` (per-channel mean x^2 of every matmul input) on a text file and checks
//! the result. llama-imatrix refuses vocabularies that append EOS (BERT appends [SEP]), so such
//! models are run through a temporary copy with `tokenizer.ggml.add_eos_token = false`
//! (statistics then miss one [SEP] token per chunk). max|x| is not recorded by llama-imatrix;
//! scaling uses the RMS instead (docs/QUANT.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{QuantError, RemoveOnDrop, Result, stats::ActStats, temp_next_to};
use crate::dc::DcError;
use crate::gguf::{GgufHeader, Value, ValueType};
use crate::io::map_readonly;

#[derive(clap::Args, Clone, Debug)]
pub struct CalibrateArgs {
    /// Model GGUF (full precision or Q8_0).
    pub model: PathBuf,
    /// Calibration text (plain UTF-8).
    pub text: PathBuf,
    /// Output imatrix file (GGUF).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Directory with llama-imatrix (default: $DCGGUF_LLAMA_BIN, then
    /// ~/.cache/dcgguf/llama.cpp-<pinned version>/bin, then PATH).
    #[arg(long)]
    pub llama_bin: Option<PathBuf>,
    /// Tokens per chunk (llama-imatrix -c).
    #[arg(long, default_value_t = 128)]
    pub ctx: u32,
}

/// Summary of a calibration run.
#[derive(Debug, serde::Serialize)]
pub struct CalibrateReport {
    pub output: PathBuf,
    pub tensors: usize,
}

pub fn calibrate(a: &CalibrateArgs) -> Result<CalibrateReport> {
    run_imatrix(&a.model, &a.text, &a.output, a.llama_bin.as_deref(), a.ctx)?;
    let st = ActStats::load(&a.output)?;
    Ok(CalibrateReport {
        output: a.output.clone(),
        tensors: st.tensors.len(),
    })
}

fn find_tool(dir: Option<&Path>, tool: &str) -> PathBuf {
    if let Some(d) = dir {
        return d.join(tool);
    }
    if let Some(d) = std::env::var_os("DCGGUF_LLAMA_BIN") {
        return PathBuf::from(d).join(tool);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cached = home
        .join(concat!(
            ".cache/dcgguf/llama.cpp-",
            env!("DCGGUF_LLAMA_PY_VERSION")
        ))
        .join("bin")
        .join(tool);
    if cached.exists() {
        return cached;
    }
    PathBuf::from(tool)
}

/// Runs llama-imatrix on `model` over `text`, writing a GGUF imatrix to `output`.
pub fn run_imatrix(
    model: &Path,
    text: &Path,
    output: &Path,
    llama_bin: Option<&Path>,
    ctx: u32,
) -> Result<()> {
    let meta = std::fs::metadata(text).map_err(DcError::io(text))?;
    if meta.len() == 0 {
        return Err(QuantError::Other(format!(
            "{}: calibration text is empty",
            text.display()
        )));
    }
    let patched = temp_next_to(output, "calib-model.gguf");
    let _g = RemoveOnDrop(patched.clone());
    let model_used = if without_add_eos(model, &patched)? {
        patched.as_path()
    } else {
        model
    };
    let tool = find_tool(llama_bin, "llama-imatrix");
    let out = Command::new(&tool)
        .arg("-m")
        .arg(model_used)
        .arg("-f")
        .arg(text)
        .arg("-o")
        .arg(output)
        .args([
            "-c",
            &ctx.to_string(),
            "-b",
            &ctx.to_string(),
            "-ub",
            &ctx.to_string(),
        ])
        .args(["--no-ppl", "--output-frequency", "1000000"])
        .output()
        .map_err(|e| QuantError::Other(format!("cannot run {}: {e}", tool.display())))?;
    if !out.status.success() || !output.exists() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(8).collect();
        return Err(QuantError::Other(format!(
            "{} failed ({}):\n{}",
            tool.display(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )));
    }
    Ok(())
}

/// Writes a copy of `model` with `tokenizer.ggml.add_eos_token = false` to `out` if the model
/// has it set; returns whether it did.
fn without_add_eos(model: &Path, out: &Path) -> Result<bool> {
    let (_f, map) = map_readonly(model).map_err(DcError::io(model))?;
    let mut h = GgufHeader::parse(&map).map_err(|source| DcError::Gguf {
        path: model.to_path_buf(),
        source,
    })?;
    let Some(kv) = h
        .kvs
        .iter_mut()
        .find(|kv| kv.key == b"tokenizer.ggml.add_eos_token")
    else {
        return Ok(false);
    };
    if !matches!(kv.value, Value::Scalar { ty: ValueType::Bool, le } if le[0] != 0) {
        return Ok(false);
    }
    kv.value = Value::Scalar {
        ty: ValueType::Bool,
        le: [0; 8],
    };
    let head = h.to_bytes();
    debug_assert_eq!(head.len() as u64, h.data_offset);
    let mut bytes = head;
    bytes.extend_from_slice(&map[h.data_offset as usize..]);
    std::fs::write(out, bytes).map_err(DcError::io(out))?;
    Ok(true)
}
