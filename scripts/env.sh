# Source me:  . scripts/env.sh
# Exports the locations produced by scripts/build-llama.sh and scripts/fetch-models.sh
# (does not build or download anything).
#   DCGGUF_CACHE         cache root            (default $HOME/.cache/dcgguf)
#   DCGGUF_LLAMA_PREFIX  llama.cpp install     ($DCGGUF_CACHE/llama.cpp-<ver>-r<rev>: bin/ lib/ include/;
#                        <ver> LLAMA_PY_VERSION, <rev> LLAMA_BUILD_REV of vendor/llama.cpp.lock)
#   DCGGUF_LLAMA_BIN     $DCGGUF_LLAMA_PREFIX/bin
#   DCGGUF_MODELS        fetched models dir    ($DCGGUF_CACHE/models)
#   DCGGUF_SHARED_MODELS shared test models folder, if there is one (<repo>/shared/models,
#                        <repo>/../shared/models or /work/shared/models): MiniLM
#   DCGGUF_SMOLLM2       path of SmolLM2-135M-Instruct.Q4_1.gguf
#   DCGGUF_MINILM        folder of the four all-MiniLM-L6-v2 GGUFs the tests use: the shared
#                        folder when it holds them, else $DCGGUF_MODELS/minilm (converted by
#                        scripts/fetch-models.sh); tests/minilm_paths searches the same way
# Also prepends the llama.cpp bin/ to PATH and lib/pkgconfig to PKG_CONFIG_PATH.
_dcgguf_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
_dcgguf_ver="$(sed -n 's/^LLAMA_PY_VERSION=//p' "$_dcgguf_root/vendor/llama.cpp.lock" 2>/dev/null)"
_dcgguf_rev="$(sed -n 's/^LLAMA_BUILD_REV=//p' "$_dcgguf_root/vendor/llama.cpp.lock" 2>/dev/null)"
export DCGGUF_CACHE="${DCGGUF_CACHE:-$HOME/.cache/dcgguf}"
export DCGGUF_LLAMA_PREFIX="${DCGGUF_LLAMA_PREFIX:-$DCGGUF_CACHE/llama.cpp-${_dcgguf_ver:-0.3.36}-r${_dcgguf_rev:-2}}"
export DCGGUF_LLAMA_BIN="$DCGGUF_LLAMA_PREFIX/bin"
export DCGGUF_MODELS="${DCGGUF_MODELS:-$DCGGUF_CACHE/models}"
if [ -z "${DCGGUF_SHARED_MODELS:-}" ]; then
  for _d in "$_dcgguf_root/shared/models" "$_dcgguf_root/../shared/models" /work/shared/models; do
    if [ -d "$_d" ]; then DCGGUF_SHARED_MODELS="$(cd "$_d" && pwd)"; break; fi
  done
fi
export DCGGUF_SHARED_MODELS="${DCGGUF_SHARED_MODELS:-}"
export DCGGUF_SMOLLM2="$DCGGUF_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
DCGGUF_MINILM="$DCGGUF_MODELS/minilm"
if [ -n "$DCGGUF_SHARED_MODELS" ] && [ -f "$DCGGUF_SHARED_MODELS/all-MiniLM-L6-v2-f32.gguf" ]; then
  DCGGUF_MINILM="$DCGGUF_SHARED_MODELS"
fi
export DCGGUF_MINILM
case ":$PATH:" in *":$DCGGUF_LLAMA_BIN:"*) ;; *) export PATH="$DCGGUF_LLAMA_BIN:$PATH" ;; esac
export PKG_CONFIG_PATH="$DCGGUF_LLAMA_PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
[ -x "$DCGGUF_LLAMA_BIN/llama-completion" ] || echo "env.sh: note: llama.cpp not built yet (run scripts/build-llama.sh)" >&2
[ -f "$DCGGUF_SMOLLM2" ] || echo "env.sh: note: SmolLM2 not fetched yet (run scripts/fetch-models.sh)" >&2
[ -f "$DCGGUF_MINILM/all-MiniLM-L6-v2-f32.gguf" ] || echo "env.sh: note: MiniLM not fetched yet (run scripts/fetch-models.sh)" >&2
unset _dcgguf_root _dcgguf_ver _dcgguf_rev _d
