//! Hostile and damaged inputs: each must give its specific error (naming the offset or tensor
//! where that applies), never a panic, never a half-written output.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use common::*;
use dcgguf::codec::EncodeOptions;
use dcgguf::dc::{
    CompressOptions, DcError, DcFile, Index, compress_file, decompress_file, verify_against,
};
use dcgguf::gguf::{GgmlType, GgufError, GgufHeader, Value, ValueType};

// ---------------------------------------------------------------------------------------------
// GGUF containers
// ---------------------------------------------------------------------------------------------

/// Parses and checks data bounds, the way every entry point does.
fn parse_checked(bytes: &[u8]) -> Result<GgufHeader, GgufError> {
    let h = GgufHeader::parse(bytes)?;
    h.check_data_fits(bytes.len() as u64)?;
    Ok(h)
}

fn parse_err(bytes: &[u8]) -> GgufError {
    match parse_checked(bytes) {
        Ok(h) => panic!("hostile input parsed: {h:?}"),
        Err(e) => e,
    }
}

/// The same input through `compress_file`: the same error wrapped with the path, and no
/// output or temporary file left behind.
fn compress_err(bytes: &[u8]) -> DcError {
    let dir = TempDir::new("bad-compress");
    let input = dir.write("bad.gguf", bytes);
    let output = dir.join("out.dc.gguf");
    let err = compress_file(&input, &output, &CompressOptions::default(), &|_| {})
        .expect_err("compressing a hostile input succeeded");
    assert!(!output.exists(), "output written for a bad input");
    assert!(dir.tmp_leftovers().is_empty(), "temp file left behind");
    err
}

/// Checks one hostile header: `check` matches the parse error, and compress_file reports the
/// identical error wrapped in `DcError::Gguf` naming the input path.
fn expect_gguf_err(what: &str, bytes: &[u8], check: impl Fn(&GgufError) -> bool) -> String {
    let e = parse_err(bytes);
    assert!(check(&e), "{what}: unexpected error {e:?}");
    match compress_err(bytes) {
        DcError::Gguf { path, source } => {
            assert!(path.ends_with("bad.gguf"), "{what}: {path:?}");
            assert_eq!(source.to_string(), e.to_string(), "{what}");
        }
        other => panic!("{what}: compress gave {other:?}"),
    }
    e.to_string()
}

/// A minimal valid file: metadata `kvs` written by `f`, then one F32 tensor of 8 elements.
fn with_kvs(n_kv: u64, f: impl FnOnce(&mut Raw)) -> Vec<u8> {
    let mut r = Raw::header(3, 1, n_kv);
    f(&mut r);
    r.tensor_info(b"t", &[8], 0, 0).pad(32).zeros(32);
    r.0
}

/// A file with no metadata and the given tensor infos, padded, then `data_len` zero bytes.
fn with_tensors(infos: &[(&[u8], &[u64], u32, u64)], data_len: usize) -> Vec<u8> {
    let mut r = Raw::header(3, infos.len() as u64, 0);
    for (name, dims, ty, off) in infos {
        r.tensor_info(name, dims, *ty, *off);
    }
    r.pad(32).zeros(data_len);
    r.0
}

#[test]
fn sanity_the_hand_written_baselines_parse() {
    let ok = with_kvs(1, |r| {
        r.kv_u32("a", 1);
    });
    let h = parse_checked(&ok).unwrap();
    assert_eq!((h.kvs.len(), h.tensors.len()), (1, 1));
    let ok = with_tensors(&[(b"t", &[8], 0, 0), (b"u", &[32], 8, 32)], 32 + 34);
    assert_eq!(parse_checked(&ok).unwrap().tensors[1].nbytes, 34);
}

