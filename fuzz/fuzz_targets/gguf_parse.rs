//! Any bytes: the GGUF parser returns a header or an error, never panics or over-allocates,
//! and a header it accepts serializes back to the bytes it came from.
#![no_main]

use dcgguf::gguf::GgufHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = GgufHeader::parse(data) {
        let _ = h.check_data_fits(data.len() as u64);
        let bytes = h.to_bytes();
        let end = (h.infos_end as usize).min(data.len());
        assert_eq!(&bytes[..end], &data[..end], "re-serialized header differs");
    }
});
