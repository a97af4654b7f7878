"""Helpers both halves share: the layer plan cache, the seeded a-polynomials, Delta * m."""

from __future__ import annotations

import secrets
from functools import lru_cache

import numpy as np

from ._native import ffi, lib
from .layout import LayerSpec, Plan
from .params import HEParams
from .rand import derive
from .rns import RNS, THREADS, f64_ptr, ptr


@lru_cache(maxsize=256)
def plan_for(spec: LayerSpec, n: int) -> Plan:
    return Plan.make(spec, n)


def tiling(plan: Plan, ring_bits: int) -> object:
    """The plan's tiling for the native encoders (``bh_tiling``; same order as Plan.encode_input)."""
    t = ffi.new("bh_tiling *")
    t.c, t.h, t.w, t.pad = plan.c_in, plan.spec.h, plan.spec.w, plan.pad
    t.th, t.tw, t.ht, t.wt, t.n_tj, t.tiles = plan.th, plan.tw, plan.ht, plan.wt, plan.n_tj, plan.tiles
    t.ipack = plan.ipack
    t.mask = (1 << ring_bits) - 1
    return t


def a_keys(seed: bytes, indices: np.ndarray) -> bytes:
    """32-byte ChaCha20 keys of the given ciphertexts' a-polynomials, concatenated.

    Each ciphertext of an upload has its own key, so the server can regenerate any subset.
    """
    return b"".join(derive(seed, int(i), b"a") for i in np.asarray(indices).reshape(-1))


def expand_a_at(rns: RNS, seed: bytes, indices: np.ndarray) -> np.ndarray:
    """(K, len(indices), N): the a-polynomials (NTT form, centred) of the given ciphertexts."""
    idx = np.asarray(indices).reshape(-1)
    out = np.empty((idx.size, rns.k, rns.n))
    if lib.bh_expand_a(rns.ctx, a_keys(seed, idx), idx.size, f64_ptr(out), THREADS):
        raise RuntimeError("keystream too short for rejection sampling (probability < 2^-100)")
    return out.transpose(1, 0, 2)


def expand_a(rns: RNS, seed: bytes, count: int) -> np.ndarray:
    """(K, count, N) public polynomials a (already in NTT form) of an upload's ciphertexts."""
    return expand_a_at(rns, seed, np.arange(count))


def scaled_message(params: HEParams, rns: RNS, m: np.ndarray) -> np.ndarray:
    """Centred residues of Delta * m for m in [0, t) (uint64), shape (K, *m.shape)."""
    return rns.mul_const(rns.from_uint(m), params.delta)


def u64_ptr(a: np.ndarray) -> object:
    if a.dtype != np.uint64:
        raise ValueError("expected uint64")
    return ptr("uint64_t *", a)


def random_ring(shape: tuple[int, ...], ring_bits: int, threads: int = THREADS) -> np.ndarray:
    """Uniform elements of Z_{2^l} (uint64) from ChaCha20 under a fresh key from ``secrets``."""
    out = np.empty(shape, dtype=np.uint64)
    lib.bh_random_bits(secrets.token_bytes(32), out.size, ring_bits, ptr("uint64_t *", out), threads)
    return out
