"""Tests of the dcgguf Python package on real models, against gguf-py's GGUFReader on the
originals. Plain unittest (no pytest):

    DCGGUF_LIB=target/release/libdcgguf.so PYTHONPATH=python \
        python3 -m unittest discover -s python/tests -v

Models: the all-MiniLM-L6-v2 GGUFs in $DCGGUF_SHARED_MODELS and SmolLM2 Q4_1 at
$DCGGUF_SMOLLM2 (scripts/env.sh). A missing one skips the tests that need it, with the reason;
with DCGGUF_PY_TEST_STRICT=1 (tests/python_pkg.rs sets it) it fails them instead.

The cost-model tests use the machine profile in $DCGGUF_CACHE (tests/python_pkg.rs points it
at one measured for the test build). Without it they use a fresh temporary directory, where
the first ``profile="auto"`` measures this machine (a few seconds): never ~/.cache.
"""

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import unittest
from pathlib import Path

import numpy as np

import dcgguf
import dcgguf.errors

REPO = Path(__file__).resolve().parents[2]
STRICT = os.environ.get("DCGGUF_PY_TEST_STRICT") == "1"

if not os.environ.get("DCGGUF_CACHE"):
    # The library reads the variable at each call (getenv), so setting it here is enough.
    os.environ["DCGGUF_CACHE"] = tempfile.mkdtemp(prefix="dcgguf-py-cache-")
    atexit.register(shutil.rmtree, os.environ["DCGGUF_CACHE"], True)


def need(tc, path, what):
    """`path` if it exists; else skip (fail when strict) naming `what`."""
    if path and Path(path).is_file():
        return Path(path)
    msg = f"needs {what} ({path or 'not configured'}; scripts/fetch-models.sh, scripts/env.sh)"
    if STRICT:
        tc.fail(msg)
    tc.skipTest(msg)


def minilm(tc, name):
    d = os.environ.get("DCGGUF_SHARED_MODELS", "")
    return need(tc, d and os.path.join(d, f"all-MiniLM-L6-v2-{name}.gguf"), f"MiniLM {name}")


def smollm2(tc):
    return need(tc, os.environ.get("DCGGUF_SMOLLM2"), "SmolLM2-135M-Instruct.Q4_1.gguf")


class Progress:
    """Records (done, total) calls; `cancel_at`: return False on that call (cancels)."""

    def __init__(self, cancel_at=None, raise_at=None):
        self.calls = []
        self.threads = set()
        self.cancel_at = cancel_at
        self.raise_at = raise_at

    def __call__(self, done, total):
        self.calls.append((done, total))
        self.threads.add(threading.get_ident())
        if self.raise_at == len(self.calls):
            raise Interrupted("from the progress callback")
        if self.cancel_at == len(self.calls):
            return False
        return None

    def check(self, tc, total=None):
        """Monotonic, one total throughout, ending at it (and at `total` if given)."""
        tc.assertTrue(self.calls, "no progress calls")
        dones = [d for d, _ in self.calls]
        totals = {t for _, t in self.calls}
        tc.assertEqual(dones, sorted(dones), "done went backwards")
        tc.assertEqual(len(totals), 1, f"total changed: {totals}")
        tc.assertEqual(dones[-1], self.calls[-1][1], "final done != total")
        if total is not None:
            tc.assertEqual(self.calls[-1][1], total)


class Interrupted(Exception):
    pass


def leftovers(d):
    """Temporary files an operation left in `d` (atomic outputs, quantization scratch)."""
    return [n for n in os.listdir(d) if n.startswith(".")]


