"""Base OT (Chou-Orlandi "simplest OT") over the prime-order subgroup of edwards25519.

PyNaCl 1.6 does not expose libsodium's ristretto255 functions, so the group is edwards25519's
prime-order subgroup through ``crypto_scalarmult_ed25519_noclamp`` (which rejects small-order,
non-canonical and off-subgroup points). Every key is hashed with the session id, the OT index
and both public group elements.

Roles: in IKNP the OT-extension receiver (the evaluator) is the base-OT *sender* of 128 pairs,
the OT-extension sender (the garbler) is the base-OT receiver with choice bits = Delta.
"""

from __future__ import annotations

import hashlib
import os

from nacl import bindings as nb
from nacl.exceptions import CryptoError

POINT = 32
N_BASE = 128


def _scalar() -> bytes:
    return nb.crypto_core_ed25519_scalar_reduce(os.urandom(64))


def _key(sid: bytes, i: int, a_pt: bytes, b_pt: bytes, shared: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16, person=b"bunet-baseot-v1")
    h.update(sid)
    h.update(i.to_bytes(4, "little"))
    h.update(a_pt)
    h.update(b_pt)
    h.update(shared)
    return h.digest()


def _check_point(p: bytes) -> None:
    if len(p) != POINT or not nb.crypto_core_ed25519_is_valid_point(p):
        raise ValueError("base OT: invalid group element in message")


def _mul(s: bytes, p: bytes) -> bytes:
    try:
        return nb.crypto_scalarmult_ed25519_noclamp(s, p)
    except (CryptoError, RuntimeError) as e:
        raise ValueError("base OT: invalid group element in message") from e


class BaseOTSender:
    """Holds 128 pairs of random keys (k0_i, k1_i)."""

    def __init__(self) -> None:
        self._a = _scalar()
        self.A = nb.crypto_scalarmult_ed25519_base_noclamp(self._a)

    def keys(self, sid: bytes, bs: list[bytes]) -> tuple[list[bytes], list[bytes]]:
        k0, k1 = [], []
        for i, b_pt in enumerate(bs):
            _check_point(b_pt)
            s0 = _mul(self._a, b_pt)
            s1 = _mul(self._a, nb.crypto_core_ed25519_sub(b_pt, self.A))
            k0.append(_key(sid, i, self.A, b_pt, s0))
            k1.append(_key(sid, i, self.A, b_pt, s1))
        self._a = b""
        return k0, k1


class BaseOTReceiver:
    """Chooses bit c_i for OT i: sends B_i = b_i G + c_i A, keeps H(b_i A)."""

    def __init__(self, a_pt: bytes, choices: list[int]) -> None:
        _check_point(a_pt)
        self.A = a_pt
        self.bs: list[bytes] = []
        self._secrets: list[bytes] = []
        for c in choices:
            b = _scalar()
            b0 = nb.crypto_scalarmult_ed25519_base_noclamp(b)
            b1 = nb.crypto_core_ed25519_add(b0, a_pt)
            self.bs.append((b0, b1)[c])  # both computed, one kept
            self._secrets.append(b)

    def keys(self, sid: bytes) -> list[bytes]:
        out = [
            _key(sid, i, self.A, b_pt, _mul(b, self.A))
            for i, (b, b_pt) in enumerate(zip(self._secrets, self.bs, strict=False))
        ]
        self._secrets = []
        return out


# --- GGM-punctured trees for SoftSpoken OT extension ----------------------------------------
# 128/k trees of depth k. The client knows every leaf; through the 128 base OTs (one per tree
# level) the garbler learns the XOR of the level's nodes on the side off its punctured path, and
# so every leaf but leaf d_b (d_b = Delta bits b*k .. b*k+k-1). Leaf x is reached by the bits of
# x, most significant first. One-time session setup.

SEED = 16


def _expand(node: bytes) -> tuple[bytes, bytes]:
    h = hashlib.blake2b(node, digest_size=32, person=b"bunet-ggm-v1").digest()
    return h[:SEED], h[SEED:]


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def ggm_client(k: int) -> tuple[list[list[bytes]], list[tuple[bytes, bytes]]]:
    """All trees: leaves[b][x], and per base OT i = b*k + level-1 the two level sums (even, odd)."""
    leaves, sums = [], []
    for _ in range(128 // k):
        level = [os.urandom(SEED)]
        for _ in range(k):
            level = [c for node in level for c in _expand(node)]
            s0, s1 = bytes(SEED), bytes(SEED)
            for y, node in enumerate(level):
                if y & 1:
                    s1 = _xor(s1, node)
                else:
                    s0 = _xor(s0, node)
            sums.append((s0, s1))
        leaves.append(level)
    return leaves, sums


def ggm_choices(k: int, delta: bytes) -> list[int]:
    """The garbler's base-OT choice bits: the side off the punctured path, level by level."""
    out = []
    for b in range(128 // k):
        d = sum(((delta[(b * k + j) // 8] >> ((b * k + j) % 8)) & 1) << j for j in range(k))
        out += [1 - ((d >> (k - lv)) & 1) for lv in range(1, k + 1)]
    return out


def ggm_garbler(k: int, delta: bytes, level_sums: list[bytes]) -> list[list[bytes]]:
    """Rebuild every leaf but the punctured one (a zero dummy there), from the chosen level sums."""
    leaves = []
    for b in range(128 // k):
        d = sum(((delta[(b * k + j) // 8] >> ((b * k + j) % 8)) & 1) << j for j in range(k))
        known: dict[int, bytes] = {}
        for lv in range(1, k + 1):
            hole = d >> (k - lv)
            nxt: dict[int, bytes] = {}
            for y, node in known.items():
                left, right = _expand(node)
                nxt[2 * y], nxt[2 * y + 1] = left, right
            sib = hole ^ 1
            acc = level_sums[b * k + lv - 1]
            for y, node in nxt.items():
                if (y & 1) == (sib & 1):
                    acc = _xor(acc, node)
            nxt[sib] = acc
            known = nxt
        leaves.append([known.get(x, bytes(SEED)) for x in range(1 << k)])
    return leaves


def local_trees(k: int, seed: int = 0) -> tuple[bytes, list[list[bytes]], list[list[bytes]]]:
    """Delta and both parties' GGM trees with the base OTs done in memory, for tests and benchmarks.

    Returns (delta, client leaves, garbler leaves); delta is a deterministic function of ``seed``
    with its colour bit set. Never for a session: there, the base OTs keep delta from the client.
    """
    delta = bytearray(hashlib.sha256(b"bunet local ot %d" % seed).digest()[:16])
    delta[0] |= 1
    leaves_c, sums = ggm_client(k)
    chosen = [pair[c] for pair, c in zip(sums, ggm_choices(k, bytes(delta)), strict=True)]
    return bytes(delta), leaves_c, ggm_garbler(k, bytes(delta), chosen)
