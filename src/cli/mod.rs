//! The `dcgguf` command line: argument definitions, dispatch to one module per subcommand,
//! and what they share (progress bars, split-model jobs, size parsing, errors and exit codes).

mod bench;
mod calibrate;
mod compress;
mod decompress;
mod inspect;
mod probe;
mod verify;

use std::path::Path;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dcgguf::cost::{CostError, LoadModel};
use dcgguf::dc::ErrorKind;
use dcgguf::dc::{self, DcError};
use dcgguf::io::OutputError;
use dcgguf::quant::QuantError;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "dcgguf",
    version,
    about = "Lossless second-stage compression for GGUF models"
)]
pub struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Where the machine profile for the cost model comes from.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ProfileArgs {
    /// Use a machine profile (`auto` = the saved one, measured first if missing or stale;
    /// or a path to a profile JSON) for the load-time cost model.
    #[arg(long, value_name = "auto|PATH")]
    pub profile: Option<String>,
    /// Plan for storage of this bandwidth (bytes/s) instead of the measured one; implies
    /// `--profile auto` when no profile is given.
    #[arg(long, value_name = "BYTES_PER_S")]
    pub storage_bps: Option<f64>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// GGUF -> DC-GGUF. A split model (`*-00001-of-0000N.gguf`) gives a split output.
    Compress(compress::Args),
    /// Activation statistics and input covariances for `compress --quantize` (--imatrix,
    /// --gptq), recorded inside llama.cpp over a text (default: the shipped one).
    Calibrate(dcgguf::quant::CalibrateArgs),
    /// DC-GGUF -> the original GGUF, bit for bit (lossy DC files: the quantized GGUF).
    Decompress(decompress::Args),
    /// Per-tensor table: type, shape, raw and stored bytes, ratio, transform, entropy bound.
    Inspect(inspect::Args),
    /// Measure this machine (storage, memcpy, decode speed per type) and save the profile.
    Probe(probe::Args),
    /// Decode everything and check every checksum (and optionally compare to the original).
    Verify(verify::Args),
    /// Decode throughput on this machine: 1 thread, all threads, memcpy.
    Bench(bench::Args),
}

/// Runs the subcommand `cli` names.
pub fn run(cli: &Cli) -> Result<(), CliError> {
    match &cli.cmd {
        Cmd::Compress(a) => compress::run(cli, a),
        Cmd::Calibrate(a) => calibrate::run(cli, a),
        Cmd::Decompress(a) => decompress::run(cli, a),
        Cmd::Inspect(a) => inspect::run(cli, a),
        Cmd::Probe(a) => probe::run(cli, a),
        Cmd::Verify(a) => verify::run(cli, a),
        Cmd::Bench(a) => bench::run(cli, a),
    }
}

/// What a subcommand can fail with: the library's typed errors, mapped to exit codes by
/// [`exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Dc(#[from] DcError),
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Cost(#[from] CostError),
    /// Arguments that clap accepts but that do not make sense together or in range.
    #[error("{0}")]
    Usage(String),
}

