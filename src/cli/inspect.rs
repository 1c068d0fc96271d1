//! `dcgguf inspect`: the per-tensor table (type, shape, raw and stored bytes, ratio, entropy
//! bound, transform), optionally the metadata and the cost model's predicted load times.

use std::path::{Path, PathBuf};

use dcgguf::cost::LoadModel;
use dcgguf::dc::{DcError, DcFile};
use serde_json::json;

use super::compress::load_model;
use super::{Cli, CliError, ProfileArgs};

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
    let model = load_model(cli, &a.cost)?;
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
    let predicted: Option<Vec<f64>> = model.map(|m| {
        (0..dc.tensor_count())
            .map(|i| tensor_load_seconds(&dc, m, i))
            .collect()
    });
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
        let mut out = json!(summary);
        out["command"] = json!("inspect");
        out["file"] = json!(input);
        if metadata {
            out["metadata"] = json!(meta);
        }
        if let (Some(p), Some(m)) = (&predicted, model) {
            out["predicted_load_seconds"] = json!(p);
            out["predicted_total_load_seconds"] = json!(p.iter().sum::<f64>());
            out["storage_bps"] = json!(m.storage_bps);
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

/// Cost-model load time of every tensor of `dc` (`bench` compares it with the measured one).
pub fn predicted_load_seconds(dc: &DcFile, model: &LoadModel) -> f64 {
    (0..dc.tensor_count())
        .map(|i| tensor_load_seconds(dc, model, i))
        .sum()
}

/// Cost-model load time of tensor `i` of `dc`.
fn tensor_load_seconds(dc: &DcFile, model: &LoadModel, i: usize) -> f64 {
    let v = dc.tensor_view(i);
    let e = &dc.index.tensors[i];
    let raw_stored: u64 = e
        .chunks
        .iter()
        .filter(|c| c.mode == dcgguf::codec::ChunkMode::Raw as u8)
        .map(|c| u64::from(c.stored_len))
        .sum();
    model.load_seconds(
        dc.tensor_info(i).ty,
        v.raw_bytes,
        v.stored_bytes,
        raw_stored,
    )
}
