"""Build hook: compiles the native garbled-circuit engine (native/) through cffi at install."""

from setuptools import setup

setup(cffi_modules=["native/build_ffi.py:ffibuilder", "native/build_he_ffi.py:ffibuilder"])
