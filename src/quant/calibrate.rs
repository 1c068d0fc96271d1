//! `dcgguf calibrate`: activation statistics and input covariances from real llama.cpp.
//!
//! Covariances (`sum x x^T` of every matmul input, for GPTQ) are recorded by the graph
//! callback of libdcgguf_preload.so (`llama::covar`) in one or more passes over the text, as
//! many as `--cov-budget` requires, and merged into the covariance file of docs/QUANT.md.
//! Embedding models are recorded through llama-embedding (one sequence per line), decoders in
//! the llama-imatrix run. Without a text, the shipped one (data/calibration.txt) is used.
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
use crate::gguf::{
    GgufHeader, HeaderWriter, KeyValue, Value, ValueType, align_up, build_file, tensor_entries,
};
use crate::io::{AtomicOutput, TempPath, map_readonly};

/// Environment variable that asks the llama.cpp hook (`llama::actmax`) in a calibration run
/// to record each weight input's max |x| and write it to this path.
pub const ACT_MAX_ENV: &str = "DCGGUF_ACT_MAX_OUT";
/// Environment variable that asks the llama.cpp hook (`llama::covar`) to accumulate each
/// weight input's `sum x x^T` and write this pass's matrices to this path.
pub const COV_OUT_ENV: &str = "DCGGUF_COV_OUT";
/// Accumulator memory (bytes) one covariance pass may use.
pub const COV_BUDGET_ENV: &str = "DCGGUF_COV_BUDGET";
/// File listing the weights (one per line) an earlier pass recorded.
pub const COV_DONE_ENV: &str = "DCGGUF_COV_DONE";

/// The calibration text shipped with dcgguf (data/calibration.txt, written for the project;
/// not any evaluation set), used when no text is given.
pub const SHIPPED_TEXT: &str = include_str!("../../data/calibration.txt");

/// Default accumulator memory per covariance pass.
pub const DEFAULT_COV_BUDGET: u64 = 2 << 30;

#[derive(clap::Args, Clone, Debug)]
pub struct CalibrateArgs {
    /// Model GGUF (full precision or Q8_0).
    pub model: PathBuf,
    /// Calibration text (plain UTF-8; default: the text shipped with dcgguf,
    /// data/calibration.txt).
    pub text: Option<PathBuf>,
    /// Output: activation statistics (an imatrix GGUF, for --imatrix).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Output: input covariances of every matmul weight (for --gptq). Default: the -o path
    /// with `.imatrix.gguf` (or `.gguf`) replaced by `.cov.gguf`.
    #[arg(long, value_name = "FILE", conflicts_with = "no_covariance")]
    pub covariance: Option<PathBuf>,
    /// Statistics only, no covariances (one llama-imatrix run, little memory).
    #[arg(long)]
    pub no_covariance: bool,
    /// Memory for covariance accumulators per pass (suffixes k, M, G); inputs that do not
    /// fit are recorded in further passes over the same text.
    #[arg(long, value_name = "BYTES", value_parser = crate::io::parse_size, default_value = "2G")]
    pub cov_budget: u64,
    /// Directory with llama-imatrix and llama-embedding (default: $DCGGUF_LLAMA_BIN, then
    /// ~/.cache/dcgguf/llama.cpp-<pinned version>-r<build rev>/bin, then PATH).
    #[arg(long)]
    pub llama_bin: Option<PathBuf>,
    /// Tokens per chunk (llama-imatrix -c).
    #[arg(long, default_value_t = 128)]
    pub ctx: u32,
}

/// The default covariance path for statistics written to `stats`.
pub fn default_covariance_path(stats: &Path) -> PathBuf {
    let name = stats
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".imatrix.gguf")
        .or_else(|| name.strip_suffix(".gguf"))
        .unwrap_or(&name);
    stats.with_file_name(format!("{stem}.cov.gguf"))
}

