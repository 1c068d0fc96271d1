//! Speed and charged memory under a hard memory cap: stock llama.cpp tools on the plain GGUF
//! (mmap, `-lm none`) against the DC-GGUF under LD_PRELOAD=libdcgguf_preload.so (its default,
//! which reads the cgroup's limit and takes a budget only when the decoded model would not
//! fit; no budget, `DCGGUF_MEM_BUDGET=0`; `50%,ram`; `50%,file`), each run in a memory cgroup
//! of its own.
//!
//!   cargo bench --bench memcap       # as root (it creates cgroups and drops the page cache)
//!
//! Why: the budget bench (benches/budget.rs) reports peak RSS, which leaves out the page cache.
//! A real memory limit (a container, a systemd slice) charges the page cache that a process
//! faults in to its cgroup: the mmapped model of plain llama.cpp, the file that `-lm none`
//! reads and then copies, the DC file that the `file` budget re-reads. This bench puts each
//! run under such a limit and reports what it was charged and how fast it went.
//!
//! Each run: `sync; echo 3 > /proc/sys/vm/drop_caches` (so the files it reads are charged to
//! it, not left over from an earlier run), a wait for the memory that freed to settle (in a VM
//! that reports free memory to its host, the host's reclaim would otherwise land in the middle
//! of the next run: cgroup::settle_after_drop; DCGGUF_MEMCAP_SETTLE=0 skips it), a new child
//! cgroup with the cap, the tool moved into it between fork and exec, a wall-clock timeout, then the cgroup's peak charge and OOM
//! kill count, and the cgroup removed. cgroup v2 (memory.max, memory.swap.max=0, memory.peak,
//! memory.events oom_kill) where its memory controller is available to us, else cgroup v1
//! (memory.limit_in_bytes, memory.memsw.limit_in_bytes, memory.max_usage_in_bytes,
//! memory.oom_control oom_kill, memory.failcnt).
//!
//! Workloads: SmolLM2 Q4_1 (llama-completion, 2 threads, a context of DCGGUF_MEMCAP_CTX
//! tokens, default 256, 32 greedy tokens of a fixed prompt; llama.cpp's own prompt and
//! generation tokens/s; llama.cpp writes a context's whole KV cache as it creates it, so a
//! bigger context adds its cache to every setup's memory from the start), MiniLM BF16 and
//! F16 (llama-embedding of the evaluation sentences of scripts/eval-sentences.py;
//! embeddings/s = sentences / wall time, load from a cold page cache included), SmolLM2 Q4_1
//! again under llama-perplexity of those sentences (`-c 256 -b 256`: each batch writes logits
//! for half its tokens; tokens evaluated / wall time, load included; the outputs compared are
//! its per-chunk values and final estimate), and with DCGGUF_MEMCAP_LARGE=1 the 1.1 GB
//! Qwen2.5-Coder-1.5B Q4_K_M that `DCGGUF_FETCH_LARGE=1 scripts/fetch-models.sh` fetches
//! (as SmolLM2). Outputs are compared with the plain mmap run without a cap.
//!
//! Caps: DCGGUF_MEMCAP_STEPS (default 100,95,90,85,80,70,60,50; fractions such as 95.5 allowed)
//! percent of the plain mmap run's peak charge without a cap, plus a row without a cap. A
//! setup killed (or timed out) at one cap is not run at the lower ones (shown `killed*` /
//! `timeout*`), nor in the later rounds at that cap (the first failure decides a point); a
//! timeout is retried once first. Timeout: 5x the setup's own time without a cap, at least
//! 30 s, at most DCGGUF_MEMCAP_TIMEOUT (default 120 s).
//!
//! Your own model: DCGGUF_MEMCAP_MODEL=PATH (a plain GGUF; it runs alone unless
//! DCGGUF_MEMCAP_MODELS names others; llama-embedding for a model that pools, else
//! llama-completion; DCGGUF_MEMCAP_WORKLOAD=completion|embedding|perplexity|python-completion|
//! python-embedding overrides).
//!
//! Other knobs: DCGGUF_MEMCAP_MODELS (comma list of smollm2, smollm2-ppl, minilm-bf16,
//! minilm-f16, large, smollm2-py, minilm-bf16-py; default all but large and the two `-py`:
//! those run llama-cpp-python instead of a llama.cpp tool, SmolLM2's completion and MiniLM's
//! embeddings one sentence a call, DC files through `import dcgguf.llama_cpp`, where only
//! plain mmap and the default apply; they need scripts/build-llama-cpp-python.sh), DCGGUF_MEMCAP_RUNS (runs per point, default 1:
//! the median speed, the highest peak, any failure wins), DCGGUF_MEMCAP_MAX_RUNS (runs per
//! point at most, default 8 or DCGGUF_MEMCAP_RUNS if more: see below), DCGGUF_MEMCAP_NOISE
//! (allowance of the "never slower" check, default 0.05), DCGGUF_MEMCAP_SETUPS (comma list of
//! plain-none, default, no-budget, 50-ram, 50-file, plain-again; default all; plain mmap
//! always runs). Caps run in turn, every setup at each cap, and a cap's runs go round the
//! setups (one run of each, then the next round, which starts one setup later), so that the
//! setups a target compares run close in time and share the machine's weather.
//!
//! Knees pair each capped run with an uncapped one: at every cap, a setup whose knee a
//! target reads (plain mmap and the DC setups) runs once without the cap as well in each
//! round, next to its capped run, and the knee compares each capped run with that one
//! (support::of_uncapped), so that a drift of the shared machine's speed over the minutes the
//! ladder takes (5-8% between two runs of the bench, session 47) falls on both sides.
//! DCGGUF_MEMCAP_PAIR=0 turns it off (half the runs: the knee then reads the no-cap cell's
//! median).
//!
//! More rounds where the runs leave a question open: after DCGGUF_MEMCAP_RUNS rounds at a
//! cap, another round runs (up to DCGGUF_MEMCAP_MAX_RUNS) while a DC setup's speed over plain
//! mmap's in the same rounds, or a setup's speed over its own uncapped speed (plain mmap's
//! and DC's, whose knees the targets compare), has a median whose 90% confidence interval
//! (the sign test's, distribution-free; below five rounds, the smallest to the largest)
//! holds the target's threshold (1 - allowance; 90%). A question settled either way stops
//! asking, so the extra rounds favour no answer. `plain-again` runs plain mmap a second time
//! in each round: judged against the first run like DC, it is the bench's resolution, which
//! the "never slower" lines print beside DC's.
//!
//! Output: a markdown table per model (a cell's run count where more rounds ran), each
//! setup's knee (the lowest cap down to which it keeps >= 90% of its own uncapped speed at
//! every cap) and the issue's targets as PASS/FAIL/UNRESOLVED lines (printed, not asserted).
//! A cap keeps the speed where the median interval of its runs over the uncapped median lies
//! above 90%, loses it where it lies below; where it holds 90% the knee is a range, and the
//! knee target is settled only where every place in both ranges agrees. A knee above the
//! ladder (the cap at plain mmap's own peak already slows it) needs a step above 100, DC's
//! below the ladder's bottom a lower step.
//! "Never slower" takes, at each point, the median over the rounds of DC's speed over plain
//! mmap's in the same round; a point below the allowance fails it where the median's 90%
//! interval lies below the allowance too, else the line says UNRESOLVED and names the points
//! the runs could not settle. The lowest-cap line's bound takes the model's non-weight memory
//! from the uncapped peak of DC without a budget less its decoded weights; without that
//! setup the line says UNRESOLVED (not measured).
//! All in target/bench-memcap/memcap.md; the points in memcap.csv;
//! and memcap.png drawn by scripts/plot-memcap.py (matplotlib, see scripts/requirements.txt;
//! without it the bench says that no plot was made).

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dcgguf::dc::DcFile;

#[path = "../tests/llama_support/mod.rs"]
mod llama_support;
use llama_support::{Llama, cgroup, preload};
#[path = "support/mod.rs"]
mod support;
use support::{Knee, Side, Verdict, knee_gap, lowest_cap_bound, of_uncapped, side};

const MIB: f64 = (1u64 << 20) as f64;

fn work_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-memcap");
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ------------------------------------------------------------------------------- runs

#[derive(Clone, Debug, PartialEq)]
enum Status {
    Ok,
    /// Killed by the OOM killer (SIGKILL we did not send, or an oom_kill in the cgroup).
    Killed,
    /// Still running at the timeout (we killed it).
    Timeout,
    /// Another failure: exit code or signal.
    Failed(String),
    /// Not run: killed or timed out at a higher cap.
    Skipped(Box<Status>),
}

impl Status {
    fn text(&self) -> String {
        match self {
            Status::Ok => "ok".into(),
            Status::Killed => "killed".into(),
            Status::Timeout => "timeout".into(),
            Status::Failed(why) => format!("failed ({why})"),
            Status::Skipped(s) => format!("{}*", s.text()),
        }
    }
}

struct Run {
    status: Status,
    wall: f64,
    usage: cgroup::Usage,
    stdout: String,
    stderr: String,
}

