//! `dcgguf` command line: parses arguments, calls the library, prints results.
//!
//! Exit codes (stable, for scripts): 0 ok, 1 I/O or other error, 2 usage, 3 invalid or
//! unsupported input, 4 corrupt data or verification mismatch, 5 refused to overwrite,
//! 130/143 interrupted by SIGINT/SIGTERM (temporary files removed).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dcgguf::codec::EncodeOptions;
use dcgguf::cost::{
    LoadModel, ProbeOptions, Stale, default_profile_path, load_or_probe, measure_decode,
};
use dcgguf::dc::{self, CompressOptions, DcError, DcFile};
use dcgguf::gguf::split::{output_part, split_parts};
use dcgguf::io::OutputError;
use dcgguf::quant::QuantError;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "dcgguf",
    version,
    about = "Lossless second-stage compression for GGUF models"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the machine profile for the cost model comes from.
#[derive(clap::Args, Clone, Debug, Default)]
struct ProfileArgs {
    /// Use a machine profile (`auto` = the saved one, measured first if missing or stale;
    /// or a path to a profile JSON) for the load-time cost model.
    #[arg(long, value_name = "auto|PATH")]
    profile: Option<String>,
    /// Plan for storage of this bandwidth (bytes/s) instead of the measured one; implies
    /// `--profile auto` when no profile is given.
    #[arg(long, value_name = "BYTES_PER_S")]
    storage_bps: Option<f64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// GGUF -> DC-GGUF. A split model (`*-00001-of-0000N.gguf`) gives a split output.
    Compress {
        input: PathBuf,
        output: PathBuf,
        /// Zstd level (1-22; -7..-1 are Zstd's fast levels).
        #[arg(long, default_value_t = EncodeOptions::default().level,
              value_parser = clap::value_parser!(i32).range(-7..=22))]
        level: i32,
        /// Raw bytes per independently decodable chunk (suffixes k, M accepted).
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        chunk_size: usize,
        /// Overwrite existing outputs.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        quant: dcgguf::quant::QuantArgs,
        #[command(flatten)]
        cost: ProfileArgs,
        /// Largest output allowed (suffixes k, M, G): with the cost model, tensors are
        /// compressed by least load-time cost per byte saved until it fits. Implies
        /// `--profile auto` when no profile is given.
        #[arg(long, value_parser = parse_bytes)]
        target_size: Option<u64>,
    },
    /// Activation statistics for `compress --quantize`: runs llama-imatrix on a text file.
    Calibrate(dcgguf::quant::CalibrateArgs),
    /// DC-GGUF -> the original GGUF, bit for bit (lossy DC files: the quantized GGUF).
    Decompress {
        input: PathBuf,
        output: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Per-tensor table: type, shape, raw and stored bytes, ratio, transform, entropy bound.
    Inspect {
        input: PathBuf,
        /// Also list the original metadata.
        #[arg(long)]
        metadata: bool,
        #[command(flatten)]
        cost: ProfileArgs,
    },
    /// Measure this machine (storage, memcpy, decode speed per type) and save the profile.
    Probe {
        /// Directory on the storage to measure (default: the profile's cache directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Where to save the profile (default: ~/.cache/dcgguf/profile.json).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Re-measure even if a valid profile exists.
        #[arg(long)]
        force: bool,
    },
    /// Decode everything and check every checksum (and optionally compare to the original).
    Verify {
        input: PathBuf,
        #[arg(long)]
        against: Option<PathBuf>,
    },
    /// Decode throughput on this machine: 1 thread, all threads, memcpy.
    Bench {
        input: PathBuf,
        /// Minimum seconds per measurement (0 to 3600).
        #[arg(long, default_value = "1", value_parser = parse_seconds)]
        seconds: Duration,
        /// Also compare the cost model's predicted decode time with the measured one.
        #[command(flatten)]
        cost: ProfileArgs,
    },
}

