#!/usr/bin/env python3
"""Input second-moment matrices H = E[x x^T] of a BERT model's matmul weights, from the numpy
BERT forward pass of the prototype: kept only as an independent cross-check of
`dcgguf calibrate` (which records them inside llama.cpp itself, for any architecture, and is
what `compress --calib` uses; tests/quant_gptq.rs compares the two). docs/QUANT.md.

Runs the numpy BERT forward pass of scripts/gptq-minilm.py (F32, as llama.cpp's graph) over a
calibration text (default data/calibration.txt, the text shipped with dcgguf), tokenized with
llama-tokenize, and writes a GGUF with `general.type = "covariance"`, `covariance.tokens`
(number of input rows averaged) and one F32 tensor per matmul weight, named like the weight
(`blk.0.attn_q.weight`), shape [n_in, n_in], holding sum(x x^T) / tokens.

usage: scripts/covariance.py MODEL_F32.gguf OUT.cov.gguf [--calib TEXT]
Needs numpy, gguf (gguf-py) and llama-tokenize ($LLAMA_BIN or ~/.cache/dcgguf/llama.cpp-0.3.36-r2/bin).
Only the `bert` architecture is supported.
"""
import argparse
import os
import sys

import numpy as np
from gguf import GGUFReader, GGUFWriter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from importlib import import_module  # noqa: E402

proto = import_module("gptq-minilm")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", help="F32 (or F16) BERT GGUF")
    ap.add_argument("out")
    ap.add_argument("--calib", default=os.path.join(HERE, "..", "data", "calibration.txt"))
    a = ap.parse_args()
    meta = GGUFReader(a.model).fields
    arch = bytes(meta["general.architecture"].parts[-1]).decode()
    if arch != "bert":
        sys.exit(f"{a.model}: architecture {arch!r} is not supported (only bert)")
    n_layer = int(meta["bert.block_count"].parts[-1][0])
    n_head = int(meta["bert.attention.head_count"].parts[-1][0])
    T = proto.load(a.model)
    H = {}

    def hook(name, inp):
        h = H.setdefault(name, [0.0, 0])
        h[0] = h[0] + inp.T @ inp
        h[1] += inp.shape[0]

    seqs = proto.sequences(a.model, a.calib)
    for ids in seqs:
        proto.bert_inputs(T, ids, hook, n_layer, n_head)
    tokens = sum(map(len, seqs))
    print(f"calibration: {len(seqs)} sequences, {tokens} tokens")
    w = GGUFWriter(a.out, arch)
    w.add_type("covariance")
    w.add_uint32("covariance.tokens", tokens)
    w.add_string("covariance.calibration", os.path.basename(a.calib))
    for name, (s, n) in H.items():
        w.add_tensor(name + ".weight", (s / n).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {a.out}: {len(H)} matrices")


if __name__ == "__main__":
    main()
