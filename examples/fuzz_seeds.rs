//! Writes small GGUF and DC-GGUF files to seed the fuzzers: `cargo run --example fuzz_seeds DIR`.
//! Produces `DIR/gguf_parse/*.gguf`, `DIR/dc_open/*.dc.gguf`, `DIR/dc_read/*` (read parameters
//! followed by a DC-GGUF file, see fuzz/fuzz_targets/dc_read.rs), `DIR/imatrix_read/*` (GGUF
//! and legacy imatrix files), `DIR/covariance_read/*.gguf` and `DIR/rans_decode/*` (a length
//! in units of 4 bytes, then a rANS plane body).

use std::path::Path;

use dcgguf::codec::entropy::histogram;
use dcgguf::codec::rans;
use dcgguf::dc::{CompressOptions, compress_file};
use dcgguf::gguf::{ArrayValue, GgmlType, HeaderWriter, KeyValue, Value, ValueType, align_up};
use dcgguf::quant::{ActStats, Covariances};

fn tiny_gguf(types: &[GgmlType]) -> Vec<u8> {
    let mut w = HeaderWriter::new(3);
    w.kv(&KeyValue::new(
        "general.architecture",
        Value::string("llama"),
    ));
    w.kv(&KeyValue::new("general.alignment", Value::u32(32)));
    w.kv(&KeyValue::new(
        "tokenizer.ggml.tokens",
        Value::Array(ArrayValue::Strings(vec![b"a".to_vec(), b"bc".to_vec()])),
    ));
    w.kv(&KeyValue::new(
        "nested",
        Value::Array(ArrayValue::Arrays(vec![ArrayValue::Scalars {
            ty: ValueType::I16,
            le: vec![1, 0, 255, 255],
        }])),
    ));
    let mut offset = 0u64;
    let mut sizes = Vec::new();
    for (i, &ty) in types.iter().enumerate() {
        let elems = ty.block_elems() * 4;
        let n = ty.nbytes(elems).expect("whole blocks");
        w.tensor(&format!("t{i}"), &[elems], ty, offset);
        sizes.push((offset, n));
        offset = align_up(offset + n, 32).expect("small");
    }
    let mut out = w.finish(32);
    let base = out.len();
    out.resize(base + offset as usize, 0);
    let mut x = 0x2545F4914F6CDD1Du64;
    for (off, n) in sizes {
        for b in &mut out[base + off as usize..base + (off + n) as usize] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x % 7) as u8;
        }
    }
    out
}

/// A GGUF with `general.type = kind` and the given F32 tensors (name, dims, values).
fn f32_gguf(kind: &str, tensors: &[(String, Vec<u64>, Vec<f32>)]) -> Vec<u8> {
    let mut w = HeaderWriter::new(3);
    w.kv(&KeyValue::new("general.type", Value::string(kind)));
    let mut data = Vec::new();
    for (name, dims, vals) in tensors {
        w.tensor(name, dims, GgmlType::F32, data.len() as u64);
        data.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        data.resize(data.len().div_ceil(32) * 32, 0);
    }
    let mut out = w.finish(32);
    out.extend(data);
    out
}

/// A GGUF imatrix as llama-imatrix writes it (`W.in_sum2` [n_in, n_mat], `W.counts`
/// [1, n_mat]), with `W.in_max` [n_in] when `with_max` (as `dcgguf calibrate` adds).
fn gguf_imatrix(n_in: u64, n_mat: u64, with_max: bool) -> Vec<u8> {
    let mut t = Vec::new();
    for w in ["blk.0.attn_q.weight", "blk.0.ffn_up.weight"] {
        let sums = (0..n_in * n_mat).map(|j| (j % 5) as f32 * 0.5).collect();
        t.push((format!("{w}.in_sum2"), vec![n_in, n_mat], sums));
        let counts = (0..n_mat).map(|m| (m + 1) as f32 * 4.0).collect();
        t.push((format!("{w}.counts"), vec![1, n_mat], counts));
        if with_max {
            let max = (0..n_in).map(|j| j as f32 * 0.25).collect();
            t.push((format!("{w}.in_max"), vec![n_in], max));
        }
    }
    f32_gguf("imatrix", &t)
}

/// A legacy `.dat` imatrix (`tools/imatrix/imatrix.cpp`), with the optional trailer.
fn legacy_imatrix(n_in: usize, trailer: bool) -> Vec<u8> {
    let names = ["blk.0.attn_q.weight", "output.weight"];
    let mut b = Vec::new();
    b.extend((names.len() as i32).to_le_bytes());
    for (k, name) in names.iter().enumerate() {
        b.extend((name.len() as i32).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend((k as i32 + 3).to_le_bytes());
        b.extend((n_in as i32).to_le_bytes());
        b.extend((0..n_in).flat_map(|j| (j as f32 * 1.5).to_le_bytes()));
    }
    if trailer {
        b.extend(7i32.to_le_bytes());
        b.extend(8i32.to_le_bytes());
        b.extend(b"calib.tx");
    }
    b
}

/// A covariance GGUF (`scripts/covariance.py`): one symmetric F32 [n, n] per weight.
fn covariance(ns: &[u64]) -> Vec<u8> {
    let t: Vec<_> = ns
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let m = (0..n * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    if i == j {
                        2.0
                    } else {
                        1.0 / (1 + i + j) as f32
                    }
                })
                .collect();
            (format!("blk.{k}.attn_q.weight"), vec![n, n], m)
        })
        .collect();
    f32_gguf("covariance", &t)
}