class Base(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="dcgguf-py-", dir=os.environ.get("DCGGUF_TEST_TMP")))

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def assert_reader_matches_gguf_py(self, dc_path, original):
        """Every tensor through DcReader equals gguf-py's on the original: name, type, shape,
        sizes, offset, array (dtype, shape, bytes); and the metadata, key by key."""
        from gguf import GGUFReader

        g = GGUFReader(original)
        with dcgguf.DcReader(dc_path) as r:
            self.assertEqual([t.name for t in r.tensors], [t.name for t in g.tensors])
            for t, gt in zip(r.tensors, g.tensors):
                with self.subTest(tensor=t.name):
                    self.assertEqual(t.tensor_type, int(gt.tensor_type))
                    self.assertEqual(t.type_name, gt.tensor_type.name)
                    self.assertEqual(t.shape, tuple(int(x) for x in gt.shape))
                    self.assertEqual(t.np_shape, tuple(reversed(t.shape)))
                    self.assertEqual(t.n_elements, int(gt.n_elements))
                    self.assertEqual(t.n_bytes, int(gt.n_bytes))
                    self.assertEqual(t.data_offset, int(gt.data_offset))
                    a = r.tensor(t.name)
                    want = gt.data
                    if t.type_name == "BF16":
                        # Ours: uint16 in the logical shape; gguf-py: the bytes, uint8.
                        self.assertEqual(a.dtype, np.uint16)
                        self.assertEqual(a.shape, t.np_shape)
                        a = a.view(np.uint8)
                    self.assertEqual(a.dtype, want.dtype)
                    self.assertEqual(a.shape, want.shape)
                    self.assertEqual(a.tobytes(), want.tobytes())
            keys = [k for k in g.fields if not k.startswith("GGUF.")]
            self.assertEqual(list(r.metadata), keys)
            for k in keys:
                with self.subTest(key=k):
                    self.assertEqual(r.metadata[k], g.fields[k].contents())
        return len(g.tensors)

    def roundtrip(self, original, threads=0, **opts):
        """compress (progress), verify (progress), inspect, DcReader vs gguf-py, decompress
        (progress) back to identical bytes."""
        size = original.stat().st_size
        dc = self.dir / "model.dc.gguf"
        p = Progress()
        dcgguf.compress(original, dc, threads=threads, progress=p, **opts)
        p.check(self, size)
        self.assertTrue(dc.is_file())
        self.assertEqual(leftovers(self.dir), [])

        v = Progress()
        dcgguf.verify(dc, against=original, threads=threads, progress=v)
        v.check(self, size)
        dcgguf.verify(dc)

        info = dcgguf.inspect(dc)
        self.assertEqual(info["original_bytes"], size)
        self.assertEqual(info["file_bytes"], dc.stat().st_size)
        # The version the file's own dc.format_version key holds (read by gguf-py): a
        # version the library writes now (4: rANS planes, int8 fold).
        from gguf import GGUFReader

        key = GGUFReader(dc).fields["dc.format_version"]
        self.assertEqual(info["format_version"], int(key.parts[key.data[0]][0]))
        self.assertEqual(info["format_version"], 4)
        n = self.assert_reader_matches_gguf_py(dc, original)
        self.assertEqual(len(info["tensors"]), n)
        self.assertEqual(info["tensor_raw_bytes"], sum(t["raw_bytes"] for t in info["tensors"]))

        back = self.dir / "back.gguf"
        d = Progress()
        dcgguf.decompress(dc, back, threads=threads, progress=d)
        d.check(self, size)
        self.assertTrue(back.read_bytes() == original.read_bytes(), "decompressed bytes differ")
        return p


class Lossless(Base):
    def test_minilm_f16(self):
        self.roundtrip(minilm(self, "f16"), level=3)

    def test_minilm_q8_0_default_level(self):
        self.roundtrip(minilm(self, "q8_0"))

    def test_minilm_bf16_on_two_threads(self):
        # threads > 0: the work runs on threads of the library's own, the progress calls on
        # the caller's thread all the same.
        p = self.roundtrip(minilm(self, "bf16"), threads=2, level=1, chunk_size=256 << 10)
        self.assertEqual(p.threads, {threading.get_ident()})

    def test_smollm2_q4_1(self):
        self.roundtrip(smollm2(self), level=3)

    def test_named_levels(self):
        # "max" (also dcgguf.LEVEL_MAX) round-trips and is never larger than the default.
        src = minilm(self, "q8_0")
        self.roundtrip(src, level="max")
        sizes = {}
        for level in ("default", dcgguf.LEVEL_MAX):
            r = dcgguf.compress(src, self.dir / "level.dc.gguf", level=level, force=True)
            sizes[level] = r["files"][0]["output_bytes"]
        self.assertLessEqual(sizes[dcgguf.LEVEL_MAX], sizes["default"])
        with self.assertRaises(dcgguf.InvalidArgumentError):
            dcgguf.compress(src, self.dir / "bad.dc.gguf", level="fastest")


