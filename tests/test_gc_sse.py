"""The garbled-circuit engine's SSE4.1/AES-NI fallbacks (what a CPU without AVX2, VAES or BMI2 runs),
forced with ``bn_force_sse`` on this CPU (and the AVX2 transpose in place of the GFNI one, with
``bn_force_no_gfni``): every deterministic kernel gives the same bytes as the default path, a circuit
garbled on one path evaluates correctly on the other, and test_gc's key correctness cases pass end to
end (both OT backends, silent OT's kernels included) on the fallbacks. The HE engine's portable path
has its own switch and tests (test_he_native.py, ``portable``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
import test_gc as gc_cases

from bunet.gc import OT_BACKENDS
from bunet.gc.engine import aes_key_schedules, ffi, lib
from bunet.gc.native import circuit_fields, run_circuit
from bunet.gc.ot import local_trees

u8 = lambda a: ffi.from_buffer("uint8_t[]", a)  # noqa: E731
u32 = lambda a: ffi.from_buffer("uint32_t[]", a)  # noqa: E731
u64 = lambda a: ffi.from_buffer("uint64_t[]", a)  # noqa: E731


@contextlib.contextmanager
def sse_only(on: bool = True) -> Iterator[None]:
    lib.bn_force_sse(int(on))
    try:
        yield
    finally:
        lib.bn_force_sse(0)


def both_paths(fn):
    """fn() on the default path and on the SSE path."""
    default = fn()
    with sse_only():
        return default, fn()


@contextlib.contextmanager
def no_gfni() -> Iterator[None]:
    lib.bn_force_no_gfni(1)
    try:
        yield
    finally:
        lib.bn_force_no_gfni(0)


def test_switch():
    default = lib.bn_simd_paths()
    with sse_only():
        assert lib.bn_simd_paths() == 0 and lib.bn_have_vaes() == 0
    assert lib.bn_simd_paths() == default
    with no_gfni():
        assert lib.bn_simd_paths() == default & ~8
    assert lib.bn_simd_paths() == default


@pytest.mark.parametrize("twstep", [1, 3])
def test_hash_identical(twstep):
    rng = np.random.default_rng(twstep)
    rk = aes_key_schedules([rng.bytes(16)])
    x = rng.integers(0, 256, (1000, 16), dtype=np.uint8)

    def run():
        out = np.empty_like(x)
        lib.bn_hash_batch(rk, u8(x), u8(out), x.shape[0], (1 << 16) - 700, twstep, 0x5A << 56)  # two key groups
        return out

    a, b = both_paths(run)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("k,m", [(1, 2048 + 384), (2, 128), (4, 2048 + 384), (8, 1024), (4, 1 << 19)])
def test_ot_extension_identical(k, m):
    """t rows, the client's message and q rows; m = 2^19: the streamed (non-temporal) output path."""
    delta, leaves_c, leaves_g = local_trees(k, k)
    sc, sg = (aes_key_schedules([leaf for t in tree for leaf in t]) for tree in (leaves_c, leaves_g))
    choice = np.random.default_rng(m).integers(0, 256, size=m // 8, dtype=np.uint8)

    def run():
        cm = np.empty((128 // k) * m // 8, dtype=np.uint8)
        t, q = np.empty(16 * m, dtype=np.uint8), np.empty(16 * m, dtype=np.uint8)
        lib.bn_cot_recv(sc, k, 5, m, u8(choice), u8(cm), u8(t))
        lib.bn_cot_send(sg, k, delta, 5, m, u8(cm), u8(q))
        return cm, t, q

    (cm0, t0, q0), (cm1, t1, q1) = both_paths(run)
    np.testing.assert_array_equal(cm0, cm1)
    np.testing.assert_array_equal(t0, t1)
    np.testing.assert_array_equal(q0, q1)
    with no_gfni():  # the AVX2 transpose where the default is the GFNI one (the same path elsewhere)
        cm2, t2, q2 = run()
    np.testing.assert_array_equal(cm0, cm2)
    np.testing.assert_array_equal(t0, t2)
    np.testing.assert_array_equal(q0, q2)
    r = np.unpackbits(choice, bitorder="little")[:, None]
    dl = np.frombuffer(delta, dtype=np.uint8)[None, :]
    np.testing.assert_array_equal((t0 ^ q0).reshape(m, 16), np.where(r == 1, dl, 0))


def test_look_up_tables_and_check_identical():
    rng = np.random.default_rng(3)
    tabs = [(0, 8, 1), (8, 5, 2), (13, 8, 2), (21, 3, 1), (24, 8, 3), (32, 4, 3)]  # the last two: links
    stride, n = 36, 700
    rk = aes_key_schedules([rng.bytes(16)])
    q = rng.integers(0, 256, (n * stride, 16), dtype=np.uint8)
    delta = rng.integers(0, 256, 16, dtype=np.uint8)
    a = rng.integers(0, 1 << stride, n, dtype=np.uint64)
    x = rng.integers(0, 1 << stride, n, dtype=np.uint64)
    rho = rng.integers(0, 1 << 10, n, dtype=np.uint64)
    flat = np.array(tabs, dtype=np.uint32).reshape(-1)
    tstride = sum(max(1, (1 << d) * (1 if w == 3 else w) // 8) for _, d, w in tabs)
    seed, choice = rng.bytes(16), rng.integers(0, 256, n * stride // 8 + 1, dtype=np.uint8)

    def run():
        tab, got = np.zeros(n * tstride, dtype=np.uint8), np.zeros(n, dtype=np.uint64)
        spec = (n, len(tabs), u32(flat), stride)
        assert lib.bn_luts_send(*spec, u8(q), u8(delta), rk, 9, u64(a), u64(rho), u8(tab)) == 0
        assert lib.bn_luts_recv(*spec, u8(q), rk, 9, u64(x), u8(tab), u64(got)) == 0
        proof = ffi.new("uint8_t[]", 32)
        lib.bn_ot_check_prove(u8(q), u8(choice), n * stride, seed, proof)
        return tab, got, bytes(proof)

    (tab0, got0, p0), (tab1, got1, p1) = both_paths(run)
    np.testing.assert_array_equal(tab0, tab1)
    np.testing.assert_array_equal(got0, got1)
    assert p0 == p1


@pytest.mark.parametrize("garble_sse", [False, True])
def test_garble_on_one_path_evaluate_on_both(garble_sse):
    """Garbled on one path, the material evaluates to the same bytes on both, and to the right bits."""
    circ, n, k, b = gc_cases._three_halves_circuit(), 1000, 4, 2
    rng = np.random.default_rng(int(garble_sse))
    bits = rng.integers(0, 2, (n, b)).astype(np.uint64)
    gbits = rng.integers(0, 2, n).astype(np.uint64)
    delta, leaves_c, leaves_g = local_trees(k, 11)
    sc, sg = (aes_key_schedules([leaf for t in tree for leaf in t]) for tree in (leaves_c, leaves_g))
    m = (n * b + 127) // 128 * 128
    vals = (bits << np.arange(b, dtype=np.uint64)).sum(axis=1).astype(np.uint64)
    choice = np.empty(m // 8, dtype=np.uint8)
    lib.bn_pack_choice(u64(vals), n, 1, b, u8(choice), m)
    cm, labels = np.empty((128 // k) * m // 8, dtype=np.uint8), np.empty(16 * m, dtype=np.uint8)
    lib.bn_cot_recv(sc, k, 0, m, u8(choice), u8(cm), u8(labels))
    rk = aes_key_schedules([rng.bytes(16)])
    ct, ar = np.zeros(n * circ.ct_bytes, dtype=np.uint8), np.zeros(circ.arith_len(n), dtype=np.uint8)
    common = dict(**circuit_fields(circ, n, 1, b, rk, 3), ot_k=k, ct=u8(ct), arith=u8(ar), outmask=(1 << 64) - 1)
    out_g = np.empty(n, dtype=np.uint64)
    with sse_only(garble_sse):
        run_circuit(True, **common, ys=u64(gbits), ot_leaves=sg, cm=u8(cm), delta=delta, out=u64(out_g))

    def evaluate():
        out = np.empty(n, dtype=np.uint64)
        run_circuit(False, **common, in_labels=u8(labels), out=u64(out))
        return out

    e0, e1 = both_paths(evaluate)
    np.testing.assert_array_equal(e0, e1)
    np.testing.assert_array_equal(e0, gc_cases._three_halves_want(bits, gbits))


@pytest.fixture(scope="module", params=OT_BACKENDS)
def sse_sess(request):
    """A session set up and run entirely on the SSE paths (GGM trees, silent OT iterations included)."""
    with sse_only():
        return gc_cases._session(request.param)


@pytest.mark.parametrize("l,b,s", [(24, 24, 8), (64, 40, 20), (17, 9, 4)])
@pytest.mark.parametrize("relu,k", [(True, 1), (False, 4)])
def test_max_trunc_on_sse(sse_sess, l, b, s, relu, k):
    with sse_only():
        gc_cases.test_max_trunc_random_and_extremes(sse_sess, l, b, s, relu, k)


def test_relu_pool_on_sse(sse_sess):
    with sse_only():
        gc_cases.test_relu_pool_random_and_extremes(sse_sess, 24, 24, 8)


@pytest.mark.parametrize("l,b,k,lut", [(24, 24, 4, True), (16, 16, 9, False), (64, 62, 3, True)])
def test_argmax_on_sse(sse_sess, l, b, k, lut):
    with sse_only():
        gc_cases.test_argmax(sse_sess, l, b, k, lut)
