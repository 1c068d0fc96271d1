//! Decode throughput of a DC-GGUF file on this machine, 1 thread and N threads, with memcpy
//! over the same number of bytes as the yardstick.

use std::time::{Duration, Instant};

use super::{CostError, Result};
use crate::dc::DcFile;

/// Decoded bytes per second, measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DecodeBench {
    pub decoded_bytes: u64,
    pub threads: usize,
    pub decode_gbps_1_thread: f64,
    pub decode_gbps_n_threads: f64,
    pub memcpy_gbps_1_thread: f64,
}

const BLOCK: usize = 32 << 20;

/// Decodes the whole original file from `dc` (in 32 MiB blocks, as `decompress` does) with 1
/// and with `threads` threads, best of a few passes each, and copies the same volume with
/// memcpy.
pub fn measure_decode(dc: &DcFile, threads: usize, min_time: Duration) -> Result<DecodeBench> {
    let total = dc.original_size();
    let mut buf = vec![0u8; BLOCK];
    let pass = |buf: &mut [u8]| -> Result<()> {
        let mut off = 0;
        while off < total {
            off += dc.read_at(off, buf)? as u64;
        }
        Ok(())
    };
    let gbps = |threads: usize, buf: &mut Vec<u8>| -> Result<f64> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|source| CostError::Threads { threads, source })?;
        pool.install(|| best_rate(total, min_time, || pass(buf)))
    };
    let one = gbps(1, &mut buf)?;
    let many = gbps(threads, &mut buf)?;
    let src = vec![1u8; BLOCK];
    let memcpy = best_rate(total, min_time, || {
        let mut left = total;
        while left > 0 {
            let take = left.min(BLOCK as u64) as usize;
            buf[..take].copy_from_slice(&src[..take]);
            std::hint::black_box(&mut buf);
            left -= take as u64;
        }
        Ok(())
    })?;
    Ok(DecodeBench {
        decoded_bytes: total,
        threads,
        decode_gbps_1_thread: one,
        decode_gbps_n_threads: many,
        memcpy_gbps_1_thread: memcpy,
    })
}

/// Best GB/s over at least three passes and `min_time`.
fn best_rate(bytes: u64, min_time: Duration, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let started = Instant::now();
    let mut best = f64::MAX;
    let mut runs = 0;
    while runs < 3 || started.elapsed() < min_time {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    Ok(bytes as f64 / best.max(1e-9) / 1e9)
}