/// Runs before now, seconds waited for freed memory to settle, and bytes the kernel reported
/// to the hypervisor meanwhile (where it counts them).
static SETTLED: std::sync::Mutex<(u32, f64, u64)> = std::sync::Mutex::new((0, 0.0, 0));

/// Waits for the memory the page cache drop (and the previous run's exit) freed to settle
/// (cgroup::settle_after_drop), at most DCGGUF_MEMCAP_SETTLE seconds (default 10; 0: not at
/// all, as before session 51).
fn settle() {
    let max = support::env_or("DCGGUF_MEMCAP_SETTLE", 10.0f64);
    if max <= 0.0 {
        return;
    }
    let s = cgroup::settle_after_drop(Duration::from_secs_f64(max));
    let mut total = SETTLED.lock().unwrap();
    total.0 += 1;
    total.1 += s.waited.as_secs_f64();
    total.2 += s.reported.unwrap_or(0);
}

/// One line on how runs started: after how long a wait for freed memory, with how much of it
/// handed back to the hypervisor meanwhile.
fn settled_line() -> String {
    let (runs, waited, reported) = *SETTLED.lock().unwrap();
    if runs == 0 {
        return "freed memory not left to settle before runs (DCGGUF_MEMCAP_SETTLE=0)\n".into();
    }
    format!(
        "before each of {runs} runs, after the page cache drop: waited {:.1} s on average for freed memory to settle, {:.0} MiB reported to the hypervisor meanwhile (all runs)\n",
        waited / runs as f64,
        reported as f64 / MIB
    )
}

/// Runs `c` in a new cgroup capped at `cap`, after dropping the page cache, killing it at
/// `timeout`.
fn run_capped(parent: &cgroup::Parent, mut c: Command, cap: Option<u64>, timeout: Duration) -> Run {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("dcgguf-memcap-{}-{n}", std::process::id());
    let cg = parent
        .create(&name, cap)
        .unwrap_or_else(|e| panic!("memcap: {e}"));
    let out_path = work_dir().join("stdout.txt");
    let err_path = work_dir().join("stderr.txt");
    c.stdout(Stdio::from(File::create(&out_path).unwrap()))
        .stderr(Stdio::from(File::create(&err_path).unwrap()))
        .stdin(Stdio::null());
    cg.enter_on_exec(&mut c);
    cgroup::drop_caches().unwrap_or_else(|e| panic!("memcap: {e}"));
    settle();
    let started = Instant::now();
    let mut child = c.spawn().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let timed_out = !wait_exit(child.id(), started + timeout);
    if timed_out {
        // SAFETY: kill(2) on our own child, which has not been reaped (wait_exit does not
        // reap), so the pid is still its.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    }
    let status = child.wait().expect("wait for the tool");
    let wall = started.elapsed().as_secs_f64();
    let usage = cg.usage();
    cg.remove();
    let status = if timed_out {
        Status::Timeout
    } else if usage.oom_kills > 0 || status.signal() == Some(libc::SIGKILL) {
        Status::Killed
    } else if let Some(sig) = status.signal() {
        Status::Failed(format!("signal {sig}"))
    } else if !status.success() {
        Status::Failed(format!("exit {}", status.code().unwrap_or(-1)))
    } else {
        Status::Ok
    };
    Run {
        status,
        wall,
        usage,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Waits until process `pid` (our child) has exited, without reaping it; false at
/// `deadline`. A pidfd (Linux 5.3) becomes readable at exit; without one, polls.
fn wait_exit(pid: u32, deadline: Instant) -> bool {
    // SAFETY: pidfd_open(2) with a pid and no flags; returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as i32;
    if fd >= 0 {
        let exited = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: poll(2) on one valid pollfd that lives across the call.
            let r = unsafe { libc::poll(&mut p, 1, ms) };
            if r > 0 {
                break true;
            }
            if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                panic!("poll pidfd: {}", std::io::Error::last_os_error());
            }
        };
        // SAFETY: closing the descriptor pidfd_open gave us.
        unsafe { libc::close(fd) };
        return exited;
    }
    loop {
        let mut info: libc::siginfo_t =
            // SAFETY: an all-zero siginfo_t is valid; waitid overwrites it.
            unsafe { std::mem::zeroed() };
        // SAFETY: waitid(2) on our own child with WNOWAIT (it stays unreaped) and WNOHANG.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            )
        };
        // SAFETY: si_pid is set by waitid (0 while the child runs, with WNOHANG).
        if r == 0 && unsafe { info.si_pid() } != 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ------------------------------------------------------------------------------- setups

struct Setup {
    /// Its name in DCGGUF_MEMCAP_SETUPS.
    key: &'static str,
    label: &'static str,
    dc: bool,
    /// llama.cpp `-lm` for the plain file (DC loads always use its non-mmap path).
    load_mode: Option<&'static str>,
    budget: Option<&'static str>,
    /// `--no-repack`: only for the second reference (see [`Identity`]).
    no_repack: bool,
}

const PLAIN_MMAP: usize = 0;

/// The second reference: plain mmap without weight repacking, as the budget loads run
/// (README: "weight repacking [is] turned off"). Repacked Q4_K weights (Qwen2.5-Coder) take
/// other kernels, whose sums round differently: greedy generation then picks other tokens.
const PLAIN_NO_REPACK: Setup = Setup {
    key: "plain-no-repack",
    label: "plain mmap --no-repack",
    dc: false,
    load_mode: Some("mmap"),
    budget: None,
    no_repack: true,
};

/// Plain mmap once more in every round: how far apart two runs of the same setup come out
/// is the bench's resolution, which the "never slower" line reports beside DC's ratio.
const PLAIN_AGAIN: usize = 6;

const SETUPS: [Setup; 7] = [
    Setup {
        key: "plain",
        label: "plain mmap (default)",
        dc: false,
        load_mode: Some("mmap"),
        budget: None,
        no_repack: false,
    },
    Setup {
        key: "plain-none",
        label: "plain -lm none",
        dc: false,
        load_mode: Some("none"),
        budget: None,
        no_repack: false,
    },
    // No DCGGUF_MEM_BUDGET: the load chooses from the cgroup's limit (src/llama/budget/limit.rs).
    Setup {
        key: "default",
        label: "DC default (adapts)",
        dc: true,
        load_mode: None,
        budget: None,
        no_repack: false,
    },
    Setup {
        key: "no-budget",
        label: "DC, no budget",
        dc: true,
        load_mode: None,
        budget: Some("0"),
        no_repack: false,
    },
    Setup {
        key: "50-ram",
        label: "DC 50% ram",
        dc: true,
        load_mode: None,
        budget: Some("50%,ram"),
        no_repack: false,
    },
    Setup {
        key: "50-file",
        label: "DC 50% file",
        dc: true,
        load_mode: None,
        budget: Some("50%,file"),
        no_repack: false,
    },
    Setup {
        key: "plain-again",
        label: "plain mmap, again",
        dc: false,
        load_mode: Some("mmap"),
        budget: None,
        no_repack: false,
    },
];

/// Whether DCGGUF_MEMCAP_SETUPS (a comma list of [`Setup::key`]s; all when unset) asks
/// for `s`, and it applies to `m`'s workload ([`Workload::in_python`]: plain mmap, the
/// default and plain mmap again). Plain mmap, the reference of every target, always runs.
fn selected(m: &Model, s: &Setup) -> bool {
    let applies = !m.workload.in_python()
        || (s.budget.is_none() && s.load_mode != Some("none") && !s.no_repack);
    s.key == SETUPS[PLAIN_MMAP].key
        || (applies
            && std::env::var("DCGGUF_MEMCAP_SETUPS")
                .map_or(true, |v| v.split(',').any(|k| k.trim() == s.key)))
}

#[derive(Clone, Copy, PartialEq)]
enum Metric {
    Prompt,
    Gen,
    Emb,
    /// llama-perplexity's evaluated tokens over the wall time, load included.
    Ppl,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::Prompt => "prompt t/s",
            Metric::Gen => "gen t/s",
            Metric::Emb => "emb/s",
            Metric::Ppl => "ppl t/s",
        }
    }
}

enum Workload {
    /// llama-completion, 2 threads, 32 greedy tokens.
    Completion,
    /// llama-embedding of `n` sentences in `file`.
    Embedding { file: PathBuf, n: usize },
    /// llama-perplexity of `file`, 2 threads, `-c 256 -b 256`: a batch of 256 tokens that
    /// writes logits for the half it scores, unlike llama-completion's one output a batch
    /// (sessions 28 and 29 found the default killed here, by hand, where plain mmap ran).
    Perplexity { file: PathBuf },
    /// The completion of [`Workload::Completion`] through llama-cpp-python (`Llama`,
    /// `create_completion`, the same context and prompt), DC files through
    /// `import dcgguf.llama_cpp`: a host without the preload library, whose memory is checked
    /// by libdcgguf's own wrappers (src/llama/budget/unhooked.rs).
    PythonCompletion,
    /// llama-cpp-python's embeddings of the `n` sentences in `file`, one `embed` call a
    /// sentence (`embedding=True`, a 512-token context), as the Python host above.
    PythonEmbedding { file: PathBuf, n: usize },
}

