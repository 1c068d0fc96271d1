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
    /// One-thread decode speed over memcpy's, measured in adjacent pairs.
    pub decode_over_memcpy_1_thread: PairedRatio,
}

/// A speed ratio measured in adjacent pairs of passes: the shared VMs this runs on move
/// memcpy's speed by up to 60% within minutes (13.6-22.0 GB/s in one session), so two
/// best-ofs taken seconds apart say as much about the host as about the decoder. Each pair
/// times both sides back to back (best of three passes each, one for files over 256 MiB so
/// that a multi-GB file takes minutes, not hours; the order alternating).
#[derive(Clone, Debug, serde::Serialize)]
pub struct PairedRatio {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub pairs: usize,
}

const PAIRS: usize = 9;

const BLOCK: usize = 32 << 20;

/// Decodes the whole original file from `dc` (in 32 MiB blocks, as `decompress` does) with 1
/// and with `threads` threads, best of a few passes each, and copies the same volume with
/// memcpy; then times one-thread decode and memcpy in adjacent pairs for their ratio.
pub fn measure_decode(dc: &DcFile, threads: usize, min_time: Duration) -> Result<DecodeBench> {
    let total = dc.original_size();
    let mut buf = vec![0u8; BLOCK];
    let src = vec![1u8; BLOCK];
    let decode_pass = |buf: &mut [u8]| -> Result<()> {
        let mut off = 0;
        while off < total {
            off += dc.read_at(off, buf)? as u64;
        }
        Ok(())
    };
    let memcpy_pass = |buf: &mut Vec<u8>| {
        let mut left = total;
        while left > 0 {
            let take = left.min(BLOCK as u64) as usize;
            buf[..take].copy_from_slice(&src[..take]);
            std::hint::black_box(&mut *buf);
            left -= take as u64;
        }
    };
    let pool = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|source| CostError::Threads { threads, source })
    };
    let one_thread = pool(1)?;
    let one = one_thread.install(|| best_rate(total, min_time, || decode_pass(&mut buf)))?;
    let many = pool(threads)?.install(|| best_rate(total, min_time, || decode_pass(&mut buf)))?;
    let memcpy = best_rate(total, min_time, || {
        memcpy_pass(&mut buf);
        Ok(())
    })?;
    let passes = if total <= 256 << 20 { 3 } else { 1 };
    let mut ratios = Vec::with_capacity(PAIRS);
    for pair in 0..PAIRS {
        let mut times = [0.0; 2];
        // Even pairs decode first, odd pairs copy first: a drift in the host's speed during
        // a pair then favours neither side.
        for side in [pair % 2, 1 - pair % 2] {
            times[side] = if side == 0 {
                one_thread.install(|| best_seconds(passes, || decode_pass(&mut buf)))?
            } else {
                best_seconds(passes, || {
                    memcpy_pass(&mut buf);
                    Ok(())
                })?
            };
        }
        ratios.push(times[1] / times[0].max(1e-9));
    }
    ratios.sort_by(f64::total_cmp);
    Ok(DecodeBench {
        decoded_bytes: total,
        threads,
        decode_gbps_1_thread: one,
        decode_gbps_n_threads: many,
        memcpy_gbps_1_thread: memcpy,
        decode_over_memcpy_1_thread: PairedRatio {
            median: ratios[PAIRS / 2],
            min: ratios[0],
            max: ratios[PAIRS - 1],
            pairs: PAIRS,
        },
    })
}

/// The fastest of `runs` passes, in seconds.
fn best_seconds(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
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
