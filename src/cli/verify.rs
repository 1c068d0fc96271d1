//! `dcgguf verify`: decode everything, check every checksum, optionally compare with the
//! original.

use std::path::PathBuf;

use dcgguf::dc::{self, Job};
use serde_json::json;

use super::{Cli, CliError, job_progress, progress_bar};

#[derive(clap::Args)]
pub struct Args {
    input: PathBuf,
    #[arg(long)]
    against: Option<PathBuf>,
}

pub fn run(cli: &Cli, a: &Args) -> Result<(), CliError> {
    let (input, against) = (&a.input, &a.against);
    let job = Job::new();
    let bar = progress_bar(cli, 0, "verify");
    let original_bytes =
        dc::verify_file(input, against.as_deref(), &job_progress(&bar, &job), &job)?;
    bar.finish_and_clear();
    if cli.json {
        println!(
            "{}",
            json!({"command": "verify", "file": input, "ok": true,
                   "original_bytes": original_bytes, "against": against})
        );
    } else {
        println!(
            "{}: ok ({} bytes decoded, every chunk checksum and the file checksum match{})",
            input.display(),
            original_bytes,
            against
                .as_ref()
                .map(|a| format!(", identical to {}", a.display()))
                .unwrap_or_default()
        );
    }
    Ok(())
}
