//! The compression/decode table for README: for every real model, DC ratio vs the order-0
//! bound and vs peers (`zstd -19 --long`, ZipNN), and decode speed vs memcpy, measured here.
//!
//! `cargo bench --bench table` (peers need `python3 scripts/peers.py`, see scripts/install-deps.sh;
//! set DCGGUF_BENCH_NO_PEERS=1 to skip them). Models: MiniLM (the shared models folder, else the
//! copy scripts/fetch-models.sh converts; tests/minilm_paths) and the SmolLM2 fetched by
//! scripts/fetch-models.sh.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dcgguf::cost::measure_decode;
use dcgguf::dc::{CompressOptions, DcFile, compress_file};

#[path = "../tests/minilm_paths/mod.rs"]
mod minilm_paths;

fn models() -> Vec<(String, PathBuf)> {
    let cache = std::env::var_os("DCGGUF_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/dcgguf")
        });
    let mut v = vec![(
        "SmolLM2-135M Q4_1".to_string(),
        cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    )];
    for (label, f) in [
        ("BF16", "bf16"),
        ("F16", "f16"),
        ("F32", "f32"),
        ("Q8_0", "q8_0"),
    ] {
        let file = format!("all-MiniLM-L6-v2-{f}.gguf");
        // absent: the path in the first shared folder, which the caller reports missing
        let path = minilm_paths::find_minilm(&file)
            .unwrap_or_else(|_| minilm_paths::shared_dirs()[0].join(&file));
        v.push((format!("MiniLM-L6 {label}"), path));
    }
    v
}

fn peers(path: &Path) -> Option<serde_json::Value> {
    if std::env::var_os("DCGGUF_BENCH_NO_PEERS").is_some() {
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/peers.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--json", "--repeat", "2"])
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "peers.py failed for {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()?
        .get(0)
        .cloned()
}

fn main() {
    let tmp = std::env::temp_dir().join(format!("dcgguf-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let threads = rayon::current_num_threads();
    println!(
        "| model | raw MB | DC MB | file ratio | tensor ratio | tensor H0 bound | zstd -19 --long | ZipNN (whole / per tensor, round-trips) | decode 1 thr GB/s | decode {threads} thr GB/s | memcpy GB/s | compress s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (label, path) in models() {
        if !path.exists() {
            println!(
                "| {label} | absent: {} | | | | | | | | | | |",
                path.display()
            );
            continue;
        }
        let out = tmp.join("model.dc.gguf");
        let opts = CompressOptions {
            force: true,
            ..CompressOptions::default()
        };
        let report = compress_file(&path, &out, &opts, &|_| {}).expect("compress");
        let dc = DcFile::open(&out).expect("open");
        let raw: u64 = (0..dc.tensor_count())
            .map(|i| dc.tensor_info(i).nbytes)
            .sum();
        let bound: u64 = dc.index.tensors.iter().map(|t| t.entropy_bound).sum();
        let stored: u64 = dc.index.tensors.iter().map(|t| t.stored_bytes()).sum();
        let speed = measure_decode(&dc, threads, Duration::from_secs(2)).expect("decode");
        let p = peers(&path);
        let get = |k: &str, f: &str| {
            p.as_ref()
                .and_then(|p| p.get(k)?.get(f)?.as_f64())
                .map(|r| format!("{r:.3}"))
                .unwrap_or_else(|| "n/a".into())
        };
        let roundtrip = p
            .as_ref()
            .and_then(|p| p.get("zipnn")?.get("roundtrip")?.as_bool())
            .map(|ok| if ok { "yes" } else { "NO" })
            .unwrap_or("n/a");
        println!(
            "| {label} | {:.1} | {:.1} | {:.4} | {:.4} | {:.4} | {} | {} / {} ({roundtrip}) | {:.2} | {:.2} | {:.1} | {:.1} |",
            report.original_bytes as f64 / 1e6,
            report.output_bytes as f64 / 1e6,
            report.ratio,
            raw as f64 / stored.max(1) as f64,
            raw as f64 / bound.max(1) as f64,
            get("zstd", "ratio"),
            get("zipnn", "ratio"),
            get("zipnn_per_tensor", "ratio"),
            speed.decode_gbps_1_thread,
            speed.decode_gbps_n_threads,
            speed.memcpy_gbps_1_thread,
            report.seconds,
        );
        std::fs::remove_file(&out).ok();
    }
    std::fs::remove_dir_all(&tmp).ok();
}
