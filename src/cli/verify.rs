//! `dcgguf verify`: decode everything, check every checksum, optionally compare with the
//! original.

use std::path::PathBuf;

use dcgguf::dc::{self, DcFile};
use serde_json::json;

use super::{Cli, CliError, progress_bar};

#[derive(clap::Args)]
pub struct Args {
    input: PathBuf,
    #[arg(long)]
    against: Option<PathBuf>,
}

pub fn run(cli: &Cli, a: &Args) -> Result<(), CliError> {
    let (input, against) = (&a.input, &a.against);
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
    Ok(())
}