#[test]
fn truncation_at_every_header_byte_and_through_the_data() {
    let original = small_model(21).build();
    let full = parse_checked(&original).unwrap();
    let data_end = full
        .tensors
        .iter()
        .map(|t| full.tensor_range(t).end)
        .max()
        .unwrap();
    let mut cuts: Vec<usize> = (0..full.infos_end as usize + 40).collect();
    cuts.extend((full.infos_end as usize..original.len()).step_by(13));
    cuts.push(data_end as usize - 1);
    for cut in cuts {
        let bytes = &original[..cut];
        let res = parse_checked(bytes);
        if (cut as u64) < full.infos_end {
            match res {
                Err(GgufError::Truncated {
                    offset, need, have, ..
                }) => {
                    assert_eq!(offset + have, cut as u64, "cut {cut}");
                    assert!(need > have, "cut {cut}");
                }
                Err(GgufError::TooLarge {
                    offset,
                    value,
                    limit,
                    ..
                }) => assert!(offset <= cut as u64 && value > limit, "cut {cut}"),
                other => panic!("cut {cut}: {other:?}"),
            }
        } else if (cut as u64) < data_end {
            match res {
                Err(GgufError::DataPastEof {
                    name,
                    end,
                    file_len,
                    ..
                }) => {
                    assert_eq!(file_len, cut as u64);
                    assert!(end > file_len);
                    assert!(full.tensors.iter().any(|t| t.name == name));
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        } else {
            assert_eq!(res.unwrap(), full, "cut {cut} in the trailing bytes");
        }
    }
    // The same through compress_file, for a cut in the header and one in the data.
    for cut in [10usize, full.infos_end as usize + 100] {
        match compress_err(&original[..cut]) {
            DcError::Gguf { source, .. } => assert!(
                matches!(
                    source,
                    GgufError::Truncated { .. }
                        | GgufError::TooLarge { .. }
                        | GgufError::DataPastEof { .. }
                ),
                "{source:?}"
            ),
            other => panic!("{other:?}"),
        }
    }
    // An empty file.
    assert!(matches!(
        parse_err(&[]),
        GgufError::Truncated {
            offset: 0,
            have: 0,
            ..
        }
    ));
    assert!(matches!(compress_err(&[]), DcError::Gguf { .. }));
}

#[test]
fn wrong_magic_and_big_endian() {
    let mut bytes = small_model(22).build();
    bytes[3] = b'X';
    expect_gguf_err(
        "magic",
        &bytes,
        |e| matches!(e, GgufError::BadMagic { found } if found == b"GGUX"),
    );
    bytes[..4].copy_from_slice(b"\x7fELF");
    expect_gguf_err("elf", &bytes, |e| matches!(e, GgufError::BadMagic { .. }));

    // A big-endian file: version and counts stored big-endian.
    let mut be = b"GGUF".to_vec();
    be.extend(3u32.to_be_bytes());
    be.extend(0u64.to_be_bytes());
    be.extend(1u64.to_be_bytes());
    be.extend([0; 64]);
    let msg = expect_gguf_err("big-endian", &be, |e| {
        matches!(e, GgufError::BigEndian { raw: 0x0300_0000 })
    });
    assert!(msg.contains("big-endian"), "{msg}");
}

#[test]
fn unsupported_versions() {
    for v in [0u32, 1, 4, 99, u32::MAX] {
        let mut r = Raw::header(v, 0, 0);
        r.pad(32);
        let msg = expect_gguf_err(
            &format!("version {v}"),
            &r.0,
            |e| matches!(e, GgufError::UnsupportedVersion(x) if *x == v),
        );
        assert!(msg.contains(&v.to_string()), "{msg}");
    }
}

#[test]
fn huge_counts() {
    for (n_tensors, n_kv, what) in [
        (0, u64::MAX, "metadata count"),
        (0, 1_000_000, "metadata count"),
        (u64::MAX, 0, "tensor count"),
        (1_000_000, 0, "tensor count"),
    ] {
        let mut r = Raw::header(3, n_tensors, n_kv);
        r.zeros(200);
        let msg = expect_gguf_err(what, &r.0, |e| {
            matches!(e, GgufError::TooLarge { what: w, offset: 24, value, limit }
                if w == what && *value == n_tensors.max(n_kv) && *limit < 200)
        });
        assert!(msg.contains("offset 24"), "{msg}");
    }
}

#[test]
fn huge_string_and_array_lengths() {
    // Key length.
    let bytes = with_kvs(1, |r| {
        r.u64(u64::MAX);
    });
    expect_gguf_err(
        "key length",
        &bytes,
        |e| matches!(e, GgufError::TooLarge { offset: 24, value: u64::MAX, limit, .. } if *limit == 1 << 30),
    );
    // String value over the 1 GiB limit, and one longer than the file.
    for (len, too_large) in [((1u64 << 30) + 1, true), (5000, false)] {
        let bytes = with_kvs(1, |r| {
            r.str(b"k").u32(ValueType::String as u32).u64(len);
        });
        let value_at = 24 + 8 + 1 + 4;
        let msg = expect_gguf_err("string length", &bytes, |e| match e {
            GgufError::TooLarge { offset, value, .. } => {
                too_large && *offset == value_at && *value == len
            }
            GgufError::Truncated { offset, need, .. } => {
                !too_large && *offset == value_at + 8 && *need == len
            }
            _ => false,
        });
        assert!(
            msg.contains(&value_at.to_string()) || msg.contains(&(value_at + 8).to_string()),
            "{msg}"
        );
    }
    // Array lengths: overflowing, over the limit, longer than the file.
    for (elem, count) in [
        (ValueType::String, u64::MAX),
        (ValueType::Array, u64::MAX / 4),
        (ValueType::U64, u64::MAX / 2),
        (ValueType::U8, (1 << 30) + 1),
        (ValueType::U32, 1000),
    ] {
        let bytes = with_kvs(1, |r| {
            r.str(b"arr")
                .u32(ValueType::Array as u32)
                .u32(elem as u32)
                .u64(count);
        });
        let count_at = 24 + 8 + 3 + 4 + 4;
        let msg = expect_gguf_err("array length", &bytes, |e| {
            matches!(e, GgufError::TooLarge { what, offset, value, .. }
                if what.contains("array length") && *offset == count_at && *value == count)
        });
        assert!(msg.contains("arr"), "{msg}");
    }
}

/// `levels` arrays nested in each other, the innermost holding two u8.
fn nested(levels: usize) -> Vec<u8> {
    with_kvs(1, |r| {
        r.str(b"deep").u32(ValueType::Array as u32);
        for _ in 1..levels {
            r.u32(ValueType::Array as u32).u64(1);
        }
        r.u32(ValueType::U8 as u32).u64(2).bytes(&[1, 2]);
    })
}

#[test]
fn nesting_depth() {
    // Eight levels are accepted and round-trip; nine are refused.
    let h = parse_checked(&nested(8)).unwrap();
    assert_eq!(h.kvs[0].value.value_type(), ValueType::Array);
    let mut w = dcgguf::gguf::HeaderWriter::new(3);
    w.kv(&h.kvs[0]);
    w.tensor("t", &[8], GgmlType::F32, 0);
    assert_eq!(w.finish(32), nested(8)[..nested(8).len() - 32]);
    let msg = expect_gguf_err(
        "nine levels",
        &nested(9),
        |e| matches!(e, GgufError::NestingTooDeep { key } if key == "deep"),
    );
    assert!(msg.contains("deep"));
}

#[test]
fn bad_value_types() {
    let bytes = with_kvs(1, |r| {
        r.str(b"k").u32(13).u32(0);
    });
    let msg = expect_gguf_err(
        "value type",
        &bytes,
        |e| matches!(e, GgufError::BadValueType { key, offset: 33, code: 13 } if key == "k"),
    );
    assert!(msg.contains("offset 33") && msg.contains("\"k\""), "{msg}");
    let bytes = with_kvs(1, |r| {
        r.str(b"k").u32(ValueType::Array as u32).u32(99).u64(0);
    });
    expect_gguf_err("array element type", &bytes, |e| {
        matches!(
            e,
            GgufError::BadValueType {
                offset: 37,
                code: 99,
                ..
            }
        )
    });
}

#[test]
fn bad_alignment() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "zero",
            with_kvs(1, |r| {
                r.kv_u32("general.alignment", 0);
            }),
        ),
        (
            "three",
            with_kvs(1, |r| {
                r.kv_u32("general.alignment", 3);
            }),
        ),
        (
            "48",
            with_kvs(1, |r| {
                r.kv_u32("general.alignment", 48);
            }),
        ),
        (
            "u64",
            with_kvs(1, |r| {
                r.str(b"general.alignment")
                    .u32(ValueType::U64 as u32)
                    .u64(32);
            }),
        ),
        (
            "i32",
            with_kvs(1, |r| {
                r.str(b"general.alignment")
                    .u32(ValueType::I32 as u32)
                    .u32(32);
            }),
        ),
        (
            "string",
            with_kvs(1, |r| {
                r.kv_str("general.alignment", "32");
            }),
        ),
        (
            // Found by fuzzing: the array-skipping parse once ignored it.
            "array",
            with_kvs(1, |r| {
                r.str(b"general.alignment")
                    .u32(ValueType::Array as u32)
                    .u32(ValueType::U32 as u32)
                    .u64(1)
                    .u32(32);
            }),
        ),
    ];
    for (what, bytes) in cases {
        let msg = expect_gguf_err(what, &bytes, |e| matches!(e, GgufError::BadAlignment(_)));
        assert!(msg.contains("general.alignment"), "{msg}");
        // The parse that skips arrays (DC loads) rejects it the same way.
        let lean = GgufHeader::parse_without_arrays(&bytes).expect_err(what);
        assert_eq!(lean.to_string(), msg, "{what}");
    }
    // Powers of two are fine, including 1.
    for a in [1u32, 8, 4096] {
        let bytes = with_kvs(1, |r| {
            r.kv_u32("general.alignment", a);
        });
        assert_eq!(GgufHeader::parse(&bytes).unwrap().alignment, u64::from(a));
    }
}

