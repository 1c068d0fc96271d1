"""dcgguf for Python: compress GGUF models into DC-GGUF files (lossless, or compression-aware
INT8), decompress and verify them, and read their tensors as numpy arrays, in-process.

A thin ctypes binding over the C API of libdcgguf (ffi/dcgguf.h), rather than a compiled
extension module:

- one ABI serves C and Python: the header is tested once (tests/c_header.rs diffs it against
  the Rust exports, ffi/tests/api_test.c calls every function), and this package only
  declares the same prototypes (``dcgguf._lib``);
- nothing to compile per Python version: the package is pure Python, and the one native
  library works with every CPython 3 (no per-version wheels, no maturin/pyo3 build);
- the same libdcgguf is what the llama-cpp-python integration loads in-process:
  :func:`dcgguf._lib.load` returns the process's single ``ctypes.CDLL`` of it, shared by
  every user.

Example::

    import dcgguf

    dcgguf.compress("model.gguf", "model.dc.gguf", progress=lambda done, total: print(done, total))
    dcgguf.verify("model.dc.gguf", against="model.gguf")
    with dcgguf.DcReader("model.dc.gguf") as r:
        for t in r.tensors:
            print(t.name, t.type_name, t.shape, r.tensor(t.name).shape)
        print(r.metadata["general.architecture"])
    dcgguf.decompress("model.dc.gguf", "model.back.gguf")

Errors raise subclasses of :class:`DcggufError`, one per C result code
(:mod:`dcgguf.errors`). libdcgguf.so is found through ``$DCGGUF_LIB``, else the copy bundled
at install time, else the ``target/release`` of the checkout the package sits in
(:mod:`dcgguf._lib`).
"""

from . import _lib
from ._lib import LEVEL_DEFAULT, LEVEL_MAX, LibraryNotFoundError
from .convert import compress, decompress, inspect, verify
from .errors import *  # noqa: F401,F403 - one class per C result code
from .errors import DcggufError, error_class
from .reader import DcReader, DcTensor

__version__ = "0.1.0"


def library_version():
    """The version of the loaded libdcgguf (``dcgguf_version()``)."""
    return _lib.load().dcgguf_version().decode()


__all__ = [
    "compress",
    "decompress",
    "verify",
    "inspect",
    "DcReader",
    "DcTensor",
    "DcggufError",
    "LEVEL_DEFAULT",
    "LEVEL_MAX",
    "LibraryNotFoundError",
    "error_class",
    "library_version",
]
