"""Silent OT (native/silent_ot.c, bunet.gc.silent): the COT correlation on every output, failures with a
wrong Delta or seed, the vetted parameter table, and the engine's use of it in both directions."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bunet import ring
from bunet.gc import Evaluator, Garbler, MaxTrunc, silent
from bunet.gc.engine import _cot_len, aes_key_schedules, ffi, lib

TABLE = silent.vetted()
TEST_SETUP, TEST_MAIN = TABLE["test_16_8"], TABLE["test_32_8"]


def _key(seed: int) -> object:
    """A half-tree GGM key schedule."""
    return aes_key_schedules([np.random.default_rng(seed).bytes(16)])


def _delta() -> bytes:
    d = bytearray(os.urandom(16))
    d[0] |= 1
    return bytes(d)


def _streams(
    setup: silent.LpnParams,
    main: silent.LpnParams,
    allow_test: bool,
    seed: int = 1,
    recv_delta: bytes | None = None,
    recv_seed: int | None = None,
):
    """A sender and a receiver over the same in-memory base COTs (receiver side optionally with a
    different Delta in its base, or different GGM keys)."""
    sched = silent.Schedule(setup, main, allow_test)
    delta = _delta()
    m = setup.base
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 2, m, dtype=np.uint8)
    q = rng.integers(0, 256, (m, 16), dtype=np.uint8)
    t = q ^ (c[:, None] * np.frombuffer(recv_delta or delta, dtype=np.uint8))
    gk = _key(seed)
    gk_r = _key(recv_seed) if recv_seed is not None else gk
    dptr = ffi.new("uint8_t[]", delta)
    return delta, silent.Sender(sched, dptr, q, gk), silent.Receiver(sched, c, t, gk_r), dptr


def _pull(snd, rcv, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = rcv.choices(lo, hi)
    msg, q = snd.take(lo, hi)
    assert len(msg) == snd.sched.ext_len(lo, hi)
    rcv.deposit(lo, hi, memoryview(msg))
    return c, q, rcv.rows(lo, hi)


def _check(delta: bytes, c: np.ndarray, q: np.ndarray, t: np.ndarray) -> bool:
    return bool(np.array_equal(q ^ (c[:, None] * np.frombuffer(delta, dtype=np.uint8)), t))


@pytest.mark.parametrize("cuts", [[0, 128, 3000, 3001, 9000, 20000], [0, 1, 2, 12000, 12001, 40000]])
def test_correlation_on_every_output(cuts):
    """q ^ t = c Delta on every row, over ranges that cross iterations (setup, then several main ones)."""
    delta, snd, rcv, _ = _streams(TEST_SETUP, TEST_MAIN, True)
    cs = []
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        c, q, t = _pull(snd, rcv, lo, hi)
        assert _check(delta, c, q, t)
        assert len({bytes(r) for r in q}) == hi - lo  # no repeated rows
        cs.append(c)
    allc = np.concatenate(cs)
    assert 0.45 < allc.mean() < 0.55  # the choice bits look random
    assert len(snd._q) <= 3 and len(rcv._t) <= 3  # consumed iterations are freed


def test_derandomised_take_over_iteration_edges():
    """The sender's take with the receiver's corrections d = x ^ c gives q ^ d Delta in the same pass, so
    t = q' ^ x Delta for the receiver's real choice x, over ranges whose ends and iteration edges sit at
    odd bit offsets of d."""
    delta, snd, rcv, _ = _streams(TEST_SETUP, TEST_MAIN, True)
    rng = np.random.default_rng(7)
    edges = [0, 3, 1029, 1030, snd.sched.usable(0) + 5, 3 * snd.sched.usable(1) + 17]
    for lo, hi in zip(edges, edges[1:], strict=False):
        c = rcv.choices(lo, hi)
        x = rng.integers(0, 2, hi - lo, dtype=np.uint8)
        d = np.packbits(x ^ c, bitorder="little")
        msg, q = snd.take(lo, hi, d)
        rcv.deposit(lo, hi, memoryview(msg))
        assert _check(delta, x, q, rcv.rows(lo, hi))


def test_regular_noise_positions():
    """Before the LPN step the receiver's choice vector is one 1 per block of 2^h (regular noise), at the
    index its base choice bits give: check via bn_sot_choice with an all-zero LPN secret."""
    p = TEST_SETUP
    base = np.zeros(p.base, dtype=np.uint8)
    rng = np.random.default_rng(3)
    base[p.k :] = rng.integers(0, 2, p.t * p.h, dtype=np.uint8)
    out = np.empty(p.n, dtype=np.uint8)
    assert (
        lib.bn_sot_choice(
            p.t, p.logk, p.h, 1, ffi.from_buffer("uint8_t[]", base), ffi.from_buffer("uint8_t[]", out), ffi.NULL
        )
        == 0
    )
    blocks = out.reshape(p.t, 1 << p.h)
    assert (blocks.sum(axis=1) == 1).all()
    bits = 1 - base[p.k :].reshape(p.t, p.h)
    alpha = (bits << np.arange(p.h - 1, -1, -1)).sum(axis=1)
    np.testing.assert_array_equal(blocks.argmax(axis=1), alpha)


def test_wrong_delta_or_seed_breaks_it():
    lo, hi = 0, 5000
    delta, snd, rcv, _ = _streams(TEST_SETUP, TEST_MAIN, True, recv_delta=_delta())
    c, q, t = _pull(snd, rcv, lo, hi)
    assert not _check(delta, c, q, t)
    delta, snd, rcv, _ = _streams(TEST_SETUP, TEST_MAIN, True, recv_seed=99)  # another GGM key
    c, q, t = _pull(snd, rcv, lo, hi)
    assert not _check(delta, c, q, t)
    delta, snd, rcv, _ = _streams(TEST_SETUP, TEST_MAIN, True)  # a corrupted iteration message
    c = rcv.choices(lo, hi)
    msg, q = snd.take(lo, hi)
    bad = bytearray(msg)
    bad[40] ^= 1
    rcv.deposit(lo, hi, memoryview(bytes(bad)))
    t = rcv.rows(lo, hi)
    assert not _check(delta, c, q, t)
    # and a wrong Delta at derandomisation: only the rows with c = 1 agree with the other Delta
    delta2 = _delta()
    assert not np.array_equal(q ^ (c[:, None] * np.frombuffer(delta2, dtype=np.uint8)), t)


def test_parameter_table_checked():
    names = {k for k, v in TABLE.items() if not v.test_only}
    assert names == {"ferret_b10", "ferret_b11", "ferret_b12", "ferret_b13"}
    b13 = TABLE["ferret_b13"]
    assert (b13.t, b13.k, b13.n) == (1900, 1 << 19, 15_564_800)  # emp-ot tuning.h
    assert TABLE["ferret_b10"] == silent.SETUP == silent.MAIN
    with pytest.raises(ValueError, match="not a vetted"):
        silent.LpnParams("made_up", 1280, 17, 11).check()
    with pytest.raises(ValueError, match="not a vetted"):
        TEST_SETUP.check()  # test-only sets only when asked for
    with pytest.raises(ValueError, match="not a vetted"):
        silent.Schedule(TEST_SETUP, TEST_MAIN)
    with pytest.raises(ValueError, match="more than the next"):
        silent.Schedule(TEST_SETUP, TABLE["ferret_b10"], allow_test=True)  # setup too small for main's base
    # the C side refuses them too, whatever the Python side says
    m = TEST_MAIN
    dummy = np.zeros(m.n * 16, dtype=np.uint8)
    rc = lib.bn_sot_send(
        m.t,
        m.logk,
        m.h,
        0,
        _key(0),
        ffi.new("uint8_t[]", 16),
        ffi.from_buffer("uint8_t[]", dummy),
        ffi.from_buffer("uint8_t[]", bytearray(m.msg_len)),
        ffi.from_buffer("uint8_t[]", dummy),
        ffi.NULL,
    )
    assert rc == lib.BN_EPARAMS
    assert lib.bn_sot_check(1170, 17, 11, 0) == 0 and lib.bn_sot_check(1171, 17, 11, 0) != 0


def test_lpn_step_equals_a_numpy_reference_at_the_real_parameters():
    """The receiver's choice bits of a ferret_b10 iteration are e ^ A u (e: one 1 per tree at the punctured
    leaf, A: the public code's rows from bn_sot_positions, u: the LPN secret's base choice bits), computed
    here in NumPy over all 16 bits of every position. The correlation tests tie the 16-byte rows of both
    sides to these bits, so together they pin the native LPN step to the specified code."""
    p = silent.MAIN
    rng = np.random.default_rng(8)
    base = rng.integers(0, 2, p.base, dtype=np.uint8)
    out = np.empty(p.n, dtype=np.uint8)
    pos = silent.positions(p.logk, p.n)
    assert int(pos.max()) >= 1 << 15  # the top bits of the fields are exercised
    b = lambda a: ffi.from_buffer("uint8_t[]", a)  # noqa: E731
    assert lib.bn_sot_choice(p.t, p.logk, p.h, 0, b(base), b(out), ffi.cast("const uint16_t *", pos.ctypes.data)) == 0
    alpha = ((1 - base[p.k :].reshape(p.t, p.h)).astype(np.int64) << np.arange(p.h - 1, -1, -1)).sum(axis=1)
    e = np.zeros((p.t, 1 << p.h), dtype=np.uint8)
    e[np.arange(p.t), alpha] = 1
    want = e.reshape(-1) ^ np.bitwise_xor.reduce(base[: p.k][pos.reshape(p.n, silent.LPN_D)], axis=1)
    np.testing.assert_array_equal(out, want)


def test_real_parameters_cross_into_main_iteration():
    """ferret_b10 from 74k base COTs, then the main set from its reserved head: every row checked."""
    delta, snd, rcv, _ = _streams(silent.SETUP, silent.MAIN, False)
    u0 = snd.sched.usable(0)
    for lo, hi in ((0, 300_000), (300_000, u0 + 5_000)):
        c, q, t = _pull(snd, rcv, lo, hi)
        assert _check(delta, c, q, t)
    assert snd.sched.firsts(300_000, u0 + 5_000) == range(1, 2)


def test_engine_silent_messages_and_bytes():
    """Through the engine: one bit per OT each way (plus iteration messages on the first use); a ReLU
    batch large enough to cross from the setup iteration into a main one gives the reference."""
    ev, g = Evaluator(), Garbler()
    ev.finish_setup(g.finish_hello(ev.finish_hello(g.hello(ev.hello()))))
    op = MaxTrunc(ring_bits=24, shift=8, chain=False)  # the chained op: tests/test_gc.py (both backends)
    sched = silent.Schedule(silent.SETUP, silent.MAIN)
    n = 40_000  # 24 reverse OTs each: 960k rows, past the first iteration's usable rows
    x = ring.random((n, 1), 24)
    yc, ys = ring.share(x, 24)
    pre = g.pre(op, ys)
    assert len(pre) == op.pre_size(n, 0)  # 1 bit per reverse OT
    req = ev.request(op, yc, pre)
    want_req, want_resp = op.message_sizes(n, 0)
    rev_ext = sched.ext_len(0, 24 * n)
    assert rev_ext == silent.SETUP.msg_len + silent.MAIN.msg_len
    assert len(req) == want_req + rev_ext
    resp, out_s = g.respond(op, req, ys)
    assert len(resp) == want_resp + sched.ext_len(0, (n * op.circ_bits + 127) // 128 * 128)
    out_c = ev.finish(op, resp)
    for post in ev.take_posts():
        out_s = g.post(op, post, out_s)
    np.testing.assert_array_equal(
        ring.add(out_c, out_s, 24), ring.nonlinear(x, in_bits=24, shift=8, relu=True, ring_bits=24)
    )
    assert _cot_len(0, 1024) == 128 and _cot_len(4, 1024) == 4096


def test_backend_mismatch_is_a_clear_error():
    for ev_ot, g_ot in (("silent", "softspoken"), ("softspoken", "silent")):
        with pytest.raises(ValueError, match="OT backend mismatch"):
            Garbler(ot=g_ot).hello(Evaluator(ot=ev_ot).hello())
    with pytest.raises(ValueError, match="ot must be one of"):
        Evaluator(ot="ferret")
    with pytest.raises(ValueError, match="ot must be one of"):
        Garbler(ot="iknp")


def test_shared_positions_equal_the_ones_made_on_the_fly():
    """Every iteration reads the LPN positions made once per parameter set (bn_sot_positions); without
    them each call makes its own: the three calls give the same outputs either way."""
    p = TEST_MAIN
    pos = silent.positions(p.logk, p.n)
    assert pos is not None and pos.shape == (p.n * silent.LPN_D,) and int(pos.max()) < p.k
    assert silent.positions(17, silent.vetted()["ferret_b11"].n) is None  # k > 2^16: made on the fly
    assert silent.positions(p.logk, p.n) is pos  # made once
    rng = np.random.default_rng(4)
    c = rng.integers(0, 2, p.base, dtype=np.uint8)
    q = rng.integers(0, 256, (p.base, 16), dtype=np.uint8)
    delta = bytearray(_delta())
    t = q ^ (c[:, None] * np.frombuffer(bytes(delta), dtype=np.uint8))
    gk = _key(0)
    b = lambda a: ffi.from_buffer("uint8_t[]", a)  # noqa: E731
    cached = ffi.cast("const uint16_t *", pos.ctypes.data)
    choices = []
    for send_pos, recv_pos in ((ffi.NULL, cached), (cached, ffi.NULL)):  # each side with the other's positions
        oq, oc, ot = np.empty((p.n, 16), np.uint8), np.empty(p.n, np.uint8), np.empty((p.n, 16), np.uint8)
        msg = bytearray(p.msg_len)
        rc = lib.bn_sot_send(p.t, p.logk, p.h, 1, gk, ffi.from_buffer(delta), b(q), b(msg), b(oq), send_pos)
        assert rc == 0
        assert lib.bn_sot_choice(p.t, p.logk, p.h, 1, b(c), b(oc), recv_pos) == 0
        assert lib.bn_sot_recv(p.t, p.logk, p.h, 1, gk, b(c), b(t), b(msg), b(ot), recv_pos) == 0
        assert _check(bytes(delta), oc, oq, ot)  # t = q ^ c Delta on every row
        choices.append(oc)
    np.testing.assert_array_equal(choices[0], choices[1])
    big = silent.vetted()["ferret_b11"]
    assert lib.bn_sot_choice(big.t, big.logk, big.h, 0, b(c), b(oc), ffi.cast("const uint16_t *", pos.ctypes.data)) != 0


def test_vaes_and_portable_paths_agree():
    """The LPN code and the GGM expansion have a 512-bit VAES path, a 256-bit one and a 128-bit one: the
    same outputs."""
    import subprocess
    import sys

    code = (
        "import numpy as np, sys; from bunet.gc import silent; from bunet.gc.engine import ffi, lib, "
        "aes_key_schedules\n"
        "p = silent.vetted()['test_32_8']; c = np.random.default_rng(1).integers(0, 2, p.base, dtype=np.uint8)\n"
        "oc = np.empty(p.n, np.uint8); b = lambda a: ffi.from_buffer('uint8_t[]', a)\n"
        "lib.bn_sot_choice(p.t, p.logk, p.h, 1, b(c), b(oc), ffi.NULL)\n"
        "gk = aes_key_schedules([bytes(range(16))])\n"
        "t = np.random.default_rng(2).integers(0, 256, (p.base, 16), dtype=np.uint8); out = np.empty((p.n, 16), "
        "np.uint8)\n"
        "msg = bytes(range(256)) * (p.msg_len // 256) + bytes(p.msg_len % 256)\n"
        "lib.bn_sot_recv(p.t, p.logk, p.h, 1, gk, b(c), b(t), msg, b(out), ffi.NULL)\n"
        "sys.stdout.write(oc.tobytes().hex() + out.tobytes().hex()[:20000])"
    )
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    paths = ({}, {"BUNET_NO_AVX512": "1"}, {"BUNET_NO_VAES": "1"}, {"BUNET_NO_VAES": "1", "BUNET_NO_AVX512": "1"})
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True, check=True, timeout=60
        ).stdout
        for extra in paths
    ]
    assert runs[0] and runs[0] == runs[1] == runs[2] == runs[3]


def test_half_tree_leaves():
    """With an all-zero LPN secret the outputs are the GGM leaves: each of the sender's trees sums to
    Delta (level 1 is (s, s ^ Delta) and children sum to their parent), and the receiver's leaves equal
    the sender's except its punctured one, v_alpha ^ Delta; the message is one block per level."""
    p = TEST_SETUP
    rng = np.random.default_rng(11)
    delta = _delta()
    dv = np.frombuffer(delta, dtype=np.uint8)
    c = np.zeros(p.base, dtype=np.uint8)
    c[p.k :] = rng.integers(0, 2, p.t * p.h, dtype=np.uint8)
    q = rng.integers(0, 256, (p.base, 16), dtype=np.uint8)
    q[: p.k] = 0
    t = q ^ (c[:, None] * dv)
    gk = _key(3)
    b = lambda a: ffi.from_buffer("uint8_t[]", a)  # noqa: E731
    msg = bytearray(p.msg_len)
    assert p.msg_len == 16 * p.t * p.h
    v, w = np.empty((p.n, 16), np.uint8), np.empty((p.n, 16), np.uint8)
    assert lib.bn_sot_send(p.t, p.logk, p.h, 1, gk, ffi.from_buffer(delta), b(q), b(msg), b(v), ffi.NULL) == 0
    assert lib.bn_sot_recv(p.t, p.logk, p.h, 1, gk, b(c), b(t), b(msg), b(w), ffi.NULL) == 0
    trees_v, trees_w = v.reshape(p.t, 1 << p.h, 16), w.reshape(p.t, 1 << p.h, 16)
    np.testing.assert_array_equal(np.bitwise_xor.reduce(trees_v, axis=1), np.tile(dv, (p.t, 1)))
    bits = 1 - c[p.k :].reshape(p.t, p.h)
    alpha = (bits.astype(np.int64) << np.arange(p.h - 1, -1, -1)).sum(axis=1)
    diff = trees_v ^ trees_w
    for tau in range(p.t):
        assert (diff[tau].any(axis=1).nonzero()[0] == [alpha[tau]]).all()
        np.testing.assert_array_equal(diff[tau, alpha[tau]], dv)
    assert len({bytes(r) for r in v}) == p.n  # no repeated leaves
