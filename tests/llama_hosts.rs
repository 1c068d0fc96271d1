//! Hosts beyond the one-shot tools: llama-server (its OpenAI-compatible `/v1/completions`) and
//! llama.cpp's RPC backend (two `ggml-rpc-server` processes on loopback, the layers offloaded
//! to them with `--rpc ... -ngl 99`). Each runs the stock binary on the plain SmolLM2 and on
//! its DC-GGUF under `LD_PRELOAD=libdcgguf_preload.so`, greedy, and the generated text must be
//! the same (real llama.cpp, no mocks; see tests/llama_support for the ignored policy).
//!
//! Every child process is owned by a [`Proc`], which kills it when dropped (also when an
//! assertion fails) and shows its captured output in failure messages.

mod llama_support;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use llama_support::*;

const PROMPT: &str = "The capital of France is";
/// Tokens to generate: enough for a sentence, few enough for 2 busy cores.
const N_PREDICT: u32 = 24;
/// Loading SmolLM2 takes about a second; the bound is for a machine shared with other jobs.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A child process that is killed and reaped when dropped; stdout and stderr go to files
/// under the test temporary directory.
struct Proc {
    tag: String,
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, tag: &str) -> Proc {
        let dir = tmp_dir();
        let (out, err) = (
            dir.join(format!("{tag}.out")),
            dir.join(format!("{tag}.err")),
        );
        let child = cmd
            // cargo's LD_LIBRARY_PATH would beat the rpath (see llama_support::run)
            .env_remove("LD_LIBRARY_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::from(File::create(&out).unwrap()))
            .stderr(Stdio::from(File::create(&err).unwrap()))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        Proc {
            tag: tag.to_string(),
            child,
            out,
            err,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Both captured streams, for failure messages.
    fn log(&self) -> String {
        format!(
            "--- {} stdout:\n{}\n--- {} stderr:\n{}",
            self.tag,
            self.stdout(),
            self.tag,
            self.stderr()
        )
    }

    /// Panics (showing the log) when the process has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited early ({status}):\n{}", self.tag, self.log());
        }
    }

    /// Waits for the process to exit by itself; kills it after `limit`.
    fn finish(&mut self, limit: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if t0.elapsed() > limit {
                panic!(
                    "{} still running after {limit:?}; killed:\n{}",
                    self.tag,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Servers never exit by themselves; SIGKILL also covers a hung tool. Errors mean it
        // is already gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on now (the kernel's pick for an ephemeral bind). Another
/// process could take it before our child binds it; the child then fails to start, which
/// the readiness wait reports with its log.
fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request to 127.0.0.1:`port` with `Connection: close`; returns the status
/// code and the body (de-chunked if the server chose chunked transfer encoding).
fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    // Generation of 24 tokens takes well under a second; the bound is for a busy machine.
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let text = String::from_utf8(raw).map_err(|_| bad("response is not UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok((status, body.to_string()));
    }
    let (mut rest, mut out) = (body, String::new());
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| bad("truncated chunk size"))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
            .map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            return Ok((status, out));
        }
        let chunk = after.get(..size).ok_or_else(|| bad("truncated chunk"))?;
        out.push_str(chunk);
        rest = after[size..]
            .strip_prefix("\r\n")
            .ok_or_else(|| bad("no CRLF after chunk"))?;
    }
}

/// Waits until `proc` accepts TCP connections on `port` (it must stay alive meanwhile).
fn wait_listening(proc: &mut Proc, port: u16) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        proc.assert_running();
        assert!(
            t0.elapsed() < READY_TIMEOUT,
            "{} not listening on port {port} after {READY_TIMEOUT:?}:\n{}",
            proc.tag,
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until llama-server's `/health` answers 200 (it answers 503 while the model loads).
fn wait_healthy(server: &mut Proc, port: u16) {
    let t0 = Instant::now();
    loop {
        server.assert_running();
        if let Ok((200, _)) = http(port, "GET", "/health", "") {
            return;
        }
        assert!(
            t0.elapsed() < READY_TIMEOUT,
            "{} not healthy after {READY_TIMEOUT:?}:\n{}",
            server.tag,
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A stock llama.cpp binary, with libdcgguf_preload.so preloaded when `dc`.
fn tool(l: &Llama, name: &str, dc: bool) -> Command {
    let mut c = Command::new(l.bin(name));
    c.env("LD_PRELOAD", preload(l, dc))
        .env("DCGGUF_VERBOSE", "1")
        .env_remove("DCGGUF_THROTTLE_BPS")
        .env_remove("DCGGUF_MEM_BUDGET");
    c
}

/// Starts llama-server on `model`, sends one greedy `/v1/completions` request and returns
/// the completion text and the server's stderr (read after the reply).
fn server_completion(l: &Llama, model: &Path, dc: bool, tag: &str) -> (String, String) {
    let port = free_port();
    let mut c = tool(l, "llama-server", dc);
    c.arg("-m")
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        // one slot, a small context, 2 threads: the same for both runs
        .args(["-np", "1", "-c", "256", "-t", "2", "--seed", "1"]);
    let mut server = Proc::spawn(c, tag);
    wait_healthy(&mut server, port);
    let body = serde_json::json!({
        "prompt": PROMPT,
        "max_tokens": N_PREDICT,
        "temperature": 0.0,
        "seed": 1,
    })
    .to_string();
    let (status, reply) = http(port, "POST", "/v1/completions", &body)
        .unwrap_or_else(|e| panic!("{tag}: POST /v1/completions: {e}\n{}", server.log()));
    assert_eq!(status, 200, "{tag}: {reply}\n{}", server.log());
    let v: serde_json::Value = serde_json::from_str(&reply)
        .unwrap_or_else(|e| panic!("{tag}: reply is not JSON ({e}): {reply}"));
    assert_eq!(v["object"], "text_completion", "{tag}: {reply}");
    let text = v["choices"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{tag}: no choices[0].text in {reply}"))
        .to_string();
    assert_eq!(
        v["usage"]["completion_tokens"], N_PREDICT,
        "{tag}: not all {N_PREDICT} tokens generated: {reply}"
    );
    server.assert_running();
    (text, server.stderr())
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_llama_hosts, dcgguf_smollm2)),
    ignore = "needs llama.cpp with server+rpc (scripts/build-llama.sh) and SmolLM2 (scripts/fetch-models.sh)"
)]
fn server_completion_dc_matches_plain() {
    let t = "server_completion_dc_matches_plain";
    let (l, m) = (require_hosts(t), require_smollm2(t));
    let dc = dc_of(&m);
    let (plain, _) = server_completion(&l, &m, false, "server-plain");
    let (via_dc, log) = server_completion(&l, &dc, true, "server-dc");
    eprintln!("llama-server /v1/completions: {PROMPT:?} -> {plain:?}");
    assert!(
        plain.trim().len() > 20,
        "plain completion too short: {plain:?}"
    );
    assert_eq!(plain, via_dc, "completion differs between plain and DC");
    // The DC server really loaded the DC file through dcgguf.
    assert!(
        log.contains("dcgguf: loading") && log.contains("DC-GGUF"),
        "no dcgguf load in the DC server's log:\n{log}"
    );
}

/// Two ggml-rpc-server processes on loopback, killed when dropped.
struct RpcPair {
    servers: Vec<Proc>,
    endpoints: Vec<String>,
}

fn rpc_pair(l: &Llama, tag: &str) -> RpcPair {
    let mut servers = Vec::new();
    let mut endpoints = Vec::new();
    for i in 0..2 {
        let port = free_port();
        let mut c = Command::new(l.bin("ggml-rpc-server"));
        c.args(["-H", "127.0.0.1", "-p", &port.to_string(), "-t", "1"]);
        let mut p = Proc::spawn(c, &format!("{tag}-rpc{i}"));
        wait_listening(&mut p, port);
        servers.push(p);
        endpoints.push(format!("127.0.0.1:{port}"));
    }
    RpcPair { servers, endpoints }
}

impl RpcPair {
    fn log(&self) -> String {
        self.servers
            .iter()
            .map(Proc::log)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One greedy llama-completion run of `n` tokens with `--rpc` (all layers offloaded when
/// `ngl` is 99); returns (stdout, stderr) after checking that it and both RPC servers are
/// fine.
#[allow(clippy::too_many_arguments)]
fn rpc_completion(
    l: &Llama,
    rpc: &mut RpcPair,
    model: &Path,
    dc: bool,
    ngl: &str,
    budget: Option<&str>,
    n: u32,
    tag: &str,
) -> (String, String) {
    let mut c = tool(l, "llama-completion", dc);
    if let Some(b) = budget {
        c.env("DCGGUF_MEM_BUDGET", b);
    }
    c.arg("-m")
        .arg(model)
        .args(["--rpc", &rpc.endpoints.join(","), "-ngl", ngl])
        .args([
            "--temp", "0", "--seed", "1", "-no-cnv", "-t", "2", "-c", "256",
        ])
        // log level 4: llama.cpp's own info lines (where each buffer went), which
        // llama-completion leaves out by default
        .args(["-lv", "4"])
        .args(["-n", &n.to_string(), "-p", PROMPT]);
    let mut p = Proc::spawn(c, tag);
    let status = p.finish(Duration::from_secs(300));
    assert!(
        status.success(),
        "{tag}: llama-completion failed ({status}):\n{}\n{}",
        p.log(),
        rpc.log()
    );
    for s in &mut rpc.servers {
        s.assert_running();
    }
    (p.stdout(), p.stderr())
}

/// `(offloaded, total)` from llama.cpp's `load_tensors: offloaded N/M layers to GPU`.
fn offloaded(log: &str) -> (u32, u32) {
    let line = log
        .lines()
        .find(|l| l.contains("offloaded ") && l.contains(" layers to GPU"))
        .unwrap_or_else(|| panic!("no 'offloaded N/M layers' line in:\n{log}"));
    let frac = line
        .split("offloaded ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    let (n, m) = frac.split_once('/').unwrap();
    (n.parse().unwrap(), m.parse().unwrap())
}

/// The model buffer size (MiB) llama.cpp reports for the RPC device at `endpoint` (buffers
/// are named `RPC<device index on that server>[<endpoint>]`).
fn rpc_model_buffer(log: &str, endpoint: &str) -> Option<f64> {
    let name = format!("[{endpoint}]");
    log.lines()
        .filter(|l| l.contains("RPC") && l.contains(&name) && l.contains("model buffer size"))
        .find_map(|l| {
            l.split("= ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_llama_hosts, dcgguf_smollm2)),
    ignore = "needs llama.cpp with server+rpc (scripts/build-llama.sh) and SmolLM2 (scripts/fetch-models.sh)"
)]
fn rpc_completion_dc_matches_plain() {
    let t = "rpc_completion_dc_matches_plain";
    let (l, m) = (require_hosts(t), require_smollm2(t));
    let dc = dc_of(&m);
    let mut rpc = rpc_pair(&l, "rpc");
    let (plain, plain_log) =
        rpc_completion(&l, &mut rpc, &m, false, "99", None, N_PREDICT, "rpc-plain");
    let (via_dc, dc_log) = rpc_completion(&l, &mut rpc, &dc, true, "99", None, N_PREDICT, "rpc-dc");
    eprintln!("llama-completion --rpc -ngl 99: {plain:?}");
    assert!(
        plain.starts_with(PROMPT) && plain.len() > PROMPT.len() + 20,
        "unexpected output: {plain:?}"
    );
    assert_eq!(plain, via_dc, "RPC generation differs between plain and DC");
    assert!(
        dc_log.contains("dcgguf: loading") && dc_log.contains("DC-GGUF"),
        "no dcgguf load in:\n{dc_log}"
    );
    // Every layer went to the RPC devices, and both servers hold weights, in both runs.
    for (what, log) in [("plain", &plain_log), ("DC", &dc_log)] {
        let (n, total) = offloaded(log);
        assert!(total > 0 && n == total, "{what}: offloaded {n}/{total}");
        for e in &rpc.endpoints {
            let mib = rpc_model_buffer(log, e)
                .unwrap_or_else(|| panic!("{what}: no model buffer on RPC[{e}]:\n{log}"));
            assert!(mib > 1.0, "{what}: RPC[{e}] holds only {mib} MiB");
        }
        eprintln!(
            "{what}: offloaded {n}/{total} layers; RPC model buffers {:?} MiB",
            rpc.endpoints
                .iter()
                .map(|e| rpc_model_buffer(log, e).unwrap())
                .collect::<Vec<_>>()
        );
    }
}

/// The default skips an untied token table at load (it keeps it compressed and decodes the
/// rows each lookup reads), expecting llama.cpp to read it straight into its CPU weight
/// buffer. Placed on an RPC device instead (`-ot token_embd.weight=RPC0[...]`), llama.cpp
/// reads it into a staging buffer and uploads that: the table is then decoded after the
/// load and written to the device, and MiniLM BF16's embeddings are plain llama.cpp's.
#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_llama_hosts, dcgguf_minilm)),
    ignore = "needs llama.cpp with server+rpc (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn rpc_token_table_skipped_at_load_reaches_the_device() {
    let t = "rpc_token_table_skipped_at_load_reaches_the_device";
    let l = require_hosts(t);
    let m = require_shared_model(t, "all-MiniLM-L6-v2-bf16.gguf");
    let dc = dc_of(&m);
    let mut rpc = rpc_pair(&l, "rpc-lookup");
    let endpoint = rpc.endpoints[0].clone();
    let mut run = |model: &Path, dcgguf: bool, tag: &str| {
        let mut c = tool(&l, "llama-embedding", dcgguf);
        c.arg("-m")
            .arg(model)
            .arg("-f")
            .arg(eval_sentences_file())
            .args(EMBEDDING_ARRAY_ARGS)
            .args(["--rpc", &endpoint, "-ngl", "99"])
            .args(["-ot", &format!("token_embd\\.weight=RPC0[{endpoint}]")]);
        let mut p = Proc::spawn(c, tag);
        let status = p.finish(Duration::from_secs(300));
        assert!(
            status.success(),
            "{tag}: llama-embedding failed ({status}):\n{}",
            p.log()
        );
        for s in &mut rpc.servers {
            s.assert_running();
        }
        (p.stdout(), p.stderr())
    };
    let (plain, _) = run(&m, false, "rpc-lookup-plain");
    let (ours, log) = run(&dc, true, "rpc-lookup-dc");
    assert!(plain.contains('['), "no embeddings: {plain}");
    assert!(
        log.contains("token_embd.weight: skipped at load, but llama.cpp holds it elsewhere"),
        "the table was not skipped, or not found elsewhere:\n{log}"
    );
    assert!(ours == plain, "embeddings differ from plain llama.cpp's");
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_llama_hosts, dcgguf_smollm2)),
    ignore = "needs llama.cpp with server+rpc (scripts/build-llama.sh) and SmolLM2 (scripts/fetch-models.sh)"
)]
fn rpc_with_memory_budget_runs_on_the_cpu() {
    let t = "rpc_with_memory_budget_runs_on_the_cpu";
    let (l, m) = (require_hosts(t), require_smollm2(t));
    let dc = dc_of(&m);
    let mut rpc = rpc_pair(&l, "rpc-budget");
    // A budget decodes weights in place in CPU memory, so a budgeted load turns offload off
    // (src/llama/mod.rs): `-ngl 99` with `--rpc` loads every layer on the local CPU.
    // Generation under a budget re-decodes the streamed layers for every token (README), so
    // this run is kept shorter.
    let n = N_PREDICT / 2;
    let (budgeted, log) = rpc_completion(
        &l,
        &mut rpc,
        &dc,
        true,
        "99",
        Some("60%,file"),
        n,
        "rpc-budget-dc",
    );
    let (plain_cpu, _) = rpc_completion(&l, &mut rpc, &m, false, "0", None, n, "rpc-budget-plain");
    assert!(
        log.contains("[limit="),
        "the budget was not applied:\n{log}"
    );
    assert!(
        log.contains(
            "a memory budget keeps the model on the CPU; ignoring the request to offload 99 layers"
        ),
        "the dropped offload was not reported:\n{log}"
    );
    let (n, total) = offloaded(&log);
    assert_eq!(n, 0, "a budgeted load offloaded {n}/{total} layers");
    for e in &rpc.endpoints {
        assert_eq!(
            rpc_model_buffer(&log, e),
            None,
            "a budgeted load put weights on RPC[{e}]:\n{log}"
        );
    }
    assert_eq!(
        budgeted, plain_cpu,
        "budgeted DC output differs from the plain model on the CPU"
    );
}

/// The built llama.cpp with llama-server and ggml-rpc-server; a test that needs them fails
/// without them.
#[track_caller]
fn require_hosts(test: &str) -> Llama {
    let l = require_llama(test);
    for b in ["llama-server", "ggml-rpc-server"] {
        if !l.bin(b).is_file() {
            missing(
                test,
                &format!(
                    "{} missing: llama.cpp was built without server/RPC (rerun scripts/build-llama.sh)",
                    l.bin(b).display()
                ),
            );
        }
    }
    l
}
