"""compress / decompress / verify / inspect: the CLI's subcommands, run in-process by
libdcgguf's ``dcgguf_compress``, ``dcgguf_decompress``, ``dcgguf_verify`` and
``dcgguf_inspect_json`` (the same library code the ``dcgguf`` command runs).

Progress: pass ``progress=callable(done, total)``; it is called with bytes done and the total
(compress: input bytes; decompress and verify: original bytes; a lossy compress: bytes of the
quantized model, 0 and no calls while it quantizes). ``done`` only grows and ends at
``total``. Calls come from one thread at a time, the caller's when ``threads`` is 0.

Cancelling: return ``False`` from the callback (:class:`~dcgguf.errors.CancelledError` is
raised) or raise any exception in it (that exception propagates). Either way the operation
stops and removes what it was writing. Ctrl-C does the same and raises ``KeyboardInterrupt``
(with or without a callback of yours: the package always passes one), promptly when the call
was made from the main thread with ``threads=0`` (the default); otherwise only once the
operation has completed.
"""

import contextlib
import ctypes
import os
import signal

from . import _lib
from .errors import InvalidArgumentError, check

_QUANTIZE = {None: _lib.QUANTIZE_NONE, "int8": _lib.QUANTIZE_INT8}


def _path(p):
    return os.fsencode(os.fspath(p))


def _options(lib, threads=0, force=False, **kw):
    o = _lib.Options()
    check(lib, lib.dcgguf_options_init(ctypes.byref(o)))
    o.threads = threads
    o.force = 1 if force else 0
    for name, value in kw.items():
        if value is None:
            continue  # keeps the library's default (NaN / NULL / the CLI's value)
        if name in ("imatrix", "calib", "gptq"):
            value = _path(value)
        elif name in ("per_row", "permute"):
            value = 1 if value else 0
        setattr(o, name, value)
    return o


class _Progress:
    """The C callback around the caller's: remembers an exception it raised (which cancels),
    and while the library runs turns Ctrl-C into a cancel (see :meth:`sigint_cancels`)."""

    def __init__(self, progress):
        self.progress = progress
        self.exc = None

        def call(done, total, _user):
            try:
                if self.exc is None and self.progress is not None:
                    if self.progress(done, total) is False:
                        return 1
                # Ctrl-C, recorded by _on_sigint before this call or during the caller's.
                return 0 if self.exc is None else 1
            except BaseException as e:  # noqa: B036 - re-raised by finish()
                self.exc = e
                return 1

        # Kept on self: ctypes must not free the trampoline while the library may call it.
        self.c_fn = _lib.PROGRESS_FN(call)

    def _on_sigint(self, _signum, _frame):
        if self.exc is None:
            self.exc = KeyboardInterrupt()

    @contextlib.contextmanager
    def sigint_cancels(self):
        """While the library runs, Ctrl-C cancels it and then raises KeyboardInterrupt.

        Python runs signal handlers between bytecodes of the main thread, here at the entry of
        the progress callback; the default handler would raise KeyboardInterrupt right there,
        before any ``try`` of the callback, and ctypes would drop the exception and return
        garbage to the library. This handler only records it (callbacks on the library's own
        threads, with ``threads`` > 0, do not run handlers: the interrupt is then seen once the
        call has returned). A handler the program installed itself is left alone, as is SIGINT off
        the main thread."""
        try:
            installed = signal.getsignal(signal.SIGINT) is signal.default_int_handler
            if installed:
                signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread
            installed = False
        try:
            yield
        finally:
            if installed:
                signal.signal(signal.SIGINT, signal.default_int_handler)

    def finish(self, lib, code):
        """Raises what the call ended with: the callback's exception (or Ctrl-C's) first."""
        if self.exc is not None:
            exc, self.exc = self.exc, None
            raise exc
        check(lib, code)


