"""Model file, plan compilation, and the float / fixed-point reference engines."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from bunet.model import reference
from bunet.model.format import Model, Quantization
from bunet.model.graph import ModelError
from bunet.model.plan import compile_plan
from bunet.model.unet import seed_unet_model


@pytest.fixture(scope="module")
def small():
    return seed_unet_model(in_channels=1, base=4, depth=2, input_size=32, seed=3)


def test_save_load_round_trip(tmp_path, small):
    p = tmp_path / "m.bunet"
    small.save(p)
    m = Model.load(p)
    assert m.header() == small.header()
    for k, v in small.networks["main"].weights.items():
        assert np.array_equal(m.networks["main"].weights[k], v)


def test_header_plan_equals_full_plan_without_weights(tmp_path, small):
    p = tmp_path / "m.bunet"
    small.save(p)
    client_view = Model.from_header(Model.load_header(p))
    assert client_view.networks["main"].weights == {}
    shapes = {k: tuple(v) for k, v in client_view.weight_shapes()["main"].items()}
    cp = compile_plan(client_view.networks["main"], client_view.quantization, shapes)
    assert cp.public() == compile_plan(small.networks["main"], small.quantization).public()
    assert all(s.weight is None for s in cp.steps)


def test_corrupt_and_wrong_files_give_model_errors(tmp_path):
    bad = tmp_path / "bad.bunet"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a readable"):
        Model.load(bad)
    with zipfile.ZipFile(tmp_path / "v9.bunet", "w") as z:
        z.writestr("model.json", '{"format": "bunet-model", "format_version": 9}')
        z.writestr("weights.npz", b"")
    with pytest.raises(ModelError):
        Model.load(tmp_path / "v9.bunet")
    with pytest.raises(ModelError, match="not found"):
        Model.load(tmp_path / "missing.bunet")


def test_unknown_op_is_named(small):
    net = small.networks["main"]
    net.graph.nodes[2].op = "softmax"
    try:
        with pytest.raises(ModelError, match="softmax"):
            net.graph.validate(net.weights)
    finally:
        net.graph.nodes[2].op = "relu"


@pytest.mark.parametrize("pool,up", [("maxpool", "conv_transpose"), ("avgpool", "upsample")])
def test_fixed_point_tracks_float(pool, up):
    m = seed_unet_model(in_channels=1, base=4, depth=2, input_size=32, seed=1, pool=pool, up=up)
    x = np.random.default_rng(0).random((3, 1, 32, 32)).astype(np.float32)
    net = m.networks["main"]
    fl = reference.float_forward(net, x)
    q = Quantization(32, 14, 14)
    t = reference.run_plan(compile_plan(net, q), x, keep=True)
    head = [s for s in compile_plan(net, q).steps if s.out == "head"][0]
    from bunet import ring

    logits = ring.decode(t["head"], head.exp, 32)
    assert np.abs(logits - fl).max() < 1e-2 * max(1.0, np.abs(fl).max())
    agree = (reference.fixed_forward(net, x, q) == reference.float_labels(net, x)).mean()
    assert agree > 0.99


def test_plan_fuses_relu_into_sole_maxpool_and_truncates_linear_chains():
    m = seed_unet_model(in_channels=1, base=4, depth=1, input_size=16)
    plan = compile_plan(m.networks["main"], m.quantization)
    kinds = {s.out: s for s in plan.steps}
    # enc0b_relu feeds both the pool and the skip concat: not fused; the pool works on the ReLU's
    # truncated output, which fits 24 - 8 = 16 signed bits, so it reads only those
    assert kinds["pool0"].attrs == {"shift": 0, "relu": False, "window": 4, "in_bits": 16}
    assert kinds["enc0a_relu"].attrs["shift"] == m.quantization.weight_frac_bits
    exps = {s.exp for s in plan.steps if s.kind == "nonlinear"}
    assert exps == {m.quantization.frac_bits}


@pytest.mark.parametrize("pool,up", [("maxpool", "conv_transpose"), ("avgpool", "upsample")])
def test_narrowed_in_bits_change_no_value(pool, up):
    """Range tracking only narrows what a circuit reads: running every non-linear step on the
    whole ring gives the same tensors bit for bit, on inputs that drive activations to the limits."""
    import copy

    m = seed_unet_model(in_channels=2, base=4, depth=2, input_size=16, pool=pool, up=up)
    plan = compile_plan(m.networks["main"], m.quantization)
    wide = copy.deepcopy(plan)
    narrowed = 0
    for s in wide.steps:
        if s.kind in ("nonlinear", "argmax"):
            narrowed += s.attrs["in_bits"] < plan.ring_bits
            s.attrs["in_bits"] = plan.ring_bits
    assert narrowed > 0 or pool == "avgpool"  # avg-pool nets have no ReLU -> non-linear chain
    rng = np.random.default_rng(7)
    for scale in (1.0, 30.0, 1000.0):
        x = (rng.standard_normal((2, 2, 16, 16)) * scale).astype(np.float32)
        a = reference.run_plan(plan, x, keep=True)
        b = reference.run_plan(wide, x, keep=True)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