/// `compress --quantize`: the library does the work (src/quant).
fn compress_lossy(
    cli: &Cli,
    input: &Path,
    output: &Path,
    quant: &dcgguf::quant::QuantArgs,
    opts: &CompressOptions,
) -> Result<(), CliError> {
    if split_parts(input).is_some() {
        return Err(DcError::Usage(
            "--quantize does not support split models; merge them first".into(),
        )
        .into());
    }
    let qopts = quant.options(input, output)?;
    let bar = progress_bar(cli, file_len(input), "compress");
    let (q, r) = dcgguf::quant::compress_lossy(input, output, &qopts, opts, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    if cli.json {
        println!(
            "{}",
            json!({"command": "compress", "quantize": q, "files": [r]})
        );
    } else {
        println!(
            "{} -> {}: {} -> {} bytes (quantized {} tensors to Q8_0, relative MSE {:.3e}; \
             decompresses to the {}-byte quantized GGUF, not the input), {:.2} s",
            input.display(),
            output.display(),
            file_len(input),
            r.output_bytes,
            q.quantized_tensors,
            q.rel_mse,
            r.original_bytes,
            r.seconds
        );
    }
    Ok(())
}

/// The cost model the user asked for, if any (re-measuring a missing or stale profile).
fn load_model(cli: &Cli, a: &ProfileArgs) -> Result<Option<LoadModel>, DcError> {
    let path = match (&a.profile, a.storage_bps) {
        (None, None) => return Ok(None),
        (Some(p), _) if p != "auto" => PathBuf::from(p),
        _ => default_profile_path(),
    };
    if let Some(b) = a.storage_bps
        && !(b.is_finite() && b > 0.0)
    {
        return Err(DcError::Usage(format!(
            "--storage-bps {b}: must be positive"
        )));
    }
    let opts = ProbeOptions {
        storage_dir: path
            .parent()
            .map_or_else(std::env::temp_dir, Path::to_path_buf),
        ..ProbeOptions::default()
    };
    std::fs::create_dir_all(&opts.storage_dir).map_err(|source| DcError::Io {
        path: opts.storage_dir.clone(),
        source,
    })?;
    let (profile, stale) = load_or_probe(&path, &opts)?;
    if let Some(why) = stale
        && !cli.quiet
    {
        eprintln!(
            "dcgguf: measured this machine ({why:?} profile), saved {}",
            path.display()
        );
    }
    Ok(Some(LoadModel::new(profile, a.storage_bps)))
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(0.0..=3600.0).contains(&v) {
        return Err(format!("{s:?}: must be between 0 and 3600"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Checks every part of a (split) job before any output is written, so a refused run leaves
/// nothing behind.
fn precheck(jobs: &[(PathBuf, PathBuf)], force: bool) -> Result<(), DcError> {
    for (i, o) in jobs {
        std::fs::metadata(i).map_err(|source| DcError::Io {
            path: i.clone(),
            source,
        })?;
        dcgguf::io::check_output(o, Some(i), force)?;
    }
    Ok(())
}

/// A byte count with an optional k/M/G suffix (powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|e| format!("{s:?}: {e}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))
}

fn parse_size(s: &str) -> Result<usize, String> {
    let v = parse_bytes(s)?;
    if v == 0 || v > dc::MAX_CHUNK_RAW {
        return Err(format!(
            "{s:?}: must be between 1 and {} bytes",
            dc::MAX_CHUNK_RAW
        ));
    }
    Ok(v as usize)
}

/// What a subcommand can fail with: the library's typed errors, mapped to exit codes by
/// [`exit_code`].
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Dc(#[from] DcError),
    #[error(transparent)]
    Quant(#[from] QuantError),
}

fn exit_code(e: &CliError) -> u8 {
    match e {
        CliError::Dc(e) => dc_exit_code(e),
        CliError::Quant(e) => match e {
            QuantError::Dc(e) => dc_exit_code(e),
            QuantError::Usage(_) => 2,
            QuantError::Tool(_) => 1,
            QuantError::Stats(_)
            | QuantError::Cov(_)
            | QuantError::UnsupportedType { .. }
            | QuantError::Input(_) => 3,
        },
    }
}

fn dc_exit_code(e: &DcError) -> u8 {
    match e {
        DcError::Io { .. } => 1,
        DcError::Usage(_) => 2,
        DcError::Gguf { .. }
        | DcError::NotDc { .. }
        | DcError::AlreadyDc(_)
        | DcError::ReservedKey(_)
        | DcError::UnsupportedVersion(_)
        | DcError::LegacyVersion(_)
        | DcError::Unsupported { .. }
        | DcError::OutOfRange { .. } => 3,
        DcError::OutOfMemory { .. } => 1,
        DcError::OriginalHeader(_)
        | DcError::CorruptDcHeader
        | DcError::DamagedDc { .. }
        | DcError::BadIndex { .. }
        | DcError::Corrupt { .. }
        | DcError::CorruptBlob { .. }
        | DcError::Mismatch { .. } => 4,
        DcError::Output(OutputError::Io { .. }) => 1,
        DcError::Output(
            OutputError::Exists(_)
            | OutputError::IsInput(_)
            | OutputError::NotRegular { .. }
            | OutputError::NotAFilePath(_),
        ) => 5,
    }
}

/// On SIGINT/SIGTERM: remove this run's temporary files, then exit with 128 + the signal
/// (130, 143) like a shell. The library installs no handlers; the CLI does, on a thread.
fn remove_temp_files_on_signal() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    dcgguf::io::remove_live_temp_files();
                    std::process::exit(128 + sig);
                }
            });
        }
        Err(e) => eprintln!("dcgguf: warning: cannot handle SIGINT/SIGTERM: {e}"),
    }
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`dcgguf inspect f | head`), like other Unix tools, instead
    // of panicking in println!.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    remove_temp_files_on_signal();
    let cli = Cli::parse();
    if let Some(n) = cli.threads
        && n > dcgguf::io::max_threads()
    {
        eprintln!(
            "dcgguf: error: --threads {n}: at most {} on this machine (4 per CPU)",
            dcgguf::io::max_threads()
        );
        return ExitCode::from(2);
    }
    if let Some(n) = cli.threads
        && let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
    {
        eprintln!("dcgguf: cannot set {n} threads: {e}");
        return ExitCode::from(2);
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = exit_code(&e);
            if cli.json {
                println!("{}", json!({"error": e.to_string(), "exit_code": code}));
            }
            eprintln!("dcgguf: error: {e}");
            ExitCode::from(code)
        }
    }
}

