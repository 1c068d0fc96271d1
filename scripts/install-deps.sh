#!/usr/bin/env bash
# Install the system and Python dependencies used by dcgguf's build, tests and benches.
# Idempotent and quiet: does nothing (and needs no network) when everything is present.
#
#   apt (root only):  cmake build-essential clang libclang-dev pkg-config zstd
#   pip:              scripts/requirements.txt (normal resolution)
#                     scripts/requirements-nodeps.txt (--no-deps: zipnn, see that file)
#
# Environment knobs:
#   DCGGUF_SKIP_APT=1   don't touch apt packages
#   DCGGUF_SKIP_PIP=1   don't touch Python packages
#   PYTHON=...          python interpreter to install into (default: python3)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "[install-deps] $*" >&2; }
die() { echo "[install-deps] ERROR: $*" >&2; exit 1; }

APT_PKGS=(cmake build-essential clang libclang-dev pkg-config zstd)

# ---------------------------------------------------------------- apt
if [ "${DCGGUF_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install manually: ${missing[*]}"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
      command -v sudo >/dev/null 2>&1 || die "not root and no sudo; install manually: ${missing[*]}"
      SUDO="sudo -n"
    fi
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null || die "apt-get update failed"
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || die "apt-get install ${missing[*]} failed"
  fi
fi

# ---------------------------------------------------------------- pip
if [ "${DCGGUF_SKIP_PIP:-0}" != 1 ]; then
  PY="${PYTHON:-$(command -v python3 || command -v python || true)}"
  [ -n "$PY" ] || die "python3 not found"
  PIP=("$PY" -m pip --disable-pip-version-check -q)
  export PIP_ROOT_USER_ACTION=ignore

  # prints the requirement lines of FILE that are not satisfied (name==version pins only)
  unsatisfied() {
    "$PY" - "$1" <<'PYEOF'
import sys
from importlib import metadata
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, ver = line.partition("==")
    try:
        have = metadata.version(name.strip())
    except metadata.PackageNotFoundError:
        have = None
    if have != ver.strip():
        print(line)
PYEOF
  }

  todo="$(unsatisfied "$HERE/requirements.txt")"
  if [ -n "$todo" ]; then
    log "pip install $(echo $todo)"
    "${PIP[@]}" install -r "$HERE/requirements.txt" || die "pip install -r requirements.txt failed"
  fi

  todo="$(unsatisfied "$HERE/requirements-nodeps.txt")"
  if [ -z "$todo" ] && ! "$PY" -c 'import zipnn_core' 2>/dev/null; then
    todo="$(grep -v '^\s*#' "$HERE/requirements-nodeps.txt" | sed '/^\s*$/d')"   # broken install
  fi
  if [ -n "$todo" ]; then
    log "pip install --no-deps $(echo $todo) (builds a C extension)"
    "${PIP[@]}" install --no-deps --force-reinstall $todo \
      || die "pip install --no-deps $todo failed (needs a C compiler and Python headers)"
  fi
  "$PY" -c 'import gguf, numpy, zstandard, zipnn_core' \
    || die "Python deps installed but not importable with $PY"
fi
log "ok"
