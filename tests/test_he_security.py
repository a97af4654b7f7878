"""Worst-case noise, message validation, and the server working from public material only."""

from __future__ import annotations

import numpy as np
import pytest

from bunet import ring
from bunet.he import ClientHE, ConvSpec, HEParams, LayerSpec, ServerHE, wire

L = 24


@pytest.fixture(scope="module")
def params() -> HEParams:
    return HEParams.for_ring(L)


@pytest.fixture(scope="module")
def client(params: HEParams) -> ClientHE:
    return ClientHE(params)


def _server_from_blobs(params: HEParams, client: ClientHE) -> ServerHE:
    """Exactly what a remote server receives: the parameter blob and the public-key bytes."""
    return ServerHE(HEParams.from_bytes(params.to_bytes()), bytes(client.public_key()))


def test_server_holds_no_secret_key(params: HEParams, client: ClientHE) -> None:
    srv = _server_from_blobs(params, client)
    secret = client._s_hat  # noqa: SLF001 (test inspects)
    for name, val in vars(srv).items():
        assert "secret" not in name.lower()
        if isinstance(val, np.ndarray):
            assert not any(
                np.array_equal(val.reshape(-1)[: secret.size], secret.reshape(-1)[: val.size])
                for _ in [0]
                if val.size >= secret.size
            )
    assert not any(isinstance(v, ClientHE) for v in vars(srv).values())
    # and it computes correctly from that material alone
    rng = np.random.default_rng(1)
    w = rng.integers(-100, 100, (3, 2, 3, 3))
    layer = srv.prepare(ConvSpec(), w, None, (2, 9, 7))
    xc, xs = ring.random((1, 2, 9, 7), L), ring.random((1, 2, 9, 7), L)
    down, ys = srv.apply(layer, client.encrypt(layer.spec, xc), xs)
    got = ring.add(client.decrypt(layer.spec, down), ys, L)
    assert np.array_equal(got, ring.conv2d(ring.add(xc, xs, L), w, None, 1, L))


@pytest.mark.slow
def test_worst_case_noise_at_largest_shape(params: HEParams, client: ClientHE) -> None:
    """512 input channels, 3x3, every output at the public L1 bound, inputs at the ring's top."""
    srv = _server_from_blobs(params, client)
    c_in, c_out, h, w = 512, 3, 6, 5
    mag = (1 << params.weight_l1_bits) // (c_in * 9)
    rng = np.random.default_rng(11)
    wt = mag * rng.choice([-1, 1], (c_out, c_in, 3, 3))
    wt[0] = mag  # all positive row
    wt[1] = -mag  # all negative row
    assert np.abs(wt).sum(axis=(1, 2, 3)).max() <= 1 << params.weight_l1_bits
    layer = srv.prepare(ConvSpec(), wt, np.full(c_out, -1), (c_in, h, w))
    xc = np.full((1, c_in, h, w), (1 << L) - 1, dtype=np.uint64)
    xs = np.full((1, c_in, h, w), (1 << L) - 1, dtype=np.uint64)
    down, ys = srv.apply(layer, client.encrypt(layer.spec, xc), xs)
    got = ring.add(client.decrypt(layer.spec, down), ys, L)
    assert np.array_equal(got, ring.conv2d(ring.add(xc, xs, L), wt, np.full(c_out, -1), 1, L))
    noise = np.abs(client.noise(layer.spec, down))
    assert noise.max() < 2 ** (params.down_bits - L) // 2


