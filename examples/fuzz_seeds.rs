//! Writes small GGUF and DC-GGUF files to seed the fuzzers: `cargo run --example fuzz_seeds DIR`.
//! Produces `DIR/gguf_parse/*.gguf` and `DIR/dc_open/*.dc.gguf`.

use std::path::Path;

use dcgguf::dc::{CompressOptions, compress_file};
use dcgguf::gguf::{ArrayValue, GgmlType, HeaderWriter, KeyValue, Value, ValueType, align_up};

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
    }
    println!("seeds written to {}", dir.display());
}
