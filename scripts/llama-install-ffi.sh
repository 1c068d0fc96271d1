#!/usr/bin/env bash
# Builds libdcgguf and libdcgguf_preload (release) and installs the C API and the preload
# library:
#   PREFIX/lib/libdcgguf.so, PREFIX/lib/libdcgguf.a, PREFIX/include/dcgguf.h,
#   PREFIX/lib/pkgconfig/dcgguf.pc   (link these: exports only dcgguf_*)
#   PREFIX/lib/libdcgguf_preload.so  (LD_PRELOAD only: interposes fread and llama_*)
# Usage: scripts/llama-install-ffi.sh [PREFIX]   (default: $DCGGUF_CACHE/dcgguf or ~/.cache/dcgguf/dcgguf)
# Then: PKG_CONFIG_PATH=PREFIX/lib/pkgconfig pkg-config --cflags --libs dcgguf
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${1:-${DCGGUF_CACHE:-$HOME/.cache/dcgguf}/dcgguf}"
[ "${SKIP_BUILD:-0}" = 1 ] || (cd "$root" && cargo build --release -p dcgguf-capi -p dcgguf-preload)
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
target="${CARGO_TARGET_DIR:-$root/target}/release"
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$target/libdcgguf.so" "$prefix/lib/libdcgguf.so"
install -m 0644 "$target/libdcgguf.a" "$prefix/lib/libdcgguf.a"
install -m 0755 "$target/libdcgguf_preload.so" "$prefix/lib/libdcgguf_preload.so"
install -m 0644 "$root/ffi/dcgguf.h" "$prefix/include/dcgguf.h"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" "$root/ffi/dcgguf.pc.in" \
  > "$prefix/lib/pkgconfig/dcgguf.pc"
echo "installed libdcgguf $version to $prefix (pkg-config: $prefix/lib/pkgconfig/dcgguf.pc;"
echo "  LD_PRELOAD=$prefix/lib/libdcgguf_preload.so for unmodified llama.cpp tools)"
