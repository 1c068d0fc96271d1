//! Any bytes as a rANS plane body (plane codec 2), decoded into a buffer whose length the
//! first two bytes give (as the chunk's plane table would). Decoding returns an error or
//! exactly that many bytes, never panics or reads out of bounds; bytes it accepts encode
//! back into a body that decodes to them again.
#![no_main]

use dcgguf::codec::entropy::histogram;
use dcgguf::codec::rans;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let mut out = vec![0u8; usize::from(u16::from_le_bytes(*len)) * 4];
    if rans::decode(body, &mut out).is_err() {
        return;
    }
    let mut again = Vec::new();
    if rans::encode(&out, &histogram(&out), &mut again).is_some() {
        let mut back = vec![0u8; out.len()];
        rans::decode(&again, &mut back).expect("our own encoding decodes");
        assert_eq!(back, out);
    }
});