def test_flooding_is_applied(params: HEParams, client: ClientHE) -> None:
    """Every returned c0 coefficient carries a flood of the full width.

    What the client sees of the noise at 2^m is the c0 truncation (uniform, 2^(m - m0) wide)
    plus the flood (uniform in +-2^(flood_bits + m) / q); everything else is far smaller.  Without
    the flood the variance would be the truncation's alone, 30% lower than predicted here.
    """
    srv = _server_from_blobs(params, client)
    rng = np.random.default_rng(2)
    w = rng.integers(-1000, 1000, (8, 8, 3, 3))
    layer = srv.prepare(ConvSpec(), w, None, (8, 32, 32))
    xc, xs = ring.random((1, 8, 32, 32), L), ring.random((1, 8, 32, 32), L)
    down, _ = srv.apply(layer, client.encrypt(layer.spec, xc), xs)
    noise = client.noise(layer.spec, down).astype(np.float64)
    assert noise.size == layer.plan.n_returned == 8 * 32 * 32
    var_trunc = 2.0 ** (2 * (params.down_bits - params.down_c0_bits)) / 12
    flood = 2.0 ** (params.flood_bits + params.down_bits) / params.q
    var_flood = flood**2 / 3
    assert var_flood > 0.3 * var_trunc
    measured = noise.var()
    assert abs(measured / (var_trunc + var_flood) - 1) < 0.1
    assert np.abs(noise).max() < 2 ** (params.down_bits - L) // 2


def test_native_flood_is_one_uniform_integer(params: HEParams) -> None:
    """The flood's residues are those of one integer in [-2^bits, 2^bits) (CRT-consistent), fresh per key."""
    from bunet.he.rns import ffi, lib, rns_for

    rns = rns_for(params.primes, params.poly_degree)
    for bits in (params.flood_bits, 60, 105):
        n_limbs = (bits + 27) // 27
        count = 2000
        res = np.empty((rns.k, count))
        limbs = np.empty((count, n_limbs), dtype=np.uint32)
        key = bytes(range(32))
        lib.bh_flood_sample(
            rns.ctx,
            key,
            7,
            bits,
            count,
            ffi.cast("double *", ffi.from_buffer(res)),
            ffi.cast("uint32_t *", ffi.from_buffer(limbs)),
        )
        vals = [sum(int(limbs[j, i]) << (27 * i) for i in range(n_limbs)) - (1 << bits) for j in range(count)]
        assert all(-(1 << bits) <= v < 1 << bits for v in vals)
        assert min(vals) < -(1 << (bits - 2)) and max(vals) > 1 << (bits - 2)
        assert len(set(vals)) == count
        for i, p in enumerate(params.primes):
            assert all((int(res[i, j]) - v) % p == 0 for j, v in enumerate(vals))
            assert np.abs(res[i]).max() <= p // 2 + 1


def test_message_validation(params: HEParams, client: ClientHE) -> None:
    srv = _server_from_blobs(params, client)
    w = np.ones((2, 2, 3, 3), dtype=np.int64)
    layer = srv.prepare(ConvSpec(), w, None, (2, 8, 8))
    xc = ring.random((1, 2, 8, 8), L)
    xs = ring.random((1, 2, 8, 8), L)
    up = client.encrypt(layer.spec, xc)
    secret_text = str(int(xc[0, 0, 0, 0]))
    # the packed residues (wire.up_ct_bytes): all-ones words are >= p for every prime
    body = len(up) - layer.plan.n_in_cts(1) * wire.up_ct_bytes(params.primes, params.poly_degree)
    assert body > 0 and up[body - 32 - 8 - 16 - 16 - 8 : body - 32 - 8 - 16 - 16] == wire.MAGIC_UP
    bad_uploads = [
        up[:-1],
        up + b"\x00",
        b"x" * len(up),
        up[:8] + bytes(16) + up[24:],
        up[:24] + bytes(16) + up[40:],
        up[:body] + b"\xff" * (len(up) - body),
    ]
    for bad in bad_uploads:
        with pytest.raises(ValueError) as exc:
            srv.apply(layer, bad, xs)
        assert secret_text not in str(exc.value)
    with pytest.raises(ValueError):
        srv.apply(layer, up, xs[:, :1])
    other = srv.prepare(ConvSpec(), np.ones((2, 2, 3, 3), dtype=np.int64), None, (2, 8, 9))
    with pytest.raises(ValueError):
        srv.apply(other, up, ring.random((1, 2, 8, 9), L))
    down, _ = srv.apply(layer, up, xs)
    for bad in (down[:-3], down + b"\x01", down[:8] + bytes(16) + down[24:]):
        with pytest.raises(ValueError):
            client.decrypt(layer.spec, bad)
    with pytest.raises(ValueError):
        client.decrypt(LayerSpec(ConvSpec(), 2, 2, 8, 9), down)
    # a client with other parameters is refused before any work
    other_params = HEParams.for_ring(20)
    with pytest.raises(ValueError):
        ServerHE(other_params, client.public_key())


