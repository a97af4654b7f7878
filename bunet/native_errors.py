"""The native engines' status codes (native/bunet_status.h) as Python exceptions.

Both cffi modules (``bunet.gc._native``, ``bunet.he._native``) export the codes as ``lib.BN_*``;
:func:`check` turns a non-zero code returned by an engine call into one specific exception, so a
caller never compares against literal numbers.
"""

from __future__ import annotations

from typing import Any


class NativeError(Exception):
    """Base of the errors a native engine reports."""


class EngineMemoryError(NativeError, MemoryError):
    """A working buffer of the engine could not be allocated."""


class GateOpcodeError(NativeError, ValueError):
    """A circuit holds a gate whose opcode the engine does not know."""


class EngineArgumentError(NativeError, ValueError):
    """The arguments of an engine call do not fit together (sizes, circuit records, table specs)."""


class RandomSourceError(NativeError, OSError):
    """The operating system's random source (getrandom) failed."""


class UnsupportedParametersError(NativeError, ValueError):
    """The engine does not support these parameters (precisions, OT parameter set)."""


# status name in bunet_status.h -> (exception, what it means)
_TABLE: dict[str, tuple[type[NativeError], str]] = {
    "BN_ENOMEM": (EngineMemoryError, "out of memory"),
    "BN_EOPCODE": (GateOpcodeError, "unknown gate opcode in the circuit"),
    "BN_EINVAL": (EngineArgumentError, "inconsistent arguments"),
    "BN_ERANDOM": (RandomSourceError, "the OS random source failed"),
    "BN_EPARAMS": (UnsupportedParametersError, "unsupported parameters"),
}


def error_for(lib: Any, rc: int, what: str) -> NativeError:
    """The exception for status rc of the call described by what (rc != BN_OK)."""
    for name, (exc, meaning) in _TABLE.items():
        if rc == getattr(lib, name):
            return exc(f"{what}: {meaning} (engine status {name})")
    return NativeError(f"{what}: unknown engine status {rc}")


def check(lib: Any, rc: int, what: str) -> None:
    """Raise the exception for a non-zero status rc of an engine call (what: a short description)."""
    if rc != lib.BN_OK:
        raise error_for(lib, rc, what)
