#!/usr/bin/env bash
# Build the pinned llama.cpp (vendored in the llama-cpp-python sdist from PyPI)
# as shared libraries + CLI tools, llama-server and ggml-rpc-server (GGML_RPC=ON), CPU
# only, offline (no web UI download, no OpenSSL), and install it into
#   ${DCGGUF_CACHE:-$HOME/.cache/dcgguf}/llama.cpp-<version>-r<build rev>/{bin,lib,include}
# (both from vendor/llama.cpp.lock). Prints the install prefix on stdout (everything else
# goes to stderr).
#
# Idempotent: if the prefix holds a stamp matching the pinned source and build
# configuration, nothing is done. The install is atomic: the tree is staged beside the
# prefix, stamped, then renamed into place, so a prefix that exists is complete. Concurrent
# runs are serialised with flock on $DCGGUF_CACHE/build/<prefix name>.lock.
#
# Environment knobs:
#   DCGGUF_CACHE            cache root (default: $HOME/.cache/dcgguf)
#   DCGGUF_LLAMA_NATIVE=1   build with -march=native (GGML_NATIVE=ON); default is a
#                           portable x86-64-v3 set (AVX2/FMA/F16C/BMI2)
#   DCGGUF_JOBS             parallel build jobs (default: nproc)
#   DCGGUF_KEEP_BUILD=1     keep the cmake build tree after installing
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$ROOT/vendor/llama.cpp.lock"

log() { echo "[build-llama] $*" >&2; }
die() { echo "[build-llama] ERROR: $*" >&2; exit 1; }

[ -f "$LOCK" ] || die "missing lock file $LOCK"
# shellcheck source=../vendor/llama.cpp.lock
. "$LOCK"

CACHE="${DCGGUF_CACHE:-$HOME/.cache/dcgguf}"
[ -n "${LLAMA_BUILD_REV:-}" ] || die "LLAMA_BUILD_REV missing from $LOCK"
NAME="llama.cpp-$LLAMA_PY_VERSION-r$LLAMA_BUILD_REV"
PREFIX="$CACHE/$NAME"
STAMP="$PREFIX/.dcgguf-complete"
SRC="$ROOT/vendor/llama.cpp"
DL_DIR="$CACHE/downloads"
BUILD="$CACHE/build/$NAME"
JOBS="${DCGGUF_JOBS:-$(nproc 2>/dev/null || echo 2)}"

NATIVE="${DCGGUF_LLAMA_NATIVE:-0}"

# Tools to build and install. llama-completion is the non-interactive
# successor of the old llama-cli (llama-cli now is a chat client built on the server).
# llama-server and ggml-rpc-server are the hosts tests/llama_hosts.rs runs.
TOOLS=(llama-completion llama-embedding llama-perplexity llama-quantize
       llama-imatrix llama-bench llama-tokenize llama-gguf-split
       llama-server ggml-rpc-server)

CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=ON
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=ON        # llama-embedding lives in examples/
  -DLLAMA_BUILD_TOOLS=ON
  -DLLAMA_BUILD_SERVER=ON
  -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF      # would download from the network
  -DLLAMA_OPENSSL=OFF              # no HTTPS model downloads (LLAMA_CURL is gone in this version)
  -DGGML_CCACHE=OFF
  -DGGML_BACKEND_DL=OFF
  -DGGML_RPC=ON                    # ggml-rpc-server, and --rpc in the tools
  -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF
  -DLLAMA_BUILD_NUMBER="$LLAMA_CPP_BUILD_NUMBER"
  -DLLAMA_BUILD_COMMIT="$LLAMA_CPP_COMMIT"
  # binaries and libs find their siblings without LD_LIBRARY_PATH (build tree
  # keeps both in bin/, the install keeps libs in ../lib)
  -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON
  '-DCMAKE_INSTALL_RPATH=$ORIGIN:$ORIGIN/../lib'
)
if [ "$NATIVE" = 1 ]; then
  CMAKE_FLAGS+=(-DGGML_NATIVE=ON)
else
  # GGML_NATIVE=OFF enables the x86-64-v3 set (SSE4.2/AVX/AVX2/FMA/F16C/BMI2) by default
  CMAKE_FLAGS+=(-DGGML_NATIVE=OFF)
fi

STAMP_KEY="sdist=$LLAMA_PY_SDIST_SHA256 commit=$LLAMA_CPP_COMMIT build=$LLAMA_CPP_BUILD_NUMBER native=$NATIVE rev=$LLAMA_BUILD_REV tools=${TOOLS[*]}"

