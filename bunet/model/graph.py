"""The layer graph of a segmentation network: what the model file stores and every engine walks.

A network works on one 2D slice at a time, as tensors (batch, channels, height, width). Its
nodes are in topological order; each names its inputs. Weights are float32 arrays kept beside
the graph under ``"<node>.weight"`` and ``"<node>.bias"``.

Ops and their attributes:

==================  ======================================================================
``input``           ``channels``: the slice's channels (the first node, exactly one)
``conv``            ``pad``: zero padding; weight (C_out, C_in, k, k), bias (C_out); stride 1
``conv_transpose``  weight (C_in, C_out, 2, 2), bias (C_out); 2x2 kernel, stride 2
``relu``            --
``maxpool``         2x2 window, stride 2
``avgpool``         2x2 window, stride 2
``concat``          channel concatenation of two or more inputs
``upsample``        nearest-neighbour, factor 2
``argmax``          over channels: the per-pixel class label (the last node, exactly one)
==================  ======================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import shapes as sh

OPS = ("input", "conv", "conv_transpose", "relu", "maxpool", "avgpool", "concat", "upsample", "argmax")
LINEAR_OPS = ("conv", "conv_transpose")
_ARITY = {"input": 0, "concat": None}  # None: two or more; every other op: exactly one


class ModelError(ValueError):
    """A model file or graph that is malformed or unsupported (message names the problem)."""


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "inputs": list(self.inputs), "attrs": dict(self.attrs)}

    @staticmethod
    def from_json(d: dict[str, Any]) -> Node:
        try:
            return Node(str(d["name"]), str(d["op"]), [str(i) for i in d.get("inputs", [])], dict(d.get("attrs", {})))
        except (KeyError, TypeError) as e:
            raise ModelError(f"malformed graph node {d!r:.80}: {e}") from None


@dataclass
class Graph:
    nodes: list[Node]

    @property
    def input(self) -> Node:
        return self.nodes[0]

    @property
    def output(self) -> Node:
        return self.nodes[-1]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def to_json(self) -> list[dict[str, Any]]:
        return [n.to_json() for n in self.nodes]

    @staticmethod
    def from_json(items: list[dict[str, Any]]) -> Graph:
        if not isinstance(items, list):
            raise ModelError("graph must be a list of nodes")
        return Graph([Node.from_json(d) for d in items])

    def validate(self, weights: dict[str, Any]) -> None:
        """Check structure and weight shapes; raise ModelError naming the first problem."""
        if not self.nodes or self.nodes[0].op != "input":
            raise ModelError("graph must start with one 'input' node")
        if self.nodes[-1].op != "argmax":
            raise ModelError("graph must end with one 'argmax' node")
        seen: set[str] = set()
        for n in self.nodes:
            if n.op not in OPS:
                raise ModelError(f"unsupported op {n.op!r} in node {n.name!r}")
            if n.name in seen:
                raise ModelError(f"duplicate node name {n.name!r}")
            arity = _ARITY.get(n.op, 1)
            if arity is None and len(n.inputs) < 2 or arity is not None and len(n.inputs) != arity:
                raise ModelError(f"node {n.name!r} ({n.op}) has {len(n.inputs)} inputs")
            for i in n.inputs:
                if i not in seen:
                    raise ModelError(f"node {n.name!r} reads {i!r} before it is defined")
            if n.op in ("input", "argmax") and n is not self.nodes[0] and n is not self.nodes[-1]:
                raise ModelError(f"'{n.op}' may only be the first/last node ({n.name!r})")
            if n.op in LINEAR_OPS:
                for key in (f"{n.name}.weight", f"{n.name}.bias"):
                    if key not in weights:
                        raise ModelError(f"missing weight {key!r}")
                w = weights[f"{n.name}.weight"]
                if w.ndim != 4 or (n.op == "conv" and w.shape[2] != w.shape[3]):
                    raise ModelError(f"{n.name}.weight has shape {tuple(w.shape)}")
                if n.op == "conv_transpose" and tuple(w.shape[2:]) != (2, 2):
                    raise ModelError(f"{n.name}: only 2x2 stride-2 transposed convolutions are supported")
            seen.add(n.name)
        m = self.min_size_multiple()
        self.shapes(int(self.input.attrs.get("channels", 1)), m, m, weights)  # channel counts must line up

    def shapes(
        self, channels: int, height: int, width: int, weights: dict[str, Any]
    ) -> dict[str, tuple[int, int, int]]:
        """(C, H, W) of every node's output for an input of the given size."""
        out: dict[str, tuple[int, int, int]] = {}
        for n in self.nodes:
            ins = [out[i] for i in n.inputs]
            if n.op == "input":
                want = int(n.attrs.get("channels", channels))
                if want != channels:
                    raise ModelError(f"model expects {want} input channels, got {channels}")
                out[n.name] = (channels, height, width)
            elif n.op in LINEAR_OPS:
                w = weights[f"{n.name}.weight"]
                c_in, c_out = (w.shape[1], w.shape[0]) if n.op == "conv" else (w.shape[0], w.shape[1])
                if c_in != ins[0][0]:
                    raise ModelError(f"{n.name}: weight expects {c_in} input channels, got {ins[0][0]}")
                if n.op == "conv":
                    out[n.name] = sh.conv(c_out, w.shape[2], int(n.attrs.get("pad", 0)), ins[0])
                else:
                    out[n.name] = sh.conv_transpose2x2(c_out, ins[0])
            elif n.op in ("maxpool", "avgpool"):
                if ins[0][1] % 2 or ins[0][2] % 2:
                    raise ModelError(f"{n.name}: 2x2 pooling of an odd size {ins[0][1]}x{ins[0][2]}")
                out[n.name] = sh.pool2x2(ins[0])
            elif n.op == "upsample":
                out[n.name] = sh.upsample2x(ins[0])
            elif n.op == "concat":
                if len({s[1:] for s in ins}) != 1:
                    raise ModelError(f"{n.name}: concatenating different sizes {ins}")
                out[n.name] = sh.concat(ins)
            else:  # relu, argmax
                out[n.name] = ins[0] if n.op == "relu" else sh.labels(ins[0])
        return out

    def min_size_multiple(self) -> int:
        """Input height and width must be multiples of 2^(number of poolings on the deepest path)."""
        depth: dict[str, int] = {}
        for n in self.nodes:
            d = max((depth[i] for i in n.inputs), default=0)
            depth[n.name] = d + (1 if n.op in ("maxpool", "avgpool") else 0)
        return 2 ** max(depth.values())
