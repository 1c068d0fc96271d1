"""Finding and loading libdcgguf, and the ctypes prototypes of its C API (ffi/dcgguf.h).

:func:`load` returns the one ``ctypes.CDLL`` of libdcgguf this process uses, with every
function's ``argtypes``/``restype`` set; other modules of the package (and the llama-cpp-python
hook module) call it rather than loading the library themselves, so that one copy of the
library, with one memory budget and one set of hooks, serves them all.

Where the library comes from:

1. ``$DCGGUF_LIB`` when set: a path to libdcgguf.so, the only place looked at (a path that
   names no file is an error, not a reason to load another library);
2. else, first found: the copy bundled at install time next to this file (``pip install ./python`` builds it with
   cargo, or copies ``$DCGGUF_LIB`` if set then);
3. ``target/release/libdcgguf.so`` of the dcgguf repository this package sits in (a source
   checkout used with ``PYTHONPATH=python`` or ``pip install -e ./python``; build it with
   ``cargo build --release``; ``$CARGO_TARGET_DIR`` is honoured).
"""

import ctypes
import os
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_int32,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path

LIB_NAME = "libdcgguf.so"

#: ``typedef int (*dcgguf_progress_fn)(uint64_t done, uint64_t total, void *user)``
PROGRESS_FN = CFUNCTYPE(c_int, c_uint64, c_uint64, c_void_p)

#: ``dcgguf_options.level`` (``dcgguf_level`` of ffi/dcgguf.h): the default setting and the
#: best ratio; other values are Zstd levels -7..22.
LEVEL_DEFAULT = 0
LEVEL_MAX = 100

#: ``dcgguf_options.quantize``
QUANTIZE_NONE = 0
QUANTIZE_INT8 = 1


class Options(Structure):
    """``struct dcgguf_options`` of ffi/dcgguf.h, field for field (version 2). Filled by
    ``dcgguf_options_init_size`` with this size, so that a newer library (a longer struct)
    reads it as what it is: a version-2 struct whose later fields keep their defaults."""

    _fields_ = [
        ("size", c_uint32),
        ("threads", c_uint32),
        ("force", c_uint32),
        ("level", c_int32),
        ("chunk_size", c_uint64),
        ("quantize", c_uint32),
        ("per_row", c_uint32),
        ("permute", c_uint32),
        ("step", c_float),
        ("embd_step", c_float),
        ("alpha", c_float),
        ("fold_alpha", c_float),
        ("tensor_alpha", c_float),
        ("block_adapt", c_float),
        ("prune", c_float),
        ("rdo", c_float),
        ("reserved", c_uint32),
        ("gptq_damp", c_double),
        ("imatrix", c_char_p),
        ("calib", c_char_p),
        ("gptq", c_char_p),
        # Version 2: the cost model. Zero is "not set" for each.
        ("profile", c_char_p),
        ("storage_bps", c_double),
        ("target_size", c_uint64),
    ]


class LibraryNotFoundError(OSError):
    """libdcgguf.so could not be found or loaded, or is not the version this package needs."""


_R = c_int  # dcgguf_result
_FILE = c_void_p  # dcgguf_file *

