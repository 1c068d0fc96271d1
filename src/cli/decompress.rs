//! `dcgguf decompress`: DC-GGUF -> the original GGUF (one per part of a split model).

use std::path::PathBuf;

use dcgguf::dc::{self, DcFile};
use serde_json::json;

use super::{Cli, CliError, parts, precheck, progress_bar};

#[derive(clap::Args)]
pub struct Args {
    input: PathBuf,
    output: PathBuf,
    #[arg(long)]
    force: bool,
}

pub fn run(cli: &Cli, a: &Args) -> Result<(), CliError> {
    let jobs = parts(&a.input, &a.output);
    precheck(&jobs, a.force)?;
    let mut sizes = Vec::new();
    for (i, o) in &jobs {
        let total = DcFile::open_for_full_check(i)?.original_size();
        let bar = progress_bar(cli, total, "decompress");
        sizes.push(dc::decompress_file(i, o, a.force, &|n| bar.inc(n))?);
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
    Ok(())
}
