//! Built without the `bench-throttle` feature: no simulated slow storage. `throttle.rs` (the
//! load bench's `DCGGUF_THROTTLE_BPS`) is not compiled; this stand-in keeps its interface,
//! and a `Throttle` cannot exist, so the load path never charges a read.

use std::ops::Range;
use std::time::Instant;

/// Environment variable of the bench-mode bandwidth limit (ignored in this build).
pub const THROTTLE_ENV: &str = "DCGGUF_THROTTLE_BPS";

/// Always `None`: says once that `DCGGUF_THROTTLE_BPS` is ignored, if it is set.
pub fn throttle_from_env() -> Option<f64> {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if std::env::var_os(THROTTLE_ENV).is_some() {
        WARNED.call_once(|| {
            crate::log_line!(
                "dcgguf: ignoring {THROTTLE_ENV}: built without the bench-throttle feature"
            )
        });
    }
    None
}

/// No simulated device in this build (an empty type: no value of it exists).
pub enum Throttle {}

impl Throttle {
    pub fn new(_bytes_per_s: Option<f64>, _cost: f64) -> Option<Throttle> {
        None
    }

    pub fn charge(&self, _range: Range<u64>, _issued: Instant) {
        match *self {}
    }
}
