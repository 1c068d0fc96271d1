//! `dcgguf compress`: GGUF -> DC-GGUF, lossless (one DC file per part of a split model) or,
//! with `--quantize`, lossy; optionally planned with the load-time cost model.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dcgguf::codec::{EncodeOptions, LEVELS, parse_level};
use dcgguf::dc::{self, CompressOptions};
use dcgguf::gguf::split::split_parts;

use super::{
    Cli, CliError, ProfileArgs, file_len, job_progress, load_model, parse_chunk_size, parse_size,
    progress_bar,
};

#[derive(clap::Args)]
pub struct Args {
    input: PathBuf,
    output: PathBuf,
    /// Compression level. `default`: Zstd's fast strategy tuned for weight planes (tensors
    /// within 0.1% of level 19 on the models measured, 9-30x faster); `max`: the best ratio,
    /// a deep search at about level 19's speed (0.02-0.13% smaller than `default`); or a Zstd
    /// level -7..22 with Zstd's parameters (19 and up with a shallow search; 0 is
    /// `default`).
    #[arg(long, default_value = "default", value_parser = level_arg)]
    level: i32,
    /// Raw bytes per independently decodable chunk (suffixes k, M accepted); a token
    /// embedding of 65536 rows or more that only row lookups read takes at most 64 KiB.
    #[arg(long, default_value = "1M", value_parser = parse_chunk_size)]
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
    #[arg(long, value_parser = parse_size)]
    target_size: Option<u64>,
}

fn level_arg(s: &str) -> Result<i32, String> {
    parse_level(s).ok_or_else(|| {
        format!(
            "expected default, max or a Zstd level {}..={}",
            LEVELS.start(),
            LEVELS.end()
        )
    })
}

pub fn run(cli: &Cli, a: &Args) -> Result<(), CliError> {
    // --target-size needs a model: it implies --profile auto.
    let model = load_model(cli, &a.cost, a.target_size.is_some())?;
    let opts = CompressOptions {
        load_model: model.map(|m| Arc::new(m) as Arc<dyn dc::LoadCost>),
        target_size: a.target_size,
        encode: EncodeOptions {
            level: a.level,
            ..EncodeOptions::default()
        },
        chunk_size: a.chunk_size,
        force: a.force,
        ..CompressOptions::default()
    };
    if a.quant.quantize.is_some() {
        return compress_lossy(cli, &a.input, &a.output, &a.quant, &opts);
    }
    let bar = progress_bar(cli, 0, "compress");
    let reports = dc::compress_parts(&a.input, &a.output, &opts, &job_progress(&bar, &opts.job))?;
    bar.finish_and_clear();
    if cli.json {
        println!("{}", dcgguf::report::compress(&reports));
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
    Ok(())
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
        return Err(CliError::Usage(
            "--quantize does not support split models; merge them first".into(),
        ));
    }
    let qopts = quant.options(input, output)?;
    let bar = progress_bar(cli, 0, "compress");
    let progress = job_progress(&bar, &opts.job);
    let (q, r) = dcgguf::quant::compress_lossy(input, output, &qopts, opts, &progress)?;
    bar.finish_and_clear();
    if cli.json {
        println!("{}", dcgguf::report::compress_lossy(&q, &r));
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
