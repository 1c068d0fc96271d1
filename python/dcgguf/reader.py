"""DcReader: a DC-GGUF file's tensors as numpy arrays, like gguf-py's ``GGUFReader`` on the
original file, decompressed on demand by libdcgguf (``dcgguf_read_tensor``: chunks decoded in
parallel, every chunk checksum checked).

Arrays (from :meth:`DcReader.tensor`), as gguf-py builds them:

- F32, F16, F64, I8, I16, I32, I64: that numpy dtype, shape in numpy order (``np_shape``, the
  reverse of ggml's ``shape``);
- BF16: ``uint16`` (numpy has no bfloat16) in the logical shape; ``a.view(np.uint8)`` gives
  the bytes gguf-py returns, ``(a.astype(np.uint32) << 16).view(np.float32)`` the values;
- quantized types: the raw blocks as ``uint8``, shaped ``np_shape[:-1] + (bytes per row,)``
  (gguf-py's ``quant_shape_to_byte_shape``).
"""

import ctypes
import json
import os
from dataclasses import dataclass
from typing import Tuple

from . import _lib
from .errors import NoSuchTensorError, check

# ggml type id -> numpy dtype name, for the types gguf-py returns as typed arrays (plus BF16
# as its 16-bit pattern). Every other type is returned as raw uint8 blocks.
_DTYPES = {
    0: "float32",  # F32
    1: "float16",  # F16
    24: "int8",  # I8
    25: "int16",  # I16
    26: "int32",  # I32
    27: "int64",  # I64
    28: "float64",  # F64
    30: "uint16",  # BF16
}


@dataclass(frozen=True)
class DcTensor:
    """One tensor of the original model."""

    index: int
    name: str
    #: ggml type id (``enum ggml_type``; equals gguf-py's ``GGMLQuantizationType`` values)
    tensor_type: int
    #: ggml type name: "F32", "Q8_0", ...
    type_name: str
    #: ggml order (``shape[0]`` varies fastest), as gguf-py's ``ReaderTensor.shape``
    shape: Tuple[int, ...]
    #: numpy order (reversed), the logical shape of the array :meth:`DcReader.tensor` returns
    np_shape: Tuple[int, ...]
    n_elements: int
    n_bytes: int
    #: bytes the tensor takes compressed in the DC file
    stored_bytes: int
    #: absolute offset of the tensor's data in the original GGUF file
    data_offset: int