/// Summary of a calibration run.
#[derive(Debug, Default, serde::Serialize)]
pub struct CalibrateReport {
    pub output: PathBuf,
    /// Weights with statistics.
    pub tensors: usize,
    pub covariance: Option<PathBuf>,
    /// Weights with a covariance matrix.
    pub covariance_tensors: usize,
    /// Distinct matmul inputs (shared inputs counted once).
    pub covariance_inputs: usize,
    /// llama-imatrix runs over the text (1 + extra covariance passes).
    pub passes: usize,
    /// Tokens per matrix (rows of the matmul inputs seen).
    pub tokens: u64,
    /// Largest accumulator memory of one pass.
    pub peak_accumulator_bytes: u64,
    /// Bounds the largest resident set of a llama-imatrix run from above: getrusage of
    /// children, in which Linux also counts this process's own resident set at each spawn
    /// (the child starts in, or from a copy of, this address space), so it is exact only
    /// while llama-imatrix holds more than this process did.
    pub max_rss_bytes: u64,
    pub seconds: f64,
}

pub fn calibrate(a: &CalibrateArgs) -> Result<CalibrateReport> {
    let cov = (!a.no_covariance).then(|| {
        a.covariance
            .clone()
            .unwrap_or_else(|| default_covariance_path(&a.output))
    });
    calibrate_to(
        &a.model,
        a.text.as_deref(),
        &a.output,
        cov.as_deref(),
        a.llama_bin.as_deref(),
        a.ctx,
        a.cov_budget,
    )
}

