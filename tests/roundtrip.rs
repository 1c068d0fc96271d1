//! compress -> decompress is bit-identical for synthetic GGUF files covering every value and
//! tensor type and every layout oddity; random access (`read_at`, `read_tensor`) serves the
//! original bytes; the DC file is itself a well-formed GGUF with the documented keys.

mod common;

use common::*;
use dcgguf::codec::Transform;
use dcgguf::dc::{self, CompressOptions, DcError, DcFile, decompress_file, verify_against};
use dcgguf::gguf::{ArrayValue, GgmlType, GgufHeader, Value};
use xxhash_rust::xxh3::xxh3_64;

/// Everything the round-trip promises, checked for one original file and one set of options.
fn check_roundtrip(name: &str, original: &[u8], opts: &CompressOptions) -> DcFile {
    let dir = TempDir::new(name);
    let input = dir.write("in.gguf", original);
    let output = dir.join("out.dc.gguf");
    let back = dir.join("back.gguf");

    let report = compress(&input, &output, opts);
    let dc_bytes = std::fs::read(&output).unwrap();
    assert_eq!(report.original_bytes, original.len() as u64, "{name}");
    assert_eq!(report.output_bytes, dc_bytes.len() as u64, "{name}");
    let orig_header = GgufHeader::parse(original).unwrap();
    assert_eq!(report.tensors, orig_header.tensors.len(), "{name}");
    assert_eq!(
        std::fs::read(&input).unwrap(),
        original,
        "{name}: input modified"
    );

    // Full decompression is bit-identical.
    let n = decompress_file(&output, &back, false, &|_| {}).unwrap();
    assert_eq!(n, original.len() as u64);
    let restored = std::fs::read(&back).unwrap();
    assert!(restored == original, "{name}: decompressed bytes differ");
    assert!(dir.tmp_leftovers().is_empty(), "{name}: temp files left");

    let dc = DcFile::open(&output).unwrap();
    assert_eq!(dc.original_size(), original.len() as u64);
    assert_eq!(dc.stored_size(), dc_bytes.len() as u64);
    assert_eq!(dc.original_xxh3(), xxh3_64(original), "{name}");
    assert_eq!(dc.original, orig_header, "{name}: stored header differs");
    assert_eq!(dc.tensor_count(), orig_header.tensors.len());
    assert_eq!(
        report.chunks,
        dc.index
            .tensors
            .iter()
            .map(|t| t.chunks.len())
            .sum::<usize>()
    );
    verify_against(&dc, &input, &|_| {}).unwrap();

    check_chunking(name, &dc, opts);
    check_read_at(name, &dc, original);
    check_read_tensor(name, &dc, original);
    check_dc_header(name, &dc_bytes, original);
    dc
}

fn check_chunking(name: &str, dc: &DcFile, opts: &CompressOptions) {
    for i in 0..dc.tensor_count() {
        let t = dc.tensor_info(i);
        let e = &dc.index.tensors[i];
        let view = dc.tensor_view(i);
        assert_eq!(view.name, t.name);
        assert_eq!(view.raw_bytes, t.nbytes);
        assert_eq!(view.shape, t.dims);
        assert_eq!(view.ggml_type, t.ty.name());
        assert_eq!(view.stored_bytes, e.stored_bytes());
        assert_eq!(view.chunks, e.chunks.len());
        if t.nbytes == 0 {
            assert!(e.chunks.is_empty(), "{name}: {} has chunks", t.name);
            continue;
        }
        let raw = u64::from(e.chunk_raw);
        assert!(raw > 0);
        // A chunk is whole units and never more than asked for, unless one unit is larger.
        let unit = t.ty.block_bytes().max(1);
        assert!(
            raw <= opts.chunk_size as u64 || raw == unit,
            "{name}: {} chunk_raw {raw} > {}",
            t.name,
            opts.chunk_size
        );
        assert_eq!(
            e.chunks.len() as u64,
            t.nbytes.div_ceil(raw),
            "{name}: {}",
            t.name
        );
        let expected = Transform::default_for(t.ty);
        assert_eq!(view.transform, expected.name(), "{name}: {}", t.name);
        assert_eq!(u64::from(e.transform), u64::from(expected.id()));
    }
}

