//! `dcgguf` command line: parses arguments, calls the library, prints results.
//!
//! Exit codes (stable, for scripts): 0 ok, 1 I/O or other error, 2 usage, 3 invalid or
//! unsupported input, 4 corrupt data or verification mismatch, 5 refused to overwrite.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dcgguf::codec::EncodeOptions;
use dcgguf::cost::measure_decode;
use dcgguf::dc::{self, CompressOptions, DcError, DcFile};
use dcgguf::gguf::split::{output_part, split_parts};
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
    },
    /// DC-GGUF -> the original GGUF, bit for bit.
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
    },
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
        if !force && o.exists() {
            return Err(DcError::OutputExists(o.clone()));
        }
        if let (Ok(a), Ok(b)) = (std::fs::canonicalize(i), std::fs::canonicalize(o))
            && a == b
        {
            return Err(DcError::OutputIsInput(o.clone()));
        }
    }
    Ok(())
}

fn parse_size(s: &str) -> Result<usize, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: usize = num.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let v = n.checked_mul(mult).ok_or("size overflows")?;
    if v == 0 || v as u64 > dc::MAX_CHUNK_RAW {
        return Err(format!(
            "{s:?}: must be between 1 and {} bytes",
            dc::MAX_CHUNK_RAW
        ));
    }
    Ok(v)
}

fn exit_code(e: &DcError) -> u8 {
    match e {
        DcError::Io { .. } => 1,
        DcError::Usage(_) => 2,
        DcError::Gguf { .. }
        | DcError::NotDc { .. }
        | DcError::AlreadyDc(_)
        | DcError::ReservedKey(_)
        | DcError::UnsupportedVersion(_)
        | DcError::OutOfRange { .. } => 3,
        DcError::OriginalHeader(_)
        | DcError::BadIndex { .. }
        | DcError::Corrupt { .. }
        | DcError::CorruptBlob { .. }
        | DcError::Mismatch { .. } => 4,
        DcError::OutputExists(_) | DcError::OutputIsInput(_) => 5,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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

fn run(cli: &Cli) -> Result<(), DcError> {
    match &cli.cmd {
        Cmd::Compress {
            input,
            output,
            level,
            chunk_size,
            force,
        } => {
            let opts = CompressOptions {
                encode: EncodeOptions {
                    level: *level,
                    ..EncodeOptions::default()
                },
                chunk_size: *chunk_size,
                force: *force,
                ..CompressOptions::default()
            };
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
                let total = DcFile::open(i)?.original_size();
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
        Cmd::Inspect { input, metadata } => inspect(cli, input, *metadata)?,
        Cmd::Verify { input, against } => {
            let dc = DcFile::open(input)?;
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
        Cmd::Bench { input, seconds } => {
            let dc = DcFile::open(input)?;
            let threads = rayon::current_num_threads();
            let b = measure_decode(&dc, threads, *seconds)?;
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

fn inspect(cli: &Cli, input: &Path, metadata: bool) -> Result<(), DcError> {
    let dc = DcFile::open(input)?;
    let views: Vec<_> = (0..dc.tensor_count()).map(|i| dc.tensor_view(i)).collect();
    let raw: u64 = views.iter().map(|v| v.raw_bytes).sum();
    let stored: u64 = views.iter().map(|v| v.stored_bytes).sum();
    let bound: u64 = views.iter().map(|v| v.entropy_bound_bytes).sum();
    let meta: Vec<_> = dc
        .original
        .kvs
        .iter()
        .map(|kv| (kv.key_str().into_owned(), kv.value.to_string()))
        .collect();
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
    for v in &views {
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