/// Statistics to `stats` and, with `cov`, covariances to `cov` (in as many passes as
/// `budget` requires), from llama.cpp runs over `text` (`None`: the shipped text). Progress
/// goes to stderr, one line per pass.
pub fn calibrate_to(
    model: &Path,
    text: Option<&Path>,
    stats: &Path,
    cov: Option<&Path>,
    llama_bin: Option<&Path>,
    ctx: u32,
    budget: u64,
) -> Result<CalibrateReport> {
    let t0 = std::time::Instant::now();
    let shipped = temp_next_to(stats, "calibration.txt");
    let _g0 = TempPath::new(shipped.clone())?;
    // Recorded in the covariance file: the text's file name, or the shipped text's path in the
    // repository (its temporary copy has a process-specific name).
    let label = match text {
        Some(t) => t
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        None => "data/calibration.txt (shipped with dcgguf)".to_string(),
    };
    let text = match text {
        Some(t) => t.to_path_buf(),
        None => {
            std::fs::write(&shipped, SHIPPED_TEXT).map_err(DcError::io(&shipped))?;
            shipped.clone()
        }
    };
    let meta = std::fs::metadata(&text).map_err(DcError::io(&text))?;
    if meta.len() == 0 {
        return Err(InputError::EmptyCalibration(text.clone()).into());
    }
    let patched = temp_next_to(stats, "calib-model.gguf");
    let _g = TempPath::new(patched.clone())?;
    let model_used = if without_add_eos(model, &patched)? {
        patched.as_path()
    } else {
        model
    };
    let mut report = CalibrateReport {
        output: stats.to_path_buf(),
        covariance: cov.map(Path::to_path_buf),
        ..CalibrateReport::default()
    };
    let act_max = temp_next_to(stats, "act-max.gguf");
    let _g2 = TempPath::new(act_max.clone())?;
    let done_list = temp_next_to(stats, "cov-done.txt");
    let _g3 = TempPath::new(done_list.clone())?;
    let scratch_stats = temp_next_to(stats, "pass.imatrix.gguf");
    let _g4 = TempPath::new(scratch_stats.clone())?;
    // Embedding models (pooled encoders such as BERT) are run the way they are used: each
    // line of the text as its own sequence with its special tokens ([CLS] ... [SEP]), through
    // llama-embedding; llama-imatrix's fixed windows (no [SEP], cut mid-sentence) gave GPTQ
    // covariances that were measurably worse on MiniLM. Decoders see llama-imatrix's windows
    // of the running text, which is how they are used.
    let pooled = is_pooled(model)?;
    let lines = temp_next_to(stats, "calib-lines.txt");
    let _g5 = TempPath::new(lines.clone())?;
    if pooled && cov.is_some() {
        let t = std::fs::read_to_string(&text).map_err(DcError::io(&text))?;
        std::fs::write(&lines, sequences(&t)).map_err(DcError::io(&lines))?;
    }
    let mut parts: Vec<TempPath> = Vec::new();
    let mut part_paths: Vec<PathBuf> = Vec::new();
    let mut done: std::collections::BTreeSet<String> = Default::default();
    let mut pass = 0;
    loop {
        pass += 1;
        let tp = std::time::Instant::now();
        let part = temp_next_to(stats, &format!("cov-part{pass}.gguf"));
        parts.push(TempPath::new(part.clone())?);
        let record_cov = cov.is_some() && !(pass == 1 && pooled);
        let cov_env = record_cov.then_some(CovPass {
            out: &part,
            budget,
            done: (!done.is_empty()).then_some(done_list.as_path()),
        });
        let driver = if pass == 1 {
            Driver::Imatrix {
                model: model_used,
                text: &text,
                output: stats,
            }
        } else if pooled {
            Driver::Embedding {
                model,
                text: &lines,
            }
        } else {
            Driver::Imatrix {
                model: model_used,
                text: &text,
                output: &scratch_stats,
            }
        };
        run_pass(
            driver,
            llama_bin,
            ctx,
            (pass == 1).then_some(act_max.as_path()),
            cov_env,
        )?;
        if pass == 1 && act_max.exists() {
            add_act_max(stats, &act_max)?;
        }
        report.passes = pass;
        report.max_rss_bytes = report.max_rss_bytes.max(children_max_rss());
        if cov.is_none() {
            break;
        }
        if !record_cov {
            eprintln!(
                "calibrate: pass {pass}: statistics, {:.1} s",
                tp.elapsed().as_secs_f64()
            );
            continue;
        }
        let groups = read_part_groups(&part)?;
        let rec: Vec<_> = groups.iter().filter(|g| g.0).collect();
        if rec.is_empty() {
            return Err(ToolError::NoCovariance {
                detail: format!("pass {pass} recorded no matmul input"),
            }
            .into());
        }
        let acc: u64 = rec
            .iter()
            .map(|g| super::cov_parts::accumulator_bytes(g.2))
            .sum();
        report.peak_accumulator_bytes = report.peak_accumulator_bytes.max(acc);
        report.tokens = report
            .tokens
            .max(rec.iter().map(|g| g.3).max().unwrap_or(0));
        for g in &rec {
            done.extend(g.4.iter().cloned());
        }
        let deferred = groups.iter().filter(|g| !g.0).count();
        eprintln!(
            "calibrate: pass {pass}: {} inputs ({} weights) recorded, {} deferred; \
             {:.0} MiB of accumulators, {:.1} s",
            rec.len(),
            rec.iter().map(|g| g.4.len()).sum::<usize>(),
            deferred,
            acc as f64 / (1u64 << 20) as f64,
            tp.elapsed().as_secs_f64()
        );
        part_paths.push(part);
        if deferred == 0 {
            break;
        }
        let list: String = done.iter().map(|w| format!("{w}\n")).collect();
        std::fs::write(&done_list, list).map_err(DcError::io(&done_list))?;
    }
    let st = ActStats::load(stats)?;
    report.tensors = st.tensors.len();
    if let Some(cov) = cov {
        let (tensors, inputs) = merge_parts(model, &part_paths, cov, &label)?;
        report.covariance_tensors = tensors;
        report.covariance_inputs = inputs;
    }
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Largest resident set (bytes) of any waited-for child process so far.
fn children_max_rss() -> u64 {
    // SAFETY: getrusage writes one rusage struct, which we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0;
    }
    ru.ru_maxrss.max(0) as u64 * 1024
}