up_to_date() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_KEY" ] || return 1
  local t
  for t in "${TOOLS[@]}"; do [ -x "$PREFIX/bin/$t" ] || return 1; done
}
UP_TO_DATE=0
if up_to_date; then UP_TO_DATE=1; fi

# ---------------------------------------------------------------- toolchain
if [ "$UP_TO_DATE" = 0 ]; then
need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
{ command -v c++ >/dev/null 2>&1 && command -v make >/dev/null 2>&1; } || need_apt+=(build-essential)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${need_apt[*]} via apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq "${need_apt[@]}" >&2 || die "apt-get install ${need_apt[*]} failed"
  else
    die "missing ${need_apt[*]}; install them (e.g. apt-get install -y cmake build-essential)"
  fi
fi
fi
PY="$(command -v python3 || command -v python || true)"
[ -n "$PY" ] || die "python3 is required (to run 'pip download')"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# ---------------------------------------------------------------- source
mkdir -p "$DL_DIR"
SDIST="$DL_DIR/$LLAMA_PY_SDIST"
if [ -f "$SDIST" ] && [ "$(sha256_of "$SDIST")" = "$LLAMA_PY_SDIST_SHA256" ]; then
  log "sdist cached: $SDIST"
else
  rm -f "$SDIST"
  tmp="$(mktemp -d "$DL_DIR/pip.XXXXXX")"
  log "downloading $LLAMA_PY_PACKAGE==$LLAMA_PY_VERSION sdist from PyPI"
  if ! "$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
        --no-binary :all: "$LLAMA_PY_PACKAGE==$LLAMA_PY_VERSION" -d "$tmp" >&2; then
    rm -rf "$tmp"; die "pip download of $LLAMA_PY_PACKAGE==$LLAMA_PY_VERSION failed"
  fi
  [ -f "$tmp/$LLAMA_PY_SDIST" ] || { ls -la "$tmp" >&2; rm -rf "$tmp"; die "expected $LLAMA_PY_SDIST in pip output"; }
  mv "$tmp/$LLAMA_PY_SDIST" "$SDIST"; rm -rf "$tmp"
fi
got="$(sha256_of "$SDIST")"
[ "$got" = "$LLAMA_PY_SDIST_SHA256" ] || { rm -f "$SDIST"; die "sha256 mismatch for $LLAMA_PY_SDIST: got $got, want $LLAMA_PY_SDIST_SHA256"; }

SRC_MARK="$SRC/.dcgguf-source"
if [ -f "$SRC_MARK" ] && [ "$(cat "$SRC_MARK")" = "$LLAMA_PY_SDIST_SHA256" ]; then
  log "source present: $SRC"
else
  log "extracting vendor/llama.cpp from $LLAMA_PY_SDIST"
  rm -rf "$SRC" "$SRC.tmp"
  mkdir -p "$SRC.tmp"
  top="${LLAMA_PY_SDIST%.tar.gz}"
  tar -xzf "$SDIST" -C "$SRC.tmp" --strip-components=3 "$top/vendor/llama.cpp" \
    || die "could not extract $top/vendor/llama.cpp from $SDIST"
  rm -f "$SRC.tmp/.git"   # dangling submodule gitdir pointer
  echo "$LLAMA_PY_SDIST_SHA256" > "$SRC.tmp/.dcgguf-source"
  mv "$SRC.tmp" "$SRC"
fi

# The extracted tree is needed even when the build is cached: vendor/llama.cpp/include
# (bindgen check).
if [ "$UP_TO_DATE" = 1 ]; then
  log "up to date: $PREFIX"
  echo "$PREFIX"
  exit 0
fi

# ---------------------------------------------------------------- build
# One build per prefix at a time (the build tree is shared); a run that waited finds the
# other's install and is done.
mkdir -p "$CACHE/build"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE/build/$NAME.lock"
  flock 9
  if up_to_date; then log "installed meanwhile: $PREFIX"; echo "$PREFIX"; exit 0; fi
fi
# keep cmake's build-info probe from picking up the enclosing dcgguf git repo
export GIT_CEILING_DIRECTORIES="$ROOT/vendor"
t0=$(date +%s)
# A build tree configured the same way (an interrupted run's) is resumed, not redone.
BUILD_KEY="$STAMP_KEY src=$SRC"
if [ -f "$BUILD/.dcgguf-key" ] && [ "$(cat "$BUILD/.dcgguf-key")" = "$BUILD_KEY" ]; then
  log "resuming the build in $BUILD"
