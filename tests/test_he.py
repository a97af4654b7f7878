"""HomConv on shares: exact equality with bunet.ring's plaintext linear maps."""

from __future__ import annotations

import numpy as np
import pytest

from bunet import ring
from bunet.he import ClientHE, ConvSpec, HEParams, LayerSpec, ServerHE
from bunet.he.bfv import plan_for

L = 24


@pytest.fixture(scope="module")
def parties() -> tuple[HEParams, ClientHE, ServerHE]:
    params = HEParams.for_ring(L)
    cli = ClientHE(params)
    return params, cli, ServerHE(params, cli.public_key())


def seed_unet_layers(size: int) -> list[tuple[str, int, int, int]]:
    """(kind, c_in, c_out, input size) of every linear layer of the seed U-Net."""
    feats = [16, 32, 64, 128, 256]
    layers, c, s = [], 2, size
    for i, f in enumerate(feats):
        layers += [("conv", c, f, s), ("conv", f, f, s)]
        c = f
        if i < len(feats) - 1:
            s //= 2
    for f in reversed(feats[:-1]):
        layers += [("convT", c, f, s)]
        s *= 2
        layers += [("conv", 2 * f, f, s), ("conv", f, f, s)]
        c = f
    layers.append(("conv1", c, 2, s))
    return layers


def adversarial_share(rng: np.random.Generator, shape: tuple[int, ...], case: str) -> np.ndarray:
    if case == "random":
        return ring.random(shape, L)
    if case == "zero":
        return np.zeros(shape, dtype=np.uint64)
    if case == "max":
        return np.full(shape, (1 << L) - 1, dtype=np.uint64)
    if case == "half":
        return np.full(shape, 1 << (L - 1), dtype=np.uint64)
    if case == "negative":
        return ring.from_signed(-rng.integers(1, 1 << (L - 2), shape), L)
    vals = np.array([0, 1, (1 << (L - 1)) - 1, 1 << (L - 1), (1 << L) - 1], dtype=np.uint64)
    return vals[rng.integers(0, vals.size, shape)]


