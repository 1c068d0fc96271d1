//! The budget spec: how much memory the weights may take, where streamed tensors' compressed
//! bytes live, and whether a thread prefetches the next layer.
//!
//! One syntax, `<budget>[,ram|,file][,prefetch|,noprefetch]` ([`parse`]), read from two
//! places: the C API (`dcgguf_set_memory_budget("60%,file")`, which wins) and the environment
//! (`DCGGUF_MEM_BUDGET=60%,file`). The environment's older separate variables
//! `DCGGUF_MEM_SOURCE=ram|file` and `DCGGUF_PREFETCH=0|1` still work; they apply where
//! `DCGGUF_MEM_BUDGET` names no home or prefetch choice of its own.

use std::ffi::OsString;
use std::str::FromStr;
use std::sync::Mutex;

pub const BUDGET_ENV: &str = "DCGGUF_MEM_BUDGET";
/// `ram` (default): compressed bytes stay mapped in the process; `file`: re-read from the
/// page cache on each use and dropped from the process after.
pub const HOME_ENV: &str = "DCGGUF_MEM_SOURCE";
/// `0` turns the prefetch thread off, `1` on; unset, it runs only when the graph computes on
/// fewer threads than there are CPUs (see [`super::Residency::set_compute_threads`]).
pub const PREFETCH_ENV: &str = "DCGGUF_PREFETCH";

/// A memory budget for weights: a fraction of their decoded size or a byte count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    Fraction(f64),
    Bytes(u64),
}

impl Budget {
    pub fn bytes(self, decoded_weight_bytes: u64) -> u64 {
        match self {
            Budget::Fraction(f) => (decoded_weight_bytes as f64 * f).round() as u64,
            Budget::Bytes(b) => b,
        }
    }
}

/// A budget spec that cannot be used; `source` names the environment variable when it came
/// from one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{}memory budget {spec:?}: expected a percentage (60%) or bytes (512M)", var_prefix(*.var))]
    Budget {
        spec: String,
        var: Option<&'static str>,
    },
    #[error("{}{spec:?}: expected ram or file", var_prefix(*.var))]
    Home {
        spec: String,
        var: Option<&'static str>,
    },
}

fn var_prefix(var: Option<&str>) -> String {
    var.map(|v| format!("{v}: ")).unwrap_or_default()
}

impl SpecError {
    /// The same error, said to come from environment variable `from`.
    fn in_var(self, from: &'static str) -> SpecError {
        match self {
            SpecError::Budget { spec, .. } => SpecError::Budget {
                spec,
                var: Some(from),
            },
            SpecError::Home { spec, .. } => SpecError::Home {
                spec,
                var: Some(from),
            },
        }
    }
}

impl FromStr for Budget {
    type Err = SpecError;

    /// `60%`, `512M`, `2G`, `123456` (bytes; K/M/G/T are powers of 1024).
    fn from_str(s: &str) -> Result<Budget, SpecError> {
        let t = s.trim();
        let bad = || SpecError::Budget {
            spec: s.to_string(),
            var: None,
        };
        if let Some(p) = t.strip_suffix('%') {
            let f: f64 = p.trim().parse().map_err(|_| bad())?;
            return if f > 0.0 && f.is_finite() {
                Ok(Budget::Fraction(f / 100.0))
            } else {
                Err(bad())
            };
        }
        let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            Some((i, _)) => t.split_at(i),
            None => (t, ""),
        };
        let shift = match unit
            .trim()
            .to_ascii_uppercase()
            .trim_end_matches(['B', 'I'])
        {
            "" => 0,
            "K" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(1 << shift)
            .filter(|&b| b > 0)
            .map(Budget::Bytes)
            .ok_or_else(bad)
    }
}

/// Where streamed tensors' compressed bytes live between uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressedHome {
    /// Mapped from the DC file and kept in this process (counted in its RSS and the budget).
    Ram,
    /// Re-read from the file (page cache) on each use and dropped from the process after.
    File,
}

impl FromStr for CompressedHome {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<CompressedHome, SpecError> {
        match s.trim() {
            "ram" => Ok(CompressedHome::Ram),
            "file" => Ok(CompressedHome::File),
            _ => Err(SpecError::Home {
                spec: s.to_string(),
                var: None,
            }),
        }
    }
}

/// What a budgeted load asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    pub budget: Budget,
    pub home: CompressedHome,
    /// Decode the next layer on a thread of its own while the current one computes: `None`
    /// decides per context.
    pub prefetch: Option<bool>,
}

/// A parsed spec: the budget, and the home and prefetch choice if it names them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spec {
    pub budget: Budget,
    pub home: Option<CompressedHome>,
    pub prefetch: Option<bool>,
}

