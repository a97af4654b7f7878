"""ONNX -> :class:`bunet.model.format.Network`: the one conversion path for external models.

The importer accepts exactly what the secure protocol can run and says what it cannot:

* ``Conv`` (stride 1, symmetric padding, group 1, dilation 1, square kernel),
  ``ConvTranspose`` (2x2, stride 2), ``Relu``, ``AveragePool`` / ``MaxPool`` (2x2, stride 2),
  ``Concat`` (channel axis), ``Resize`` / ``Upsample`` (nearest, x2 -- checked against the
  ONNX coordinate rules, so only mappings that equal pixel repetition pass);
* ``BatchNormalization`` directly after a (transposed) convolution is folded into its weights
  and bias in float64 (the conv output must feed only the BN);
* ``Identity``, ``Constant`` and small constant sub-graphs (``Shape``, ``Concat``, ``Cast``,
  ``Gather``, ``Slice``, ``Unsqueeze``, ... on known shapes, as exporters emit for Resize
  scales) are evaluated at import time;
* a final ``ArgMax`` over channels is kept; a graph that ends in logits (or in a channel
  ``Softmax`` / ``LogSoftmax``, which do not change the argmax) gets one appended.

Anything else raises :class:`ModelError` naming the op, the attribute and the node.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from . import shapes as sh
from .format import Model, Network, Preprocessing, Quantization
from .graph import Graph, ModelError, Node

# ops evaluated with NumPy when all inputs are constant (shape arithmetic emitted by exporters)
_CONST_OPS = {
    "Concat",
    "Cast",
    "Mul",
    "Div",
    "Add",
    "Sub",
    "Unsqueeze",
    "Squeeze",
    "Gather",
    "Slice",
    "Reshape",
    "Floor",
    "Ceil",
    "Identity",
    "ConstantOfShape",
    "Shape",
    "Range",
    "Equal",
    "Where",
}


def _onnx():  # noqa: ANN202
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:  # onnx is a dev extra
        raise ModelError("ONNX import needs the 'onnx' package (pip install onnx)") from e
    return onnx, numpy_helper


def _attrs(node: Any) -> dict[str, Any]:
    onnx, numpy_helper = _onnx()
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif a.type == onnx.AttributeProto.TENSOR:
            v = numpy_helper.to_array(v)
        elif isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


def _nearest_x2_ok(mode: str, coord: str, nearest_mode: str) -> bool:
    """Does ONNX Resize(nearest, scale 2) with these rules equal pixel repetition? (checked numerically)"""
    if mode != "nearest":
        return False
    n_in, n_out, scale = 8, 16, 2.0
    i = np.arange(n_out, dtype=np.float64)
    if coord == "asymmetric":
        x = i / scale
    elif coord in ("half_pixel", "pytorch_half_pixel"):
        x = (i + 0.5) / scale - 0.5
    elif coord == "tf_half_pixel_for_nn":
        x = (i + 0.5) / scale
    elif coord == "align_corners":
        x = i * (n_in - 1) / (n_out - 1)
    else:
        return False
    if nearest_mode == "floor":
        j = np.floor(x)
    elif nearest_mode == "ceil":
        j = np.ceil(x)
    elif nearest_mode == "round_prefer_floor":
        j = np.where(x - np.floor(x) == 0.5, np.floor(x), np.round(x))
    elif nearest_mode == "round_prefer_ceil":
        j = np.where(x - np.floor(x) == 0.5, np.ceil(x), np.round(x))
    else:
        return False
    return bool(np.array_equal(np.clip(j, 0, n_in - 1), np.arange(n_out) // 2))


class _Importer:
    def __init__(self, model: Any, name_prefix: str = "") -> None:
        onnx, numpy_helper = _onnx()
        self.g = model.graph
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in self.g.initializer}
        self.alias: dict[str, str] = {}  # onnx tensor -> bunet node name
        self.shape: dict[str, tuple[int, ...]] = {}  # onnx activation tensor -> full shape (N, C, H, W)
        self.nodes: list[Node] = []
        self.weights: dict[str, np.ndarray] = {}
        self.used_names: set[str] = set()
        self.pending_bn: dict[str, str] = {}  # conv output tensor -> bunet conv node (foldable)
        self.uses: dict[str, int] = {}
        for n in self.g.node:
            for i in n.input:
                if i:
                    self.uses[i] = self.uses.get(i, 0) + 1
        for o in self.g.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1

    # -- helpers ------------------------------------------------------------------------
    def _name(self, onnx_node: Any, op: str) -> str:
        raw = onnx_node.name or (onnx_node.output[0] if onnx_node.output else op)
        base = re.sub(r"[^A-Za-z0-9_]+", "_", raw).strip("_") or op
        name, k = base, 1
        while name in self.used_names:
            k += 1
            name = f"{base}_{k}"
        self.used_names.add(name)
        return name

    def _act(self, tensor: str, where: str) -> str:
        if tensor not in self.alias:
            if tensor in self.consts:
                raise ModelError(f"{where}: constant tensor {tensor!r} used as an activation (unsupported)")
            raise ModelError(f"{where}: input {tensor!r} is not produced by a supported node")
        return self.alias[tensor]

    def _const(self, tensor: str, where: str) -> np.ndarray:
        if tensor not in self.consts:
            raise ModelError(f"{where}: input {tensor!r} must be a constant (initializer or Constant)")
        return self.consts[tensor]

    def _add(
        self,
        onnx_node: Any,
        op: str,
        inputs: list[str],
        attrs: dict[str, Any] | None = None,
        shape: tuple[int, ...] | None = None,
    ) -> str:
        name = self._name(onnx_node, op)
        self.nodes.append(Node(name, op, inputs, attrs or {}))
        out = onnx_node.output[0]
        self.alias[out] = name
        if shape is not None:
            self.shape[out] = shape
        return name

    @staticmethod
    def _where(n: Any) -> str:
        return f"node {n.name or n.output[0]!r} ({n.op_type})"

    def _reject(self, n: Any, what: str) -> None:
        raise ModelError(f"unsupported {what} in {self._where(n)}")

    # -- graph ----------------------------------------------------------------------------
    def run(self) -> Network:
        inputs = [i for i in self.g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ModelError(f"the ONNX graph must have exactly one (non-constant) input, it has {len(inputs)}")
        if len(self.g.output) != 1:
            raise ModelError(f"the ONNX graph must have exactly one output, it has {len(self.g.output)}")
        inp = inputs[0]
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
        if len(dims) != 4 or dims[1] is None:
            raise ModelError(f"input {inp.name!r} must be 4-D (N, C, H, W) with a fixed channel count, got {dims}")
        self.nodes.append(Node("input", "input", [], {"channels": int(dims[1])}))
        self.used_names.add("input")
        self.alias[inp.name] = "input"
        if all(d is not None for d in dims):
            self.shape[inp.name] = tuple(int(d) for d in dims)
        for n in self.g.node:
            self._node(n)
        out = self.g.output[0].name
        last = self._act(out, f"graph output {out!r}")
        if self.nodes[-1].name != last:
            raise ModelError(f"the graph output {out!r} must be produced by the last node")
        if self.nodes[-1].op != "argmax":
            self.nodes.append(Node("argmax", "argmax", [last]))
        # drop nodes nothing reads (e.g. a dropped Softmax's producer is still read; shape-only paths)
        graph = Graph(self.nodes)
        graph.validate(self.weights)
        return Network(graph, self.weights)

    def _node(self, n: Any) -> None:  # noqa: C901  (one dispatch table)
        op, a, where = n.op_type, _attrs(n), self._where(n)
        if n.domain not in ("", "ai.onnx"):
            self._reject(n, f"op domain {n.domain!r}")
        if op == "Constant":
            kinds = {
                "value": None,
                "value_float": np.float32,
                "value_floats": np.float32,
                "value_int": np.int64,
                "value_ints": np.int64,
            }
            key = next((k for k in kinds if k in a), None)
            if key is None:
                self._reject(n, f"Constant attribute(s) {sorted(a)}")
            self.consts[n.output[0]] = np.asarray(a[key], dtype=kinds[key])
            return
        if op == "Identity" and n.input[0] in self.alias:
            self.alias[n.output[0]] = self.alias[n.input[0]]
            if n.input[0] in self.shape:
                self.shape[n.output[0]] = self.shape[n.input[0]]
            if n.input[0] in self.pending_bn:
                self.pending_bn[n.output[0]] = self.pending_bn[n.input[0]]
            return
        if op == "Shape" and n.input[0] in self.shape:
            self.consts[n.output[0]] = np.asarray(self.shape[n.input[0]], dtype=np.int64)
            return
        if op in _CONST_OPS and all(i == "" or i in self.consts for i in n.input):
            self.consts[n.output[0]] = self._fold(n, a)
            return
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            self._reject(n, f"op {op!r}")
        handler(n, a, where)

    def _fold(self, n: Any, a: dict[str, Any]) -> np.ndarray:
        """Evaluate a constant node with NumPy (shape arithmetic only)."""
        onnx, _ = _onnx()
        x = [self.consts[i] if i else None for i in n.input]
        op = n.op_type
        try:
            if op == "Concat":
                return np.concatenate([np.atleast_1d(v) for v in x if v is not None], axis=a.get("axis", 0))
            if op == "Cast":
                return x[0].astype(onnx.helper.tensor_dtype_to_np_dtype(a["to"]))
            if op in ("Mul", "Div", "Add", "Sub", "Equal"):
                f = {
                    "Mul": np.multiply,
                    "Add": np.add,
                    "Sub": np.subtract,
                    "Equal": np.equal,
                    "Div": np.floor_divide if np.issubdtype(x[0].dtype, np.integer) else np.divide,
                }[op]
                return np.asarray(f(x[0], x[1]))
            if op == "Where":
                return np.where(x[0], x[1], x[2])
            if op == "Unsqueeze":
                axes = a.get("axes", x[1] if len(x) > 1 else None)
                r = x[0]
                for ax in sorted(int(v) % (r.ndim + len(axes)) for v in axes):
                    r = np.expand_dims(r, ax)
                return r
            if op == "Squeeze":
                axes = a.get("axes", x[1] if len(x) > 1 else None)
                return np.squeeze(x[0], axis=None if axes is None else tuple(int(v) for v in axes))
            if op == "Gather":
                return np.take(x[0], x[1].astype(np.int64), axis=a.get("axis", 0))
            if op == "Slice":
                starts, ends = x[1], x[2]
                axes = x[3] if len(x) > 3 and x[3] is not None else np.arange(len(starts))
                steps = x[4] if len(x) > 4 and x[4] is not None else np.ones(len(starts), np.int64)
                sl = [slice(None)] * x[0].ndim
                for s, e, ax, st in zip(starts, ends, axes, steps, strict=False):
                    sl[int(ax)] = slice(int(s), int(min(e, np.iinfo(np.int64).max // 2)), int(st))
                return x[0][tuple(sl)]
            if op == "Reshape":
                return x[0].reshape(tuple(int(v) for v in x[1]))
            if op in ("Floor", "Ceil"):
                return (np.floor if op == "Floor" else np.ceil)(x[0])
            if op == "Identity":
                return x[0]
            if op == "ConstantOfShape":
                v = a.get("value", np.zeros(1, np.float32))
                return np.full(tuple(int(s) for s in x[0]), v.reshape(-1)[0], dtype=v.dtype)
            if op == "Range":
                return np.arange(x[0], x[1], x[2])
        except (ValueError, IndexError, TypeError, KeyError) as e:
            raise ModelError(f"cannot evaluate constant {self._where(n)}: {e}") from None
        self._reject(n, f"constant op {op!r}")
        raise AssertionError  # unreachable

    def _check(self, n: Any, a: dict[str, Any], name: str, ok: bool) -> None:
        if not ok:
            self._reject(n, f"attribute {name}={a.get(name)!r}")

    def _in_shape(self, n: Any) -> tuple[int, ...] | None:
        return self.shape.get(n.input[0])

    # -- supported ops ------------------------------------------------------------------------
    def _op_Conv(self, n: Any, a: dict[str, Any], where: str) -> None:  # noqa: N802
        w = self._const(n.input[1], where).astype(np.float64)
        if w.ndim != 4 or w.shape[2] != w.shape[3]:
            self._reject(n, f"Conv kernel shape {w.shape[2:]} (square 2-D kernels only)")
        k = w.shape[2]
        self._check(n, a, "group", a.get("group", 1) == 1)
        self._check(n, a, "strides", list(a.get("strides", [1, 1])) == [1, 1])
        self._check(n, a, "dilations", list(a.get("dilations", [1, 1])) == [1, 1])
        self._check(
            n,
            a,
            "auto_pad",
            a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
            or (a.get("auto_pad") in ("SAME_UPPER", "SAME_LOWER") and k % 2 == 1),
        )
        same = a.get("auto_pad") in ("SAME_UPPER", "SAME_LOWER")
        pads = [k // 2] * 4 if same else list(a.get("pads", [0, 0, 0, 0]))
        self._check(n, a, "pads", len(pads) == 4 and len(set(pads)) == 1)
        has_b = len(n.input) > 2 and n.input[2]
        b = self._const(n.input[2], where).astype(np.float64) if has_b else np.zeros(w.shape[0])
        src = self._act(n.input[0], where)
        s = self._in_shape(n)
        shape = None if s is None else (s[0], *sh.conv(w.shape[0], k, pads[0], s[1:]))
        name = self._add(n, "conv", [src], {"pad": int(pads[0])}, shape)
        self.weights[f"{name}.weight"], self.weights[f"{name}.bias"] = w, b
        self.pending_bn[n.output[0]] = name

    def _op_ConvTranspose(self, n: Any, a: dict[str, Any], where: str) -> None:  # noqa: N802
        w = self._const(n.input[1], where).astype(np.float64)
        if w.ndim != 4 or w.shape[2:] != (2, 2):
            self._reject(n, f"ConvTranspose kernel shape {w.shape[2:]} (2x2 stride 2 only)")
        self._check(n, a, "group", a.get("group", 1) == 1)
        self._check(n, a, "strides", list(a.get("strides", [1, 1])) == [2, 2])
        self._check(n, a, "dilations", list(a.get("dilations", [1, 1])) == [1, 1])
        self._check(n, a, "pads", not any(a.get("pads", [0, 0, 0, 0])))
        self._check(n, a, "output_padding", not any(a.get("output_padding", [0, 0])))
        self._check(n, a, "auto_pad", a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID"))
        has_b = len(n.input) > 2 and n.input[2]
        b = self._const(n.input[2], where).astype(np.float64) if has_b else np.zeros(w.shape[1])
        s = self._in_shape(n)
        shape = None if s is None else (s[0], *sh.conv_transpose2x2(w.shape[1], s[1:]))
        if "output_shape" in a and shape is not None:
            self._check(n, a, "output_shape", list(a["output_shape"])[-2:] == list(shape[2:]))
        name = self._add(n, "conv_transpose", [self._act(n.input[0], where)], {}, shape)
        self.weights[f"{name}.weight"], self.weights[f"{name}.bias"] = w, b
        self.pending_bn[n.output[0]] = name

    def _op_BatchNormalization(self, n: Any, a: dict[str, Any], where: str) -> None:  # noqa: N802
        src = n.input[0]
        conv = self.pending_bn.get(src)
        if conv is None or self.uses.get(src, 0) != 1 or self.nodes[-1].name != conv:
            raise ModelError(
                f"{where}: BatchNormalization must directly follow a Conv/ConvTranspose "
                f"whose output nothing else reads (it is folded into that convolution)"
            )
        self._check(n, a, "training_mode", not a.get("training_mode", 0))
        if len(n.output) > 1 and any(n.output[1:]):
            self._reject(n, "BatchNormalization training outputs")
        gamma, beta, mean, var = (self._const(i, where).astype(np.float64) for i in n.input[1:5])
        scale = gamma / np.sqrt(var + float(a.get("epsilon", 1e-5)))
        w, b = self.weights[f"{conv}.weight"], self.weights[f"{conv}.bias"]
        node = self.nodes[-1]
        # conv weight (C_out, C_in, k, k); transposed conv (C_in, C_out, 2, 2)
        w = w * (scale[:, None, None, None] if node.op == "conv" else scale[None, :, None, None])
        self.weights[f"{conv}.weight"], self.weights[f"{conv}.bias"] = w, (b - mean) * scale + beta
        self.alias[n.output[0]] = conv
        if src in self.shape:
            self.shape[n.output[0]] = self.shape[src]
        del self.pending_bn[src]

    def _op_Relu(self, n: Any, a: dict[str, Any], where: str) -> None:  # noqa: N802
        self._add(n, "relu", [self._act(n.input[0], where)], {}, self._in_shape(n))

    def _pool(self, n: Any, a: dict[str, Any], where: str, op: str) -> None:
        self._check(n, a, "kernel_shape", list(a.get("kernel_shape", [])) == [2, 2])
        self._check(n, a, "strides", list(a.get("strides", [1, 1])) == [2, 2])
        self._check(n, a, "pads", not any(a.get("pads", [0, 0, 0, 0])))
        self._check(n, a, "auto_pad", a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID"))
        self._check(n, a, "dilations", list(a.get("dilations", [1, 1])) == [1, 1])
        self._check(n, a, "storage_order", a.get("storage_order", 0) == 0)
        if len(n.output) > 1 and any(n.output[1:]):
            self._reject(n, "MaxPool indices output")
        s = self._in_shape(n)
        if s is not None and (s[2] % 2 or s[3] % 2):
            self._reject(n, f"pooling of odd size {s[2]}x{s[3]}")
        shape = None if s is None else (s[0], *sh.pool2x2(s[1:]))
        self._add(n, op, [self._act(n.input[0], where)], {}, shape)

    def _op_AveragePool(self, n: Any, a: dict[str, Any], where: str) -> None:  # noqa: N802
        self._pool(n, a, where, "avgpool")

    def _op_MaxPool(self, n: Any, a: dict[str, Any], where: str) -> None:  # noqa: N802
        self._pool(n, a, where, "maxpool")

    def _op_Concat(self, n: Any, a: dict[str, Any], where: str) -> None:  # noqa: N802
        shapes = [self.shape.get(i) for i in n.input]
        axis = int(a.get("axis", 1))
        self._check(n, a, "axis", axis in (1, -3))
        srcs = [self._act(i, where) for i in n.input]
        shape = None
        if all(s is not None for s in shapes):
            shape = (shapes[0][0], *sh.concat([s[1:] for s in shapes]))
        if len(srcs) == 1:  # a one-input concat is an identity
            self.alias[n.output[0]] = srcs[0]
            if shape:
                self.shape[n.output[0]] = shape
            return
        self._add(n, "concat", srcs, {}, shape)

    def _upsample(self, n: Any, where: str, scales: np.ndarray | None, sizes: np.ndarray | None) -> None:
        s = self._in_shape(n)
        if scales is not None and np.size(scales):
            ok = [float(v) for v in np.asarray(scales).reshape(-1)] == [1.0, 1.0, 2.0, 2.0]
            if not ok:
                self._reject(n, f"resize scales {list(np.asarray(scales).reshape(-1))} (nearest x2 only)")
        elif sizes is not None and np.size(sizes):
            if s is None:
                self._reject(n, "Resize with 'sizes' on an input of unknown shape")
            if [int(v) for v in np.asarray(sizes).reshape(-1)] != [s[0], *sh.upsample2x(s[1:])]:
                self._reject(n, f"resize sizes {list(np.asarray(sizes).reshape(-1))} (x2 only)")
        else:
            self._reject(n, "Resize without scales or sizes")
        shape = None if s is None else (s[0], *sh.upsample2x(s[1:]))
        self._add(n, "upsample", [self._act(n.input[0], where)], {}, shape)

    def _op_Resize(self, n: Any, a: dict[str, Any], where: str) -> None:  # noqa: N802
        mode = a.get("mode", "nearest")
        coord = a.get("coordinate_transformation_mode", "half_pixel")
        nearest = a.get("nearest_mode", "round_prefer_floor")
        if not _nearest_x2_ok(mode, coord, nearest):
            self._reject(
                n,
                f"Resize mode={mode!r} coordinate_transformation_mode={coord!r} "
                f"nearest_mode={nearest!r} (only nearest x2 pixel repetition)",
            )
        for key in ("antialias", "exclude_outside"):
            self._check(n, a, key, not a.get(key, 0))
        self._check(n, a, "keep_aspect_ratio_policy", a.get("keep_aspect_ratio_policy", "stretch") == "stretch")
        self._check(n, a, "axes", "axes" not in a)
        inp = list(n.input) + [""] * 4
        if inp[1] and n.input[1] not in self.consts:  # roi (opset 11+) is ignored unless tf_crop_and_resize
            self._const(inp[1], where)
        scales = self._const(inp[2], where) if inp[2] else None
        sizes = self._const(inp[3], where) if inp[3] else None
        self._upsample(n, where, scales, sizes)

    def _op_Upsample(self, n: Any, a: dict[str, Any], where: str) -> None:  # noqa: N802
        if a.get("mode", "nearest") != "nearest":
            self._reject(n, f"Upsample mode={a.get('mode')!r} (nearest only)")
        scales = np.asarray(a["scales"]) if "scales" in a else self._const(n.input[1], where)
        self._upsample(n, where, scales, None)

    def _op_Identity(self, n: Any, a: dict[str, Any], where: str) -> None:  # noqa: N802
        self._act(n.input[0], where)  # only reached when the input is unknown: this raises

    def _is_final(self, n: Any) -> bool:
        return n.output[0] == self.g.output[0].name

    def _op_ArgMax(self, n: Any, a: dict[str, Any], where: str) -> None:  # noqa: N802
        self._check(n, a, "axis", int(a.get("axis", 0)) in (1, -3))
        self._check(n, a, "select_last_index", not a.get("select_last_index", 0))
        if not self._is_final(n):
            raise ModelError(f"{where}: ArgMax must produce the graph output")
        self._add(n, "argmax", [self._act(n.input[0], where)], {}, None)

    def _op_Softmax(self, n: Any, a: dict[str, Any], where: str) -> None:  # noqa: N802
        """A channel softmax that ends the graph does not change the argmax: dropped."""
        self._check(n, a, "axis", int(a.get("axis", -1 if n.op_type == "Softmax" else 1)) in (1, -3))
        if not self._is_final(n):
            raise ModelError(f"{where}: {n.op_type} is only supported as the last op (before the argmax)")
        self.alias[n.output[0]] = self._act(n.input[0], where)

    _op_LogSoftmax = _op_Softmax  # noqa: N815


def load_onnx(source: str | Path | bytes, *, check_model: bool = True) -> Network:
    """Import an ONNX model (path or serialized bytes) as a validated :class:`Network`.

    Weights are folded in float64 and stored as float32. Raises :class:`ModelError` on any
    op, attribute or structure the secure protocol does not support, naming it.
    """
    onnx, _ = _onnx()
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            model = onnx.load_from_string(bytes(source))
        else:
            p = Path(source)
            if not p.is_file():
                raise ModelError(f"ONNX file not found: {p}")
            model = onnx.load(str(p))
        if check_model:
            onnx.checker.check_model(model)
    except ModelError:
        raise
    except Exception as e:  # onnx raises DecodeError, ValidationError, ...
        raise ModelError(f"not a valid ONNX model: {e}") from None
    net = _Importer(model).run()
    net.weights = {k: np.asarray(v, dtype=np.float32) for k, v in net.weights.items()}
    return net


def onnx_input_size(source: str | Path | bytes) -> tuple[int, int] | None:
    """(H, W) of the ONNX input when it is static, else None (to fill Preprocessing.input_size)."""
    onnx, _ = _onnx()
    model = onnx.load_from_string(bytes(source)) if isinstance(source, (bytes, bytearray)) else onnx.load(str(source))
    inits = {t.name for t in model.graph.initializer}
    for i in model.graph.input:
        if i.name not in inits:
            d = [x.dim_value if x.HasField("dim_value") else None for x in i.type.tensor_type.shape.dim]
            return (d[2], d[3]) if len(d) == 4 and d[2] and d[3] else None
    return None


def model_from_onnx(
    source: str | Path | bytes,
    *,
    name: str = "onnx_model",
    preprocessing: Preprocessing | None = None,
    quantization: Quantization | None = None,
    planes: tuple[str, ...] = ("xy",),
    metadata: dict[str, Any] | None = None,
) -> Model:
    """A complete :class:`Model` around one imported network serving ``planes``.

    Without ``preprocessing`` the default HU window is used with the ONNX input's static size
    (when it has one); the model is validated before it is returned.
    """
    data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    net = load_onnx(data)
    pp = preprocessing or Preprocessing()
    size = onnx_input_size(data)
    if preprocessing is None and size is not None:
        pp.input_size = size
    model = Model(
        name=name,
        networks={"main": net},
        plane_networks={p: "main" for p in planes},
        quantization=quantization or Quantization(),
        preprocessing=pp,
        metadata=dict(metadata or {}, source="onnx"),
    )
    model.validate()
    return model
