"""Garbled-circuit engine: circuits against the fixed-point reference, OT, messages, processes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bunet import ring
from bunet.gc import OT_BACKENDS, Argmax, Evaluator, Garbler, MaxTrunc, relu_pool, relu_pool_ops
from bunet.gc.engine import _lut_bytes, aes_key_schedules, ffi, lib
from bunet.gc.native import circuit_fields, run_circuit
from bunet.gc.ot import BaseOTReceiver, BaseOTSender, ggm_choices, ggm_client, ggm_garbler, local_trees
from bunet.native_errors import EngineArgumentError

HSET = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _handshake(ev: Evaluator, g: Garbler) -> tuple[Evaluator, Garbler]:
    ev.finish_setup(g.finish_hello(ev.finish_hello(g.hello(ev.hello()))))
    return ev, g


def _session(ot: str = "silent") -> tuple[Evaluator, Garbler]:
    return _handshake(Evaluator(ot=ot), Garbler(ot=ot))


def _finish_concurrently(ev: Evaluator, op, resps: list[bytes], order: list[int]) -> dict[int, np.ndarray]:
    """ev.finish on every response at once, started in ``order`` (with silent OT a response that opens
    an OT iteration must be in progress or done before the others of that iteration complete)."""
    out: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        out[i] = ev.finish(op, resps[i])

    ths = [threading.Thread(target=work, args=(i,)) for i in order]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    assert sorted(out) == sorted(order)
    return out


def _links(ev: Evaluator, g: Garbler, op, yc: np.ndarray, ys: np.ndarray) -> None:
    """The link passes of a chained op (none for the others)."""
    for j in range(op.link_passes):
        g.open_link(op, ev.link_request(op, yc, g.link_pre(op, ys, j), j))


def _req(ev: Evaluator, g: Garbler, op, yc: np.ndarray, ys: np.ndarray) -> bytes:
    """The client's request, after the link passes and the server's pre-message for ops with a carry look-up."""
    _links(ev, g, op, yc, ys)
    return ev.request(op, yc, g.pre(op, ys) if op.lut_bits else None)


def _done(ev: Evaluator, g: Garbler, op, resp: bytes, out_s):
    """Finish a response; in sign mode the client's post-message completes the server's shares."""
    out_c = ev.finish(op, resp)
    for post in ev.take_posts():
        out_s = g.post(op, post, out_s)
    return out_c, out_s


@pytest.fixture(scope="module", params=OT_BACKENDS)
def sess(request) -> tuple[Evaluator, Garbler]:
    return _session(request.param)


def _run(sess, op, x: np.ndarray):
    ev, g = sess
    yc, ys = ring.share(x, op.ring_bits)
    resp, out_s = g.respond(op, _req(ev, g, op, yc, ys), ys)
    return _done(ev, g, op, resp, out_s)


def _check_max_trunc(sess, op: MaxTrunc, x: np.ndarray) -> None:
    out_c, out_s = _run(sess, op, x)
    l = op.ring_bits
    assert out_c.dtype == np.uint64 and out_s.dtype == np.uint64
    assert out_c.shape == out_s.shape == (x.shape[0],)
    assert not (out_s >> np.uint64(l)).any() if l < 64 else True
    want = ring.nonlinear(x, in_bits=op.in_bits, shift=op.shift, relu=op.relu, ring_bits=l)
    np.testing.assert_array_equal(ring.add(out_c, out_s, l), want)


def _extremes(l: int, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    top = (1 << l) - 1
    vals = np.array([0, (1 << (l - 1)) - 1, 1 << (l - 1), top, 1, top - 1], dtype=np.uint64)
    return vals[rng.integers(0, len(vals), size=(n, k))]


CONFIGS = [(24, 24, 8), (32, 32, 12), (64, 64, 12), (64, 40, 20), (24, 16, 15), (8, 8, 0), (1, 1, 0), (17, 9, 4)]


@pytest.mark.parametrize("l,b,s", CONFIGS)
@pytest.mark.parametrize("relu,k", [(True, 1), (False, 1), (True, 4), (False, 4)])
def test_max_trunc_random_and_extremes(sess, l, b, s, relu, k):
    rng = np.random.default_rng(l * 1000 + b * 10 + s + k)
    op = MaxTrunc(ring_bits=l, in_bits=b, shift=s, relu=relu, k=k)
    _check_max_trunc(sess, op, ring.random((301, k), l))  # odd n, > one engine chunk
    _check_max_trunc(sess, op, _extremes(l, 67, k, rng))
    _check_max_trunc(sess, op, np.zeros((5, k), dtype=np.uint64))  # all zero
    neg = (
        ring.from_signed(-rng.integers(1, 1 << min(b - 1, 62), size=(9, k), endpoint=True), l)
        if b > 1
        else np.full((9, k), 1, dtype=np.uint64)
    )
    _check_max_trunc(sess, op, neg)  # all negative
    _check_max_trunc(sess, op, np.zeros((0, k), dtype=np.uint64))  # n = 0
    _check_max_trunc(sess, op, ring.random((1, k), l))  # n = 1


def test_extreme_shares(sess):
    """The shares themselves at the ring's extremes (not only their sum)."""
    l = 24
    op = MaxTrunc(ring_bits=l, in_bits=l, shift=8, relu=True)
    top = (1 << l) - 1
    pairs = [(0, 0), (top, 1), (top, top), (1 << 23, 1 << 23), ((1 << 23) - 1, 0), (0, top), (top, 0)]
    yc = np.array([[a] for a, _ in pairs], dtype=np.uint64)
    ys = np.array([[b] for _, b in pairs], dtype=np.uint64)
    ev, g = sess
    resp, out_s = g.respond(op, _req(ev, g, op, yc, ys), ys)
    out_c, out_s = _done(ev, g, op, resp, out_s)
    want = ring.nonlinear(ring.add(yc, ys, l), in_bits=l, shift=8, relu=True, ring_bits=l)
    np.testing.assert_array_equal(ring.add(out_c, out_s, l), want)


@HSET
@given(
    data=st.data(),
    l=st.integers(1, 64),
    relu=st.booleans(),
    k=st.sampled_from([1, 2, 3, 4]),
    n=st.integers(0, 40),
)
def test_max_trunc_hypothesis(sess, data, l, relu, k, n):
    b = data.draw(st.integers(1, l))
    s = data.draw(st.integers(0, b - 1))
    raw = data.draw(st.lists(st.integers(0, (1 << l) - 1), min_size=n * k, max_size=n * k))
    x = np.array(raw, dtype=np.uint64).reshape(n, k)
    _check_max_trunc(sess, MaxTrunc(ring_bits=l, in_bits=b, shift=s, relu=relu, k=k), x)


def _relu_pool_both(sess, x: np.ndarray, l: int, b: int, s: int) -> np.ndarray:
    """``gc.relu_pool`` with both parties in this process: their shares stacked along the first axis
    (the pool's local arithmetic is per row), each round run on both halves; returns the reconstructed
    (n, 5) result."""
    ev, g = sess
    yc, ys = ring.share(x, l)
    n = x.shape[0]
    rounds = []

    def run(op, rnd, rows):
        rounds.append((rnd, op.in_bits, op.shift))
        m = rows.shape[0] // 2
        resp, out_s = g.respond(op, _req(ev, g, op, rows[:m], rows[m:]), rows[m:])
        out_c, out_s = _done(ev, g, op, resp, out_s)
        return np.concatenate([out_c, out_s])

    out = relu_pool(run, np.concatenate([yc, ys]), ring_bits=l, in_bits=b, shift=s)
    assert [r[0] for r in rounds] == ["relu", "max0", "max1"]
    assert rounds[1][1:] == rounds[2][1:] == (b - s, 0)  # differences of the ReLU outputs: m bits, no shift
    assert out.shape == (2 * n, 5) and out.dtype == np.uint64
    return ring.add(out[:n], out[n:], l)