impl Spec {
    /// The settings, with `home` and `prefetch` where the spec names none.
    pub fn or(self, home: CompressedHome, prefetch: Option<bool>) -> Settings {
        Settings {
            budget: self.budget,
            home: self.home.unwrap_or(home),
            prefetch: self.prefetch.or(prefetch),
        }
    }
}

/// Parses `"60%"` or `"512M"`, optionally followed by `,file` / `,ram` and `,prefetch` /
/// `,noprefetch` (in any order; the last of each kind wins). `"0"` or `""` is no budget.
pub fn parse(spec: &str) -> Result<Option<Spec>, SpecError> {
    let mut parts = spec.split(',').map(str::trim);
    let budget = parts.next().unwrap_or("");
    if budget.is_empty() || budget == "0" {
        return Ok(None);
    }
    let mut s = Spec {
        budget: budget.parse()?,
        home: None,
        prefetch: None,
    };
    for p in parts {
        match p {
            "noprefetch" => s.prefetch = Some(false),
            "prefetch" => s.prefetch = Some(true),
            other => s.home = Some(other.parse()?),
        }
    }
    Ok(Some(s))
}

/// The C API's spec: what is not named is `ram` and prefetch decided per context.
pub fn parse_api(spec: &str) -> Result<Option<Settings>, SpecError> {
    Ok(parse(spec)?.map(|s| s.or(CompressedHome::Ram, None)))
}

/// The environment's settings, with `var` looking variables up.
fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<Option<Settings>, SpecError> {
    let Some(b) = var(BUDGET_ENV) else {
        return Ok(None);
    };
    let b = b.to_string_lossy();
    let Some(spec) = parse(&b).map_err(|e| e.in_var(BUDGET_ENV))? else {
        return Ok(None);
    };
    // From the environment, 100% has always meant no budget at all (a budgeted load also
    // turns GPU offload off).
    if b.split(',').next().is_some_and(|p| p.trim() == "100%") {
        return Ok(None);
    }
    let home = match var(HOME_ENV) {
        Some(h) => h
            .to_string_lossy()
            .parse()
            .map_err(|e: SpecError| e.in_var(HOME_ENV))?,
        None => CompressedHome::Ram,
    };
    let prefetch = var(PREFETCH_ENV)
        .map(|v| v.to_string_lossy().trim().to_string())
        .filter(|v| !v.is_empty())
        .map(|v| v != "0");
    Ok(Some(spec.or(home, prefetch)))
}

/// Set through the C API; takes precedence over the environment.
static API_SETTINGS: Mutex<Option<Option<Settings>>> = Mutex::new(None);

/// Sets (or with `None` clears) the budget for later loads, overriding the environment.
pub fn set_settings(s: Option<Settings>) {
    *API_SETTINGS.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
}

/// Whether a budget (or explicitly none: `DCGGUF_MEM_BUDGET=0`, the C API's NULL) was asked
/// for; if not, the load chooses from the memory limit ([`super::limit`]).
pub fn asked() -> bool {
    API_SETTINGS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some()
        || named_in(|k| std::env::var_os(k))
}

/// Whether the environment (looked up by `var`) asks for a budget or for none. A set but blank
/// `DCGGUF_MEM_BUDGET` (`export DCGGUF_MEM_BUDGET=` in a script) counts as unset, so the load
/// still adapts to the memory limit: turning that off silently could get a process killed
/// under a cap where the default would have run. `0` asks for no budget.
fn named_in(var: impl Fn(&str) -> Option<OsString>) -> bool {
    var(BUDGET_ENV).is_some_and(|v| !v.to_string_lossy().trim().is_empty())
}

