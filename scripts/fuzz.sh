#!/usr/bin/env bash
# Bounded fuzzing of the GGUF parser and the DC-GGUF decoder with cargo-fuzz (libFuzzer).
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
# Installs a nightly toolchain and cargo-fuzz when missing; seeds come from
# `cargo run --example fuzz_seeds`. A crash fails the script and leaves the input under
# fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
log() { echo "[fuzz] $*" >&2; }
# A toolchain that cannot be installed (no network to the Rust dist server) skips fuzzing
# loudly instead of failing; a crash found by the fuzzers always fails.
unavailable() {
  echo "!!!!! FUZZING SKIPPED: $* (set DCGGUF_REQUIRE_FUZZ=1 to make this fail)" >&2
  [ "${DCGGUF_REQUIRE_FUZZ:-0}" = 1 ] && exit 1
  exit 0
}
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  log "installing nightly toolchain (minimal)"
  rustup toolchain install nightly --profile minimal >/dev/null || unavailable "no nightly toolchain"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2 >/dev/null || unavailable "cargo-fuzz did not install"
fi
cargo run --release --quiet --example fuzz_seeds fuzz/seeds >/dev/null
for target in gguf_parse dc_open; do
  mkdir -p "fuzz/corpus/$target"
  cp -n fuzz/seeds/"$target"/* "fuzz/corpus/$target/" 2>/dev/null || true
  log "$target for ${secs}s"
  logf="$(mktemp)"
  if cargo +nightly fuzz run -O "$target" -- -max_total_time="$secs" -rss_limit_mb=2048 \
      -print_final_stats=1 >"$logf" 2>&1; then
    grep -E "^(Done|stat::number_of_executed_units)" "$logf" >&2 || true
  else
    tail -40 "$logf" >&2
    log "$target FAILED (crashing input under fuzz/artifacts/$target)"
    exit 1
  fi
  rm -f "$logf"
done
log "ok"
