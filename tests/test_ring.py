"""The ring arithmetic and the fixed-point rule, against arbitrary-precision Python integers."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bunet import ring


def _signed(v: int, bits: int) -> int:
    v %= 1 << bits
    return v - (1 << bits) if v >= 1 << (bits - 1) else v


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_nonlinear_matches_integer_definition(data):
    L = data.draw(st.integers(2, 64))
    b = data.draw(st.integers(1, L))
    s = data.draw(st.integers(0, b - 1))
    k = data.draw(st.sampled_from([1, 4]))
    relu = data.draw(st.booleans())
    edge = [0, 1, (1 << (L - 1)) - 1, 1 << (L - 1), (1 << L) - 1]
    vals = data.draw(st.lists(st.one_of(st.sampled_from(edge), st.integers(0, (1 << L) - 1)), min_size=k, max_size=k))
    y = np.array([vals], dtype=np.uint64)
    got = int(ring.nonlinear(y, in_bits=b, shift=s, relu=relu, ring_bits=L)[0])
    v = max(_signed(x, b) for x in vals)
    if relu:
        v = max(v, 0)
    assert got == (v >> s) % (1 << L)


def test_shares_reconstruct_and_are_uniform_looking():
    x = ring.random((1000,), 24)
    a, b = ring.share(x, 24)
    assert (ring.add(a, b, 24) == x).all()
    assert a.max() < 1 << 24 and len(np.unique(b)) > 990


def test_encode_decode_round_trip():
    x = np.array([-3.25, 0.0, 1.5, 100.0])
    assert np.array_equal(ring.decode(ring.encode(x, 8, 24), 8, 24), x)


def test_argmax_ties_go_to_lowest_index():
    y = ring.from_signed(np.array([[3, 3, -1], [-5, -2, -2]]), 16)
    assert ring.argmax(y, in_bits=16).tolist() == [0, 1]


def test_bad_parameters_are_rejected():
    y = np.zeros((2, 1), dtype=np.uint64)
    for kw in ({"in_bits": 0, "shift": 0}, {"in_bits": 8, "shift": 8}, {"in_bits": 17, "shift": 0}):
        try:
            ring.nonlinear(y, relu=True, ring_bits=16, **kw)
        except ValueError:
            continue
        raise AssertionError(f"accepted {kw}")


def _conv_int(x, w, b, pad, L):
    """Plain-integer convolution with Python's big integers (slow, obviously right)."""
    B, C, H, W = x.shape
    Co, _, k, _ = w.shape
    Ho, Wo = H + 2 * pad - k + 1, W + 2 * pad - k + 1
    out = np.empty((B, Co, Ho, Wo), dtype=object)
    for n in range(B):
        for o in range(Co):
            for i in range(Ho):
                for j in range(Wo):
                    acc = int(b[o])
                    for c in range(C):
                        for u in range(k):
                            for v in range(k):
                                ii, jj = i + u - pad, j + v - pad
                                if 0 <= ii < H and 0 <= jj < W:
                                    acc += int(w[o, c, u, v]) * int(x[n, c, ii, jj])
                    out[n, o, i, j] = acc % (1 << L)
    return out


@settings(max_examples=25, deadline=None)
@given(st.integers(8, 64), st.integers(1, 3), st.integers(1, 7), st.integers(1, 6), st.sampled_from([1, 3]))
def test_conv2d_exact_mod_ring(L, C, H, W, k):
    rng = np.random.default_rng(L * 1000 + H * 10 + W)
    x = ring.random((2, C, H, W), L)
    x.flat[0] = (1 << L) - 1  # ring extreme
    w = rng.integers(-(1 << 12), 1 << 12, (3, C, k, k))
    b = rng.integers(-(1 << 20), 1 << 20, 3)
    got = ring.conv2d(x, w, b, k // 2, L).astype(object)
    assert (got == _conv_int(x, w, b, k // 2, L)).all()


def test_pool_windows_round_trip_and_relu_pool():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 1 << 20, size=(2, 3, 6, 8)).astype(np.uint64)
    w = ring.pool_windows2x2(x)
    assert w.shape == (2, 3, 3, 4, 4)
    assert np.array_equal(w[1, 2, 1, 3], [x[1, 2, 2, 6], x[1, 2, 2, 7], x[1, 2, 3, 6], x[1, 2, 3, 7]])
    assert np.array_equal(ring.pool_unwindows2x2(w), x)
    el, pooled = ring.relu_pool(w, in_bits=20, shift=5, ring_bits=24)
    assert np.array_equal(el, ring.nonlinear(w[..., None], in_bits=20, shift=5, relu=True, ring_bits=24))
    assert np.array_equal(pooled, ring.nonlinear(w, in_bits=20, shift=5, relu=True, ring_bits=24))
