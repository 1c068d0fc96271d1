//! `dcgguf bench`: decode throughput of a DC file on this machine (1 thread, all threads,
//! memcpy), or the cost model's predicted decode time next to the measured one.

use std::path::PathBuf;
use std::time::Duration;

use dcgguf::cost::{LoadModel, measure_decode, predicted_load_seconds};
use dcgguf::dc::DcFile;
use serde_json::json;

use super::{Cli, CliError, ProfileArgs, load_model, parse_seconds};

#[derive(clap::Args)]
pub struct Args {
    input: PathBuf,
    /// Minimum seconds per measurement (0 to 3600).
    #[arg(long, default_value = "1", value_parser = parse_seconds)]
    seconds: Duration,
    /// Also compare the cost model's predicted decode time with the measured one.
    #[command(flatten)]
    cost: ProfileArgs,
}

pub fn run(cli: &Cli, a: &Args) -> Result<(), CliError> {
    let input = &a.input;
    let dc = DcFile::open(input)?;
    let threads = rayon::current_num_threads();
    let b = measure_decode(&dc, threads, a.seconds)?;
    if let Some(model) = load_model(cli, &a.cost, false)? {
        // Page cache is warm in this measurement: plan with memcpy-speed storage.
        let warm = LoadModel::new(model.profile().clone(), Some(model.profile().read_warm_bps));
        let predicted: f64 = predicted_load_seconds(&dc, &warm).iter().sum();
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
        let r = &b.decode_over_memcpy_1_thread;
        println!(
            "decode / memcpy, 1 thread, in adjacent pairs: {:.3}x (median of {}; {:.3}-{:.3})",
            r.median, r.pairs, r.min, r.max
        );
    }
    Ok(())
}