fn check_read_at(name: &str, dc: &DcFile, original: &[u8]) {
    let size = original.len() as u64;
    let mut rng = Rng::new(xxh3_64(name.as_bytes()));
    let mut buf = vec![0u8; 70_000];
    let mut probes: Vec<(u64, usize)> = vec![
        (0, original.len()),
        (0, 1),
        (size.saturating_sub(1), 1),
        (size.saturating_sub(5), 100),
        (size, 10),
        (size + 1000, 10),
        (0, 0),
    ];
    // Every segment boundary +-1, which is where pieces meet.
    let h = &dc.original;
    for t in &h.tensors {
        let r = h.tensor_range(t);
        for at in [r.start, r.end] {
            for d in [-3i64, -1, 0, 1] {
                let o = (at as i64 + d).max(0) as u64;
                probes.push((o, 7));
            }
        }
    }
    // Each probe decodes whole chunks: fewer probes for files with big chunks.
    let n_random = if size > 1 << 20 { 30 } else { 200 };
    for _ in 0..n_random {
        let off = rng.below(size + 1);
        let len = match rng.below(4) {
            0 => rng.below(16) as usize,
            1 => rng.below(2000) as usize,
            _ => rng.below(buf.len() as u64) as usize,
        };
        probes.push((off, len));
    }
    for (off, len) in probes {
        let mut big;
        let dst = if len <= buf.len() {
            &mut buf[..len]
        } else {
            big = vec![0u8; len];
            &mut big[..]
        };
        dst.fill(0xAA);
        let n = dc.read_at(off, dst).unwrap();
        let want = if off >= size {
            0
        } else {
            (size - off).min(len as u64) as usize
        };
        assert_eq!(n, want, "{name}: read_at({off}, {len}) count");
        let o = off.min(size) as usize;
        assert!(
            dst[..n] == original[o..o + n],
            "{name}: read_at({off}, {len}) bytes differ"
        );
    }
}

fn check_read_tensor(name: &str, dc: &DcFile, original: &[u8]) {
    let mut rng = Rng::new(7 ^ xxh3_64(name.as_bytes()));
    for i in 0..dc.tensor_count() {
        let t = dc.tensor_info(i).clone();
        assert_eq!(dc.find_tensor(&t.name), Some(i));
        let r = dc.original.tensor_range(&t);
        let want = &original[r.start as usize..r.end as usize];
        let mut whole = vec![0u8; t.nbytes as usize];
        dc.read_tensor(i, 0, &mut whole).unwrap();
        assert!(whole == want, "{name}: tensor {} differs", t.name);
        for _ in 0..8 {
            if t.nbytes == 0 {
                break;
            }
            let a = rng.below(t.nbytes);
            let b = rng.range(a, t.nbytes + 1);
            let mut part = vec![0u8; (b - a) as usize];
            dc.read_tensor(i, a, &mut part).unwrap();
            assert!(
                part == want[a as usize..b as usize],
                "{name}: {} [{a},{b})",
                t.name
            );
        }
        // Empty reads at the end are fine; anything past it is out of range.
        dc.read_tensor(i, t.nbytes, &mut []).unwrap();
        let mut one = [0u8; 1];
        match dc.read_tensor(i, t.nbytes, &mut one) {
            Err(DcError::OutOfRange {
                tensor, start, len, ..
            }) => {
                assert_eq!(
                    (tensor.as_str(), start, len),
                    (t.name.as_str(), t.nbytes, t.nbytes)
                )
            }
            other => panic!("{name}: read past {}: {other:?}", t.name),
        }
        let err = dc.read_tensor(i, u64::MAX, &mut one).unwrap_err();
        assert!(matches!(err, DcError::OutOfRange { .. }), "{err}");
        assert!(err.to_string().contains(&t.name));
    }
}