#[test]
fn the_parse_that_skips_arrays_keeps_their_lengths() {
    let bytes = with_kvs(3, |r| {
        r.str(b"tokenizer.ggml.tokens")
            .u32(ValueType::Array as u32)
            .u32(ValueType::String as u32)
            .u64(3)
            .str(b"a")
            .str(b"bc")
            .str(b"")
            .str(b"scores")
            .u32(ValueType::Array as u32)
            .u32(ValueType::F32 as u32)
            .u64(2)
            .u32(0)
            .u32(0);
        r.kv_u32("general.count", 7);
    });
    let full = GgufHeader::parse(&bytes).unwrap();
    let lean = GgufHeader::parse_without_arrays(&bytes).unwrap();
    // The lean parse keeps the scalars, not the arrays' values, but their lengths.
    assert!(lean.get("tokenizer.ggml.tokens").is_none());
    assert!(full.skipped_arrays.is_empty());
    assert_eq!(lean.skipped_arrays.len(), 2);
    for h in [&full, &lean] {
        assert_eq!(h.array_len("tokenizer.ggml.tokens"), Some(3));
        assert_eq!(h.array_len("scores"), Some(2));
        assert_eq!(h.array_len("general.count"), None);
        assert_eq!(h.array_len("absent"), None);
        assert_eq!(h.get("general.count").and_then(|v| v.as_u64()), Some(7));
    }
}

#[test]
fn duplicate_keys_and_tensor_names() {
    let bytes = with_kvs(2, |r| {
        r.kv_u32("dup", 1).kv_str("dup", "again");
    });
    expect_gguf_err(
        "dup key",
        &bytes,
        |e| matches!(e, GgufError::DuplicateKey(k) if k == "dup"),
    );
    let bytes = with_tensors(&[(b"same", &[8], 0, 0), (b"same", &[8], 0, 32)], 64);
    expect_gguf_err(
        "dup tensor",
        &bytes,
        |e| matches!(e, GgufError::DuplicateTensor(n) if n == "same"),
    );
}

