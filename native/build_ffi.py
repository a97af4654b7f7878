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

def install_in_place(builder: FFI, package: str, tmp: str) -> str:
    """Compile ``builder`` and install its module into the source tree (``package`` = "gc" / "he").

    compile() with a dotted module name writes bunet/<package>/_native*.so under tmp. The module is
    installed under the name setuptools gives it (cffi builds against the limited API) and other
    variants are dropped, so a build by a script and one by `pip install -e .` never shadow each
    other. The new file is renamed into place: processes that have the old one loaded keep their
    (unlinked) copy instead of crashing on a file rewritten under them.
    """
    import glob
    import shutil

    for stale in glob.glob(os.path.join(tmp, "bunet", package, "_native*.so")):
        os.remove(stale)
    builder.compile(tmpdir=tmp, verbose=False)
    built = glob.glob(os.path.join(tmp, "bunet", package, "_native*.so"))
    if len(built) != 1:
        sys.exit(f"expected one built module, found {built}")
    dest = os.path.join(ROOT, "bunet", package, "_native.abi3.so")
    shutil.copy2(built[0], dest + ".tmp")
    os.replace(dest + ".tmp", dest)
    for old in glob.glob(os.path.join(ROOT, "bunet", package, "_native*.so")):
        if os.path.abspath(old) != dest:
            os.remove(old)
    return os.path.relpath(dest, ROOT)


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, ROOT)
    print("built", install_in_place(make_builder(absolute=True), "gc", os.path.join(ROOT, "build", "cffi")))