/// The DC file is a GGUF v3 file: architecture `dcgguf`, the `dc.*` keys, exactly the two
/// blob tensors, and every small original key in the clear, verbatim and in order.
fn check_dc_header(name: &str, dc_bytes: &[u8], original: &[u8]) {
    let h = GgufHeader::parse(dc_bytes).unwrap();
    h.check_data_fits(dc_bytes.len() as u64).unwrap();
    let orig = GgufHeader::parse(original).unwrap();
    assert_eq!(h.version, 3, "{name}");
    assert_eq!(h.alignment, orig.alignment, "{name}");
    assert_eq!(
        h.get("general.architecture").and_then(Value::as_str),
        Some("dcgguf")
    );
    assert_eq!(
        h.get("dc.format_version").and_then(Value::as_u64),
        Some(u64::from(dc::FORMAT_VERSION))
    );
    assert!(matches!(
        h.get("dc.format_version"),
        Some(Value::Scalar {
            ty: dcgguf::gguf::ValueType::U32,
            ..
        })
    ));
    assert_eq!(
        h.get("dc.original_size").and_then(Value::as_u64),
        Some(original.len() as u64)
    );
    assert_eq!(
        h.get("dc.original_xxh3").and_then(Value::as_u64),
        Some(xxh3_64(original))
    );
    assert!(
        h.get("dc.writer")
            .and_then(Value::as_str)
            .is_some_and(|w| w.starts_with("dcgguf "))
    );
    assert_eq!(
        h.get("dc.original.general.architecture"),
        orig.get("general.architecture"),
        "{name}"
    );

    let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["dc.index", "dc.data"], "{name}");
    for t in &h.tensors {
        assert_eq!(t.ty, GgmlType::I8);
        assert_eq!(t.dims.len(), 1);
    }
    assert_eq!(h.tensors[0].offset, 0);
    // Tensor offsets are consecutive, each tensor padded to the alignment (llama.cpp's
    // gguf_init_from_file requires exactly that), and dc.data is the last thing in the file,
    // padding aside. Whether that padding is present: `dc_file_holds_padded_data_section`.
    let mut expected_offset = 0u64;
    for t in &h.tensors {
        assert_eq!(
            t.offset, expected_offset,
            "{name}: {} offset is not consecutive",
            t.name
        );
        expected_offset += dcgguf::gguf::align_up(t.nbytes, h.alignment).unwrap();
    }
    let dc_data_end = h.tensor_range(&h.tensors[1]).end;
    assert!(
        dc_bytes.len() as u64 - dc_data_end < h.alignment,
        "{name}: bytes after dc.data"
    );

    // Small keys verbatim and in original order; large ones listed in dc.moved_keys.
    let mut expected_clear = Vec::new();
    let mut expected_moved = Vec::new();
    for kv in &orig.kvs {
        if kv.key == b"general.architecture" {
            expected_clear.push(kv.key.clone());
        } else if kv.value.encoded_len() > dc::MAX_CLEAR_VALUE {
            expected_moved.push(kv.key.clone());
        } else {
            expected_clear.push(kv.key.clone());
            let got = h.kvs.iter().find(|x| x.key == kv.key);
            assert_eq!(
                got.map(|x| &x.value),
                Some(&kv.value),
                "{name}: {}",
                kv.key_str()
            );
        }
    }
    let clear: Vec<Vec<u8>> = h
        .kvs
        .iter()
        .map(|kv| kv.key.clone())
        .filter(|k| !k.starts_with(b"dc."))
        .collect();
    if orig.get("general.architecture").is_some() {
        assert_eq!(clear, expected_clear, "{name}: clear keys or their order");
    } else {
        assert_eq!(clear[0], b"general.architecture", "{name}: added first");
        assert_eq!(clear[1..], expected_clear[..], "{name}");
    }
    match h.get("dc.moved_keys") {
        None => assert!(expected_moved.is_empty(), "{name}: dc.moved_keys missing"),
        Some(Value::Array(ArrayValue::Strings(moved))) => {
            assert_eq!(moved, &expected_moved, "{name}");
            assert!(!expected_moved.is_empty());
        }
        Some(other) => panic!("{name}: dc.moved_keys is {other:?}"),
    }
}

