"""Byte formats of the three HE messages (public key, upload, download), built with NumPy.

Every message starts with an 8-byte magic, the 16-byte parameter digest and (for layer
messages) a 16-byte digest of the public layer spec, so a mismatch is a ValueError before any
share-dependent work.  Integers are little-endian; residues and coefficients are packed into
the fewest whole bytes that hold them.  Errors never include share or key values.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np

from .layout import Plan
from .params import HEParams

MAGIC_PK = b"BUHEpk1\x00"
MAGIC_UP = b"BUHEup3\x00"  # 2: residues bit-packed (up_ct_bytes); 3: in parts (Plan.up_wire)
MAGIC_DOWN = b"BUHEdn2\x00"  # 2: in parts (Plan.down_wire)
RESIDUE_BYTES = 3  # centred residues, |x| < 2^21: signed 24-bit (the public key)
SEED_BYTES = 32
DIGEST_BYTES = 16
UP_HEAD_BYTES = len(MAGIC_UP) + 2 * DIGEST_BYTES + 8 + SEED_BYTES  # magic, digests, batch and count, seed
DOWN_HEAD_BYTES = len(MAGIC_DOWN) + 2 * DIGEST_BYTES + 12  # magic, digests, batch, ciphertexts, coefficients


@dataclass(frozen=True)
class Part:
    """One message of a layer's upload and the matching message of its download: tiles [t0, t1) of
    batch element b.  Message 0 of each direction also carries the header.  Ranges are positions
    within the element: upload ciphertexts [u0, u1) (``Plan.up_wire``), download ciphertexts [d0, d1)
    (``Plan.down_wire``), returned coefficients [r0, r1) (``Plan.returned_ranges``); the element's
    own come after ``up_base`` upload ciphertexts and ``ret_base`` returned coefficients of the
    layer's message."""

    b: int
    t0: int
    t1: int
    u0: int
    u1: int
    d0: int
    d1: int
    r0: int
    r1: int
    up_base: int
    ret_base: int
    up_bytes: int  # the upload message's size
    down_bytes: int  # the download message's size


def parts(plan: Plan, params: HEParams, batch: int) -> tuple[Part, ...]:
    """The messages of one layer each way (``Plan.part_tiles`` tiles a part), the same on both sides."""
    n = params.poly_degree
    ct_up = up_ct_bytes(params.primes, n)
    b1, b0 = (params.down_bits + 7) // 8, (params.down_c0_bits + 7) // 8
    lo, hi, _ = plan.returned_ranges
    out: list[Part] = []
    for b in range(batch):
        base_up, base_ret = b * plan.n_in_cts(1), b * plan.n_returned
        for p in range(plan.n_parts):
            t0, t1 = plan.part_range(p)
            u0, u1 = t0 * plan.n_ig, t1 * plan.n_ig
            d0, d1 = t0 * plan.n_og, t1 * plan.n_og
            r0, r1 = int(lo[d0]), int(hi[d1 - 1])
            first = not out
            up = (UP_HEAD_BYTES if first else 0) + (u1 - u0) * ct_up
            down = (DOWN_HEAD_BYTES if first else 0) + (d1 - d0) * n * b1 + (r1 - r0) * b0
            out.append(Part(b, t0, t1, u0, u1, d0, d1, r0, r1, base_up, base_ret, up, down))
    return tuple(out)


def spec_digest(spec_bytes: bytes) -> bytes:
    return hashlib.sha256(spec_bytes).digest()[:16]


def up_ct_bytes(primes: tuple[int, ...], n: int) -> int:
    """Bytes of one uploaded ciphertext: residue i in bitlen(p_i - 1) bits (native/he/wire.h
    packs them; 108 bits per coefficient for the l = 24 primes, not 5 x 24)."""
    return sum(n * (p - 1).bit_length() // 8 for p in primes)


def pack_uint(a: np.ndarray, nbytes: int) -> bytes:
    """Low ``nbytes`` bytes of each element (little-endian) of a uint64/float64-integer array."""
    u = np.ascontiguousarray(a).astype("<u8", copy=False).reshape(-1)
    return u.view(np.uint8).reshape(-1, 8)[:, :nbytes].tobytes()


def unpack_uint(buf: bytes | memoryview, count: int, nbytes: int) -> np.ndarray:
    raw = np.frombuffer(buf, dtype=np.uint8, count=count * nbytes).reshape(count, nbytes)
    full = np.zeros((count, 8), dtype=np.uint8)
    full[:, :nbytes] = raw
    return full.view("<u8").reshape(count)


def pack_int(a: np.ndarray, nbytes: int) -> bytes:
    """Signed integers (float64 or int) as nbytes-byte two's complement, little-endian."""
    return pack_uint(np.ascontiguousarray(a).astype(np.int64).view(np.uint64), nbytes)


def unpack_int(buf: bytes | memoryview, count: int, nbytes: int) -> np.ndarray:
    if nbytes == 3:  # the upload's residues: assemble directly, no 8-byte staging copy
        raw = np.frombuffer(buf, dtype=np.uint8, count=3 * count).reshape(count, 3)
        v = raw[:, 2].view(np.int8).astype(np.int32) << 16
        v |= raw[:, 1].astype(np.int32) << 8
        v |= raw[:, 0]
        return v
    u = unpack_uint(buf, count, nbytes).view(np.int64)
    shift = 64 - 8 * nbytes
    return (u << shift) >> shift


class Reader:
    """Sequential reader that turns every short read into a ValueError."""

    def __init__(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError("message must be bytes")
        self.mv = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.mv):
            raise ValueError("message too short")
        out = self.mv[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def expect(self, magic: bytes, what: str) -> None:
        if bytes(self.take(len(magic))) != magic:
            raise ValueError(f"not a {what} message")

    def check(self, digest: bytes, what: str) -> None:
        if bytes(self.take(16)) != digest:
            raise ValueError(f"{what} mismatch between client and server")

    def done(self) -> None:
        if self.pos != len(self.mv):
            raise ValueError("message has trailing bytes")