def run_layer(
    parties, conv: ConvSpec, w: np.ndarray, b: np.ndarray | None, xc: np.ndarray, xs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    _, cli, srv = parties
    layer = srv.prepare(conv, w, b, xc.shape[1:])
    up = cli.encrypt(layer.spec, xc)
    down, ys = srv.apply(layer, up, xs)
    yc = cli.decrypt(layer.spec, down)
    x = ring.add(xc, xs, L)
    ref = ring.conv_transpose2x2(x, w, b, L) if conv.kind == "convT" else ring.conv2d(x, w, b, conv.pad, L)
    return ring.add(yc, ys, L), ref


@pytest.mark.parametrize("idx", range(len(seed_unet_layers(32))))
def test_seed_unet_layer_shapes(parties, idx: int) -> None:
    kind, ci, co, s = seed_unet_layers(32)[idx]
    rng = np.random.default_rng(idx)
    conv = {"conv": ConvSpec("conv", 3, 1), "conv1": ConvSpec("conv", 1, 0), "convT": ConvSpec("convT")}[kind]
    wshape = (ci, co, 2, 2) if kind == "convT" else (co, ci, conv.k, conv.k)
    w = rng.integers(-(1 << 9), 1 << 9, wshape)
    b = rng.integers(-(1 << 20), 1 << 20, co)
    case = ["random", "zero", "max", "half", "negative", "mixed"][idx % 6]
    xc = adversarial_share(rng, (1, ci, s, s), case)
    xs = adversarial_share(rng, (1, ci, s, s), "random" if idx % 2 else case)
    got, ref = run_layer(parties, conv, w, b, xc, xs)
    assert np.array_equal(got, ref)


@pytest.mark.parametrize(
    "conv,shape,batch",
    [
        (ConvSpec("conv", 3, 1), (3, 13, 9), 3),
        (ConvSpec("conv", 3, 0), (2, 9, 13), 2),
        (ConvSpec("conv", 1, 0), (5, 7, 11), 2),
        (ConvSpec("convT"), (4, 13, 9), 2),
        (ConvSpec("conv", 5, 2), (2, 11, 6), 1),
        (ConvSpec("conv", 3, 1), (2, 70, 65), 1),  # several overlap-save tiles
    ],
)
def test_odd_sizes_and_batches(parties, conv: ConvSpec, shape, batch: int) -> None:
    rng = np.random.default_rng(7)
    ci = shape[0]
    co = 3
    wshape = (ci, co, 2, 2) if conv.kind == "convT" else (co, ci, conv.k, conv.k)
    w = rng.integers(-300, 300, wshape)
    xc = adversarial_share(rng, (batch,) + shape, "mixed")
    xs = ring.random((batch,) + shape, L)
    got, ref = run_layer(parties, conv, w, None, xc, xs)
    assert np.array_equal(got, ref)


def test_all_negative_weights_and_inputs(parties) -> None:
    rng = np.random.default_rng(3)
    w = -rng.integers(1, 1 << 10, (4, 6, 3, 3))
    xc = ring.from_signed(-rng.integers(1, 1 << 20, (2, 6, 10, 10)), L)
    xs = np.zeros_like(xc)
    got, ref = run_layer(parties, ConvSpec("conv", 3, 1), w, -np.ones(4, dtype=np.int64), xc, xs)
    assert np.array_equal(got, ref)


def test_shares_are_fresh(parties) -> None:
    """The server's output share is a fresh uniform mask, the client's looks uniform too."""
    rng = np.random.default_rng(5)
    w = rng.integers(-5, 5, (2, 2, 3, 3))
    xc = np.zeros((1, 2, 8, 8), dtype=np.uint64)
    got1, _ = run_layer(parties, ConvSpec(), w, None, xc, xc)
    _, cli, srv = parties
    layer = srv.prepare(ConvSpec(), w, None, (2, 8, 8))
    _, ys1 = srv.apply(layer, cli.encrypt(layer.spec, xc), xc)
    _, ys2 = srv.apply(layer, cli.encrypt(layer.spec, xc), xc)
    assert not np.array_equal(ys1, ys2)
    assert np.array_equal(got1, np.zeros_like(got1))


def test_layer_spec_is_public_only(parties) -> None:
    _, _, srv = parties
    w = np.ones((4, 2, 3, 3), dtype=np.int64)
    layer = srv.prepare(ConvSpec(), w, None, (2, 8, 8))
    spec = srv.layer_spec(layer)
    assert isinstance(spec, LayerSpec)
    assert spec == LayerSpec(ConvSpec(), 2, 4, 8, 8)


@pytest.mark.parametrize("ring_bits", [16, 32])
def test_other_ring_widths(ring_bits: int) -> None:
    """l = 16 (N = 4096) and l = 32 (N = 8192, q != 1 mod t budgeted) on a small layer."""
    params = HEParams.for_ring(ring_bits)
    cli = ClientHE(params)
    srv = ServerHE(params, cli.public_key())
    rng = np.random.default_rng(ring_bits)
    for conv, wshape in ((ConvSpec("conv", 3, 1), (3, 4, 3, 3)), (ConvSpec("convT"), (4, 3, 2, 2))):
        w = rng.integers(-(1 << 8), 1 << 8, wshape)
        layer = srv.prepare(conv, w, np.arange(3), (4, 11, 7))
        xc = np.full((2, 4, 11, 7), (1 << ring_bits) - 1, dtype=np.uint64)
        xs = ring.random((2, 4, 11, 7), ring_bits)
        down, ys = srv.apply(layer, cli.encrypt(layer.spec, xc), xs)
        got = ring.add(cli.decrypt(layer.spec, down), ys, ring_bits)
        x = ring.add(xc, xs, ring_bits)
        ref = (
            ring.conv_transpose2x2(x, w, np.arange(3), ring_bits)
            if conv.kind == "convT"
            else ring.conv2d(x, w, np.arange(3), 1, ring_bits)
        )
        assert np.array_equal(got, ref)


@pytest.mark.parametrize(
    "conv, shape",
    [
        (ConvSpec("conv", 3, 1), (37, 29, 6, 5)),  # channels not a multiple of I' or O'
        (ConvSpec("conv", 3, 0), (64, 16, 9, 7)),
        (ConvSpec("conv", 1, 0), (50, 3, 4, 4)),
        (ConvSpec("convT"), (96, 24, 3, 5)),
    ],
)
def test_input_and_output_packing(parties, conv: ConvSpec, shape) -> None:
    """Small planes with many channels pack several input channels per polynomial (I' > 1), with
    the cross terms kept out of every returned coefficient: still exact, ring extremes included."""
    from bunet.he.layout import Plan

    params, _, _ = parties
    c_in, c_out, h, w = shape
    plan = Plan.make(LayerSpec(conv, c_in, c_out, h, w), params.poly_degree)
    assert plan.ipack > 1 and plan.opack * plan.ipack * plan.p <= plan.n
    rng = np.random.default_rng(c_in)
    wshape = (c_in, c_out, 2, 2) if conv.kind == "convT" else (c_out, c_in, conv.k, conv.k)
    wt = rng.integers(-(1 << 9), 1 << 9, wshape)
    b = rng.integers(-(1 << 20), 1 << 20, c_out)
    for case in ("random", "max", "mixed"):
        xc = adversarial_share(rng, (2, c_in, h, w), case)
        xs = adversarial_share(rng, (2, c_in, h, w), "random")
        got, ref = run_layer(parties, conv, wt, b, xc, xs)
        assert np.array_equal(got, ref), case


def test_kernels_rebuilt_per_call_when_not_cached(parties) -> None:
    """Without room in the kernel cache the server keeps the monomials and rebuilds the kernels in
    every call: the same exact result, packed input channels included."""
    params, cli, _ = parties
    srv = ServerHE(params, cli.public_key(), filter_cache_bytes=0)
    rng = np.random.default_rng(11)
    conv = ConvSpec("conv", 3, 1)
    w = rng.integers(-(1 << 9), 1 << 9, (20, 24, 3, 3))
    layer = srv.prepare(conv, w, None, (24, 6, 7))
    assert layer.filters is None and layer.taps is not None and layer.plan.ipack > 1
    xc, xs = ring.random((1, 24, 6, 7), L), ring.random((1, 24, 6, 7), L)
    down, ys = srv.apply(layer, cli.encrypt(layer.spec, xc), xs)
    ref = ring.conv2d(ring.add(xc, xs, L), w, None, 1, L)
    assert np.array_equal(ring.add(cli.decrypt(layer.spec, down), ys, L), ref)


def test_tiny_plane_many_outputs(parties) -> None:
    """1x1 on a 1x1 plane: output packing is capped so NTT-domain sums stay exact."""
    rng = np.random.default_rng(9)
    w = rng.integers(-(1 << 9), 1 << 9, (700, 3, 1, 1))
    xc = ring.random((1, 3, 1, 1), L)
    got, ref = run_layer(parties, ConvSpec("conv", 1, 0), w, None, xc, ring.random((1, 3, 1, 1), L))
    assert np.array_equal(got, ref)


@pytest.mark.parametrize(
    "shape,per_row",
    [
        ((5, 4096, 40), True),
        ((5, 7, 9), True),
        ((5, 70001), True),
        ((3, 2, 20000), True),
        ((70001,), False),
        ((1, 40000), False),
        ((5, 300, 400), "strided"),
    ],
)
def test_mod_inplace_blocks_equal_one_pass(shape, per_row) -> None:
    """The blocked reduction (large arrays) equals the one-pass formula exactly, for per-row primes,
    one prime, and strided views (which take the one-pass path)."""
    from bunet.he.rns import mod_inplace

    rng = np.random.default_rng(sum(shape))
    primes = np.array([4194353.0, 4194389.0, 4194541.0, 4194581.0, 4194629.0])
    x = rng.integers(-(2**51), 2**51, size=shape).astype(np.float64)
    if per_row == "strided":
        x = x[:, :, ::2]
    p = primes[: x.shape[0]].reshape((x.shape[0],) + (1,) * (x.ndim - 1)) if per_row else primes[1]
    want = x - np.rint(x * (1.0 / p)) * p
    got = mod_inplace(x, p, 1.0 / p)
    assert got is x
    np.testing.assert_array_equal(got, want)
    assert np.all(np.abs(got) <= np.max(p) / 2 + 1)


def test_block_filters_equal_one_pass(parties) -> None:
    """The server's NTT-form kernels, made a block at a time into the layer's array, equal the
    one-pass computation (products, reduction, slot-block layout, float32)."""
    _, _, server = parties
    rng = np.random.default_rng(5)
    spec = LayerSpec(ConvSpec("conv", 3, 1), 6, 9, 20, 24)
    w = rng.integers(-40, 40, size=(9, 6, 3, 3))
    layer = server.prepare(spec.conv, w, None, in_shape=(6, 20, 24))
    assert layer.filters is not None
    k, n = server.rns.k, server.params.poly_degree
    c_in = layer.plan.n_ig
    assert layer.taps is None  # cached kernels: the monomials are not kept
    taps = server.monomials(layer.plan)
    taps_t = np.ascontiguousarray(taps.reshape(k, -1, n).transpose(0, 2, 1))
    parts = []
    for ogs in server._og_groups(layer.plan):
        cols = (ogs[:, None] * c_in + np.arange(c_in)[None, :]).reshape(-1)
        f = server.rns.reduce(np.matmul(taps_t, layer.wgroup[:, cols]))  # taps: (K, N, O'*I'*kk)
        parts.append(
            np.ascontiguousarray(f.reshape(k * n // 4, 4, ogs.size, c_in).transpose(0, 2, 3, 1), dtype=np.float32)
        )
    np.testing.assert_array_equal(layer.filters, np.concatenate(parts, axis=1))


@pytest.mark.parametrize(
    "conv, shape, n",
    [
        (ConvSpec("conv", 3, 1), (3, 5, 13, 9), 1024),
        (ConvSpec("conv", 3, 0), (2, 7, 9, 13), 1024),
        (ConvSpec("conv", 1, 0), (5, 3, 7, 11), 4096),
        (ConvSpec("convT"), (4, 6, 13, 9), 1024),
        (ConvSpec("conv", 3, 1), (16, 16, 37, 50), 8192),
    ],
)
def test_returned_maps_equal_direct_enumeration(conv: ConvSpec, shape, n: int) -> None:
    """The compact index maps of the returned coefficients equal an element-by-element enumeration
    (ciphertext og*tiles + tile, then output slot, row, column), and the ranges and counts agree."""
    from bunet.he.layout import Plan

    c_in, c_out, h, w = shape
    p = Plan.make(LayerSpec(conv, c_in, c_out, h, w), n)
    want = [
        (
            og * p.tiles + ti * p.n_tj + tj,
            (op * p.ipack + p.ipack - 1) * p.p + p.d + i * p.wt + j,
            ((og * p.opack + op) * p.ho + ti * p.th + i) * p.wo + tj * p.tw + j,
        )
        for og in range(p.n_og)
        for ti in range(p.n_ti)
        for tj in range(p.n_tj)
        for op in range(p.opack)
        for i in range(p.th)
        for j in range(p.tw)
        if og * p.opack + op < p.c_out and ti * p.th + i < p.ho and tj * p.tw + j < p.wo
    ]
    ct, coef, flat = (np.array(c, dtype=np.int64) for c in zip(*want, strict=True))
    got = p.returned
    for a, b in zip(got, (ct, coef, flat), strict=True):
        np.testing.assert_array_equal(a, b)
    lo, hi, coef32 = p.returned_ranges
    assert coef32.dtype == np.int32 and p.returned_flat.dtype == np.int32 and p.n_returned == len(want)
    np.testing.assert_array_equal(np.repeat(np.arange(lo.size), hi - lo), ct)
    np.testing.assert_array_equal(p.returned_flat, flat)
    np.testing.assert_array_equal(p.returned_channels, flat // (p.ho * p.wo))


def test_reserved_scratch_serves_apply(parties) -> None:
    """reserve_scratch faults in two work arrays large enough for every chunk of the given layers;
    apply then takes them (no new buffer) and the result is still exact."""
    params, cli, _ = parties
    srv = ServerHE(params, cli.public_key())
    rng = np.random.default_rng(5)
    w = rng.integers(-3, 4, (8, 4, 3, 3))
    layer = srv.prepare(ConvSpec("conv", 3, 1), w, None, (4, 21, 19))
    srv.reserve_scratch([layer])
    held = [b.ctypes.data for b in srv._scratch._free]
    assert len(held) == 2 and all(np.all(b == 0) for b in srv._scratch._free)
    xc, xs = ring.random((1, 4, 21, 19), L), ring.random((1, 4, 21, 19), L)
    down, ys = srv.apply(layer, cli.encrypt(layer.spec, xc), xs)
    assert sorted(b.ctypes.data for b in srv._scratch._free) == sorted(held)  # the same two buffers
    np.testing.assert_array_equal(
        ring.add(cli.decrypt(layer.spec, down), ys, L), ring.conv2d(ring.add(xc, xs, L), w, None, 1, L)
    )
    srv.reserve_scratch([layer])  # already held: nothing new
    assert sorted(b.ctypes.data for b in srv._scratch._free) == sorted(held)


def test_kernel_cache_goes_to_the_layers_that_save_most_per_byte():
    """A 3x3 layer rebuilds each kernel from 9 (or more) products per slot, a transposed 2x2 layer from
    far fewer: with room for the larger of the two kernel sets only, the 3x3 layer's are kept,
    whatever the order; with room for both, both; with none, neither."""
    params = HEParams.for_ring(L)
    conv = LayerSpec(ConvSpec("conv", 3, 1), 32, 32, 64, 64)
    convt = LayerSpec(ConvSpec("convT", 2, 0), 32, 32, 64, 64)
    srv = ServerHE(params, filter_cache_bytes=0)
    sizes, inner = [], []
    for spec in (conv, convt):
        plan = plan_for(spec, params.poly_degree)
        sizes.append(srv.rns.k * plan.n * plan.n_og * plan.n_ig * 4)
        inner.append(plan.opack * plan.ipack * plan.k * plan.k)
    assert inner[0] >= 9 > inner[1]
    for budget, want in ((max(sizes), (True, False)), (sum(sizes), (True, True)), (min(sizes) - 1, (False, False))):
        srv.cache_left = budget
        assert srv.choose_cached([conv, convt]) == list(want)
        assert srv.choose_cached([convt, conv]) == list(want[::-1])


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of at most 4 input ciphertexts (or one tile), so small layers go in several messages (plans made
    under it are dropped before and after: a plan's index maps depend on its parts)."""
    from bunet.he import layout

    plan_for.cache_clear()
    monkeypatch.setattr(layout, "PART_IN_CTS", 4)
    monkeypatch.setattr(layout, "MIN_PART_TILES", 1)
    yield
    plan_for.cache_clear()


def _three_output_layer(srv: ServerHE, seed: int, conv: ConvSpec, shape, batch: int):
    """A prepared layer of 3 outputs with random weights, adversarial client shares and random
    server shares: (layer, x_c, x_s, the exact result of the layer on x_c + x_s)."""
    rng = np.random.default_rng(seed)
    ci, co = shape[0], 3
    wshape = (ci, co, 2, 2) if conv.kind == "convT" else (co, ci, conv.k, conv.k)
    w = rng.integers(-300, 300, wshape)
    b = rng.integers(-(1 << 20), 1 << 20, co)
    xc, xs = adversarial_share(rng, (batch,) + shape, "mixed"), ring.random((batch,) + shape, L)
    x = ring.add(xc, xs, L)
    ref = ring.conv_transpose2x2(x, w, b, L) if conv.kind == "convT" else ring.conv2d(x, w, b, conv.pad, L)
    return srv.prepare(conv, w, b, shape), xc, xs, ref


@pytest.mark.parametrize(
    "conv,shape,batch",
    [
        (ConvSpec("conv", 3, 1), (3, 150, 140), 2),  # 2 parts per slice, the last one short
        (ConvSpec("conv", 3, 1), (5, 130, 90), 1),  # a part per tile (5 groups > 4)
        (ConvSpec("convT"), (4, 100, 100), 2),
    ],
)
def test_layer_in_parts_equals_reference(parties, small_parts, conv: ConvSpec, shape, batch: int) -> None:
    """Both messages in several parts (and batch elements): the parts of every message in order,
    each on its own, give the exact result; the message sizes are the ones the parts announce."""
    params, cli, srv = parties
    layer, xc, xs, ref = _three_output_layer(srv, 11, conv, shape, batch)
    assert layer.plan.n_parts >= 2
    up, job, down = cli.upload(layer.spec, xc), srv.start(layer, xs), cli.download(layer.spec, batch)
    assert len(up) == len(job) == len(down) == batch * layer.plan.n_parts
    for i in range(len(up)):
        msg = up.message(i)
        assert len(msg) == job.up_size(i)
        answer = job.step(i, msg)
        assert len(answer) == down.size(i)
        down.add(i, answer)
    assert np.array_equal(ring.add(down.result(), job.y_s, L), ref)


@pytest.mark.parametrize(
    "conv,shape,batch,cap",
    [
        (ConvSpec("conv", 3, 1), (3, 150, 140), 2, 1),  # merges across batch elements, a chunk per tile
        (ConvSpec("conv", 3, 1), (5, 200, 180), 1, 3),  # chunks that cut merges in the middle
        (ConvSpec("conv", 3, 1), (2, 200, 180), 2, 3),  # parts of 2 tiles: chunks that cut parts
        (ConvSpec("convT"), (4, 100, 100), 2, 64),  # a whole merge in one chunk
    ],
)
def test_merged_parts_equal_reference(parties, small_parts, monkeypatch, conv, shape, batch, cap) -> None:
    """Upload messages computed several at a time (``Apply.steps``: 1, then up to MERGE_PARTS), with
    chunks of ``cap`` tiles, give answers of the announced sizes whose result is exact; and each
    answer is a fresh one (no two answers of a merge share their finishing randomness)."""
    from bunet.he import server as he_server

    params, cli, srv = parties
    monkeypatch.setattr(srv, "_chunk_cap", lambda plan: cap)
    layer, xc, xs, ref = _three_output_layer(srv, 21, conv, shape, batch)
    up, job, down = cli.upload(layer.spec, xc), srv.start(layer, xs), cli.download(layer.spec, batch)
    assert len(up) > he_server.MERGE_PARTS
    i, sizes = 0, []
    while i < len(up):
        n = min(1 if i == 0 else he_server.MERGE_PARTS, len(up) - i)
        answers = job.steps(i, [up.message(j) for j in range(i, i + n)])
        assert len(answers) == n
        for answer in answers:
            assert len(answer) == down.size(i)
            down.add(i, answer)
            i += 1
        sizes.append(n)
    assert max(sizes) == he_server.MERGE_PARTS
    assert np.array_equal(ring.add(down.result(), job.y_s, L), ref)


def test_merged_parts_refuse_what_single_parts_refuse(parties, small_parts) -> None:
    params, cli, srv = parties
    rng = np.random.default_rng(22)
    shape = (3, 150, 140)
    layer = srv.prepare(ConvSpec("conv", 3, 1), rng.integers(-9, 9, (2, 3, 3, 3)), None, shape)
    xs = ring.random((1,) + shape, L)
    up = cli.upload(layer.spec, ring.random((1,) + shape, L))
    msgs = [up.message(i) for i in range(len(up))]
    with pytest.raises(ValueError, match="out of order"):
        srv.start(layer, xs).steps(1, msgs[1:3])
    with pytest.raises(ValueError, match="1 to"):
        srv.start(layer, xs).steps(0, [])
    with pytest.raises(ValueError):  # a short second message fails the whole merge
        srv.start(layer, xs).steps(0, [msgs[0], msgs[1][:-1]])
    job = srv.start(layer, xs)
    job.steps(0, msgs[:2])
    with pytest.raises(ValueError, match="out of order"):  # message 1 was taken already
        job.steps(1, msgs[1:3])


def test_parts_out_of_order_or_misshapen_are_refused(parties, small_parts) -> None:
    params, cli, srv = parties
    rng = np.random.default_rng(12)
    shape = (3, 150, 140)
    layer = srv.prepare(ConvSpec("conv", 3, 1), rng.integers(-9, 9, (2, 3, 3, 3)), None, shape)
    xc, xs = ring.random((1,) + shape, L), ring.random((1,) + shape, L)
    up = cli.upload(layer.spec, xc)
    assert len(up) >= 2
    with pytest.raises(ValueError, match="out of order"):
        srv.start(layer, xs).step(1, up.message(1))
    job = srv.start(layer, xs)
    first = up.message(0)
    with pytest.raises(ValueError):
        job.step(0, first[:-1])
    with pytest.raises(ValueError, match="wrong number"):  # the header's batch is not the job's
        srv.start(layer, np.concatenate([xs, xs])).step(0, first)
    job = srv.start(layer, xs)
    answer = job.step(0, first)
    down = cli.download(layer.spec, 1)
    with pytest.raises(ValueError, match="out of order"):
        down.add(1, answer)
    with pytest.raises(ValueError):
        down.add(0, answer + b"\0")
    down = cli.download(layer.spec, 1)
    down.add(0, answer)
    with pytest.raises(ValueError, match="incomplete"):
        down.result()
    whole = b"".join(up.message(i) for i in range(len(up)))
    with pytest.raises(ValueError, match="trailing"):
        srv.apply(layer, whole + b"\0", xs)


@pytest.mark.parametrize("call_kernels", [True, False])
def test_parts_without_kept_kernels(parties, small_parts, monkeypatch, call_kernels: bool) -> None:
    """A server that keeps no kernels builds them once per call for all its parts (or, above
    CALL_KERNEL_BYTES, once per part); the result is exact either way."""
    from bunet.he import server as he_server

    params, cli, _ = parties
    srv = ServerHE(params, cli.public_key(), filter_cache_bytes=0)
    if not call_kernels:
        monkeypatch.setattr(he_server, "CALL_KERNEL_BYTES", 0)
    rng = np.random.default_rng(13)
    shape, co = (3, 150, 140), 4
    w, b = rng.integers(-300, 300, (co, 3, 3, 3)), rng.integers(-9, 9, co)
    layer = srv.prepare(ConvSpec("conv", 3, 1), w, b, shape)
    assert layer.strategy == "filters" and layer.filters is None and layer.plan.n_parts >= 2
    builds = []
    real = srv._block_filters
    monkeypatch.setattr(srv, "_block_filters", lambda *a, **k: builds.append(1) or real(*a, **k))
    xc, xs = ring.random((1,) + shape, L), ring.random((1,) + shape, L)
    down, ys = srv.apply(layer, cli.encrypt(layer.spec, xc), xs)
    ref = ring.conv2d(ring.add(xc, xs, L), w, b, 1, L)
    assert np.array_equal(ring.add(cli.decrypt(layer.spec, down), ys, L), ref)
    assert srv.call_kernel_bytes(layer) == (srv.kernel_bytes(layer.plan) if call_kernels else 0)
    plan = layer.plan
    # apply computes MERGE_PARTS parts at a time, each chunk of their tiles building the kernels once
    merged = [plan.tiles - i * plan.part_tiles for i in range(0, plan.n_parts, he_server.MERGE_PARTS)]
    passes = sum(len(srv._chunks(plan, min(t, he_server.MERGE_PARTS * plan.part_tiles))) for t in merged)
    assert len(builds) == (1 if call_kernels else passes * len(srv._og_groups(plan)))