impl Workload {
    /// llama-embedding of the evaluation sentences.
    fn embedding_of_sentences() -> Workload {
        let file = llama_support::eval_sentences_file();
        let n = std::fs::read_to_string(&file).unwrap().lines().count();
        Workload::Embedding { file, n }
    }

    /// llama-cpp-python's embeddings of the evaluation sentences.
    fn python_embedding_of_sentences() -> Workload {
        let Workload::Embedding { file, n } = Workload::embedding_of_sentences() else {
            unreachable!()
        };
        Workload::PythonEmbedding { file, n }
    }

    /// Whether it runs in llama-cpp-python, where only plain mmap and the default apply (a
    /// budget needs the preload library; llama-cpp-python has no `-lm none`).
    fn in_python(&self) -> bool {
        matches!(
            self,
            Workload::PythonCompletion | Workload::PythonEmbedding { .. }
        )
    }
}

/// The program the Python workloads run: argv model, context, then the prompt
/// (completion: the text on stdout, llama.cpp's timings on stderr) or the sentences' file
/// (embeddings: a SHA-256 of every embedding's float32 bytes on stdout, which must be plain
/// mmap's, bit for bit).
const PYTHON_HOST: &str = r#"
import hashlib, os, struct, sys
if os.environ.get("DCGGUF_MEMCAP_DC") == "1":
    import dcgguf.llama_cpp
from llama_cpp import Llama
model, ctx, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if sys.argv[4] == "completion":
    llm = Llama(model_path=model, n_ctx=ctx, n_threads=2, seed=1, verbose=True)
    out = llm.create_completion(what, max_tokens=32, temperature=0.0)
    print(out["choices"][0]["text"])
else:
    llm = Llama(model_path=model, embedding=True, n_ctx=ctx, n_batch=ctx, n_threads=2,
                verbose=False)
    h = hashlib.sha256()
    for line in open(what):
        if line.strip():
            v = llm.embed(line.strip())
            h.update(struct.pack("%df" % len(v), *v))
    print(h.hexdigest())
llm.close()
"#;

struct Model {
    name: String,
    plain: PathBuf,
    dc: PathBuf,
    workload: Workload,
    /// The metric of the knee target.
    knee_metric: Metric,
}

impl Model {
    fn metrics(&self) -> &'static [Metric] {
        match self.workload {
            Workload::Completion | Workload::PythonCompletion => &[Metric::Prompt, Metric::Gen],
            Workload::Embedding { .. } | Workload::PythonEmbedding { .. } => &[Metric::Emb],
            Workload::Perplexity { .. } => &[Metric::Ppl],
        }
    }
}

const PROMPT: &str = "Memory limits on shared machines count every page that a process touches, \
including the page cache holding the files it reads. A program that maps a large model file is \
charged for those pages, and at the limit the kernel must reclaim them or stop the program. \
Explain in one paragraph why this matters when running language models:";

fn command(l: &Llama, m: &Model, s: &Setup) -> Command {
    let tool = match m.workload {
        Workload::Completion => "llama-completion",
        Workload::Embedding { .. } => "llama-embedding",
        Workload::Perplexity { .. } => "llama-perplexity",
        Workload::PythonCompletion | Workload::PythonEmbedding { .. } => {
            return python_command(m, s);
        }
    };
    let mut c = Command::new(l.bin(tool));
    // The tests' log-draining shim always (llama.cpp's asynchronous logger can lose the end
    // of the output at exit: tests/llama_support/drain_log.c), the DC preload for DC setups.
    c.env("LD_PRELOAD", preload(l, s.dc));
    for v in [
        "LD_LIBRARY_PATH",
        "DCGGUF_THROTTLE_BPS",
        "DCGGUF_MEM_SOURCE",
        "DCGGUF_PREFETCH",
        "DCGGUF_MEM_BUDGET",
    ] {
        c.env_remove(v);
    }
    if let Some(b) = s.budget {
        c.env("DCGGUF_MEM_BUDGET", b);
    }
    c.arg("-m").arg(if s.dc { &m.dc } else { &m.plain });
    if let Some(lm) = s.load_mode {
        c.args(["-lm", lm]);
    }
    if s.no_repack {
        c.arg("--no-repack");
    }
    match &m.workload {
        Workload::Completion => {
            c.args(["--temp", "0", "-no-cnv", "-t", "2", "-n", "32"])
                .args(["-c", &completion_context().to_string()])
                .args(["-p", PROMPT]);
        }
        Workload::Embedding { file, .. } => {
            c.arg("-f")
                .arg(file)
                .args(llama_support::EMBEDDING_ARRAY_ARGS);
        }
        Workload::Perplexity { file } => {
            c.arg("-f")
                .arg(file)
                .args(["-c", "256", "-b", "256", "-t", "2"]);
        }
        Workload::PythonCompletion | Workload::PythonEmbedding { .. } => {
            unreachable!("python_command")
        }
    }
    c
}

/// The command of a Python workload ([`PYTHON_HOST`]) with setup `s` (plain mmap, or the
/// default: the DC file through `import dcgguf.llama_cpp`).
fn python_command(m: &Model, s: &Setup) -> Command {
    let py = llama_support::llama_cpp_python().unwrap_or_else(|e| panic!("memcap: {e}"));
    let mut c = Command::new(py);
    for v in [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "DCGGUF_MEM_SOURCE",
        "DCGGUF_MEM_BUDGET",
        "DCGGUF_LOAD_ROUTE",
    ] {
        c.env_remove(v);
    }
    c.env(
        "PYTHONPATH",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("python"),
    )
    .env("DCGGUF_LIB", llama_support::libdcgguf())
    .env("DCGGUF_MEMCAP_DC", if s.dc { "1" } else { "0" })
    .args(["-c", PYTHON_HOST])
    .arg(if s.dc { &m.dc } else { &m.plain });
    match &m.workload {
        Workload::PythonEmbedding { file, .. } => {
            c.arg("512").arg(file).arg("embedding");
        }
        _ => {
            c.arg(completion_context().to_string())
                .arg(PROMPT)
                .arg("completion");
        }
    }
    c
}

/// The context llama-completion runs with (DCGGUF_MEMCAP_CTX, default 256 tokens).
fn completion_context() -> u32 {
    support::env_or("DCGGUF_MEMCAP_CTX", 256u32)
}

/// llama-perplexity's evaluated tokens: `calculating perplexity over 8 chunks, n_ctx=256`.
fn perplexity_tokens(stderr: &str) -> Option<f64> {
    let l = stderr.lines().find_map(|l| {
        l.split_once("calculating perplexity over ")
            .map(|(_, rest)| rest)
    })?;
    let (chunks, rest) = l.split_once(" chunks, n_ctx=")?;
    let ctx = rest.split(',').next()?;
    Some(chunks.trim().parse::<f64>().ok()? * ctx.trim().parse::<f64>().ok()?)
}

/// What a run printed that must be plain mmap's: the text or embeddings (stdout), or
/// llama-perplexity's per-chunk values (stdout; without its ETA line, which is a time) and
/// final estimate (stderr).
fn output_of(m: &Model, r: &Run) -> String {
    match m.workload {
        Workload::Completion
        | Workload::Embedding { .. }
        | Workload::PythonCompletion
        | Workload::PythonEmbedding { .. } => r.stdout.clone(),
        Workload::Perplexity { .. } => {
            let chunks = r.stdout.lines().filter(|l| l.starts_with('['));
            let last = r
                .stderr
                .lines()
                .find_map(|l| l.split_once("Final estimate: ").map(|(_, e)| e));
            chunks.chain(last).collect::<Vec<_>>().join("\n")
        }
    }
}

/// llama.cpp's "tokens per second" of its timing line `key` ("prompt eval time" or
/// "eval time"): `... eval time = 18.2 ms / 64 tokens (0.28 ms per token, 3516.5 tokens per
/// second)`.
fn tokens_per_second(stderr: &str, key: &str) -> Option<f64> {
    stderr.lines().rev().find_map(|l| {
        let at = l.find(key)?;
        if key == "eval time" && l[..at].ends_with("prompt ") {
            return None;
        }
        let before = &l[..l.find("tokens per second")?];
        before.rsplit([',', '(']).next()?.trim().parse().ok()
    })
}

fn speeds(m: &Model, r: &Run) -> Vec<Option<f64>> {
    if r.status != Status::Ok {
        return vec![None; m.metrics().len()];
    }
    match m.workload {
        Workload::Completion | Workload::PythonCompletion => vec![
            tokens_per_second(&r.stderr, "prompt eval time"),
            tokens_per_second(&r.stderr, "eval time"),
        ],
        Workload::Embedding { n, .. } | Workload::PythonEmbedding { n, .. } => {
            vec![Some(n as f64 / r.wall)]
        }
        Workload::Perplexity { .. } => vec![perplexity_tokens(&r.stderr).map(|t| t / r.wall)],
    }
}