#[test]
fn bad_tensor_infos() {
    type Check = fn(&GgufError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Check, &str)> = vec![
        (
            "five dims",
            with_tensors(&[(b"t5", &[1, 1, 1, 1, 8], 0, 0)], 32),
            |e| matches!(e, GgufError::TooManyDims { n_dims: 5, .. }),
            "t5",
        ),
        (
            "dim count u32::MAX",
            {
                let mut r = Raw::header(3, 1, 0);
                r.str(b"tmax").u32(u32::MAX).zeros(64);
                r.0
            },
            |e| {
                matches!(
                    e,
                    GgufError::TooManyDims {
                        n_dims: u32::MAX,
                        ..
                    }
                )
            },
            "tmax",
        ),
        (
            "element count overflow",
            with_tensors(&[(b"big", &[1 << 32, 1 << 32], 0, 0)], 32),
            |e| matches!(e, GgufError::BadDim { dim: 1, .. }),
            "big",
        ),
        (
            "dim over i64::MAX",
            with_tensors(&[(b"neg", &[u64::MAX], 0, 0)], 32),
            |e| {
                matches!(
                    e,
                    GgufError::BadDim {
                        dim: 0,
                        value: u64::MAX,
                        ..
                    }
                )
            },
            "neg",
        ),
        (
            "retired type 4",
            with_tensors(&[(b"q4_2", &[32], 4, 0)], 32),
            |e| matches!(e, GgufError::UnknownType { id: 4, .. }),
            "q4_2",
        ),
        (
            "type 40",
            with_tensors(&[(b"t40", &[32], 40, 0)], 32),
            |e| matches!(e, GgufError::UnknownType { id: 40, .. }),
            "t40",
        ),
        (
            "type u32::MAX",
            with_tensors(&[(b"tm", &[32], u32::MAX, 0)], 32),
            |e| matches!(e, GgufError::UnknownType { id: u32::MAX, .. }),
            "tm",
        ),
        (
            "partial block",
            with_tensors(&[(b"q", &[31], GgmlType::Q4_0.id(), 0)], 32),
            |e| matches!(e, GgufError::BadShape { elems: 31, .. }),
            "q",
        ),
        (
            "misaligned",
            with_tensors(&[(b"mis", &[8], 0, 16)], 64),
            |e| {
                matches!(
                    e,
                    GgufError::MisalignedOffset {
                        offset: 16,
                        alignment: 32,
                        ..
                    }
                )
            },
            "mis",
        ),
        (
            "overlap",
            with_tensors(&[(b"first", &[16], 0, 0), (b"second", &[8], 0, 32)], 128),
            |e| matches!(e, GgufError::Overlap { first, second } if first == "first" && second == "second"),
            "second",
        ),
        (
            "overlap at u64::MAX",
            with_tensors(&[(b"lo", &[8], 0, 0), (b"hi", &[64], 0, u64::MAX - 31)], 64),
            |e| matches!(e, GgufError::Overlap { .. } | GgufError::DataPastEof { .. }),
            "hi",
        ),
        (
            "data past EOF",
            with_tensors(&[(b"ok", &[8], 0, 0), (b"late", &[16], 0, 32)], 64),
            |e| {
                matches!(e, GgufError::DataPastEof { name, start, end, file_len }
                if name == "late" && *end == *start + 64 && *file_len < *end)
            },
            "late",
        ),
        (
            "offset far past EOF",
            with_tensors(&[(b"far", &[8], 0, u64::MAX - 31)], 64),
            |e| matches!(e, GgufError::DataPastEof { .. }),
            "far",
        ),
        (
            "name of 64 bytes",
            with_tensors(&[(&[b'n'; 64], &[8], 0, 0)], 32),
            |e| matches!(e, GgufError::NameTooLong { len: 64, .. }),
            "nnnnnnnn",
        ),
        (
            "name not UTF-8",
            with_tensors(&[(b"ok", &[8], 0, 0), (&[0xFF, 0xFE], &[8], 0, 32)], 64),
            |e| matches!(e, GgufError::BadTensorName { index: 1, .. }),
            "#1",
        ),
    ];
    for (what, bytes, check, names) in cases {
        let msg = expect_gguf_err(what, &bytes, check);
        assert!(
            msg.contains(names),
            "{what}: message {msg:?} does not name {names:?}"
        );
    }
    // The edges that are allowed: a 63-byte name, four dims, a zero-size tensor anywhere.
    let ok = with_tensors(
        &[(&[b'n'; 63], &[2, 1, 2, 2], 0, 0), (b"z", &[0], 0, 32)],
        32,
    );
    parse_checked(&ok).unwrap();
}

#[test]
fn reserved_dc_keys_are_refused() {
    let b = small_model(23).kv("dc.something", Value::u32(1));
    let dir = TempDir::new("reserved");
    let input = dir.write("in.gguf", &b.build());
    let out = dir.join("out.dc.gguf");
    match compress_file(&input, &out, &CompressOptions::default(), &|_| {}) {
        Err(DcError::ReservedKey(k)) => assert_eq!(k, "dc.something"),
        other => panic!("{other:?}"),
    }
    assert!(!out.exists() && dir.tmp_leftovers().is_empty());
}

// ---------------------------------------------------------------------------------------------
// DC-GGUF files
// ---------------------------------------------------------------------------------------------

/// A small DC file with several chunks per tensor, plus its original.
struct Fixture {
    dir: TempDir,
    original: Vec<u8>,
    dc_bytes: Vec<u8>,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let dir = TempDir::new(tag);
        let original = small_model(24).build();
        let input = dir.write("orig.gguf", &original);
        compress(&input, &dir.join("good.dc.gguf"), &opts_chunk(256));
        let dc_bytes = std::fs::read(dir.join("good.dc.gguf")).unwrap();
        Fixture {
            dir,
            original,
            dc_bytes,
        }
    }

    fn open_good(&self) -> DcFile {
        DcFile::open(&self.dir.join("good.dc.gguf")).unwrap()
    }

    /// Writes `bytes` as `bad.dc.gguf` and opens it.
    fn open(&self, bytes: &[u8]) -> Result<DcFile, DcError> {
        DcFile::open(&self.dir.write("bad.dc.gguf", bytes))
    }

    fn with_index(&self, edit: impl FnOnce(&mut Index)) -> Vec<u8> {
        let dc = self.open_good();
        let r = dc_index_range(&dc);
        let mut idx = dc.index.clone();
        edit(&mut idx);
        let enc = idx.encode();
        assert_eq!(
            enc.len() as u64,
            r.end - r.start,
            "edit must keep the index size"
        );
        let mut bytes = self.dc_bytes.clone();
        bytes[r.start as usize..r.end as usize].copy_from_slice(&enc);
        bytes
    }
}

