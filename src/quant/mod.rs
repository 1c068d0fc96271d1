//! Lossy mode: compression-aware INT8 ("DC-INT8"). F32/F16/BF16/Q8_0 GGUF -> a GGUF whose 2-D
//! weights are standard Q8_0 blocks chosen to compress well (see [`q8`]), optionally with
//! per-channel scales folded into preceding operations ([`fold`]) and guided by activation
//! statistics ([`stats`]); that GGUF is then compressed losslessly by [`crate::dc`]. The DC
//! file decompresses to the quantized GGUF (not to the input), which llama.cpp runs natively.
//! docs/QUANT.md has the design and measurements.

pub mod calibrate;
pub mod cov_parts;
pub mod fold;
pub mod gptq;
pub mod proxy;
pub mod q8;
pub mod stats;

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::codec::Transform;
use crate::dc::{self, CompressOptions, CompressReport, DcError};
use crate::gguf::{GgmlType, GgufHeader, HeaderWriter, KeyValue, TensorInfo, Value, align_up};
use crate::io::{TempPath, map_readonly};

pub use calibrate::{CalibrateArgs, calibrate};
pub use gptq::{CovError, Covariances};
pub use q8::GridOptions;
pub use stats::{ActStats, ChannelStats, StatsError};

/// `--fold-alpha` when statistics are given and the flag is not: 0.5 for `llama` (measured
/// on SmolLM2: KLD 0.0038 -> 0.0017 at llama.cpp's rounding) and `qwen3` (not measured: it
/// follows llama); 0 for `qwen2`, where folding cost fidelity (Qwen2.5-Coder-1.5B with GPTQ:
/// mean KLD +0.00004 in both pairs measured, docs/QUANT.md), and elsewhere (BERT's only exact
/// fold, `attn_v` -> `attn_output`, cost 1e-5 mean cosine on MiniLM).
pub fn default_fold_alpha(arch: &str) -> f32 {
    if matches!(arch, "llama" | "qwen3") {
        0.5
    } else {
        0.0
    }
}

/// `--per-row` with GPTQ when the flag is not given: on for `qwen2` (Qwen2.5-Coder-1.5B,
/// unfolded: mean KLD 0.000776 -> 0.000724 for a 1.4% larger file, below Q8_0's 0.000751),
/// off elsewhere (SmolLM2 unfolded: 0.003651 -> 0.003726, and on MiniLM larger and less
/// faithful; docs/QUANT.md "Per-row steps on the GPTQ grid"). Without GPTQ: off.
pub fn default_per_row(arch: &str) -> bool {
    arch == "qwen2"
}

/// `--step` with GPTQ (`--calib`, `--gptq`) when not given: GPTQ on the shared-step grid at
/// the mean llama.cpp step. Measured on MiniLM with the shipped calibration text
/// (docs/QUANT.md): 0.798x the Q8_0 file at a mean cosine above Q8_0's on the eval sentences
/// and on the held-out ones (`--embd-step` 3, the default).
pub const GPTQ_DEFAULT_STEP: f32 = 1.0;

/// `--embd-step` of a lookup-only `token_embd` when not given (an encoder's, or a decoder's
/// with a separate `output.weight`). Chosen on MiniLM (0.798x the Q8_0 file at Q8_0's fidelity
/// with GPTQ). On Qwen2.5-Coder-1.5B llama.cpp's rounding there instead (`--embd-step 0`) was
/// measured: mean KLD 0.000802 vs 0.000816, within noise, for a 2.4% larger file
/// (docs/QUANT.md), so decoders keep it too.
pub const DEFAULT_EMBD_STEP: f32 = 3.0;

/// llama.cpp's `LLAMA_FTYPE_MOSTLY_Q8_0`.
pub const FTYPE_MOSTLY_Q8_0: u32 = 7;