/// One point of the ladder: a setup at one cap.
#[derive(Clone)]
struct Point {
    status: Status,
    /// Median over the runs, per metric.
    speeds: Vec<Option<f64>>,
    /// Each run's speeds, in the order they ran (a cap's runs go round the setups, so run
    /// `r` of two setups ran next to each other); empty for a point not run.
    run_speeds: Vec<Vec<Option<f64>>>,
    /// The same setup's uncapped run in each of those rounds, its speeds ([`run_in_turn`]):
    /// what the knee compares each run with; empty where none ran.
    partner_speeds: Vec<Vec<Option<f64>>>,
    peak: Option<u64>,
    wall: f64,
    oom_kills: u64,
    limit_hits: u64,
    identical: Option<Identity>,
}

/// A run's output against the references (plain mmap without a cap, and the same without
/// weight repacking).
#[derive(Clone, Copy, PartialEq)]
enum Identity {
    Identical,
    /// Differs from plain mmap, is that of plain mmap `--no-repack`.
    NoRepack,
    Differs,
}

impl Identity {
    fn text(self) -> &'static str {
        match self {
            Identity::Identical => "yes",
            Identity::NoRepack => "DIFFERS (= plain --no-repack)",
            Identity::Differs => "DIFFERS",
        }
    }
}

/// The outputs every run is compared with.
struct Refs {
    plain: String,
    no_repack: String,
}

/// What every run needs.
struct Ctx {
    parent: cgroup::Parent,
    llama: Llama,
    /// Runs per point.
    runs: usize,
    /// Runs per point at most, where the runs leave a target's question open
    /// ([`open_question`]).
    max_runs: usize,
    /// The "never slower" allowance.
    noise: f64,
    /// Whether a setup whose knee counts runs uncapped as well in each round of a cap
    /// (DCGGUF_MEMCAP_PAIR, default 1).
    pair: bool,
}

/// Runs one point `cx.runs` times, or up to its first failure: median speeds and wall,
/// highest peak, the first failure.
fn measure(
    cx: &Ctx,
    m: &Model,
    s: &Setup,
    cap: Option<u64>,
    timeout: Duration,
    refs: Option<&Refs>,
) -> (Point, String) {
    let mut all = Vec::new();
    // Up to the first failure, which decides the point.
    while all.len() < cx.runs && all.last().is_none_or(|r: &Run| r.status == Status::Ok) {
        all.push(run_capped(
            &cx.parent,
            command(&cx.llama, m, s),
            cap,
            timeout,
        ));
    }
    summarize(m, s, all, refs)
}

/// Runs several setups at one cap `cx.runs` times each, in turn (one run of each, then the
/// next round), so that whatever else the machine is doing meanwhile falls on every setup
/// alike, and a round's runs can be compared pairwise ([`paired_ratios`]); then more rounds,
/// up to `cx.max_runs`, while a target's question at this cap is still open
/// ([`open_question`]; `bases`: each setup's uncapped speed of the knee metric, where its
/// knee counts, none without a cap). Each setup's runs, and beside them its uncapped
/// partners: with `cx.pair`, a setup whose knee counts runs without the cap as well in each
/// round, right before or after its capped run (by turns), which the knee compares that run
/// with ([`support::of_uncapped`]); empty for the others.
fn run_in_turn(
    cx: &Ctx,
    m: &Model,
    setups: &[(&Setup, Duration)],
    cap: Option<u64>,
    bases: &[Option<f64>],
) -> (Vec<Vec<Run>>, Vec<Vec<Run>>) {
    let mut runs: Vec<Vec<Run>> = setups.iter().map(|_| Vec::new()).collect();
    let mut partners: Vec<Vec<Run>> = setups.iter().map(|_| Vec::new()).collect();
    let paired = |i: usize| cx.pair && cap.is_some() && bases.get(i).copied().flatten().is_some();
    for round in 0.. {
        if round >= cx.runs {
            if round >= cx.max_runs {
                break;
            }
            match open_question(m, setups, &runs, &partners, bases, cx.noise) {
                Some(why) => eprintln!(
                    "memcap:   round {} of at most {}: {why}",
                    round + 1,
                    cx.max_runs
                ),
                None => break,
            }
        }
        // Each round starts one setup later: a place in the round (first after the cap
        // changed, right after the setup that freed the most memory) falls on every setup
        // alike, not always on the same one.
        for k in 0..setups.len() {
            let i = (round + k) % setups.len();
            let (s, timeout) = setups[i];
            // A setup that failed at this cap has failed there (the first failure wins): no
            // more runs of it, each of which could take the whole timeout again.
            if runs[i].iter().any(|r| r.status != Status::Ok) {
                continue;
            }
            // The partner runs first in every other round, so that neither side of the
            // pair always follows the other setups' runs.
            let partner_first = paired(i) && round % 2 == 1;
            let run_at = |cap| run_capped(&cx.parent, command(&cx.llama, m, s), cap, timeout);
            if partner_first {
                partners[i].push(run_at(None));
            }
            let capped = run_at(cap);
            let failed = capped.status != Status::Ok;
            runs[i].push(capped);
            if paired(i) && !partner_first && !failed {
                partners[i].push(run_at(None));
            }
        }
    }
    (runs, partners)
}

/// Every run's speed of metric `mi`; None where a run has none (it failed).
fn run_values(m: &Model, runs: &[Run], mi: usize) -> Option<Vec<f64>> {
    runs.iter().map(|r| speeds(m, r)[mi]).collect()
}

