//! `dcgguf calibrate`: activation statistics from real llama.cpp.
//!
//! Runs `llama-imatrix` (per-channel mean x^2 of every matmul input) on a text file and checks
//! the result. llama-imatrix refuses vocabularies that append EOS (BERT appends [SEP]), so such
//! models are run through a temporary copy with `tokenizer.ggml.add_eos_token = false`
//! (statistics then miss one [SEP] token per chunk). llama-imatrix keeps only sums of x^2,
//! so it runs with libdcgguf_preload.so preloaded, whose graph callback records per-channel max|x|
//! (`llama::actmax`); those maxima are added to the output as `W.in_max` tensors. Without
//! libdcgguf_preload.so next to the dcgguf binary (or `$DCGGUF_LIB`) only the RMS is available.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{InputError, Result, ToolError, stats::ActStats, temp_next_to};
use crate::dc::DcError;
use crate::gguf::{GgufHeader, Value, ValueType, build_file, tensor_entries};
use crate::io::{AtomicOutput, TempPath, map_readonly};

/// Environment variable that asks the llama.cpp hook (`llama::actmax`) in a calibration run
/// to record each weight input's max |x| and write it to this path.
pub const ACT_MAX_ENV: &str = "DCGGUF_ACT_MAX_OUT";

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
    /// ~/.cache/dcgguf/llama.cpp-<pinned version>-r<build rev>/bin, then PATH).
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
        .join(".cache/dcgguf")
        .join(env!("DCGGUF_LLAMA_DIR"))
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
        return Err(InputError::EmptyCalibration(text.to_path_buf()).into());
    }
    let patched = temp_next_to(output, "calib-model.gguf");
    let _g = TempPath::new(patched.clone())?;
    let model_used = if without_add_eos(model, &patched)? {
        patched.as_path()
    } else {
        model
    };
    let tool = find_tool(llama_bin, "llama-imatrix");
    let act_max = temp_next_to(output, "act-max.gguf");
    let _g2 = TempPath::new(act_max.clone())?;
    let mut cmd = Command::new(&tool);
    match libdcgguf_preload() {
        Some(lib) => {
            cmd.env("LD_PRELOAD", lib).env(ACT_MAX_ENV, &act_max);
        }
        None => eprintln!(
            "dcgguf: warning: libdcgguf_preload.so not found next to dcgguf (set DCGGUF_LIB): \
             recording sums of x^2 only, no max|x|"
        ),
    }
    let out = cmd
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
        .map_err(|source| ToolError::Spawn {
            tool: tool.clone(),
            source,
        })?;
    if !out.status.success() || !output.exists() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(8).collect();
        return Err(ToolError::Failed {
            tool,
            status: out.status,
            stderr_tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        }
        .into());
    }
    if act_max.exists() {
        add_act_max(output, &act_max)?;
    }
    Ok(())
}

/// libdcgguf_preload.so for preloading: `$DCGGUF_LIB`, else next to this executable (cargo's
/// target/<profile>/ and deps/, or an installed ../lib/).
fn libdcgguf_preload() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DCGGUF_LIB") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join("libdcgguf_preload.so"),
        dir.join("deps/libdcgguf_preload.so"),
        dir.join("../lib/libdcgguf_preload.so"),
    ]
    .into_iter()
    .find(|p| p.exists())
}

/// Rewrites the imatrix GGUF at `imatrix` with the `W.in_max` tensors of `act_max` added.
fn add_act_max(imatrix: &Path, act_max: &Path) -> Result<()> {
    let read = |p: &Path| -> Result<(GgufHeader, Vec<u8>)> {
        let bytes = std::fs::read(p).map_err(DcError::io(p))?;
        let h = GgufHeader::parse(&bytes).map_err(|source| DcError::Gguf {
            path: p.to_path_buf(),
            source,
        })?;
        h.check_data_fits(bytes.len() as u64)
            .map_err(|source| DcError::Gguf {
                path: p.to_path_buf(),
                source,
            })?;
        Ok((h, bytes))
    };
    let (ih, ibytes) = read(imatrix)?;
    let (mh, mbytes) = read(act_max)?;
    let mut tensors = tensor_entries(&ih, &ibytes);
    let have: std::collections::BTreeSet<String> = tensors
        .iter()
        .filter_map(|t| t.0.strip_suffix(".in_sum2").map(str::to_owned))
        .collect();
    // Only weights llama-imatrix also saw (it skips some, e.g. with too few tokens).
    tensors.extend(tensor_entries(&mh, &mbytes).into_iter().filter(|t| {
        t.0.strip_suffix(".in_max")
            .is_some_and(|w| have.contains(w))
    }));
    let mut out = AtomicOutput::create(imatrix, None, true)?;
    out.file()
        .write_all(&build_file(&ih.kvs, &tensors))
        .map_err(DcError::io(imatrix))?;
    out.commit()?;
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
