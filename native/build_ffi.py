"""cffi build script for the native garbled-circuit engine (API mode, module ``bunet.gc._native``).

Used by setup.py (``cffi_modules``); run as a script to build the extension in place:
``python native/build_ffi.py`` from the repository root.
"""

from __future__ import annotations

import os
import re
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _cdef() -> str:
    with open(os.path.join(HERE, "bunet_gc.h")) as f:
        text = f.read()
    return "\n".join(line for line in text.splitlines() if not re.match(r"\s*#", line))


CFLAGS = ["-O3", "-maes", "-msse4.1", "-mssse3", "-mpclmul", "-std=gnu11", "-Wall", "-Wextra"]


def make_builder(absolute: bool = False) -> FFI:
    """The FFI builder; setuptools wants source paths relative to the project root."""
    src = os.path.join(HERE, "bunet_gc.c") if absolute else os.path.join("native", "bunet_gc.c")
    inc = HERE if absolute else "native"
    b = FFI()
    b.cdef(_cdef())
    b.set_source("bunet.gc._native", '#include "bunet_gc.h"', sources=[src], include_dirs=[inc],
                 extra_compile_args=CFLAGS)
    return b


ffibuilder = make_builder()

if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, ROOT)
    make_builder(absolute=True).compile(tmpdir=os.path.join(ROOT, "build", "cffi"), verbose=False)
    # compile() with a dotted module name writes bunet/gc/_native*.so under tmpdir; move it in place
    import glob
    import shutil

    for so in glob.glob(os.path.join(ROOT, "build", "cffi", "bunet", "gc", "_native*.so")):
        shutil.copy2(so, os.path.join(ROOT, "bunet", "gc", os.path.basename(so)))
        print("built", os.path.join("bunet", "gc", os.path.basename(so)))
