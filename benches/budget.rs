//! Memory-budget mode with stock llama.cpp tools (LD_PRELOAD=libdcgguf_preload.so): peak RSS and
//! speed of the plain GGUF against the DC-GGUF at budgets 100% (no budget), 80%, 60%, 50%
//! (compressed bytes re-read from the page cache) and 60% with them held in RAM, plus whether
//! the outputs are identical to the plain model's, and the first run after dropping the DC
//! file from the page cache (cold).
//!
//!   cargo bench --bench budget          # SmolLM2 Q4_1, MiniLM BF16/F16, MiniLM DC-INT8
//!
//! SmolLM2: llama-bench prompt processing (pp64, pp512) and generation (tg32) tokens/s; peak RSS,
//! wall time ("run s", load included) and output identity from a 32-token greedy
//! llama-completion (`-c 256`, no mmap; the cold row runs it right after dropping the DC file
//! from the page cache). MiniLM:
//! embeddings/s (median of 3 runs) and peak RSS of llama-embedding over 100 sentences, outputs
//! compared exactly.
//! Peak RSS is the tool's own `VmHWM` at its exit (tests/llama_support/peak.rs: `wait4`'s
//! ru_maxrss would count this bench's own RSS in it).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[path = "../tests/llama_support/mod.rs"]
mod llama_support;
use llama_support::{Llama, preload};

fn work_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-budget");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// How a run is set up: `None` = plain file without the preload.
#[derive(Clone, Copy)]
struct Setup {
    label: &'static str,
    dc: bool,
    budget: Option<&'static str>,
    home: &'static str,
    cold: bool,
}

const SETUPS: [Setup; 7] = [
    Setup {
        label: "plain .gguf",
        dc: false,
        budget: None,
        home: "file",
        cold: false,
    },
    Setup {
        label: "DC, no budget",
        dc: true,
        budget: None,
        home: "file",
        cold: false,
    },
    Setup {
        label: "DC 80% (file)",
        dc: true,
        budget: Some("80%"),
        home: "file",
        cold: false,
    },
    Setup {
        label: "DC 60% (file)",
        dc: true,
        budget: Some("60%"),
        home: "file",
        cold: false,
    },
    Setup {
        label: "DC 50% (file)",
        dc: true,
        budget: Some("50%"),
        home: "file",
        cold: false,
    },
    Setup {
        label: "DC 50% (file), cold",
        dc: true,
        budget: Some("50%"),
        home: "file",
        cold: true,
    },
    Setup {
        label: "DC 60% (ram)",
        dc: true,
        budget: Some("60%"),
        home: "ram",
        cold: false,
    },
];

struct Output {
    ok: bool,
    stdout: String,
    peak_rss: u64,
    seconds: f64,
}

/// A stock llama.cpp tool for setup `s`, with libdcgguf_preload.so preloaded for DC setups and, always,
/// the tests' log-draining shim (llama.cpp's asynchronous logger can otherwise lose the end of
/// a tool's output at exit; see tests/llama_support/drain_log.c).
fn tool(l: &Llama, name: &str, s: &Setup) -> Command {
    let mut c = Command::new(l.bin(name));
    c.env_remove("LD_LIBRARY_PATH")
        .env_remove("DCGGUF_THROTTLE_BPS")
        .env("LD_PRELOAD", preload(l, s.dc));
    match s.budget {
        Some(b) => c
            .env("DCGGUF_MEM_BUDGET", b)
            .env("DCGGUF_MEM_SOURCE", s.home),
        None => c.env_remove("DCGGUF_MEM_BUDGET"),
    };
    c
}

