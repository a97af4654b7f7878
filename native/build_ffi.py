"""cffi build script (API mode) for the two native modules:

* ``bunet.gc._native`` from gc/*.c and silent_ot.c: the garbled-circuit engine (AES-NI, SSE4.1;
  VAES/AVX2/BMI2 paths are chosen at run time);
* ``bunet.he._native`` from he/*.c: the HomConv kernels (portable C; the AVX2+FMA path is
  chosen at run time, so no machine-specific flags are passed).

Used by setup.py (``cffi_modules``: ``gc_builder`` and ``he_builder``); run as a script to build
both in place: ``python native/build_ffi.py [gc|he ...]`` from the repository root.
"""

from __future__ import annotations

import os
import re
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# module -> public headers (parsed by cffi, in native/), C sources (in native/), compile flags, link flags,
# libraries. The internal headers of native/gc/ and native/he/ are found through include_dirs.
# Plain data, no dataclass: setuptools runs this file through cffi's execfile, outside sys.modules.
MODULES: dict[str, tuple[str, str, list[str], list[str], list[str]]] = {
    "gc": (
        "bunet_status.h bunet_gc.h silent_ot.h",
        "gc/cpu.c gc/aes.c gc/transpose.c gc/ot_ext.c gc/ot_check.c gc/luts.c gc/pack.c gc/garble.c gc/evaluate.c"
        " gc/run.c silent_ot.c",
        ["-O3", "-maes", "-msse4.1", "-mssse3", "-mpclmul", "-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden"],
        [],
        [],
    ),
    "he": (
        "bunet_status.h bunet_he.h",
        "he/cpu.c he/threads.c he/chacha20.c he/ntt.c he/sampling.c he/bfv_client.c he/bfv_server.c he/products.c",
        [
            "-O3",
            "-std=gnu11",
            "-ffp-contract=off",
            "-fno-strict-aliasing",
            "-pthread",
            "-Wall",
            "-Wextra",
            "-fvisibility=hidden",
        ],
        ["-pthread"],
        ["m"],
    ),
}


def _cdef(header: str) -> str:
    """The header without preprocessor lines and comments (what cffi's parser takes)."""
    with open(os.path.join(HERE, header)) as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line for line in text.splitlines() if not re.match(r"\s*#", line))


def make_builder(name: str, absolute: bool = False) -> FFI:
    """The FFI builder; setuptools wants source paths relative to the project root."""
    headers, sources, cflags, link, libraries = (
        part.split() if isinstance(part, str) else part for part in MODULES[name]
    )
    b = FFI()
    b.cdef("\n".join(_cdef(header) for header in headers))
    where = HERE if absolute else "native"
    b.set_source(
        f"bunet.{name}._native",
        "".join(f'#include "{h}"\n' for h in headers),
        sources=[os.path.join(where, source) for source in sources],
        include_dirs=[where],
        extra_compile_args=cflags,
        extra_link_args=link,
        libraries=libraries,
    )
    return b


gc_builder = make_builder("gc")
he_builder = make_builder("he")


def install_in_place(name: str) -> str:
    """Compile one module and install it into the source tree.

    compile() with a dotted module name writes bunet/<package>/_native*.so under a build folder.
    The module is installed under the name setuptools gives it (cffi builds against the limited
    API) and other variants are dropped, so a build by this script and one by `pip install -e .`
    never shadow each other. The new file is renamed into place: processes that have the old one
    loaded keep their (unlinked) copy instead of crashing on a file rewritten under them.
    """
    import glob
    import shutil

    package = name
    tmp = os.path.join(ROOT, "build", f"cffi_{name}")
    for stale in glob.glob(os.path.join(tmp, "bunet", package, "_native*.so")):
        os.remove(stale)
    make_builder(name, absolute=True).compile(tmpdir=tmp, verbose=False)
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
    for name in sys.argv[1:] or list(MODULES):
        if name not in MODULES:
            sys.exit(f"unknown module {name!r}: choose from {', '.join(MODULES)}")
        print("built", install_in_place(name))
