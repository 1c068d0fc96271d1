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
# llama.cpp first: fetch-models.sh converts MiniLM with its gguf-py and llama-quantize
scripts/build-llama.sh >/dev/null
# llama-cpp-python from its pinned sdist, for the Python-host tests (cached venv).
scripts/build-llama-cpp-python.sh >/dev/null
scripts/fetch-models.sh >/dev/null
# shellcheck source=scripts/env.sh
. scripts/env.sh
# Missing models, Python packages or llama.cpp are failures here, not skips: build.rs
# detects them for the tests (a test whose prerequisite is absent is "ignored, needs ..."),
# and these make it treat them as present, so such a test runs and fails naming what is
# missing.
export DCGGUF_REQUIRE_MODELS=1 DCGGUF_REQUIRE_PYTHON=1 DCGGUF_REQUIRE_LLAMA=1
log="$(mktemp)"
# The tests' temporary files go to a directory of this run's own, emptied first and removed at
# the end: whatever a test leaves behind (an aborted process, a tool's own temp files) cannot
# pile up from run to run (one CI run, stop 24, failed with a full /tmp).
test_tmp="$PWD/target/test-tmp"
rm -rf "$test_tmp"
mkdir -p "$test_tmp"
trap 'rm -f "$log"; rm -rf "$test_tmp"' EXIT
# --no-fail-fast: one failing binary must not hide the others from the CI report.
TMPDIR="$test_tmp" cargo test --release --no-fail-fast 2>&1 | tee "$log"
# Nothing may be ignored here: every test runs. A test ignored on purpose is listed (by name,
# one extended regex per line) in ALLOWED_IGNORED.
ALLOWED_IGNORED=""
# Except one where there is no shared models folder (a clone anywhere else): the test that
# compares the MiniLM fetch-models.sh converts with the shared folder's has nothing to compare.
shared_minilm=1
for t in f32 f16 bf16 q8_0; do
  [ -f "${DCGGUF_SHARED_MODELS:-/nonexistent}/all-MiniLM-L6-v2-$t.gguf" ] || shared_minilm=0
done
[ "$shared_minilm" = 1 ] || ALLOWED_IGNORED="^test fetched_minilm_matches_the_shared_models "
ignored="$(grep -E '^test .* \.\.\. ignored' "$log" || true)"
if [ -n "$ALLOWED_IGNORED" ] && [ -n "$ignored" ]; then
  ignored="$(grep -vE "$ALLOWED_IGNORED" <<<"$ignored" || true)"
fi
if [ -n "$ignored" ]; then
  echo "test.sh: $(wc -l <<<"$ignored") test(s) ignored; every test must run here:" >&2
  echo "$ignored" >&2
  exit 1
fi
if grep -E '^test result: .* [1-9][0-9]* ignored' "$log" >/dev/null && [ -z "$ALLOWED_IGNORED" ]; then
  echo "test.sh: a test binary reports ignored tests:" >&2
  grep -E '^test result: .* [1-9][0-9]* ignored' "$log" >&2
  exit 1
fi
fuzz_secs="${DCGGUF_FUZZ_SECONDS:-60}"
if [ "$fuzz_secs" != 0 ]; then
  scripts/fuzz.sh "$fuzz_secs"
else
  echo "!!!!! FUZZING SKIPPED: DCGGUF_FUZZ_SECONDS=0" >&2
fi
