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
    import glob
    import shutil

    tmp = os.path.join(ROOT, "build", "cffi")
    for stale in glob.glob(os.path.join(tmp, "bunet", "gc", "_native*.so")):
        os.remove(stale)
    make_builder(absolute=True).compile(tmpdir=tmp, verbose=False)
    # compile() with a dotted module name writes bunet/gc/_native*.so under tmpdir. Install it under
    # the name setuptools gives it (cffi builds against the limited API) and drop other variants, so a
    # build by this script and one by `pip install -e .` never shadow each other. The new file is
    # renamed into place: processes that have the old one loaded keep their (unlinked) copy.
    built = glob.glob(os.path.join(tmp, "bunet", "gc", "_native*.so"))
    if len(built) != 1:
        sys.exit(f"expected one built module, found {built}")
    dest = os.path.join(ROOT, "bunet", "gc", "_native.abi3.so")
    shutil.copy2(built[0], dest + ".tmp")
    os.replace(dest + ".tmp", dest)
    for old in glob.glob(os.path.join(ROOT, "bunet", "gc", "_native*.so")):
        if os.path.abspath(old) != dest:
            os.remove(old)
    print("built", os.path.relpath(dest, ROOT))
