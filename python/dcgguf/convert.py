"""compress / decompress / verify / inspect: the CLI's subcommands, run in-process by
libdcgguf's ``dcgguf_compress``, ``dcgguf_decompress``, ``dcgguf_verify`` and
``dcgguf_inspect_json_opts`` (the same library code the ``dcgguf`` command runs). Each returns
what the subcommand prints with ``--json``, as a dict (``dcgguf_last_report_json``).

Cost model (``compress`` and ``inspect``): ``profile="auto"`` (the saved machine profile,
``$DCGGUF_CACHE/profile.json`` or ``~/.cache/dcgguf/profile.json``) or a profile path,
``storage_bps`` (plan for storage of that many bytes/s; implies ``"auto"``) and, for compress,
``target_size`` (largest output in bytes; implies ``"auto"``), as ``--profile``,
``--storage-bps`` and ``--target-size``. A missing or stale profile is measured first (a few
seconds; a 128 MiB temporary file next to the profile) and saved, as the CLI does.

Progress: pass ``progress=callable(done, total)``; it is called with bytes done and the
total (compress: input bytes; decompress and verify: original bytes; a lossy compress: twice
the bytes of the quantized model, counted once as it is written, a call after each tensor
quantized, and once as it is compressed; 0 until the input's header is read). ``done`` only
grows and ends at ``total``. Calls come on the calling thread, whatever ``threads`` is (the
work runs on threads of the library's own, which end with the call).

Cancelling: return ``False`` from the callback (:class:`~dcgguf.errors.CancelledError` is
raised) or raise any exception in it (that exception propagates). Either way the operation
stops and removes what it was writing. Ctrl-C does the same and raises ``KeyboardInterrupt``
(with or without a callback of yours: the package always passes one), at the next progress
call when the call was made from the main thread; otherwise only once the operation has
completed.
"""

import contextlib
import ctypes
import json
import os
import signal

from . import _lib
from .errors import InvalidArgumentError, check

_QUANTIZE = {None: _lib.QUANTIZE_NONE, "int8": _lib.QUANTIZE_INT8}
_LEVELS = {"default": _lib.LEVEL_DEFAULT, "max": _lib.LEVEL_MAX}


def _path(p):
    return os.fsencode(os.fspath(p))


