#!/usr/bin/env python3
"""Peer baselines for dcgguf: how well do generic tools compress a GGUF file?

For each GGUF file prints
  * zstd:  whole file, `zstd -19 --long -T2` (the zstd CLI), ratio + CLI decode speed
  * ZipNN: whole file as one byte buffer, dtype chosen from the file's dominant tensor
           type (F32 -> float32, F16 -> float16, BF16 -> bfloat16). ZipNN has no generic
           byte mode, so for quantized files all its byte-buffer modes are tried (float16 =
           2 byte groups w/o bit reordering, float8_e4m3fn = one byte stream, bfloat16,
           float32) and the best is reported (float16 wins: quant blocks hold fp16 scales).
           Round-trip check, decode speed (GB/s of output, best of N).
  * ZipNN per tensor: every tensor's data with its own dtype (quantized tensors: best of
           float16 / float8 modes per tensor), GGUF header + alignment padding with
           zstd -19 (python zstandard); the way ZipNN is meant to be used (one dtype per buffer)
Ratios are original_size / compressed_size.

Usage: scripts/peers.py [--json] [--threads N] [--repeat N] [--no-zstd] [--no-per-tensor] FILE.gguf...

ZipNN (pip `zipnn`, PyPI 0.5.4) imports torch and safetensors.torch at module import
although its byte API does not use them; when torch is not installed a small inert
shim is put in sys.modules (see scripts/requirements-nodeps.txt).
NOTE: ZipNN's compress() reorders the bits of its input buffer *in place* for
float32/bfloat16 (it even mutates `bytes` objects), so we always hand it a private copy.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types


def _install_torch_shim() -> bool:
    """Let `import zipnn` work without torch (only byte-mode APIs are used)."""
    if importlib.util.find_spec("torch") is not None:
        return False

    class _Inert:
        def __init__(self, name):
            self._name = name

        def __getattr__(self, attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return _Inert(f"{self._name}.{attr}")

        def __call__(self, *args, **kwargs):
            # used as decorator (torch.jit.script): return the function unchanged
            if len(args) == 1 and callable(args[0]) and not kwargs:
                return args[0]
            raise RuntimeError(f"{self._name}() called: torch is not installed (shim)")

        def __repr__(self):
            return f"<torch-shim {self._name}>"

    class _Module(types.ModuleType):
        def __getattr__(self, attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            value = _Inert(f"{self.__name__}.{attr}")
            setattr(self, attr, value)
            return value

    torch = _Module("torch")
    torch.__path__ = []  # behave like a package
    sys.modules["torch"] = torch
    if importlib.util.find_spec("safetensors") is None:
        pkg = _Module("safetensors")
        pkg.__path__ = []
        sys.modules["safetensors"] = pkg
    sys.modules["safetensors.torch"] = _Module("safetensors.torch")
    return True


TORCH_SHIM = _install_torch_shim()

try:
    from zipnn import ZipNN  # noqa: E402
    import zipnn_core  # noqa: E402,F401
    ZIPNN_ERR = None
except Exception as exc:  # pragma: no cover - reported in the output
    ZipNN = None
    ZIPNN_ERR = f"{type(exc).__name__}: {exc}"

try:
    from importlib import metadata as _md
    ZIPNN_VERSION = _md.version("zipnn")
except Exception:
    ZIPNN_VERSION = None

import gguf  # noqa: E402
import zstandard  # noqa: E402

DTYPE_FOR = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
BYTE_MODE = "float8_e4m3fn"  # ZipNN's single byte-stream (Huffman) mode
ELEM = {"float32": 4, "float16": 2, "bfloat16": 2, BYTE_MODE: 1}
QUANT_MODES = ["float16", BYTE_MODE, "bfloat16", "float32"]  # whole-file modes tried for quantized files
QUANT_TENSOR_MODES = ["float16", BYTE_MODE]  # per-tensor modes tried for quantized tensors


def sha(b) -> str:
    return hashlib.sha256(b).hexdigest()


def zipnn_pack(buf, dtype: str, threads: int):
    """Compress buf with ZipNN; a tail shorter than one element is kept raw.
    Returns (compressed_len, blob, tail_len)."""
    esz = ELEM[dtype]
    n = len(buf) - len(buf) % esz
    work = bytearray(buf[:n])  # private copy: ZipNN mutates its input
    blob = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=threads).compress(work) if n else b""
    tail = len(buf) - n
    return len(blob) + tail, blob, tail


def zipnn_unpack(blob, dtype: str, threads: int) -> bytes:
    if not blob:
        return b""
    return bytes(ZipNN(input_format="byte", bytearray_dtype=dtype, threads=threads).decompress(blob))


def run_zstd(path: str, threads: int, level: int) -> dict:
    exe = shutil.which("zstd")
    if not exe:
        return {"error": "zstd CLI not found"}
    fd, out = tempfile.mkstemp(suffix=".zst", prefix="peers-")
    os.close(fd)
    try:
        t = time.perf_counter()
        subprocess.run([exe, "-q", "-f", f"-{level}", "--long", f"-T{threads}", path, "-o", out], check=True)
        ct = time.perf_counter() - t
        csize = os.path.getsize(out)
        t = time.perf_counter()
        subprocess.run([exe, "-q", "-d", "-c", "--long", out], check=True, stdout=subprocess.DEVNULL)
        dt = time.perf_counter() - t
    except (subprocess.CalledProcessError, OSError) as exc:
        return {"error": str(exc)}
    finally:
        if os.path.exists(out):
            os.unlink(out)
    size = os.path.getsize(path)
    return {"cmd": f"zstd -{level} --long -T{threads}", "size": csize, "ratio": size / csize,
            "compress_s": ct, "decode_gbps_cli": size / dt / 1e9}


def analyse(path: str, args) -> dict:
    size = os.path.getsize(path)
    reader = gguf.GGUFReader(path)
    by_type: dict[str, int] = {}
    tensors = []
    for t in reader.tensors:
        tname = t.tensor_type.name
        by_type[tname] = by_type.get(tname, 0) + int(t.n_bytes)
        tensors.append((int(t.data_offset), int(t.n_bytes), tname))
    tensors.sort()
    dominant = max(by_type, key=by_type.get) if by_type else "none"
    res = {"file": os.path.basename(path), "path": path, "size": size, "dominant_type": dominant,
           "bytes_by_type": by_type, "n_tensors": len(tensors)}

    if not args.no_zstd:
        res["zstd"] = run_zstd(path, args.threads, args.zstd_level)

    if ZipNN is None:
        res["zipnn"] = {"error": ZIPNN_ERR}
        return res

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        data = bytes(mm)
    h0 = sha(data)

    # whole file, dtype from the dominant tensor type
    dtype = DTYPE_FOR.get(dominant)
    modes = [dtype] if dtype else QUANT_MODES
    whole = {}
    for m in modes:
        t = time.perf_counter()
        clen, blob, tail = zipnn_pack(data, m, args.threads)
        ct = time.perf_counter() - t
        best = float("inf")
        out = b""
        for _ in range(args.repeat):
            t = time.perf_counter()
            out = zipnn_unpack(blob, m, args.threads)
            best = min(best, time.perf_counter() - t)
        ok = sha(out + data[len(data) - tail:] if tail else out) == h0 and sha(data) == h0
        whole[m] = {"size": clen, "ratio": size / clen, "roundtrip": ok, "compress_s": ct,
                    "decode_gbps": (size - tail) / best / 1e9}
        del blob, out
    best_mode = max(whole, key=lambda m: whole[m]["ratio"])
    res["zipnn"] = {"version": ZIPNN_VERSION, "torch_shim": TORCH_SHIM, "threads": args.threads,
                    "dtype": best_mode, "modes": whole, **whole[best_mode]}

    # per tensor: each tensor with its own dtype; header + padding with zstd -19
    if not args.no_per_tensor:
        rest = bytearray()
        pos = 0
        total = 0
        ok = True
        t_dec = 0.0
        for off, n, tname in tensors:
            rest += data[pos:off]
            buf = data[off:off + n]
            cands = [DTYPE_FOR[tname]] if tname in DTYPE_FOR else QUANT_TENSOR_MODES
            packed = [(zipnn_pack(buf, m, args.threads), m) for m in cands]
            (clen, blob, tail), m = min(packed, key=lambda x: x[0][0])
            del packed
            t = time.perf_counter()
            out = zipnn_unpack(blob, m, args.threads)
            t_dec += time.perf_counter() - t
            ok = ok and (out + (buf[len(buf) - tail:] if tail else b"")) == buf
            total += clen
            pos = off + n
        rest += data[pos:]
        zc = zstandard.ZstdCompressor(level=19).compress(bytes(rest))
        ok = ok and zstandard.ZstdDecompressor().decompress(zc) == bytes(rest)
        total += len(zc)
        res["zipnn_per_tensor"] = {"size": total, "ratio": size / total, "roundtrip": ok,
                                   "header_and_padding_bytes": len(rest), "header_zstd_bytes": len(zc),
                                   "decode_gbps_tensors": (size - len(rest)) / t_dec / 1e9 if t_dec else None}
    return res


def fmt_table(rows) -> str:
    hdr = ["file", "MiB", "dominant", "zstd-19", "zstd dec GB/s", "zipnn dtype", "zipnn",
           "zipnn/tensor", "roundtrip", "zipnn dec GB/s"]
    lines = []
    for r in rows:
        z = r.get("zstd", {})
        zn = r.get("zipnn", {})
        pt = r.get("zipnn_per_tensor", {})
        rt = [zn.get("roundtrip")] + ([pt.get("roundtrip")] if pt else [])
        lines.append([
            r["file"], f"{r['size'] / 2**20:.1f}", r["dominant_type"],
            f"{z['ratio']:.3f}" if "ratio" in z else z.get("error", "-"),
            f"{z['decode_gbps_cli']:.2f}" if "decode_gbps_cli" in z else "-",
            zn.get("dtype", "-"),
            f"{zn['ratio']:.3f}" if "ratio" in zn else zn.get("error", "-"),
            f"{pt['ratio']:.3f}" if pt else "-",
            "yes" if rt and all(rt) else "NO",
            f"{zn['decode_gbps']:.2f}" if "decode_gbps" in zn else "-",
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(hdr)]
    out = ["  ".join(h.ljust(w) for h, w in zip(hdr, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(l, widths)) for l in lines]
    extra = []
    for r in rows:
        modes = r.get("zipnn", {}).get("modes", {})
        if len(modes) > 1:
            extra.append(f"  {r['file']}: zipnn whole-file modes: " +
                         ", ".join(f"{m} {v['ratio']:.3f}" for m, v in modes.items()))
    return "\n".join(out + extra)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--threads", type=int, default=2, help="zstd -T and ZipNN threads (default 2)")
    ap.add_argument("--zstd-level", type=int, default=19)
    ap.add_argument("--repeat", type=int, default=3, help="decode timing: best of N (default 3)")
    ap.add_argument("--no-zstd", action="store_true")
    ap.add_argument("--no-per-tensor", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    for p in args.files:
        if not os.path.isfile(p):
            print(f"peers.py: no such file: {p}", file=sys.stderr)
            return 2
        rows.append(analyse(p, args))
        if not args.json:
            print(f"done {p}", file=sys.stderr)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        print(fmt_table(rows))
    bad = [r["file"] for r in rows
           if r.get("zipnn", {}).get("roundtrip") is False
           or r.get("zipnn_per_tensor", {}).get("roundtrip") is False]
    if bad:
        print(f"peers.py: ZipNN round-trip FAILED for {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
