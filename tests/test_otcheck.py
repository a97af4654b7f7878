"""The OT consistency check (KOS as in SoftSpoken): an honest receiver passes, the arithmetic
matches an independent GF(2^128) reference, and a receiver who cheats in its correction is caught."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from gcpair import LocalCot

from bunet.gc import otcheck

POLY = (1 << 128) | 0x87


def _gf_mul(a: int, b: int) -> int:
    r = 0
    while b:
        if b & 1:
            r ^= a
        b >>= 1
        a <<= 1
        if a >> 128:
            a ^= POLY
    return r


def _chis(seed: bytes, m: int) -> list[int]:
    blocks = b"".join(i.to_bytes(8, "little") + (0x4348490000000000).to_bytes(8, "little") for i in range(m))
    enc = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    out = enc.update(blocks) + enc.finalize()
    return [int.from_bytes(out[16 * i : 16 * i + 16], "little") for i in range(m)]


def test_proof_matches_gf128_reference():
    rng = np.random.default_rng(1)
    m, seed = 200, rng.bytes(16)
    rows = rng.integers(0, 256, size=16 * m, dtype=np.uint8)
    choice = rng.integers(0, 256, size=m // 8, dtype=np.uint8)
    proof = otcheck.prove(rows, choice, seed)
    x = t = 0
    bits = np.unpackbits(choice, bitorder="little")
    for i, chi in enumerate(_chis(seed, m)):
        x ^= chi if bits[i] else 0
        t ^= _gf_mul(chi, int.from_bytes(rows[16 * i : 16 * i + 16].tobytes(), "little"))
    assert proof == x.to_bytes(16, "little") + t.to_bytes(16, "little")


@pytest.mark.parametrize("k", [1, 4])
def test_honest_receiver_passes(k):
    cot = LocalCot(k, 1024 + otcheck.PAD_ROWS, seed=k)
    cot.recv()
    q = cot.send()
    seed = otcheck.challenge(b"sid", cot.cm)
    assert otcheck.verify(q, cot.delta, seed, otcheck.prove(cot.t, cot.choice, seed))
    other = otcheck.challenge(b"other", cot.cm)
    assert not otcheck.verify(q, cot.delta, other, otcheck.prove(cot.t, cot.choice, seed))


@pytest.mark.parametrize("k", [1, 4])
def test_cheating_receiver_is_caught(k):
    """Corrections inconsistent in a column (the attack that probes Δ's bits), and proofs that
    lie about the choices, fail the check."""
    rng = np.random.default_rng(10 + k)
    cot = LocalCot(k, 1024 + otcheck.PAD_ROWS, seed=10 + k)
    cot.recv()
    delta, choice, cm, t, send = cot.delta, cot.choice, cot.cm, cot.t, lambda c: cot.send(c).copy()
    caught = 0
    for _ in range(24):
        bad = cm.copy()
        bad[rng.integers(0, bad.size)] ^= np.uint8(1 << int(rng.integers(0, 8)))  # one column, one row
        q = send(bad)
        seed = otcheck.challenge(b"sid", bad)
        caught += not otcheck.verify(q, delta, seed, otcheck.prove(t, choice, seed))
    # a single flipped bit escapes only when the Δ bits it touches are 0: about half the time for IKNP
    assert caught >= 6
    many = cm.copy()
    for i in rng.choice(many.size, size=64, replace=False):
        many[i] ^= np.uint8(1 << int(rng.integers(0, 8)))
    q = send(many)
    seed = otcheck.challenge(b"sid", many)
    assert not otcheck.verify(q, delta, seed, otcheck.prove(t, choice, seed))
    q = send(cm)
    seed = otcheck.challenge(b"sid", cm)
    lie = choice.copy()
    lie[0] ^= 1
    assert not otcheck.verify(q, delta, seed, otcheck.prove(t, lie, seed))