#[test]
fn every_tensor_type_and_value_type_default_chunks() {
    let b = standard_model(1);
    let original = b.build();
    let dc = check_roundtrip("std-default", &original, &CompressOptions::default());
    // One chunk per (non-empty) tensor at the default 1 MiB.
    for e in &dc.index.tensors {
        assert_eq!(e.chunks.len(), 1);
    }
    // The realistic synthetic data compresses (the float and quant planes are skewed).
    let stored: u64 = dc.index.tensors.iter().map(|e| e.stored_bytes()).sum();
    let raw: u64 = dc.original.tensors.iter().map(|t| t.nbytes).sum();
    assert!(stored < raw, "stored {stored} >= raw {raw}");
    let moved = dc.dc_header.get("dc.moved_keys").expect("big values moved");
    let Value::Array(ArrayValue::Strings(moved)) = moved else {
        panic!("{moved:?}")
    };
    let moved: Vec<_> = moved
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(
        moved,
        [
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.scores",
            "tokenizer.chat_template",
            "test.string_1025"
        ]
    );
    assert!(dc.dc_header.get("test.string_1024").is_some());
    assert!(dc.dc_header.get("test.string_1025").is_none());
}

#[test]
fn tiny_and_odd_chunk_sizes() {
    let original = standard_model(2).build();
    for chunk in [1usize, 100, 1000, 1024, 4096, 65_536] {
        let dc = check_roundtrip(&format!("std-chunk-{chunk}"), &original, &opts_chunk(chunk));
        if chunk == 1024 {
            let multi = dc
                .index
                .tensors
                .iter()
                .filter(|e| e.chunks.len() > 3)
                .count();
            assert!(
                multi >= 5,
                "1 KiB chunks should split most tensors ({multi})"
            );
        }
    }
}

#[test]
fn alignment_64_gaps_nonzero_padding_and_trailing_bytes() {
    let mut b = standard_model(3).alignment(64);
    b.extra_gap = 100;
    b.fill_padding = true;
    b.trailing = Rng::new(9).bytes(777);
    let original = b.build();
    let h = GgufHeader::parse(&original).unwrap();
    assert_eq!(h.alignment, 64);
    let dc = check_roundtrip("align64-gaps", &original, &opts_chunk(1024));
    assert!(
        dc.index.gaps.raw_len > 700,
        "gap blob holds the gaps and trailing bytes"
    );
}

#[test]
fn reversed_data_order_and_alignment_1() {
    let mut b = standard_model(4).alignment(1);
    b.reverse_data = true;
    b.fill_padding = true;
    b.extra_gap = 3;
    let original = b.build();
    let h = GgufHeader::parse(&original).unwrap();
    assert!(h.tensors[0].offset > h.tensors[1].offset);
    check_roundtrip("reversed-align1", &original, &opts_chunk(1000));
}

#[test]
fn gguf_version_2() {
    let mut b = standard_model(5);
    b.version = 2;
    let original = b.build();
    assert_eq!(GgufHeader::parse(&original).unwrap().version, 2);
    check_roundtrip("v2", &original, &opts_chunk(4096));
}

#[test]
fn zero_tensors() {
    let b = GgufBuilder {
        kvs: rich_metadata(Some("bert")),
        ..GgufBuilder::default()
    };
    let dc = check_roundtrip("no-tensors", &b.build(), &CompressOptions::default());
    assert_eq!(dc.tensor_count(), 0);

    // Header padding cut off: the file ends before its data section would start.
    let b = GgufBuilder {
        kvs: vec![kv("general.name", Value::string("x"))],
        no_header_padding: true,
        ..GgufBuilder::default()
    };
    let original = b.build();
    let h = GgufHeader::parse(&original).unwrap();
    assert!(h.data_offset > original.len() as u64);
    check_roundtrip(
        "no-tensors-no-padding",
        &original,
        &CompressOptions::default(),
    );

    // Trailing bytes only.
    let b = GgufBuilder {
        trailing: vec![0xEE; 50],
        ..GgufBuilder::default()
    };
    check_roundtrip(
        "no-tensors-trailing",
        &b.build(),
        &CompressOptions::default(),
    );
}