/// A question of the targets that the runs made so far at one cap leave open, in words:
/// a DC setup's speed over plain mmap's (paired by round) whose interval holds 1 - noise
/// (never slower), or a setup's speed whose interval holds 90% of its uncapped speed (its
/// knee; over its uncapped partner runs where it has them, [`support::of_uncapped`]). None
/// when every question is settled, one way or the other, or a run failed. Settled questions
/// stop the rounds whichever way they went, so more rounds do not favour one answer.
fn open_question(
    m: &Model,
    setups: &[(&Setup, Duration)],
    runs: &[Vec<Run>],
    partners: &[Vec<Run>],
    bases: &[Option<f64>],
    noise: f64,
) -> Option<String> {
    let plain = setups
        .iter()
        .position(|(s, _)| s.key == SETUPS[PLAIN_MMAP].key)?;
    for (i, (s, _)) in setups.iter().enumerate() {
        for (mi, metric) in m.metrics().iter().enumerate().filter(|_| s.dc) {
            let (Some(d), Some(p)) = (run_values(m, &runs[i], mi), run_values(m, &runs[plain], mi))
            else {
                continue;
            };
            let ratios: Vec<f64> = d.iter().zip(&p).map(|(d, p)| d / p).collect();
            if side(&ratios, 1.0 - noise) == Side::Open {
                return Some(format!(
                    "{} over plain mmap, {}: ratios {}",
                    s.label,
                    metric.name(),
                    list(&ratios)
                ));
            }
        }
        let Some(base) = bases.get(i).copied().flatten() else {
            continue;
        };
        let mi = m.metrics().iter().position(|x| *x == m.knee_metric)?;
        let speeds_of =
            |rs: &[Run]| -> Vec<Option<f64>> { rs.iter().map(|r| speeds(m, r)[mi]).collect() };
        if let Some(of_base) =
            of_uncapped(&speeds_of(&runs[i]), &speeds_of(&partners[i]), Some(base))
            && side(&of_base, 0.9) == Side::Open
        {
            return Some(format!(
                "{} knee, {} of its uncapped speed: {}",
                s.label,
                m.knee_metric.name(),
                list(&of_base)
            ));
        }
    }
    None
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One point from its runs: median speeds and wall, highest peak, the first failure; and the
/// first run's output.
fn summarize(m: &Model, s: &Setup, all: Vec<Run>, refs: Option<&Refs>) -> (Point, String) {
    let status = all
        .iter()
        .map(|r| r.status.clone())
        .find(|s| *s != Status::Ok)
        .unwrap_or(Status::Ok);
    let per_run: Vec<Vec<Option<f64>>> = all.iter().map(|r| speeds(m, r)).collect();
    // No speed for a point where any run failed: the point counts as failed.
    let speeds = (0..m.metrics().len())
        .map(|i| {
            (status == Status::Ok)
                .then(|| support::median(per_run.iter().filter_map(|v| v[i]).collect()))
                .flatten()
        })
        .collect();
    let identical = (status == Status::Ok)
        .then(|| {
            refs.map(|want| {
                if all.iter().all(|r| output_of(m, r) == want.plain) {
                    Identity::Identical
                } else if all.iter().all(|r| output_of(m, r) == want.no_repack) {
                    Identity::NoRepack
                } else {
                    Identity::Differs
                }
            })
        })
        .flatten();
    if let Status::Failed(_) = status {
        let tail: String = all[0]
            .stderr
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join(" | ");
        eprintln!("memcap: {} {} failed: {tail}", m.name, s.label);
    }
    let point = Point {
        status,
        speeds,
        run_speeds: per_run,
        partner_speeds: Vec::new(),
        peak: all.iter().filter_map(|r| r.usage.peak).max(),
        wall: support::median(all.iter().map(|r| r.wall).collect()).unwrap_or(f64::NAN),
        oom_kills: all.iter().map(|r| r.usage.oom_kills).sum(),
        limit_hits: all.iter().map(|r| r.usage.limit_hits).max().unwrap_or(0),
        identical,
    };
    (point, output_of(m, &all[0]))
}

// ------------------------------------------------------------------------------- models

fn dc_file(src: &Path, name: &str) -> PathBuf {
    llama_support::compressed(src, &[], &work_dir().join(name))
}

/// A model's weight bytes, decoded and as compression saves them.
#[derive(Clone, Copy)]
struct Weights {
    decoded: u64,
    /// Decoded less stored weight bytes.
    saved: u64,
    /// Plain file less DC file bytes.
    file_saved: u64,
}

/// The weight bytes compression saves: tensor bytes of the plain model minus their stored
/// (compressed) bytes in the DC file.
fn weight_bytes_saved(dc: &Path) -> (u64, u64) {
    let f = DcFile::open(dc).unwrap_or_else(|e| panic!("{}: {e}", dc.display()));
    let raw: u64 = (0..f.tensor_count()).map(|i| f.tensor_info(i).nbytes).sum();
    let stored: u64 = f.index.tensors.iter().map(|t| t.stored_bytes()).sum();
    (raw, raw.saturating_sub(stored))
}

fn models(wanted: &[String]) -> Vec<Model> {
    let want = |k: &str| wanted.iter().any(|w| w == k);
    let mut v = Vec::new();
    // SmolLM2 under each host: llama-completion, llama-perplexity, llama-cpp-python (its
    // DCGGUF_MEMCAP_MODELS key, what its name adds, its workload and knee metric).
    type Host = (&'static str, &'static str, fn() -> Workload, Metric);
    let smollm2_hosts: [Host; 3] = [
        ("smollm2", "", || Workload::Completion, Metric::Gen),
        (
            "smollm2-ppl",
            ", llama-perplexity",
            || Workload::Perplexity {
                file: llama_support::eval_sentences_file(),
            },
            Metric::Ppl,
        ),
        (
            "smollm2-py",
            ", llama-cpp-python",
            || Workload::PythonCompletion,
            Metric::Gen,
        ),
    ];
    for (key, host, workload, knee_metric) in smollm2_hosts {
        let workload = workload();
        if !want(key) {
            continue;
        }
        let Some(p) = llama_support::smollm2(&format!("memcap bench{host}")) else {
            continue;
        };
        if workload.in_python() && !python_available("SmolLM2 through llama-cpp-python") {
            continue;
        }
        v.push(Model {
            name: format!("SmolLM2-135M Q4_1{host}"),
            dc: dc_file(&p, "smollm2.dc.gguf"),
            plain: p,
            workload,
            knee_metric,
        });
    }
    if want("minilm-bf16-py")
        && let Some(p) = llama_support::shared_model("memcap bench", "all-MiniLM-L6-v2-bf16.gguf")
        && python_available("MiniLM through llama-cpp-python")
    {
        v.push(Model {
            name: "MiniLM-L6 BF16, llama-cpp-python".into(),
            dc: dc_file(&p, "minilm-bf16.dc.gguf"),
            plain: p,
            workload: Workload::python_embedding_of_sentences(),
            knee_metric: Metric::Emb,
        });
    }
    for t in ["bf16", "f16"] {
        let key = if t == "bf16" {
            "minilm-bf16"
        } else {
            "minilm-f16"
        };
        if !want(key) {
            continue;
        }
        let name = format!("all-MiniLM-L6-v2-{t}.gguf");
        if let Some(p) = llama_support::shared_model("memcap bench", &name) {
            v.push(Model {
                name: format!("MiniLM-L6 {}", t.to_uppercase()),
                dc: dc_file(&p, &format!("minilm-{t}.dc.gguf")),
                plain: p,
                workload: Workload::embedding_of_sentences(),
                knee_metric: Metric::Emb,
            });
        }
    }
    if let Some(m) = own_model() {
        v.push(m);
    }
    if want("large")
        && let Some(p) = llama_support::large_model("memcap bench, large model")
    {
        v.push(Model {
            name: "Qwen2.5-Coder-1.5B Q4_K_M".into(),
            dc: dc_file(&p, "qwen2.5-coder-1.5b.dc.gguf"),
            plain: p,
            workload: Workload::Completion,
            knee_metric: Metric::Gen,
        });
    }
    v
}

/// Whether llama-cpp-python's venv is there (scripts/build-llama-cpp-python.sh); where not,
/// says that `what` is skipped and why.
fn python_available(what: &str) -> bool {
    match llama_support::llama_cpp_python() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("memcap: {what} skipped: {e}");
            false
        }
    }
}

/// `DCGGUF_MEMCAP_MODEL=PATH`: a plain GGUF of the user's own, under the same ladder, to
/// answer "does my model run under this limit, and how fast?" from runs under the limit. It
/// is compressed beside the bench's own (`target/bench-memcap/<name>.dc.gguf`). The tool:
/// `DCGGUF_MEMCAP_WORKLOAD` (completion, embedding, perplexity, python-completion,
/// python-embedding), else llama-embedding for a
/// model that pools its outputs (`<arch>.pooling_type`: an embedding model), else
/// llama-completion. Embedding and perplexity read the evaluation sentences.
fn own_model() -> Option<Model> {
    let plain = PathBuf::from(std::env::var_os("DCGGUF_MEMCAP_MODEL")?);
    let name = plain
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_else(|| panic!("DCGGUF_MEMCAP_MODEL: {} names no file", plain.display()))
        .to_string();
    let stem = name.strip_suffix(".gguf").unwrap_or(&name);
    if stem.ends_with(".dc") || DcFile::open(&plain).is_ok() {
        panic!(
            "DCGGUF_MEMCAP_MODEL: {} is a DC-GGUF; give the plain GGUF (the bench runs both)",
            plain.display()
        );
    }
    let dc = dc_file(&plain, &format!("own-{stem}.dc.gguf"));
    let f = DcFile::open(&dc).unwrap_or_else(|e| panic!("{}: {e}", dc.display()));
    let pools = f
        .original
        .get("general.architecture")
        .and_then(|a| a.as_str())
        .is_some_and(|a| f.original.get(&format!("{a}.pooling_type")).is_some());
    let kind = std::env::var("DCGGUF_MEMCAP_WORKLOAD")
        .unwrap_or_else(|_| if pools { "embedding" } else { "completion" }.into());
    let (workload, knee_metric) = match kind.trim() {
        "completion" => (Workload::Completion, Metric::Gen),
        "embedding" => (Workload::embedding_of_sentences(), Metric::Emb),
        "perplexity" => (
            Workload::Perplexity {
                file: llama_support::eval_sentences_file(),
            },
            Metric::Ppl,
        ),
        "python-completion" => (Workload::PythonCompletion, Metric::Gen),
        "python-embedding" => (Workload::python_embedding_of_sentences(), Metric::Emb),
        other => {
            panic!(
                "DCGGUF_MEMCAP_WORKLOAD: {other:?} is none of completion, embedding, \
                 perplexity, python-completion, python-embedding"
            )
        }
    };
    Some(Model {
        name: format!("{name} (DCGGUF_MEMCAP_MODEL)"),
        plain,
        dc,
        workload,
        knee_metric,
    })
}

// ------------------------------------------------------------------------------- report

/// A cap of the ladder: None = no cap.
#[derive(Clone, Copy)]
struct Cap {
    /// A share of the plain mmap run's uncapped peak, in percent (fractions allowed: a
    /// model whose compression saves 1% of its footprint needs steps finer than 1%).
    pct: Option<f64>,
    bytes: Option<u64>,
}

impl Cap {
    fn label(&self) -> String {
        match (self.pct, self.bytes) {
            (Some(p), Some(b)) => format!("{p}% ({:.1} MiB)", b as f64 / MIB),
            _ => "no cap".into(),
        }
    }
}

fn mib(b: Option<u64>) -> String {
    b.map_or("?".into(), |b| format!("{:.1}", b as f64 / MIB))
}

/// A point for the table; its run count where it ran more than `runs` rounds.
fn cell(m: &Model, p: &Point, runs: usize) -> String {
    let mut s = match &p.status {
        Status::Ok => {
            let sp: Vec<String> = p
                .speeds
                .iter()
                .map(|v| v.map_or("?".into(), |v| format!("{v:.1}")))
                .collect();
            let unit = if m.metrics()[0] == Metric::Emb {
                "emb/s"
            } else {
                "t/s"
            };
            let n = p.run_speeds.len();
            let more = if n > runs {
                format!(", {n} runs")
            } else {
                String::new()
            };
            format!("{} {unit}, {} MiB{more}", sp.join(" / "), mib(p.peak))
        }
        Status::Skipped(_) => p.status.text(),
        other => format!("{} ({} MiB)", other.text(), mib(p.peak)),
    };
    if let Some(i) = p.identical.filter(|i| *i != Identity::Identical) {
        s.push_str(", ");
        s.push_str(i.text());
    }
    s
}

