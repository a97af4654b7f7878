"""Model file, plan compilation, and the float / fixed-point reference engines."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from seed_unet import seed_unet_model

from bunet.model import reference
from bunet.model.format import Model, Quantization
from bunet.model.graph import ModelError
from bunet.model.plan import compile_plan
from bunet.model.steps import Argmax, CircuitStep, MaxPool, Relu, ReluPool


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
    assert all(getattr(s, "weight", None) is None for s in cp.steps)


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
    # enc0b_relu feeds both the pool and the skip concat: one fused step per 2x2 window defines both
    # tensors (the pool as its out, the ReLU output as its elements), reading enc0b's 24 bits
    assert kinds["pool0"] == ReluPool("pool0", ["enc0b"], 8, in_bits=24, shift=8, elements="enc0b_relu")
    assert kinds["pool0"].inputs == ["enc0b"] and kinds["pool0"].outs == ["pool0", "enc0b_relu"]
    assert "enc0b_relu" not in kinds  # no separate ReLU step
    assert kinds["enc0a_relu"].shift == m.quantization.weight_frac_bits
    exps = {s.exp for s in plan.steps if isinstance(s, CircuitStep) and not isinstance(s, Argmax)}
    assert exps == {m.quantization.frac_bits}
    shapes = plan.shapes(16, 12)
    assert shapes["enc0b_relu"] == (4, 16, 12) and shapes["pool0"] == (4, 8, 6)
    assert plan.relu_count(16, 12) == sum(
        c * h * w for k, (c, h, w) in shapes.items() if k.endswith("_relu") or k.startswith("pool")
    )
    # a narrower in_bits configured for the pool: the pool must read fewer bits, so no fusion
    q = Quantization(24, 8, 8, in_bits={"pool0": 12})
    kinds = {s.out: s for s in compile_plan(m.networks["main"], q).steps}
    assert kinds["pool0"] == MaxPool("pool0", ["enc0b_relu"], 8, in_bits=12, shift=0, relu=False)
    assert type(kinds["enc0b_relu"]) is Relu


def _unfused(plan):
    """The same plan with every fused ReLU + max-pool split back into its two separate steps."""
    import copy

    plan = copy.deepcopy(plan)
    steps = []
    for s in plan.steps:
        if isinstance(s, ReluPool):
            steps.append(Relu(s.elements, list(s.inputs), s.exp, in_bits=s.in_bits, shift=s.shift))
            steps.append(MaxPool(s.out, [s.elements], s.exp, in_bits=s.in_bits - s.shift, shift=0, relu=False))
        else:
            steps.append(s)
    plan.steps = steps
    return plan


@pytest.mark.parametrize("ring_bits,size", [(24, (16, 16)), (32, (8, 20)), (20, (12, 4))])
def test_fused_relu_pool_equals_separate_steps(ring_bits, size):
    """Every tensor of the fused plan equals that of the ReLU-then-pool plan, bit for bit, on inputs
    that drive activations to the limits (non-square slices check the window layout)."""
    m = seed_unet_model(
        in_channels=2, base=4, depth=2, input_size=16, seed=5, quantization=Quantization(ring_bits, 8, 6)
    )
    plan = compile_plan(m.networks["main"], m.quantization)
    assert sum(isinstance(s, ReluPool) for s in plan.steps) == 2
    sep = _unfused(plan)
    rng = np.random.default_rng(ring_bits)
    for scale in (0.0, 1.0, 30.0, 1000.0):
        x = (rng.standard_normal((2, 2, *size)) * scale).astype(np.float32)
        a = reference.run_plan(plan, x, keep=True)
        b = reference.run_plan(sep, x, keep=True)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("pool,up", [("maxpool", "conv_transpose"), ("avgpool", "upsample")])
def test_narrowed_in_bits_change_no_value(pool, up):
    """Range tracking only narrows what a circuit reads: running every non-linear step on the
    whole ring gives the same tensors bit for bit, on inputs that drive activations to the limits."""
    import copy

    m = seed_unet_model(in_channels=2, base=4, depth=2, input_size=16, pool=pool, up=up)
    # the separate ReLU and pool steps (the pool narrows to the ReLU's 16 bits; the fused step reads
    # the conv's 24 and is checked against this split form in test_fused_relu_pool_equals_separate_steps)
    plan = _unfused(compile_plan(m.networks["main"], m.quantization))
    wide = copy.deepcopy(plan)
    narrowed = 0
    for s in wide.steps:
        if isinstance(s, CircuitStep):
            narrowed += s.in_bits < plan.ring_bits
            s.in_bits = plan.ring_bits
    assert narrowed > 0 or pool == "avgpool"  # avg-pool nets have no ReLU -> non-linear chain
    rng = np.random.default_rng(7)
    for scale in (1.0, 30.0, 1000.0):
        x = (rng.standard_normal((2, 2, 16, 16)) * scale).astype(np.float32)
        a = reference.run_plan(plan, x, keep=True)
        b = reference.run_plan(wide, x, keep=True)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
