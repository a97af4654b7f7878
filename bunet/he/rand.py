"""Randomness: a seeded expander for the public polynomials a, and CSPRNG-based samplers.

* ``keystream``: libsodium's ``randombytes_buf_deterministic`` (ChaCha20-IETF keyed by a
  32-byte seed; pynacl is already a dependency), about 1.5 GB/s here.  Each ciphertext's
  ``a`` comes from its own derived key, so the server can regenerate any subset of a
  message's ciphertexts.
* Uniform residues mod p use rejection sampling on 32-bit words (exactly uniform).
* Secret-dependent randomness (noise, ternary secrets, flooding) is drawn from a fresh
  256-bit key taken from ``secrets`` and expanded the same way: a CSPRNG, much faster than
  reading the OS generator.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets

import numpy as np
from nacl.bindings import randombytes_buf_deterministic

from .params import NOISE_ETA
from .rns import mod_inplace


def keystream(key: bytes, nbytes: int) -> bytes:
    """ChaCha20 keystream under a 32-byte key (deterministic: both parties expand seeds alike)."""
    return randombytes_buf_deterministic(nbytes, key)


def derive(seed: bytes, index: int, label: bytes) -> bytes:
    return hashlib.blake2b(index.to_bytes(8, "little") + label, key=seed, digest_size=32).digest()


def uniform_mod(key: bytes, primes: tuple[int, ...], n: int) -> np.ndarray:
    """(K, n) exactly uniform residues, deterministic in ``key``."""
    out = np.empty((len(primes), n), dtype=np.float64)
    extra = 64 + n // 64
    words = np.frombuffer(keystream(key, 4 * len(primes) * (n + extra)), dtype=np.uint32)
    words = words.reshape(len(primes), n + extra)
    for i, p in enumerate(primes):
        lim = (1 << 32) // p * p
        w = words[i][words[i] < lim]
        if w.size < n:  # probability < 2^-100 for the sizes used here
            sub = derive(key, i, b"more")
            return _uniform_slow(sub, primes, n, out, i)
        out[i] = (w[:n] % np.uint32(p)).astype(np.float64)
    return out


def uniform_mod_many(keys: list[bytes], primes: tuple[int, ...], n: int) -> np.ndarray:
    """(K, len(keys), n): ``uniform_mod(key)`` for every key, rejection done in one vector pass."""
    k, count = len(primes), len(keys)
    extra = 64 + n // 64
    words = np.frombuffer(b"".join(keystream(key, 4 * k * (n + extra)) for key in keys), dtype=np.uint32)
    words = words.reshape(count, k, n + extra)
    lim = np.array([(1 << 32) // p * p for p in primes], dtype=np.uint32)[None, :, None]
    ok = words < lim
    keep = ok & (np.cumsum(ok, axis=2) <= n)
    if not np.all(keep.sum(axis=2) == n):      # probability < 2^-100: per-key slow path
        return np.stack([uniform_mod(key, primes, n) for key in keys], axis=1)
    vals = words[keep].reshape(count, k, n).transpose(1, 0, 2)
    out = np.empty((k, count, n))
    for i, p in enumerate(primes):
        out[i] = vals[i] % np.uint32(p)
    return out


def _uniform_slow(key: bytes, primes: tuple[int, ...], n: int, out: np.ndarray, start: int) -> np.ndarray:
    for i in range(start, len(primes)):
        p = primes[i]
        lim = (1 << 32) // p * p
        got: list[np.ndarray] = []
        count, ctr = 0, 0
        while count < n:
            w = np.frombuffer(keystream(derive(key, i * 1000 + ctr, b"slow"), 4 * n), dtype=np.uint32)
            w = w[w < lim]
            got.append(w)
            count += w.size
            ctr += 1
        out[i] = (np.concatenate(got)[:n] % np.uint32(p)).astype(np.float64)
    return out


class Sampler:
    """CSPRNG samplers for one party (fresh secret key per instance, re-keyed per call)."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._ctr = itertools.count(1)     # next() is atomic: threads never share a stream

    def _bytes(self, nbytes: int) -> bytes:
        return keystream(derive(self._key, next(self._ctr), b"sampler"), nbytes)

    def words64(self, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        return np.frombuffer(self._bytes(8 * n), dtype=np.uint64).reshape(shape)

    def cbd(self, shape: tuple[int, ...]) -> np.ndarray:
        """Centred binomial noise, eta = 21: |e| <= 21, variance 10.5."""
        w = self.words64(shape)
        m = np.uint64((1 << NOISE_ETA) - 1)
        a = np.bitwise_count(w & m).astype(np.int64)
        b = np.bitwise_count((w >> np.uint64(NOISE_ETA)) & m).astype(np.int64)
        return a - b

    def ternary(self, shape: tuple[int, ...]) -> np.ndarray:
        """Uniform in {-1, 0, 1} (rejection on bytes < 255)."""
        n = int(np.prod(shape))
        out = np.empty(0, dtype=np.int64)
        while out.size < n:
            b = np.frombuffer(self._bytes(n + 64), dtype=np.uint8)
            b = b[b < 255].astype(np.int64) % 3 - 1
            out = np.concatenate([out, b])
        return out[:n].reshape(shape)

    def uniform_signed_residues(self, bits: int, primes: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
        """Centred residues mod each prime of a uniform integer in [-2^bits, 2^bits), shape (K, *shape).

        The integer is sum_i limb_i * 2^(27 i) - 2^bits with 27-bit limbs (the top one shorter):
        with every 2^(27 i) mod p below 2^22 each term is below 2^49, so one reduction per
        prime suffices (bits <= 130).
        """
        if not 1 <= bits <= 130:
            raise ValueError("flood width out of range")
        total = bits + 1
        n_limbs = (total + 26) // 27
        w = self.words64((n_limbs,) + shape)
        limbs = [(w[i] >> np.uint64(64 - min(27, total - 27 * i))).astype(np.float64) for i in range(n_limbs)]
        out = np.empty((len(primes),) + shape, dtype=np.float64)
        for j, p in enumerate(primes):
            acc = limbs[0] - float((1 << bits) % p)
            for i in range(1, n_limbs):
                acc += limbs[i] * float((1 << (27 * i)) % p)
            out[j] = mod_inplace(acc, float(p), 1.0 / p)
        return out