def _options(lib, threads=0, force=False, **kw):
    o = _lib.Options()
    check(lib, lib.dcgguf_options_init_size(ctypes.byref(o), ctypes.sizeof(o)))
    o.threads = threads
    o.force = 1 if force else 0
    for name, value in kw.items():
        if value is None:
            continue  # keeps the library's default (NaN / NULL / 0 / the CLI's value)
        if name in ("imatrix", "calib", "gptq", "profile"):
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
        garbage to the library. This handler only records it (the library makes its calls on
        the calling thread, so a call from another thread sees the interrupt once it has
        returned). A handler the program installed itself is left alone, as is SIGINT off the
        main thread."""
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


def _cost_options(storage_bps, target_size):
    """Refuses what the C struct cannot carry: there 0 means "not set", while the CLI refuses
    ``--storage-bps 0`` and can never meet ``--target-size 0``."""
    if storage_bps is not None and not storage_bps > 0:
        raise InvalidArgumentError(
            f"storage_bps={storage_bps!r}: must be a positive number of bytes per second", 2
        )
    if target_size is not None and (
        isinstance(target_size, bool) or not isinstance(target_size, int) or target_size <= 0
    ):
        raise InvalidArgumentError(
            f"target_size={target_size!r}: must be a positive int (bytes)", 2
        )


def _json_text(call):
    """A JSON getter's text, parsed: ``call(buf, len, out_n)`` sized with a first call, then
    copied (``None`` for an empty text)."""
    n = ctypes.c_size_t()
    call(None, 0, ctypes.byref(n))
    buf = ctypes.create_string_buffer(n.value + 1)
    call(buf, n.value + 1, ctypes.byref(n))
    text = buf.raw[: n.value].decode("utf-8")
    return json.loads(text) if text else None


def _run(fn, a, b, opts, progress):
    """Runs a conversion and returns its report (read on this thread, where the library
    keeps it)."""
    lib = _lib.load()
    p = _Progress(progress)
    with p.sigint_cancels():
        code = getattr(lib, fn)(a, b, ctypes.byref(opts), p.c_fn, None)
    p.finish(lib, code)
    return _json_text(lambda *args: check(lib, lib.dcgguf_last_report_json(*args)))


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
    profile=None,
    storage_bps=None,
    target_size=None,
    progress=None,
):
    """GGUF -> DC-GGUF, as ``dcgguf compress``. Returns what ``dcgguf compress --json``
    prints: ``{"command": "compress", "files": [...]}``, one dict per file written
    (``input``, ``output``, ``original_bytes``, ``output_bytes``, ``tensors``, ``chunks``,
    ``ratio``, ``seconds``; one per part of a split model), plus for ``quantize="int8"``
    ``"quantize"``: ``quantized_tensors``, ``kept_tensors``, ``folded_tensors``, ``rel_mse``,
    ``output_bytes`` (the quantized model's tensor data; the file's ``original_bytes`` is the
    size of the quantized GGUF it decompresses to).

    ``level``: ``"default"`` (the default: Zstd's fast strategy tuned for weight planes),
    ``"max"`` (the best ratio, 0.02-0.13% smaller at about level 19's speed, 7-17x slower;
    also :data:`dcgguf.LEVEL_MAX`) or a Zstd level -7..22 (as ``--level``);
    ``chunk_size`` raw bytes per chunk (default
    1 MiB, at most 64 MiB), ``threads`` 0 = one per core, ``force`` replaces an existing output.
    Part 1 of a split model (``name-00001-of-0000N.gguf``) compresses every part.

    ``quantize="int8"`` is the lossy mode (``--quantize int8``); its options are those of the
    CLI with underscores (``step``, ``embd_step``, ``alpha``, ``fold_alpha``, ``tensor_alpha``,
    ``block_adapt``, ``prune``, ``rdo``, ``permute``, ``per_row``, ``imatrix``, ``calib``,
    ``gptq``, ``gptq_damp``); None keeps the CLI's default. Without ``quantize`` they are
    refused (:class:`InvalidArgumentError`), as the CLI refuses them.

    Cost model (see the module docstring): ``profile`` ("auto" or a path), ``storage_bps``
    (bytes/s, > 0) and ``target_size`` (bytes, > 0; when even compressing everything does not
    fit, :class:`InvalidArgumentError` naming the smallest size, and no output).
    """
    if quantize not in _QUANTIZE:
        raise InvalidArgumentError(f"quantize={quantize!r}: None or 'int8'", 2)
    _cost_options(storage_bps, target_size)
    if isinstance(level, str):
        if level not in _LEVELS:
            raise InvalidArgumentError(f"level={level!r}: 'default', 'max' or an int", 2)
        level = _LEVELS[level]
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
        profile=profile,
        storage_bps=storage_bps,
        target_size=target_size,
    )
    return _run("dcgguf_compress", _path(input), _path(output), opts, progress)


def decompress(input, output, *, threads=0, force=False, progress=None):
    """DC-GGUF -> the original GGUF, bit for bit (a lossy DC file gives the quantized GGUF),
    every checksum checked, as ``dcgguf decompress``. Returns ``{"command": "decompress",
    "files": [{"input", "output", "bytes"}, ...]}`` (one per part of a split model)."""
    opts = _options(_lib.load(), threads=threads, force=force)
    return _run("dcgguf_decompress", _path(input), _path(output), opts, progress)


def verify(input, against=None, *, threads=0, progress=None):
    """Decodes all of a DC-GGUF file and checks every checksum; with ``against`` also
    compares the decoded bytes with that file (a difference raises
    :class:`~dcgguf.errors.CorruptError`), as ``dcgguf verify [--against]``. Returns
    ``{"command": "verify", "file", "ok": True, "original_bytes", "against"}``."""
    opts = _options(_lib.load(), threads=threads)
    other = None if against is None else _path(against)
    return _run("dcgguf_verify", _path(input), other, opts, progress)


def inspect(path, *, profile=None, storage_bps=None, threads=0):
    """What ``dcgguf inspect --json`` prints, as a dict (less ``command`` and ``file``):
    ``format_version``, ``original_bytes``, ``file_bytes``, ``ratio``, ``tensor_raw_bytes``,
    ``tensor_stored_bytes``, ``entropy_bound_bytes`` and ``tensors`` (one dict per tensor:
    ``name``, ``ggml_type``, ``shape`` in ggml order, ``raw_bytes``, ``stored_bytes``,
    ``ratio``, ``transform``, ``chunks``, ``raw_chunks``, ``entropy_bound_bytes``).

    With ``profile`` or ``storage_bps`` (as for :func:`compress`) also the cost model's
    prediction, as ``inspect --profile/--storage-bps``: ``predicted_load_seconds`` (one per
    tensor, in ``tensors`` order), ``predicted_total_load_seconds`` and ``storage_bps``."""
    from .reader import DcReader

    with DcReader(path) as r:
        return r.inspect(profile=profile, storage_bps=storage_bps, threads=threads)
