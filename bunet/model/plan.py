"""Fixed-point lowering: a network + quantization -> a flat plan of ring operations.

The plan is what both the plaintext fixed-point reference and the secure protocol execute, so
they compute the same integers by construction. Every tensor carries an exponent ``e`` (its
fraction bits). Rules, with activation fraction bits f and weight fraction bits f_w:

* input: ``encode(x, f)``, e = f;
* conv / conv_transpose: weights ``round(w * 2^f_w)``, bias ``round(b * 2^(e + f_w))``, output
  e + f_w (exact in the ring; this is the HE step);
* avgpool: a 2x2 *sum* (local on shares, exact), e + 2: the sum of four values with exponent e
  is their mean with exponent e + 2, so the 1/4 is folded into the next layer's scale;
* upsample: local, e unchanged;
* relu: the garbled-circuit step ``nonlinear(shift = e - f, relu)`` back to e = f;
* maxpool: ``nonlinear`` over the 2x2 window; fused with a preceding relu when that relu has no
  other consumer (max and ReLU and the floor shift commute, so the result is identical);
* a relu whose consumers are a maxpool *and* others (a U-Net encoder level: pool and skip): one
  step per 2x2 window, ``ring.relu_pool``, defining both tensors: ``out`` is the pool, and
  ``elements`` names the ReLU output (secure: ``bunet.gc.relu_pool``, the ReLUs and then
  the window max over their outputs by sign-mode comparisons). Its results are exactly those of the
  two separate steps (the ReLU, then the pool reading the ReLU's b - s bits); it is used only when
  the pool would read exactly those bits (no narrower ``in_bits`` configured for the pool);
* concat: inputs at different exponents are brought to the smallest common one above f by
  exact local multiplication by a power of two when that stays <= f + 2, else truncated to f;
* a linear op whose input has e > f + 2 gets a truncation (``nonlinear``, no relu) first;
* argmax: over classes, on the low ``in_bits`` of the logits.

Value ranges: every tensor also carries ``bits``, a signed width that provably holds its exact
value (a linear output may use the whole ring; a ReLU that drops s of b bits leaves b - s; max,
concat and upsampling keep the width; a 2x2 sum adds 2, a scale by 2^k adds k). A non-linear
step reads only ``in_bits = min(configured, bits)`` low bits of its input, which changes nothing
in the result (the value fits) but shrinks the circuit: a max-pool after a ReLU compares 16-bit
instead of 24-bit values at the default quantization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .format import Model, Network, Quantization
from .graph import LINEAR_OPS, ModelError, Node
from .steps import (
    Argmax,
    CircuitStep,
    Concat,
    Input,
    Linear,
    MaxPool,
    Relu,
    ReluPool,
    Scale,
    Shape,
    Step,
    SumPool,
    Truncate,
    Upsample,
)


@dataclass
class Plan:
    steps: list[Step]
    ring_bits: int
    frac_bits: int
    in_channels: int

    @property
    def output(self) -> str:
        return self.steps[-1].out

    def public(self) -> list[dict[str, Any]]:
        return [s.public() for s in self.steps]

    def relu_count(self, height: int, width: int) -> int:
        """Values made by non-linear (garbled-circuit) steps per slice of the given size (a fused
        ReLU + max-pool counts its ReLU outputs and its pooled outputs, as the separate steps would)."""
        shapes = self.shapes(height, width)
        n = 0
        for s in self.steps:
            if isinstance(s, CircuitStep) and not isinstance(s, Argmax):
                for o in s.outs:
                    c, h, w = shapes[o]
                    n += c * h * w
        return n

    def shapes(self, height: int, width: int) -> dict[str, Shape]:
        """(C, H, W) of every tensor, by each step's own rule."""
        out: dict[str, Shape] = {}
        for s in self.steps:
            out.update(s.shapes([out[i] for i in s.inputs] or [(self.in_channels, height, width)]))
        return out


def _linear_attrs(node: Node, wshape: tuple[int, ...]) -> dict[str, Any]:
    if node.op == "conv":
        return {
            "op": "conv",
            "k": int(wshape[2]),
            "pad": int(node.attrs.get("pad", 0)),
            "in_channels": int(wshape[1]),
            "out_channels": int(wshape[0]),
        }
    return {"op": "conv_transpose", "k": 2, "pad": 0, "in_channels": int(wshape[0]), "out_channels": int(wshape[1])}


