//! Decode speed of one plane, rANS (plane codec 2) against zstd's literals mode (what the
//! encoder's fallback produces for a plane without matches): 256 KiB of bytes whose eight
//! bits are independent with P(1) = p (a fold-split M plane; Qwen2.5 Q4_K: p = 0.695).
//! `cargo run --release --example rans_vs_zstd [p]`; docs/FORMAT.md §6 quotes it.
use dcgguf::codec::entropy::histogram;
use dcgguf::codec::rans;
use std::time::Instant;
fn main() {
    let n = 256 << 10;
    let mut st = 1u64;
    let p: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(0.695);
    let src: Vec<u8> = (0..n)
        .map(|_| {
            let mut b = 0u8;
            for k in 0..8 {
                st = st
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if ((st >> 11) as f64 / (1u64 << 53) as f64) < p {
                    b |= 1 << k;
                }
            }
            b
        })
        .collect();
    let counts = histogram(&src);
    let mut body = Vec::new();
    let t = Instant::now();
    rans::encode(&src, &counts, &mut body).unwrap();
    eprintln!(
        "rans encode {:.0} MB/s, size {} ({:.4})",
        n as f64 / t.elapsed().as_secs_f64() / 1e6,
        body.len(),
        body.len() as f64 / n as f64
    );
    let mut c = zstd::bulk::Compressor::new(1).unwrap();
    c.set_parameter(zstd::zstd_safe::CParameter::HashLog(6))
        .unwrap();
    c.set_parameter(zstd::zstd_safe::CParameter::MinMatch(7))
        .unwrap();
    let z = c.compress(&src).unwrap();
    eprintln!("zstd size {} ({:.4})", z.len(), z.len() as f64 / n as f64);
    let mut out = vec![0u8; n];
    let mut d = zstd::bulk::Decompressor::new().unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..200 {
            d.decompress_to_buffer(&z, &mut out).unwrap();
        }
        let zs = 200.0 * n as f64 / t.elapsed().as_secs_f64() / 1e9;
        let t = Instant::now();
        for _ in 0..200 {
            rans::decode(&body, &mut out).unwrap();
        }
        let rs = 200.0 * n as f64 / t.elapsed().as_secs_f64() / 1e9;
        assert_eq!(out, src);
        eprintln!("decode GB/s: zstd {zs:.2}  rans {rs:.2}");
    }
}
