#!/usr/bin/env python3
"""Dequantize every tensor of a GGUF to F32 (gguf-py): the reference model of
scripts/eval-quant.sh when a registry ships only a quantized decoder.

usage: scripts/dequant-f32.py IN.gguf OUT.gguf

Metadata is copied (general.file_type set to 0, ALL_F32); tensors are written one at a time,
so memory stays near the largest tensor in F32 (not the whole model: a 1.5B model is 6 GB).
"""
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFWriter
from gguf.quants import dequantize


def main(src: str, dst: str) -> None:
    r = GGUFReader(src)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    w = GGUFWriter(dst, arch)
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        if k == "general.file_type":
            w.add_uint32(k, 0)
            continue
        if f.types[0] == 9:  # array: give the element type too
            w.add_key_value(k, f.contents(), f.types[0], sub_type=f.types[-1])
        else:
            w.add_key_value(k, f.contents(), f.types[0])
    shapes = []
    for t in r.tensors:
        shape = [int(x) for x in reversed(t.shape)]
        shapes.append(shape)
        w.add_tensor_info(t.name, shape, np.dtype(np.float32), 4 * int(np.prod(shape)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t, shape in zip(r.tensors, shapes):
        if t.tensor_type in (T.F32, T.F16):
            a = np.asarray(t.data)
        else:
            a = dequantize(t.data, t.tensor_type)
        w.write_tensor_data(a.reshape(shape).astype(np.float32))
    w.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