else
  log "configuring in $BUILD"
  rm -rf "$BUILD"; mkdir -p "$BUILD"
  cmake -S "$SRC" -B "$BUILD" "${CMAKE_FLAGS[@]}" > "$BUILD/configure.log" 2>&1 \
    || { tail -40 "$BUILD/configure.log" >&2; die "cmake configure failed (log: $BUILD/configure.log)"; }
  echo "$BUILD_KEY" > "$BUILD/.dcgguf-key"
fi

available="$(cmake --build "$BUILD" --target help 2>/dev/null || true)"
targets=()
for t in "${TOOLS[@]}"; do
  if grep -qE "(^|[ .])$t($|[ :])" <<<"$available"; then targets+=("$t")
  else log "warning: target $t not available in this llama.cpp, skipping"; fi
done
for t in llama-completion llama-server ggml-rpc-server; do
  [[ " ${targets[*]} " == *" $t "* ]] || die "target $t missing"
done
log "building (${JOBS} jobs): llama ${targets[*]}"
cmake --build "$BUILD" --target llama "${targets[@]}" -j "$JOBS" > "$BUILD/build.log" 2>&1 \
  || { tail -60 "$BUILD/build.log" >&2; die "build failed (log: $BUILD/build.log)"; }
t1=$(date +%s)
log "build took $((t1 - t0)) s"

# ---------------------------------------------------------------- install
STAGE="$PREFIX.tmp.$$"
rm -rf "$STAGE"; mkdir -p "$STAGE/bin" "$STAGE/lib" "$STAGE/include"
for t in "${targets[@]}"; do cp -a "$BUILD/bin/$t" "$STAGE/bin/"; done
# shared libs (libllama, libggml*, libllama-common, lib*-impl, libmtmd ...) incl. soname links
find "$BUILD/bin" -maxdepth 1 -name 'lib*.so*' -exec cp -a {} "$STAGE/lib/" \;
cp "$SRC/include/"*.h "$STAGE/include/"
cp "$SRC/ggml/include/"*.h "$STAGE/include/"
mkdir -p "$STAGE/lib/pkgconfig"
cat > "$STAGE/lib/pkgconfig/llama.pc" <<EOF
prefix=$PREFIX
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: llama
Description: llama.cpp $LLAMA_CPP_COMMIT (from $LLAMA_PY_PACKAGE $LLAMA_PY_VERSION), built by dcgguf
Version: $LLAMA_CPP_CMAKE_VERSION
Libs: -L\${libdir} -Wl,-rpath,\${libdir} -lllama -lggml -lggml-base -lggml-cpu
Cflags: -I\${includedir}
EOF
cat > "$STAGE/BUILD-INFO" <<EOF
package=$LLAMA_PY_PACKAGE $LLAMA_PY_VERSION
sdist_sha256=$LLAMA_PY_SDIST_SHA256
llama_cpp_commit=$LLAMA_CPP_COMMIT
targets=${targets[*]}
cmake_flags=${CMAKE_FLAGS[*]}
build_seconds=$((t1 - t0))
jobs=$JOBS
compiler=$(c++ --version | head -1)
host=$(uname -m) $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //')
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF

# smoke test from the staging dir (relative rpath => no LD_LIBRARY_PATH needed)
env -u LD_LIBRARY_PATH "$STAGE/bin/llama-completion" --version >/dev/null 2>&1 \
  || { env -u LD_LIBRARY_PATH "$STAGE/bin/llama-completion" --version >&2 || true; die "installed llama-completion does not run"; }
env -u LD_LIBRARY_PATH "$STAGE/bin/llama-server" --version >/dev/null 2>&1 \
  || { env -u LD_LIBRARY_PATH "$STAGE/bin/llama-server" --version >&2 || true; die "installed llama-server does not run"; }

# pkg-config prefix was written for the final location already. The stamp goes in before
# the rename: the rename is the one step that makes the install visible.
echo "$STAMP_KEY" > "$STAGE/.dcgguf-complete"
if [ -e "$PREFIX" ]; then
  # an incomplete or outdated install: move it aside first (the rename stays atomic)
  old="$PREFIX.old.$$"
  mv "$PREFIX" "$old"
  mv "$STAGE" "$PREFIX"
  rm -rf "$old"
else
  mv "$STAGE" "$PREFIX"
fi
if [ "${DCGGUF_KEEP_BUILD:-0}" != 1 ]; then rm -rf "$BUILD"; fi
log "installed to $PREFIX"
echo "$PREFIX"
