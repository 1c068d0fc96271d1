//! `dcgguf inspect`: the per-tensor table (type, shape, raw and stored bytes, ratio, entropy
//! bound, transform), optionally the metadata and the cost model's predicted load times.

use std::path::{Path, PathBuf};

use dcgguf::cost::{LoadModel, predicted_load_seconds};
use dcgguf::dc::{DcError, DcFile};
use serde_json::json;

use super::{Cli, CliError, ProfileArgs, load_model};

#[derive(clap::Args)]
pub struct Args {
    input: PathBuf,
    /// Also list the original metadata.
    #[arg(long)]
    metadata: bool,
    #[command(flatten)]
    cost: ProfileArgs,
}

pub fn run(cli: &Cli, a: &Args) -> Result<(), CliError> {
    let model = load_model(cli, &a.cost, false)?;
    Ok(inspect(cli, &a.input, a.metadata, model.as_ref())?)
}

fn inspect(
    cli: &Cli,
    input: &Path,
    metadata: bool,
    model: Option<&LoadModel>,
) -> Result<(), DcError> {
    // Array metadata (tokenizers) is parsed into values only when it is to be printed.
    let dc = if metadata {
        DcFile::open(input)?
    } else {
        DcFile::open_without_arrays(input)?
    };
    let summary = dc.summary();
    let views = &summary.tensors;
    let predicted: Option<Vec<f64>> = model.map(|m| predicted_load_seconds(&dc, m));
    let (raw, stored, bound) = (
        summary.tensor_raw_bytes,
        summary.tensor_stored_bytes,
        summary.entropy_bound_bytes,
    );
    let meta: Vec<_> = if metadata {
        dc.original
            .kvs
            .iter()
            .map(|kv| (kv.key_str().into_owned(), kv.value.to_string()))
            .collect()
    } else {
        Vec::new()
    };
    if cli.json {
        let mut out = dcgguf::report::inspect(&summary, predicted.as_deref().zip(model));
        out["command"] = json!("inspect");
        out["file"] = json!(input);
        if metadata {
            out["metadata"] = json!(meta);
        }
        println!("{out}");
        return Ok(());
    }
    if metadata {
        for (k, v) in &meta {
            println!("{k} = {v}");
        }
        println!();
    }
    println!(
        "{:<40} {:>7} {:>18} {:>12} {:>12} {:>7} {:>12} {:>7}  transform",
        "tensor", "type", "shape", "raw", "stored", "ratio", "H0 bound", "vs H0"
    );
    for (i, v) in views.iter().enumerate() {
        let shape = v
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x");
        println!(
            "{:<40} {:>7} {:>18} {:>12} {:>12} {:>7.4} {:>12} {:>7.4}  {}",
            v.name,
            v.ggml_type,
            shape,
            v.raw_bytes,
            v.stored_bytes,
            v.ratio,
            v.entropy_bound_bytes,
            v.entropy_bound_bytes as f64 / v.stored_bytes.max(1) as f64,
            v.transform
        );
        if let Some(p) = &predicted {
            println!("{:<40} predicted load {:.3} ms", "", p[i] * 1e3);
        }
    }
    if let (Some(p), Some(m)) = (&predicted, model) {
        println!(
            "predicted load time at {:.2} GB/s storage: {:.1} ms (raw file would take {:.1} ms)",
            m.storage_bps / 1e9,
            p.iter().sum::<f64>() * 1e3,
            dc.original_size() as f64 / m.storage_bps * 1e3
        );
    }
    println!(
        "total: {} tensors, {raw} raw -> {stored} stored (tensor ratio {:.4}, order-0 bound {:.4}); file {} -> {} bytes (ratio {:.4})",
        views.len(),
        raw as f64 / stored.max(1) as f64,
        raw as f64 / bound.max(1) as f64,
        dc.original_size(),
        dc.stored_size(),
        dc.original_size() as f64 / dc.stored_size() as f64
    );
    Ok(())
}
