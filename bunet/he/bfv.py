"""Helpers both halves share: the layer plan cache, the seeded a-polynomials, Delta * m."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .layout import LayerSpec, Plan
from .params import HEParams
from .rand import derive, uniform_mod_many
from .rns import RNS

_U64 = np.uint64


@lru_cache(maxsize=256)
def plan_for(spec: LayerSpec, n: int) -> Plan:
    return Plan.make(spec, n)


def expand_a(rns: RNS, seed: bytes, count: int) -> np.ndarray:
    """(K, count, N) public polynomials a (already in NTT form) of an upload's ciphertexts."""
    return expand_a_at(rns, seed, np.arange(count))


def expand_a_at(rns: RNS, seed: bytes, indices: np.ndarray) -> np.ndarray:
    """(K, len(indices), N): the a-polynomials of the given ciphertext indices of an upload."""
    return uniform_mod_many([derive(seed, int(i), b"a") for i in indices], rns.primes, rns.n)


def scaled_message(params: HEParams, rns: RNS, m: np.ndarray) -> np.ndarray:
    """Centred residues of Delta * m for m in [0, t) (uint64), shape (K, *m.shape)."""
    return rns.mul_const(rns.from_uint(m), params.delta)
