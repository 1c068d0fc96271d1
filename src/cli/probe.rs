//! `dcgguf probe`: measure this machine for the cost model and save the profile.

use std::path::{Path, PathBuf};

use dcgguf::cost::{ProbeOptions, Stale, default_profile_path, load_or_probe};
use dcgguf::dc::DcError;
use serde_json::json;

use super::{Cli, CliError};

#[derive(clap::Args)]
pub struct Args {
    /// Directory on the storage to measure (default: the profile's cache directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where to save the profile (default: ~/.cache/dcgguf/profile.json).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Re-measure even if a valid profile exists.
    #[arg(long)]
    force: bool,
}

pub fn run(cli: &Cli, a: &Args) -> Result<(), CliError> {
    let path = a.output.clone().unwrap_or_else(default_profile_path);
    let opts = ProbeOptions {
        storage_dir: a.dir.clone().unwrap_or_else(|| {
            path.parent()
                .map_or_else(std::env::temp_dir, Path::to_path_buf)
        }),
        ..ProbeOptions::default()
    };
    std::fs::create_dir_all(&opts.storage_dir).map_err(|source| DcError::Io {
        path: opts.storage_dir.clone(),
        source,
    })?;
    let (profile, stale) = if a.force {
        let p = dcgguf::cost::probe::probe(&opts)?;
        dcgguf::cost::probe::save_profile(&p, &path)?;
        (p, Some(Stale::Missing))
    } else {
        load_or_probe(&path, &opts)?
    };
    if cli.json {
        println!(
            "{}",
            json!({"command": "probe", "path": path, "measured_now": stale.is_some(), "profile": profile})
        );
        return Ok(());
    }
    let gb = |v: f64| v / 1e9;
    println!(
        "profile {} ({})",
        path.display(),
        if stale.is_some() {
            "measured now"
        } else {
            "saved"
        }
    );
    println!(
        "cpu: {} x{}",
        profile.fingerprint.cpu_model, profile.fingerprint.cpus
    );
    match profile.read_cold_bps {
        Some(b) => println!("storage read cold: {:>7.2} GB/s", gb(b)),
        None => println!("storage read cold: n/a (page cache could not be dropped)"),
    }
    println!("storage read warm: {:>7.2} GB/s", gb(profile.read_warm_bps));
    println!("mmap warm:         {:>7.2} GB/s", gb(profile.mmap_warm_bps));
    println!("memcpy:            {:>7.2} GB/s", gb(profile.memcpy_bps));
    println!(
        "decode (GB/s)     1 thread  {} threads  sample ratio",
        profile.threads
    );
    for d in &profile.decode {
        println!(
            "  {:<6} {:<13} {:>7.2} {:>9.2} {:>12.3}",
            d.ggml_type,
            d.transform,
            gb(d.bps_1_thread),
            gb(d.bps_all_threads),
            1.0 / d.sample_ratio
        );
    }
    Ok(())
}
