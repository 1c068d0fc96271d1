"""Exceptions: one class per ``dcgguf_result`` code of ffi/dcgguf.h, all subclasses of
:class:`DcggufError`. The message is the library's (``dcgguf_last_error``: for corrupt data it
names the tensor and chunk); ``.code`` is the C code.

python/tests/test_dcgguf.py parses the header and checks that every code has its class here,
named after it (``DCGGUF_ERR_BAD_GGUF`` -> ``BadGgufError``).
"""

import ctypes


class DcggufError(Exception):
    """Base class of every error the library reports."""

    #: The ``dcgguf_result`` value; set on each subclass.
    code = None

    def __init__(self, message, code=None):
        super().__init__(message)
        if code is not None:
            self.code = code


class NullPointerError(DcggufError):
    """A required pointer was NULL (a bug in this package if it happens)."""

    code = 1


class InvalidArgumentError(DcggufError):
    """An option out of range, options that exclude each other, or input the operation
    refuses (a file that is already DC-GGUF, ...)."""

    code = 2


class IoError(DcggufError):
    """Reading or writing a file failed (missing input, unwritable directory, ...)."""

    code = 3


class BadGgufError(DcggufError):
    """The input is not a valid GGUF file."""

    code = 4


class NotDcError(DcggufError):
    """The file is a GGUF file but not a DC-GGUF file."""

    code = 5


class UnsupportedVersionError(DcggufError):
    """A DC-GGUF format version this library does not read."""

    code = 6


class CorruptError(DcggufError):
    """Damaged data: a checksum, a structure or decoded bytes that do not match (and a
    ``verify`` against an original that differs)."""

    code = 7


class OutOfRangeError(DcggufError):
    """A byte range outside a tensor or the file."""

    code = 8


class BufferTooSmallError(DcggufError):
    code = 9


class NoSuchTensorError(DcggufError, KeyError):
    """No tensor of that name or index (also a ``KeyError``)."""

    code = 10

    # KeyError's str() quotes its argument; keep the library's message readable.
    __str__ = DcggufError.__str__


class ThreadsError(DcggufError):
    """Worker threads could not be started."""

    code = 11


class LlamaUnavailableError(DcggufError):
    """No compatible llama.cpp in this process."""

    code = 12


class LlamaLoadFailedError(DcggufError):
    code = 13


class SplitModelError(DcggufError):
    code = 14


class PanicError(DcggufError):
    """An internal error of the library (a caught Rust panic)."""

    code = 15


class OtherError(DcggufError):
    code = 16


class OutOfMemoryError(DcggufError):
    """What the file declares could not be allocated."""

    code = 17


class CancelledError(DcggufError):
    """The progress callback cancelled the operation; nothing was left behind."""

    code = 18


class OutputRefusedError(DcggufError):
    """The output exists (and ``force`` is off), is the input, or is not a regular file."""

    code = 19


_BY_CODE = {
    c.code: c
    for c in (
        NullPointerError,
        InvalidArgumentError,
        IoError,
        BadGgufError,
        NotDcError,
        UnsupportedVersionError,
        CorruptError,
        OutOfRangeError,
        BufferTooSmallError,
        NoSuchTensorError,
        ThreadsError,
        LlamaUnavailableError,
        LlamaLoadFailedError,
        SplitModelError,
        PanicError,
        OtherError,
        OutOfMemoryError,
        CancelledError,
        OutputRefusedError,
    )
}


def error_class(code):
    """The exception class for a ``dcgguf_result`` code (:class:`DcggufError` itself for a
    code newer than this package)."""
    return _BY_CODE.get(code, DcggufError)


def last_error(lib):
    """The calling thread's last error message from the library."""
    n = lib.dcgguf_last_error(None, 0)
    buf = ctypes.create_string_buffer(n + 1)
    lib.dcgguf_last_error(buf, n + 1)
    return buf.value.decode("utf-8", "replace")


def check(lib, code):
    """Raises the exception for a non-zero ``dcgguf_result``, with the library's message.
    Must run on the thread that made the call (the message is per thread)."""
    if code != 0:
        msg = last_error(lib) or f"dcgguf error {code}"
        raise error_class(code)(msg, code)


__all__ = ["DcggufError", "error_class"] + [c.__name__ for c in _BY_CODE.values()]
