"""Plaintext engines: float inference, and fixed-point inference that does exactly the ring
arithmetic of the secure protocol (same plan, same integer rule), for bit-for-bit comparison."""

from __future__ import annotations

import numpy as np

from .. import ring
from .executor import execute
from .format import Network, Quantization
from .plan import Plan, compile_plan
from .steps import CircuitStep, Input, Linear, Shape


def _conv_float(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    B, C, H, W = x.shape
    Co, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = H + 2 * pad - k + 1, W + 2 * pad - k + 1
    out = np.zeros((B, Co, Ho, Wo), dtype=x.dtype)
    for u in range(k):
        for v in range(k):
            out += np.einsum("oc,bchw->bohw", w[:, :, u, v], xp[:, :, u : u + Ho, v : v + Wo], optimize=True)
    return out + b[None, :, None, None]


def float_forward(net: Network, x: np.ndarray, *, keep: bool = False) -> np.ndarray | dict[str, np.ndarray]:
    """Float inference: x (B, C, H, W) -> logits (B, K, H, W) (the input of the argmax node).

    ``keep=True`` returns every node's output by name instead.
    """
    t: dict[str, np.ndarray] = {}
    dt = np.float64 if x.dtype == np.float64 else np.float32
    for n in net.graph.nodes:
        a = [t[i] for i in n.inputs]
        if n.op == "input":
            t[n.name] = np.asarray(x, dtype=dt)
        elif n.op == "conv":
            t[n.name] = _conv_float(
                a[0],
                net.weights[f"{n.name}.weight"].astype(dt),
                net.weights[f"{n.name}.bias"].astype(dt),
                int(n.attrs.get("pad", 0)),
            )
        elif n.op == "conv_transpose":
            w = net.weights[f"{n.name}.weight"].astype(dt)
            B, _, H, W = a[0].shape
            y = np.einsum("couv,bchw->bohuwv", w, a[0], optimize=True).reshape(B, w.shape[1], 2 * H, 2 * W)
            t[n.name] = y + net.weights[f"{n.name}.bias"].astype(dt)[None, :, None, None]
        elif n.op == "relu":
            t[n.name] = np.maximum(a[0], 0)
        elif n.op in ("maxpool", "avgpool"):
            B, C, H, W = a[0].shape
            win = a[0].reshape(B, C, H // 2, 2, W // 2, 2)
            t[n.name] = win.max(axis=(3, 5)) if n.op == "maxpool" else win.mean(axis=(3, 5))
        elif n.op == "upsample":
            t[n.name] = ring.upsample2x(a[0])
        elif n.op == "concat":
            t[n.name] = np.concatenate(a, axis=1)
        elif n.op == "argmax":
            t[n.name] = a[0]
    return t if keep else t[net.graph.output.name]


class PlainBackend:
    """The reference backend: every step on plaintext ring values, by the rule the step states."""

    def __init__(self, x: np.ndarray, frac_bits: int, ring_bits: int) -> None:
        self.x, self.frac_bits, self.ring_bits = x, frac_bits, ring_bits

    def input(self, step: Input, shape: Shape) -> np.ndarray:
        return ring.encode(self.x, self.frac_bits, self.ring_bits)

    def linear(self, step: Linear, x: np.ndarray, in_shape: Shape) -> np.ndarray:
        return step.plain(x, self.ring_bits)

    def circuit(self, step: CircuitStep, rows: np.ndarray) -> np.ndarray:
        return step.plain(rows, self.ring_bits)


def run_plan(plan: Plan, x: np.ndarray, *, keep: bool = False) -> np.ndarray | dict[str, np.ndarray]:
    """Fixed-point inference of a compiled plan on float input x (B, C, H, W) in [0, 1].

    Returns the labels (B, H, W) int64, or every tensor by name with ``keep=True``.
    """
    t = execute(plan, PlainBackend(x, plan.frac_bits, plan.ring_bits), x.shape[2], x.shape[3], keep=keep)
    return t if keep else t[plan.output]


def fixed_forward(net: Network, x: np.ndarray, quant: Quantization) -> np.ndarray:
    """Fixed-point labels (B, H, W) for float input x; compiles the plan on each call."""
    return run_plan(compile_plan(net, quant), x)


def float_labels(net: Network, x: np.ndarray) -> np.ndarray:
    """Float-model labels (B, H, W): argmax of the logits, ties to the lowest class."""
    return np.argmax(float_forward(net, x), axis=1)
