"""Build hook: compiles the native modules (native/: garbled circuits and HomConv kernels) through cffi at install."""

from setuptools import setup

setup(cffi_modules=["native/build_ffi.py:gc_builder", "native/build_ffi.py:he_builder"])
