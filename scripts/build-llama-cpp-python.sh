#!/usr/bin/env bash
# Build llama-cpp-python from the pinned PyPI sdist (the same sdist whose vendored llama.cpp
# scripts/build-llama.sh builds) into a wheel, and install it into a cached virtual
# environment for the Python-host tests:
#   ${DCGGUF_CACHE:-$HOME/.cache/dcgguf}/llama-cpp-python-<version>/
#       wheel/llama_cpp_python-<version>-*.whl   the built wheel (kept: rebuilding takes minutes)
#       venv/                                    python -m venv --system-site-packages
# Prints the venv's python on stdout (logs go to stderr).
#
# Idempotent: a venv whose stamp matches the sdist checksum and the build flags is reused.
# The build is portable (GGML_NATIVE=OFF, like scripts/build-llama.sh): the CPU of the
# machine that runs the tests may differ from the one that built the wheel.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$ROOT/vendor/llama.cpp.lock"
log() { echo "[build-llama-cpp-python] $*" >&2; }
die() { echo "[build-llama-cpp-python] ERROR: $*" >&2; exit 1; }

# shellcheck source=../vendor/llama.cpp.lock
. "$LOCK"
CACHE="${DCGGUF_CACHE:-$HOME/.cache/dcgguf}"
DL_DIR="$CACHE/downloads"
PREFIX="$CACHE/llama-cpp-python-$LLAMA_PY_VERSION"
VENV="$PREFIX/venv"
STAMP="$PREFIX/.dcgguf-complete"
PY="${PYTHON:-$(command -v python3)}"
JOBS="${DCGGUF_JOBS:-$(nproc 2>/dev/null || echo 2)}"
# Only the libraries llama-cpp-python loads: no tools, examples, server or llava/mtmd.
CMAKE_ARGS_PINNED="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF"
# Runtime dependencies of llama-cpp-python (its pyproject), pinned.
DEPS=(typing-extensions==4.15.0 diskcache==5.6.3 jinja2==3.1.6 numpy==2.4.6)
STAMP_KEY="sdist=$LLAMA_PY_SDIST_SHA256 cmake=$CMAKE_ARGS_PINNED deps=${DEPS[*]} python=$("$PY" -c 'import sys; print(sys.version.split()[0])')"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_KEY" ] && [ -x "$VENV/bin/python" ]; then
  log "ok (cached): $VENV"
  echo "$VENV/bin/python"
  exit 0
fi

sdist="$DL_DIR/$LLAMA_PY_SDIST"
if ! [ -f "$sdist" ] || [ "$(sha256sum "$sdist" | cut -d' ' -f1)" != "$LLAMA_PY_SDIST_SHA256" ]; then
  # scripts/build-llama.sh downloads and checks the same sdist.
  "$ROOT/scripts/build-llama.sh" >/dev/null
fi
[ "$(sha256sum "$sdist" | cut -d' ' -f1)" = "$LLAMA_PY_SDIST_SHA256" ] || die "sdist checksum mismatch: $sdist"

mkdir -p "$PREFIX"
tmp="$(mktemp -d "$PREFIX/tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
wheel_dir="$PREFIX/wheel"
wheel="$(ls "$wheel_dir"/llama_cpp_python-"$LLAMA_PY_VERSION"-*.whl 2>/dev/null | head -1 || true)"
if [ -z "$wheel" ] || [ "$(cat "$wheel_dir/.key" 2>/dev/null)" != "$STAMP_KEY" ]; then
  log "building llama-cpp-python $LLAMA_PY_VERSION from its sdist ($JOBS jobs; takes minutes)"
  t0=$(date +%s)
  CMAKE_ARGS="$CMAKE_ARGS_PINNED" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
    "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps "$sdist" -w "$tmp/wheel" >&2 \
    || die "pip wheel $sdist failed"
  rm -rf "$wheel_dir"
  mv "$tmp/wheel" "$wheel_dir"
  echo "$STAMP_KEY" >"$wheel_dir/.key"
  wheel="$(ls "$wheel_dir"/llama_cpp_python-"$LLAMA_PY_VERSION"-*.whl | head -1)"
  log "built $(basename "$wheel") in $(( $(date +%s) - t0 )) s"
fi

# The stamp, written last, marks a complete venv (a venv records its own path, so it is
# built in place rather than renamed).
rm -rf "$VENV" "$STAMP"
"$PY" -m venv --system-site-packages "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${DEPS[@]}" >&2 \
  || die "pip install ${DEPS[*]} failed"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$wheel" >&2 \
  || die "pip install $wheel failed"
"$VENV/bin/python" -c 'import llama_cpp, sys; print("llama_cpp", llama_cpp.__version__, file=sys.stderr)' >&2 \
  || die "the installed llama_cpp does not import"
echo "$STAMP_KEY" >"$STAMP"
log "ok: $VENV"
echo "$VENV/bin/python"
