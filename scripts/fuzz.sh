#!/usr/bin/env bash
# Bounded fuzzing with cargo-fuzz (libFuzzer) of every reader of untrusted bytes: the GGUF
# parser, the DC-GGUF decoder (open, and reads at arbitrary offsets as the llama.cpp load
# stream does), and the imatrix and covariance readers of `compress --quantize int8`.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60; a positive whole number)
# Installs a nightly toolchain and cargo-fuzz when missing and FAILS when it cannot (fuzzing
# is never skipped silently; `DCGGUF_FUZZ_SECONDS=0 scripts/test.sh` is the explicit way to
# leave it out). Seeds come from `cargo run --example fuzz_seeds`. Allocations over 2 GiB
# count as bugs. A crash fails the script and leaves the input under fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
targets=(gguf_parse dc_open dc_read imatrix_read covariance_read rans_decode)
log() { echo "[fuzz] $*" >&2; }
fail() {
  echo "!!!!! FUZZING FAILED: $*" >&2
  exit 1
}
[[ "$secs" =~ ^[1-9][0-9]*$ ]] || fail "seconds per target must be a positive whole number, not '$secs'"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  log "installing nightly toolchain (minimal)"
  rustup toolchain install nightly --profile minimal >/dev/null \
    || fail "no nightly toolchain and 'rustup toolchain install nightly' failed"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2 >/dev/null \
    || fail "cargo-fuzz is missing and 'cargo install cargo-fuzz' failed"
fi
cargo run --release --quiet --example fuzz_seeds fuzz/seeds >/dev/null || fail "seed generation failed"
log "building ${targets[*]}"
cargo +nightly fuzz build -O >/dev/null 2>&1 || {
  cargo +nightly fuzz build -O 2>&1 | tail -40 >&2
  fail "the fuzz targets did not build"
}
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  cp -n fuzz/seeds/"$target"/* "fuzz/corpus/$target/" 2>/dev/null || true
  log "$target for ${secs}s"
  logf="$(mktemp)"
  if ! cargo +nightly fuzz run -O "$target" -- -max_total_time="$secs" -timeout=60 \
      -rss_limit_mb=2048 -malloc_limit_mb=2048 -print_final_stats=1 >"$logf" 2>&1; then
    tail -40 "$logf" >&2
    rm -f "$logf"
    fail "$target crashed (input under fuzz/artifacts/$target/)"
  fi
  execs="$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$logf" | tail -1)"
  if [ -z "$execs" ] || [ "$execs" = 0 ]; then
    tail -40 "$logf" >&2
    rm -f "$logf"
    fail "$target ran no inputs"
  fi
  grep -E "^stat::number_of_executed_units" "$logf" >&2
  log "$target: $execs executions in ${secs}s ($((execs / secs))/s)"
  rm -f "$logf"
done
log "ok"