/// Read parameters for the dc_read target (its layout: flags, 4 x (offset u32, len u16),
/// tensor u16, tensor offset u32, tensor len u16).
fn dc_read_params(flags: u8, reads: [(u32, u16); 4], tensor: (u16, u32, u16)) -> Vec<u8> {
    let mut p = vec![flags];
    for (off, len) in reads {
        p.extend(off.to_le_bytes());
        p.extend(len.to_le_bytes());
    }
    p.extend(tensor.0.to_le_bytes());
    p.extend(tensor.1.to_le_bytes());
    p.extend(tensor.2.to_le_bytes());
    p
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    // Seeds must be accepted, or the fuzzer starts from error paths only.
    let valid = match target {
        "imatrix_read" => ActStats::from_bytes(bytes)
            .map(drop)
            .map_err(|e| e.to_string()),
        "covariance_read" => Covariances::parse(bytes)
            .map(drop)
            .map_err(|e| e.to_string()),
        "rans_decode" => {
            let len = usize::from(u16::from_le_bytes([bytes[0], bytes[1]])) * 4;
            rans::decode(&bytes[2..], &mut vec![0u8; len]).map_err(|e| e.to_string())
        }
        _ => Ok(()),
    };
    valid.unwrap_or_else(|e| panic!("seed {target}/{name} is not valid: {e}"));
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("create seed dir");
    std::fs::write(d.join(name), bytes).expect("write seed");
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/seeds".into());
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir.join("gguf_parse")).expect("create seed dir");
    std::fs::create_dir_all(dir.join("dc_open")).expect("create seed dir");
    let sets: [&[GgmlType]; 3] = [
        &[GgmlType::F32, GgmlType::F16, GgmlType::BF16],
        &[GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q4_K],
        &[GgmlType::Q6_K, GgmlType::IQ2_XS, GgmlType::I8],
    ];
    // Found by fuzzing (2026-12-08): `general.alignment` 2^31, to which the fuzz target's
    // check wrote the header back padded (a 2 GiB allocation; it now leaves the padding out).
    let mut aligned = tiny_gguf(sets[0]);
    let key = b"general.alignment";
    let at = aligned
        .windows(key.len())
        .position(|w| w == key)
        .expect("the seed declares its alignment")
        + key.len()
        + 4;
    aligned[at..at + 4].copy_from_slice(&(1u32 << 31).to_le_bytes());
    std::fs::write(dir.join("gguf_parse").join("alignment-2-31.gguf"), aligned)
        .expect("write seed");
    for (k, types) in sets.iter().enumerate() {
        let gguf = dir.join("gguf_parse").join(format!("seed{k}.gguf"));
        std::fs::write(&gguf, tiny_gguf(types)).expect("write seed");
        let opts = CompressOptions {
            chunk_size: 256,
            force: true,
            ..CompressOptions::default()
        };
        let out = dir.join("dc_open").join(format!("seed{k}.dc.gguf"));
        compress_file(&gguf, &out, &opts, &|_| {}).expect("compress seed");
        let dc = std::fs::read(&out).expect("read seed");
        let params = [
            // Whole file from 0 in 4 KiB reads, one tensor from its start.
            dc_read_params(
                0,
                [(0, 4096), (4096, 4096), (100, 300), (1, 1)],
                (k as u16, 0, 4096),
            ),
            // Mapped, pages released: unaligned reads across chunks, a 4 MiB read.
            dc_read_params(
                1,
                [(37, 513), (600, 0x8000 | 64), (200, 1000), (0, 0)],
                (1, 100, 77),
            ),
            // Past the end, and a tensor range running past the tensor.
            dc_read_params(
                0,
                [(u32::MAX, 10), (3, 0xffff), (0, 4096), (5, 5)],
                (0x8002, 1, 4096),
            ),
        ];
        for (j, p) in params.iter().enumerate() {
            write(
                dir,
                "dc_read",
                &format!("seed{k}-{j}"),
                &[p.as_slice(), &dc].concat(),
            );
        }
    }
    write(
        dir,
        "imatrix_read",
        "gguf-1.gguf",
        &gguf_imatrix(8, 1, false),
    );
    write(
        dir,
        "imatrix_read",
        "gguf-moe.gguf",
        &gguf_imatrix(4, 3, false),
    );
    write(
        dir,
        "imatrix_read",
        "gguf-max.gguf",
        &gguf_imatrix(8, 1, true),
    );
    write(dir, "imatrix_read", "legacy.dat", &legacy_imatrix(8, false));
    write(
        dir,
        "imatrix_read",
        "legacy-trailer.dat",
        &legacy_imatrix(4, true),
    );
    write(dir, "covariance_read", "one.gguf", &covariance(&[4]));
    write(dir, "covariance_read", "two.gguf", &covariance(&[2, 8]));
    for (name, len) in [("short", 3u16), ("long", 5000)] {
        // Skewed bytes, as a fold-split M plane: long enough for the vector decoders.
        let plane: Vec<u8> = (0..usize::from(len) * 4)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8 & (0x55 | (i as u8 & 0xAA)))
            .collect();
        let mut seed = len.to_le_bytes().to_vec();
        rans::encode(&plane, &histogram(&plane), &mut seed).expect("two symbols or more");
        write(dir, "rans_decode", name, &seed);
    }
    println!("seeds written to {}", dir.display());
}
