#!/usr/bin/env python3
"""Size vs fidelity of MiniLM embeddings: llama.cpp quant types vs DC-INT8 (dcgguf lossy mode).

Reference: llama-embedding on the F32 GGUF. For each candidate: whole-file size, size vs the
Q8_0 file, tensor-data-only size, mean and min cosine of the (L2-normalized, mean-pooled)
embeddings over scripts/eval-sentences.py. DC files are decompressed (to their Q8_0 GGUF)
and that file is what llama-embedding runs.

usage: scripts/eval-quant.py [--work DIR] [--dcgguf BIN] [--settings "name:--flag value ..." ...]
       [--json OUT] [--plot docs/quant-size-vs-fidelity.png] [--no-llama-quants]
       [--sentences FILE]
--sentences: another sentence set, one per line (data/heldout-sentences.txt: the held-out check,
never used for tuning).
"{imatrix}" and "{cov}" in a setting are replaced by the statistics and covariances of
`dcgguf calibrate` on --calib (default data/calibration.txt, the shipped text).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from importlib import import_module  # noqa: E402

SENTENCES = import_module("eval-sentences").SENTENCES
LLAMA_BIN = os.environ.get(
    "LLAMA_BIN", os.path.expanduser("~/.cache/dcgguf/llama.cpp-0.3.36-r2/bin"))
MODELS = os.environ.get("DCGGUF_MODELS", "/work/shared/models")


def embed(model, sent_file, threads):
    # llama.cpp's asynchronous logger can lose the end of a tool's output at exit (upstream
    # issue #22142; the Rust tests preload tests/llama_support/drain_log.c instead): output
    # that is not complete JSON is run again.
    for _ in range(5):
        out = subprocess.run(
            [f"{LLAMA_BIN}/llama-embedding", "-m", model, "-f", sent_file,
             "--embd-output-format", "array", "--embd-normalize", "2", "-t", str(threads),
             "--no-warmup", "-c", "512", "-b", "8192", "-ub", "8192"],
            check=True, capture_output=True, text=True)
        try:
            return np.array(json.loads(out.stdout), dtype=np.float64)
        except json.JSONDecodeError:
            print(f"llama-embedding output for {model} incomplete, running again",
                  file=sys.stderr)
    raise SystemExit(f"llama-embedding never printed complete output for {model}")


DCGGUF = "dcgguf"
N_SENTENCES = len(SENTENCES)


def tensor_data_bytes(path):
    """Tensor bytes: sum of tensor sizes for a GGUF; stored chunk bytes for a DC file."""
    from gguf import GGUFReader
    r = GGUFReader(path)
    if any(t.name == "dc.index" for t in r.tensors):
        out = subprocess.run([DCGGUF, "--json", "inspect", path], check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out)["tensor_stored_bytes"]
    return sum(int(t.n_bytes) for t in r.tensors)


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "dcgguf-eval"))
    ap.add_argument("--dcgguf", default=os.environ.get("DCGGUF_BIN", "dcgguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settings", nargs="*", default=None,
                    help="DC settings as 'name:--flag value ...'")
    ap.add_argument("--json")
    ap.add_argument("--plot")
    ap.add_argument("--no-llama-quants", action="store_true")
    ap.add_argument("--sentences", help="sentence file (one per line) instead of the eval set")
    ap.add_argument("--calib", default=os.path.join(HERE, "..", "data", "calibration.txt"),
                    help="calibration text for {imatrix}/{cov} settings (not the eval sentences)")
    args = ap.parse_args()
    global DCGGUF
    DCGGUF = args.dcgguf
    os.makedirs(args.work, exist_ok=True)
    sent = os.path.join(args.work, "sentences.txt")
    sentences = SENTENCES
    if args.sentences:
        with open(args.sentences) as f:
            sentences = [line.strip() for line in f if line.strip()]
    with open(sent, "w") as f:
        f.write("\n".join(sentences) + "\n")
    global N_SENTENCES
    N_SENTENCES = len(sentences)
    f32 = f"{MODELS}/all-MiniLM-L6-v2-f32.gguf"
    q8 = f"{MODELS}/all-MiniLM-L6-v2-q8_0.gguf"
    ref = embed(f32, sent, args.threads)

    rows = []

    def add(name, size_path, run_path, kind, data_path=None):
        e = embed(run_path, sent, args.threads)
        cos = (e * ref).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(ref, axis=1)
        rows.append(dict(name=name, kind=kind, bytes=os.path.getsize(size_path),
                         data_bytes=tensor_data_bytes(data_path or size_path),
                         mean_cos=float(cos.mean()), min_cos=float(cos.min())))
        print(f"  {name}: mean {cos.mean():.6f} min {cos.min():.6f}", file=sys.stderr)

    add("F32", f32, f32, "llama")
    if not args.no_llama_quants:
        add("F16", f"{MODELS}/all-MiniLM-L6-v2-f16.gguf", f"{MODELS}/all-MiniLM-L6-v2-f16.gguf", "llama")
        add("Q8_0", q8, q8, "llama")
        for t in ["Q6_K", "Q5_K_M", "Q4_K_M"]:
            p = os.path.join(args.work, f"minilm-{t}.gguf")
            if not os.path.exists(p):
                run([f"{LLAMA_BIN}/llama-quantize", f32, p, t, str(args.threads)])
            add(t, p, p, "llama")
        # lossless dcgguf over llama.cpp's Q8_0, for reference
        p = os.path.join(args.work, "minilm-q8_0.dc.gguf")
        run([args.dcgguf, "-q", "compress", "--force", q8, p])
        add("DC(Q8_0) lossless", p, q8, "dc-lossless", data_path=p)

    imatrix = os.path.join(args.work, "minilm.imatrix.gguf")
    settings = args.settings if args.settings is not None else DEFAULT_SETTINGS
    cov = os.path.join(args.work, "minilm.cov.gguf")
    if any("{imatrix}" in s or "{cov}" in s for s in settings) and not os.path.exists(cov):
        run([args.dcgguf, "-q", "calibrate", f32, args.calib, "-o", imatrix, "--covariance", cov])
    for s in settings:
        s = s.replace("{imatrix}", imatrix).replace("{cov}", cov)
        name, _, flags = s.partition(":")
        p = os.path.join(args.work, f"dc-{name}.dc.gguf")
        back = os.path.join(args.work, f"dc-{name}.q8.gguf")
        run([args.dcgguf, "-q", "compress", "--force", "--quantize", "int8", *flags.split(), f32, p])
        run([args.dcgguf, "-q", "decompress", "--force", p, back])
        gptq = "--gptq" in flags or "--calib" in flags
        add(f"DC-INT8 {name}", p, back, "dc-gptq" if gptq else "dc", data_path=p)

    q8row = next((r for r in rows if r["name"] == "Q8_0"), None)
    q8b = q8row["bytes"] if q8row else os.path.getsize(q8)
    q8d = q8row["data_bytes"] if q8row else tensor_data_bytes(q8)
    print(f"{'file':28} {'bytes':>10} {'vs Q8_0':>8} {'data vs Q8_0':>12} {'mean cos':>9} {'min cos':>9}")
    for r in rows:
        r["vs_q8"] = r["bytes"] / q8b
        r["data_vs_q8"] = r["data_bytes"] / q8d
        print(f"{r['name']:28} {r['bytes']:>10} {r['vs_q8']:>8.3f} {r['data_vs_q8']:>12.3f} "
              f"{r['mean_cos']:>9.6f} {r['min_cos']:>9.6f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.plot:
        plot(rows, args.plot)


def replot(json_path, png):
    with open(json_path) as f:
        plot(json.load(f), png)


DEFAULT_SETTINGS = [
    "llama-rounding:--step 0 --embd-step 0",
    "q8grid+embd2:--step 0 --embd-step 2",
    "s0.6:--step 0.6 --embd-step 3",
    "default(s0.8):--step 0.8 --embd-step 3",
    "s1:--step 1 --embd-step 4",
    "s1+imatrix+fold0.5:--step 1 --embd-step 4 --imatrix {imatrix} --fold-alpha 0.5",
    "s1+imatrix+alpha0.5:--step 1 --embd-step 4 --imatrix {imatrix} --alpha 0.5",
    "s1.25:--step 1.25 --embd-step 5",
    "s1.5:--step 1.5 --embd-step 6",
    "s2:--step 2 --embd-step 8",
    "gptq-llama-grid:--gptq {cov} --step 0 --embd-step 0",
    "gptq-llama-grid+embd2:--gptq {cov} --step 0 --embd-step 2",
    "calib(s1):--calib",
    "calib+s1.5:--calib --step 1.5 --embd-step 6",
    "calib+s2.1:--calib --step 2.1 --embd-step 6.5",
    "calib+s2.5:--calib --step 2.5 --embd-step 8",
]


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for kind, style, label in [("llama", "o-", "llama.cpp types (llama-quantize)"),
                               ("dc", "s-", "DC-INT8 (dcgguf --quantize int8)"),
                               ("dc-gptq", "D-", "DC-INT8 --calib / --gptq (GPTQ rounding)"),
                               ("dc-lossless", "^", "dcgguf lossless of llama.cpp Q8_0")]:
        pts = sorted((r["vs_q8"], 1 - r["mean_cos"], r["name"]) for r in rows
                     if r["kind"] == kind and r["name"] not in ("F32", "F16"))
        if not pts:
            continue
        xs, ys, ns = zip(*pts)
        ax.plot(xs, ys, style, label=label)
        for k, (x, y, n) in enumerate(pts):
            if kind == "dc-lossless":
                continue
            dy = -11 if (kind.startswith("dc") and k % 2) else 4
            ax.annotate(n.replace("DC-INT8 ", ""), (x, y), fontsize=7, xytext=(3, dy),
                        textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("whole-file size / llama.cpp Q8_0 file size (F16 = 1.83, F32 = 3.60: off scale)")
    ax.set_ylabel("1 - mean cosine vs F32 embeddings (log, lower is better)")
    ax.set_title(f"all-MiniLM-L6-v2 on llama.cpp: size vs embedding fidelity ({N_SENTENCES} sentences)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
