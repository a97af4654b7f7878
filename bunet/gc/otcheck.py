"""The consistency check of the OTs where the client is the receiver (its input labels).

A semi-honest OT extension trusts the receiver to use one choice vector in every column of its
correction message. A receiver who does not can learn bits of the sender's Δ (the garbler's free-XOR
offset), and with it both labels of a wire. SoftSpoken (Roy, CRYPTO 2022) closes this with the KOS
check (Keller, Orsini, Scholl, CRYPTO 2015): for random challenges χ_i in GF(2^128) the receiver
proves x~ = Σ x_i χ_i and t~ = Σ χ_i t_i, and the sender checks Σ χ_i q_i = t~ ⊕ x~ Δ, which an
inconsistent correction passes only by guessing the Δ bits it touches. The challenges come from a
hash of the session id and the correction (Fiat-Shamir), so the check costs no extra round trip; the
hash is BLAKE3 (O'Connor, Aumasson, Neves, Wilcox-O'Hearn 2020) in its key-derivation mode with a
context of its own: it reads every byte of the correction, several GB a 512x512 slice, and runs
about six times as fast as BLAKE2b there.
x~ reveals a linear combination of the choice bits, so the rows end with ``PAD_ROWS`` rows of
random choices (>= 128 + 40: x~ is then uniform up to 2^-40).

The arithmetic is ``bn_ot_check_prove`` / ``bn_ot_check_verify`` in native/gc/ot_check.c. The engine
runs it on every batch of forward SoftSpoken OTs (the set-up's, silent OT's base COTs, SoftSpoken
requests: ``Evaluator._checked_recv`` / ``Garbler._checked_send``); the server checks the set-up's
before it answers, and a request's in the garbling run itself (``bn_gc_garble``'s ``chk_*`` fields:
each chunk's rows are added to the sums while they are in the cache), whose output it sends only if
the check holds.
"""

from __future__ import annotations

import blake3
import numpy as np

from ._native import ffi, lib

PAD_ROWS = 256  # random-choice rows appended to a checked batch (a multiple of 128, >= 128 + 40)
PROOF_BYTES = 32
CONTEXT = "bunet 2026-12 OT consistency check challenge v2"  # BLAKE3 domain separation


def challenge(sid: bytes, correction: bytes | np.ndarray) -> bytes:
    """The AES key of the challenges χ_i: bound to the session and the receiver's correction."""
    h = blake3.blake3(derive_key_context=CONTEXT)
    h.update(sid)
    h.update(memoryview(correction).cast("B"))
    return h.digest(16)


def _rows(rows: np.ndarray) -> tuple[object, int]:
    if rows.dtype != np.uint8 or rows.size % 16:
        raise ValueError("OT rows must be uint8, 16 bytes a row")
    return ffi.from_buffer("uint8_t[]", np.ascontiguousarray(rows)), rows.size // 16


def prove(t_rows: np.ndarray, choice: np.ndarray, seed: bytes) -> bytes:
    """The receiver's proof (x~, t~) over its rows and packed choice bits (little-endian bit order)."""
    buf, m = _rows(t_rows)
    if choice.dtype != np.uint8 or choice.size * 8 < m:
        raise ValueError("choice must hold one bit per row")
    proof = ffi.new("uint8_t[]", PROOF_BYTES)
    lib.bn_ot_check_prove(buf, ffi.from_buffer("uint8_t[]", np.ascontiguousarray(choice)), m, seed, proof)
    return bytes(ffi.buffer(proof))


def verify(q_rows: np.ndarray, delta: bytes | object, seed: bytes, proof: bytes) -> bool:
    """The sender's check: True iff the receiver's correction was consistent (or it guessed Δ)."""
    if len(proof) != PROOF_BYTES:
        raise ValueError("malformed OT consistency proof")
    if len(delta) < 16:  # (a C buffer made from 16 bytes has a seventeenth, NUL)
        raise ValueError("delta must have 16 bytes")
    buf, m = _rows(q_rows)
    return bool(lib.bn_ot_check_verify(buf, delta, m, seed, proof))
