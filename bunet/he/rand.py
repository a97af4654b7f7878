"""Randomness: a seeded expander for the public polynomials a, and CSPRNG-based samplers.

* ``keystream``: libsodium's ``randombytes_buf_deterministic`` (ChaCha20-IETF keyed by a
  32-byte seed; pynacl is already a dependency).  Each ciphertext's ``a`` comes from its own
  derived key (:func:`derive`), so the server can regenerate any subset of a message's
  ciphertexts.  The native kernels (``bh_expand_a``) expand the very same keystream with their
  own ChaCha20; :func:`uniform_mod` is the reference they are tested against and also expands
  the public key's ``a``.
* Uniform residues mod p use rejection sampling on 32-bit words (exactly uniform).
* Secret-dependent randomness of the key generation (ternary secret, noise) is drawn from a
  fresh 256-bit key taken from ``secrets`` and expanded the same way.  The per-ciphertext noise,
  re-randomisation and flooding are drawn inside the native kernels from ChaCha20 under a fresh
  ``secrets`` key per call.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets

import numpy as np
from nacl.bindings import randombytes_buf_deterministic

from .params import NOISE_ETA


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
        self._ctr = itertools.count(1)  # next() is atomic: threads never share a stream

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
