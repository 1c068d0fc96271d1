#!/usr/bin/env python3
"""Plot of `cargo bench --bench memcap`: speed against the memory cap, one line per setup, one
panel per model and metric (prompt t/s, generation t/s, embeddings/s, llama-perplexity
tokens/s).

    python3 scripts/plot-memcap.py target/bench-memcap/memcap.csv target/bench-memcap/memcap.png

x: the cap in MiB, with the uncapped run at the right edge ("no cap"). A run killed by the OOM
killer is drawn as an x on the axis, a run that timed out as a triangle; caps below one are not
run and not drawn. Needs matplotlib (scripts/requirements.txt); exits 3 without it.
"""
import csv
import sys
from collections import OrderedDict

METRICS = [("prompt_tps", "prompt tokens/s"), ("gen_tps", "generation tokens/s"),
           ("emb_per_s", "embeddings/s"),
           ("ppl_tps", "llama-perplexity tokens/s (load included)")]


def main(src, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"matplotlib is not installed ({e}): pip install -r scripts/requirements.txt",
              file=sys.stderr)
        return 3
    rows = list(csv.DictReader(open(src, newline="")))
    if not rows:
        print(f"{src}: no rows", file=sys.stderr)
        return 1
    # (model, metric) panels in the order they appear.
    panels = OrderedDict()
    for r in rows:
        for key, label in METRICS:
            if r[key]:
                panels.setdefault((r["model"], key), label)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    for ax, ((model, key), label) in zip(axes[0], panels.items()):
        mine = [r for r in rows if r["model"] == model]
        caps = [int(r["cap_bytes"]) / 2**20 for r in mine if r["cap_bytes"]]
        lo, hi = min(caps), max(caps)
        nocap_x = hi + (hi - lo) * 0.25 + 1
        setups = OrderedDict((r["setup"], None) for r in mine)
        for i, setup in enumerate(setups):
            pts, killed, timeout = [], [], []
            for r in mine:
                if r["setup"] != setup:
                    continue
                x = int(r["cap_bytes"]) / 2**20 if r["cap_bytes"] else nocap_x
                if r["status"] == "ok" and r[key]:
                    pts.append((x, float(r[key])))
                elif r["status"] == "killed":
                    killed.append(x)
                elif r["status"] == "timeout":
                    timeout.append(x)
            pts.sort()
            color = f"C{i}"
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color,
                        label=setup, markersize=4)
            else:
                ax.plot([], [], "o-", color=color, label=setup)
            # Setups fail at the same caps: spread their markers apart along x.
            dx = (i - (len(setups) - 1) / 2) * (nocap_x - lo) * 0.012
            ax.plot([x + dx for x in killed], [0] * len(killed), "x", color=color,
                    markersize=9, mew=2)
            ax.plot([x + dx for x in timeout], [0] * len(timeout), "^", color=color,
                    markersize=7)
        ticks = sorted(set(caps))
        ax.set_xticks(ticks + [nocap_x])
        ax.set_xticklabels([f"{t:.0f}" for t in ticks] + ["no cap"], rotation=45, fontsize=8)
        ax.set_xlabel("memory cap, MiB (page cache included)")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=-0.04 * (ax.get_ylim()[1] or 1))
        ax.set_title(f"{model}: {label}", fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best", title="x: OOM-killed, ^: timeout",
                      title_fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