/// A setup's knee for `metric` ([`support::knee`]): each cap's runs over the uncapped runs
/// of their rounds, or over its uncapped median where it has none
/// ([`support::of_uncapped`]); a failed point loses the speed.
fn knee(caps: &[Cap], points: &[Point], metric: usize) -> Knee {
    let base = points.first().and_then(|p| p.speeds[metric]);
    let of = |v: &[Vec<Option<f64>>]| -> Vec<Option<f64>> { v.iter().map(|r| r[metric]).collect() };
    let ladder: Vec<(u64, Option<Vec<f64>>)> = caps
        .iter()
        .zip(points)
        .skip(1)
        .filter_map(|(c, p)| {
            let of_base = (p.status == Status::Ok)
                .then(|| of_uncapped(&of(&p.run_speeds), &of(&p.partner_speeds), base))
                .flatten();
            Some((c.bytes?, of_base))
        })
        .collect();
    support::knee(&ladder)
}

fn knee_text(k: Knee) -> String {
    let at = |b: u64| format!("{:.1} MiB", b as f64 / MIB);
    match (k.lowest, k.highest) {
        (None, _) => "above the ladder".into(),
        (Some(b), _) if k.below_ladder => format!("<= {}", at(b)),
        (Some(l), Some(h)) if l == h => at(l),
        (Some(l), Some(h)) => format!("{} to {} (open between)", at(l), at(h)),
        (Some(l), None) => format!("{} to above the ladder (open between)", at(l)),
    }
}

fn report(out: &mut String, v: Verdict, what: &str) {
    let tag = match v {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::Unresolved => "UNRESOLVED",
    };
    let line = format!("- [{tag}] {what}");
    println!("{line}");
    out.push_str(&line);
    out.push('\n');
}

fn check(out: &mut String, pass: bool, what: &str) {
    report(out, if pass { Verdict::Pass } else { Verdict::Fail }, what);
}

/// DC's speed over plain mmap's at one point, metric `mi`, round by round (the runs of a
/// round ran one after the other, so a slow spell of this shared machine falls on both).
/// `None` where the points do not have the same rounds, every one with a speed.
fn paired_ratios(dc: &Point, plain: &Point, mi: usize) -> Option<Vec<f64>> {
    if dc.run_speeds.is_empty() || dc.run_speeds.len() != plain.run_speeds.len() {
        return None;
    }
    dc.run_speeds
        .iter()
        .zip(&plain.run_speeds)
        .map(|(d, p)| Some(d[mi]? / p[mi]?))
        .collect()
}

/// "Never slower" for one setup against plain mmap, over every cap and metric.
struct NeverSlower {
    verdict: Verdict,
    /// The lowest median ratio and where.
    worst: Option<(f64, String)>,
    /// Points below the allowance whose median interval lies below it too (or where the
    /// setup failed and plain mmap ran): shown slower.
    slower: Vec<String>,
    /// Points below the allowance that the runs could not settle.
    open: Vec<String>,
}

/// Judges `pts` against `plain`: at each point, the median over the rounds of the speed
/// ratio (of the medians where the rounds do not pair) must reach 1 - noise; a point below
/// counts as slower only where the median's 90% interval ([`support::median_interval`]) lies
/// below it as well (below five rounds, their range: [`support::side`], the rule that
/// stopped the rounds), else it is open (the verdict is then unresolved).
fn never_slower(
    m: &Model,
    caps: &[Cap],
    pts: &[Point],
    plain: &[Point],
    noise: f64,
) -> NeverSlower {
    let allowance = 1.0 - noise;
    let (mut worst, mut slower, mut open) = (None::<(f64, String)>, Vec::new(), Vec::new());
    for (c, (d, p)) in caps.iter().zip(pts.iter().zip(plain)) {
        for (mi, metric) in m.metrics().iter().enumerate() {
            let at = format!("{} at {}", metric.name(), c.label());
            let (median_ratio, ratios) = match (d.speeds[mi], p.speeds[mi]) {
                (Some(dv), Some(pv)) => match paired_ratios(d, p, mi) {
                    Some(r) => (support::median(r.clone()).unwrap_or(dv / pv), r),
                    None => (dv / pv, Vec::new()),
                },
                (None, Some(_)) => {
                    slower.push(format!("{at}: {}", d.status.text()));
                    worst = Some((0.0, at));
                    continue;
                }
                _ => continue,
            };
            if worst.as_ref().is_none_or(|w| median_ratio < w.0) {
                worst = Some((median_ratio, at.clone()));
            }
            if median_ratio >= allowance {
                continue;
            }
            // Settled as the rounds were stopped ([`open_question`]): by the median's
            // interval, or below five rounds by their range.
            let rounds = ratios.len();
            let how = format!(
                "{at}: {median_ratio:.2}x, {}",
                match support::median_interval(&ratios) {
                    Some((lo, hi)) => format!("90% interval {lo:.2}-{hi:.2}x of {rounds} rounds"),
                    None if rounds > 0 => format!(
                        "{rounds} rounds, {}x (too few for an interval: their range stands \
                         in)",
                        list(&ratios)
                    ),
                    None => "runs not paired by round".into(),
                }
            );
            if rounds > 0 && side(&ratios, allowance) == Side::Below {
                slower.push(how);
            } else {
                open.push(how);
            }
        }
    }
    let verdict = if !slower.is_empty() {
        Verdict::Fail
    } else if !open.is_empty() {
        Verdict::Unresolved
    } else {
        Verdict::Pass
    };
    NeverSlower {
        verdict,
        worst,
        slower,
        open,
    }
}

fn checks(
    out: &mut String,
    m: &Model,
    caps: &[Cap],
    grid: &[Vec<Point>],
    weights: Weights,
    noise: f64,
) {
    let plain = &grid[PLAIN_MMAP];
    // DC without a budget: its uncapped peak less the decoded weights is the model's
    // non-weight memory.
    let no_budget = SETUPS
        .iter()
        .position(|s| s.dc && s.budget == Some("0"))
        .expect("a DC setup without a budget");
    let saved = weights.file_saved;
    // The issue's floor: compressed weight bytes + the model's non-weight memory + 10%.
    let compressed = weights.decoded.saturating_sub(weights.saved);
    let bound = lowest_cap_bound(
        grid[no_budget].first().and_then(|p| p.peak),
        weights.decoded,
        compressed,
    );
    let metrics = m.metrics();
    for (si, s) in SETUPS.iter().enumerate().filter(|(_, s)| s.dc) {
        let pts = &grid[si];
        if pts.is_empty() {
            // Not selected (DCGGUF_MEMCAP_SETUPS).
            continue;
        }
        // Killed where plain mmap ran. A timeout counts as not running too: a run past its
        // timeout is thrashing, and left alone it may end killed (SmolLM2, DC without a
        // budget at 90% of plain mmap's peak, run by hand: it thrashed through its load for
        // 12 s, then was OOM-killed).
        let bad: Vec<String> = caps
            .iter()
            .zip(pts.iter().zip(plain))
            .filter(|(_, (d, p))| d.status != Status::Ok && p.status == Status::Ok)
            .map(|(c, (d, _))| format!("{} at {}", d.status.text(), c.label()))
            .collect();
        check(
            out,
            bad.is_empty(),
            &format!(
                "{}: never killed (nor timed out) where plain mmap runs{}",
                s.label,
                if bad.is_empty() {
                    String::new()
                } else {
                    format!(": {}", bad.join(", "))
                }
            ),
        );
        // Never slower than plain mmap, beside what the bench resolves: plain mmap's second
        // run in the same rounds, judged the same way.
        let resolution = if grid[PLAIN_AGAIN].is_empty() {
            String::new()
        } else {
            let again = never_slower(m, caps, &grid[PLAIN_AGAIN], plain, noise);
            format!(
                "; plain mmap against itself in the same rounds: worst {}, {} point(s) below the allowance ({} of them shown slower)",
                again
                    .worst
                    .map_or("n/a".into(), |(r, at)| format!("{r:.2}x ({at})")),
                again.slower.len() + again.open.len(),
                again.slower.len()
            )
        };
        let judged = never_slower(m, caps, pts, plain, noise);
        let mut detail = String::new();
        if !judged.slower.is_empty() {
            write!(detail, "; slower: {}", judged.slower.join("; ")).unwrap();
        }
        if !judged.open.is_empty() {
            write!(
                detail,
                "; not settled by the runs made: {}",
                judged.open.join("; ")
            )
            .unwrap();
        }
        report(
            out,
            if judged.worst.is_none() {
                Verdict::Fail
            } else {
                judged.verdict
            },
            &format!(
                "{}: never slower than plain mmap (worst {}, median of the rounds' ratios; allowance {:.0}% for noise{detail}{resolution})",
                s.label,
                judged
                    .worst
                    .as_ref()
                    .map_or("n/a: no point to compare".into(), |(r, at)| format!(
                        "{r:.2}x: {at}"
                    )),
                noise * 100.0
            ),
        );
        // Uncapped peak charge.
        let (d, p) = (pts[0].peak, plain[0].peak);
        check(
            out,
            matches!((d, p), (Some(d), Some(p)) if d <= p),
            &format!(
                "{}: uncapped peak {} MiB <= plain mmap {} MiB",
                s.label,
                mib(d),
                mib(p)
            ),
        );
        // Knee at least 80% of what compression saves below plain mmap's. The file's saving
        // (the issue's 8.6 MiB for SmolLM2 and 12 MiB for MiniLM BF16 are 80% of those);
        // the weights' alone is a little less (the header compresses too).
        let mi = metrics.iter().position(|x| *x == m.knee_metric).unwrap();
        let (dk, pk) = (knee(caps, pts, mi), knee(caps, plain, mi));
        let need = saved as f64 * 0.8;
        let top_cap = caps.get(1).and_then(|c| c.bytes).unwrap_or(0);
        let (verdict, gaps) = knee_gap(dk, pk, top_cap, need);
        let gap = |b: f64| {
            if b.is_finite() {
                format!("{:.1} MiB", b / MIB)
            } else if b < 0.0 {
                "-inf (its knee may lie above the ladder)".into()
            } else {
                "+inf (plain mmap's knee may lie above the ladder)".into()
            }
        };
        let gap = match gaps {
            (lo, hi) if (hi - lo).abs() < 0.05 * MIB => gap(lo),
            (lo, hi) => format!("{} to {}", gap(lo), gap(hi)),
        };
        report(
            out,
            verdict,
            &format!(
                "{}: {} knee {} vs plain mmap {}: {gap} lower, target >= {:.1} MiB (80% of the {:.1} MiB compression saves on the file)",
                s.label,
                m.knee_metric.name(),
                knee_text(dk),
                knee_text(pk),
                need / MIB,
                saved as f64 / MIB
            ),
        );
        // The lowest cap it still ran at (the ladder's bottom may not be its lowest).
        let lowest = caps
            .iter()
            .zip(pts)
            .skip(1)
            .filter(|(_, p)| p.status == Status::Ok)
            .filter_map(|(c, _)| c.bytes)
            .min();
        let (verdict, what) = match (lowest, bound) {
            (_, None) => (
                Verdict::Unresolved,
                "not measured: the bound needs the `no-budget` setup's uncapped run".to_string(),
            ),
            (None, Some(_)) => (Verdict::Fail, "runs at no cap of the ladder".into()),
            (Some(l), Some((f, _))) => (
                if l as f64 <= f {
                    Verdict::Pass
                } else {
                    Verdict::Fail
                },
                format!("runs at {:.1} MiB", l as f64 / MIB),
            ),
        };
        report(
            out,
            verdict,
            &format!(
                "{}: lowest cap it runs at <= compressed weights + non-weight memory + 10% ({}): {what}",
                s.label,
                bound.map_or("?".into(), |(f, non_weight)| format!(
                    "{:.1} MiB = 1.1 x ({:.1} + {:.1})",
                    f / MIB,
                    compressed as f64 / MIB,
                    non_weight as f64 / MIB,
                )),
            ),
        );
    }
}

