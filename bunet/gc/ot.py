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
        out = [_key(sid, i, self.A, b_pt, _mul(b, self.A)) for i, (b, b_pt) in enumerate(zip(self._secrets,
                                                                                             self.bs, strict=False))]
        self._secrets = []
        return out
