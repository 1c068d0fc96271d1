//! Measures this machine: storage read bandwidth (read() and mmap, cold and warm), memcpy, and
//! decode throughput per tensor type; saves the result as a JSON profile that the converter
//! and `inspect` read. A profile from another machine or an older dcgguf is re-measured.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{CostError, Result};
use crate::codec::{ChunkMode, EncodeOptions, Layout, Transform, decode_chunk, encode_chunk};
use crate::gguf::GgmlType;
use crate::io::{AtomicOutput, TempPath};

/// Bumped when the profile's fields or their meaning change.
pub const PROFILE_VERSION: u32 = 1;

/// What identifies the machine a profile was measured on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub cpu_model: String,
    pub cpus: usize,
    pub dcgguf_version: String,
}

impl Fingerprint {
    pub fn this_machine() -> Fingerprint {
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Fingerprint {
            cpu_model,
            cpus: crate::io::cpus(),
            dcgguf_version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// Decode throughput of one tensor type's default encoding, in decoded bytes per second.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DecodeSpeed {
    pub ggml_type: String,
    pub transform: String,
    /// Stored / raw bytes on the synthetic sample (for information).
    pub sample_ratio: f64,
    pub bps_1_thread: f64,
    pub bps_all_threads: f64,
}

/// A measured machine profile.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Profile {
    pub version: u32,
    pub fingerprint: Fingerprint,
    pub measured_unix: u64,
    /// Where the storage measurements were taken.
    pub storage_dir: PathBuf,
    /// read() of a file not in the page cache (None where the OS would not drop it).
    pub read_cold_bps: Option<f64>,
    pub read_warm_bps: f64,
    pub mmap_warm_bps: f64,
    pub memcpy_bps: f64,
    pub threads: usize,
    pub decode: Vec<DecodeSpeed>,
}

impl Profile {
    /// Decode speed (all threads) for a type, falling back to a measured type that uses the
    /// same transform, then to the slowest measured.
    pub fn decode_bps(&self, ty: GgmlType, threads_all: bool) -> f64 {
        let pick = |d: &DecodeSpeed| {
            if threads_all {
                d.bps_all_threads
            } else {
                d.bps_1_thread
            }
        };
        let transform = Transform::default_for(ty).name();
        self.decode
            .iter()
            .find(|d| d.ggml_type == ty.name())
            .or_else(|| self.decode.iter().find(|d| d.transform == transform))
            .map(pick)
            .unwrap_or_else(|| self.decode.iter().map(pick).fold(f64::INFINITY, f64::min))
    }

    /// The storage bandwidth to plan for: cold reads where measured, else warm reads.
    pub fn storage_bps(&self) -> f64 {
        self.read_cold_bps.unwrap_or(self.read_warm_bps)
    }
}

/// Default location: `$DCGGUF_CACHE/profile.json` or `~/.cache/dcgguf/profile.json`.
pub fn default_profile_path() -> PathBuf {
    std::env::var_os("DCGGUF_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/dcgguf")
        })
        .join("profile.json")
}

/// Why a saved profile cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stale {
    Missing,
    Corrupt(String),
    OtherMachine,
    OldVersion,
}

/// Reads a saved profile and checks it belongs to this machine and this version.
pub fn load_profile(path: &Path) -> std::result::Result<Profile, Stale> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Stale::Missing),
        Err(e) => return Err(Stale::Corrupt(e.to_string())),
    };
    let p: Profile = serde_json::from_str(&text).map_err(|e| Stale::Corrupt(e.to_string()))?;
    if p.version != PROFILE_VERSION {
        return Err(Stale::OldVersion);
    }
    if p.fingerprint != Fingerprint::this_machine() {
        return Err(Stale::OtherMachine);
    }
    let sane = |v: f64| v.is_finite() && v > 0.0;
    if !sane(p.read_warm_bps)
        || !sane(p.memcpy_bps)
        || p.decode.is_empty()
        || p.decode
            .iter()
            .any(|d| !sane(d.bps_1_thread) || !sane(d.bps_all_threads))
    {
        return Err(Stale::Corrupt(
            "non-positive or non-finite measurement".into(),
        ));
    }
    Ok(p)
}

/// This machine's saved profile ([`default_profile_path`]), read once per process; `None`
/// when there is none that fits this machine and version (nothing is measured here: a load
/// must not spend seconds probing).
pub fn machine_profile() -> Option<&'static Profile> {
    static PROFILE: std::sync::OnceLock<Option<Profile>> = std::sync::OnceLock::new();
    PROFILE
        .get_or_init(|| load_profile(&default_profile_path()).ok())
        .as_ref()
}

