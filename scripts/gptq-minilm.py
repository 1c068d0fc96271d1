#!/usr/bin/env python3
"""Prototype (not wired into dcgguf): GPTQ-style rounding of MiniLM's Q8_0 matmul weights.

Keeps llama.cpp's Q8_0 scales (d = fp16(amax/127) per 32-weight block) and only changes which
grid point each weight takes: input columns are quantized in order and each column's rounding
error is pushed onto the not-yet-quantized columns through the inverse input covariance
H = E[x x^T] (GPTQ, Frantar et al. 2022), with H collected by a numpy BERT forward pass over a
calibration text (default vendor/llama.cpp/README.md, not the eval sentences). The result is a
standard Q8_0 GGUF; token_embd.weight is copied from a second Q8_0 GGUF (e.g. the output of
`dcgguf compress --quantize int8 --step 0 --embd-step 2` decompressed), so the two ideas
combine. docs/QUANT.md has the measurements.

usage: scripts/gptq-minilm.py F32.gguf BASE_Q8.gguf OUT.gguf [--embd-from Q8.gguf]
       [--calib TEXT] [--damp 0.1]
BASE_Q8.gguf must be llama.cpp-rounded (`--step 0 --embd-step 0`): its layout is reused.
Needs numpy, gguf (gguf-py) and llama-tokenize ($LLAMA_BIN or ~/.cache/dcgguf/llama.cpp-0.3.36-r2/bin).
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
from gguf import GGUFReader

LLAMA_BIN = os.environ.get("LLAMA_BIN", os.path.expanduser("~/.cache/dcgguf/llama.cpp-0.3.36-r2/bin"))
_erf = np.vectorize(math.erf)


def f16(x):
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def load(path):
    T = {}
    for t in GGUFReader(path).tensors:
        if t.tensor_type.name == "Q8_0":
            raw = np.array(t.data).reshape(-1, 34)
            d = raw[:, :2].copy().view(np.float16).astype(np.float32)
            q = raw[:, 2:].view(np.int8).astype(np.float32)
            T[t.name] = (d * q).reshape(int(t.shape[1]), int(t.shape[0]))
        else:
            T[t.name] = np.array(t.data, dtype=np.float64)
    return T


def tokenize(model, text):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
    try:
        out = subprocess.run([f"{LLAMA_BIN}/llama-tokenize", "-m", model, "-f", f.name, "--ids",
                              "--log-disable"], check=True, capture_output=True, text=True).stdout
    finally:
        os.remove(f.name)
    return json.loads(out.strip().splitlines()[-1])


def sequences(model, path, maxtok=126):
    """Paragraphs of the text as [CLS] ... [SEP] token sequences of at most 128 tokens."""
    out = []
    for p in re.split(r"\n\s*\n", open(path).read()):
        if not p.strip():
            continue
        ids = tokenize(model, p.strip())
        cls, sep, ids = ids[0], ids[-1], ids[1:-1]
        for i in range(0, len(ids), maxtok):
            out.append([cls] + ids[i:i + maxtok] + [sep])
    return out


def ln(x, g, b, eps=1e-12):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * g + b


def bert_inputs(T, ids, hook, n_layer, n_head):
    """BERT forward pass (as llama.cpp's graph, F32); calls hook(matmul name, input rows)."""
    n = len(ids)
    x = T["token_embd.weight"][ids] + T["position_embd.weight"][:n] + T["token_types.weight"][0]
    x = ln(x, T["token_embd_norm.weight"], T["token_embd_norm.bias"])

    def mm(name, inp):
        hook(name, inp)
        return inp @ T[name + ".weight"].T + T[name + ".bias"]

    for layer in range(n_layer):
        p = f"blk.{layer}."
        q, k, v = (mm(p + s, x) for s in ("attn_q", "attn_k", "attn_v"))
        dh = q.shape[1] // n_head
        q, k, v = (a.reshape(n, n_head, dh).transpose(1, 0, 2) for a in (q, k, v))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(dh)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(n, -1)
        x = ln(x + mm(p + "attn_output", a), T[p + "attn_output_norm.weight"], T[p + "attn_output_norm.bias"])
        u = mm(p + "ffn_up", x)
        u = 0.5 * u * (1 + _erf(u / np.sqrt(2)))
        x = ln(x + mm(p + "ffn_down", u), T[p + "layer_output_norm.weight"], T[p + "layer_output_norm.bias"])


def gptq_q8(W, H, damp):
    """W [out, in]; returns (d [out, in/32], q [out, in]) on llama.cpp's Q8_0 scales."""
    W = W.astype(np.float64).copy()
    nout, nin = W.shape
    d = f16(np.abs(W.reshape(nout, nin // 32, 32)).max(2) / 127).astype(np.float64)
    H = H.copy()
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    H += damp * np.mean(np.diag(H)) * np.eye(nin)
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper Cholesky factor of H^-1
    Q = np.zeros_like(W)
    for j in range(nin):
        dj = d[:, j // 32]
        with np.errstate(divide="ignore", invalid="ignore"):
            qj = np.where(dj > 0, np.clip(np.round(W[:, j] / dj), -127, 127), 0)
        Q[:, j] = qj
        err = (W[:, j] - qj * dj) / U[j, j]
        W[:, j + 1:] -= np.outer(err, U[j, j + 1:])
    return d, Q


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("f32")
    ap.add_argument("base_q8")
    ap.add_argument("out")
    ap.add_argument("--embd-from")
    ap.add_argument("--calib", default=os.path.join(here, "..", "vendor", "llama.cpp", "README.md"))
    ap.add_argument("--damp", type=float, default=0.1)
    a = ap.parse_args()
    meta = GGUFReader(a.f32).fields
    n_layer = int(meta["bert.block_count"].parts[-1][0])
    n_head = int(meta["bert.attention.head_count"].parts[-1][0])
    T = load(a.f32)
    H = {}

    def hook(name, inp):
        h = H.setdefault(name, [0.0, 0])
        h[0] = h[0] + inp.T @ inp
        h[1] += inp.shape[0]

    seqs = sequences(a.f32, a.calib)
    for ids in seqs:
        bert_inputs(T, ids, hook, n_layer, n_head)
    print(f"calibration: {len(seqs)} sequences, {sum(map(len, seqs))} tokens")
    shutil.copy(a.base_q8, a.out)
    r = GGUFReader(a.out, "r+")
    embd = None
    if a.embd_from:
        embd = next(t for t in GGUFReader(a.embd_from).tensors if t.name == "token_embd.weight")
    for t in r.tensors:
        name = t.name[: -len(".weight")]
        if t.name == "token_embd.weight" and embd is not None:
            t.data[:] = embd.data
        if t.tensor_type.name != "Q8_0" or name not in H:
            continue
        d, Q = gptq_q8(T[t.name], H[name][0] / H[name][1], a.damp)
        raw = t.data.reshape(-1, 34)
        raw[:, :2] = f16(d.reshape(-1)).astype(np.float16).view(np.uint8).reshape(-1, 2)
        raw[:, 2:] = Q.reshape(-1, 32).astype(np.int8).view(np.uint8)
    del r
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