/// The budget for the next load: the C API's, else the environment's, else none.
pub fn settings() -> Result<Option<Settings>, SpecError> {
    if let Some(s) = *API_SETTINGS.lock().unwrap_or_else(|e| e.into_inner()) {
        return Ok(s);
    }
    from_vars(|k| std::env::var_os(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_parses() {
        assert_eq!("60%".parse(), Ok(Budget::Fraction(0.6)));
        assert_eq!("512M".parse(), Ok(Budget::Bytes(512 << 20)));
        assert_eq!("2GiB".parse(), Ok(Budget::Bytes(2 << 30)));
        assert_eq!("1000".parse(), Ok(Budget::Bytes(1000)));
        for bad in ["", "0", "-5%", "x", "5Q", "0%", "99999999999999999999G"] {
            assert!(bad.parse::<Budget>().is_err(), "{bad}");
        }
        assert_eq!(Budget::Fraction(0.5).bytes(1000), 500);
    }

    fn env(vars: &[(&str, &str)]) -> Result<Option<Settings>, SpecError> {
        from_vars(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.into()))
    }

    #[test]
    fn budget_specs_parse() {
        let s = parse_api("60%,file,noprefetch").unwrap().unwrap();
        assert_eq!(s.budget, Budget::Fraction(0.6));
        assert_eq!(s.home, CompressedHome::File);
        assert_eq!(s.prefetch, Some(false));
        let s = parse_api("512M").unwrap().unwrap();
        assert_eq!(
            (s.budget, s.home, s.prefetch),
            (Budget::Bytes(512 << 20), CompressedHome::Ram, None)
        );
        let s = parse_api("1G,prefetch").unwrap().unwrap();
        assert_eq!(s.prefetch, Some(true));
        let s = parse_api(" 1G , prefetch , ram ").unwrap().unwrap();
        assert_eq!(
            (s.budget, s.home, s.prefetch),
            (Budget::Bytes(1 << 30), CompressedHome::Ram, Some(true))
        );
        // 100% is a budget through the C API (as it always was).
        assert_eq!(
            parse_api("100%").unwrap().map(|s| s.budget),
            Some(Budget::Fraction(1.0))
        );
        assert!(parse_api("0").unwrap().is_none());
        assert!(parse_api("").unwrap().is_none());
        // An empty budget field is no budget, whatever follows.
        assert!(parse_api(",file").unwrap().is_none());
        for bad in ["60%,disk", "lots", "60%,", "60%,file,fast", "-1G"] {
            assert!(parse_api(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_environment_takes_the_same_syntax() {
        let s = env(&[(BUDGET_ENV, "60%,file,noprefetch")])
            .unwrap()
            .unwrap();
        assert_eq!(
            s,
            Settings {
                budget: Budget::Fraction(0.6),
                home: CompressedHome::File,
                prefetch: Some(false)
            }
        );
        assert_eq!(
            env(&[(BUDGET_ENV, "512M,file")]).unwrap(),
            parse_api("512M,file").unwrap()
        );
        let e = env(&[(BUDGET_ENV, "60%,disk")]).unwrap_err();
        assert_eq!(
            e,
            SpecError::Home {
                spec: "disk".into(),
                var: Some(BUDGET_ENV)
            }
        );
        assert!(e.to_string().starts_with(BUDGET_ENV), "{e}");
        let e = env(&[(BUDGET_ENV, "lots")]).unwrap_err();
        assert!(matches!(&e, SpecError::Budget { spec, var: Some(BUDGET_ENV) } if spec == "lots"));
        assert!(e.to_string().starts_with(BUDGET_ENV), "{e}");
    }

    #[test]
    fn separate_env_vars_still_work_and_the_spec_wins() {
        let s = env(&[(BUDGET_ENV, "50%"), (HOME_ENV, "file"), (PREFETCH_ENV, "0")])
            .unwrap()
            .unwrap();
        assert_eq!((s.home, s.prefetch), (CompressedHome::File, Some(false)));
        let s = env(&[(BUDGET_ENV, "50%"), (PREFETCH_ENV, "1")])
            .unwrap()
            .unwrap();
        assert_eq!((s.home, s.prefetch), (CompressedHome::Ram, Some(true)));
        let s = env(&[(BUDGET_ENV, "50%"), (PREFETCH_ENV, " ")])
            .unwrap()
            .unwrap();
        assert_eq!(s.prefetch, None);
        let s = env(&[
            (BUDGET_ENV, "50%,ram,prefetch"),
            (HOME_ENV, "file"),
            (PREFETCH_ENV, "0"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((s.home, s.prefetch), (CompressedHome::Ram, Some(true)));
        let e = env(&[(BUDGET_ENV, "50%"), (HOME_ENV, "disk")]).unwrap_err();
        assert!(e.to_string().starts_with(HOME_ENV), "{e}");
    }

    #[test]
    fn a_blank_budget_variable_leaves_the_choice_to_the_load() {
        let named = |v: Option<&str>| {
            named_in(|k| (k == BUDGET_ENV).then(|| v.map(OsString::from)).flatten())
        };
        for blank in [None, Some(""), Some("  ")] {
            assert!(!named(blank), "{blank:?}");
        }
        for set in ["0", "50%", "100%", ",file"] {
            assert!(named(Some(set)), "{set}");
        }
    }

    #[test]
    fn no_budget_from_the_environment() {
        assert_eq!(env(&[]), Ok(None));
        for off in ["", " ", "0", "100%", " 100% ", "100%,file"] {
            assert_eq!(env(&[(BUDGET_ENV, off)]), Ok(None), "{off:?}");
        }
        // Off, whatever the other variables say.
        assert_eq!(env(&[(BUDGET_ENV, "0"), (HOME_ENV, "disk")]), Ok(None));
    }
}
