"""cffi build script for the native HomConv kernels (API mode, module ``bunet.he._native``).

Used by setup.py (``cffi_modules``); run as a script to build the extension in place:
``python native/build_he_ffi.py`` from the repository root.  The C code chooses its AVX2+FMA
path at run time, so no machine-specific flags are passed here.
"""

from __future__ import annotations

import os
import re
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CFLAGS = ["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-strict-aliasing", "-pthread", "-Wall", "-Wextra"]


def _cdef() -> str:
    with open(os.path.join(HERE, "bunet_he.h")) as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line for line in text.splitlines() if not re.match(r"\s*#", line))


def make_builder(absolute: bool = False) -> FFI:
    """The FFI builder; setuptools wants source paths relative to the project root."""
    src = os.path.join(HERE, "bunet_he.c") if absolute else os.path.join("native", "bunet_he.c")
    inc = HERE if absolute else "native"
    b = FFI()
    b.cdef(_cdef())
    b.set_source("bunet.he._native", '#include "bunet_he.h"', sources=[src], include_dirs=[inc],
                 extra_compile_args=CFLAGS, extra_link_args=["-pthread"], libraries=["m"])
    return b


ffibuilder = make_builder()

if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, ROOT)
    from build_ffi import install_in_place  # the sibling script (its directory is sys.path[0] here)

    print("built", install_in_place(make_builder(absolute=True), "he", os.path.join(ROOT, "build", "cffi_he")))
