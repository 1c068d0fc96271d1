"""dcgguf.llama_cpp: DC-GGUF models in the real llama-cpp-python (built from its PyPI sdist by
scripts/build-llama-cpp-python.sh), compared with the plain GGUF in the same process.

Run by tests/python_llama_cpp.rs with the cached venv's python:
    DCGGUF_TEST_SMOLLM2=plain.gguf DCGGUF_TEST_SMOLLM2_DC=plain.dc.gguf \
    DCGGUF_TEST_MINILM=f16.gguf DCGGUF_TEST_MINILM_DC=f16.dc.gguf \
    DCGGUF_TEST_DAMAGED_DC=bad.dc.gguf python -m unittest test_llama_cpp_hook
"""

import ctypes
import os
import unittest

import llama_cpp
from llama_cpp import Llama

PROMPT = "The capital of France is"


def env(name):
    value = os.environ.get(name)
    if not value:
        raise unittest.SkipTest(f"{name} not set (run through tests/python_llama_cpp.rs)")
    return value


def complete(path, **kw):
    llm = Llama(model_path=path, n_ctx=256, n_threads=2, seed=1, verbose=False, **kw)
    out = llm.create_completion(PROMPT, max_tokens=32, temperature=0.0)
    return out["choices"][0]["text"]


def embed(path):
    llm = Llama(model_path=path, embedding=True, n_threads=2, verbose=False)
    return llm.embed("A quick brown fox jumps over the lazy dog.")


class WithoutHook(unittest.TestCase):
    """What users hit without the import: llama-cpp-python's own loader refuses DC files."""

    def test_plain_llama_cpp_python_refuses_dc(self):
        import dcgguf.llama_cpp as hook

        hook.uninstall()
        try:
            with self.assertRaises(ValueError):
                complete(env("DCGGUF_TEST_SMOLLM2_DC"))
        finally:
            hook.install()


class WithHook(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import dcgguf.llama_cpp as hook

        hook.install()
        cls.hook = hook

    def test_installed_and_idempotent(self):
        self.hook.install()
        self.assertTrue(self.hook.installed())
        self.assertIs(llama_cpp.llama_cpp.llama_model_load_from_file,
                      self.hook.llama_model_load_from_file)

    def test_greedy_completion_identical(self):
        plain = complete(env("DCGGUF_TEST_SMOLLM2"))
        dc = complete(env("DCGGUF_TEST_SMOLLM2_DC"))
        self.assertGreater(len(plain.strip()), 20, plain)
        self.assertEqual(plain, dc)

    def test_both_routes_identical(self):
        """The stream route (no preload: glibc's fread) computes the same as the user route."""
        plain = complete(env("DCGGUF_TEST_SMOLLM2"))
        old = os.environ.get("DCGGUF_LOAD_ROUTE")
        try:
            for route in ("stream", "user"):
                os.environ["DCGGUF_LOAD_ROUTE"] = route
                self.assertEqual(plain, complete(env("DCGGUF_TEST_SMOLLM2_DC")), route)
        finally:
            if old is None:
                os.environ.pop("DCGGUF_LOAD_ROUTE", None)
            else:
                os.environ["DCGGUF_LOAD_ROUTE"] = old

    def test_embeddings_identical(self):
        plain = embed(env("DCGGUF_TEST_MINILM"))
        dc = embed(env("DCGGUF_TEST_MINILM_DC"))
        self.assertEqual(len(plain), 384)
        self.assertEqual(plain, dc)

    def test_damaged_dc_is_a_clear_error(self):
        with self.assertRaises(self.hook.LoadError) as cm:
            complete(env("DCGGUF_TEST_DAMAGED_DC"))
        msg = str(cm.exception)
        self.assertIn("Failed to load model from file", msg)
        self.assertIn("checksum", msg)
        # Still a ValueError, like llama-cpp-python's own load failures.
        self.assertIsInstance(cm.exception, ValueError)

    def test_missing_file_keeps_llama_cpp_python_behaviour(self):
        with self.assertRaises(ValueError):
            complete("/nonexistent/model.gguf")


class BareCtypesHost(unittest.TestCase):
    """Any ctypes host: libllama opened by hand, dcgguf_llama_model_load called directly."""

    def test_model_loads_with_same_parameter_count(self):
        from dcgguf import _lib

        libllama = llama_cpp.llama_cpp._lib
        dc = _lib.load()
        dc.dcgguf_llama_model_load.argtypes = [ctypes.c_char_p,
                                               llama_cpp.llama_cpp.llama_model_params]
        dc.dcgguf_llama_model_load.restype = ctypes.c_void_p
        n_params = libllama.llama_model_n_params
        n_params.argtypes = [ctypes.c_void_p]
        n_params.restype = ctypes.c_uint64
        free = libllama.llama_model_free
        free.argtypes = [ctypes.c_void_p]
        free.restype = None
        counts = []
        for path in (env("DCGGUF_TEST_SMOLLM2"), env("DCGGUF_TEST_SMOLLM2_DC")):
            params = llama_cpp.llama_cpp.llama_model_default_params()
            model = dc.dcgguf_llama_model_load(os.fsencode(path), params)
            self.assertTrue(model, path)
            counts.append(n_params(model))
            free(model)
        self.assertGreater(counts[0], 100_000_000)
        self.assertEqual(counts[0], counts[1])


if __name__ == "__main__":
    unittest.main()
