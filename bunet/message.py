"""Protocol messages built in place: a fresh ``bytes`` object that the native code fills directly.

Garbled chunks and HE ciphertexts reach hundreds of MB. Building them in a separate buffer and
then converting to ``bytes`` (or zero-filling a ``bytearray`` first) costs a pass over every byte
and a second set of page faults. The object is not visible to anyone else until it is returned,
so filling it is safe; afterwards it is an ordinary immutable ``bytes``.

The body is zeroed before it is handed out: a fill that misses a byte then sends a zero, never
stale heap. The price is one memset pass, small next to the garbling or NTTs that then write it.
"""

from __future__ import annotations

import ctypes

import cffi
import numpy as np

_ffi = cffi.FFI()
_PyBytes_FromStringAndSize = ctypes.pythonapi.PyBytes_FromStringAndSize
_PyBytes_FromStringAndSize.restype = ctypes.py_object
_PyBytes_FromStringAndSize.argtypes = [ctypes.c_char_p, ctypes.c_ssize_t]


def new_message(header: bytes, body_len: int) -> tuple[bytes, np.ndarray]:
    """(the message: ``header`` then ``body_len`` bytes to fill, a writable uint8 view of the body)."""
    msg = _PyBytes_FromStringAndSize(None, len(header) + body_len)
    view = np.frombuffer(_ffi.buffer(_ffi.from_buffer(msg)), dtype=np.uint8)
    view[: len(header)] = np.frombuffer(header, dtype=np.uint8)
    body = view[len(header) :]
    body.fill(0)
    return msg, body