def test_weight_bound_enforced(params: HEParams, client: ClientHE) -> None:
    srv = _server_from_blobs(params, client)
    big = np.full((1, 512, 3, 3), 1 << 10, dtype=np.int64)
    with pytest.raises(ValueError):
        srv.prepare(ConvSpec(), big, None, (512, 4, 4))
    with pytest.raises(ValueError):
        srv.prepare(ConvSpec(), np.ones((2, 2, 3, 3)), None, (2, 4, 4))  # float weights


@pytest.mark.parametrize("ring_bits", [24, 32])
def test_decryption_product_is_exact(ring_bits: int) -> None:
    """The client's float-FFT product c1 * s mod (X^N + 1, 2^m) equals the integer one."""
    prm = HEParams.for_ring(ring_bits)
    cli = ClientHE(prm)
    n, m = prm.poly_degree, prm.down_bits
    rng = np.random.default_rng(ring_bits)
    c1 = rng.integers(0, 1 << m, (2, n), dtype=np.uint64)
    c1[0, :] = (1 << m) - 1  # extremes
    got = cli._mul_s(c1, m)  # noqa: SLF001
    s = cli._s.astype(np.int64)  # noqa: SLF001
    for row in range(2):
        c = c1[row].astype(np.int64)
        c = np.where(c >= 1 << (m - 1), c - (1 << m), c)  # |c| < 2^(m-1), |c*s| sums < 2^62
        full = np.convolve(c, s)
        neg = full[:n].copy()
        neg[: n - 1] -= full[n:]
        assert np.array_equal(got[row], neg.view(np.uint64) & np.uint64((1 << m) - 1))


@pytest.mark.parametrize("residue", [0x7FFFFF, 0x800000, 0x200000])
def test_hostile_residues_are_refused(params: HEParams, client: ClientHE, residue: int) -> None:
    """A client's public key residue at or beyond half its modulus, or an upload residue at or beyond
    its modulus, is refused before the server computes on it (the last 3 bytes of the public key are
    a centred residue; the upload's last 22 bits are its last residue, unsigned: all ones >= p)."""
    hostile = residue.to_bytes(3, "little")
    pk = bytes(client.public_key())
    with pytest.raises(ValueError, match="out of range"):
        ServerHE(HEParams.from_bytes(params.to_bytes()), pk[:-3] + hostile)
    srv = _server_from_blobs(params, client)
    layer = srv.prepare(ConvSpec(), np.ones((2, 2, 3, 3), dtype=np.int64), None, (2, 8, 8))
    up = bytes(client.encrypt(layer.spec, ring.random((1, 2, 8, 8), L)))
    with pytest.raises(ValueError, match="out of range"):
        srv.apply(layer, up[:-3] + b"\xff\xff\xff", ring.random((1, 2, 8, 8), L))


def test_hostile_batch_count_is_refused(params: HEParams, client: ClientHE) -> None:
    import struct

    srv = _server_from_blobs(params, client)
    layer = srv.prepare(ConvSpec(), np.ones((2, 2, 3, 3), dtype=np.int64), None, (2, 8, 8))
    up = bytearray(client.encrypt(layer.spec, ring.random((1, 2, 8, 8), L)))
    at = up.index(struct.pack("<II", 1, layer.plan.n_in_cts(1)))
    for batch, count in ((0, 0), (2**32 - 1, 2**32 - 1), (2, layer.plan.n_in_cts(1))):
        up[at : at + 8] = struct.pack("<II", batch, count)
        with pytest.raises(ValueError):
            srv.apply(layer, bytes(up), ring.random((1, 2, 8, 8), L))
