//! XXH3-64 (seed 0), the checksum of every DC region (docs/FORMAT.md), with the widest
//! vectors the CPU has: chunk checks hash every decoded byte, so this is on the decode path.
//! twox-hash picks AVX2 at run time; portable builds would otherwise hash with SSE2 (about
//! half the speed, measured).

use std::hash::Hasher;

/// XXH3-64 of `bytes`.
pub fn xxh3_64(bytes: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(bytes)
}

/// XXH3-64 of bytes fed in pieces.
#[derive(Default)]
pub struct Xxh3(twox_hash::XxHash3_64);

impl Xxh3 {
    pub fn new() -> Xxh3 {
        Xxh3::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    pub fn digest(&self) -> u64 {
        self.0.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_xxh3_in_one_piece_and_in_pieces() {
        let bytes: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for len in [0, 1, 3, 16, 17, 128, 129, 240, 241, 1024, 100_000, 300_000] {
            let want = xxhash_rust::xxh3::xxh3_64(&bytes[..len]);
            assert_eq!(xxh3_64(&bytes[..len]), want, "{len}");
            let mut h = Xxh3::new();
            for piece in bytes[..len].chunks(7777) {
                h.update(piece);
            }
            assert_eq!(h.digest(), want, "{len} in pieces");
        }
    }
}
