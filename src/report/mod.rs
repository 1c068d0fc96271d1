//! The JSON reports of the conversions and of `inspect`: what the CLI prints with `--json`
//! and the C API returns (`dcgguf_last_report_json`, `dcgguf_inspect_json_opts`), built in
//! this one place so that the two cannot drift apart.

use std::path::Path;

use serde_json::{Value, json};

use crate::cost::LoadModel;
use crate::dc::{CompressReport, DecompressReport, Summary};
use crate::quant::QuantReport;

/// `dcgguf compress --json`: one report per file written (one per part of a split model).
pub fn compress(files: &[CompressReport]) -> Value {
    json!({"command": "compress", "files": files})
}

/// `dcgguf compress --quantize ... --json`: the quantization and the one file written.
pub fn compress_lossy(quantize: &QuantReport, file: &CompressReport) -> Value {
    json!({"command": "compress", "quantize": quantize, "files": [file]})
}

/// `dcgguf decompress --json`.
pub fn decompress(files: &[DecompressReport]) -> Value {
    json!({"command": "decompress", "files": files})
}

/// `dcgguf verify [--against ORIGINAL] --json` (only a successful verify has a report).
pub fn verify(file: &Path, original_bytes: u64, against: Option<&Path>) -> Value {
    json!({"command": "verify", "file": file, "ok": true,
           "original_bytes": original_bytes, "against": against})
}

/// `dcgguf inspect --json` without "command", "file" and "metadata": the summary and, with a
/// cost model, each tensor's predicted load time (in `summary.tensors` order), their total and
/// the storage bandwidth planned for.
pub fn inspect(summary: &Summary, predicted: Option<(&[f64], &LoadModel)>) -> Value {
    let mut out = json!(summary);
    if let Some((p, m)) = predicted {
        out["predicted_load_seconds"] = json!(p);
        out["predicted_total_load_seconds"] = json!(p.iter().sum::<f64>());
        out["storage_bps"] = json!(m.storage_bps);
    }
    out
}