fn read_gguf(p: &Path) -> Result<(GgufHeader, memmap2::Mmap, std::fs::File)> {
    let (f, map) = map_readonly(p).map_err(DcError::io(p))?;
    let h = GgufHeader::parse(&map).map_err(|source| DcError::Gguf {
        path: p.to_path_buf(),
        source,
    })?;
    h.check_data_fits(map.len() as u64)
        .map_err(|source| DcError::Gguf {
            path: p.to_path_buf(),
            source,
        })?;
    Ok((h, map, f))
}

fn part_groups(p: &Path, h: &GgufHeader) -> Result<Vec<super::cov_parts::GroupLine>> {
    let bad = |detail: String| ToolError::NoCovariance {
        detail: format!("{}: {detail}", p.display()),
    };
    let table = h
        .kvs
        .iter()
        .find(|kv| kv.key == super::cov_parts::GROUPS_KEY.as_bytes())
        .and_then(|kv| match &kv.value {
            Value::String(s) => Some(String::from_utf8_lossy(s).into_owned()),
            _ => None,
        })
        .ok_or_else(|| bad("no group table".into()))?;
    Ok(super::cov_parts::parse_groups(&table).ok_or_else(|| bad("bad group table".into()))?)
}

fn read_part_groups(p: &Path) -> Result<Vec<super::cov_parts::GroupLine>> {
    if !p.exists() {
        return Err(ToolError::NoCovariance {
            detail: "libdcgguf_preload.so wrote no covariance file (see the errors above; \
                     is libdcgguf_preload.so found? set DCGGUF_LIB)"
                .into(),
        }
        .into());
    }
    let (h, _map, _f) = read_gguf(p)?;
    part_groups(p, &h)
}

/// Writes the covariance file (docs/QUANT.md) from the per-pass files: one F32 `[n, n]`
/// tensor per quantizable weight of `model` that was recorded (members of a shared input get
/// the same matrix), in the model's tensor order, streamed. Returns (tensors, inputs).
fn merge_parts(model: &Path, parts: &[PathBuf], out: &Path, label: &str) -> Result<(usize, usize)> {
    const ALIGN: u64 = 32;
    let (mh, _mmap, _mf) = read_gguf(model)?;
    let mut maps = Vec::new();
    // weight -> (part index, tensor index in that part)
    let mut src: std::collections::HashMap<String, (usize, usize)> = Default::default();
    let mut tokens = 0u64;
    let mut inputs = 0usize;
    for (pi, p) in parts.iter().enumerate() {
        let (h, map, f) = read_gguf(p)?;
        for g in part_groups(p, &h)?.into_iter().filter(|g| g.0) {
            let ti = h
                .tensors
                .iter()
                .position(|t| t.name == g.1)
                .ok_or_else(|| ToolError::NoCovariance {
                    detail: format!("{}: no matrix for {}", p.display(), g.1),
                })?;
            tokens = tokens.max(g.3);
            inputs += 1;
            for m in g.4 {
                src.insert(m, (pi, ti));
            }
        }
        maps.push((h, map, f));
    }
    // Every matmul weight GPTQ would round, in the model's order (not a lookup-only
    // token_embd; recorded non-quantizable matmuls such as a MoE router are left out).
    let targets = super::gptq_weights(&mh);
    let wanted: Vec<(&str, usize, usize)> = targets
        .iter()
        .filter_map(|(name, _)| src.get(name).map(|&(p, i)| (name.as_str(), p, i)))
        .collect();
    let missing: Vec<&str> = targets
        .iter()
        .filter(|(name, _)| !src.contains_key(name))
        .map(|(name, _)| name.as_str())
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "calibrate: no covariance for {} matmul weight(s) not multiplied as a plain \
             matmul (e.g. {}): they are rounded without GPTQ",
            missing.len(),
            missing[0]
        );
    }
    let mut w = HeaderWriter::new(3);
    let kvs = [
        ("general.type", Value::string("covariance")),
        (
            "covariance.tokens",
            Value::u32(tokens.min(u64::from(u32::MAX)) as u32),
        ),
        ("covariance.calibration", Value::string(label)),
    ];
    for (k, v) in kvs {
        w.kv(&KeyValue {
            key: k.as_bytes().to_vec(),
            value: v,
        });
    }
    let mut off = 0u64;
    for &(name, p, i) in &wanted {
        let t = &maps[p].0.tensors[i];
        w.tensor(name, &t.dims, t.ty, off);
        off = align_up(off + t.nbytes, ALIGN).expect("fits");
    }
    let mut f = AtomicOutput::create(out, None, true)?;
    let werr = DcError::io(out);
    let mut bw = std::io::BufWriter::with_capacity(1 << 20, f.file());
    let body = |bw: &mut std::io::BufWriter<&mut std::fs::File>| -> std::io::Result<()> {
        bw.write_all(&w.finish(ALIGN))?;
        // Read with pread, not through the maps: touching mapped pages would count the whole
        // (multi-GB for large models) part files in this process's resident set.
        let mut buf = vec![0u8; 8 << 20];
        for &(_, p, i) in &wanted {
            let (h, _, file) = &maps[p];
            let r = h.tensor_range(&h.tensors[i]);
            let mut at = r.start;
            while at < r.end {
                let k = ((r.end - at) as usize).min(buf.len());
                std::os::unix::fs::FileExt::read_exact_at(file, &mut buf[..k], at)?;
                bw.write_all(&buf[..k])?;
                at += k as u64;
            }
            let n = r.end - r.start;
            let pad = align_up(n, ALIGN).expect("fits") - n;
            bw.write_all(&vec![0u8; pad as usize])?;
        }
        bw.flush()
    };
    body(&mut bw).map_err(werr)?;
    drop(bw);
    f.commit()?;
    Ok((wanted.len(), inputs))
}