#[test]
fn corrupted_chunk_names_tensor_and_chunk() {
    let fx = Fixture::new("chunk-corrupt");
    let good = fx.open_good();
    let mut detected = 0;
    let mut total = 0;
    for i in 0..good.tensor_count() {
        let name = good.tensor_info(i).name.clone();
        for c in 0..good.index.tensors[i].chunks.len() {
            let r = chunk_range(&good, i, c);
            for at in [r.start, (r.start + r.end) / 2, r.end - 1] {
                total += 1;
                let mut bytes = fx.dc_bytes.clone();
                bytes[at as usize] ^= 0x24;
                let dc = fx
                    .open(&bytes)
                    .expect("chunk payloads are checked when read");
                let mut buf = vec![0u8; dc.tensor_info(i).nbytes as usize];
                match dc.read_tensor(i, 0, &mut buf) {
                    Err(e @ DcError::Corrupt { .. }) => {
                        let DcError::Corrupt { tensor, chunk, .. } = &e else {
                            unreachable!()
                        };
                        assert_eq!((tensor.as_str(), *chunk), (name.as_str(), c as u64));
                        let msg = e.to_string();
                        assert!(msg.contains(&name) && msg.contains("chunk"), "{msg}");
                        detected += 1;
                    }
                    // A flip that does not change the decoded bytes is harmless.
                    Ok(()) => {
                        let want = good.original.tensor_range(good.tensor_info(i));
                        assert!(buf == fx.original[want.start as usize..want.end as usize]);
                    }
                    Err(e) => panic!("{name} chunk {c} byte {at}: {e:?}"),
                }
                // Other tensors are still readable: the damage stays local.
                for j in (0..dc.tensor_count()).filter(|&j| j != i) {
                    let mut other = vec![0u8; dc.tensor_info(j).nbytes as usize];
                    dc.read_tensor(j, 0, &mut other).unwrap();
                }
            }
        }
    }
    assert!(total >= 20, "fixture should have many chunks ({total})");
    assert!(
        detected * 10 >= total * 9,
        "only {detected} of {total} flips detected"
    );
}

#[test]
fn corrupted_chunk_fails_decompress_and_verify_without_leftovers() {
    let fx = Fixture::new("chunk-decompress");
    let good = fx.open_good();
    let i = good.find_tensor("c.q4_k").unwrap();
    assert!(good.index.tensors[i].chunks.len() >= 2);
    let r = chunk_range(&good, i, 1);
    let mut bytes = fx.dc_bytes.clone();
    bytes[(r.start + r.end) as usize / 2] ^= 0xFF;
    let bad = fx.dir.write("bad.dc.gguf", &bytes);
    let out = fx.dir.join("restored.gguf");
    let err = decompress_file(&bad, &out, false, &|_| {}).unwrap_err();
    assert!(
        matches!(&err, DcError::Corrupt { tensor, chunk: 1, .. } if tensor == "c.q4_k"),
        "{err:?}"
    );
    assert!(err.to_string().contains("c.q4_k") && err.to_string().contains("chunk 1"));
    assert!(!out.exists(), "partial output left");
    assert!(fx.dir.tmp_leftovers().is_empty(), "temp file left");
    let dc = DcFile::open(&bad).unwrap();
    let err = verify_against(&dc, &fx.dir.join("orig.gguf"), &|_| {}).unwrap_err();
    assert!(matches!(err, DcError::Corrupt { chunk: 1, .. }), "{err:?}");
    let err = dc
        .for_each_block(1 << 16, &|_| {}, |_, _| Ok(()))
        .unwrap_err();
    assert!(matches!(err, DcError::Corrupt { chunk: 1, .. }), "{err:?}");
}