/// A CSV field, quoted (setup labels hold commas).
fn csv_field(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn plot(csv: &Path, png: &Path) -> Result<(), String> {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/plot-memcap.py");
    let o = Command::new(&py)
        .arg(&script)
        .arg(csv)
        .arg(png)
        .output()
        .map_err(|e| format!("cannot run {py}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        llama_support::skip(
            "memcap bench",
            "needs root: it creates memory cgroups and drops the page cache (sudo cargo bench --bench memcap)",
        );
        return;
    }
    let parent = match cgroup::detect() {
        Ok(p) => p,
        Err(why) => {
            llama_support::skip("memcap bench", &format!("no usable memory cgroup: {why}"));
            return;
        }
    };
    if let Err(why) = cgroup::drop_caches() {
        llama_support::skip("memcap bench", &why);
        return;
    }
    let Some(l) = llama_support::llama("memcap bench") else {
        return;
    };
    let steps: Vec<f64> = std::env::var("DCGGUF_MEMCAP_STEPS")
        .unwrap_or_else(|_| "100,95,90,85,80,70,60,50".into())
        .split(',')
        .map(|s| {
            s.trim()
                .trim_end_matches('%')
                .parse::<f64>()
                .ok()
                .filter(|p| p.is_finite() && *p > 0.0)
                .unwrap_or_else(|| panic!("DCGGUF_MEMCAP_STEPS: {s:?} is not a percentage"))
        })
        .collect();
    let runs: usize = support::env_or("DCGGUF_MEMCAP_RUNS", 1).max(1);
    // More rounds where a target's question stays open (open_question): by default up to
    // eight, the fewest whose median interval leaves out the slowest and the fastest run (five
    // to seven give one only from the smallest to the largest), so one stray run does not
    // keep a question open.
    let max_runs: usize = support::env_or("DCGGUF_MEMCAP_MAX_RUNS", runs.max(8)).max(runs);
    let timeout_max: f64 = support::env_or("DCGGUF_MEMCAP_TIMEOUT", 120.0);
    // A model of the user's own runs alone unless DCGGUF_MEMCAP_MODELS asks for others too.
    let default_models = if std::env::var_os("DCGGUF_MEMCAP_MODEL").is_some() {
        ""
    } else {
        "smollm2,smollm2-ppl,minilm-bf16,minilm-f16"
    };
    let mut wanted: Vec<String> = std::env::var("DCGGUF_MEMCAP_MODELS")
        .unwrap_or_else(|_| default_models.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    if std::env::var("DCGGUF_MEMCAP_LARGE").is_ok_and(|v| v == "1") {
        wanted.push("large".into());
    }
    // Build the preload library and the log shim before the first timed run.
    let _ = preload(&l, true);
    let cx = Ctx {
        parent,
        llama: l,
        runs,
        max_runs,
        noise: support::env_or("DCGGUF_MEMCAP_NOISE", 0.05),
        pair: support::env_or("DCGGUF_MEMCAP_PAIR", 1u8) == 1,
    };

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut md = String::new();
    let head = format!(
        "memcap bench: cgroup {:?} under {}, stock llama.cpp tools (llama-cpp-python for the `-py` models), 2 threads, llama-completion's context {} tokens, page cache dropped before each run and freed memory left to settle, {runs} run(s) per point, load average {}\n",
        cx.parent.version,
        cx.parent.dir.display(),
        completion_context(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    print!("{head}");
    md.push_str(&head);
    let mut csv = String::from(
        "model,setup,cap_pct,cap_bytes,status,prompt_tps,gen_tps,emb_per_s,ppl_tps,peak_bytes,wall_s,oom_kills,limit_hits,identical,runs\n",
    );

    for m in models(&wanted) {
        let (weights, weights_saved) = weight_bytes_saved(&m.dc);
        let len = |p: &Path| std::fs::metadata(p).map_or(0, |md| md.len());
        let saved = len(&m.plain).saturating_sub(len(&m.dc));
        eprintln!("memcap: {} ...", m.name);
        let mut grid: Vec<Vec<Point>> = vec![Vec::new(); SETUPS.len()];
        // Without a cap first, every setup in turn. The reference is plain mmap there: its
        // peak sets the ladder, its output is what every other run must print.
        let uncapped: Vec<(&Setup, Duration)> = SETUPS
            .iter()
            .filter(|s| selected(&m, s))
            .map(|s| (s, Duration::from_secs_f64(timeout_max)))
            .collect();
        let (mut uncapped_runs, _) = run_in_turn(&cx, &m, &uncapped, None, &[]);
        let plain_at = uncapped
            .iter()
            .position(|(s, _)| s.key == SETUPS[PLAIN_MMAP].key)
            .expect("plain mmap always runs");
        let (mut p0, reference) = summarize(
            &m,
            &SETUPS[PLAIN_MMAP],
            std::mem::take(&mut uncapped_runs[plain_at]),
            None,
        );
        p0.identical = Some(Identity::Identical);
        if p0.status != Status::Ok || p0.peak.is_none() {
            println!(
                "\n{}: plain mmap without a cap did not run ({}; peak {}): skipped\n",
                m.name,
                p0.status.text(),
                mib(p0.peak)
            );
            continue;
        }
        let (p1, no_repack) = measure(
            &cx,
            &m,
            &PLAIN_NO_REPACK,
            None,
            Duration::from_secs_f64(timeout_max),
            None,
        );
        if p1.status != Status::Ok {
            eprintln!("memcap: {} --no-repack: {}", m.name, p1.status.text());
        }
        let refs = Refs {
            plain: reference,
            no_repack,
        };
        let top = p0.peak.unwrap();
        let mut caps = vec![Cap {
            pct: None,
            bytes: None,
        }];
        caps.extend(steps.iter().map(|&pct| Cap {
            pct: Some(pct),
            bytes: Some((top as f64 * pct / 100.0) as u64 / 4096 * 4096),
        }));
        // Cap by cap, every setup at it in turn: the setups a target compares run close in
        // time, on this shared machine's same weather.
        let mut timeout = vec![Duration::from_secs_f64(timeout_max); SETUPS.len()];
        let mut stop: Vec<Option<Status>> = vec![None; SETUPS.len()];
        for (ci, c) in caps.iter().enumerate() {
            // This cap's points, their runs taken in turn (run_in_turn), and their uncapped
            // partners; without a cap, the runs made above.
            let (to_run, runs, partners) = if ci == 0 {
                let none = uncapped.iter().map(|_| Vec::new()).collect();
                (uncapped.clone(), std::mem::take(&mut uncapped_runs), none)
            } else {
                let to_run: Vec<(&Setup, Duration)> = SETUPS
                    .iter()
                    .enumerate()
                    .filter(|&(si, s)| selected(&m, s) && stop[si].is_none())
                    .map(|(si, s)| (s, timeout[si]))
                    .collect();
                // The uncapped speed each knee is measured from: plain mmap's and DC's (not
                // plain mmap's second run, which no knee target reads).
                let knee_at = m.metrics().iter().position(|x| *x == m.knee_metric);
                let bases: Vec<Option<f64>> = to_run
                    .iter()
                    .map(|(s, _)| {
                        let si = SETUPS.iter().position(|x| x.key == s.key)?;
                        if si == PLAIN_AGAIN {
                            return None;
                        }
                        grid[si].first()?.speeds[knee_at?]
                    })
                    .collect();
                let (runs, partners) = run_in_turn(&cx, &m, &to_run, c.bytes, &bases);
                (to_run, runs, partners)
            };
            let mut measured = to_run.iter().zip(runs.into_iter().zip(partners)).map(
                |((s, _), (all, partners))| {
                    if s.key == SETUPS[PLAIN_MMAP].key && ci == 0 {
                        return p0.clone();
                    }
                    let mut p = summarize(&m, s, all, Some(&refs)).0;
                    // The partners' outputs are held to the same references as the point's.
                    let want = match p.identical {
                        Some(Identity::Identical) => Some(&refs.plain),
                        Some(Identity::NoRepack) => Some(&refs.no_repack),
                        _ => None,
                    };
                    if want.is_some_and(|w| partners.iter().any(|r| output_of(&m, r) != *w)) {
                        p.identical = Some(Identity::Differs);
                    }
                    p.partner_speeds = partners.iter().map(|r| speeds(&m, r)).collect();
                    p
                },
            );
            for (si, s) in SETUPS.iter().enumerate() {
                if !selected(&m, s) {
                    continue;
                }
                let (timeout, stop) = (&mut timeout[si], &mut stop[si]);
                let point = if let Some(st) = stop.as_ref() {
                    Point {
                        status: Status::Skipped(Box::new(st.clone())),
                        speeds: vec![None; m.metrics().len()],
                        run_speeds: Vec::new(),
                        partner_speeds: Vec::new(),
                        peak: None,
                        wall: f64::NAN,
                        oom_kills: 0,
                        limit_hits: 0,
                        identical: None,
                    }
                } else {
                    let mut p = measured.next().expect("a point for every setup run");
                    if p.status == Status::Timeout {
                        // Once more: on this shared machine a run has stalled at a cap it
                        // fits in (plain mmap at 100% of its own peak, 48 MiB charged after
                        // 10.8 s), and a timeout ends the setup's ladder.
                        eprintln!("memcap:   {} at {}: timeout, once more", s.label, c.label());
                        p = measure(&cx, &m, s, c.bytes, *timeout, Some(&refs)).0;
                        // Its runs are in no round with plain mmap's, nor with uncapped
                        // partners: compared by medians.
                        p.run_speeds.clear();
                    }
                    p
                };
                eprintln!(
                    "memcap:   {:<22} {:<20} {}",
                    s.label,
                    c.label(),
                    cell(&m, &point, cx.runs)
                );
                if ci == 0 && point.status == Status::Ok {
                    *timeout = Duration::from_secs_f64((5.0 * point.wall).clamp(30.0, timeout_max));
                }
                if matches!(point.status, Status::Killed | Status::Timeout) {
                    *stop = Some(point.status.clone());
                }
                let sp = |mt: Metric| {
                    m.metrics()
                        .iter()
                        .position(|x| *x == mt)
                        .and_then(|i| point.speeds[i])
                        .map_or(String::new(), |v| format!("{v:.3}"))
                };
                writeln!(
                    csv,
                    "{},{},{},{},{},{},{},{},{},{},{:.3},{},{},{},{}",
                    csv_field(&m.name),
                    csv_field(s.label),
                    c.pct.map_or("none".into(), |p| p.to_string()),
                    c.bytes.map_or(String::new(), |b| b.to_string()),
                    point.status.text(),
                    sp(Metric::Prompt),
                    sp(Metric::Gen),
                    sp(Metric::Emb),
                    sp(Metric::Ppl),
                    point.peak.map_or(String::new(), |b| b.to_string()),
                    point.wall,
                    point.oom_kills,
                    point.limit_hits,
                    point.identical.map_or("", Identity::text),
                    point.run_speeds.len()
                )
                .unwrap();
                grid[si].push(point);
            }
        }

        // The table.
        let metric_names: Vec<&str> = m.metrics().iter().map(|x| x.name()).collect();
        let mut t = format!(
            "\n### {} ({:.1} MiB of weights; compression saves {:.1} MiB of the file, {:.1} MiB of the weights; cells: {}, peak charged MiB)\n\n",
            m.name,
            weights as f64 / MIB,
            saved as f64 / MIB,
            weights_saved as f64 / MIB,
            metric_names.join(" / ")
        );
        t.push_str("| setup |");
        for c in &caps {
            write!(t, " {} |", c.label()).unwrap();
        }
        t.push_str("\n|---|");
        t.push_str(&"---|".repeat(caps.len()));
        t.push('\n');
        for (si, s) in SETUPS
            .iter()
            .enumerate()
            .filter(|(si, _)| !grid[*si].is_empty())
        {
            write!(t, "| {} |", s.label).unwrap();
            for p in &grid[si] {
                write!(t, " {} |", cell(&m, p, cx.runs)).unwrap();
            }
            t.push('\n');
        }
        t.push_str(
            "\n`killed*` / `timeout*`: not run, killed or timed out at a higher cap. DIFFERS: output not identical to plain mmap without a cap; `(= plain --no-repack)`: identical to it without weight repacking, which budgeted loads turn off.\n\nKnee (lowest cap down to which every cap keeps >= 90% of the setup's own uncapped speed):\n\n",
        );
        for (si, s) in SETUPS
            .iter()
            .enumerate()
            .filter(|(si, _)| !grid[*si].is_empty())
        {
            let ks: Vec<String> = (0..m.metrics().len())
                .map(|mi| {
                    format!(
                        "{} {}",
                        m.metrics()[mi].name(),
                        knee_text(knee(&caps, &grid[si], mi))
                    )
                })
                .collect();
            // The uncapped runs paired into the capped rounds, which the knee divides by: how
            // far the machine's speed moved while the ladder ran.
            let mi = m
                .metrics()
                .iter()
                .position(|x| *x == m.knee_metric)
                .unwrap();
            let partners: Vec<f64> = grid[si]
                .iter()
                .flat_map(|p| p.partner_speeds.iter().filter_map(|r| r[mi]))
                .collect();
            let drift = match (support::median(partners.clone()), grid[si][0].speeds[mi]) {
                (Some(med), Some(first)) => {
                    let (lo, hi) = partners
                        .iter()
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                            (lo.min(x), hi.max(x))
                        });
                    format!(
                        " (over the uncapped run of each round: {} of them, {} median {med:.1}, {lo:.1}-{hi:.1}; the no-cap cell's {first:.1})",
                        partners.len(),
                        m.knee_metric.name()
                    )
                }
                _ => String::new(),
            };
            writeln!(t, "- {}: {}{drift}", s.label, ks.join(", ")).unwrap();
        }
        t.push_str("\nTargets (issue 13; printed, not asserted):\n\n");
        print!("{t}");
        md.push_str(&t);
        let w = Weights {
            decoded: weights,
            saved: weights_saved,
            file_saved: saved,
        };
        checks(&mut md, &m, &caps, &grid, w, cx.noise);
    }

    let settled = settled_line();
    print!("\n{settled}");
    md.push_str(&format!("\n{settled}"));
    let dir = work_dir();
    let (csv_path, png, md_path) = (
        dir.join("memcap.csv"),
        dir.join("memcap.png"),
        dir.join("memcap.md"),
    );
    std::fs::write(&csv_path, csv).unwrap();
    std::fs::write(&md_path, &md).unwrap();
    println!("\nwrote {} and {}", md_path.display(), csv_path.display());
    match plot(&csv_path, &png) {
        Ok(()) => println!("wrote {}", png.display()),
        Err(why) => println!(
            "\n!!!!! PLOT NOT MADE: {why}\n(install matplotlib: pip install -r scripts/requirements.txt; then python3 scripts/plot-memcap.py {} {})",
            csv_path.display(),
            png.display()
        ),
    }
}