/// The process exit status for `e`. The codes are stable, for scripts (README "CLI"):
///
/// - 0: ok (not an error, so not returned here)
/// - 1: I/O or other error (including an external tool that failed, or out of memory)
/// - 2: usage (bad arguments; clap's own errors exit 2 as well)
/// - 3: invalid or unsupported input
/// - 4: corrupt data or verification mismatch
/// - 5: refused to overwrite (output exists, is the input, or is not a regular file)
/// - 130/143: interrupted by SIGINT/SIGTERM, temporary files removed (set by the signal
///   handler in `main`, not here)
pub fn exit_code(e: &CliError) -> u8 {
    match e {
        CliError::Dc(e) => dc_exit_code(e),
        CliError::Output(e) => output_exit_code(e),
        CliError::Usage(_) => 2,
        CliError::Cost(e) => match e {
            CostError::Dc(e) => dc_exit_code(e),
            CostError::Output(e) => output_exit_code(e),
            CostError::StorageBps(_) => 2,
            CostError::Io { .. } | CostError::Threads { .. } | CostError::Codec(_) => 1,
        },
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
    match e.kind() {
        ErrorKind::Io | ErrorKind::OutOfMemory => 1,
        ErrorKind::BadOption => 2,
        ErrorKind::BadGguf
        | ErrorKind::NotDc
        | ErrorKind::UnsupportedVersion
        | ErrorKind::InvalidInput
        | ErrorKind::OutOfRange => 3,
        ErrorKind::Corrupt => 4,
        ErrorKind::Output => 5,
        // The CLI cancels no Job (a signal exits from the handler in main); were one
        // cancelled, the run was interrupted.
        ErrorKind::Cancelled => 130,
    }
}

fn output_exit_code(e: &OutputError) -> u8 {
    match e {
        OutputError::Io { .. } => 1,
        OutputError::Exists(_)
        | OutputError::IsInput(_)
        | OutputError::NotRegular { .. }
        | OutputError::NotAFilePath(_) => 5,
    }
}

/// The cost model `a` asks for (`required`: `compress --target-size`, which implies
/// `--profile auto`), measuring this machine first if its profile is missing or stale (the
/// library's [`dcgguf::cost::load_model_for`]; here only the note on stderr). Shared by
/// `compress`, `inspect` and `bench`.
pub fn load_model(
    cli: &Cli,
    a: &ProfileArgs,
    required: bool,
) -> Result<Option<LoadModel>, CliError> {
    let loaded = dcgguf::cost::load_model_for(
        a.profile.as_deref().map(std::ffi::OsStr::new),
        a.storage_bps,
        required,
    )
    .map_err(|e| match e {
        // Spelled as the user typed it.
        CostError::StorageBps(b) => CliError::Usage(format!("--storage-bps {b}: must be positive")),
        e => e.into(),
    })?;
    let Some(loaded) = loaded else {
        return Ok(None);
    };
    if let Some(why) = &loaded.remeasured
        && !cli.quiet
    {
        eprintln!(
            "dcgguf: measured this machine ({why:?} profile), saved {}",
            loaded.path.display()
        );
    }
    Ok(Some(loaded.model))
}

/// A progress bar on stderr for `total` bytes; hidden with `--quiet` or `--json`.
pub fn progress_bar(cli: &Cli, total: u64, what: &str) -> ProgressBar {
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

/// Progress of an operation that records its byte total in `job` (known only once it runs:
/// a lossy compression first quantizes): `bar`'s length follows it.
pub fn job_progress<'a>(bar: &'a ProgressBar, job: &'a dc::Job) -> impl Fn(u64) + Sync + 'a {
    move |n| {
        if let Some(total) = job.total() {
            bar.set_length(total);
        }
        bar.inc(n);
    }
}

/// The length of `p`, 0 if it cannot be read (for progress bars only).
pub fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

pub use dcgguf::io::parse_size;

/// `--chunk-size`: [`parse_size`], between 1 byte and the format's largest chunk.
pub fn parse_chunk_size(s: &str) -> Result<usize, String> {
    let v = parse_size(s)?;
    if v == 0 || v > dc::MAX_CHUNK_RAW {
        return Err(format!(
            "{s:?}: must be between 1 and {} bytes",
            dc::MAX_CHUNK_RAW
        ));
    }
    Ok(v as usize)
}

/// `--seconds`: a decimal number of seconds from 0 to 3600.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(0.0..=3600.0).contains(&v) {
        return Err(format!("{s:?}: must be between 0 and 3600"));
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_binary_with_optional_suffix() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("256"), Ok(256));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("3G"), Ok(3 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        for bad in ["", "M", "1.5M", "-1", "1T", "1 M", "k1", "1MB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_size("18446744073709551615G"),
            Err("\"18446744073709551615G\": too large".into())
        );
        assert_eq!(parse_size(&u64::MAX.to_string()), Ok(u64::MAX));
    }

    #[test]
    fn chunk_size_is_a_size_within_the_format_limit() {
        assert_eq!(parse_chunk_size("1M"), Ok(1 << 20));
        assert_eq!(parse_chunk_size("4k"), Ok(4096));
        assert_eq!(parse_chunk_size("1"), Ok(1));
        let max = dc::MAX_CHUNK_RAW;
        assert_eq!(parse_chunk_size(&max.to_string()), Ok(max as usize));
        let range = format!("must be between 1 and {max} bytes");
        assert_eq!(parse_chunk_size("0"), Err(format!("\"0\": {range}")));
        let over = (max + 1).to_string();
        assert_eq!(parse_chunk_size(&over), Err(format!("{over:?}: {range}")));
        assert!(parse_chunk_size("x").is_err());
    }

    #[test]
    fn seconds_within_an_hour() {
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        assert_eq!(parse_seconds("0.05"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_seconds("3600"), Ok(Duration::from_secs(3600)));
        for bad in ["-1", "nan", "inf", "3600.5", "soon", ""] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
        }
    }
}
