"""Build hook of the dcgguf Python package: puts libdcgguf.so into the package.

The package is pure Python; the one native file it ships is libdcgguf.so, taken from

1. ``$DCGGUF_LIB`` when set (a path to a built libdcgguf.so), else
2. the dcgguf repository this directory is in: ``cargo build --release -p dcgguf-capi``
   (a no-op when the library is up to date; ``DCGGUF_NO_CARGO=1`` skips it), then
   ``$CARGO_TARGET_DIR`` or ``target/`` ``/release/libdcgguf.so``.

The wheel is tagged ``py3-none-<platform>``: any CPython 3, this platform (the library is
native code, the binding is not).
"""

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel as _bdist_wheel
from setuptools.command.build_py import build_py as _build_py

HERE = Path(__file__).resolve().parent
LIB = "libdcgguf.so"


def find_library():
    env = os.environ.get("DCGGUF_LIB")
    if env:
        lib = Path(env)
        if not lib.is_file():
            raise SystemExit(f"DCGGUF_LIB={env}: no such file")
        return lib
    repo = HERE.parent
    if not (repo / "Cargo.toml").is_file():
        raise SystemExit(
            f"{LIB}: set DCGGUF_LIB to a built {LIB}, or build this package from a dcgguf "
            "checkout (python/ inside it)"
        )
    if os.environ.get("DCGGUF_NO_CARGO") != "1":
        cmd = ["cargo", "build", "--release", "-p", "dcgguf-capi"]
        try:
            subprocess.run(cmd, cwd=repo, check=True)
        except FileNotFoundError:
            raise SystemExit("cargo not found: install Rust (rustup) or set DCGGUF_LIB") from None
    target = Path(os.environ.get("CARGO_TARGET_DIR") or repo / "target")
    lib = target / "release" / LIB
    if not lib.is_file():
        raise SystemExit(f"{lib} not found after cargo build")
    return lib


class build_py(_build_py):
    def run(self):
        super().run()
        dst = Path(self.build_lib) / "dcgguf" / LIB
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(find_library(), dst)
        os.chmod(dst, 0o755)


class bdist_wheel(_bdist_wheel):
    def finalize_options(self):
        super().finalize_options()
        # Native code inside: a platform wheel, installed to platlib.
        self.root_is_pure = False

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(cmdclass={"build_py": build_py, "bdist_wheel": bdist_wheel})
