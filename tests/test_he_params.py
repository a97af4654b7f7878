"""BFV parameter sets: 128-bit security (SEAL's own check), q = 1 mod t, the noise budget."""

from __future__ import annotations

import math

import pytest

from bunet.he import HEParams
from bunet.he.params import (
    FLOOD_JOB_CIPHERTEXTS,
    MAX_LOGQ_128,
    NOISE_ETA,
    centred_q_mod_t,
    noise_bound_pre_flood,
    seal_check,
)


@pytest.mark.parametrize("ring_bits", [16, 20, 24, 28, 32])
def test_parameter_sets(ring_bits: int) -> None:
    p = HEParams.for_ring(ring_bits)
    n = p.poly_degree
    assert p.q.bit_length() <= MAX_LOGQ_128[n]
    assert all(q % (2 * n) == 1 and q < 1 << 22 for q in p.primes)
    seal_check(p)  # SEAL with sec_level TC128 accepts them
    r_t = centred_q_mod_t(p.q, p.t)
    b_w = noise_bound_pre_flood(p.weight_l1_bits, r_t)
    flood = 1 << p.flood_bits
    # statistical distance of flooding over all N returned coefficients of a ciphertext, and over
    # the most returned ciphertexts one job may hold
    per_ct = n * b_w / (2 * flood)
    assert per_ct <= 2.0**-60
    assert FLOOD_JOB_CIPHERTEXTS * per_ct <= 2.0**-40
    # after flooding the noise is below q/(8t) ...
    total = flood + b_w + NOISE_ETA * (2 * n + 1) + 2
    assert 8 * p.t * total <= p.q
    # ... and after switching to 2^m (rounding <= 2 + 2||s||_1, c0 truncation) below 2^m/(2t)
    m, m0 = p.down_bits, p.down_c0_bits
    assert 2**m / (8 * p.t) + 2 + 2 * n + 2 ** (m - m0 - 1) < 2**m / (2 * p.t)
    assert m <= 50


def test_default_is_n8192_for_24_bits() -> None:
    """Flooding to 2^-61 per ciphertext needs about 121 bits of q at l = 24: beyond N = 4096's 109."""
    p = HEParams.for_ring(24)
    assert p.poly_degree == 8192 and p.q % p.t == 1
    assert 120 < math.log2(p.q) <= MAX_LOGQ_128[8192]


def test_blob_roundtrip_and_digest() -> None:
    p = HEParams.for_ring(24)
    q = HEParams.from_bytes(p.to_bytes())
    assert q == p and q.digest() == p.digest()
    assert HEParams.for_ring(20).digest() != p.digest()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(primes=d["primes"][:-1]),
        lambda d: d.update(primes=[d["primes"][0]] * 5),
        lambda d: d.update(flood_bits=d["flood_bits"] - 5),
        lambda d: d.update(poly_degree=2048),
        lambda d: d.update(down_bits=20),
        lambda d: d.update(weight_l1_bits=30),
    ],
)
def test_bad_blobs_rejected(mutate) -> None:
    import json

    d = json.loads(HEParams.for_ring(24).to_bytes())
    mutate(d)
    with pytest.raises(ValueError):
        HEParams.from_bytes(json.dumps(d).encode())
    with pytest.raises(ValueError):
        HEParams.from_bytes(b"\x00garbage")


def test_out_of_range_ring_bits() -> None:
    with pytest.raises(ValueError):
        HEParams.for_ring(1)
    with pytest.raises(ValueError):
        HEParams.for_ring(64)
