#!/usr/bin/env python3
"""Size vs KL divergence of the decoder tables (scripts/eval-quant.sh): one panel per model,
one marker per file, x = size relative to llama-quantize's Q8_0 file, y = mean KLD vs the F32
reference (lower is better; the lossless DC of Q8_0 has Q8_0's KLD at its own size).

usage: scripts/plot-quant-decoders.py OUT.png "TITLE=WORKDIR/results.tsv" ...
   e.g. scripts/plot-quant-decoders.py docs/quant-decoders.png \\
          "SmolLM2-135M (llama)=/tmp/dcgguf-eval-smollm2/results.tsv" \\
          "Qwen2.5-Coder-1.5B (qwen2)=/tmp/dcgguf-eval-qwen/results.tsv"
results.tsv columns: name, bytes, size vs Q8_0, PPL(Q)/PPL(ref), mean KLD, 99% KLD.
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def style(name):
    if name.startswith("DC-INT8"):
        return "o", "tab:blue"
    if name.startswith("dcgguf lossless"):
        return "s", "tab:green"
    return "^", "tab:red"  # llama-quantize


def main(out, panels):
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, spec in zip(axes[0], panels):
        title, path = spec.split("=", 1)
        rows = [line.rstrip("\n").split("\t") for line in open(path) if line.strip()]
        for name, _bytes, rel, _ppl, kld, *_ in rows:
            m, c = style(name)
            x, y = float(rel), float(kld)
            ax.plot(x, y, m, color=c, markersize=8)
            # The lossless DC file sits at Q8_0's KLD: its label goes below the marker.
            below = name.startswith("dcgguf lossless")
            ax.annotate(name.replace("`", "").replace(" (llama-quantize)", ""), (x, y),
                        textcoords="offset points", xytext=(-10 if below else 6, -13 if below else 5),
                        fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("file size / llama-quantize Q8_0 file")
        ax.set_ylabel("mean KL divergence vs F32 (lower is better)")
        ax.set_ylim(bottom=0)
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo - 0.02, hi + 0.12)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
