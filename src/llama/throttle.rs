//! Bench mode: simulated slow storage (`DCGGUF_THROTTLE_BPS=<bytes/s>`). Built only with the
//! `bench-throttle` feature (`cargo bench --features bench-throttle --bench load`); without
//! it, `throttle_off.rs` stands in and nothing is throttled.
//!
//! One device serves read requests in turn at a fixed bandwidth. A request issued at time `t`
//! starts when the device is free and no earlier than `t` (idle time earns no credit), and the
//! reader returns no sooner than its request completes; work the reader does meanwhile (a
//! copy, a decode) overlaps the transfer. Bytes already read come from the page cache for
//! free: glibc's stream buffer re-reads some ranges after seeks, which a real disk behind the
//! page cache would not serve twice. A DC file is charged on stored (compressed) bytes at
//! its average ratio, a plain GGUF read through the same stream on its own bytes, so both
//! sides of a comparison pay for what they would read from a real disk.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Environment variable that turns on the bench-mode bandwidth limit.
pub const THROTTLE_ENV: &str = "DCGGUF_THROTTLE_BPS";

/// Reads `DCGGUF_THROTTLE_BPS`: `Some(0.0)` = set but unlimited.
pub fn throttle_from_env() -> Option<f64> {
    let v = std::env::var(THROTTLE_ENV).ok()?;
    match v.trim().parse::<f64>() {
        Ok(bps) if bps >= 0.0 && bps.is_finite() => Some(bps),
        _ => {
            crate::log_line!("dcgguf: ignoring {THROTTLE_ENV}={v:?} (expected bytes per second)");
            None
        }
    }
}

/// A simulated storage device, shared by every thread that reads the file.
pub struct Throttle {
    bytes_per_s: f64,
    /// Stored bytes per original byte (1 for plain files).
    cost: f64,
    /// When the device finishes the requests charged so far.
    free_at: Mutex<Option<Instant>>,
    /// Original-file ranges read so far (disjoint, by start).
    read: Mutex<BTreeMap<u64, u64>>,
}

impl Throttle {
    /// `None` unless `bytes_per_s` is a positive limit.
    pub fn new(bytes_per_s: Option<f64>, cost: f64) -> Option<Throttle> {
        bytes_per_s
            .filter(|&b| b > 0.0)
            .map(|bytes_per_s| Throttle {
                bytes_per_s,
                cost,
                free_at: Mutex::new(None),
                read: Mutex::new(BTreeMap::new()),
            })
    }

    /// Charges a read of original-file bytes `range` issued at `issued`, sleeping until the
    /// device has transferred the ones not read before.
    pub fn charge(&self, range: Range<u64>, issued: Instant) {
        let new = self.first_reads(range);
        if new == 0 {
            return;
        }
        let done = self.reserve(new as usize, issued);
        if let Some(wait) = done.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }

    /// How many bytes of `range` were not read before; marks them read.
    fn first_reads(&self, range: Range<u64>) -> u64 {
        if range.is_empty() {
            return 0;
        }
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let (mut start, mut end) = (range.start, range.end);
        let mut seen = 0;
        // Intervals that overlap or touch the range merge into it.
        let touching: Vec<(u64, u64)> = read
            .range(..=range.end)
            .rev()
            .take_while(|&(_, &e)| e >= range.start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            seen += e.min(range.end).saturating_sub(s.max(range.start));
            read.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        read.insert(start, end);
        range.end - range.start - seen
    }

    /// Books the device for a request and returns when the transfer completes.
    fn reserve(&self, original_bytes: usize, issued: Instant) -> Instant {
        let transfer =
            Duration::from_secs_f64(original_bytes as f64 * self.cost / self.bytes_per_s);
        let mut free_at = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
        let start = free_at.map_or(issued, |f| f.max(issued));
        let done = start + transfer;
        *free_at = Some(done);
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_queue_on_the_device_and_idle_time_earns_no_credit() {
        let ms = Duration::from_millis;
        // 1 KiB/s at 0.5 stored bytes per byte: 2048 bytes cost exactly 1 s.
        let t = Throttle::new(Some(1024.0), 0.5).expect("a limit");
        let t0 = Instant::now();
        assert_eq!(t.reserve(2048, t0), t0 + ms(1000));
        // Issued while the device is busy: queued behind the first request.
        assert_eq!(t.reserve(2048, t0 + ms(500)), t0 + ms(2000));
        // Issued after a long idle gap: the gap is not banked.
        assert_eq!(t.reserve(2048, t0 + ms(5000)), t0 + ms(6000));
        assert!(Throttle::new(Some(0.0), 1.0).is_none());
        assert!(Throttle::new(None, 1.0).is_none());
    }

    #[test]
    fn charge_waits_for_the_transfer_of_new_bytes_only() {
        let t = Throttle::new(Some(1024.0), 1.0).expect("a limit");
        let issued = Instant::now();
        t.charge(0..10, issued);
        assert!(issued.elapsed() >= Duration::from_secs_f64(10.0 / 1024.0));
        let again = Instant::now();
        t.charge(0..10, again);
        assert!(again.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn bytes_read_before_are_free() {
        let t = Throttle::new(Some(1.0), 1.0).expect("a limit");
        assert_eq!(t.first_reads(10..20), 10);
        assert_eq!(t.first_reads(15..25), 5);
        assert_eq!(t.first_reads(0..30), 15);
        assert_eq!(t.first_reads(5..28), 0);
        assert_eq!(t.first_reads(40..50), 10);
        assert_eq!(t.first_reads(30..40), 10);
        assert_eq!(t.first_reads(0..50), 0);
        assert_eq!(t.read.lock().unwrap().len(), 1);
        assert_eq!(t.first_reads(7..7), 0);
    }
}