#[test]
fn tensors_with_zero_elements_and_scalars() {
    let mut rng = Rng::new(6);
    let b = GgufBuilder::new()
        .kv("general.architecture", Value::string("llama"))
        .tensor(Tensor::random("a", &[64, 4], GgmlType::F16, &mut rng))
        .tensor(Tensor::with_data("empty", &[0, 4], GgmlType::Q4_K, vec![]))
        .tensor(Tensor::random("scalar", &[], GgmlType::F32, &mut rng))
        .tensor(Tensor::with_data("empty2", &[32, 0], GgmlType::F32, vec![]))
        .tensor(Tensor::random("b", &[256, 2], GgmlType::Q6_K, &mut rng));
    let dc = check_roundtrip("zero-elems", &b.build(), &opts_chunk(512));
    let i = dc.find_tensor("empty").unwrap();
    assert_eq!(dc.tensor_info(i).nbytes, 0);
    assert_eq!(dc.tensor_view(i).chunks, 0);
    let mut none = [];
    dc.read_tensor(i, 0, &mut none).unwrap();
}

#[test]
fn no_architecture_key_gets_dcgguf_added_first() {
    let mut b = standard_model(7);
    b.kvs.retain(|kv| kv.key != b"general.architecture");
    let dc = check_roundtrip("no-arch", &b.build(), &CompressOptions::default());
    assert!(
        dc.dc_header
            .get("dc.original.general.architecture")
            .is_none()
    );
    assert_eq!(dc.dc_header.kvs[0].key, b"general.architecture");
}

#[test]
fn non_string_architecture_and_non_utf8_key() {
    let mut b = standard_model(8);
    b.kvs[0] = kv("general.architecture", Value::u32(7));
    b.kvs.push(dcgguf::gguf::KeyValue {
        key: vec![b'k', 0xFF, 0x00, b'z'],
        value: Value::u32(1),
    });
    let dc = check_roundtrip("odd-keys", &b.build(), &opts_chunk(2048));
    assert_eq!(
        dc.dc_header.get("dc.original.general.architecture"),
        Some(&Value::u32(7))
    );
}

#[test]
fn constant_and_incompressible_tensors() {
    let mut rng = Rng::new(10);
    let b = GgufBuilder::new()
        .kv("general.architecture", Value::string("llama"))
        .tensor(Tensor::with_data(
            "zeros",
            &[4096],
            GgmlType::F32,
            vec![0; 16384],
        ))
        .tensor(Tensor::with_data(
            "noise",
            &[16384],
            GgmlType::I8,
            rng.bytes(16384),
        ))
        .tensor(Tensor::with_data(
            "noise_q8",
            &[32 * 64],
            GgmlType::Q8_0,
            rng.bytes(34 * 64),
        ));
    let dc = check_roundtrip("const-noise", &b.build(), &opts_chunk(4096));
    let zeros = dc.tensor_view(dc.find_tensor("zeros").unwrap());
    assert!(zeros.stored_bytes * 20 < zeros.raw_bytes, "{zeros:?}");
    assert_eq!(zeros.raw_chunks, 0);
    let noise = dc.tensor_view(dc.find_tensor("noise").unwrap());
    assert_eq!(
        noise.raw_chunks, noise.chunks,
        "random bytes are stored raw: {noise:?}"
    );
    assert_eq!(noise.stored_bytes, noise.raw_bytes);
}

#[test]
fn one_tensor_spans_several_default_chunks() {
    let mut rng = Rng::new(11);
    // 2.5 MiB of bf16: three chunks at the default 1 MiB, the last one partial.
    let b = GgufBuilder::new()
        .kv("general.architecture", Value::string("llama"))
        .tensor(Tensor::random(
            "big",
            &[1024, 1280],
            GgmlType::BF16,
            &mut rng,
        ))
        .tensor(Tensor::random("small", &[32, 2], GgmlType::Q4_0, &mut rng));
    let dc = check_roundtrip("multi-default", &b.build(), &CompressOptions::default());
    let v = dc.tensor_view(0);
    assert_eq!(v.chunks, 3);
    assert!(v.ratio > 1.2, "bf16 gaussian weights compress: {v:?}");
}