fn run(mut c: Command) -> Output {
    let out = work_dir().join("stdout.txt");
    let started = Instant::now();
    c.stdout(Stdio::from(File::create(&out).unwrap()))
        .stderr(Stdio::null());
    let exit = llama_support::peak::run(&mut c, |_| {});
    Output {
        ok: exit.success(),
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        peak_rss: exit.peak_rss,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Drops `path` from the page cache (works when no process maps it).
fn drop_from_page_cache(path: &Path) {
    let f = File::open(path).unwrap();
    let _ = f.read_at(&mut [0u8; 1], 0);
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise on an open descriptor; advisory only.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// The file a setup runs: the DC file or the plain one, dropped from the page cache first for
/// a cold row.
fn setup_model<'a>(s: &Setup, plain: &'a Path, dc: &'a Path) -> &'a Path {
    let model = if s.dc { dc } else { plain };
    if s.cold {
        drop_from_page_cache(model);
    }
    model
}

/// llama-bench tokens/s: prompt processing of 64 and of 512 tokens (llama-bench's default),
/// and generation of 32.
fn llama_bench_speeds(l: &Llama, model: &Path, s: &Setup) -> (f64, f64, f64) {
    let mut c = tool(l, "llama-bench", s);
    c.arg("-m").arg(model).args([
        "-p", "64,512", "-n", "32", "-r", "3", "-t", "2", "-o", "csv",
    ]);
    if !s.dc {
        c.args(["--load-mode", "none"]);
    }
    let o = run(c);
    let mut pp = f64::NAN;
    let mut pp512 = f64::NAN;
    let mut tg = f64::NAN;
    let mut header: Vec<String> = Vec::new();
    for line in o.stdout.lines() {
        let cells: Vec<String> = line
            .split(',')
            .map(|c| c.trim_matches('"').to_string())
            .collect();
        if header.is_empty() {
            header = cells;
            continue;
        }
        let get = |k: &str| {
            header
                .iter()
                .position(|h| h == k)
                .and_then(|i| cells.get(i))
        };
        let ts = get("avg_ts")
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        match (
            get("n_prompt").map(String::as_str),
            get("n_gen").map(String::as_str),
        ) {
            (Some("64"), Some("0")) => pp = ts,
            (Some("512"), Some("0")) => pp512 = ts,
            (Some("0"), Some("32")) => tg = ts,
            _ => {}
        }
    }
    (pp, pp512, tg)
}

fn completion(l: &Llama, model: &Path, s: &Setup) -> Output {
    let mut c = tool(l, "llama-completion", s);
    c.arg("-m")
        .arg(model)
        .args(["--temp", "0", "-no-cnv", "-t", "2", "-c", "256"]);
    c.args([
        "-n",
        "32",
        "--load-mode",
        "none",
        "-p",
        "The capital of France is",
    ]);
    run(c)
}

fn sentences() -> PathBuf {
    let p = work_dir().join("sentences.txt");
    let topics = [
        "rivers",
        "compilers",
        "bread",
        "orbits",
        "violins",
        "tides",
        "markets",
        "moss",
    ];
    let verbs = ["explains", "changes", "measures", "hides", "shapes"];
    let mut s = String::new();
    for i in 0..100 {
        s.push_str(&format!(
            "Sentence {i}: the study of {} {} how {} behave over {} years.\n",
            topics[i % topics.len()],
            verbs[i % verbs.len()],
            topics[(i * 3 + 1) % topics.len()],
            i * 7 % 50 + 2
        ));
    }
    std::fs::write(&p, s).unwrap();
    p
}

fn embedding(l: &Llama, model: &Path, s: &Setup) -> Output {
    let mut c = tool(l, "llama-embedding", s);
    c.arg("-m")
        .arg(model)
        .arg("-f")
        .arg(sentences())
        .args(llama_support::EMBEDDING_ARRAY_ARGS);
    run(c)
}

fn dc_file(src: &Path, extra: &[&str], name: &str) -> PathBuf {
    llama_support::compressed(src, extra, &work_dir().join(name))
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(l) = llama_support::llama("budget bench") else {
        return;
    };
    println!("budget bench: stock llama.cpp tools, 2 threads, LD_PRELOAD=libdcgguf_preload.so\n");

    if let Some(smol) = llama_support::smollm2("budget bench") {
        let dc = dc_file(&smol, &[], "smollm2.dc.gguf");
        println!(
            "SmolLM2-135M Q4_1 (llama-bench pp64/pp512/tg32; RSS and identity from llama-completion -n 32)"
        );
        println!(
            "{:<22} {:>10} {:>9} {:>9} {:>9} {:>10} {:>10}",
            "setup", "peak MiB", "pp64 t/s", "pp512 t/s", "tg t/s", "run s", "identical"
        );
        let mut reference = String::new();
        for s in SETUPS {
            let model = setup_model(&s, &smol, &dc);
            let o = completion(&l, model, &s);
            let (pp, pp512, tg) = if s.cold {
                (f64::NAN, f64::NAN, f64::NAN)
            } else {
                llama_bench_speeds(&l, model, &s)
            };
            if !s.dc {
                reference = o.stdout.clone();
            }
            println!(
                "{:<22} {:>10.1} {:>9.1} {:>9.1} {:>9.1} {:>10.2} {:>10}",
                s.label,
                mib(o.peak_rss),
                pp,
                pp512,
                tg,
                o.seconds,
                if o.ok && o.stdout == reference {
                    "yes"
                } else {
                    "NO"
                }
            );
        }
        println!();
    }

    let mut minilms: Vec<(String, PathBuf, PathBuf)> = Vec::new();
    for t in ["bf16", "f16"] {
        let name = format!("all-MiniLM-L6-v2-{t}.gguf");
        if let Some(src) = llama_support::shared_model("budget bench", &name) {
            let dc = dc_file(&src, &[], &format!("minilm-{t}.dc.gguf"));
            minilms.push((format!("MiniLM {t}"), src, dc));
        }
    }
    if let Some(f32) = llama_support::shared_model("budget bench", "all-MiniLM-L6-v2-f32.gguf") {
        let dc = dc_file(&f32, &["--quantize", "int8"], "minilm-int8.dc.gguf");
        let q8 = work_dir().join("minilm-int8.q8_0.gguf");
        if !q8.exists() {
            let o = Command::new(env!("CARGO_BIN_EXE_dcgguf"))
                .args(["-q", "decompress", "--force"])
                .arg(&dc)
                .arg(&q8)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        minilms.push(("MiniLM DC-INT8 (Q8_0)".into(), q8, dc));
    }
    for (name, plain, dc) in minilms {
        println!("{name} (llama-embedding, 100 sentences)");
        println!(
            "{:<22} {:>10} {:>9} {:>10}",
            "setup", "peak MiB", "emb/s", "identical"
        );
        let mut reference = String::new();
        for s in SETUPS {
            // The median of three runs (one for a cold row: the next would be warm).
            let mut runs: Vec<Output> = (0..if s.cold { 1 } else { 3 })
                .map(|_| embedding(&l, setup_model(&s, &plain, &dc), &s))
                .collect();
            if !s.dc {
                reference = runs[0].stdout.clone();
            }
            let identical = runs.iter().all(|o| o.ok && o.stdout == reference);
            runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
            let o = &runs[runs.len() / 2];
            println!(
                "{:<22} {:>10.1} {:>9.1} {:>10}",
                s.label,
                mib(o.peak_rss),
                100.0 / o.seconds,
                if identical { "yes" } else { "NO" }
            );
        }
        println!();
    }
}
