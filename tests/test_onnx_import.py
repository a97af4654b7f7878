"""ONNX import: PyTorch-exported U-Nets match PyTorch; unsupported ops/attributes are named errors."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from bunet.model.graph import ModelError  # noqa: E402
from bunet.model.onnx_import import load_onnx  # noqa: E402
from bunet.model.reference import float_forward, float_labels  # noqa: E402


def _randomize_bn(model) -> None:  # noqa: ANN001
    """Non-trivial running statistics so that BN folding is actually exercised."""
    import torch

    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.4 * torch.rand(n, generator=g) - 0.2)


@pytest.mark.parametrize(
    "kw",
    [dict(base=4, depth=3, pool="avg", upsample="nearest"), dict(base=4, depth=2, pool="max", upsample="transposed")],
)
def test_pytorch_unet_matches_torch(kw: dict) -> None:
    torch = pytest.importorskip("torch")
    from bunet.model.torch_unet import UNet, UNetConfig, to_network

    torch.manual_seed(0)
    model = UNet(UNetConfig(**kw))
    _randomize_bn(model)
    net = to_network(model, 32, 32)
    ops = [n.op for n in net.graph.nodes]
    assert ops[0] == "input" and ops[-1] == "argmax"
    assert ("avgpool" in ops) == (kw["pool"] == "avg") and ("upsample" in ops) == (kw["upsample"] == "nearest")
    # BN folded: one weight and one bias per conv, nothing else
    n_lin = sum(op in ("conv", "conv_transpose") for op in ops)
    assert len(net.weights) == 2 * n_lin
    x = np.random.default_rng(1).random((3, 1, 32, 32), dtype=np.float32)
    model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out = float_forward(net, x)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 1e-4
    np.testing.assert_array_equal(float_labels(net, x), ref.argmax(1))


def _model(nodes: list, inits: list, out_shape: list | None = None, opset: int = 17) -> bytes:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape or ["n", "k", "h", "w"])],
        initializer=inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def _w(name: str, *shape: int, seed: int = 0) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(seed).normal(size=shape).astype(np.float32), name)


def test_unsupported_op_is_named() -> None:
    data = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("LeakyRelu", ["c"], ["y"], name="act1"),
        ],
        [_w("w", 2, 2, 3, 3)],
    )
    with pytest.raises(ModelError, match=r"LeakyRelu.*act1"):
        load_onnx(data)


@pytest.mark.parametrize(
    ("attrs", "what"),
    [
        (dict(strides=[2, 2]), "strides"),
        (dict(group=2), "group"),
        (dict(pads=[1, 0, 1, 0]), "pads"),
        (dict(dilations=[2, 2], pads=[2, 2, 2, 2]), "dilations"),
    ],
)
def test_unsupported_conv_attribute_is_named(attrs: dict, what: str) -> None:
    w = _w("w", 2, 1 if attrs.get("group") else 2, 3, 3)
    data = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="badconv", **attrs)], [w])
    with pytest.raises(ModelError, match=rf"{what}.*badconv"):
        load_onnx(data, check_model=False)


def test_resize_variants_constants_identity_softmax() -> None:
    """Resize with sizes / half_pixel, Constant + Identity plumbing, a final Softmax dropped."""
    nodes = [
        helper.make_node("Constant", [], ["sizes"], value=numpy_helper.from_array(np.array([1, 2, 16, 16], np.int64))),
        helper.make_node("Identity", ["x"], ["xi"]),
        helper.make_node(
            "Resize",
            ["xi", "", "", "sizes"],
            ["r"],
            name="up",
            mode="nearest",
            coordinate_transformation_mode="half_pixel",
            nearest_mode="round_prefer_floor",
        ),
        helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w", "b"], ["c"], pads=[0, 0, 0, 0]),
        helper.make_node("Softmax", ["c"], ["y"], axis=1),
    ]
    net = load_onnx(_model(nodes, [_w("w", 3, 2, 1, 1), _w("b", 3, seed=1)]))
    assert [n.op for n in net.graph.nodes] == ["input", "upsample", "avgpool", "conv", "argmax"]
    x = np.random.default_rng(2).random((1, 2, 8, 8), dtype=np.float32)
    w = numpy_helper.to_array(_w("w", 3, 2, 1, 1))[:, :, 0, 0]
    b = numpy_helper.to_array(_w("b", 3, seed=1))
    want = np.einsum("oc,bchw->bohw", w, x) + b[None, :, None, None]  # upsample then avgpool = identity
    assert np.abs(float_forward(net, x) - want).max() < 1e-5


def test_resize_linear_rejected() -> None:
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    data = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="bilinear_up", mode="linear")], [scales])
    with pytest.raises(ModelError, match=r"mode='linear'.*bilinear_up"):
        load_onnx(data)


def test_batchnorm_without_conv_rejected() -> None:
    inits = [numpy_helper.from_array(np.ones(2, np.float32), n) for n in ("s", "b", "m", "v")]
    data = _model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn0")], inits)
    with pytest.raises(ModelError, match="bn0"):
        load_onnx(data)


def test_final_argmax_kept_and_garbage_rejected() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("ArgMax", ["c"], ["y"], axis=1, keepdims=1),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["n", 1, "h", "w"])],
        initializer=[_w("w", 2, 2, 3, 3)],
    )
    net = load_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    assert [n.op for n in net.graph.nodes] == ["input", "conv", "argmax"]
    with pytest.raises(ModelError, match="not a valid ONNX"):
        load_onnx(b"this is not onnx")
    with pytest.raises(ModelError, match="not found"):
        load_onnx("/nonexistent/model.onnx")


def test_model_from_onnx(tmp_path) -> None:  # noqa: ANN001
    from bunet.model.format import Model
    from bunet.model.onnx_import import model_from_onnx

    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    path = tmp_path / "m.onnx"
    path.write_bytes(_model(nodes, [_w("w", 2, 2, 3, 3)]))
    m = model_from_onnx(path, name="tiny")
    assert m.preprocessing.input_size == (8, 8) and m.plane_networks == {"xy": "main"}
    m.save(tmp_path / "m.bunet")
    assert Model.load(tmp_path / "m.bunet").parameter_count() == 2 * 2 * 9 + 2