class Lossy(Base):
    def test_int8_from_f16(self):
        src = minilm(self, "f16")
        dc = self.dir / "int8.dc.gguf"
        p = Progress()
        dcgguf.compress(src, dc, quantize="int8", step=1.5, embd_step=2.0, level=3, progress=p)
        # The total is twice the quantized model's size (written, then compressed), which
        # only the library knows.
        p.check(self)
        self.assertEqual(leftovers(self.dir), [])
        dcgguf.verify(dc)
        back = self.dir / "int8.gguf"
        dcgguf.decompress(dc, back)
        self.assertEqual(p.calls[-1][1], 2 * back.stat().st_size)
        self.assert_reader_matches_gguf_py(dc, back)
        with dcgguf.DcReader(dc) as r:
            types = {t.type_name for t in r.tensors}
        self.assertIn("Q8_0", types)
        # The default step quantizes differently, so the file differs.
        dcgguf.compress(src, self.dir / "default.dc.gguf", quantize="int8", level=3)
        self.assertNotEqual(
            (self.dir / "default.dc.gguf").read_bytes(), dc.read_bytes()
        )

    def test_quantize_options_need_quantize(self):
        src = minilm(self, "f16")
        for kw in ({"step": 1.5}, {"per_row": True}, {"imatrix": src}):
            with self.subTest(**{k: str(v) for k, v in kw.items()}):
                with self.assertRaises(dcgguf.InvalidArgumentError):
                    dcgguf.compress(src, self.dir / "x.dc.gguf", **kw)
        with self.assertRaises(dcgguf.InvalidArgumentError):
            dcgguf.compress(src, self.dir / "x.dc.gguf", quantize="int4")
        with self.assertRaises(dcgguf.InvalidArgumentError) as e:
            dcgguf.compress(src, self.dir / "x.dc.gguf", quantize="int8", prune=1.5)
        self.assertIn("prune", str(e.exception))
        self.assertFalse((self.dir / "x.dc.gguf").exists())


class Reports(Base):
    """compress / decompress / verify return what the CLI prints with --json."""

    def test_reports_match_the_files_and_the_cli(self):
        src = minilm(self, "q8_0")
        dc = self.dir / "m.dc.gguf"
        r = dcgguf.compress(src, dc, level=3)
        self.assertEqual(r["command"], "compress")
        self.assertNotIn("quantize", r)
        (f,) = r["files"]
        self.assertEqual(f["output_bytes"], dc.stat().st_size)
        self.assertEqual(f["original_bytes"], src.stat().st_size)
        self.assertEqual(f["input"], str(src))
        self.assertEqual(f["output"], str(dc))
        self.assertAlmostEqual(f["ratio"], f["original_bytes"] / f["output_bytes"])
        self.assertGreater(f["seconds"], 0)
        with dcgguf.DcReader(dc) as rd:
            self.assertEqual(f["tensors"], len(rd.tensors))

        v = dcgguf.verify(dc, against=src)
        self.assertEqual(
            v,
            {"command": "verify", "file": str(dc), "ok": True,
             "original_bytes": src.stat().st_size, "against": str(src)},
        )
        back = self.dir / "back.gguf"
        d = dcgguf.decompress(dc, back)
        self.assertEqual(
            d,
            {"command": "decompress",
             "files": [{"input": str(dc), "output": str(back), "bytes": back.stat().st_size}]},
        )

    def test_dcgguf_lib_that_names_no_file_is_an_error(self):
        # Not a fall-back to another copy of the library: the user asked for this one.
        missing = self.dir / "no-such-libdcgguf.so"
        r = subprocess.run(
            [sys.executable, "-c", "import dcgguf._lib as l; l.load()"],
            env={**os.environ, "DCGGUF_LIB": str(missing)},
            capture_output=True, text=True,
        )
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("LibraryNotFoundError", r.stderr)
        self.assertIn(str(missing), r.stderr)

    def test_compress_report_is_the_clis_json(self):
        src = minilm(self, "q8_0")
        cli = need(
            self,
            os.environ.get("DCGGUF_CLI") or REPO / "target" / "release" / "dcgguf",
            "the dcgguf command (cargo build --release; or DCGGUF_CLI)",
        )
        dc, out = self.dir / "m.dc.gguf", self.dir / "cli.dc.gguf"
        r = dcgguf.compress(src, dc, level=3)
        text = subprocess.run(
            [cli, "--json", "compress", "--level", "3", src, out],
            check=True, capture_output=True, text=True,
        ).stdout
        want = json.loads(text)
        # The same but for the output's name and the run time.
        want["files"][0]["output"] = str(dc)
        for rep in (want, r):
            rep["files"][0]["seconds"] = 0
        self.assertEqual(r, want)

    def test_lossy_report_has_the_quantization(self):
        src = minilm(self, "f16")
        dc = self.dir / "int8.dc.gguf"
        r = dcgguf.compress(src, dc, quantize="int8", level=1)
        q = r["quantize"]
        self.assertGreater(q["quantized_tensors"], 0)
        self.assertGreater(q["rel_mse"], 0)
        (f,) = r["files"]
        self.assertEqual(f["output_bytes"], dc.stat().st_size)
        # The file decompresses to the quantized model (not the input), whose size the file
        # report gives; the quantization's own output_bytes counts its tensor data only.
        self.assertEqual(dcgguf.inspect(dc)["original_bytes"], f["original_bytes"])
        self.assertLess(f["original_bytes"], src.stat().st_size)
        self.assertLess(q["output_bytes"], f["original_bytes"])