def _run(fn, a, b, opts, progress):
    lib = _lib.load()
    p = _Progress(progress)
    with p.sigint_cancels():
        code = getattr(lib, fn)(a, b, ctypes.byref(opts), p.c_fn, None)
    p.finish(lib, code)


def compress(
    input,
    output,
    *,
    level=None,
    chunk_size=None,
    threads=0,
    force=False,
    quantize=None,
    step=None,
    embd_step=None,
    alpha=None,
    fold_alpha=None,
    tensor_alpha=None,
    block_adapt=None,
    prune=None,
    rdo=None,
    permute=False,
    per_row=False,
    imatrix=None,
    calib=None,
    gptq=None,
    gptq_damp=None,
    progress=None,
):
    """GGUF -> DC-GGUF, as ``dcgguf compress``.

    ``level`` Zstd level -7..22 (default 19), ``chunk_size`` raw bytes per chunk (default
    1 MiB, at most 64 MiB), ``threads`` 0 = one per core, ``force`` replaces an existing output.
    Part 1 of a split model (``name-00001-of-0000N.gguf``) compresses every part.

    ``quantize="int8"`` is the lossy mode (``--quantize int8``); its options are those of the
    CLI with underscores (``step``, ``embd_step``, ``alpha``, ``fold_alpha``, ``tensor_alpha``,
    ``block_adapt``, ``prune``, ``rdo``, ``permute``, ``per_row``, ``imatrix``, ``calib``,
    ``gptq``, ``gptq_damp``); None keeps the CLI's default. Without ``quantize`` they are
    refused (:class:`InvalidArgumentError`), as the CLI refuses them.
    """
    if quantize not in _QUANTIZE:
        raise InvalidArgumentError(f"quantize={quantize!r}: None or 'int8'", 2)
    lib = _lib.load()
    opts = _options(
        lib,
        threads=threads,
        force=force,
        level=level,
        chunk_size=chunk_size,
        quantize=_QUANTIZE[quantize],
        step=step,
        embd_step=embd_step,
        alpha=alpha,
        fold_alpha=fold_alpha,
        tensor_alpha=tensor_alpha,
        block_adapt=block_adapt,
        prune=prune,
        rdo=rdo,
        permute=permute or None,
        per_row=per_row or None,
        imatrix=imatrix,
        calib=calib,
        gptq=gptq,
        gptq_damp=gptq_damp,
    )
    _run("dcgguf_compress", _path(input), _path(output), opts, progress)


def decompress(input, output, *, threads=0, force=False, progress=None):
    """DC-GGUF -> the original GGUF, bit for bit (a lossy DC file gives the quantized GGUF),
    every checksum checked, as ``dcgguf decompress``."""
    opts = _options(_lib.load(), threads=threads, force=force)
    _run("dcgguf_decompress", _path(input), _path(output), opts, progress)


def verify(input, against=None, *, threads=0, progress=None):
    """Decodes all of a DC-GGUF file and checks every checksum; with ``against`` also
    compares the decoded bytes with that file (a difference raises
    :class:`~dcgguf.errors.CorruptError`), as ``dcgguf verify [--against]``."""
    opts = _options(_lib.load(), threads=threads)
    other = None if against is None else _path(against)
    _run("dcgguf_verify", _path(input), other, opts, progress)


def inspect(path):
    """What ``dcgguf inspect --json`` prints, as a dict: ``format_version``,
    ``original_bytes``, ``file_bytes``, ``ratio``, ``tensor_raw_bytes``,
    ``tensor_stored_bytes``, ``entropy_bound_bytes`` and ``tensors`` (one dict per tensor:
    ``name``, ``ggml_type``, ``shape`` in ggml order, ``raw_bytes``, ``stored_bytes``,
    ``ratio``, ``transform``, ``chunks``, ``raw_chunks``, ``entropy_bound_bytes``)."""
    from .reader import DcReader

    with DcReader(path) as r:
        return r.inspect()
