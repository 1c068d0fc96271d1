//! `dcgguf decompress`: DC-GGUF -> the original GGUF (one per part of a split model).

use std::path::PathBuf;

use dcgguf::dc::{self, Job};
use serde_json::json;

use super::{Cli, CliError, job_progress, progress_bar};

#[derive(clap::Args)]
pub struct Args {
    input: PathBuf,
    output: PathBuf,
    #[arg(long)]
    force: bool,
}

pub fn run(cli: &Cli, a: &Args) -> Result<(), CliError> {
    let job = Job::new();
    let bar = progress_bar(cli, 0, "decompress");
    let reports = dc::decompress_parts(
        &a.input,
        &a.output,
        a.force,
        &job_progress(&bar, &job),
        &job,
    )?;
    bar.finish_and_clear();
    if cli.json {
        println!("{}", json!({"command": "decompress", "files": reports}));
    } else {
        for r in &reports {
            println!(
                "{} -> {}: {} bytes, checksums ok",
                r.input.display(),
                r.output.display(),
                r.bytes
            );
        }
    }
    Ok(())
}