/// How to quantize a model.
#[derive(Clone, Debug)]
pub struct QuantOptions {
    pub grid: GridOptions,
    /// Step for a lookup-only `token_embd.weight`, relative to its mean llama.cpp Q8_0 step;
    /// 0 = llama.cpp's rounding; `None`: [`DEFAULT_EMBD_STEP`] (a row lookup followed by a norm
    /// tolerates more noise than a matmul weight).
    pub embd_step: Option<f32>,
    /// Fold exponent: `s_j = rms_j^fold_alpha` (0 = no folding; needs `stats`). `None`: the
    /// architecture's default ([`default_fold_alpha`]).
    pub fold_alpha: Option<f32>,
    /// One step per row instead of one per tensor (the grid of nearest rounding and of
    /// GPTQ). `None`: with `gptq`, the architecture's default ([`default_per_row`]); without,
    /// off. The only setting of it: `grid.per_row` is ignored here and set from this per
    /// tensor.
    pub per_row: Option<bool>,
    pub stats: Option<ActStats>,
    /// Quantize (false: only fold, keeping every tensor's type; for checking folds).
    pub quantize: bool,
    /// Sort feed-forward intermediate channels by activation RMS (exact; needs stats).
    pub permute: bool,
    /// Activation-aware step per tensor: `delta_t ~ mean_j(a_j)^-tensor_alpha` (needs stats).
    pub tensor_alpha: f32,
    /// Store Q8_0 quants as one byte plane instead of split nibbles (see docs/QUANT.md).
    pub whole_byte_quants: bool,
    /// GPTQ rounding of the matmul weights on llama.cpp's Q8_0 scales, with these input
    /// covariances (`--gptq`; the step options then apply only to a lookup-only token_embd).
    pub gptq: Option<Covariances>,
    /// GPTQ damping relative to the mean diagonal of `H`.
    pub gptq_damp: f64,
    /// `--embd-step` was given: refused when the model has no lookup-only `token_embd` (it
    /// would be ignored).
    pub embd_step_given: bool,
    /// With `gptq`: the grid it rounds on, as `--step` (the shared step relative to the
    /// tensor's mean llama.cpp step, raised where a block would overflow); `None`: llama.cpp's
    /// own scales (`amax/127` per block).
    pub gptq_step: Option<f32>,
    /// With `gptq`: weights without a matrix are rounded on the grid instead of refused
    /// (covariances recorded by `calibrate` lack weights llama.cpp does not multiply as a
    /// plain matmul, e.g. MoE experts).
    pub gptq_partial: bool,
}

