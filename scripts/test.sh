#!/usr/bin/env bash
# Runs every test of dcgguf on this machine, installing what the tests need first:
# unit and integration tests (real models, gguf-py, real llama.cpp, the C API), then bounded
# fuzzing. Idempotent; heavy things (llama.cpp build, models) are cached under
# ${DCGGUF_CACHE:-~/.cache/dcgguf}, keyed by version.
#   scripts/test.sh                 everything
#   DCGGUF_FUZZ_SECONDS=0 scripts/test.sh   skip fuzzing (a developer's choice; CI never sets it)
#   DCGGUF_FUZZ_SECONDS=N scripts/test.sh   fuzz each target N seconds (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/fetch-models.sh >/dev/null
scripts/build-llama.sh >/dev/null
# shellcheck source=scripts/env.sh
. scripts/env.sh
# Missing models, Python packages or llama.cpp are failures here, not skips.
export DCGGUF_REQUIRE_MODELS=1 DCGGUF_REQUIRE_PYTHON=1 DCGGUF_REQUIRE_LLAMA=1
cargo test --release
fuzz_secs="${DCGGUF_FUZZ_SECONDS:-60}"
if [ "$fuzz_secs" != 0 ]; then
  scripts/fuzz.sh "$fuzz_secs"
else
  echo "!!!!! FUZZING SKIPPED: DCGGUF_FUZZ_SECONDS=0" >&2
fi