def compile_plan(net: Network, quant: Quantization, weight_shapes: dict[str, tuple[int, ...]] | None = None) -> Plan:
    """Lower a network to ring steps. Without weights (the client's view) pass ``weight_shapes``
    (``{node: shape}``); the steps then carry no weight arrays."""
    quant.validate()
    L, f, fw = quant.ring_bits, quant.frac_bits, quant.weight_frac_bits
    has_weights = bool(net.weights)
    steps: list[Step] = []
    exp: dict[str, int] = {}
    bits: dict[str, int] = {}  # signed width holding each tensor's exact value (see module docstring)
    g = net.graph

    def in_bits(x: str, name: str) -> int:
        return min(int(quant.in_bits.get(name, L)), bits[x])

    def nonlinear(name: str, x: str, shift: int, relu: bool, window: int) -> None:
        b = in_bits(x, name)
        e = exp[x] - shift
        if window == 4:
            steps.append(MaxPool(name, [x], e, in_bits=b, shift=shift, relu=relu))
        else:
            steps.append((Relu if relu else Truncate)(name, [x], e, in_bits=b, shift=shift))
        exp[name] = e
        bits[name] = b - shift

    def shape_of(node: Node) -> tuple[int, ...]:
        if has_weights:
            return tuple(net.weights[f"{node.name}.weight"].shape)
        if weight_shapes is None or node.name not in weight_shapes:
            raise ModelError(f"no weight shape for {node.name!r}")
        return tuple(weight_shapes[node.name])

    def truncate(name: str, target: int, label: str) -> str:
        """Insert a truncation of tensor ``name`` down to exponent ``target``."""
        out = f"{name}:{label}"
        nonlinear(out, name, exp[name] - target, relu=False, window=1)
        return out

    fused: set[str] = set()  # relu nodes folded into the following maxpool
    pool_of: dict[str, str] = {}  # relu -> its maxpool, when the relu has other consumers too
    for node in g.nodes:
        if node.op == "relu":
            cons = g.consumers(node.name)
            pools = [c for c in cons if c.op == "maxpool"]
            if len(cons) == 1 and cons[0].op == "maxpool":
                fused.add(node.name)
            elif len(pools) == 1 and len(cons) > 1:
                pool_of[node.name] = pools[0].name
    pooled: set[str] = set()  # maxpool nodes computed by a fused ReLU + max-pool step

    alias: dict[str, str] = {}  # graph name -> tensor name in the plan

    def src(i: str) -> str:
        return alias.get(i, i)

    for node in g.nodes:
        ins = [src(i) for i in node.inputs]
        if node.op == "input":
            steps.append(Input(node.name, [], f, channels=int(node.attrs.get("channels", 1))))
            exp[node.name] = f
            bits[node.name] = L
        elif node.op in LINEAR_OPS:
            x = ins[0]
            if exp[x] > f + 2:
                x = truncate(x, f, "trunc")
            e_out = exp[x] + fw
            if e_out >= L - 1:
                raise ModelError(f"{node.name}: exponent {e_out} does not fit a {L}-bit ring")
            attrs = _linear_attrs(node, shape_of(node))
            w = b = None
            if has_weights:
                w = np.floor(net.weights[f"{node.name}.weight"].astype(np.float64) * 2.0**fw + 0.5).astype(np.int64)
                b = np.floor(net.weights[f"{node.name}.bias"].astype(np.float64) * 2.0**e_out + 0.5).astype(np.int64)
            steps.append(Linear(node.name, [x], e_out, **attrs, weight=w, bias=b))
            exp[node.name] = e_out
            bits[node.name] = L
        elif node.op == "relu":
            if node.name in fused:
                alias[node.name] = ins[0]  # the maxpool step applies it
                continue
            x = ins[0]
            shift = max(exp[x] - f, 0)
            b = in_bits(x, node.name)
            pool = pool_of.get(node.name)
            if pool is not None and min(int(quant.in_bits.get(pool, L)), b - shift) == b - shift:
                # ReLU + max-pool in one step; the pool reads the ReLU's b - shift bits, as unfused
                steps.append(ReluPool(pool, [x], exp[x] - shift, in_bits=b, shift=shift, elements=node.name))
                for t in (node.name, pool):
                    exp[t] = exp[x] - shift
                    bits[t] = b - shift
                pooled.add(pool)
                continue
            nonlinear(node.name, x, shift, relu=True, window=1)
        elif node.op == "maxpool":
            if node.name in pooled:
                continue
            x = ins[0]
            nonlinear(node.name, x, max(exp[x] - f, 0), relu=node.inputs[0] in fused, window=4)
        elif node.op == "avgpool":
            steps.append(SumPool(node.name, ins, exp[ins[0]] + 2))
            exp[node.name] = exp[ins[0]] + 2
            bits[node.name] = min(L, bits[ins[0]] + 2)
        elif node.op == "upsample":
            steps.append(Upsample(node.name, ins, exp[ins[0]]))
            exp[node.name] = exp[ins[0]]
            bits[node.name] = bits[ins[0]]
        elif node.op == "concat":
            target = max(exp[i] for i in ins)
            if target > f + 2:
                target = f
            aligned = []
            for k, i in enumerate(ins):
                if exp[i] > target:
                    i = truncate(i, target, f"trunc{k}")
                elif exp[i] < target:
                    out = f"{i}:scale{k}"
                    steps.append(Scale(out, [i], target, factor_log2=target - exp[i]))
                    exp[out] = target
                    bits[out] = min(L, bits[i] + target - exp[i])
                    i = out
                aligned.append(i)
            steps.append(Concat(node.name, aligned, target))
            exp[node.name] = target
            bits[node.name] = max(bits[i] for i in aligned)
        elif node.op == "argmax":
            steps.append(Argmax(node.name, ins, 0, in_bits=in_bits(ins[0], node.name)))
        else:  # pragma: no cover - graph.validate rejects unknown ops
            raise ModelError(f"unsupported op {node.op!r}")
    return Plan(steps, L, f, int(g.input.attrs.get("channels", 1)))


def model_plans(model: Model) -> dict[str, Plan]:
    """One plan per network of a model (weights included)."""
    return {name: compile_plan(net, model.quantization) for name, net in model.networks.items()}