class CostModel(Base):
    """profile / storage_bps / target_size, as --profile / --storage-bps / --target-size."""

    def compress(self, name, **kw):
        src = minilm(self, "q8_0")
        out = self.dir / name
        r = dcgguf.compress(src, out, level=3, **kw)
        self.assertEqual(r["files"][0]["output_bytes"], out.stat().st_size)
        return out.stat().st_size

    def test_storage_bps_decides_what_is_stored_raw(self):
        plain = self.compress("plain.dc.gguf")
        # Far faster than any decoder: everything raw; far slower: everything compressed.
        fast = self.compress("fast.dc.gguf", storage_bps=1e15)
        slow = self.compress("slow.dc.gguf", storage_bps=1e3)
        self.assertGreater(fast, slow)
        self.assertEqual(slow, plain)
        with dcgguf.DcReader(self.dir / "fast.dc.gguf") as r:
            info = r.inspect()
        self.assertTrue(all(t["raw_chunks"] == t["chunks"] for t in info["tensors"]))
        # storage_bps implied profile "auto": the profile in $DCGGUF_CACHE.
        profile = Path(os.environ["DCGGUF_CACHE"]) / "profile.json"
        self.assertTrue(profile.is_file())
        self.assertEqual(self.compress("path.dc.gguf", profile=profile, storage_bps=1e15), fast)
        # The measured storage, whatever it is: a valid file between the two.
        auto = self.compress("auto.dc.gguf", profile="auto")
        self.assertTrue(slow <= auto <= fast, (slow, auto, fast))
        dcgguf.verify(self.dir / "auto.dc.gguf", against=minilm(self, "q8_0"))

    def test_target_size_is_honoured_or_refused(self):
        fast = self.compress("fast.dc.gguf", storage_bps=1e15)
        smallest = self.compress("plain.dc.gguf")
        target = (fast + smallest) // 2
        fitted = self.compress("fit.dc.gguf", storage_bps=1e15, target_size=target)
        self.assertLessEqual(fitted, target)
        self.assertGreater(fitted, smallest)  # just enough compressed, not everything
        dcgguf.verify(self.dir / "fit.dc.gguf", against=minilm(self, "q8_0"))
        # target_size alone implies profile "auto" (storage as measured).
        self.assertLessEqual(self.compress("fit2.dc.gguf", target_size=target), target)
        out = self.dir / "none.dc.gguf"
        with self.assertRaises(dcgguf.InvalidArgumentError) as e:
            dcgguf.compress(minilm(self, "q8_0"), out, level=3, target_size=smallest // 2)
        self.assertIn("smallest", str(e.exception))
        self.assertFalse(out.exists())
        self.assertEqual(leftovers(self.dir), [])

    def test_bad_values_are_refused(self):
        src = minilm(self, "q8_0")
        out = self.dir / "x.dc.gguf"
        for kw in ({"storage_bps": 0}, {"storage_bps": -1e9}, {"storage_bps": float("nan")},
                   {"storage_bps": float("inf")}, {"target_size": 0}, {"target_size": 1.5},
                   {"profile": ""}):
            with self.subTest(**{k: repr(v) for k, v in kw.items()}):
                with self.assertRaises(dcgguf.InvalidArgumentError):
                    dcgguf.compress(src, out, **kw)
                self.assertFalse(out.exists())
        with self.assertRaises(dcgguf.InvalidArgumentError):
            dcgguf.inspect(dc_of(self, src), storage_bps=-1)

    def test_inspect_predicts_load_times(self):
        dc = dc_of(self, minilm(self, "q8_0"))
        plain = dcgguf.inspect(dc)
        self.assertNotIn("predicted_load_seconds", plain)
        info = dcgguf.inspect(dc, storage_bps=1e9)
        p = info["predicted_load_seconds"]
        self.assertEqual(len(p), len(info["tensors"]))
        self.assertTrue(all(s > 0 for s in p))
        self.assertAlmostEqual(info["predicted_total_load_seconds"], sum(p))
        self.assertEqual(info["storage_bps"], 1e9)
        # Reading the stored bytes bounds each prediction from below.
        for s, t in zip(p, info["tensors"]):
            self.assertGreaterEqual(s, t["stored_bytes"] / 1e9 * (1 - 1e-9))
        slower = dcgguf.inspect(dc, storage_bps=1e8)
        self.assertGreater(slower["predicted_total_load_seconds"], sum(p))
        del info["predicted_load_seconds"], info["predicted_total_load_seconds"]
        del info["storage_bps"]
        self.assertEqual(info, plain)


def dc_of(tc, src):
    """`src` compressed (level 1) into the test's directory."""
    out = tc.dir / (src.stem + ".dc.gguf")
    if not out.exists():
        dcgguf.compress(src, out, level=1)
    return out


class Cancel(Base):
    def test_false_from_the_callback_cancels_and_leaves_nothing(self):
        src = minilm(self, "q8_0")
        out = self.dir / "c.dc.gguf"
        p = Progress(cancel_at=3)
        with self.assertRaises(dcgguf.CancelledError):
            dcgguf.compress(src, out, level=1, progress=p)
        self.assertEqual(len(p.calls), 3)
        self.assertFalse(out.exists())
        self.assertEqual(os.listdir(self.dir), [])

        dcgguf.compress(src, out, level=1)
        back = self.dir / "back.gguf"
        with self.assertRaises(dcgguf.CancelledError):
            dcgguf.decompress(out, back, progress=Progress(cancel_at=1))
        self.assertFalse(back.exists())
        with self.assertRaises(dcgguf.CancelledError):
            dcgguf.verify(out, against=src, progress=Progress(cancel_at=1))
        self.assertEqual(sorted(os.listdir(self.dir)), ["c.dc.gguf"])

    def test_an_exception_in_the_callback_cancels_and_propagates(self):
        src = minilm(self, "f16")
        out = self.dir / "c.dc.gguf"
        with self.assertRaises(Interrupted):
            dcgguf.compress(src, out, level=1, progress=Progress(raise_at=2))
        self.assertEqual(os.listdir(self.dir), [])
        # Lossy: the quantized scratch file goes too.
        with self.assertRaises(Interrupted):
            dcgguf.compress(src, out, quantize="int8", level=1, progress=Progress(raise_at=1))
        self.assertEqual(os.listdir(self.dir), [])


    def test_ctrl_c_cancels_and_raises_keyboard_interrupt(self):
        src = minilm(self, "f16")
        out = self.dir / "c.dc.gguf"
        # As in an interactive program (a test runner may have inherited SIGINT ignored).
        old = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            # threads=2: the work runs on the library's threads, the callback on this one.
            # int8: the first calls come while the model is quantized.
            runs = ((True, 0, None), (False, 0, None), (True, 2, None), (True, 2, "int8"))
            for progress, threads, quantize in runs:
                with self.subTest(own_callback=progress, threads=threads, quantize=quantize):
                    # Ctrl-C from another thread once the library runs: Python handles it
                    # at its next bytecode on the main thread, the entry of a progress call.
                    started = threading.Event()
                    calls = []

                    def note(done, total):
                        calls.append((done, total))
                        started.set()

                    def ctrl_c():
                        started.wait(60)
                        os.kill(os.getpid(), signal.SIGINT)

                    k = threading.Thread(target=ctrl_c)
                    k.start()
                    if not progress:
                        # Without a callback of ours the package's own one is called: start
                        # the interrupt after a short while instead.
                        threading.Timer(0.05, started.set).start()
                    with self.assertRaises(KeyboardInterrupt):
                        dcgguf.compress(
                            src,
                            out,
                            level=19,
                            threads=threads,
                            quantize=quantize,
                            progress=note if progress else None,
                        )
                    k.join()
                    self.assertEqual(os.listdir(self.dir), [])
                    self.assertIs(signal.getsignal(signal.SIGINT), signal.default_int_handler)
                    if progress:
                        done, total = calls[-1]
                        # Stopped early; a lossy one while quantizing (the first half).
                        self.assertLess(done, total / 2 if quantize else total)
        finally:
            signal.signal(signal.SIGINT, old)


class Errors(Base):
    def test_every_result_code_in_the_header_has_its_class(self):
        header = (REPO / "ffi" / "dcgguf.h").read_text()
        enum = header[header.index("typedef enum dcgguf_result") :]
        enum = enum[: enum.index("} dcgguf_result;")]
        codes = {m[1]: int(m[2]) for m in re.finditer(r"DCGGUF_ERR_(\w+)\s*=\s*(\d+)", enum)}
        self.assertGreaterEqual(len(codes), 19)
        for name, value in codes.items():
            cls_name = "".join(w.capitalize() for w in name.split("_")) + "Error"
            with self.subTest(code=name):
                cls = getattr(dcgguf, cls_name, None)
                self.assertIsNotNone(cls, f"dcgguf has no {cls_name} for DCGGUF_ERR_{name}")
                self.assertTrue(issubclass(cls, dcgguf.DcggufError))
                self.assertEqual(cls.code, value)
                self.assertIs(dcgguf.error_class(value), cls)
        # ... and no class for a code the header lacks.
        ours = {c.code for c in vars(dcgguf.errors).values()
                if isinstance(c, type) and issubclass(c, dcgguf.DcggufError) and c.code}
        self.assertEqual(ours, set(codes.values()))

    def test_library_and_package_agree(self):
        self.assertEqual(dcgguf.library_version(), dcgguf.__version__)

    def test_real_errors_raise_their_classes(self):
        src = minilm(self, "q8_0")
        dc = self.dir / "m.dc.gguf"
        dcgguf.compress(src, dc, level=1)

        with self.assertRaises(dcgguf.IoError):
            dcgguf.compress(self.dir / "missing.gguf", self.dir / "o.dc.gguf")
        with self.assertRaises(dcgguf.IoError):
            dcgguf.DcReader(self.dir / "missing.dc.gguf")

        with self.assertRaises(dcgguf.OutputRefusedError):
            dcgguf.compress(src, dc, level=1)
        dcgguf.compress(src, dc, level=1, force=True)
        exists = self.dir / "exists.gguf"
        exists.write_bytes(b"keep")
        with self.assertRaises(dcgguf.OutputRefusedError):
            dcgguf.decompress(dc, exists)
        self.assertEqual(exists.read_bytes(), b"keep")

        with self.assertRaises(dcgguf.NotDcError):
            dcgguf.DcReader(src)
        with self.assertRaises(dcgguf.InvalidArgumentError):
            dcgguf.compress(dc, self.dir / "twice.dc.gguf")  # already DC-GGUF
        with self.assertRaises(dcgguf.InvalidArgumentError):
            dcgguf.compress(src, self.dir / "o.dc.gguf", level=99)
        with self.assertRaises(dcgguf.InvalidArgumentError):
            dcgguf.compress(src, self.dir / "o.dc.gguf", threads=1 << 20)

        junk = self.dir / "junk.gguf"
        junk.write_bytes(b"GGUF" + bytes(60))
        with self.assertRaises(dcgguf.BadGgufError):
            dcgguf.compress(junk, self.dir / "o.dc.gguf")

        with dcgguf.DcReader(dc) as r:
            t = max(r.tensors, key=lambda t: t.n_bytes)
            with self.assertRaises(dcgguf.NoSuchTensorError):
                r.tensor("no.such.tensor")
            with self.assertRaises(KeyError):
                r.tensor(len(r.tensors))
            with self.assertRaises(dcgguf.OutOfRangeError):
                r.raw(t.name, t.n_bytes - 4, 8)
            self.assertEqual(r.raw(t.name, 5, 11).tobytes(), r.raw(t.name)[5:16].tobytes())

        # One flipped byte in the middle (inside some tensor's chunk).
        bad = self.dir / "bad.dc.gguf"
        data = bytearray(dc.read_bytes())
        data[len(data) // 2] ^= 0x55
        bad.write_bytes(bytes(data))
        with self.assertRaises(dcgguf.CorruptError) as e:
            dcgguf.verify(bad)
        self.assertIn("chunk", str(e.exception))
        with self.assertRaises(dcgguf.CorruptError):
            dcgguf.decompress(bad, self.dir / "bad.gguf")
        self.assertFalse((self.dir / "bad.gguf").exists())
        with dcgguf.DcReader(bad) as r, self.assertRaises(dcgguf.CorruptError):
            for t in r.tensors:
                r.tensor(t.name)
        other = minilm(self, "f16")
        with self.assertRaises(dcgguf.CorruptError):
            dcgguf.verify(dc, against=other)  # decodes fine, is another file
        self.assertEqual(leftovers(self.dir), [])


if __name__ == "__main__":
    unittest.main()
