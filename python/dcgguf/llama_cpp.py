"""DC-GGUF models in llama-cpp-python: one import.

    import dcgguf.llama_cpp            # installs the loader (idempotent)
    from llama_cpp import Llama
    llm = Llama(model_path="model.dc.gguf")

Why an import and not LD_PRELOAD: llama-cpp-python calls llama.cpp through ctypes, i.e. by
``dlsym`` on its own handle of libllama, which never reaches an interposed
``llama_model_load_from_file`` (the preload library only wins the dynamic linker's global
lookup, which programs linked against libllama use). So this module replaces
``llama_cpp.llama_cpp.llama_model_load_from_file`` -- the one function llama-cpp-python loads
models with -- by one that sends files to libdcgguf's ``dcgguf_llama_model_load``. libdcgguf
finds the libllama llama-cpp-python already loaded (it is opened RTLD_GLOBAL) and loads the
model into it; everything after the load is plain llama-cpp-python. Plain GGUF files go on to
llama.cpp's own function, unchanged (a file it refuses raises ``LoadError``, a ValueError with
llama-cpp-python's own message and libdcgguf's reason).

Contexts are created and freed, and models freed, through libdcgguf's wrappers too
(``dcgguf_llama_init_from_model``, ``dcgguf_llama_free``, ``dcgguf_llama_model_free``): under a
memory limit (a cgroup's, else ``MemAvailable``) a DC model's context is checked once created,
and where the limit lacks room for what it wrote and reserved, part of the decoded weights moves
to a file whose pages the limit may reclaim, as plain llama.cpp's mapped model's; where the
decoded model does not fit at all, it goes to an unnamed file first, which llama.cpp maps as a
plain GGUF. Without that, llama-cpp-python on SmolLM2 with a 1024-token context was killed under
caps of 140-165 MiB that plain llama.cpp ran in. Other models' contexts are created exactly as
before.

``DCGGUF_LOAD_ROUTE`` chooses how a DC-GGUF reaches llama.cpp, as for every host (README,
"Load routes"); the default FILE* stream works here without the preload library. A memory budget
(``DCGGUF_MEM_BUDGET``) needs the preload library and is not available in this host; the
model then loads fully, with a warning.
"""

from __future__ import annotations

import ctypes
import os

import llama_cpp.llama_cpp as _llama

from . import _lib, errors

__all__ = ["install", "uninstall", "installed", "LoadError"]


# llama-cpp-python's own functions that this module replaced, while installed.
_originals = {}


class LoadError(errors.DcggufError, ValueError):
    """A model file that could not be loaded; the message is libdcgguf's reason (for a damaged
    DC-GGUF it names the region, tensor and chunk; a plain GGUF that llama.cpp refused, llama.cpp
    says why in its log).

    Also a ValueError, like llama-cpp-python's own "Failed to load model from file", so callers
    that catch that keep working."""


def _dc_lib() -> ctypes.CDLL:
    """The package's libdcgguf, plus the prototypes that need llama-cpp-python's own
    ``llama_model_params`` and ``llama_context_params`` structures (passed by value, so their
    layout must be theirs)."""
    lib = _lib.load()
    prototypes = {
        "dcgguf_llama_model_load": (ctypes.c_void_p, [ctypes.c_char_p, _llama.llama_model_params]),
        "dcgguf_llama_init_from_model": (
            ctypes.c_void_p,
            [ctypes.c_void_p, _llama.llama_context_params],
        ),
        "dcgguf_llama_free": (None, [ctypes.c_void_p]),
        "dcgguf_llama_model_free": (None, [ctypes.c_void_p]),
    }
    for name, (restype, argtypes) in prototypes.items():
        fn = getattr(lib, name)
        if fn.argtypes is None:
            fn.argtypes = argtypes
            fn.restype = restype
    return lib


def llama_model_load_from_file(path_model: bytes, params):
    """Drop-in for llama_cpp.llama_cpp.llama_model_load_from_file. Every file goes to
    libdcgguf's loader, which hands plain GGUF files to llama.cpp's own function unchanged: it
    tells them apart without keeping the header's arrays, where opening the file here to ask
    (``dcgguf_open``, which keeps them for ``dcgguf_metadata_json``) left this process's heap
    2.5 MiB larger, a share of what a memory limit leaves the weights' pages."""
    lib = _dc_lib()
    model = lib.dcgguf_llama_model_load(path_model, params)
    if not model:
        raise LoadError(
            f"Failed to load model from file: {os.fsdecode(path_model)}: "
            f"{errors.last_error(lib)}",
            errors.LlamaLoadFailedError.code,
        )
    return model


def llama_init_from_model(model, params):
    """Drop-in for llama_cpp.llama_cpp.llama_init_from_model: libdcgguf's wrapper, which
    creates plain models' contexts unchanged."""
    return _dc_lib().dcgguf_llama_init_from_model(model, params)


def llama_free(ctx):
    """Drop-in for llama_cpp.llama_cpp.llama_free (frees dcgguf's state for the context)."""
    _dc_lib().dcgguf_llama_free(ctx)


def llama_model_free(model):
    """Drop-in for llama_cpp.llama_cpp.llama_model_free (frees dcgguf's state for the model:
    its moved weights' file, the thread that measures their room)."""
    _dc_lib().dcgguf_llama_model_free(model)


_WRAPPED = {
    "llama_model_load_from_file": llama_model_load_from_file,
    "llama_init_from_model": llama_init_from_model,
    "llama_free": llama_free,
    "llama_model_free": llama_model_free,
}


def install() -> None:
    """Routes llama-cpp-python's model loading, its contexts and its frees through dcgguf
    (idempotent)."""
    if _originals:
        return
    _dc_lib()  # fail here, not at the first load, if libdcgguf is missing
    import llama_cpp

    for name, ours in _WRAPPED.items():
        _originals[name] = getattr(_llama, name)
        setattr(_llama, name, ours)
        # `from llama_cpp import llama_model_load_from_file` users get the same function.
        setattr(llama_cpp, name, ours)


def uninstall() -> None:
    """Restores llama-cpp-python's own functions."""
    if not _originals:
        return
    import llama_cpp

    for name, theirs in _originals.items():
        setattr(_llama, name, theirs)
        setattr(llama_cpp, name, theirs)
    _originals.clear()


def installed() -> bool:
    return bool(_originals)


install()