/// Loads the profile at `path`, or measures and saves a new one when it is missing, corrupt,
/// from another machine or from another version. Returns the profile and, when it was
/// re-measured, why.
pub fn load_or_probe(path: &Path, opts: &ProbeOptions) -> Result<(Profile, Option<Stale>)> {
    match load_profile(path) {
        Ok(p) => Ok((p, None)),
        Err(why) => {
            let p = probe(opts)?;
            save_profile(&p, path)?;
            Ok((p, Some(why)))
        }
    }
}

pub fn save_profile(p: &Profile, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(CostError::io(dir))?;
    }
    let text = serde_json::to_string_pretty(p).expect("profile serializes");
    let mut out = AtomicOutput::create(path, None, true)?;
    out.file()
        .write_all(text.as_bytes())
        .map_err(CostError::io(path))?;
    Ok(out.commit()?)
}

/// How much to measure.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Directory whose storage is measured (a temporary file is written there).
    pub storage_dir: PathBuf,
    /// Size of the temporary file.
    pub file_bytes: usize,
    /// Decoded bytes per decode sample.
    pub sample_bytes: usize,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            storage_dir: std::env::temp_dir(),
            file_bytes: 128 << 20,
            sample_bytes: 8 << 20,
        }
    }
}

/// Types whose decode speed the profile measures: one per transform family in use.
const PROBED_TYPES: [GgmlType; 6] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_1,
    GgmlType::Q6_K,
];

/// Measures this machine.
pub fn probe(opts: &ProbeOptions) -> Result<Profile> {
    let (read_cold_bps, read_warm_bps, mmap_warm_bps) = storage(opts)?;
    let memcpy_bps = memcpy_speed(opts.sample_bytes);
    let threads = rayon::current_num_threads();
    let decode = PROBED_TYPES
        .iter()
        .map(|&ty| decode_speed(ty, opts.sample_bytes, threads))
        .collect::<Result<Vec<_>>>()?;
    Ok(Profile {
        version: PROFILE_VERSION,
        fingerprint: Fingerprint::this_machine(),
        measured_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        storage_dir: opts.storage_dir.clone(),
        read_cold_bps,
        read_warm_bps,
        mmap_warm_bps,
        memcpy_bps,
        threads,
        decode,
    })
}

fn best_of(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed());
    }
    Ok(best.max(Duration::from_nanos(1)))
}

fn storage(opts: &ProbeOptions) -> Result<(Option<f64>, f64, f64)> {
    let path = opts
        .storage_dir
        .join(format!(".dcgguf-probe-{}", std::process::id()));
    let io = CostError::io(&path);
    // Removed on return, and by the CLI's SIGINT/SIGTERM handling.
    let guard = TempPath::new(path.clone())?;
    let result = (|| -> std::io::Result<(Option<f64>, f64, f64)> {
        let mut f = File::create(&path)?;
        let block = vec![0x5Au8; 1 << 20];
        for _ in 0..opts.file_bytes / block.len() {
            f.write_all(&block)?;
        }
        f.sync_all()?;
        drop(f);
        let len = (opts.file_bytes / block.len() * block.len()) as f64;
        let mut buf = vec![0u8; 1 << 20];
        let read_all = |buf: &mut [u8]| -> std::io::Result<()> {
            let mut f = File::open(&path)?;
            while f.read(buf)? > 0 {}
            Ok(())
        };
        let cold = drop_from_cache(&path).then(|| {
            let t = Instant::now();
            read_all(&mut buf).map(|_| len / t.elapsed().as_secs_f64())
        });
        let cold = cold.transpose()?;
        read_all(&mut buf)?;
        let mut warm = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            read_all(&mut buf)?;
            warm = warm.min(t.elapsed().as_secs_f64());
        }
        let mut mapped = f64::MAX;
        for _ in 0..3 {
            // A fresh map each pass, every word read: what a loader touching the whole
            // file through mmap pays (page faults included).
            let t = Instant::now();
            let (_f, map) = crate::io::map_readonly(&path)?;
            let sum = map.chunks_exact(8).fold(0u64, |s, w| {
                s.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()))
            });
            std::hint::black_box(sum);
            mapped = mapped.min(t.elapsed().as_secs_f64());
        }
        Ok((cold, len / warm, len / mapped))
    })();
    drop(guard);
    result.map_err(io)
}