# name -> (restype, argtypes), as declared in ffi/dcgguf.h.
_PROTOTYPES = {
    "dcgguf_version": (c_char_p, []),
    "dcgguf_last_error": (c_size_t, [c_char_p, c_size_t]),
    "dcgguf_error_message": (_R, [c_int, c_char_p, c_size_t, POINTER(c_size_t)]),
    "dcgguf_open": (_R, [c_char_p, POINTER(_FILE)]),
    "dcgguf_free": (None, [_FILE]),
    "dcgguf_set_threads": (_R, [_FILE, c_uint32]),
    "dcgguf_original_size": (_R, [_FILE, POINTER(c_uint64)]),
    "dcgguf_stored_size": (_R, [_FILE, POINTER(c_uint64)]),
    "dcgguf_tensor_count": (_R, [_FILE, POINTER(c_size_t)]),
    "dcgguf_find_tensor": (_R, [_FILE, c_char_p, POINTER(c_size_t)]),
    "dcgguf_tensor_name": (_R, [_FILE, c_size_t, POINTER(c_char_p)]),
    "dcgguf_tensor_type": (_R, [_FILE, c_size_t, POINTER(c_uint32)]),
    "dcgguf_tensor_shape": (
        _R,
        [_FILE, c_size_t, POINTER(c_uint64), c_size_t, POINTER(c_size_t)],
    ),
    "dcgguf_tensor_raw_size": (_R, [_FILE, c_size_t, POINTER(c_uint64)]),
    "dcgguf_tensor_stored_size": (_R, [_FILE, c_size_t, POINTER(c_uint64)]),
    "dcgguf_tensor_offset": (_R, [_FILE, c_size_t, POINTER(c_uint64)]),
    "dcgguf_read_tensor": (_R, [_FILE, c_size_t, c_void_p, c_size_t]),
    "dcgguf_read_tensor_range": (_R, [_FILE, c_size_t, c_uint64, c_void_p, c_size_t]),
    "dcgguf_read_at": (_R, [_FILE, c_uint64, c_void_p, c_size_t, POINTER(c_size_t)]),
    "dcgguf_llama_check": (_R, []),
    "dcgguf_set_memory_budget": (_R, [c_char_p]),
    "dcgguf_options_init_size": (_R, [POINTER(Options), c_size_t]),
    "dcgguf_compress": (_R, [c_char_p, c_char_p, POINTER(Options), PROGRESS_FN, c_void_p]),
    "dcgguf_decompress": (_R, [c_char_p, c_char_p, POINTER(Options), PROGRESS_FN, c_void_p]),
    "dcgguf_verify": (_R, [c_char_p, c_char_p, POINTER(Options), PROGRESS_FN, c_void_p]),
    "dcgguf_last_report_json": (_R, [c_char_p, c_size_t, POINTER(c_size_t)]),
    "dcgguf_inspect_json": (_R, [_FILE, c_char_p, c_size_t, POINTER(c_size_t)]),
    "dcgguf_inspect_json_opts": (
        _R,
        [_FILE, POINTER(Options), c_char_p, c_size_t, POINTER(c_size_t)],
    ),
    "dcgguf_metadata_json": (_R, [_FILE, c_char_p, c_size_t, POINTER(c_size_t)]),
    "dcgguf_type_name": (_R, [c_uint32, POINTER(c_char_p)]),
}

_lock = threading.Lock()
_lib = None
_path = None


def candidates():
    """The paths :func:`load` tries, in order (see the module docstring)."""
    env = os.environ.get("DCGGUF_LIB")
    if env:
        return [Path(env)]
    here = Path(__file__).resolve().parent
    out = [here / LIB_NAME]
    repo = here.parent.parent
    if (repo / "Cargo.toml").is_file():
        target = Path(os.environ.get("CARGO_TARGET_DIR") or repo / "target")
        out.append(target / "release" / LIB_NAME)
    return out


def load():
    """The ``ctypes.CDLL`` of libdcgguf, loaded once per process with its prototypes set.

    Raises :class:`LibraryNotFoundError` naming every place it looked.
    """
    global _lib, _path
    with _lock:
        if _lib is not None:
            return _lib
        tried = candidates()
        path = next((p for p in tried if p.is_file()), None)
        if path is None:
            raise LibraryNotFoundError(
                "libdcgguf.so not found; looked at: "
                + ", ".join(str(p) for p in tried)
                + ". Set DCGGUF_LIB to its path, install the package with "
                "`pip install ./python` from a dcgguf checkout (builds it with cargo), or run "
                "`cargo build --release` in the checkout this package is in."
            )
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise LibraryNotFoundError(f"cannot load {path}: {e}") from e
        for name, (restype, argtypes) in _PROTOTYPES.items():
            try:
                fn = getattr(lib, name)
            except AttributeError:
                raise LibraryNotFoundError(
                    f"{path} has no {name}: it was built from another dcgguf version than "
                    "this package (rebuild it, or point DCGGUF_LIB at a matching one)"
                ) from None
            fn.restype = restype
            fn.argtypes = argtypes
        # Every library with dcgguf_options_init_size reads a version-2 struct (a newer one
        # takes it for what it is); one that refuses its size is not a version this package
        # can talk to.
        o = Options()
        if lib.dcgguf_options_init_size(ctypes.byref(o), ctypes.sizeof(Options)) != 0:
            raise LibraryNotFoundError(
                f"{path}: refuses a dcgguf_options of {ctypes.sizeof(Options)} bytes: "
                "library and package versions differ"
            )
        _lib, _path = lib, path
        return lib


def path():
    """The file :func:`load` loaded (loading it first)."""
    load()
    return _path
