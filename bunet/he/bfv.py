"""Helpers both halves share: the layer plan cache, the seeded a-polynomials, Delta * m."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .layout import LayerSpec, Plan
from .params import HEParams
from .rand import derive, uniform_mod
from .rns import RNS

_U64 = np.uint64


@lru_cache(maxsize=256)
def plan_for(spec: LayerSpec, n: int) -> Plan:
    return Plan.make(spec, n)


def expand_a(rns: RNS, seed: bytes, count: int) -> np.ndarray:
    """(K, count, N) public polynomials a (already in NTT form) of an upload's ciphertexts."""
    out = np.empty((rns.k, count, rns.n))
    for i in range(count):
        out[:, i] = uniform_mod(derive(seed, i, b"a"), rns.primes, rns.n)
    return out


def scaled_message(params: HEParams, rns: RNS, m: np.ndarray) -> np.ndarray:
    """Centred residues of Delta * m for m in [0, t) (uint64), shape (K, *m.shape)."""
    return rns.mul_const(rns.from_uint(m), params.delta)
