"""Native HomConv kernels (bunet.he._native): reference checks and the portable (non-AVX2) path."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from nacl.bindings import randombytes_buf_deterministic

from bunet import ring
from bunet.he import ClientHE, ConvSpec, HEParams, ServerHE
from bunet.he.bfv import derive, expand_a_at
from bunet.he.params import _candidates
from bunet.he.rand import uniform_mod
from bunet.he.rns import RNS, ffi, lib, ptr, rns_for

L = 24


@pytest.fixture()
def portable() -> Iterator[None]:
    """Run a test on the portable path (what a CPU without AVX2/FMA executes)."""
    lib.bh_force_portable(1)
    try:
        yield
    finally:
        lib.bh_force_portable(0)


@pytest.mark.parametrize("length", [1, 63, 64, 511, 512, 513, 5000, 83200])
def test_chacha20_matches_libsodium(length: int) -> None:
    """Every path the CPU has: the default (AVX-512VL rotations where present), AVX2, portable."""
    key = bytes(range(32))
    try:
        for portable, no_vl in ((0, 0), (0, 1), (1, 0)):
            lib.bh_force_portable(portable)
            lib.bh_force_no_avx512(no_vl)
            assert lib.bh_simd() & (3 if portable else 2 if no_vl else 0) == 0
            out = bytearray(length)
            lib.bh_chacha20(key, b"LibsodiumDRG", 0, ffi.from_buffer(out), length)
            assert bytes(out) == randombytes_buf_deterministic(length, key)
    finally:
        lib.bh_force_portable(0)
        lib.bh_force_no_avx512(0)


@pytest.mark.parametrize("n", [16, 64, 4096, 8192])
def test_ntt_paths_identical_and_exact(n: int) -> None:
    primes = _candidates(n)[:3]
    r = RNS(primes, n)
    rng = np.random.default_rng(n)
    x = rng.integers(-(1 << 21), 1 << 21, (2, len(primes), n)).astype(np.float64)
    outs = []
    for force in (0, 1):
        lib.bh_force_portable(force)
        y = x.copy()
        lib.bh_ntt_fwd(r.ctx, ptr("double *", y), 2, 1)
        z = y.copy()
        lib.bh_ntt_inv(r.ctx, ptr("double *", z), 2, 1)
        outs.append((y, z))
    lib.bh_force_portable(0)
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])
    for i, p in enumerate(primes):
        assert np.all((outs[0][1][:, i] - x[:, i]) % p == 0)
        assert np.abs(outs[0][0][:, i]).max() <= p // 2 + 1
    # a negacyclic product through the transform equals the schoolbook one
    a, b = rng.integers(-(1 << 20), 1 << 20, n), rng.integers(-30, 30, n)
    full = np.convolve(a.astype(object), b.astype(object))
    neg = np.array(full[:n])
    neg[: n - 1] -= full[n:]
    prod = r.inverse(r.reduce(r.forward(r.from_int(a)) * r.forward(r.from_int(b))))
    for i, p in enumerate(primes):
        assert all((int(v) - int(w)) % p == 0 for v, w in zip(prod[i], neg, strict=True))


def test_expand_a_matches_reference() -> None:
    params = HEParams.for_ring(L)
    rns = rns_for(params.primes, params.poly_degree)
    seed = bytes(range(32))
    got = expand_a_at(rns, seed, np.array([0, 5, 17]))
    for j, idx in enumerate((0, 5, 17)):
        ref = uniform_mod(derive(seed, idx, b"a"), params.primes, params.poly_degree)
        assert np.all((got[:, j] - ref) % rns.pf[:, None] == 0)
        assert np.abs(got[:, j]).max() <= rns.pf.max() // 2 + 1


def _layer_roundtrip(
    cli: ClientHE, srv: ServerHE, conv: ConvSpec, shape: tuple[int, ...], c_out: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    ci = shape[1]
    wshape = (ci, c_out, 2, 2) if conv.kind == "convT" else (c_out, ci, conv.k, conv.k)
    w = rng.integers(-(1 << 9), 1 << 9, wshape)
    bias = rng.integers(-(1 << 20), 1 << 20, c_out)
    layer = srv.prepare(conv, w, bias, shape[1:])
    xc, xs = ring.random(shape, L), ring.random(shape, L)
    xc[0, 0, 0, :] = (1 << L) - 1
    down, ys = srv.apply(layer, cli.encrypt(layer.spec, xc), xs)
    got = ring.add(cli.decrypt(layer.spec, down), ys, L)
    x = ring.add(xc, xs, L)
    ref = ring.conv_transpose2x2(x, w, bias, L) if conv.kind == "convT" else ring.conv2d(x, w, bias, conv.pad, L)
    assert np.array_equal(got, ref)


def test_portable_path_end_to_end(portable: None) -> None:
    assert lib.bh_simd() == 0
    params = HEParams.for_ring(L)
    cli = ClientHE(params)
    srv = ServerHE(params, cli.public_key())
    _layer_roundtrip(cli, srv, ConvSpec("conv", 3, 1), (1, 3, 20, 17), 4, 1)
    _layer_roundtrip(cli, srv, ConvSpec("convT"), (2, 4, 9, 7), 3, 2)
    _layer_roundtrip(cli, srv, ConvSpec("conv", 1, 0), (1, 5, 8, 8), 6, 3)


def test_native_decryption_matches_fft_path() -> None:
    params = HEParams.for_ring(L)
    cli = ClientHE(params)
    srv = ServerHE(params, cli.public_key())
    rng = np.random.default_rng(4)
    w = rng.integers(-300, 300, (5, 3, 3, 3))
    layer = srv.prepare(ConvSpec(), w, None, (3, 30, 30))
    down, _ = srv.apply(layer, cli.encrypt(layer.spec, ring.random((2, 3, 30, 30), L)), ring.random((2, 3, 30, 30), L))
    native = cli.decrypt(layer.spec, down)
    assert cli._dec_primes is not None  # noqa: SLF001 (test inspects)
    cli._dec_primes = None  # noqa: SLF001 -> FFT fallback
    assert np.array_equal(native, cli.decrypt(layer.spec, down))
