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

/// The median (of an even count, the mean of the middle two); None for no values.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (n > 0).then(|| (v[(n - 1) / 2] + v[n / 2]) / 2.0)
}

/// A variable's value parsed, `default` where it is unset or blank. A value that does not
/// parse stops the bench with its name: a typo must not run an hour of the wrong setting.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not understood")),
        _ => default,
    }
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

/// Where a point's values lie against a threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Side {
    Above,
    Below,
    /// The median's confidence interval ([`median_interval`]) holds the threshold; below
    /// five values, the smallest and the largest stand in for the interval.
    Open,
}

/// Where the median of `v` lies against `threshold`, as its interval settles it.
pub fn side(v: &[f64], threshold: f64) -> Side {
    let (lo, hi) = median_interval(v).unwrap_or_else(|| {
        v.iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            })
    });
    if lo >= threshold {
        Side::Above
    } else if hi < threshold {
        Side::Below
    } else {
        Side::Open
    }
}

/// Each run's speed over its setup's uncapped speed, the values a knee reads: over the
/// uncapped run of the same round where every round has one with a speed (`partners`: a slow
/// or fast spell of the shared machine then falls on both sides of the ratio, where an
/// uncapped median taken minutes earlier has moved 5-8% between runs of the bench), else over
/// `base`, the setup's uncapped median. None where a run has no speed (it failed: the point
/// lost the speed) or there is no base.
pub fn of_uncapped(
    runs: &[Option<f64>],
    partners: &[Option<f64>],
    base: Option<f64>,
) -> Option<Vec<f64>> {
    let paired = !runs.is_empty()
        && partners.len() == runs.len()
        && partners.iter().all(|p| p.is_some_and(|p| p > 0.0));
    if paired {
        runs.iter()
            .zip(partners)
            .map(|(r, p)| Some(r.as_ref()? / p.as_ref()?))
            .collect()
    } else {
        let base = base?;
        runs.iter().map(|r| r.map(|v| v / base)).collect()
    }
}

/// A target's verdict.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Neither shown nor ruled out by the runs made.
    Unresolved,
}

/// A setup's knee (the lowest cap down to which every cap from the top of the ladder keeps at
/// least 90% of its own uncapped speed), as far as the runs pin it down: it lies between
/// `lowest` and `highest`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Knee {
    /// The cap just above the first one settled below 90%: the knee cannot lie lower. None:
    /// the top cap is settled below, the knee lies above the ladder.
    pub lowest: Option<u64>,
    /// The lowest cap down to which every cap is settled above 90%: the knee lies no higher.
    /// None: the top cap is not settled above.
    pub highest: Option<u64>,
    /// Every cap of the ladder is settled above: the knee may lie below its bottom.
    pub below_ladder: bool,
}

/// The knee of a ladder of caps, highest first: each cap in bytes with its runs' speeds over
/// the setup's uncapped median (None where the point failed: it lost the speed). A cap keeps
/// the speed where its median's interval lies above 90% ([`side`]), loses it where it lies
/// below (or failed), and leaves it open otherwise.
pub fn knee(ladder: &[(u64, Option<Vec<f64>>)]) -> Knee {
    let mut k = Knee {
        lowest: None,
        highest: None,
        below_ladder: false,
    };
    let mut settled_above = true;
    for (cap, of_base) in ladder {
        let at = of_base.as_deref().map_or(Side::Below, |v| side(v, 0.9));
        if at == Side::Below {
            return k;
        }
        settled_above &= at == Side::Above;
        k.lowest = Some(*cap);
        if settled_above {
            k.highest = Some(*cap);
        }
    }
    k.below_ladder = settled_above && !ladder.is_empty();
    k
}

/// "DC's knee lies below plain mmap's by at least `need` bytes", wherever in their ranges
/// both knees lie: PASS where even the smallest gap they allow reaches `need`, FAIL where even
/// the largest does not, else UNRESOLVED; and the smallest and largest gaps, in bytes
/// (infinite where a knee may lie above the ladder, whose top is `top_cap`: a ladder that
/// starts at plain mmap's peak cannot settle knees above it, a step above 100% can; DC's
/// knee below the ladder's bottom leaves the largest gap open too, a lower step settles it).
pub fn knee_gap(dc: Knee, plain: Knee, top_cap: u64, need: f64) -> (Verdict, (f64, f64)) {
    // A knee above the ladder lies above its top cap, one below it below its bottom cap, by
    // how much the runs do not say.
    let range = |k: Knee| {
        (
            if k.below_ladder {
                0.0
            } else {
                k.lowest.unwrap_or(top_cap) as f64
            },
            k.highest.map_or(f64::INFINITY, |b| b as f64),
        )
    };
    let ((dc_low, dc_high), (plain_low, plain_high)) = (range(dc), range(plain));
    let (smallest, largest) = (plain_low - dc_high, plain_high - dc_low);
    let verdict = if smallest >= need {
        Verdict::Pass
    } else if largest < need {
        Verdict::Fail
    } else {
        Verdict::Unresolved
    };
    (verdict, (smallest, largest))
}

/// The bound on the lowest cap DC should still run at: 1.1 x the compressed weight
/// bytes plus the model's non-weight memory (KV cache, compute buffers, the program), and
/// that non-weight memory, measured as the uncapped peak of DC without a budget (which holds
/// the decoded weights and all the rest) less those weights. None without that run: no
/// other setup's peak gives the non-weight memory (plain mmap's can hold llama.cpp's
/// repacked copy of the weights beside the mapped file, the default's keeps some weights
/// compressed).
pub fn lowest_cap_bound(
    no_budget_peak: Option<u64>,
    decoded_weights: u64,
    compressed_weights: u64,
) -> Option<(f64, u64)> {
    let non_weight = no_budget_peak?.saturating_sub(decoded_weights);
    Some(((compressed_weights + non_weight) as f64 * 1.1, non_weight))
}