def _check_relu_pool(sess, x: np.ndarray, l: int, b: int, s: int) -> None:
    got = _relu_pool_both(sess, x, l, b, s)
    el, pooled = ring.relu_pool(x, in_bits=b, shift=s, ring_bits=l)
    # what the unfused steps compute: ReLU per value, then the max-pool over the ReLU outputs
    np.testing.assert_array_equal(got[:, :4], ring.nonlinear(x[..., None], in_bits=b, shift=s, relu=True, ring_bits=l))
    np.testing.assert_array_equal(got[:, :4], el)
    np.testing.assert_array_equal(got[:, 4], pooled)
    np.testing.assert_array_equal(got[:, 4], ring.nonlinear(x, in_bits=b, shift=s, relu=True, ring_bits=l))


@pytest.mark.parametrize("l,b,s", CONFIGS)
def test_relu_pool_random_and_extremes(sess, l, b, s):
    rng = np.random.default_rng(l * 1000 + b * 10 + s)
    _check_relu_pool(sess, ring.random((301, 4), l), l, b, s)
    _check_relu_pool(sess, _extremes(l, 67, 4, rng), l, b, s)
    _check_relu_pool(sess, np.zeros((5, 4), dtype=np.uint64), l, b, s)
    neg = (
        ring.from_signed(-rng.integers(1, 1 << min(b - 1, 62), size=(9, 4), endpoint=True), l)
        if b > 1
        else np.full((9, 4), 1, dtype=np.uint64)
    )
    _check_relu_pool(sess, neg, l, b, s)
    _check_relu_pool(sess, np.zeros((0, 4), dtype=np.uint64), l, b, s)
    _check_relu_pool(sess, ring.random((1, 4), l), l, b, s)
    # the largest ReLU outputs, 2^(m-1) - 1, against 0 and each other: the extreme differences
    m = b - s
    top = ring.from_signed(np.array([[(1 << (b - 1)) - 1, 0, (1 << (b - 1)) - 1, -(1 << (b - 1))]]), l)
    if m >= 2:
        _check_relu_pool(sess, np.concatenate([top, top[:, ::-1]]), l, b, s)


@HSET
@given(data=st.data(), l=st.integers(1, 64), n=st.integers(0, 40))
def test_relu_pool_hypothesis(sess, data, l, n):
    b = data.draw(st.integers(1, l))
    s = data.draw(st.integers(0, b - 1))
    raw = data.draw(st.lists(st.integers(0, (1 << l) - 1), min_size=n * 4, max_size=n * 4))
    _check_relu_pool(sess, np.array(raw, dtype=np.uint64).reshape(n, 4), l, b, s)


def _per_inst(op, n: int = 1 << 14, ot_k: int = 4) -> float:
    """Bytes per instance of an op, link passes included (SoftSpoken sizes)."""
    req, resp = op.message_sizes(n, ot_k)
    links = sum(op.link_pre_size(n, j, ot_k) + op.link_req_size(n, j) for j in range(op.link_passes))
    return (req + resp + op.pre_size(n, ot_k) + op.post_size(n) + links) / n


def test_relu_pool_costs():
    """Four sign-mode ReLUs and three sign-mode comparisons of their 16-bit outputs: 1,586 bytes per
    2x2 window at (24, 24, 8) with ANDs chaining the carries (SoftSpoken, k = 4), where the fused
    carry-mode circuit (one per window) took 4,425.7; chained through links, no AND at all."""
    relu, cmp = relu_pool_ops(24, 24, 8, chain=False)
    assert (cmp.in_bits, cmp.shift, cmp.lut_plan.chunks) == (16, 0, (5, 5, 5))
    assert cmp.lut_plan.tables == ((0, 5, 1), (5, 5, 2), (10, 5, 2))  # chunk 1 has no carry in: no propagate
    assert (cmp.circuit.and_gates, cmp.circuit.andg_gates, cmp.lut_bits) == (2, 0, 16)
    window = 4 * _per_inst(relu) + 3 * _per_inst(cmp)
    assert 1585 < window < 1587, window
    relu, cmp = relu_pool_ops(24, 24, 8)
    assert (relu.circuit.and_gates, cmp.circuit.and_gates, relu.link_passes, cmp.link_passes) == (0, 0, 4, 2)
    assert 4 * _per_inst(relu) + 3 * _per_inst(cmp) < window - 200


def test_multi_output_index_checked():
    """An arithmetic gate whose output index is out of range, or a B2A2 run and its NOUT that target
    different outputs, are refused by the engine (BN_EINVAL) before anything is written."""
    from bunet.gc import circuits as gcc

    op = MaxTrunc(ring_bits=8, in_bits=8, shift=2)  # sign mode: 2 outputs (the share, the revealed bit)
    circ = op.circuit
    assert circ.n_outputs == 2
    n = 3
    bad_run = circ.gates.copy()
    nout_rows = np.flatnonzero(bad_run[:, 0] == gcc.NOUT)
    bad_run[nout_rows[0], 8] = 1  # the run's B2A2s go to output 0
    m = (n * op.circ_bits + 127) // 128 * 128
    for gates, nout in ((circ.gates, 1), (bad_run, 2)):
        ct = np.zeros(n * circ.ct_bytes, dtype=np.uint8)
        ar = np.zeros(circ.arith_len(n), dtype=np.uint8)
        out = np.zeros(n * nout, dtype=np.uint64)
        labels = np.zeros(16 * m, dtype=np.uint8)
        rk = aes_key_schedules([bytes(16)])
        with pytest.raises(EngineArgumentError, match="garbled-circuit evaluation: inconsistent arguments"):
            fields = {**circuit_fields(circ, n, 1, op.circ_bits, rk, 0), "nout": nout}
            run_circuit(
                False,
                **{**fields, "gates": ffi.from_buffer("int32_t[]", gates)},
                in_labels=ffi.from_buffer("uint8_t[]", labels),
                ot_k=4,
                ct=ffi.from_buffer("uint8_t[]", ct),
                arith=ffi.from_buffer("uint8_t[]", ar),
                out=ffi.from_buffer("uint64_t[]", out),
                outmask=(1 << 64) - 1,
            )
        assert not out.any()


@pytest.mark.parametrize("lut", [True, False])
@pytest.mark.parametrize(
    "l,b,k",
    [
        (24, 24, 2),
        (64, 64, 2),
        (32, 20, 3),
        (24, 24, 5),
        (8, 8, 1),
        (16, 16, 9),
        (24, 24, 4),
        (40, 33, 2),
        (64, 62, 3),
        (8, 2, 2),
    ],
)
def test_argmax(sess, l, b, k, lut):
    rng = np.random.default_rng(k + l)
    op = Argmax(ring_bits=l, in_bits=b, k=k, lut=lut)
    ev, g = sess
    for x in (
        ring.random((257, k), l),
        _extremes(l, 99, k, rng),
        np.zeros((3, k), dtype=np.uint64),
        np.zeros((0, k), dtype=np.uint64),
    ):
        yc, ys = ring.share(x, l)
        resp, none = g.respond(op, _req(ev, g, op, yc, ys), ys)
        assert none is None
        got = ev.finish(op, resp)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, ring.argmax(x, in_bits=b))