#[test]
fn corrupted_index_bytes() {
    let fx = Fixture::new("index-corrupt");
    let r = dc_index_range(&fx.open_good());
    let len = r.end - r.start;
    for k in [0, 3, 4, 9, 40, len / 2, len - 9, len - 8, len - 1] {
        let mut bytes = fx.dc_bytes.clone();
        bytes[(r.start + k) as usize] ^= 0x01;
        match fx.open(&bytes) {
            Err(e @ DcError::BadIndex { .. }) => {
                assert!(e.to_string().contains("dc.index"), "{e}");
            }
            other => panic!("index byte {k}: {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn index_entries_pointing_past_the_data() {
    let fx = Fixture::new("index-past");
    let good = fx.open_good();
    let data_len = {
        let r = dc_data_range(&good);
        r.end - r.start
    };
    let last = good.tensor_count() - 1;
    let name = good.tensor_info(1).name.clone();
    let last_name = good.tensor_info(last).name.clone();

    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "data_offset at the end",
            fx.with_index(|idx| idx.tensors[1].data_offset = data_len),
            name.clone(),
        ),
        (
            "data_offset u64::MAX",
            fx.with_index(|idx| idx.tensors[1].data_offset = u64::MAX),
            name.clone(),
        ),
        (
            "last chunk too long",
            fx.with_index(|idx| {
                let ch = idx.tensors[last].chunks.last_mut().unwrap();
                ch.stored_len = ch.stored_len.saturating_add(1 << 20);
                ch.mode = 1;
            }),
            last_name.clone(),
        ),
    ];
    for (what, bytes, tensor_name) in cases {
        match fx.open(&bytes) {
            Err(e @ DcError::Corrupt { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&tensor_name) && msg.contains("chunk"),
                    "{what}: {msg}"
                );
                assert!(msg.contains("past the end"), "{what}: {msg}");
            }
            other => panic!("{what}: {:?}", other.map(|_| ())),
        }
    }

    // Other inconsistent entries, each a Corrupt error naming the tensor.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "unknown mode",
            fx.with_index(|idx| idx.tensors[1].chunks[0].mode = 7),
            "mode",
        ),
        (
            "raw chunk with the wrong length",
            fx.with_index(|idx| {
                let ch = &mut idx.tensors[1].chunks[0];
                ch.mode = 0;
                ch.stored_len += 1;
            }),
            "raw chunk",
        ),
        (
            "bad transform",
            fx.with_index(|idx| idx.tensors[1].transform = 9),
            "transform",
        ),
        (
            "zero chunk size",
            fx.with_index(|idx| idx.tensors[1].chunk_raw = 0),
            "chunk size",
        ),
        (
            "chunk size not whole units",
            fx.with_index(|idx| idx.tensors[1].chunk_raw += 1),
            "chunk",
        ),
    ];
    for (what, bytes, word) in cases {
        match fx.open(&bytes) {
            Err(e @ DcError::Corrupt { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&name) && msg.contains(word), "{what}: {msg}");
            }
            other => panic!("{what}: {:?}", other.map(|_| ())),
        }
    }

    // Side blobs pointing outside dc.data or claiming absurd sizes.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "header blob offset",
            fx.with_index(|idx| idx.header.offset = data_len),
        ),
        (
            "header blob length",
            fx.with_index(|idx| idx.header.stored_len = u64::MAX),
        ),
        (
            "gap blob raw length",
            fx.with_index(|idx| idx.gaps.raw_len = 1 << 40),
        ),
        (
            "gap blob raw length off by one",
            fx.with_index(|idx| idx.gaps.raw_len += 1),
        ),
        (
            "header raw length off by one",
            fx.with_index(|idx| idx.header.raw_len -= 1),
        ),
    ];
    for (what, bytes) in cases {
        match fx.open(&bytes) {
            Err(DcError::CorruptBlob { .. } | DcError::OriginalHeader(_)) => {}
            other => panic!("{what}: {:?}", other.map(|_| ())),
        }
    }
    // A different original size in the index than in the metadata.
    match fx.open(&fx.with_index(|idx| idx.original_size += 1)) {
        Err(DcError::DamagedDc { what, .. }) => assert!(what.contains("original_size"), "{what}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn truncated_dc_file() {
    let fx = Fixture::new("dc-trunc");
    let good = fx.open_good();
    let idx = dc_index_range(&good);
    let data = dc_data_range(&good);
    let infos_end = good.dc_header.infos_end as usize;
    let cases = [
        (0usize, None),
        (10, None),
        (infos_end - 1, None),
        (infos_end, Some("dc.index")),
        (idx.start as usize + 5, Some("dc.index")),
        (data.start as usize + 1, Some("dc.data")),
        (data.end as usize - 1, Some("dc.data")),
    ];
    for (cut, tensor) in cases {
        let err = fx
            .open(&fx.dc_bytes[..cut])
            .err()
            .expect("truncated DC file opened");
        // Cut before the dc.* keys it is just a broken GGUF; after them, a damaged DC file.
        match (&err, tensor) {
            (DcError::DamagedDc { what, .. }, Some(t)) => {
                assert!(
                    what.contains(t) && what.contains(&format!("({cut} bytes)")),
                    "cut {cut}: {what}"
                );
            }
            (DcError::DamagedDc { what, .. }, None) => {
                assert!(what.contains("truncated"), "cut {cut}: {what}")
            }
            (
                DcError::Gguf {
                    source: GgufError::Truncated { .. } | GgufError::TooLarge { .. },
                    ..
                },
                None,
            ) => assert!(!dcgguf::dc::looks_like_dc(&fx.dc_bytes[..cut]), "cut {cut}"),
            _ => panic!("cut {cut}: {err:?}"),
        }
        assert!(err.to_string().contains("bad.dc.gguf"), "path named: {err}");
    }
}

#[test]
fn plain_gguf_is_not_dc_and_dc_is_not_compressed_again() {
    let fx = Fixture::new("not-dc");
    match DcFile::open(&fx.dir.join("orig.gguf")) {
        Err(DcError::NotDc { path, reason }) => {
            assert!(path.ends_with("orig.gguf"));
            assert!(reason.contains("dc.format_version"), "{reason}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let out = fx.dir.join("again.dc.gguf");
    match compress_file(
        &fx.dir.join("good.dc.gguf"),
        &out,
        &CompressOptions::default(),
        &|_| {},
    ) {
        Err(DcError::AlreadyDc(p)) => assert!(p.ends_with("good.dc.gguf")),
        other => panic!("{other:?}"),
    }
    assert!(!out.exists());
    let err = decompress_file(
        &fx.dir.join("orig.gguf"),
        &fx.dir.join("x.gguf"),
        false,
        &|_| {},
    )
    .unwrap_err();
    assert!(matches!(err, DcError::NotDc { .. }), "{err:?}");
    assert!(!fx.dir.join("x.gguf").exists());

    // Files that claim to be DC-GGUF but lack pieces: damaged DC files, never "plain".
    let fake = |b: GgufBuilder| fx.open(&b.build()).err().expect("fake DC file opened");
    let damaged = |e: &DcError, word: &str| matches!(e, DcError::DamagedDc { what, .. } if what.contains(word));
    let e = fake(GgufBuilder::new().kv("dc.format_version", Value::u32(2)));
    assert!(damaged(&e, "dc.index"), "{e:?}");
    let e = fake(GgufBuilder::new().kv("dc.format_version", Value::string("2")));
    assert!(damaged(&e, "integer"), "{e:?}");
    let e = fake(GgufBuilder::new().kv("dc.format_version", Value::u32(1)));
    assert!(damaged(&e, "dc.index"), "{e:?}");
    let mut rng = Rng::new(1);
    let e = fake(
        GgufBuilder::new()
            .kv("dc.format_version", Value::u32(2))
            .tensor(Tensor::random("dc.index", &[8], GgmlType::F32, &mut rng))
            .tensor(Tensor::random("dc.data", &[8], GgmlType::I8, &mut rng)),
    );
    assert!(damaged(&e, "I8"), "{e:?}");
    let e = fake(
        GgufBuilder::new()
            .kv("dc.format_version", Value::u32(2))
            .tensor(Tensor::random("dc.index", &[8], GgmlType::I8, &mut rng)),
    );
    assert!(damaged(&e, "dc.data"), "{e:?}");
    let e = fake(
        GgufBuilder::new()
            .kv("dc.format_version", Value::u32(2))
            .tensor(Tensor::random("dc.index", &[100], GgmlType::I8, &mut rng))
            .tensor(Tensor::random("dc.data", &[8], GgmlType::I8, &mut rng)),
    );
    assert!(matches!(&e, DcError::BadIndex { .. }), "{e:?}");
}

#[test]
fn patched_dc_metadata() {
    let fx = Fixture::new("dc-meta");
    // dc.format_version edited: the index (checksummed) says the current version and
    // checksums the header, so this is damage, not an unknown version.
    let future_version = dcgguf::dc::FORMAT_VERSION + 1;
    let mut bytes = fx.dc_bytes.clone();
    let at = value_offset(&bytes, "dc.format_version");
    bytes[at..at + 4].copy_from_slice(&future_version.to_le_bytes());
    assert!(matches!(fx.open(&bytes), Err(DcError::CorruptDcHeader)));
    // A file from a future version (its index says so, checksum and all): unsupported.
    let future = fx.with_index(|_| {});
    let r = dc_index_range(&fx.open_good());
    let mut future = future;
    future[r.start as usize + 4..r.start as usize + 8]
        .copy_from_slice(&future_version.to_le_bytes());
    let end = r.end as usize;
    let sum = xxhash_rust::xxh3::xxh3_64(&future[r.start as usize..end - 8]);
    future[end - 8..end].copy_from_slice(&sum.to_le_bytes());
    assert!(matches!(
        fx.open(&future),
        Err(DcError::UnsupportedVersion(v)) if v == future_version
    ));

    // Any edit of the DC file's own header, even of a value no reader uses, breaks the
    // header checksum in dc.index (format version 2): refused at open, nothing decoded.
    // (key, byte within its value: a u64's first byte, a string's first character)
    for (key, within) in [
        ("dc.original_size", 0),
        ("dc.original_xxh3", 0),
        ("general.name", 8),
        ("dc.writer", 8),
    ] {
        let mut bytes = fx.dc_bytes.clone();
        let at = value_offset(&bytes, key) + within;
        bytes[at] ^= 1;
        let bad = fx.dir.write("bad.dc.gguf", &bytes);
        match DcFile::open(&bad) {
            Err(DcError::CorruptDcHeader) => {}
            other => panic!("{key}: {:?}", other.map(|_| ())),
        }
        let out = fx.dir.join("out.gguf");
        let err = decompress_file(&bad, &out, false, &|_| {}).unwrap_err();
        assert!(matches!(err, DcError::CorruptDcHeader), "{key}: {err:?}");
        assert!(!out.exists() && fx.dir.tmp_leftovers().is_empty());
    }
}

#[test]
fn verify_against_a_different_original() {
    let fx = Fixture::new("verify-diff");
    let dc = fx.open_good();
    let mut other = fx.original.clone();
    let k = other.len() / 2;
    other[k] ^= 0x10;
    let p = fx.dir.write("other.gguf", &other);
    match verify_against(&dc, &p, &|_| {}) {
        Err(DcError::Mismatch { what }) => {
            assert!(what.contains(&format!("byte {k}")), "{what}")
        }
        other => panic!("{other:?}"),
    }
    let p = fx
        .dir
        .write("short.gguf", &fx.original[..fx.original.len() - 1]);
    assert!(matches!(
        verify_against(&dc, &p, &|_| {}),
        Err(DcError::Mismatch { .. })
    ));
    verify_against(&dc, &fx.dir.join("orig.gguf"), &|_| {}).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Mutation loops: never a panic
// ---------------------------------------------------------------------------------------------

/// A deterministic mutation: byte flips, overwritten words, truncation. Biased towards the
/// first `hot` bytes, where the structure lives.
fn mutate(src: &[u8], hot: usize, rng: &mut Rng) -> (Vec<u8>, String) {
    let mut b = src.to_vec();
    let pick = |rng: &mut Rng, len: usize| -> usize {
        if rng.below(3) > 0 {
            rng.below(hot.min(len) as u64) as usize
        } else {
            rng.below(len as u64) as usize
        }
    };
    let kind = rng.below(10);
    let what = match kind {
        0 => {
            let cut = rng.below(b.len() as u64) as usize;
            b.truncate(cut);
            format!("truncate at {cut}")
        }
        1..=2 => {
            let at = pick(rng, b.len()).min(b.len().saturating_sub(8));
            let v = match rng.below(4) {
                0 => u64::MAX,
                1 => 1 << 40,
                2 => rng.below(1 << 20),
                _ => rng.next_u64(),
            };
            let n = (b.len() - at).min(8);
            b[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
            format!("u64 {v:#x} at {at}")
        }
        _ => {
            let at = pick(rng, b.len());
            let x = rng.nonzero_u8();
            b[at] ^= x;
            format!("xor {x:#04x} at {at}")
        }
    };
    (b, what)
}

#[test]
fn mutated_dc_files_never_panic_and_never_decode_wrong_bytes() {
    let fx = Fixture::new("mutate-dc");
    let hot = dc_data_range(&fx.open_good()).start as usize + 200;
    let mut rng = Rng::new(0xDC);
    let path = fx.dir.join("m.dc.gguf");
    let (mut ok, mut errs) = (0, 0);
    for i in 0..2000 {
        let (bytes, what) = mutate(&fx.dc_bytes, hot, &mut rng);
        std::fs::write(&path, &bytes).unwrap();
        let res = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<u8>, DcError> {
            let dc = DcFile::open(&path)?;
            let mut out = Vec::new();
            dc.for_each_block(1 << 16, &|_| {}, |_, b| {
                out.extend_from_slice(b);
                Ok(())
            })?;
            // Random access must not panic either.
            let mut buf = [0u8; 100];
            dc.read_at(dc.original_size() / 3, &mut buf)?;
            Ok(out)
        }));
        match res {
            Err(_) => panic!("mutation {i} ({what}) panicked"),
            Ok(Ok(out)) => {
                assert!(
                    out == fx.original,
                    "mutation {i} ({what}) decoded to different bytes"
                );
                ok += 1;
            }
            Ok(Err(_)) => errs += 1,
        }
    }
    assert!(
        errs > 1000,
        "most mutations must be detected ({errs} errors, {ok} ok)"
    );
}

#[test]
fn mutated_gguf_files_never_panic_and_compress_losslessly() {
    let original = small_model(25).build();
    let hot = GgufHeader::parse(&original).unwrap().data_offset as usize;
    let dir = TempDir::new("mutate-gguf");
    let opts = CompressOptions {
        encode: EncodeOptions {
            level: 1,
            ..EncodeOptions::default()
        },
        chunk_size: 512,
        ..CompressOptions::default()
    };
    let mut rng = Rng::new(0x6600F);
    let (mut parsed, mut compressed) = (0, 0);
    for i in 0..2000 {
        let (bytes, what) = mutate(&original, hot, &mut rng);
        let res = catch_unwind(|| parse_checked(&bytes).map(|_| ()));
        let Ok(res) = res else {
            panic!("mutation {i} ({what}) panicked in the parser")
        };
        if res.is_err() || i % 8 != 0 {
            continue;
        }
        parsed += 1;
        // Whatever parses must compress and come back bit for bit.
        let input = dir.write("m.gguf", &bytes);
        let output = dir.join("m.dc.gguf");
        let back = dir.join("m.back.gguf");
        let _ = std::fs::remove_file(&output);
        let _ = std::fs::remove_file(&back);
        let res = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<u8>, DcError> {
            compress_file(&input, &output, &opts, &|_| {})?;
            decompress_file(&output, &back, false, &|_| {})?;
            Ok(std::fs::read(&back).unwrap())
        }));
        match res {
            Err(_) => panic!("mutation {i} ({what}) panicked in compress/decompress"),
            Ok(Err(DcError::ReservedKey(_) | DcError::AlreadyDc(_))) => {}
            Ok(Err(e)) => panic!("mutation {i} ({what}) parses but fails: {e}"),
            Ok(Ok(out)) => {
                assert!(out == bytes, "mutation {i} ({what}) did not round-trip");
                compressed += 1;
            }
        }
    }
    assert!(
        parsed >= 20 && compressed >= 20,
        "{parsed} parsed, {compressed} compressed"
    );
    assert!(tmp_leftovers(Path::new(dir.path())).is_empty());
}

/// Version 3 added the fold-split transform (id 5) and nothing else: version-2 files (only
/// older transforms) are still read, and a version-2 file naming transform 5 is damaged.
#[test]
fn version_2_files_are_read_and_may_not_name_fold_split() {
    use dcgguf::codec::Transform;
    // `bytes` rewritten as a version-2 file: dc.format_version, the index version, and the
    // header checksum in the index follow (the index checksum is recomputed by encode).
    let as_version_2 = |bytes: &[u8], path: &Path| -> Vec<u8> {
        let dc = DcFile::open(path).unwrap();
        let r = dc_index_range(&dc);
        let mut out = bytes.to_vec();
        let at = value_offset(&out, "dc.format_version");
        out[at..at + 4].copy_from_slice(&2u32.to_le_bytes());
        let data_offset = GgufHeader::parse(&out).unwrap().data_offset as usize;
        let mut idx = dc.index.clone();
        idx.version = 2;
        idx.dc_header_hash = Some(xxhash_rust::xxh3::xxh3_64(&out[..data_offset]));
        out[r.start as usize..r.end as usize].copy_from_slice(&idx.encode());
        out
    };
    let dir = TempDir::new("v2");
    let original = small_model(25).build();
    let input = dir.write("orig.gguf", &original);
    let older = |ty: GgmlType| match Transform::default_for(ty) {
        Transform::FoldSplit => Transform::QuantSplit,
        t => t,
    };
    for (name, transform) in [
        ("old", Some(older as fn(GgmlType) -> Transform)),
        ("new", None),
    ] {
        let path = dir.join(&format!("{name}.dc.gguf"));
        let opts = CompressOptions {
            transform,
            ..opts_chunk(256)
        };
        compress(&input, &path, &opts);
        let v3 = std::fs::read(&path).unwrap();
        let uses_fold = DcFile::open(&path)
            .unwrap()
            .index
            .tensors
            .iter()
            .any(|t| t.transform == Transform::FoldSplit.id());
        assert_eq!(uses_fold, transform.is_none(), "{name}");
        let v2 = dir.write(&format!("{name}-v2.dc.gguf"), &as_version_2(&v3, &path));
        match DcFile::open(&v2) {
            Ok(dc) if !uses_fold => {
                assert_eq!(dc.format_version(), 2);
                let out = dir.join("back.gguf");
                decompress_file(&v2, &out, false, &|_| {}).unwrap();
                assert_eq!(std::fs::read(&out).unwrap(), original);
            }
            Err(DcError::Corrupt { what, .. }) if uses_fold => {
                assert!(
                    what.contains("transform 5") && what.contains("version 2"),
                    "{what}"
                );
            }
            other => panic!("{name}: {:?}", other.map(|_| ())),
        }
    }
}
