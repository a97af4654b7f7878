"""Per-session, re-keyed hashes: every garbled-circuit session agrees on a fresh AES key from both
parties' CSPRNG nonces, and the row hashes (look-up tables, post-messages, setup) are re-keyed per
group of 2^16 tweaks under it (Guo-Katz-Wang-Yu, S&P 2020, multi-instance security)."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bunet import ring
from bunet.gc import Evaluator, Garbler, MaxTrunc
from bunet.gc.engine import aes_key_schedules, ffi, lib

ROW_KEY_SHIFT = 16  # tweaks per row key: 2^16 (native/gc/aes.h)
KEY_TAG = 0x4B4559  # "KEY", OR-ed into the domain of a row key's derivation


def _aes(key: bytes, blocks: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(blocks) + enc.finalize()


def _block(lo: int, hi: int) -> bytes:
    return lo.to_bytes(8, "little") + hi.to_bytes(8, "little")


def _sigma(x: bytes) -> bytes:
    """sigma(xl, xh) = (xh, xl ^ xh), the orthomorphism of the tweakable MMO hash."""
    lo, hi = int.from_bytes(x[:8], "little"), int.from_bytes(x[8:], "little")
    return _block(hi, lo ^ hi)


def _row_hash_reference(master: bytes, rows: list[bytes], tw0: int, step: int, dom: int) -> list[bytes]:
    """H(x, t) = AES_k(sigma(x) ^ (t, dom)) ^ sigma(x), k = AES_master(g, dom | KEY), g = t >> 16."""
    out = []
    for i, x in enumerate(rows):
        t = tw0 + i * step
        k = _aes(master, _block(t >> ROW_KEY_SHIFT, dom | KEY_TAG))
        s = _sigma(x)
        y = _aes(k, bytes(a ^ b for a, b in zip(s, _block(t, dom), strict=True)))
        out.append(bytes(a ^ b for a, b in zip(y, s, strict=True)))
    return out


@pytest.mark.parametrize("tw0,step", [(65500, 1), (65000, 2), (2**40 - 5, 7), (3, 256), (1023, 1500)])
def test_row_hash_matches_reference_across_key_groups(tw0: int, step: int) -> None:
    rng = np.random.default_rng(tw0 + step)
    master = rng.bytes(16)
    cnt = 300
    rows = rng.bytes(16 * cnt)
    out = ffi.new("uint8_t[]", 16 * cnt)
    dom = 0x4D55580000000000
    lib.bn_hash_batch(aes_key_schedules([master]), rows, out, cnt, tw0, step, dom)
    want = _row_hash_reference(master, [rows[16 * i : 16 * i + 16] for i in range(cnt)], tw0, step, dom)
    assert bytes(ffi.buffer(out)) == b"".join(want)
    assert len({(tw0 + i * step) >> ROW_KEY_SHIFT for i in range(cnt)}) > 1  # the run crosses key groups


def _session() -> tuple[Evaluator, Garbler]:
    ev, g = Evaluator(), Garbler()
    ev.finish_setup(g.finish_hello(ev.finish_hello(g.hello(ev.hello()))))
    return ev, g


def _key(party: Evaluator | Garbler) -> bytes:
    return bytes(ffi.buffer(party._rk))


@pytest.mark.parametrize("relu", [True, False])  # sign mode: look-up tables and the post-message
def test_two_sessions_use_fresh_keys_and_stay_exact(relu: bool) -> None:
    sessions = [_session(), _session()]
    keys = [_key(ev) for ev, _ in sessions]
    assert keys[0] != keys[1]
    assert all(_key(ev) == _key(g) for ev, g in sessions)  # both parties agreed on it
    op = MaxTrunc(ring_bits=24, in_bits=24, shift=8, relu=relu, k=1)
    assert op.lut_plan is not None
    x = ring.random((6000, 1), 24)
    want = ring.nonlinear(x, in_bits=24, shift=8, relu=relu, ring_bits=24)
    for ev, g in sessions:
        yc, ys = ring.share(x, 24)
        for j in range(op.link_passes):  # sign mode: the carry's link passes first
            g.open_link(op, ev.link_request(op, yc, g.link_pre(op, ys, j), j))
        resp, out_s = g.respond(op, ev.request(op, yc, g.pre(op, ys)), ys)
        out_c = ev.finish(op, resp)
        for post in ev.take_posts():
            out_s = g.post(op, post, out_s)
        np.testing.assert_array_equal(ring.add(out_c, out_s, 24), want)
        assert 2 * 128 * g._rblk > 1 << ROW_KEY_SHIFT  # the look-up tweaks spanned several row keys