fn progress_bar(cli: &Cli, total: u64, what: &str) -> ProgressBar {
    if cli.quiet || cli.json {
        return ProgressBar::hidden();
    }
    // indicatif draws nothing when stderr is not a terminal.
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Input/output pairs: one, or one per part of a split model.
fn parts(input: &Path, output: &Path) -> Vec<(PathBuf, PathBuf)> {
    match split_parts(input) {
        Some((name, inputs)) => inputs
            .into_iter()
            .enumerate()
            .map(|(k, i)| (i, output_part(output, k as u32 + 1, name.count)))
            .collect(),
        None => vec![(input.to_path_buf(), output.to_path_buf())],
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn run(cli: &Cli) -> Result<(), CliError> {
    match &cli.cmd {
        Cmd::Compress {
            input,
            output,
            level,
            chunk_size,
            force,
            quant,
            cost,
            target_size,
        } => {
            let mut cost = cost.clone();
            if target_size.is_some() && cost.profile.is_none() {
                cost.profile = Some("auto".into());
            }
            let opts = CompressOptions {
                load_model: load_model(cli, &cost)?
                    .map(|m| std::sync::Arc::new(m) as std::sync::Arc<dyn dc::LoadCost>),
                target_size: *target_size,
                encode: EncodeOptions {
                    level: *level,
                    ..EncodeOptions::default()
                },
                chunk_size: *chunk_size,
                force: *force,
                ..CompressOptions::default()
            };
            if quant.quantize.is_some() {
                return compress_lossy(cli, input, output, quant, &opts);
            }
            let jobs = parts(input, output);
            precheck(&jobs, *force)?;
            let total = jobs.iter().map(|(i, _)| file_len(i)).sum();
            let bar = progress_bar(cli, total, "compress");
            let mut reports = Vec::new();
            for (i, o) in &jobs {
                reports.push(dc::compress_file(i, o, &opts, &|n| bar.inc(n))?);
            }
            bar.finish_and_clear();
            if cli.json {
                println!("{}", json!({"command": "compress", "files": reports}));
            } else {
                for r in &reports {
                    println!(
                        "{} -> {}: {} -> {} bytes, ratio {:.4}, {:.2} s",
                        r.input.display(),
                        r.output.display(),
                        r.original_bytes,
                        r.output_bytes,
                        r.ratio,
                        r.seconds
                    );
                }
            }
        }
        Cmd::Decompress {
            input,
            output,
            force,
        } => {
            let jobs = parts(input, output);
            precheck(&jobs, *force)?;
            let mut sizes = Vec::new();
            for (i, o) in &jobs {
                let total = DcFile::open_for_full_check(i)?.original_size();
                let bar = progress_bar(cli, total, "decompress");
                sizes.push(dc::decompress_file(i, o, *force, &|n| bar.inc(n))?);
                bar.finish_and_clear();
            }
            if cli.json {
                let files: Vec<_> = jobs
                    .iter()
                    .zip(&sizes)
                    .map(|((i, o), n)| json!({"input": i, "output": o, "bytes": n}))
                    .collect();
                println!("{}", json!({"command": "decompress", "files": files}));
            } else {
                for ((i, o), n) in jobs.iter().zip(&sizes) {
                    println!(
                        "{} -> {}: {n} bytes, checksums ok",
                        i.display(),
                        o.display()
                    );
                }
            }
        }
        Cmd::Calibrate(a) => {
            let r = dcgguf::quant::calibrate(a)?;
            if cli.json {
                println!("{}", json!({"command": "calibrate", "report": r}));
            } else {
                println!(
                    "{}: statistics for {} tensors",
                    r.output.display(),
                    r.tensors
                );
            }
        }
        Cmd::Inspect {
            input,
            metadata,
            cost,
        } => inspect(cli, input, *metadata, load_model(cli, cost)?.as_ref())?,
        Cmd::Probe { dir, output, force } => {
            let path = output.clone().unwrap_or_else(default_profile_path);
            let opts = ProbeOptions {
                storage_dir: dir.clone().unwrap_or_else(|| {
                    path.parent()
                        .map_or_else(std::env::temp_dir, Path::to_path_buf)
                }),
                ..ProbeOptions::default()
            };
            std::fs::create_dir_all(&opts.storage_dir).map_err(|source| DcError::Io {
                path: opts.storage_dir.clone(),
                source,
            })?;
            let (profile, stale) = if *force {
                let p = dcgguf::cost::probe::probe(&opts)?;
                dcgguf::cost::probe::save_profile(&p, &path)?;
                (p, Some(Stale::Missing))
            } else {
                load_or_probe(&path, &opts)?
            };
            if cli.json {
                println!(
                    "{}",
                    json!({"command": "probe", "path": path, "measured_now": stale.is_some(), "profile": profile})
                );
            } else {
                let gb = |v: f64| v / 1e9;
                println!(
                    "profile {} ({})",
                    path.display(),
                    if stale.is_some() {
                        "measured now"
                    } else {
                        "saved"
                    }
                );
                println!(
                    "cpu: {} x{}",
                    profile.fingerprint.cpu_model, profile.fingerprint.cpus
                );
                match profile.read_cold_bps {
                    Some(b) => println!("storage read cold: {:>7.2} GB/s", gb(b)),
                    None => println!("storage read cold: n/a (page cache could not be dropped)"),
                }
                println!("storage read warm: {:>7.2} GB/s", gb(profile.read_warm_bps));
                println!("mmap warm:         {:>7.2} GB/s", gb(profile.mmap_warm_bps));
                println!("memcpy:            {:>7.2} GB/s", gb(profile.memcpy_bps));
                println!(
                    "decode (GB/s)     1 thread  {} threads  sample ratio",
                    profile.threads
                );
                for d in &profile.decode {
                    println!(
                        "  {:<6} {:<13} {:>7.2} {:>9.2} {:>12.3}",
                        d.ggml_type,
                        d.transform,
                        gb(d.bps_1_thread),
                        gb(d.bps_all_threads),
                        1.0 / d.sample_ratio
                    );
                }
            }
        }
        Cmd::Verify { input, against } => {
            let dc = DcFile::open_for_full_check(input)?;
            let bar = progress_bar(cli, dc.original_size(), "verify");
            match against {
                Some(orig) => dc::verify_against(&dc, orig, &|n| bar.inc(n))?,
                None => dc.for_each_block(64 << 20, &|n| bar.inc(n), |_, _| Ok(()))?,
            }
            bar.finish_and_clear();
            if cli.json {
                println!(
                    "{}",
                    json!({"command": "verify", "file": input, "ok": true,
                           "original_bytes": dc.original_size(), "against": against})
                );
            } else {
                println!(
                    "{}: ok ({} bytes decoded, every chunk checksum and the file checksum match{})",
                    input.display(),
                    dc.original_size(),
                    against
                        .as_ref()
                        .map(|a| format!(", identical to {}", a.display()))
                        .unwrap_or_default()
                );
            }
        }
        Cmd::Bench {
            input,
            seconds,
            cost,
        } => {
            let dc = DcFile::open(input)?;
            let threads = rayon::current_num_threads();
            let b = measure_decode(&dc, threads, *seconds)?;
            if let Some(model) = load_model(cli, cost)? {
                // Page cache is warm in this measurement: plan with memcpy-speed storage.
                let warm =
                    LoadModel::new(model.profile().clone(), Some(model.profile().read_warm_bps));
                let predicted = predicted_load_seconds(&dc, &warm);
                let measured = dc.original_size() as f64 / (b.decode_gbps_n_threads * 1e9);
                let err = (predicted - measured) / measured * 100.0;
                if cli.json {
                    println!(
                        "{}",
                        json!({"command": "bench", "file": input, "result": b,
                               "predicted_seconds": predicted, "measured_seconds": measured,
                               "prediction_error_percent": err})
                    );
                } else {
                    println!(
                        "cost model: predicted {:.1} ms, measured {:.1} ms (error {err:+.1}%)",
                        predicted * 1e3,
                        measured * 1e3
                    );
                }
                return Ok(());
            }
            if cli.json {
                println!(
                    "{}",
                    json!({"command": "bench", "file": input, "result": b})
                );
            } else {
                println!("file: {}", input.display());
                println!("decoded bytes: {}", b.decoded_bytes);
                println!("decode 1 thread:     {:>7.2} GB/s", b.decode_gbps_1_thread);
                println!(
                    "decode {} threads:    {:>7.2} GB/s",
                    b.threads, b.decode_gbps_n_threads
                );
                println!("memcpy 1 thread:     {:>7.2} GB/s", b.memcpy_gbps_1_thread);
            }
        }
    }
    Ok(())
}

/// Cost-model load time of every tensor of `dc`.
fn predicted_load_seconds(dc: &DcFile, model: &LoadModel) -> f64 {
    (0..dc.tensor_count())
        .map(|i| tensor_load_seconds(dc, model, i))
        .sum()
}

fn tensor_load_seconds(dc: &DcFile, model: &LoadModel, i: usize) -> f64 {
    let v = dc.tensor_view(i);
    let e = &dc.index.tensors[i];
    let raw_stored: u64 = e
        .chunks
        .iter()
        .filter(|c| c.mode == dcgguf::codec::ChunkMode::Raw as u8)
        .map(|c| u64::from(c.stored_len))
        .sum();
    model.load_seconds(
        dc.tensor_info(i).ty,
        v.raw_bytes,
        v.stored_bytes,
        raw_stored,
    )
}

fn inspect(
    cli: &Cli,
    input: &Path,
    metadata: bool,
    model: Option<&LoadModel>,
) -> Result<(), DcError> {
    // Array metadata (tokenizers) is parsed into values only when it is to be printed.
    let dc = if metadata {
        DcFile::open(input)?
    } else {
        DcFile::open_without_arrays(input)?
    };
    let views: Vec<_> = (0..dc.tensor_count()).map(|i| dc.tensor_view(i)).collect();
    let predicted: Option<Vec<f64>> = model.map(|m| {
        (0..dc.tensor_count())
            .map(|i| tensor_load_seconds(&dc, m, i))
            .collect()
    });
    let raw: u64 = views.iter().map(|v| v.raw_bytes).sum();
    let stored: u64 = views.iter().map(|v| v.stored_bytes).sum();
    let bound: u64 = views.iter().map(|v| v.entropy_bound_bytes).sum();
    let meta: Vec<_> = if metadata {
        dc.original
            .kvs
            .iter()
            .map(|kv| (kv.key_str().into_owned(), kv.value.to_string()))
            .collect()
    } else {
        Vec::new()
    };
    if cli.json {
        let mut out = json!({
            "command": "inspect",
            "file": input,
            "original_bytes": dc.original_size(),
            "file_bytes": dc.stored_size(),
            "ratio": dc.original_size() as f64 / dc.stored_size() as f64,
            "tensor_raw_bytes": raw,
            "tensor_stored_bytes": stored,
            "entropy_bound_bytes": bound,
            "tensors": views,
        });
        if metadata {
            out["metadata"] = json!(meta);
        }
        if let (Some(p), Some(m)) = (&predicted, model) {
            out["predicted_load_seconds"] = json!(p);
            out["predicted_total_load_seconds"] = json!(p.iter().sum::<f64>());
            out["storage_bps"] = json!(m.storage_bps);
        }
        println!("{out}");
        return Ok(());
    }
    if metadata {
        for (k, v) in &meta {
            println!("{k} = {v}");
        }
        println!();
    }
    println!(
        "{:<40} {:>7} {:>18} {:>12} {:>12} {:>7} {:>12} {:>7}  transform",
        "tensor", "type", "shape", "raw", "stored", "ratio", "H0 bound", "vs H0"
    );
    for (i, v) in views.iter().enumerate() {
        let shape = v
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x");
        println!(
            "{:<40} {:>7} {:>18} {:>12} {:>12} {:>7.4} {:>12} {:>7.4}  {}",
            v.name,
            v.ggml_type,
            shape,
            v.raw_bytes,
            v.stored_bytes,
            v.ratio,
            v.entropy_bound_bytes,
            v.entropy_bound_bytes as f64 / v.stored_bytes.max(1) as f64,
            v.transform
        );
        if let Some(p) = &predicted {
            println!("{:<40} predicted load {:.3} ms", "", p[i] * 1e3);
        }
    }
    if let (Some(p), Some(m)) = (&predicted, model) {
        println!(
            "predicted load time at {:.2} GB/s storage: {:.1} ms (raw file would take {:.1} ms)",
            m.storage_bps / 1e9,
            p.iter().sum::<f64>() * 1e3,
            dc.original_size() as f64 / m.storage_bps * 1e3
        );
    }
    println!(
        "total: {} tensors, {raw} raw -> {stored} stored (tensor ratio {:.4}, order-0 bound {:.4}); file {} -> {} bytes (ratio {:.4})",
        views.len(),
        raw as f64 / stored.max(1) as f64,
        raw as f64 / bound.max(1) as f64,
        dc.original_size(),
        dc.stored_size(),
        dc.original_size() as f64 / dc.stored_size() as f64
    );
    Ok(())
}
