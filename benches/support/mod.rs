//! What the load bench (benches/load.rs) and the results table (benches/table.rs) share: the
//! machine line every result is printed under, medians, and the simulated storage speeds.
//! Both include it with `#[path = "support/mod.rs"] mod support;` (as tests/llama_support is
//! included); it is not a bench of its own (cargo only finds benches/*.rs and
//! benches/*/main.rs).
#![allow(dead_code)]

/// Environment variable of the simulated slow storage, read by libdcgguf_preload.so when it is
/// built with the `bench-throttle` feature (src/llama/throttle.rs).
pub const THROTTLE_ENV: &str = dcgguf::llama::throttle::THROTTLE_ENV;

/// The simulated storage speeds of the load benches, in bytes per second.
pub const SIMULATED_STORAGE: [(u64, &str); 2] =
    [(1_000_000_000, "1 GB/s"), (200_000_000, "200 MB/s")];

/// Whether this build can simulate slow storage: only with `--features bench-throttle`, which
/// also builds libdcgguf_preload.so with it (tests/llama_support's `libdcgguf_preload`).
pub const fn can_throttle() -> bool {
    cfg!(feature = "bench-throttle")
}

/// The CPU's model name from /proc/cpuinfo ("unknown CPU" where it has none).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The CPUs this process may use (`nproc`).
pub fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The line every bench result is printed under: speeds differ from one machine (and one
/// run) to the next, so a number without its CPU means little. The load average says how busy
/// the machine was when the run started.
pub fn machine_line() -> String {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    format!(
        "CPU: {}; nproc {}; load average {load} at the start",
        cpu_model(),
        nproc()
    )
}

/// The median (the upper one of an even count); NaN for no values.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A variable's value parsed, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether a variable is set to 1.
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}