class DcReader:
    """An open DC-GGUF file. ``threads``: decode threads (0: one per core)."""

    def __init__(self, path, threads=0):
        self._lib = lib = _lib.load()
        self.path = path
        h = ctypes.c_void_p()
        check(lib, lib.dcgguf_open(os.fsencode(os.fspath(path)), ctypes.byref(h)))
        self._h = h
        if threads:
            self._call("dcgguf_set_threads", threads)
        self.original_size = self._get_u64("dcgguf_original_size")
        self.stored_size = self._get_u64("dcgguf_stored_size")
        self.tensors = [self._tensor_info(i) for i in range(self._count())]
        self._by_name = {t.name: t for t in self.tensors}
        self._metadata = None

    # -- plumbing ------------------------------------------------------------------------

    def _handle(self):
        if self._h is None or not self._h.value:
            raise ValueError("DcReader is closed")
        return self._h

    def _call(self, fn, *args):
        check(self._lib, getattr(self._lib, fn)(self._handle(), *args))

    def _get_u64(self, fn, *args):
        v = ctypes.c_uint64()
        self._call(fn, *args, ctypes.byref(v))
        return v.value

    def _count(self):
        n = ctypes.c_size_t()
        self._call("dcgguf_tensor_count", ctypes.byref(n))
        return n.value

    def _tensor_info(self, i):
        name = ctypes.c_char_p()
        self._call("dcgguf_tensor_name", i, ctypes.byref(name))
        ty = ctypes.c_uint32()
        self._call("dcgguf_tensor_type", i, ctypes.byref(ty))
        type_name = ctypes.c_char_p()
        check(self._lib, self._lib.dcgguf_type_name(ty.value, ctypes.byref(type_name)))
        dims = (ctypes.c_uint64 * 8)()
        nd = ctypes.c_size_t()
        self._call("dcgguf_tensor_shape", i, dims, 8, ctypes.byref(nd))
        shape = tuple(int(d) for d in dims[: nd.value])
        n_elements = 1
        for d in shape:
            n_elements *= d
        return DcTensor(
            index=i,
            name=name.value.decode("utf-8", "replace"),
            tensor_type=ty.value,
            type_name=type_name.value.decode(),
            shape=shape,
            np_shape=tuple(reversed(shape)),
            n_elements=n_elements,
            n_bytes=self._get_u64("dcgguf_tensor_raw_size", i),
            stored_bytes=self._get_u64("dcgguf_tensor_stored_size", i),
            data_offset=self._get_u64("dcgguf_tensor_offset", i),
        )

    # -- tensors -------------------------------------------------------------------------

    def get_tensor(self, key):
        """The :class:`DcTensor` for a name or an index (raises
        :class:`~dcgguf.errors.NoSuchTensorError`, a ``KeyError``)."""
        if isinstance(key, DcTensor):
            return key
        if isinstance(key, int):
            if 0 <= key < len(self.tensors):
                return self.tensors[key]
            n = len(self.tensors)
            raise NoSuchTensorError(f"tensor index {key} out of range ({n} tensors)", 10)
        t = self._by_name.get(key)
        if t is None:
            raise NoSuchTensorError(f"no tensor named {key!r}", 10)
        return t

    def raw(self, key, offset=0, size=None):
        """The tensor's bytes as in the original file, a 1-D ``uint8`` array: all of them,
        or ``size`` bytes from ``offset`` (only the chunks holding them are decoded; a range
        past the tensor raises :class:`~dcgguf.errors.OutOfRangeError`)."""
        import numpy as np

        t = self.get_tensor(key)
        if offset == 0 and size is None:
            a = np.empty(t.n_bytes, dtype=np.uint8)
            ptr = a.ctypes.data_as(ctypes.c_void_p)
            self._call("dcgguf_read_tensor", t.index, ptr, a.nbytes)
            return a
        n = t.n_bytes - offset if size is None else size
        a = np.empty(max(n, 0), dtype=np.uint8)
        ptr = a.ctypes.data_as(ctypes.c_void_p)
        self._call("dcgguf_read_tensor_range", t.index, offset, ptr, a.nbytes)
        return a

    def tensor(self, key):
        """The tensor as a numpy array (see the module docstring for dtypes and shapes)."""
        t = self.get_tensor(key)
        a = self.raw(t)
        dtype = _DTYPES.get(t.tensor_type)
        if dtype is not None:
            return a.view(dtype).reshape(t.np_shape)
        rows = t.n_elements // t.shape[0] if t.shape and t.shape[0] else 0
        row_bytes = t.n_bytes // rows if rows else t.n_bytes
        return a.reshape(t.np_shape[:-1] + (row_bytes,))

    def read_at(self, offset, n):
        """Bytes ``[offset, offset + n)`` of the ORIGINAL GGUF file (fewer at its end)."""
        buf = ctypes.create_string_buffer(n)
        got = ctypes.c_size_t()
        self._call("dcgguf_read_at", offset, buf, n, ctypes.byref(got))
        return buf.raw[: got.value]

    # -- metadata and summary ------------------------------------------------------------

    def _json(self, fn, *args):
        """A ``dcgguf_*_json`` getter's text (``args`` go between the handle and the buffer),
        parsed: sized with a first call, then copied."""
        n = ctypes.c_size_t()
        self._call(fn, *args, None, 0, ctypes.byref(n))
        buf = ctypes.create_string_buffer(n.value + 1)
        self._call(fn, *args, buf, n.value + 1, ctypes.byref(n))
        return json.loads(buf.raw[: n.value].decode("utf-8"))

    def _meta(self):
        if self._metadata is None:
            self._metadata = self._json("dcgguf_metadata_json")
        return self._metadata

    @property
    def metadata(self):
        """The original file's metadata, key -> value in file order: ints, floats (the
        stored value; NaN and infinities become None), bools, strs (invalid UTF-8 replaced)
        and lists for arrays."""
        return {e["key"]: e["value"] for e in self._meta()}

    @property
    def metadata_types(self):
        """key -> GGUF value type as gguf.cpp names it ("u32", "f32", "str", "arr", ...;
        arrays as "arr[str]" etc.)."""
        return {
            e["key"]: e["type"] + (f"[{e['elem_type']}]" if "elem_type" in e else "")
            for e in self._meta()
        }

    def inspect(self, *, profile=None, storage_bps=None, threads=0):
        """The per-tensor summary of :func:`dcgguf.inspect` (with ``profile`` or
        ``storage_bps``: and the cost model's predicted load times)."""
        if profile is None and storage_bps is None:
            return self._json("dcgguf_inspect_json")
        from .convert import _cost_options, _options

        _cost_options(storage_bps, None)
        lib = _lib.load()
        opts = _options(lib, threads=threads, profile=profile, storage_bps=storage_bps)
        return self._json("dcgguf_inspect_json_opts", ctypes.byref(opts))

    # -- lifetime ------------------------------------------------------------------------

    def close(self):
        h, self._h = self._h, None
        if h is not None and h.value:
            self._lib.dcgguf_free(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_h", None) is not None:
            self.close()

    def __repr__(self):
        return f"DcReader({self.path!r}, {len(self.tensors)} tensors)"
