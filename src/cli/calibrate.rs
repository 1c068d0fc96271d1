//! `dcgguf calibrate`: activation statistics for `compress --quantize` (src/quant runs
//! llama-imatrix).

use serde_json::json;

use super::{Cli, CliError};

pub fn run(cli: &Cli, a: &dcgguf::quant::CalibrateArgs) -> Result<(), CliError> {
    let r = dcgguf::quant::calibrate(a)?;
    if cli.json {
        println!("{}", json!({"command": "calibrate", "report": r}));
    } else {
        println!(
            "{}: statistics for {} tensors",
            r.output.display(),
            r.tensors
        );
        if let Some(c) = &r.covariance {
            println!(
                "{}: covariances for {} tensors ({} distinct inputs, {} tokens); {} pass(es), \
                 accumulators {:.0} MiB, llama-imatrix peak RSS at most {:.0} MiB, {:.1} s",
                c.display(),
                r.covariance_tensors,
                r.covariance_inputs,
                r.tokens,
                r.passes,
                r.peak_accumulator_bytes as f64 / f64::from(1u32 << 20),
                r.max_rss_bytes as f64 / f64::from(1u32 << 20),
                r.seconds
            );
        }
    }
    Ok(())
}