@HSET
@given(data=st.data(), l=st.integers(1, 64), k=st.integers(1, 6), n=st.integers(0, 30))
def test_argmax_hypothesis_ties(sess, data, l, k, n):
    b = data.draw(st.integers(1, l))
    # few distinct values: many ties
    pool = data.draw(st.lists(st.integers(0, (1 << l) - 1), min_size=1, max_size=3))
    idx = data.draw(st.lists(st.integers(0, len(pool) - 1), min_size=n * k, max_size=n * k))
    x = np.array([pool[i] for i in idx], dtype=np.uint64).reshape(n, k)
    _, _ = sess
    ev, g = sess
    op = Argmax(ring_bits=l, in_bits=b, k=k)
    yc, ys = ring.share(x, l)
    resp, _ = g.respond(op, _req(ev, g, op, yc, ys), ys)
    np.testing.assert_array_equal(ev.finish(op, resp), ring.argmax(x, in_bits=b))


def test_argmax_sign_mode_is_cheaper():
    """K = 2 at 24 bits: look-up chains instead of adders and a comparator, under half the bytes."""
    new, old = Argmax(ring_bits=24, k=2), Argmax(ring_bits=24, k=2, lut=False)
    assert new.lut_bits and not old.lut_bits
    total = [sum(op.message_sizes(4096)) + op.pre_size(4096) for op in (new, old)]
    assert total[0] < 0.45 * total[1]
    assert Argmax(ring_bits=24, k=9).lut_bits == 0  # many classes: the adder circuit


def test_output_shares_look_random(sess):
    """The server's output shares are fresh: same input, different shares each time."""
    op = MaxTrunc(ring_bits=24, in_bits=24, shift=8, relu=True)
    x = np.zeros((64, 1), dtype=np.uint64)
    _, s1 = _run(sess, op, x)
    _, s2 = _run(sess, op, x)
    assert len(set(s1.tolist())) > 60 and not np.array_equal(s1, s2)


