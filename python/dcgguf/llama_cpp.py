"""DC-GGUF models in llama-cpp-python: one import.

    import dcgguf.llama_cpp            # installs the loader (idempotent)
    from llama_cpp import Llama
    llm = Llama(model_path="model.dc.gguf")

Why an import and not LD_PRELOAD: llama-cpp-python calls llama.cpp through ctypes, i.e. by
``dlsym`` on its own handle of libllama, which never reaches an interposed
``llama_model_load_from_file`` (the preload library only wins the dynamic linker's global
lookup, which programs linked against libllama use). So this module replaces
``llama_cpp.llama_cpp.llama_model_load_from_file`` -- the one function llama-cpp-python loads
models with -- by one that sends DC-GGUF files to libdcgguf's ``dcgguf_llama_model_load``.
libdcgguf finds the libllama llama-cpp-python already loaded (it is opened RTLD_GLOBAL) and
loads the model into it; everything after the load is plain llama-cpp-python. Plain GGUF files
go to llama.cpp's own function, untouched.

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


_original = None


class LoadError(errors.DcggufError, ValueError):
    """A DC-GGUF that could not be loaded; the message is libdcgguf's reason (for damaged data
    it names the region, tensor and chunk).

    Also a ValueError, like llama-cpp-python's own "Failed to load model from file", so callers
    that catch that keep working."""


def _dc_lib() -> ctypes.CDLL:
    """The package's libdcgguf, plus the one prototype that needs llama-cpp-python's own
    ``llama_model_params`` structure (passed by value, so its layout must be theirs)."""
    lib = _lib.load()
    fn = lib.dcgguf_llama_model_load
    if fn.argtypes is None:
        fn.argtypes = [ctypes.c_char_p, _llama.llama_model_params]
        fn.restype = ctypes.c_void_p
    return lib


def _is_dc(lib: ctypes.CDLL, path: bytes) -> bool:
    """True for a DC-GGUF, including damaged ones (libdcgguf then says what is wrong)."""
    handle = ctypes.c_void_p()
    code = lib.dcgguf_open(path, ctypes.byref(handle))
    if code == 0:
        lib.dcgguf_free(handle)
        return True
    return code not in (errors.IoError.code, errors.BadGgufError.code, errors.NotDcError.code)


def llama_model_load_from_file(path_model: bytes, params):
    """Drop-in for llama_cpp.llama_cpp.llama_model_load_from_file."""
    lib = _dc_lib()
    if not _is_dc(lib, path_model):
        return _original(path_model, params)
    model = lib.dcgguf_llama_model_load(path_model, params)
    if not model:
        raise LoadError(
            f"Failed to load model from file: {os.fsdecode(path_model)}: "
            f"{errors.last_error(lib)}",
            errors.LlamaLoadFailedError.code,
        )
    return model


def install() -> None:
    """Routes llama-cpp-python's model loading through dcgguf (idempotent)."""
    global _original
    if _original is not None:
        return
    _dc_lib()  # fail here, not at the first load, if libdcgguf is missing
    _original = _llama.llama_model_load_from_file
    _llama.llama_model_load_from_file = llama_model_load_from_file
    import llama_cpp

    # `from llama_cpp import llama_model_load_from_file` users get the same function.
    llama_cpp.llama_model_load_from_file = llama_model_load_from_file


def uninstall() -> None:
    """Restores llama-cpp-python's own loader."""
    global _original
    if _original is None:
        return
    import llama_cpp

    _llama.llama_model_load_from_file = _original
    llama_cpp.llama_model_load_from_file = _original
    _original = None


def installed() -> bool:
    return _original is not None


install()