/// Runs llama-imatrix on `model` over `text`, writing a GGUF imatrix to `output`
/// (statistics only: no covariances).
pub fn run_imatrix(
    model: &Path,
    text: &Path,
    output: &Path,
    llama_bin: Option<&Path>,
    ctx: u32,
) -> Result<()> {
    calibrate_to(model, Some(text), output, None, llama_bin, ctx, 0).map(|_| ())
}

/// Longest line given to llama-embedding (characters; ~1 token per 4 in English).
const EMBED_SEQ_CHARS: usize = 1000;

/// The text as one sequence per line for llama-embedding: non-empty lines, longer ones cut at
/// whitespace into pieces of at most [`EMBED_SEQ_CHARS`].
fn sequences(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut rest = line;
        while rest.len() > EMBED_SEQ_CHARS {
            let mut cut = EMBED_SEQ_CHARS;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let at = rest[..cut].rfind(char::is_whitespace).unwrap_or(cut);
            let at = if at == 0 { cut } else { at };
            out.push_str(rest[..at].trim());
            out.push('\n');
            rest = rest[at..].trim_start();
        }
        if !rest.is_empty() {
            out.push_str(rest);
            out.push('\n');
        }
    }
    out
}

/// Whether `model` is an embedding model (has `<arch>.pooling_type`).
fn is_pooled(model: &Path) -> Result<bool> {
    let (h, _map, _f) = read_gguf(model)?;
    let arch = super::meta_str(&h, "general.architecture").unwrap_or_default();
    Ok(super::meta_u64(&h, &format!("{arch}.pooling_type")).is_some())
}

/// Covariance recording of one pass.
struct CovPass<'a> {
    out: &'a Path,
    budget: u64,
    done: Option<&'a Path>,
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

