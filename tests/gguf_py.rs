//! DC-GGUF files are ordinary GGUF files: gguf-py's `GGUFReader` (pip package `gguf`) opens
//! them, sees the `dc.*` keys and both blob tensors at the offsets our own parser computes.
//! Without python3 and its packages (or the MiniLM models, for the real-model test), as build.rs
//! found them, the tests are reported as `ignored, needs ...`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use dcgguf::codec::EncodeOptions;
use dcgguf::dc::{CompressOptions, DcFile};
use serde_json::Value as Json;

const SCRIPT: &str = r#"
import json, sys
from gguf import GGUFReader

def text(field):
    return bytes(field.parts[field.data[0]]).decode("utf-8")

out = []
for path in sys.argv[1:]:
    r = GGUFReader(path)
    f = r.fields
    out.append({
        "path": path,
        "keys": list(f.keys()),
        "arch": text(f["general.architecture"]),
        "format_version": int(f["dc.format_version"].parts[f["dc.format_version"].data[0]][0]),
        "original_size": int(f["dc.original_size"].parts[f["dc.original_size"].data[0]][0]),
        "tensors": [
            {"name": t.name, "type": t.tensor_type.name, "n_bytes": int(t.n_bytes),
             "data_offset": int(t.data_offset), "shape": [int(x) for x in t.shape]}
            for t in r.tensors
        ],
    })
print(json.dumps(out))
"#;

fn fast(chunk_size: usize) -> CompressOptions {
    CompressOptions {
        encode: EncodeOptions {
            level: 3,
            ..EncodeOptions::default()
        },
        chunk_size,
        ..CompressOptions::default()
    }
}

#[test]
#[cfg_attr(
    not(dcgguf_python),
    ignore = "needs python3 with gguf, numpy, zstandard, zipnn: run scripts/install-deps.sh"
)]
fn gguf_py_reads_dc_files() {
    let dir = TempDir::new("gguf-py");
    let mut files: Vec<PathBuf> = Vec::new();
    let mut add = |name: &str, original: &[u8], opts: &CompressOptions| {
        let input = dir.write(&format!("{name}.gguf"), original);
        let output = dir.join(&format!("{name}.dc.gguf"));
        compress(&input, &output, opts);
        files.push(output);
    };
    add("standard", &standard_model(41).build(), &fast(1 << 20));
    let mut b = standard_model(42).alignment(64);
    b.extra_gap = 64;
    b.fill_padding = true;
    b.trailing = vec![7; 9];
    add("aligned64", &b.build(), &fast(1024));
    let b = GgufBuilder {
        kvs: rich_metadata(Some("bert")),
        ..GgufBuilder::default()
    };
    add("no-tensors", &b.build(), &fast(1 << 20));
    check_with_gguf_py(&files);
}

#[test]
#[cfg_attr(
    not(all(dcgguf_python, dcgguf_minilm)),
    ignore = "needs python3 with gguf, numpy, zstandard, zipnn (scripts/install-deps.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn gguf_py_reads_a_real_dc_file() {
    let dir = TempDir::new("gguf-py-minilm");
    let minilm = shared_model("all-MiniLM-L6-v2-q8_0.gguf");
    let output = dir.join("minilm-q8_0.dc.gguf");
    compress(require_model(&minilm), &output, &fast(1 << 20));
    check_with_gguf_py(&[output]);
}

/// Runs [`SCRIPT`] (gguf-py's `GGUFReader`) on `files` and compares what it sees with our
/// parser. Fails when python3 or gguf is missing.
fn check_with_gguf_py(files: &[PathBuf]) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .args(files)
        .output()
        .expect("run python3 (scripts/install-deps.sh)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gguf-py failed:\n{stderr}");
    let results: Json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON from python ({e}): {stderr}"));
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), files.len());

    for (path, r) in files.iter().zip(results) {
        let name = path.file_name().unwrap().to_string_lossy();
        let dc = DcFile::open(path).unwrap();
        let keys: Vec<&str> = r["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        for k in [
            "general.architecture",
            "dc.format_version",
            "dc.original_size",
            "dc.original_xxh3",
            "dc.writer",
        ] {
            assert!(
                keys.contains(&k),
                "{name}: gguf-py did not see {k}: {keys:?}"
            );
        }
        // gguf-py sees exactly the keys our parser sees (plus its GGUF.* pseudo-keys).
        let ours: Vec<String> = dc
            .dc_header
            .kvs
            .iter()
            .map(|kv| kv.key_str().into_owned())
            .collect();
        let theirs: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| !k.starts_with("GGUF."))
            .collect();
        assert_eq!(theirs, ours, "{name}");
        assert_eq!(r["arch"], "dcgguf", "{name}");
        assert_eq!(r["format_version"], dcgguf::dc::FORMAT_VERSION, "{name}");
        assert_eq!(r["original_size"], dc.original_size(), "{name}");

        let tensors = r["tensors"].as_array().unwrap();
        let names: Vec<&str> = tensors
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["dc.index", "dc.data"], "{name}");
        for (t, ours) in tensors.iter().zip(&dc.dc_header.tensors) {
            let range = dc.dc_header.tensor_range(ours);
            assert_eq!(t["type"], "I8", "{name}");
            assert_eq!(
                t["data_offset"], range.start,
                "{name}: {} offset",
                ours.name
            );
            assert_eq!(
                t["n_bytes"],
                range.end - range.start,
                "{name}: {} size",
                ours.name
            );
        }
    }
}