#[test]
fn transform_override_and_encoder_options() {
    let original = standard_model(12).build();
    let identity = CompressOptions {
        chunk_size: 3000,
        transform: Some(|_| Transform::Identity),
        ..CompressOptions::default()
    };
    let dir = TempDir::new("identity");
    let dc = compress_bytes(&dir, &original, &identity);
    for i in 0..dc.tensor_count() {
        assert_eq!(dc.tensor_view(i).transform, "identity");
    }
    let back = dir.join("back.gguf");
    decompress_file(dc.path(), &back, false, &|_| {}).unwrap();
    assert!(std::fs::read(&back).unwrap() == original);

    use dcgguf::codec::{LEVEL_DEFAULT, LEVEL_MAX};
    for level in [LEVEL_DEFAULT, LEVEL_MAX, -3, 1, 3, 19] {
        for shallow in [false, true] {
            let o = CompressOptions {
                encode: dcgguf::codec::EncodeOptions {
                    level,
                    shallow_search: shallow,
                    ..Default::default()
                },
                chunk_size: 8192,
                ..CompressOptions::default()
            };
            let dir = TempDir::new("levels");
            let dc = compress_bytes(&dir, &original, &o);
            let mut all = vec![0u8; original.len()];
            assert_eq!(dc.read_at(0, &mut all).unwrap(), original.len());
            assert!(all == original, "level {level} shallow {shallow}");
        }
    }
}

#[test]
fn compressing_twice_gives_identical_files() {
    let original = standard_model(13).build();
    let dir = TempDir::new("determinism");
    let input = dir.write("in.gguf", &original);
    compress(&input, &dir.join("a.dc.gguf"), &opts_chunk(2048));
    compress(&input, &dir.join("b.dc.gguf"), &opts_chunk(2048));
    assert!(
        std::fs::read(dir.join("a.dc.gguf")).unwrap()
            == std::fs::read(dir.join("b.dc.gguf")).unwrap(),
        "compression is not deterministic"
    );
}

#[test]
fn read_at_from_many_threads() {
    let original = standard_model(14).build();
    let dir = TempDir::new("threads");
    let dc = compress_bytes(&dir, &original, &opts_chunk(1024));
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (dc, original) = (&dc, &original);
            s.spawn(move || {
                let mut rng = Rng::new(100 + t);
                let mut buf = vec![0u8; 5000];
                for _ in 0..100 {
                    let off = rng.below(original.len() as u64);
                    let n = dc.read_at(off, &mut buf).unwrap();
                    assert!(buf[..n] == original[off as usize..off as usize + n]);
                }
            });
        }
    });
}

/// `CompressOptions::chunk_size` is a `usize`, but the index stores `chunk_raw` as a u32 and
/// readers refuse chunks over `dc::MAX_CHUNK_RAW` (64 MiB). A larger chunk size must be
/// clamped or refused by `compress_file`, never written into a file that cannot be opened.
#[test]
fn huge_chunk_sizes_are_clamped_or_refused() {
    let original = small_model(15).build();
    for chunk_size in [
        64 << 20,
        (64 << 20) + 2,
        128 << 20,
        1usize << 32,
        (1usize << 32) + 4,
        usize::MAX,
    ] {
        let dir = TempDir::new("huge-chunk");
        let input = dir.write("in.gguf", &original);
        let output = dir.join("out.dc.gguf");
        let opts = opts_chunk(chunk_size);
        match dc::compress_file(&input, &output, &opts, &|_| {}) {
            Err(e) => panic!("chunk size {chunk_size}: unexpected error {e:?}"),
            Ok(_) => {
                let dc = DcFile::open(&output).unwrap_or_else(|e| {
                    panic!("chunk size {chunk_size}: compress wrote a file it cannot open: {e}")
                });
                let mut all = vec![0u8; original.len()];
                dc.read_at(0, &mut all).unwrap();
                assert!(all == original);
            }
        }
    }
}