impl Default for QuantOptions {
    fn default() -> Self {
        QuantOptions {
            grid: GridOptions::default(),
            embd_step: None,
            fold_alpha: None,
            per_row: None,
            stats: None,
            quantize: true,
            tensor_alpha: 0.0,
            permute: false,
            whole_byte_quants: true,
            gptq: None,
            gptq_damp: gptq::DEFAULT_DAMP,
            embd_step_given: false,
            gptq_step: None,
            gptq_partial: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error(transparent)]
    Dc(#[from] DcError),
    #[error(transparent)]
    Stats(#[from] StatsError),
    #[error(transparent)]
    Cov(#[from] CovError),
    #[error("tensor {tensor:?}: source type {ty} is not supported (use F32, F16, BF16 or Q8_0)")]
    UnsupportedType { tensor: String, ty: GgmlType },
    /// Options that conflict or are out of range.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// An input (activation statistics, covariances, calibration text) that does not fit the
    /// model.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The calibration tool (llama-imatrix) could not run or failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
}

/// Quantization options that conflict or are out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("--gptq needs quantization")]
    GptqWithoutQuantization,
    #[error("--gptq cannot be combined with --permute")]
    GptqWithFolding,
    #[error("{0} needs activation statistics (--imatrix FILE or --calib)")]
    NeedsStatistics(&'static str),
    #[error("{0} does not apply to GPTQ rounding (--gptq or --calib); leave it out")]
    NotWithGptq(&'static str),
    #[error("{0} needs GPTQ rounding (--gptq FILE or --calib)")]
    NeedsGptq(&'static str),
    #[error("--calib records its own covariances: give either --calib or --gptq FILE")]
    CalibWithGptq,
    #[error("--fold-only keeps every tensor's type: {0} does not apply")]
    NotWithFoldOnly(&'static str),
    #[error(
        "--embd-step applies only to a token_embd.weight that is just a lookup (an encoder, or a \
         model with a separate output.weight); in this model it is {0}: leave --embd-step out"
    )]
    EmbdStepUnused(&'static str),
    #[error("--gptq-damp must be >= 0")]
    NegativeDamp,
    #[error("--prune must be in [0, 1)")]
    PruneRange,
}

/// An input file that does not fit the model being quantized.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("activation statistics: {}", .0.what)]
    Stats(StatsError),
    #[error("{}: covariance file: {}", .0.path, .0.what)]
    Covariances(CovError),
    #[error("{source_path}: GPTQ of {tensor:?}: {error}")]
    Gptq {
        source_path: String,
        tensor: String,
        error: gptq::GptqError,
    },
    #[error("{0}: calibration text is empty")]
    EmptyCalibration(std::path::PathBuf),
}

/// llama-imatrix (the calibration tool) could not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The tool ran and failed; `stderr_tail` is the end of what it printed.
    #[error("{tool} failed ({status}):\n{stderr_tail}")]
    Failed {
        tool: std::path::PathBuf,
        status: std::process::ExitStatus,
        stderr_tail: String,
    },
    /// The covariance recording (libdcgguf_preload.so inside llama-imatrix) gave nothing
    /// usable.
    #[error("covariance recording failed: {detail}")]
    NoCovariance { detail: String },
}

impl From<crate::io::OutputError> for QuantError {
    fn from(e: crate::io::OutputError) -> QuantError {
        QuantError::Dc(e.into())
    }
}

pub type Result<T> = std::result::Result<T, QuantError>;

/// What quantization did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct QuantReport {
    pub quantized_tensors: usize,
    pub kept_tensors: usize,
    pub folded_tensors: usize,
    /// Sum of squared error over quantized weights / sum of squares (unfolded units).
    pub rel_mse: f64,
    pub output_bytes: u64,
}

/// Whether llama-quantize would quantize this tensor (llama-quant.cpp
/// `tensor_allows_quantization`, plus the 32-element row requirement of Q8_0).
pub fn quantizable(t: &TensorInfo) -> bool {
    let n = &t.name;
    let n_dims = t.dims.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1);
    n_dims >= 2
        && n.ends_with("weight")
        && !n.contains("_norm.weight")
        && n != "position_embd.weight"
        && n != "token_types.weight"
        && !n.contains("ffn_gate_inp.weight")
        && !n.contains("ssm_conv1d")
        && !n.contains("altup")
        && !n.contains("laurel")
        && !n.contains("per_layer_model_proj")
        && t.dims[0].is_multiple_of(q8::QK8_0 as u64)
}

fn decode(t: &TensorInfo, raw: &[u8]) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(t.n_elems() as usize);
    let u16s = || {
        raw.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    };
    match t.ty {
        GgmlType::F32 => out.extend(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(u16s().map(crate::codec::half::f16_to_f32)),
        GgmlType::BF16 => out.extend(u16s().map(crate::codec::half::bf16_to_f32)),
        GgmlType::Q8_0 => q8::dequantize(raw, &mut out),
        ty => {
            return Err(QuantError::UnsupportedType {
                tensor: t.name.clone(),
                ty,
            });
        }
    }
    Ok(out)
}

fn encode(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    match ty {
        GgmlType::F16 => x
            .iter()
            .flat_map(|&v| crate::codec::half::f32_to_f16(v).to_le_bytes())
            .collect(),
        GgmlType::BF16 => x
            .iter()
            .flat_map(|&v| crate::codec::half::f32_to_bf16(v).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => {
            let mut o = Vec::new();
            q8::quantize_reference(x, &mut o);
            o
        }
        _ => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn meta_str(h: &GgufHeader, key: &str) -> Option<String> {
    h.kvs
        .iter()
        .find(|kv| kv.key == key.as_bytes())
        .and_then(|kv| match &kv.value {
            Value::String(s) => Some(String::from_utf8_lossy(s).into_owned()),
            _ => None,
        })
}

fn meta_u64(h: &GgufHeader, key: &str) -> Option<u64> {
    h.kvs
        .iter()
        .find(|kv| kv.key == key.as_bytes())
        .and_then(|kv| kv.value.as_u64())
}

/// Writes the quantized (or only folded) GGUF for `input` to `output`.
pub fn quantize_file(input: &Path, output: &Path, o: &QuantOptions) -> Result<QuantReport> {
    quantize_reporting(input, output, o, &|_| {}, &|_| Ok(()))
}

/// [`quantize_file`], saying how far it got: `length` once, with the length of the file it
/// will write, before writing any of it; then `written_since` after the header and after
/// each tensor with the bytes written since its last call (they add up to that length). An
/// error from `written_since` (a cancel) stops it there.
fn quantize_reporting(
    input: &Path,
    output: &Path,
    o: &QuantOptions,
    length: &dyn Fn(u64),
    written_since: &dyn Fn(u64) -> Result<()>,
) -> Result<QuantReport> {
    let (_f, map) = map_readonly(input).map_err(DcError::io(input))?;
    let src: &[u8] = &map;
    let gerr = |source| DcError::Gguf {
        path: input.to_path_buf(),
        source,
    };
    let h = GgufHeader::parse(src).map_err(gerr)?;
    h.check_data_fits(src.len() as u64).map_err(gerr)?;
    let arch = meta_str(&h, "general.architecture").unwrap_or_default();
    if arch == dc::DC_ARCHITECTURE {
        return Err(DcError::AlreadyDc(input.to_path_buf()).into());
    }
    if let Some(st) = &o.stats {
        st.check_against(&h).map_err(InputError::Stats)?;
    }
    let fold_alpha = o.fold_alpha.unwrap_or_else(|| default_fold_alpha(&arch));
    let per_row = o
        .per_row
        .unwrap_or_else(|| o.gptq.is_some() && default_per_row(&arch));
    let scales = match (&o.stats, fold_alpha != 0.0) {
        (Some(st), true) => {
            let folds = fold::plan(
                &arch,
                &h,
                meta_u64(&h, &format!("{arch}.attention.head_count")),
                meta_u64(&h, &format!("{arch}.attention.head_count_kv")),
            );
            fold::scales(&folds, st, fold_alpha)
        }
        _ => fold::Scales::default(),
    };

    let perms = match &o.stats {
        Some(st) if o.permute => fold::ffn_permutations(&h, st),
        _ => fold::Perms::default(),
    };
    let abs_steps = match &o.stats {
        Some(st) if o.tensor_alpha != 0.0 && o.quantize => {
            tensor_steps(&h, src, st, &scales, &perms, o.tensor_alpha)?
        }
        _ => Default::default(),
    };
    // token_embd gets its own (coarser) step only when it is just a lookup table: with tied
    // embeddings (no output.weight) it is also the LM head, a matmul weight.
    let embd_is_lookup_only = h.tensors.iter().any(|t| t.name == "output.weight")
        || meta_u64(&h, &format!("{arch}.pooling_type")).is_some();
    if o.embd_step_given && o.quantize {
        check_embd_step(&h)?;
    }
    // GPTQ: every quantized matmul weight (not a lookup-only token_embd) needs its H.
    let gptq_target = |t: &TensorInfo| {
        o.gptq
            .as_ref()
            .is_some_and(|c| !o.gptq_partial || c.n_in(&t.name).is_some())
            && o.quantize
            && quantizable(t)
            && !(t.name == "token_embd.weight" && embd_is_lookup_only)
    };
    if let Some(cov) = &o.gptq {
        if !o.quantize {
            return Err(UsageError::GptqWithoutQuantization.into());
        }
        // Folded scales are applied to H below; a permutation is not (it was measured
        // neutral, and is opt-in).
        if !perms.rows.is_empty() || !perms.columns.is_empty() {
            return Err(UsageError::GptqWithFolding.into());
        }
        let needed: Vec<(String, usize)> = gptq_weights(&h)
            .into_iter()
            .filter(|(n, _)| !o.gptq_partial || cov.n_in(n).is_some())
            .collect();
        cov.check_against(&needed)
            .map_err(InputError::Covariances)?;
    }
    // New tensor table: same order, quantized ones re-typed, offsets recomputed.
    let mut report = QuantReport::default();
    let mut infos = Vec::with_capacity(h.tensors.len());
    let mut off = 0u64;
    for t in &h.tensors {
        let ty = if o.quantize && quantizable(t) {
            GgmlType::Q8_0
        } else {
            t.ty
        };
        let nbytes = ty.nbytes(t.n_elems()).expect("Q8_0 rows are whole blocks");
        infos.push((t, ty, off, nbytes));
        off = align_up(off + nbytes, h.alignment).expect("fits");
    }
    let mut w = HeaderWriter::new(h.version);
    for kv in &h.kvs {
        if o.quantize && kv.key == b"general.file_type" {
            let v = match kv.value {
                Value::Scalar { ty, .. } => Value::Scalar {
                    ty,
                    le: u64::from(FTYPE_MOSTLY_Q8_0).to_le_bytes(),
                },
                _ => Value::u32(FTYPE_MOSTLY_Q8_0),
            };
            w.kv(&KeyValue {
                key: kv.key.clone(),
                value: v,
            });
        } else {
            w.kv(kv);
        }
    }
    for (t, ty, off, _) in &infos {
        w.tensor(&t.name, &t.dims, *ty, *off);
    }
    let head = w.finish(h.alignment);
    let data_len = infos.last().map_or(0, |(_, _, off, nbytes)| off + nbytes);
    length(head.len() as u64 + data_len);

    let file = std::fs::File::create(output).map_err(DcError::io(output))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let werr = DcError::io(output);
    let mut written = 0u64;
    let mut err2 = 0f64;
    let mut sig2 = 0f64;
    let proxy_to = proxy::target();
    // A cancel seen by `written_since` travels as an io::Error, unwrapped below.
    let report_written = |n: u64| written_since(n).map_err(std::io::Error::other);
    let mut body = || -> std::io::Result<()> {
        out.write_all(&head)?;
        report_written(head.len() as u64)?;
        for (t, _, off, nbytes) in &infos {
            let pad = *off - written;
            out.write_all(&vec![0u8; pad as usize])?;
            let start = (h.data_offset + t.offset) as usize;
            let raw = &src[start..start + t.nbytes as usize];
            let ne0 = t.dims[0] as usize;
            let touched = scales.columns.contains_key(&t.name)
                || scales.rows.contains_key(&t.name)
                || perms.touches(&t.name);
            let bytes = if o.quantize && quantizable(t) {
                // Quantize (folded first). Q8_0 sources are dequantized and re-quantized.
                let mut x = decode(t, raw).map_err(std::io::Error::other)?;
                fold::apply(&t.name, &mut x, ne0, &scales);
                perms.apply(&t.name, &mut x, ne0);
                if touched {
                    report.folded_tensors += 1;
                }
                let imp: Option<Vec<f32>> =
                    o.stats.as_ref().and_then(|s| s.get(&t.name)).map(|st| {
                        let mut a = st.mean_sq.clone();
                        if let Some(c) = scales.columns.get(&t.name) {
                            a.iter_mut().zip(c).for_each(|(a, s)| *a /= s * s);
                        }
                        a
                    });
                let mut g = o.grid.clone();
                g.per_row = per_row;
                if t.name == "token_embd.weight" && embd_is_lookup_only {
                    let e = o.embd_step.unwrap_or(DEFAULT_EMBD_STEP);
                    g.step = (e > 0.0).then_some(e);
                }
                if let (Some(s), Some(d)) = (g.step, abs_steps.get(&t.name)) {
                    g.abs_step = Some(s * d);
                }
                let q = match o.gptq.as_ref().filter(|_| gptq_target(t)) {
                    Some(cov) => {
                        // Read now and dropped after this tensor: one matrix in memory.
                        let mut hm = cov.matrix(&t.name).map_err(|e| {
                            std::io::Error::other(QuantError::Input(InputError::Covariances(e)))
                        })?;
                        // Diagnostics (DCGGUF_QUANT_PROXY): llama.cpp's Q8_0 rounds the
                        // unfolded weights, seen through the unfolded H.
                        let unfolded = match &proxy_to {
                            Some(_) => {
                                Some((decode(t, raw).map_err(std::io::Error::other)?, hm.clone()))
                            }
                            None => None,
                        };
                        // Column j of W was multiplied by s_j, so its input is x_j / s_j:
                        // H' = S^-1 H S^-1.
                        if let Some(c) = scales.columns.get(&t.name) {
                            for (i, row) in hm.chunks_exact_mut(ne0).enumerate() {
                                for (j, v) in row.iter_mut().enumerate() {
                                    *v /= c[i] * c[j];
                                }
                            }
                        }
                        let grid = o.gptq_step.map(|s| {
                            if per_row {
                                q8::row_scales(&x, ne0, s)
                            } else {
                                q8::shared_scales(&x, s)
                            }
                        });
                        let q = gptq::quantize_on(&x, ne0, &hm, o.gptq_damp, grid.as_deref())
                            .map_err(|e| {
                                std::io::Error::other(QuantError::Input(InputError::Gptq {
                                    source_path: cov.source.clone(),
                                    tensor: t.name.clone(),
                                    error: e,
                                }))
                            })?;
                        if let (Some(p), Some((x0, h0))) = (&proxy_to, &unfolded) {
                            let line = proxy::matmul_line(
                                &t.name,
                                ne0,
                                &x,
                                &hm,
                                &q,
                                grid.as_deref(),
                                x0,
                                h0,
                            );
                            proxy::append(p, &line);
                        }
                        q
                    }
                    None => {
                        let q = q8::quantize(&x, ne0, imp.as_deref(), &g);
                        if let Some(p) = &proxy_to
                            && t.name == "token_embd.weight"
                            && embd_is_lookup_only
                        {
                            proxy::append(p, &proxy::lookup_line(&t.name, ne0, &x, &q));
                        }
                        q
                    }
                };
                // Dequantized a slice at a time: a whole LM head in f32 is ~1 GB at 1.5B.
                let mut y = Vec::with_capacity(q8::QK8_0 << 12);
                for (xs, qs) in x
                    .chunks(q8::QK8_0 << 12)
                    .zip(q.chunks(q8::BLOCK_BYTES << 12))
                {
                    y.clear();
                    q8::dequantize(qs, &mut y);
                    for (a, b) in xs.iter().zip(&y) {
                        err2 += f64::from(a - b).powi(2);
                        sig2 += f64::from(*a).powi(2);
                    }
                }
                report.quantized_tensors += 1;
                q
            } else if touched {
                let mut x = decode(t, raw).map_err(std::io::Error::other)?;
                fold::apply(&t.name, &mut x, ne0, &scales);
                perms.apply(&t.name, &mut x, ne0);
                report.folded_tensors += 1;
                report.kept_tensors += 1;
                encode(t.ty, &x)
            } else {
                report.kept_tensors += 1;
                raw.to_vec()
            };
            debug_assert_eq!(bytes.len() as u64, *nbytes);
            out.write_all(&bytes)?;
            release_pages(&map, start..start + t.nbytes as usize);
            report_written(pad + nbytes)?;
            written = *off + nbytes;
        }
        out.flush()
    };
    body().map_err(|e| match e.downcast::<QuantError>() {
        Ok(q) => q,
        Err(e) => QuantError::Dc(werr(e)),
    })?;
    report.rel_mse = if sig2 > 0.0 { err2 / sig2 } else { 0.0 };
    report.output_bytes = written;
    Ok(report)
}

/// Drops this process's pages of `map[range]` (the whole pages inside it) once a source tensor
/// has been read for the last time: without it every page of the mapped input stays in the
/// resident set until the end (7.1 GB for a 1.5B model in F32), though each is read once.
fn release_pages(map: &memmap2::Mmap, range: std::ops::Range<usize>) {
    let page = crate::io::page_size();
    let (start, end) = (range.start.div_ceil(page) * page, range.end / page * page);
    if end > start {
        // SAFETY: the map is a read-only file mapping that nothing writes through;
        // MADV_DONTNEED only drops this process's page-table entries for the range, and a
        // later read faults the same file bytes back in. The slices of this tensor are no
        // longer used (its bytes were decoded or copied before being written).
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }
}

/// `--embd-step` would be ignored unless the model has a quantized, lookup-only `token_embd`.
fn check_embd_step(h: &GgufHeader) -> std::result::Result<(), UsageError> {
    let arch = meta_str(h, "general.architecture").unwrap_or_default();
    let lookup_only = h.tensors.iter().any(|t| t.name == "output.weight")
        || meta_u64(h, &format!("{arch}.pooling_type")).is_some();
    match h.tensors.iter().find(|t| t.name == "token_embd.weight") {
        None => Err(UsageError::EmbdStepUnused("absent")),
        Some(t) if !quantizable(t) => Err(UsageError::EmbdStepUnused("not quantized")),
        Some(_) if !lookup_only => Err(UsageError::EmbdStepUnused(
            "also the LM head (tied embeddings)",
        )),
        Some(_) => Ok(()),
    }
}

/// The weights GPTQ rounds in a model (its quantizable matmul weights, not a lookup-only
/// `token_embd`), with their input widths: the tensors a covariance file must hold.
pub fn gptq_weights(h: &GgufHeader) -> Vec<(String, usize)> {
    let arch = meta_str(h, "general.architecture").unwrap_or_default();
    let embd_is_lookup_only = h.tensors.iter().any(|t| t.name == "output.weight")
        || meta_u64(h, &format!("{arch}.pooling_type")).is_some();
    h.tensors
        .iter()
        .filter(|t| quantizable(t) && !(t.name == "token_embd.weight" && embd_is_lookup_only))
        .map(|t| (t.name.clone(), t.dims[0] as usize))
        .collect()
}

/// Activation-aware per-tensor steps (before the global `step` factor): for tensors with
/// statistics, `D_t = mean_j(a_j)^-alpha`, rescaled by one constant so that the geometric mean
/// (weighted by element count) equals that of llama.cpp's mean Q8_0 steps of those tensors.
fn tensor_steps(
    h: &GgufHeader,
    src: &[u8],
    st: &ActStats,
    scales: &fold::Scales,
    perms: &fold::Perms,
    alpha: f32,
) -> Result<std::collections::HashMap<String, f32>> {
    let mut raw = Vec::new();
    let (mut log_ratio, mut n) = (0f64, 0f64);
    for t in h.tensors.iter().filter(|t| quantizable(t)) {
        let Some(cs) = st.get(&t.name) else { continue };
        let start = (h.data_offset + t.offset) as usize;
        let mut x = decode(t, &src[start..start + t.nbytes as usize])?;
        fold::apply(&t.name, &mut x, t.dims[0] as usize, scales);
        perms.apply(&t.name, &mut x, t.dims[0] as usize);
        let b = q8::q8_mean_step(&x);
        let mut a = cs.mean_sq.clone();
        if let Some(c) = scales.columns.get(&t.name) {
            a.iter_mut().zip(c).for_each(|(a, s)| *a /= s * s);
        }
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / a.len() as f64;
        let d = mean.max(1e-30).powf(-f64::from(alpha));
        let w = x.len() as f64;
        log_ratio += w * (f64::from(b) / d).ln();
        n += w;
        raw.push((t.name.clone(), d));
    }
    let k = if n > 0.0 { (log_ratio / n).exp() } else { 1.0 };
    Ok(raw
        .into_iter()
        .map(|(name, d)| (name, (d * k) as f32))
        .collect())
}

/// Q8_0 quants as one plane (Zstd's Huffman sees whole bytes) instead of split nibbles.
fn whole_byte_transform(ty: GgmlType) -> Transform {
    if ty == GgmlType::Q8_0 {
        Transform::BlockFields
    } else {
        Transform::default_for(ty)
    }
}

/// Quantizes `input` into a temporary GGUF next to `output`, compresses that into `output`
/// and removes the temporary file. `progress` and `copts.job` see both steps: the job's total
/// is twice the temporary file's length (known once the input's header is read), counted
/// once as the quantization writes it (after each tensor) and once as it is compressed; a
/// cancel stops either step at its next progress point.
pub fn compress_lossy(
    input: &Path,
    output: &Path,
    o: &QuantOptions,
    copts: &CompressOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(QuantReport, CompressReport)> {
    if output.exists() && !copts.force {
        return Err(DcError::from(crate::io::OutputError::Exists(output.to_path_buf())).into());
    }
    let tmp = temp_next_to(output, "q8_0.tmp.gguf");
    let _guard = TempPath::new(tmp.clone())?;
    let job = &copts.job;
    let qr = quantize_reporting(
        input,
        &tmp,
        o,
        // The first total recorded stands: compressing the file would record its length.
        &|len| job.set_total(2 * len),
        &|n| {
            progress(n);
            Ok(job.check()?)
        },
    )?;
    let mut copts = copts.clone();
    if o.whole_byte_quants {
        copts.transform = Some(whole_byte_transform);
    }
    let cr = dc::compress_file(&tmp, output, &copts, progress)?;
    Ok((qr, cr))
}

pub(crate) fn temp_next_to(output: &Path, suffix: &str) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!(".{name}.{}.{suffix}", std::process::id()))
}

/// `dcgguf compress --quantize ...` options.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct QuantArgs {
    /// Lossy mode: quantize 2-D weights to compression-aware Q8_0 first. The DC file then
    /// decompresses to that Q8_0 GGUF, not to the input.
    #[arg(long, value_enum)]
    pub quantize: Option<QuantKind>,
    /// Step relative to llama.cpp's mean Q8_0 step; larger = smaller file, less fidelity.
    /// 0 = llama.cpp's own Q8_0 rounding (with --embd-step 0: identical to llama-quantize).
    /// With GPTQ (--gptq, --calib) the grid GPTQ rounds on. Default 0.8, with GPTQ 1.
    #[arg(long, requires = "quantize")]
    pub step: Option<f32>,
    /// Step for a lookup-only token_embd.weight relative to its llama.cpp Q8_0 step
    /// (0 = llama.cpp's; default 3).
    #[arg(long, requires = "quantize")]
    pub embd_step: Option<f32>,
    /// Activation-aware block steps (needs --imatrix or --calib): step ~ mean(x^2)^-alpha
    /// per 32-channel block column. Default 0 (measured: no gain).
    #[arg(long, requires = "quantize")]
    pub alpha: Option<f32>,
    /// Fold per-channel scales s_j = rms_j^A into preceding operations where exact
    /// (with statistics; default 0.5 for llama/qwen3, 0 = off elsewhere).
    #[arg(long, requires = "quantize")]
    pub fold_alpha: Option<f32>,
    /// Activation-aware step per tensor (needs statistics): step ~ mean(x^2)^-A.
    #[arg(long, requires = "quantize")]
    pub tensor_alpha: Option<f32>,
    /// How far each block's step follows its own amax (0 = one shared step, 1 = per block,
    /// snapped to a 2^(1/4) grid).
    #[arg(long, requires = "quantize")]
    pub block_adapt: Option<f32>,
    /// Reorder feed-forward channels by activation RMS (exact; needs statistics).
    #[arg(long, requires = "quantize")]
    pub permute: bool,
    /// One step per row (from the row's weights) instead of one per tensor (also the GPTQ
    /// grid). With GPTQ (--gptq, --calib) and no flag: on for qwen2, off elsewhere;
    /// `--per-row=false` turns it off.
    #[arg(
        long,
        requires = "quantize",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub per_row: Option<bool>,
    /// Fraction of weights (by activation-weighted magnitude) pruned to 0.
    #[arg(long, requires = "quantize")]
    pub prune: Option<f32>,
    /// Rate-distortion rounding strength (step^2 per bit; 0 = nearest).
    #[arg(long, requires = "quantize")]
    pub rdo: Option<f32>,
    /// llama.cpp imatrix file (GGUF or legacy .dat) with activation statistics.
    #[arg(long, requires = "quantize", conflicts_with = "calib")]
    pub imatrix: Option<PathBuf>,
    /// Calibrate through llama.cpp first (`dcgguf calibrate`: statistics and input
    /// covariances), then round with GPTQ. `--calib` alone uses the text shipped with dcgguf;
    /// `--calib=TEXT` another text (note the `=`). Needs llama.cpp's llama-imatrix and
    /// libdcgguf_preload.so.
    #[arg(
        long,
        requires = "quantize",
        num_args = 0..=1,
        require_equals = true,
        value_name = "TEXT"
    )]
    pub calib: Option<Option<PathBuf>>,
    /// Memory for covariance accumulators per calibration pass (with --calib; suffixes k,
    /// M, G; default 2G). More passes over the text when the model needs more.
    #[arg(long, requires = "calib", value_parser = crate::io::parse_size, value_name = "BYTES")]
    pub cov_budget: Option<u64>,
    /// GPTQ rounding of the matmul weights, using this covariance GGUF (per-weight
    /// E[x x^T], from `dcgguf calibrate`), on the --step grid (default 1; --step 0:
    /// llama.cpp's own scales); token_embd, when only a lookup, gets --embd-step.
    #[arg(long, requires = "quantize", value_name = "COVFILE")]
    pub gptq: Option<PathBuf>,
    /// GPTQ damping: H += D * mean(diag H) * I (default 0.1; with --gptq or --calib).
    #[arg(long, requires = "quantize")]
    pub gptq_damp: Option<f64>,
    /// Only fold/permute, keep every tensor's type (for checking that folds are exact).
    #[arg(long, requires = "quantize", hide = true)]
    pub fold_only: bool,
    /// Keep Q8_0 quants in split nibble planes (the lossless codec's default) instead of one
    /// byte plane.
    #[arg(long, requires = "quantize", hide = true)]
    pub split_quants: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantKind {
    Int8,
}

impl QuantArgs {
    /// Options that conflict or would be ignored, named in the error.
    pub fn check(&self) -> std::result::Result<(), UsageError> {
        let stats = self.imatrix.is_some() || self.calib.is_some();
        let gptq = self.gptq.is_some() || self.calib.is_some();
        if self.gptq.is_some() && self.calib.is_some() {
            return Err(UsageError::CalibWithGptq);
        }
        let needs_stats = [
            ("--alpha", self.alpha.is_some()),
            ("--fold-alpha", self.fold_alpha.is_some()),
            ("--tensor-alpha", self.tensor_alpha.is_some()),
            ("--permute", self.permute),
            ("--fold-only", self.fold_only),
        ];
        if let Some((name, _)) = needs_stats.iter().find(|(_, on)| *on && !stats) {
            return Err(UsageError::NeedsStatistics(name));
        }
        if let Some(d) = self.gptq_damp {
            if !gptq {
                return Err(UsageError::NeedsGptq("--gptq-damp"));
            }
            if !(d >= 0.0 && d.is_finite()) {
                return Err(UsageError::NegativeDamp);
            }
        }
        if gptq {
            // These shape the nearest-rounding grid of matmul weights, which GPTQ replaces.
            let not_with_gptq = [
                ("--alpha", self.alpha.is_some()),
                ("--tensor-alpha", self.tensor_alpha.is_some()),
                ("--block-adapt", self.block_adapt.is_some()),
                ("--prune", self.prune.is_some()),
                ("--rdo", self.rdo.is_some()),
                ("--permute", self.permute),
                ("--fold-only", self.fold_only),
            ];
            if let Some((name, _)) = not_with_gptq.iter().find(|(_, on)| *on) {
                return Err(UsageError::NotWithGptq(name));
            }
        }
        if self.fold_only {
            let quant_only = [
                ("--step", self.step.is_some()),
                ("--embd-step", self.embd_step.is_some()),
                ("--block-adapt", self.block_adapt.is_some()),
                ("--per-row", self.per_row.is_some()),
                ("--prune", self.prune.is_some()),
                ("--rdo", self.rdo.is_some()),
                ("--split-quants", self.split_quants),
            ];
            if let Some((name, _)) = quant_only.iter().find(|(_, on)| *on) {
                return Err(UsageError::NotWithFoldOnly(name));
            }
        }
        if !(0.0..1.0).contains(&self.prune.unwrap_or(0.0)) {
            return Err(UsageError::PruneRange);
        }
        Ok(())
    }

    /// Options for a run; `input` is the model (for `--calib`).
    pub fn options(&self, input: &Path, output: &Path) -> Result<QuantOptions> {
        self.check()?;
        let d = QuantOptions::default();
        let gptq = self.gptq.is_some() || self.calib.is_some();
        let mut o = QuantOptions {
            grid: GridOptions {
                step: match self.step {
                    Some(s) if s <= 0.0 => None,
                    Some(s) => Some(s),
                    None => d.grid.step,
                },
                alpha: self.alpha.unwrap_or(d.grid.alpha),
                prune: self.prune.unwrap_or(0.0),
                rdo: self.rdo.unwrap_or(0.0),
                abs_step: None,
                per_row: false,
                block_adapt: self.block_adapt.unwrap_or(d.grid.block_adapt),
            },
            tensor_alpha: self.tensor_alpha.unwrap_or(d.tensor_alpha),
            permute: self.permute,
            embd_step: self.embd_step,
            fold_alpha: self.fold_alpha,
            per_row: self.per_row,
            stats: None,
            quantize: !self.fold_only,
            whole_byte_quants: !self.split_quants,
            gptq: None,
            gptq_damp: self.gptq_damp.unwrap_or(gptq::DEFAULT_DAMP),
            embd_step_given: self.embd_step.is_some(),
            gptq_step: match self.step {
                _ if !gptq => None,
                Some(s) if s <= 0.0 => None,
                Some(s) => Some(s),
                None => Some(GPTQ_DEFAULT_STEP),
            },
            gptq_partial: self.calib.is_some(),
        };
        if let Some(p) = &self.gptq {
            o.gptq = Some(Covariances::load(p)?);
        }
        if let Some(p) = &self.imatrix {
            o.stats = Some(ActStats::load(p)?);
        } else if let Some(text) = &self.calib {
            // Refuse an ignored --embd-step before spending minutes calibrating.
            if self.embd_step.is_some() && !self.fold_only {
                let (_f, map) = map_readonly(input).map_err(DcError::io(input))?;
                let h = GgufHeader::parse(&map).map_err(|source| DcError::Gguf {
                    path: input.to_path_buf(),
                    source,
                })?;
                check_embd_step(&h)?;
            }
            let stats = temp_next_to(output, "imatrix.gguf");
            let _g = TempPath::new(stats.clone())?;
            let cov = temp_next_to(output, "cov.gguf");
            let _g2 = TempPath::new(cov.clone())?;
            let r = calibrate::calibrate_to(
                input,
                text.as_deref(),
                &stats,
                Some(&cov),
                None,
                128,
                self.cov_budget.unwrap_or(calibrate::DEFAULT_COV_BUDGET),
            )?;
            eprintln!(
                "calibrate: {} weights, {} tokens, {} pass(es), {:.1} s",
                r.covariance_tensors, r.tokens, r.passes, r.seconds
            );
            o.stats = Some(ActStats::load(&stats)?);
            o.gptq = Some(Covariances::load(&cov)?);
        }
        Ok(o)
    }
}
