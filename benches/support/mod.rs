//! What the load bench (benches/load.rs), the results table (benches/table.rs) and the memcap
//! bench (benches/memcap.rs) share: the machine line every result is printed under, medians
//! and their confidence intervals, and the simulated storage speeds. Each includes it with
//! `#[path = "support/mod.rs"] mod support;` (as tests/llama_support is included), and so
//! does tests/bench_support.rs, which tests the intervals; it is not a bench of its own
//! (cargo only finds benches/*.rs and benches/*/main.rs).
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

/// A distribution-free confidence interval for the median of `v`: the order statistics
/// x(k) and x(n+1-k) of the sorted values, k the largest with P(B < k) <= 5% for
/// B ~ Binomial(n, 1/2), so that it covers the true median with probability >= 90% whatever
/// the distribution (the sign test's interval). None below five values, where even the
/// widest interval, the smallest to the largest, covers less (four values: 87.5%).
pub fn median_interval(v: &[f64]) -> Option<(f64, f64)> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let total = 2f64.powi(i32::try_from(n).ok()?);
    // `below`: P(B <= j); `ways`: C(n, j).
    let (mut below, mut ways, mut k) = (0.0, 1.0, 0);
    for j in 0..n {
        below += ways / total;
        if below > 0.05 {
            break;
        }
        k = j + 1;
        ways = ways * (n - j) as f64 / (j + 1) as f64;
    }
    (k >= 1).then(|| (v[k - 1], v[n - k]))
}