/// The llama.cpp tool a pass runs.
enum Driver<'a> {
    /// llama-imatrix on `model` (already patched) over `text`, its imatrix to `output`.
    Imatrix {
        model: &'a Path,
        text: &'a Path,
        output: &'a Path,
    },
    /// llama-embedding on `model`, one sequence per line of `text`.
    Embedding { model: &'a Path, text: &'a Path },
}

/// One llama.cpp run with the preloaded recorders asked for.
fn run_pass(
    driver: Driver,
    llama_bin: Option<&Path>,
    ctx: u32,
    act_max: Option<&Path>,
    cov: Option<CovPass>,
) -> Result<()> {
    let tool = find_tool(
        llama_bin,
        match driver {
            Driver::Imatrix { .. } => "llama-imatrix",
            Driver::Embedding { .. } => "llama-embedding",
        },
    );
    let mut cmd = Command::new(&tool);
    match libdcgguf_preload() {
        Some(lib) => {
            cmd.env("LD_PRELOAD", lib);
            if let Some(m) = act_max {
                cmd.env(ACT_MAX_ENV, m);
            }
            if let Some(c) = &cov {
                cmd.env(COV_OUT_ENV, c.out)
                    .env(COV_BUDGET_ENV, c.budget.to_string());
                if let Some(d) = c.done {
                    cmd.env(COV_DONE_ENV, d);
                }
            }
        }
        None if cov.is_some() => {
            return Err(ToolError::NoCovariance {
                detail: "libdcgguf_preload.so not found next to dcgguf (set DCGGUF_LIB); \
                         covariances are recorded by its graph callback"
                    .into(),
            }
            .into());
        }
        None => eprintln!(
            "dcgguf: warning: libdcgguf_preload.so not found next to dcgguf (set DCGGUF_LIB): \
             recording sums of x^2 only, no max|x|"
        ),
    }
    let output = match driver {
        Driver::Imatrix {
            model,
            text,
            output,
        } => {
            let _ = std::fs::remove_file(output);
            let c = ctx.to_string();
            cmd.arg("-m")
                .arg(model)
                .arg("-f")
                .arg(text)
                .arg("-o")
                .arg(output)
                .args(["-c", &c, "-b", &c, "-ub", &c])
                .args(["--no-ppl", "--output-frequency", "1000000"]);
            Some(output)
        }
        Driver::Embedding { model, text } => {
            // Sequences are at most EMBED_SEQ_CHARS characters, well within 512 tokens.
            cmd.arg("-m").arg(model).arg("-f").arg(text).args([
                "-c",
                "512",
                "-b",
                "512",
                "-ub",
                "512",
                "--no-warmup",
            ]);
            None
        }
    };
    let out = cmd.output().map_err(|source| ToolError::Spawn {
        tool: tool.clone(),
        source,
    })?;
    if !out.status.success() || output.is_some_and(|o| !o.exists()) {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(8).collect();
        return Err(ToolError::Failed {
            tool,
            status: out.status,
            stderr_tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        }
        .into());
    }
    if cov.as_ref().is_some_and(|c| !c.out.exists()) {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("dcgguf"))
            .rev()
            .take(4)
            .collect();
        return Err(ToolError::NoCovariance {
            detail: format!(
                "the run wrote no covariance file{}",
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(
                        ":\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                }
            ),
        }
        .into());
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
    // The header written back is padded to the data section's start: within the file, not
    // wherever a damaged `general.alignment` (up to 2^31) puts it.
    h.check_data_fits(map.len() as u64)
        .map_err(|source| DcError::Gguf {
            path: model.to_path_buf(),
            source,
        })?;
    if h.data_offset > map.len() as u64 {
        // No tensor to check, and nothing to copy: llama.cpp reads it as it is.
        return Ok(false);
    }
    let head = h.to_bytes();
    debug_assert_eq!(head.len() as u64, h.data_offset);
    let mut bytes = head;
    bytes.extend_from_slice(&map[h.data_offset as usize..]);
    std::fs::write(out, bytes).map_err(DcError::io(out))?;
    Ok(true)
}
