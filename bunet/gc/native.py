"""Calls into the garbled-circuit engine that take a parameter struct (``bn_gc_args`` in
native/bunet_gc.h): one circuit run, garbler or evaluator, its status raised as an exception."""

from __future__ import annotations

from typing import Any

from ..native_errors import check
from ._native import ffi, lib


def run_circuit(garbler: bool, **fields: Any) -> None:
    """Run bn_gc_garble (garbler) or bn_gc_evaluate with the bn_gc_args fields given.

    Pointer fields take cdata (``ffi.from_buffer``, ``ffi.new``) or bytes; None or a missing field is
    NULL / 0. The values stay referenced here for the whole call (a struct's pointer fields do not
    keep their buffers alive)."""
    for name, value in list(fields.items()):
        if value is None or value is ffi.NULL:
            del fields[name]
        elif isinstance(value, (bytes, bytearray, memoryview)):
            fields[name] = ffi.from_buffer("uint8_t[]", value)
    args = ffi.new("bn_gc_args *", fields)
    rc = (lib.bn_gc_garble if garbler else lib.bn_gc_evaluate)(args)
    check(lib, rc, "garbling" if garbler else "garbled-circuit evaluation")


def circuit_fields(circ: Any, n: int, k: int, b: int, rk: Any, tweak_base: int) -> dict[str, Any]:
    """The bn_gc_args fields that describe running the compiled circuit circ (``circuits.Compiled``) over
    n instances of k input values of b bits each, hashing under rk from tweak_base; the party adds its
    labels, buffers and outputs."""
    return {
        "gates": ffi.from_buffer("int32_t[]", circ.gates),
        "ngates": circ.gates.shape[0],
        "nwires": circ.nwires,
        "nout": circ.n_outputs,
        "n": n,
        "k": k,
        "b": b,
        "rk": rk,
        "tweak_base": tweak_base,
        "tpi": circ.tweaks_per_inst,
        "m": (n * k * b + 127) // 128 * 128,
        "arith_len": circ.arith_len(n),
    }
