//! Any bytes as a DC-GGUF file: open, list and decode (bounded) without panics; every
//! decoded chunk either matches its checksum or is reported as corrupt.
#![no_main]

use dcgguf::dc::DcFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dc) = DcFile::from_bytes("fuzz.dc.gguf", data.to_vec()) else {
        return;
    };
    for i in 0..dc.tensor_count() {
        let _ = dc.tensor_view(i);
    }
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = 0u64;
    while pos < dc.original_size().min(4 << 20) {
        match dc.read_at(pos, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => pos += n as u64,
        }
    }
});
