#!/usr/bin/env python3
"""Whole-tool comparison of the DC-GGUF load routes against plain llama.cpp.

    . scripts/env.sh && cargo build --release
    scripts/bench-routes.py [MODEL.gguf] [MODEL.dc.gguf]   # default: SmolLM2 Q4_1, compressed here

For plain GGUF with mmap (`-lm mmap`) and without (`-lm none`), and the DC-GGUF under
LD_PRELOAD=libdcgguf_preload.so with DCGGUF_LOAD_ROUTE=stream and =user:
- llama-completion, 32 greedy tokens: wall time, llama.cpp's "load time" and the peak RSS of
  the whole process (wait4 ru_maxrss), median of REPS runs (env BENCH_REPS, default 3);
- llama-bench -p 64 -n 32 -r 1, REPS times: prompt and generation tokens/s (median).
Configurations run in rounds (one of each per round), after one untimed warm-up round
(page cache warm). BENCH_ONLY=text keeps the configurations whose label contains it. Load time at simulated storage speeds is
`cargo bench --features bench-throttle --bench load` (DCGGUF_THROTTLE_BPS).

With BENCH_C_HOST=path/to/generate (ffi/examples/generate.c, built against libdcgguf and
libllama: a C program that calls dcgguf_llama_model_load with no LD_PRELOAD), a second table
times `generate MODEL 1` (load + one token) on the plain file and on the DC file through both
routes: what a C or ctypes host (llama-cpp-python) gets without the preload library, whose
`fread` the stream route otherwise reads through.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("DCGGUF_LLAMA_BIN", os.path.expanduser("~/.cache/dcgguf/llama.cpp-0.3.36-r2/bin"))
PRELOAD = os.path.join(ROOT, "target/release/libdcgguf_preload.so")
REPS = int(os.environ.get("BENCH_REPS", "3"))
PROMPT = "The capital of France is"


def run(cmd, env):
    """Runs cmd; returns (seconds, peak RSS MB, stderr text)."""
    with tempfile.TemporaryFile() as err:
        t = time.monotonic()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        secs = time.monotonic() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{text[-3000:]}")
    return secs, ru.ru_maxrss / 1024.0, text


def load_ms(text):
    for line in text.splitlines():
        if "load time =" in line:
            return float(line.split("load time =")[1].split("ms")[0])
    return float("nan")


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "DCGGUF_SMOLLM2", os.path.expanduser("~/.cache/dcgguf/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    if len(sys.argv) > 2:
        dc = sys.argv[2]
    else:
        dc = os.path.join(ROOT, "target/bench-routes.dc.gguf")
        if not os.path.exists(dc) or os.path.getmtime(dc) < os.path.getmtime(model):
            subprocess.check_call([os.path.join(ROOT, "target/release/dcgguf"), "-q", "compress",
                                   "--force", model, dc])
    base = dict(os.environ)
    for k in ["DCGGUF_THROTTLE_BPS", "DCGGUF_MEM_BUDGET", "DCGGUF_VERBOSE", "LD_PRELOAD"]:
        base.pop(k, None)
    configs = [
        ("plain, -lm mmap", model, ["-lm", "mmap"], {}),
        ("plain, -lm none", model, ["-lm", "none"], {}),
        ("DC, stream route", dc, [], {"LD_PRELOAD": PRELOAD, "DCGGUF_LOAD_ROUTE": "stream"}),
        ("DC, user route", dc, [], {"LD_PRELOAD": PRELOAD, "DCGGUF_LOAD_ROUTE": "user"}),
    ]
    only = os.environ.get("BENCH_ONLY")
    if only:
        configs = [c for c in configs if only in c[0]]
    # Rounds: every configuration once per round, so that load changes on a shared machine
    # hit all of them alike.
    runs = {c[0]: [] for c in configs}
    pp = {c[0]: [] for c in configs}
    tg = {c[0]: [] for c in configs}
    for rnd in range(REPS + 1):
        for label, m, extra, env_add in configs:
            env = dict(base, **env_add)
            comp = [os.path.join(BIN, "llama-completion"), "-m", m, *extra, "--temp", "0",
                    "--seed", "1", "-no-cnv", "-t", "2", "-c", "256", "-n", "32", "-p", PROMPT]
            r = run(comp, env)
            if rnd == 0:
                continue  # warm-up round
            runs[label].append(r)
            bench = [os.path.join(BIN, "llama-bench"), "-m", m, *extra, "-t", "2", "-p", "64",
                     "-n", "32", "-r", "1", "-o", "json"]
            out = subprocess.run(bench, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"llama-bench failed:\n{out.stderr[-3000:]}")
            res = json.loads(out.stdout)
            pp[label] += next(x for x in res if x["n_prompt"] > 0)["samples_ts"]
            tg[label] += next(x for x in res if x["n_gen"] > 0)["samples_ts"]
        print(f"round {rnd}/{REPS} done, loadavg {os.getloadavg()[0]:.1f}", file=sys.stderr)
    rows = []
    for label, *_ in configs:
        rs = runs[label]
        rows.append((label,
                     statistics.median(r[0] for r in rs),
                     statistics.median(load_ms(r[2]) for r in rs),
                     statistics.median(r[1] for r in rs),
                     statistics.median(pp[label]),
                     statistics.median(tg[label])))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"\n{os.path.basename(model)}; {cpu}, {os.cpu_count()} CPUs, -t 2; median of {REPS}; "
          f"loadavg {os.getloadavg()[0]:.1f}")
    print("| configuration | llama-completion -n 32 wall (s) | llama.cpp load time (ms) | peak RSS (MB) | pp64 (t/s) | tg32 (t/s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.3f} | {r[2]:.0f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} |")
    if os.environ.get("BENCH_C_HOST"):
        c_host(os.environ["BENCH_C_HOST"], model, dc, base)


def c_host(exe, model, dc, base):
    configs = [
        ("C host, plain .gguf (mmap)", model, {}),
        ("C host, DC, stream route", dc, {"DCGGUF_LOAD_ROUTE": "stream"}),
        ("C host, DC, user route", dc, {"DCGGUF_LOAD_ROUTE": "user"}),
    ]
    runs = {c[0]: [] for c in configs}
    for rnd in range(REPS + 1):
        for label, m, env_add in configs:
            r = run([exe, m, "1"], dict(base, **env_add))
            if rnd > 0:
                runs[label].append(r)
    print(f"\nC host without LD_PRELOAD ({os.path.basename(exe)} MODEL 1), median of {REPS}; "
          f"loadavg {os.getloadavg()[0]:.1f}")
    print("| configuration | wall (s) | peak RSS (MB) |")
    print("|---|---:|---:|")
    for label, *_ in configs:
        rs = runs[label]
        print(f"| {label} | {statistics.median(r[0] for r in rs):.3f} | "
              f"{statistics.median(r[1] for r in rs):.1f} |")


if __name__ == "__main__":
    main()
