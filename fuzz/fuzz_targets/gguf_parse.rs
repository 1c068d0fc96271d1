//! Any bytes: the GGUF parser returns a header or an error, never panics or over-allocates,
//! and a header it accepts serializes back to the bytes it came from. Parsing without arrays
//! accepts and rejects the same inputs and keeps everything but the arrays.
#![no_main]

use dcgguf::gguf::GgufHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let full = GgufHeader::parse(data);
    let lean = GgufHeader::parse_without_arrays(data);
    assert_eq!(full.is_ok(), lean.is_ok(), "the two parses disagree");
    if let (Ok(full), Ok(lean)) = (&full, &lean) {
        let scalars: Vec<_> = full
            .kvs
            .iter()
            .filter(|kv| !matches!(kv.value, dcgguf::gguf::Value::Array(_)))
            .collect();
        assert!(scalars.into_iter().eq(lean.kvs.iter()), "scalar metadata differs");
        assert_eq!(full.tensors, lean.tensors);
    }
    if let Ok(mut h) = full {
        let _ = h.check_data_fits(data.len() as u64);
        // Up to the end of the tensor infos, without the padding to the data section: that
        // padding is `general.alignment` bytes at most, 2 GiB for a header declaring 2^31
        // (a 259-byte input did, 2026-12-08), and every caller of `to_bytes` checks first that
        // the data section lies within its file.
        h.alignment = 1;
        let bytes = h.to_bytes();
        let end = (h.infos_end as usize).min(data.len());
        assert_eq!(&bytes[..end], &data[..end], "re-serialized header differs");
    }
});