def test_base_ot():
    snd = BaseOTSender()
    choices = [i % 2 for i in range(128)]
    rcv = BaseOTReceiver(snd.A, choices)
    sid = b"s" * 32
    k0, k1 = snd.keys(sid, rcv.bs)
    kr = rcv.keys(sid)
    for c, a, b, r in zip(choices, k0, k1, kr, strict=False):
        assert r == (b if c else a) and r != (a if c else b)
    assert len(set(k0 + k1)) == 256


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_cot_correlation(k):
    """SoftSpoken/IKNP: q_j = t_j ^ r_j * Delta, through the GGM-punctured trees."""
    rng = np.random.default_rng(k)
    delta = bytearray(rng.bytes(16))
    delta[0] |= 1
    delta = bytes(delta)
    leaves_c, sums = ggm_client(k)
    choices = ggm_choices(k, delta)
    leaves_g = ggm_garbler(k, delta, [pair[c] for pair, c in zip(sums, choices, strict=True)])
    for b in range(128 // k):  # the garbler misses exactly leaf d_b
        d = sum(((delta[(b * k + j) // 8] >> ((b * k + j) % 8)) & 1) << j for j in range(k))
        same = [leaves_c[b][x] == leaves_g[b][x] for x in range(1 << k)]
        assert same == [x != d for x in range(1 << k)]

    sc, sg = (aes_key_schedules([leaf for t in tree for leaf in t]) for tree in (leaves_c, leaves_g))
    for m, off in [(128, 0), (2048 + 384, 7)]:
        choice = rng.integers(0, 256, size=m // 8, dtype=np.uint8)
        cm = np.empty((128 // k) * m // 8, dtype=np.uint8)
        t = np.empty(16 * m, dtype=np.uint8)
        q = np.empty(16 * m, dtype=np.uint8)
        lib.bn_cot_recv(
            sc,
            k,
            off,
            m,
            ffi.from_buffer("uint8_t[]", choice),
            ffi.from_buffer("uint8_t[]", cm),
            ffi.from_buffer("uint8_t[]", t),
        )
        lib.bn_cot_send(sg, k, delta, off, m, ffi.from_buffer("uint8_t[]", cm), ffi.from_buffer("uint8_t[]", q))
        r = np.unpackbits(choice, bitorder="little")
        dl = np.frombuffer(delta, dtype=np.uint8)
        diff = (t ^ q).reshape(m, 16)
        np.testing.assert_array_equal(diff, np.where(r[:, None] == 1, dl[None, :], 0))
        assert len({bytes(row) for row in q.reshape(m, 16)}) == m


@pytest.mark.parametrize("ot", OT_BACKENDS)
@pytest.mark.parametrize("k", [1, 2, 8])
def test_other_ot_k(k, ot):
    ev, g = _handshake(Evaluator(ot_k=k, ot=ot), Garbler(ot=ot))
    op = MaxTrunc(ring_bits=32, in_bits=32, shift=12, relu=True)
    for n in (300, 1):
        x = ring.random((n, 1), 32)
        out_c, out_s = _run((ev, g), op, x)
        np.testing.assert_array_equal(
            ring.add(out_c, out_s, 32), ring.nonlinear(x, in_bits=32, shift=12, relu=True, ring_bits=32)
        )


@pytest.mark.parametrize("ot", OT_BACKENDS)
def test_pipelined_out_of_order_and_threads(ot):
    ev, g = _session(ot)
    op = MaxTrunc(ring_bits=32, in_bits=32, shift=12, relu=True)
    xs = [ring.random((500 + i, 1), 32) for i in range(4)]
    shares = [ring.share(x, 32) for x in xs]
    reqs = [_req(ev, g, op, yc, ys) for yc, ys in shares]
    results: list = [None] * 4

    def work(i):
        results[i] = g.respond(op, reqs[i], shares[i][1])

    # respond calls must start in order (the sequence number fixes the OT/tweak ranges); once a
    # call has claimed its range, the next may start while it is still garbling
    ths = []
    for i in range(4):
        th = threading.Thread(target=work, args=(i,))
        th.start()
        ths.append(th)
        while g._seq <= i and th.is_alive():
            pass
    for th in ths:
        th.join()
    if ot == "softspoken":
        outs_c = {i: ev.finish(op, results[i][0]) for i in (3, 1, 2, 0)}  # finish in any order
    else:
        outs_c = _finish_concurrently(ev, op, [r[0] for r in results], [3, 1, 2, 0])
    posts = ev.take_posts()  # sign mode: the post-messages complete the server's shares, in request order
    assert len(posts) == 4
    for i in range(4):
        out_s = g.post(op, posts[i], results[i][1])
        want = ring.nonlinear(xs[i], in_bits=32, shift=12, relu=True, ring_bits=32)
        np.testing.assert_array_equal(ring.add(outs_c[i], out_s, 32), want)


def test_bad_messages():
    ev, g = _session()
    op = MaxTrunc(ring_bits=24, in_bits=24, shift=8, relu=True)
    x = ring.random((10, 1), 24)
    yc, ys = ring.share(x, 24)
    req = _req(ev, g, op, yc, ys)
    with pytest.raises(ValueError):
        g.respond(op, req[:-1], ys)  # truncated
    with pytest.raises(ValueError):
        g.respond(op, req + b"\0", ys)  # too long
    with pytest.raises(ValueError):
        g.respond(op, b"garbage", ys)
    with pytest.raises(ValueError):
        g.respond(MaxTrunc(ring_bits=24, in_bits=24, shift=7, relu=True), req, ys)  # other op
    with pytest.raises(ValueError):
        g.respond(op, req, ys[:5])  # other n
    ev2, g2 = _session()
    with pytest.raises(ValueError):
        g2.respond(op, req, ys)  # other session
    resp, out_s = g.respond(op, req, ys)
    with pytest.raises(ValueError):
        g.respond(op, req, ys)  # replay
    with pytest.raises(ValueError):
        ev.finish(op, resp[:-3])
    with pytest.raises(ValueError):
        ev.finish(Argmax(ring_bits=24, k=1), resp)
    with pytest.raises(ValueError):
        ev.finish(op, b"x" * 100)
    out_c = ev.finish(op, resp)
    (post,) = ev.take_posts()
    with pytest.raises(ValueError):
        g.post(op, post[:-1], out_s)  # truncated
    with pytest.raises(ValueError):
        g.post(MaxTrunc(ring_bits=24, in_bits=24, shift=7, relu=True), post, out_s)  # other op
    with pytest.raises(ValueError):
        g.post(op, post, out_s[:5])  # other shares
    with pytest.raises(ValueError):
        g2.post(op, post, out_s)  # other session
    out_s = g.post(op, post, out_s)
    with pytest.raises(ValueError):
        g.post(op, post, out_s)  # replay
    np.testing.assert_array_equal(
        ring.add(out_c, out_s, 24), ring.nonlinear(x, in_bits=24, shift=8, relu=True, ring_bits=24)
    )
    with pytest.raises(ValueError):
        ev.finish(op, resp)  # already consumed
    with pytest.raises(ValueError):
        Evaluator().finish_hello(b"\0" * 10)
    with pytest.raises(ValueError):
        Garbler().hello(b"BNG2\x01\x84" + b"\0" * 48)  # invalid group element
    with pytest.raises(ValueError, match="OT backend mismatch"):
        Garbler().hello(b"BNG2\x01\x04" + b"\0" * 48)  # SoftSpoken asked of a silent-OT server
    with pytest.raises(ValueError):
        Garbler().hello(b"BNG2\x01\x03" + b"\0" * 48)  # unsupported OT parameter
    with pytest.raises(ValueError):
        Evaluator().request(op, yc)  # no session
    ev3, g3 = Evaluator(), Garbler()
    m3 = ev3.finish_hello(g3.hello(ev3.hello()))
    with pytest.raises(ValueError):
        ev3.request(op, yc)  # setup not finished
    with pytest.raises(ValueError):
        g3.finish_hello(m3[:-1])  # truncated
    with pytest.raises(ValueError):
        g2.finish_hello(m3)  # another session's setup
    ev3.finish_setup(g3.finish_hello(m3))
    with pytest.raises(ValueError):
        ev3.request(op, yc)  # no pre-message
    with pytest.raises(ValueError):
        g3.respond(op, ev3.request(op, yc, g.pre(op, ys)), ys)  # a pre-message of another session


def test_input_validation(sess):
    ev, _ = sess
    op = MaxTrunc(ring_bits=24, in_bits=24, shift=8)
    for bad in (
        np.zeros((3, 1), dtype=np.int64),
        np.zeros((3, 2), dtype=np.uint64),
        np.full((3, 1), 1 << 24, dtype=np.uint64),
        [[1]],
    ):
        with pytest.raises(ValueError) as ei:
            ev.request(op, bad)
        assert "16777216" not in str(ei.value)
    for kw in (
        dict(ring_bits=0),
        dict(ring_bits=65),
        dict(ring_bits=24, in_bits=25),
        dict(ring_bits=24, shift=24),
        dict(ring_bits=24, in_bits=8, shift=8),
        dict(ring_bits=24, k=0),
    ):
        with pytest.raises(ValueError):
            MaxTrunc(**kw)
    with pytest.raises(ValueError):
        Argmax(ring_bits=24, k=0)
    with pytest.raises(ValueError):
        ev.request("relu", np.zeros((1, 1), dtype=np.uint64))
    mp = MaxTrunc(ring_bits=24, shift=8, k=4)
    for bad in (np.zeros((3, 1), dtype=np.uint64), np.zeros(4, dtype=np.uint64), np.zeros((3, 5), dtype=np.uint64)):
        with pytest.raises(ValueError):
            ev.request(mp, bad)


def test_pool_rounds_messages_not_interchangeable():
    """A request or response of the pool's comparison round is refused by the ReLU round's op (same
    ring, both in sign mode), and vice versa."""
    ev, g = _session()
    relu, cmp = relu_pool_ops(24, 24, 8)
    x = ring.random((5, 1), 24) & np.uint64(0x7FFF)
    yc, ys = ring.share(x, 24)
    req = _req(ev, g, cmp, yc, ys)
    with pytest.raises(ValueError, match="different operation"):
        g.respond(relu, req, ys)
    resp, out_s = g.respond(cmp, req, ys)
    with pytest.raises(ValueError, match="different operation"):
        ev.finish(relu, resp)
    out_c, out_s = _done(ev, g, cmp, resp, out_s)
    np.testing.assert_array_equal(ring.add(out_c, out_s, 24), x.reshape(-1))  # relu(x) = x for x >= 0


def test_two_processes():
    from gcpair import two_party

    l = 24
    op = MaxTrunc(ring_bits=l, in_bits=l, shift=8, relu=True, k=4)
    x = ring.random((3001, 4), l)
    yc, ys = ring.share(x, l)
    out_c, out_s, stats = two_party(op, yc, ys, chunk=1000)
    np.testing.assert_array_equal(
        ring.add(out_c, out_s, l), ring.nonlinear(x, in_bits=l, shift=8, relu=True, ring_bits=l)
    )
    assert stats.client_sent > 0 and stats.client_received > 0
    op2 = Argmax(ring_bits=l, k=2)
    x2 = ring.random((777, 2), l)
    yc2, ys2 = ring.share(x2, l)
    lab, none, _ = two_party(op2, yc2, ys2, chunk=300, tcp=True)
    assert none is None
    np.testing.assert_array_equal(lab, ring.argmax(x2, in_bits=l))


@pytest.mark.parametrize("n,chunk,window", [(300, 1000, 4), (300, 100, 8), (900, 100, 2), (1500, 100, 1)])
def test_link_passes_over_any_number_of_chunks(n, chunk, window):
    """A chained op's link passes over one chunk, fewer chunks than the window, and many more than the
    pre-messages kept ahead (each pass ends before the next starts): no deadlock (every message waits
    at most a minute) and the shares equal the reference."""
    from gcpair import two_party

    l = 24
    op = MaxTrunc(ring_bits=l, in_bits=l, shift=8, relu=True)
    assert op.link_passes >= 2
    x = ring.random((n, 1), l)
    yc, ys = ring.share(x, l)
    out_c, out_s, _ = two_party(op, yc, ys, chunk=chunk, window=window, timeout=60)
    np.testing.assert_array_equal(
        ring.add(out_c, out_s, l).reshape(-1), ring.nonlinear(x, in_bits=l, shift=8, relu=True, ring_bits=l).reshape(-1)
    )


def test_two_processes_silent_ot_k1():
    """Silent OT bootstrapped by IKNP (k = 1): the third hello carries over a megabyte of base COTs,
    more than the first hello's limit; the server takes it at its exact size."""
    from gcpair import two_party

    from bunet.gc import engine
    from bunet.protocol import gc_pipeline

    sm = engine._silent_base(engine.silent.SETUP.base)
    assert engine._req_len(1, sm) > gc_pipeline.HELLO_BYTES
    l = 24
    op = MaxTrunc(ring_bits=l, in_bits=l, shift=8, relu=True)
    x = ring.random((500, 1), l)
    yc, ys = ring.share(x, l)
    out_c, out_s, _ = two_party(op, yc, ys, ot_k=1, ot="silent")
    np.testing.assert_array_equal(
        ring.add(out_c, out_s, l).reshape(-1), ring.nonlinear(x, in_bits=l, shift=8, relu=True, ring_bits=l).reshape(-1)
    )


@pytest.mark.parametrize("ot_k", [1, 2, 4])
def test_message_sizes(ot_k):
    """SoftSpoken's sizes; silent OT's in tests/test_silent_ot.py."""
    ev, g = _handshake(Evaluator(ot_k=ot_k, ot="softspoken"), Garbler(ot="softspoken"))
    for op in (
        MaxTrunc(ring_bits=24, shift=8),
        MaxTrunc(ring_bits=24, shift=8, chain=False),
        MaxTrunc(ring_bits=32, shift=12, k=4, relu=False),
        MaxTrunc(ring_bits=24, in_bits=16, shift=0),
        Argmax(ring_bits=24, k=3),
    ):
        for n in (100, 257):
            x = ring.random((n, op.k), op.ring_bits)
            yc, ys = ring.share(x, op.ring_bits)
            for j in range(op.link_passes):
                lpre = g.link_pre(op, ys, j)
                lreq = ev.link_request(op, yc, lpre, j)
                assert (len(lpre), len(lreq)) == (op.link_pre_size(n, j, ot_k), op.link_req_size(n, j))
                g.open_link(op, lreq)
            pre = g.pre(op, ys) if op.lut_bits else None
            req = ev.request(op, yc, pre)
            resp, out_s = g.respond(op, req, ys)
            ev.finish(op, resp)
            posts = ev.take_posts()
            for post in posts:
                g.post(op, post, out_s)
            want_req, want_resp = op.message_sizes(n, ot_k)
            assert len(req) == want_req and len(resp) == want_resp
            assert (len(pre) if pre else 0) == op.pre_size(n, ot_k)
            assert sum(len(p) for p in posts) == op.post_size(n)


def _run_raw(circ, bits: np.ndarray, gbits: np.ndarray, seed: int) -> np.ndarray:
    """Garble and evaluate a raw circuit: bits (n, b) client input bits, gbits (n,) garbler share words.

    The input labels come from SoftSpoken OT as in a session (k = 4); returns the evaluator's output word."""
    rng = np.random.default_rng(seed)
    n, b = bits.shape
    k = 4
    delta, leaves_c, leaves_g = local_trees(k, seed)
    sc, sg = (aes_key_schedules([leaf for t in tree for leaf in t]) for tree in (leaves_c, leaves_g))
    m = (n * b + 127) // 128 * 128
    vals = (bits.astype(np.uint64) << np.arange(b, dtype=np.uint64)).sum(axis=1).astype(np.uint64)
    choice = np.empty(m // 8, dtype=np.uint8)
    lib.bn_pack_choice(ffi.from_buffer("uint64_t[]", vals), n, 1, b, ffi.from_buffer("uint8_t[]", choice), m)
    cm = np.empty((128 // k) * m // 8, dtype=np.uint8)
    labels = np.empty(16 * m, dtype=np.uint8)
    u8 = lambda a: ffi.from_buffer("uint8_t[]", a)  # noqa: E731
    lib.bn_cot_recv(sc, k, 0, m, u8(choice), u8(cm), u8(labels))
    rk = aes_key_schedules([rng.bytes(16)])
    ct = np.zeros(max(1, n * circ.ct_bytes), dtype=np.uint8)
    ar = np.zeros(max(1, circ.arith_len(n)), dtype=np.uint8)
    ys = np.ascontiguousarray(gbits, dtype=np.uint64)
    out_g = np.empty(n, dtype=np.uint64)
    out_e = np.empty(n, dtype=np.uint64)
    u64 = lambda a: ffi.from_buffer("uint64_t[]", a)  # noqa: E731
    common = dict(**circuit_fields(circ, n, 1, b, rk, 7), ot_k=k, ct=u8(ct), arith=u8(ar), outmask=(1 << 64) - 1)
    run_circuit(
        True, **common, ys=ffi.from_buffer("uint64_t[]", ys), ot_leaves=sg, cm=u8(cm), delta=delta, out=u64(out_g)
    )
    run_circuit(False, **common, in_labels=u8(labels), out=u64(out_e))
    return out_e


def _three_halves_circuit():
    """ANDs, a CARRY with a garbler bit, NOTs and an XOR, chained, each result revealed (bits 0 .. 4)."""
    from bunet.gc import circuits as gcc

    bld = gcc._Builder(2)
    x, y = 0, 1
    a = bld.and_(x, y)  # x & y
    c = bld._emit(gcc.CARRY, x, y, 0, 0)  # maj(x, y, g)
    d = bld.and_(bld.not_(a), bld.xor(x, y))  # x ^ y, through the AND's output label
    e = bld.and_(d, c)  # (x ^ y) & maj(x, y, g) = (x ^ y) & g
    f = bld.and_(bld.not_(e), bld.not_(a))  # ~((x^y)&g) & ~(x&y)
    for i, w in enumerate((a, c, d, e, f)):
        bld._emit(gcc.REVEAL, w, 0, 0, i, out=False)
    return gcc._finish(bld)


def _three_halves_want(bits: np.ndarray, gb: np.ndarray) -> np.ndarray:
    """What _three_halves_circuit reveals for client bits (n, 2) and garbler bits gb (n,)."""
    xx, yy, gg = bits[:, 0].astype(np.uint64), bits[:, 1].astype(np.uint64), gb & np.uint64(1)
    ra = xx & yy
    rc = (xx & yy) | (xx & gg) | (yy & gg)
    rd = xx ^ yy
    re = rd & rc
    rf = (re ^ 1) & (ra ^ 1)
    return ra | rc << np.uint64(1) | rd << np.uint64(2) | re << np.uint64(3) | rf << np.uint64(4)


@pytest.mark.parametrize("n", [1, 7, 128, 1000, 4099])
def test_three_halves_and_gate(n):
    """One three-halves AND (and the fused CARRY) over all four input combinations, many instances;
    chained gates check whole output labels (a wrong bit anywhere would garble the next gate)."""
    circ = _three_halves_circuit()
    assert circ.and_gates == 5 and circ.ct_bytes == 5 * 24 and circ.bytes_per_inst == 5 * 24 + (5 * 5 + 5) / 8
    rng = np.random.default_rng(n)
    combo = np.arange(n) % 4 if n < 8 else rng.permutation(np.arange(n) % 4)
    bits = np.stack([combo & 1, combo >> 1], axis=1).astype(np.uint8)
    gb = rng.integers(0, 2, size=n).astype(np.uint64)
    for seed in range(3):
        got = _run_raw(circ, bits, gb | (rng.integers(0, 1 << 62, size=n).astype(np.uint64) << np.uint64(1)), seed)
        np.testing.assert_array_equal(got, _three_halves_want(bits, gb))


def test_claim_in_order_garble_concurrently():
    """claim() in request order, then the garbling jobs on a pool in any order."""
    from concurrent.futures import ThreadPoolExecutor

    ev, g = _session()
    op = MaxTrunc(ring_bits=24, in_bits=24, shift=8, relu=True)
    xs = [ring.random((300 + 7 * i, 1), 24) for i in range(5)]
    shares = [ring.share(x, 24) for x in xs]
    reqs = [_req(ev, g, op, yc, ys) for yc, ys in shares]
    jobs = [g.claim(op, req, ys) for req, (_, ys) in zip(reqs, shares, strict=True)]
    with pytest.raises(ValueError):  # a claimed request cannot be claimed again
        g.claim(op, reqs[0], shares[0][1])
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda j: j(), jobs[::-1]))[::-1]
    outs = _finish_concurrently(ev, op, [r[0] for r in results], [4, 3, 2, 1, 0])  # finish in any order
    outs_c = [outs[i] for i in range(5)]
    posts = ev.take_posts()  # in request order
    for x, out_c, (_, out_s), post in zip(xs, outs_c, results, posts, strict=True):
        want = ring.nonlinear(x, in_bits=24, shift=8, relu=True, ring_bits=24)
        np.testing.assert_array_equal(ring.add(out_c, g.post(op, post, out_s), 24), want)


def test_two_processes_errors_surface():
    """A bad chunk on either side ends the pipelined run with that error (no hang)."""
    from gcpair import two_party

    op = MaxTrunc(ring_bits=24, in_bits=24, shift=8, relu=True)
    x = ring.random((3000, 1), 24)
    yc, ys = ring.share(x, 24)
    bad = yc.copy()
    bad[2500] = np.uint64(1 << 30)  # a client share out of range, in the last chunk
    with pytest.raises(ValueError, match="client shares"):
        two_party(op, bad, ys, chunk=1000)
    bad = ys.copy()
    bad[1500] = np.uint64(1 << 30)
    with pytest.raises(RuntimeError, match="server shares"):
        two_party(op, yc, bad, chunk=1000)


@HSET
@given(
    dw=st.lists(st.tuples(st.integers(1, 8), st.integers(1, 2), st.integers(0, 2)), min_size=1, max_size=5),
    n=st.integers(1, 700),
    extra=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
@example(dw=[(8, 1, 0), (5, 2, 0), (8, 2, 1), (7, 2, 0)], n=700, extra=1, seed=7)  # sign mode's shape; 2-block pads
def test_look_up_tables(dw, n, extra, seed):
    """bn_luts_send / bn_luts_recv: for each of an item's tables (d rows at an offset, w bits per entry),
    the receiver opens (generate, propagate)(a + x) ^ rho at its own x only."""
    rng = np.random.default_rng(seed)
    rk = aes_key_schedules([rng.bytes(16)])
    tabs, off = [], 0
    for d, w, gap in dw:  # tables at increasing offsets, with unused rows between them
        off += gap
        tabs.append((off, d, w))
        off += d
    stride = off + extra
    flat = np.array(tabs, dtype=np.uint32).reshape(-1)
    q = rng.integers(0, 256, (n * stride, 16), dtype=np.uint8)
    delta = rng.integers(0, 256, 16, dtype=np.uint8)
    a = rng.integers(0, 1 << 63, n, dtype=np.uint64) & np.uint64((1 << stride) - 1)
    x = rng.integers(0, 1 << 63, n, dtype=np.uint64) & np.uint64((1 << stride) - 1)
    a[0], x[0] = 0, (1 << stride) - 1  # no carry at a = 0; the largest x (propagates at a = 0)
    nbits = sum(w for _, _, w in tabs)
    rho = rng.integers(0, 1 << nbits, n, dtype=np.uint64)
    tstride = sum(max(1, (1 << d) * w // 8) for _, d, w in tabs)
    tab = np.zeros(n * tstride, dtype=np.uint8)
    u8, u32, u64 = (
        (lambda v: ffi.from_buffer("uint8_t[]", v)),
        (lambda v: ffi.from_buffer("uint32_t[]", v)),
        (lambda v: ffi.from_buffer("uint64_t[]", v)),
    )
    assert lib.bn_luts_send(n, len(tabs), u32(flat), stride, u8(q), u8(delta), rk, 640, u64(a), u64(rho), u8(tab)) == 0

    def rows_for(xs: np.ndarray) -> np.ndarray:  # the receiver's rows for its bits xs: q ^ x_j delta
        t = q.copy().reshape(n, stride, 16)
        t[((xs[:, None] >> np.arange(stride, dtype=np.uint64)) & np.uint64(1)).astype(bool)] ^= delta
        return t

    def want_for(xs: np.ndarray) -> np.ndarray:
        out, col = np.zeros(n, dtype=np.uint64), 0
        for o, d, w in tabs:
            m = np.uint64((1 << d) - 1)
            s = ((a >> np.uint64(o)) & m).astype(np.int64) + ((xs >> np.uint64(o)) & m).astype(np.int64)
            for p, f in enumerate([s >= (1 << d), s == (1 << d) - 1][:w]):
                out |= f.astype(np.uint64) << np.uint64(col + p)
            col += w
        return out ^ rho

    got = np.empty(n, dtype=np.uint64)
    assert lib.bn_luts_recv(n, len(tabs), u32(flat), stride, u8(rows_for(x)), rk, 640, u64(x), u8(tab), u64(got)) == 0
    np.testing.assert_array_equal(got, want_for(x))
    bits = lambda v: (v[:, None] >> np.arange(nbits, dtype=np.uint64)) & np.uint64(1)  # noqa: E731
    if n * nbits >= 400:  # the wrong rows (another x's, or other tweaks) open to noise, not to f
        assert (
            lib.bn_luts_recv(n, len(tabs), u32(flat), stride, u8(rows_for(x)), rk, 641, u64(x), u8(tab), u64(got)) == 0
        )
        assert 0.3 < np.mean(bits(got) == bits(want_for(x))) < 0.7
        x2 = x ^ np.uint64(sum(1 << o for o, _, _ in tabs))  # every table's lowest bit flipped
        assert (
            lib.bn_luts_recv(n, len(tabs), u32(flat), stride, u8(rows_for(x)), rk, 640, u64(x2), u8(tab), u64(got)) == 0
        )
        assert 0.3 < np.mean(bits(got) == bits(want_for(x2))) < 0.7
    for bad in (
        [stride - tabs[-1][1] + 1 + extra, tabs[-1][1], 1],  # rows past the item's stride
        [0, 9, 1],
        [0, 0, 1],
        [0, 2, 4],
    ):  # d in 1..8, entries of 1 or 2 bits (or links, w = 3)
        assert (
            lib.bn_luts_send(
                n, 1, u32(np.array(bad, dtype=np.uint32)), stride, u8(q), u8(delta), rk, 0, u64(a), u64(rho), u8(tab)
            )
            == lib.BN_EINVAL
        )
        assert (
            lib.bn_luts_recv(n, 1, u32(np.array(bad, dtype=np.uint32)), stride, u8(q), rk, 0, u64(a), u8(tab), u64(got))
            == lib.BN_EINVAL
        )


@HSET
@given(d=st.integers(2, 8), first=st.integers(0, 8), n=st.integers(1, 600), seed=st.integers(0, 2**32 - 1))
@example(d=8, first=8, n=600, seed=1)  # the largest link (256 entries, a word per half) after a generate table
@example(d=2, first=0, n=600, seed=2)  # the smallest (one chunk bit)
def test_link_tables(d, first, n, seed):
    """bn_luts_send / bn_luts_recv, a link (w = 3): d index bits, d - 1 server chunk bits x and its carry
    share s on top; the entry opened is [a + x + (s ^ rho_in) >= 2^(d-1)] ^ rho_out (every entry of the
    table checked by opening it), after an optional generate table (the columns: the link reads rho_out
    and rho_in); another x or s, or other tweaks, open noise."""
    rng = np.random.default_rng(seed)
    rk = aes_key_schedules([rng.bytes(16)])
    tabs = ([(0, first, 1)] if first else []) + [(first, d, 3)]
    stride = first + d
    flat = np.array(tabs, dtype=np.uint32).reshape(-1)
    q = rng.integers(0, 256, (n * stride, 16), dtype=np.uint8)
    delta = rng.integers(0, 256, 16, dtype=np.uint8)
    a = rng.integers(0, 1 << 62, n, dtype=np.uint64) & np.uint64((1 << stride) - 1)
    a[0] = (a[0] & np.uint64((1 << first) - 1)) | np.uint64(((1 << (d - 1)) - 1) << first)  # a = all ones
    a[n // 2] &= np.uint64((1 << first) - 1)  # a = 0
    col = 1 if first else 0
    rho = rng.integers(0, 1 << (col + 2), n, dtype=np.uint64)
    tstride = (max(1, (1 << first) // 8) if first else 0) + max(1, (1 << d) // 8)
    tab = np.zeros(n * tstride, dtype=np.uint8)
    u8, u32, u64 = (
        (lambda v: ffi.from_buffer("uint8_t[]", v)),
        (lambda v: ffi.from_buffer("uint32_t[]", v)),
        (lambda v: ffi.from_buffer("uint64_t[]", v)),
    )
    assert lib.bn_luts_send(n, len(tabs), u32(flat), stride, u8(q), u8(delta), rk, 384, u64(a), u64(rho), u8(tab)) == 0

    def open_at(xs: np.ndarray, row0: int = 384) -> np.ndarray:
        t = q.copy().reshape(n, stride, 16)
        t[((xs[:, None] >> np.arange(stride, dtype=np.uint64)) & np.uint64(1)).astype(bool)] ^= delta
        got = np.empty(n, dtype=np.uint64)
        assert lib.bn_luts_recv(n, len(tabs), u32(flat), stride, u8(t), rk, row0, u64(xs), u8(tab), u64(got)) == 0
        return got

    def want_at(xs: np.ndarray) -> np.ndarray:
        out = np.zeros(n, dtype=np.uint64)
        if first:
            m = np.uint64((1 << first) - 1)
            out |= ((a & m) + (xs & m) >= np.uint64(1 << first)).astype(np.uint64) ^ (rho & np.uint64(1))
        h = np.uint64(d - 1)
        ac = (a >> np.uint64(first)) & np.uint64((1 << (d - 1)) - 1)
        idx = xs >> np.uint64(first)
        xc, s = idx & np.uint64((1 << (d - 1)) - 1), (idx >> h) & np.uint64(1)
        c = s ^ ((rho >> np.uint64(col + 1)) & np.uint64(1))
        f = (ac + xc + c >= np.uint64(1 << (d - 1))).astype(np.uint64) ^ ((rho >> np.uint64(col)) & np.uint64(1))
        return out | f << np.uint64(col)

    x = rng.integers(0, 1 << 62, n, dtype=np.uint64) & np.uint64((1 << first) - 1)
    for e in range(1 << d):  # every entry of every item's link table
        xs = x | np.uint64(e << first)
        np.testing.assert_array_equal(open_at(xs), want_at(xs))
    if n >= 400:  # wrong rows (another entry's, other tweaks) open to noise
        bit = lambda v: (v >> np.uint64(col)) & np.uint64(1)  # noqa: E731
        xs = x | (rng.integers(0, 1 << d, n, dtype=np.uint64) << np.uint64(first))
        assert 0.3 < np.mean(bit(open_at(xs, 512)) == bit(want_at(xs))) < 0.7
        other = xs ^ np.uint64(1 << (stride - 1))  # s flipped: the entry of the other half
        t = q.copy().reshape(n, stride, 16)
        t[((xs[:, None] >> np.arange(stride, dtype=np.uint64)) & np.uint64(1)).astype(bool)] ^= delta
        got = np.empty(n, dtype=np.uint64)
        assert lib.bn_luts_recv(n, len(tabs), u32(flat), stride, u8(t), rk, 384, u64(other), u8(tab), u64(got)) == 0
        assert 0.3 < np.mean(bit(got) == bit(want_at(other))) < 0.7
    for bad in ([0, 1, 3], [0, 9, 3], [0, 2, 4]):  # a link needs 2..8 index bits; w in 1..3
        assert (
            lib.bn_luts_send(
                n, 1, u32(np.array(bad, dtype=np.uint32)), stride, u8(q), u8(delta), rk, 0, u64(a), u64(rho), u8(tab)
            )
            == lib.BN_EINVAL
        )


@pytest.mark.parametrize(
    "op",
    [
        MaxTrunc(ring_bits=24, shift=8, lut=False),
        MaxTrunc(ring_bits=24, in_bits=16, shift=0),
        MaxTrunc(ring_bits=20, in_bits=18, shift=11, relu=False),
        MaxTrunc(ring_bits=24, in_bits=20, shift=2),
        MaxTrunc(ring_bits=30, in_bits=30, shift=5),
        MaxTrunc(ring_bits=24, in_bits=3, shift=1),
        MaxTrunc(ring_bits=12, in_bits=12, shift=8),
        MaxTrunc(ring_bits=24, shift=10),
        MaxTrunc(ring_bits=32, in_bits=30, shift=17),
        MaxTrunc(ring_bits=24, shift=10, lut=False),
        MaxTrunc(ring_bits=24, shift=8, chain=False),
        MaxTrunc(ring_bits=24, in_bits=16, shift=0, chain=False),
        MaxTrunc(ring_bits=32, in_bits=30, shift=17, chain=False),
    ],
)
def test_lut_on_and_off(sess, op):
    """With and without the carry look-up (and with d < shift), the same exact result; the look-up saves
    the d low bits' carries (d - 1 ANDs + 1 garbler half gate per value)."""
    x = np.concatenate(
        [ring.random((300, op.k), op.ring_bits), _extremes(op.ring_bits, 50, op.k, np.random.default_rng(3))]
    )
    out_c, out_s = _run(sess, op, x)
    kw = dict(in_bits=op.in_bits, shift=op.shift, ring_bits=op.ring_bits)
    np.testing.assert_array_equal(ring.add(out_c, out_s, op.ring_bits), ring.nonlinear(x, relu=op.relu, **kw))
    on, off = MaxTrunc(ring_bits=24, shift=8, chain=False), MaxTrunc(ring_bits=24, shift=8, lut=False)
    assert on.lut_plan.chunks == (5, 5, 5)
    assert (on.circuit.and_gates, on.circuit.andg_gates) == (3, 0)  # sign mode: one AND per chunk
    assert on.circ_bits == 8 and on.lut_bits == 24  # 7 masks + the top bit in; 23 share bits + r0 looked up
    assert (off.circuit.and_gates, off.circuit.andg_gates) == (22, 1)
    # chained: no AND; the dropped bits as 4 + 4, four link passes before the last table (chunk,
    # carry share, r0)
    ch = MaxTrunc(ring_bits=24, shift=8)
    assert (ch.circuit.and_gates, ch.circuit.andg_gates, ch.link_passes) == (0, 0, 4)
    assert ch.lut_plan.drop == (4, 4) and ch.lut_plan.chunks == (5, 5, 5)
    assert MaxTrunc(ring_bits=24, shift=8).lut_plan is ch.lut_plan  # cached: asked per chunk and message
    assert ch.circ_bits == 3 and ch.lut_bits == 7  # masks of k0, k' and the top bit in
    assert [ch.lut_plan.link_rows(j) for j in range(4)] == [4, 5, 6, 6]
    assert ch.lut_plan.table_bytes + sum(_lut_bytes(*ch.lut_plan.link_table(j)[1:]) for j in range(4)) == 30
    # more than 8 dropped bits (a ReLU after a sum-pool): their carry is a chain of chunks too
    on10 = MaxTrunc(ring_bits=24, shift=10, chain=False)
    assert (on10.lut_plan.drop, on10.lut_plan.chunks, on10.lut_bits) == ((5, 5), (5, 4, 4), 24)
    assert (on10.circuit.and_gates, on10.circuit.andg_gates) == (4, 0)
    ch20 = MaxTrunc(ring_bits=32, shift=20)
    assert ch20.lut_plan.drop == (4, 4, 4, 4, 4) and ch20.circuit.and_gates == 0
    pool, pool_off = MaxTrunc(ring_bits=24, shift=8, k=4), MaxTrunc(ring_bits=24, shift=8, k=4, lut=False)
    assert pool_off.circuit.and_gates - pool.circuit.and_gates == 4 * 7  # carry mode: 7 ANDs + 1 ANDG per value
    assert pool_off.circuit.andg_gates - pool.circuit.andg_gates == 4


def test_link_message_checks():
    """Link passes run in order per chunk; a link message of another pass, op or n, a replayed or
    truncated one, or the op's own pre-message before the links, is refused; the result stays exact."""
    ev, g = _session()
    op = MaxTrunc(ring_bits=24, shift=8)
    x = ring.random((40, 1), 24)
    yc, ys = ring.share(x, 24)
    with pytest.raises(ValueError, match="out of order"):
        g.pre(op, ys)  # the last pass before the links
    with pytest.raises(ValueError, match="out of order"):
        g.link_pre(op, ys, 1)  # pass 1 before pass 0
    for bad in (op.link_passes, -1, True):
        with pytest.raises(ValueError):
            g.link_pre(op, ys, bad)  # no such pass
    with pytest.raises(ValueError):
        g.link_pre(MaxTrunc(ring_bits=24, shift=8, chain=False), ys, 0)  # not chained
    lpre = g.link_pre(op, ys, 0)
    with pytest.raises(ValueError):
        ev.link_request(op, yc, lpre, 1)  # another pass
    with pytest.raises(ValueError):
        ev.link_request(op, yc[:10], lpre, 0)  # another n
    with pytest.raises(ValueError):
        ev.link_request(MaxTrunc(ring_bits=24, shift=7), yc, lpre, 0)  # another op
    lreq = ev.link_request(op, yc, lpre, 0)
    with pytest.raises(ValueError):
        ev.link_request(op, yc, lpre, 0)  # replayed
    with pytest.raises(ValueError):
        g.open_link(op, lreq[:-1])  # truncated
    with pytest.raises(ValueError):
        g.open_link(MaxTrunc(ring_bits=24, shift=7), lreq)  # another op
    g.open_link(op, lreq)
    with pytest.raises(ValueError):
        g.open_link(op, lreq)  # replayed
    for j in range(1, op.link_passes):
        g.open_link(op, ev.link_request(op, yc, g.link_pre(op, ys, j), j))
    resp, out_s = g.respond(op, ev.request(op, yc, g.pre(op, ys)), ys)
    out_c, out_s = _done(ev, g, op, resp, out_s)
    want = ring.nonlinear(x, in_bits=24, shift=8, relu=True, ring_bits=24)
    np.testing.assert_array_equal(ring.add(out_c, out_s, 24), want)


def test_pre_message_checks():
    ev, g = _session()
    op = MaxTrunc(ring_bits=24, shift=8, chain=False)
    x = ring.random((40, 1), 24)
    yc, ys = ring.share(x, 24)
    pre = g.pre(op, ys)
    with pytest.raises(ValueError):
        ev.request(MaxTrunc(ring_bits=24, shift=7), yc, pre)  # made for another op
    with pytest.raises(ValueError):
        ev.request(op, yc[:10], pre)  # another n
    with pytest.raises(ValueError):
        ev.request(Argmax(ring_bits=24, k=1), yc, pre)  # an op without a look-up
    with pytest.raises(ValueError):
        g.pre(Argmax(ring_bits=24, k=1), ys)
    req = ev.request(op, yc, pre)
    with pytest.raises(ValueError):
        ev.request(op, yc, pre)  # replayed
    other = ys.copy()
    other[0] ^= np.uint64(1)
    with pytest.raises(ValueError, match="different server shares"):
        g.respond(op, req, other)
    resp, out_s = g.respond(op, req, ys)
    out_c, out_s = _done(ev, g, op, resp, out_s)
    np.testing.assert_array_equal(
        ring.add(out_c, out_s, 24), ring.nonlinear(x, in_bits=24, shift=8, relu=True, ring_bits=24)
    )


def test_link_passes_in_order():
    """A chained op's request needs every link pass of its chunk first, and each pass its
    predecessor: a request or a link request out of turn is refused."""
    ev, g = _session()
    op = MaxTrunc(ring_bits=24, shift=8)
    x = ring.random((40, 1), 24)
    yc, ys = ring.share(x, 24)
    with pytest.raises(ValueError):
        ev.request(op, yc, g.pre(op, ys))  # no link pass yet
    ev, g = _session()
    with pytest.raises(ValueError):
        g.link_pre(op, ys, 1)  # pass 1 before pass 0
    ev, g = _session()
    g.open_link(op, ev.link_request(op, yc, g.link_pre(op, ys, 0), 0))
    with pytest.raises(ValueError):
        ev.request(op, yc, g.pre(op, ys))  # the later passes missing


@pytest.mark.parametrize("chain, masked", [(False, 7), (True, 2)])
def test_sign_mode_leaks_nothing_visible(monkeypatch, chain, masked):
    """What each party sees of a sign-mode ReLU is masked: on inputs whose comparisons are all the
    same (x = 0: every carry, generate, propagate and the sign fixed), the server's opened table
    bits and the client's revealed bit are still uniform."""
    from bunet.gc import engine

    seen: dict[str, np.ndarray] = {}
    open_tables, mux = engine.Garbler._open_tables, engine.Evaluator._mux

    def spy_open(self, op, ys, pre, tables):
        w = open_tables(self, op, ys, pre, tables)
        seen["server"] = (w.reshape(-1)[:, None] >> np.arange(op.lut_plan.n_masked, dtype=np.uint64)) & np.uint64(1)
        return w

    def spy_mux(self, op, seq, n, out, m):
        seen["client"] = out[:, 1].copy()
        return mux(self, op, seq, n, out, m)

    monkeypatch.setattr(engine.Garbler, "_open_tables", spy_open)
    monkeypatch.setattr(engine.Evaluator, "_mux", spy_mux)
    ev, g = _session()
    op = MaxTrunc(ring_bits=24, shift=8, chain=chain)
    x = np.zeros((4000, 1), dtype=np.uint64)
    ys = np.zeros_like(x)  # the server's share 0: the client's is 0 too, nothing random but the masks
    resp, out_s = g.respond(op, _req(ev, g, op, x, ys), ys)
    out_c, out_s = _done(ev, g, op, resp, out_s)
    assert not ring.add(out_c, out_s, 24).any()  # relu(0) = 0
    means = seen["server"].mean(axis=0)
    assert seen["server"].shape[1] == op.lut_plan.n_masked == masked and np.all((means > 0.45) & (means < 0.55)), means
    assert 0.45 < seen["client"].mean() < 0.55