/// Asks the kernel to drop a file's clean pages from the page cache; false if it cannot.
fn drop_from_cache(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only reads the descriptor, which `f` keeps open for the call.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    rc == 0
}

fn memcpy_speed(bytes: usize) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let t = best_of(5, || {
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        Ok(())
    })
    .unwrap_or(Duration::from_secs(1));
    bytes as f64 / t.as_secs_f64()
}

/// Weights-like synthetic data of a type: Gaussian values, quantized the way ggml does
/// for Q8_0 and Q4_1, opaque bytes otherwise.
pub fn synthetic_tensor(ty: GgmlType, bytes: usize) -> Vec<u8> {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut gauss = move || {
        // Sum of uniforms: close enough to Gaussian for entropy purposes.
        (0..4)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .sum::<f64>()
            * 0.05
    };
    let n_blocks = (bytes as u64 / ty.block_bytes()).max(1) as usize;
    let mut out = Vec::with_capacity(n_blocks * ty.block_bytes() as usize);
    let half = |x: f32| crate::codec::half::f32_to_f16(x).to_le_bytes();
    for _ in 0..n_blocks {
        let xs: Vec<f32> = (0..ty.block_elems()).map(|_| gauss() as f32).collect();
        match ty {
            GgmlType::F32 => out.extend_from_slice(&xs[0].to_le_bytes()),
            GgmlType::F16 => out.extend_from_slice(&half(xs[0])),
            GgmlType::BF16 => {
                out.extend_from_slice(&((xs[0].to_bits() >> 16) as u16).to_le_bytes())
            }
            GgmlType::Q8_0 => {
                let amax = xs.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = amax / 127.0;
                out.extend_from_slice(&half(d));
                out.extend(xs.iter().map(|x| {
                    if d > 0.0 {
                        (x / d).round() as i8 as u8
                    } else {
                        0
                    }
                }));
            }
            GgmlType::Q4_1 => {
                let (lo, hi) = xs
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
                let d = (hi - lo) / 15.0;
                out.extend_from_slice(&half(d));
                out.extend_from_slice(&half(lo));
                let q = |x: f32| {
                    if d > 0.0 {
                        ((x - lo) / d).round().clamp(0.0, 15.0) as u8
                    } else {
                        0
                    }
                };
                out.extend((0..16).map(|j| q(xs[j]) | (q(xs[j + 16]) << 4)));
            }
            _ => {
                // Other quant types: quant-like bytes with a scale-like field pattern.
                let b = ty.block_bytes() as usize;
                out.extend((0..b).map(|k| {
                    let x = gauss();
                    if k % 16 == 0 {
                        0x3C
                    } else {
                        ((x * 2000.0) as i32 & 0xFF) as u8
                    }
                }));
            }
        }
    }
    out
}

fn decode_speed(ty: GgmlType, sample_bytes: usize, threads: usize) -> Result<DecodeSpeed> {
    let raw = synthetic_tensor(ty, sample_bytes);
    let transform = Transform::default_for(ty);
    let layout = Layout::new(transform, ty);
    let chunk = ((1usize << 20) / layout.unit()).max(1) * layout.unit();
    let encoded: Vec<(ChunkMode, Vec<u8>, usize)> = raw
        .chunks(chunk)
        .map(|c| {
            let (m, p) = encode_chunk(&layout, c, EncodeOptions::default(), None);
            (m, p, c.len())
        })
        .collect();
    let stored: usize = encoded.iter().map(|e| e.1.len()).sum();
    let mut out = vec![0u8; raw.len()];
    let run = |out: &mut [u8]| -> Result<()> {
        use rayon::prelude::*;
        out.par_chunks_mut(chunk)
            .zip(encoded.par_iter())
            .try_for_each(|(dst, (m, p, _))| {
                decode_chunk(&layout, *m, p, dst).map_err(CostError::from)
            })
    };
    let timed = |threads: usize, out: &mut [u8]| -> Result<f64> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|source| CostError::Threads { threads, source })?;
        let t = pool.install(|| best_of(5, || run(out)))?;
        Ok(raw.len() as f64 / t.as_secs_f64())
    };
    let one = timed(1, &mut out)?;
    let all = timed(threads, &mut out)?;
    debug_assert_eq!(out, raw);
    Ok(DecodeSpeed {
        ggml_type: ty.name().into(),
        transform: transform.name().into(),
        sample_ratio: stored as f64 / raw.len() as f64,
        bps_1_thread: one,
        bps_all_threads: all,
    })
}
