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
    }
    Ok(())
}