/// llama.cpp's `gguf_init_from_file` with `no_alloc = false` (as `llama-gguf` and other ggml
/// tools use it) reads the whole data section, every tensor padded to the alignment *including
/// the last one*; a file that ends right after `dc.data` fails there with "failed to read
/// tensor data binary blob" (checked against libggml-base of the pinned llama.cpp). Writers
/// following llama.cpp pad the last tensor, so the DC file must too.
#[test]
fn dc_file_holds_padded_data_section() {
    let mut aligned = standard_model(16).alignment(64);
    aligned.trailing = vec![1; 5];
    let cases = [
        ("default", standard_model(16)),
        ("align64", aligned),
        ("no-tensors", GgufBuilder::default()),
    ];
    for (name, b) in cases {
        let dir = TempDir::new("llama-size");
        let dc = compress_bytes(&dir, &b.build(), &opts_chunk(4096));
        let file_len = dc.stored_size();
        let h = &dc.dc_header;
        let llama_size: u64 = h
            .tensors
            .iter()
            .map(|t| dcgguf::gguf::align_up(t.nbytes, h.alignment).unwrap())
            .sum();
        assert!(
            h.data_offset + llama_size <= file_len,
            "{name}: the file ends at {file_len}, inside the padded data section llama.cpp \
             reads (to {}): gguf_init_from_file(no_alloc = false) fails",
            h.data_offset + llama_size
        );
    }
}

/// The llama.cpp stream frees the original header's decoded bytes at its first read into the
/// caller's memory (llama.cpp reads tensor data only once it has parsed the metadata), not
/// at the end of the load, where they would add to the peak; the bytes it serves are the
/// original file's either way.
#[test]
fn the_stream_frees_the_header_at_the_first_tensor_read() {
    use dcgguf::llama::stream::{Source, Stream};
    let dir = TempDir::new("header-first-read");
    let original = standard_model(22).build();
    let dc = std::sync::Arc::new(compress_bytes(&dir, &original, &opts_chunk(4096)));
    let mut stream = Stream::new(&dir.join("out.dc.gguf"), Source::Dc(dc.clone()), None).unwrap();
    let at = dc.original.data_offset as usize;
    let mut header = vec![0u8; at];
    assert_eq!(stream.read(&mut header).unwrap(), at);
    assert_eq!(header, original[..at]);
    assert!(
        dc.holds_original_header(),
        "freed while the metadata is read"
    );
    let mut data = vec![0u8; 256];
    assert_eq!(stream.read_into_caller(&mut data).unwrap(), data.len());
    assert_eq!(data, original[at..at + 256]);
    assert!(
        !dc.holds_original_header(),
        "held past the first tensor read"
    );
    assert_eq!(dc.read_at(0, &mut header).unwrap(), at);
    assert_eq!(
        header,
        original[..at],
        "header read again after the release"
    );
}

/// After `release_original_header` (what the llama.cpp load does once llama.cpp has read
/// the header), a read of the header decodes it again: the same bytes; and a header blob
/// changed on disk since the open is an error, never different bytes.
#[test]
fn a_released_header_is_decoded_again_and_checked() {
    use std::os::unix::fs::FileExt;
    let dir = TempDir::new("header-release");
    let original = standard_model(21).build();
    let dc = compress_bytes(&dir, &original, &opts_chunk(4096));
    let mut buf = vec![0u8; dc.original.data_offset as usize + 100];
    for _ in 0..2 {
        dc.release_original_header();
        assert_eq!(dc.read_at(0, &mut buf).unwrap(), buf.len());
        assert_eq!(buf, original[..buf.len()], "header read after a release");
    }

    let blob = &dc.index.header;
    let at = dc_data_range(&dc).start + blob.offset + blob.stored_len / 2;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("out.dc.gguf"))
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
    // Still kept from the last read: served without touching the file.
    assert_eq!(dc.read_at(0, &mut buf).unwrap(), buf.len());
    assert_eq!(buf, original[..buf.len()]);
    dc.release_original_header();
    let err = dc.read_at(0, &mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            DcError::CorruptBlob {
                blob: "original header",
                ..
            }
        ),
        "a changed header blob must fail its check, got: {err}"
    );
    // Tensor bytes do not depend on the header blob.
    let t = &dc.original.tensors[0];
    let r = dc.original.tensor_range(t);
    let mut tensor = vec![0u8; (r.end - r.start) as usize];
    dc.read_at(r.start, &mut tensor).unwrap();
    assert_eq!(tensor, original[r.start as usize..r.end as usize]);
}
