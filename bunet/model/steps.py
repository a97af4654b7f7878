"""The steps of a compiled plan: one class per kind, each owning its shape rule and its ring rule.

A plan (``bunet.model.plan``) is a list of these; :func:`bunet.model.executor.execute` walks it
over a :class:`Backend`. A step computes what is the same for every party itself (local linear
maps on shares, the window layout a circuit reads) and asks the backend only for what differs:

* ``Backend.input``: the first tensor (client: its encoded slice; server: zeros; reference: the slice);
* ``Backend.linear``: a convolution (reference: in the clear; the two parties: HomConv);
* ``Backend.circuit``: a non-linear step on rows of windows (reference: :meth:`CircuitStep.plain`,
  the ``bunet.ring`` rule; the two parties: :meth:`CircuitStep.secure`, garbled circuits).

Every step has ``out`` (the tensor it defines), ``inputs`` and ``exp`` (its output's fraction
bits). Shapes are (C, H, W) per slice; tensors carry a leading batch axis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol

import numpy as np

from .. import gc, ring
from . import shapes as sh
from .shapes import Shape

# one party's half of a garbled-circuit round: (op, round name, (n, k) rows) -> (n,) outputs or None
GcRun = Callable[[Any, str, np.ndarray], np.ndarray | None]


class Backend(Protocol):
    """What differs between the reference and the two parties (see the module docstring)."""

    ring_bits: int

    def input(self, step: Input, shape: Shape) -> np.ndarray: ...

    def linear(self, step: Linear, x: np.ndarray, in_shape: Shape) -> np.ndarray: ...

    def circuit(self, step: CircuitStep, rows: np.ndarray) -> np.ndarray | None: ...


@dataclass
class Step:
    out: str
    inputs: list[str]
    exp: int  # exponent (fraction bits) of the output
    phase: ClassVar[str | None] = "local"  # the timing phase a party books the step under

    @property
    def outs(self) -> list[str]:
        """Every tensor this step defines."""
        return [self.out]

    def shapes(self, ins: list[Shape]) -> dict[str, Shape]:
        """(C, H, W) of every tensor this step defines, from its inputs' shapes."""
        return {self.out: ins[0]}

    def run(self, backend: Backend, ins: list[np.ndarray], shapes: dict[str, Shape]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def public(self) -> dict[str, Any]:
        """What the client may know of this step: everything but weights."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("weight", "bias")}
        return {"step": type(self).__name__, **d}


@dataclass
class Input(Step):
    channels: int = 1
    phase: ClassVar[str | None] = None

    def shapes(self, ins: list[Shape]) -> dict[str, Shape]:
        return {self.out: ins[0]}  # the plan passes the slice's shape

    def run(self, backend: Backend, ins: list[np.ndarray], shapes: dict[str, Shape]) -> dict[str, np.ndarray]:
        return {self.out: backend.input(self, shapes[self.out])}


@dataclass
class Linear(Step):
    """A convolution ("conv": k x k, stride 1, zero padding) or a 2x2 stride-2 transposed one;
    weights ``round(w * 2^f_w)`` and bias at the output exponent (server only)."""

    op: str = "conv"
    k: int = 3
    pad: int = 0
    in_channels: int = 1
    out_channels: int = 1
    weight: np.ndarray | None = field(default=None, repr=False)
    bias: np.ndarray | None = field(default=None, repr=False)
    phase: ClassVar[str | None] = "he"

    def shapes(self, ins: list[Shape]) -> dict[str, Shape]:
        if self.op == "conv":
            return {self.out: sh.conv(self.out_channels, self.k, self.pad, ins[0])}
        return {self.out: sh.conv_transpose2x2(self.out_channels, ins[0])}

    def run(self, backend: Backend, ins: list[np.ndarray], shapes: dict[str, Shape]) -> dict[str, np.ndarray]:
        return {self.out: backend.linear(self, ins[0], shapes[self.inputs[0]])}

    def plain(self, x: np.ndarray, ring_bits: int) -> np.ndarray:
        """The exact ring result (the reference)."""
        if self.op == "conv":
            return ring.conv2d(x, self.weight, self.bias, self.pad, ring_bits)
        return ring.conv_transpose2x2(x, self.weight, self.bias, ring_bits)


@dataclass
class CircuitStep(Step):
    """A step computed in garbled circuits: ``in_bits`` low bits of the input are read."""

    in_bits: int = 0
    phase: ClassVar[str | None] = "gc"

    def rows(self, x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        """Share tensor -> (instances, window) rows, and the shape of the per-instance result."""
        raise NotImplementedError

    def gc_ops(self, ring_bits: int, in_shape: Shape) -> tuple[Any, ...]:
        """Every garbled-circuit op this step runs (message sizes)."""
        raise NotImplementedError

    def plain(self, rows: np.ndarray, ring_bits: int) -> np.ndarray:
        """The reference rule on rows of plaintext values."""
        raise NotImplementedError

    def secure(self, run: GcRun, rows: np.ndarray, ring_bits: int) -> np.ndarray | None:
        """One party's half on rows of its shares, by ``run`` (that party's garbled-circuit loop)."""
        raise NotImplementedError

    def run(self, backend: Backend, ins: list[np.ndarray], shapes: dict[str, Shape]) -> dict[str, np.ndarray]:
        rows, shape = self.rows(ins[0])
        out = backend.circuit(self, rows)
        return {} if out is None else {self.out: out.reshape(shape)}


@dataclass
class MaxTrunc(CircuitStep):
    """``ring.nonlinear``: the max over a window (1 or 4 values), optionally ReLU, then a floor shift."""

    shift: int = 0
    window: ClassVar[int] = 1
    relu: ClassVar[bool] = False

    def rows(self, x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        w = ring.pool_windows2x2(x) if self.window == 4 else x[..., None]
        return np.ascontiguousarray(w.reshape(-1, w.shape[-1])), w.shape[:-1]

    def op(self, ring_bits: int) -> gc.MaxTrunc:
        return gc.MaxTrunc(ring_bits=ring_bits, in_bits=self.in_bits, shift=self.shift, relu=self.relu, k=self.window)

    def gc_ops(self, ring_bits: int, in_shape: Shape) -> tuple[Any, ...]:
        return (self.op(ring_bits),)

    def plain(self, rows: np.ndarray, ring_bits: int) -> np.ndarray:
        return ring.nonlinear(rows, in_bits=self.in_bits, shift=self.shift, relu=self.relu, ring_bits=ring_bits)

    def secure(self, run: GcRun, rows: np.ndarray, ring_bits: int) -> np.ndarray | None:
        return run(self.op(ring_bits), "", rows)


@dataclass
class Truncate(MaxTrunc):
    """Fixed-point truncation by ``shift`` bits (before a linear step or a concatenation)."""


@dataclass
class Relu(MaxTrunc):
    """ReLU fused with the truncation back to the activation exponent."""

    relu: ClassVar[bool] = True


@dataclass
class MaxPool(MaxTrunc):
    """2x2 max-pool (with the truncation; ``relu``: a preceding ReLU with no other consumer folded in)."""

    relu: bool = False  # type: ignore[misc]
    window: ClassVar[int] = 4

    def shapes(self, ins: list[Shape]) -> dict[str, Shape]:
        return {self.out: sh.pool2x2(ins[0])}


@dataclass
class ReluPool(CircuitStep):
    """A ReLU whose consumers are a max-pool and others (a U-Net encoder level): defines both the
    pool (``out``) and the ReLU output (``elements``), equal to the two separate steps."""

    shift: int = 0
    elements: str = ""

    @property
    def outs(self) -> list[str]:
        return [self.out, self.elements]

    def shapes(self, ins: list[Shape]) -> dict[str, Shape]:
        return {self.out: sh.pool2x2(ins[0]), self.elements: ins[0]}

    def rows(self, x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        w = ring.pool_windows2x2(x)
        return np.ascontiguousarray(w.reshape(-1, 4)), w.shape[:-1]

    def gc_ops(self, ring_bits: int, in_shape: Shape) -> tuple[Any, ...]:
        return gc.relu_pool_ops(ring_bits, self.in_bits, self.shift)

    def plain(self, rows: np.ndarray, ring_bits: int) -> np.ndarray:
        el, pooled = ring.relu_pool(rows, in_bits=self.in_bits, shift=self.shift, ring_bits=ring_bits)
        return np.concatenate([el, pooled[:, None]], axis=1)

    def secure(self, run: GcRun, rows: np.ndarray, ring_bits: int) -> np.ndarray | None:
        def must(op: Any, rnd: str, r: np.ndarray) -> np.ndarray:
            out = run(op, rnd, r)
            assert out is not None  # re-shared outputs: both parties get theirs
            return out

        return gc.relu_pool(must, rows, ring_bits=ring_bits, in_bits=self.in_bits, shift=self.shift)

    def run(self, backend: Backend, ins: list[np.ndarray], shapes: dict[str, Shape]) -> dict[str, np.ndarray]:
        """(n, 5) per window: the 4 ReLU outputs in window order, then the max."""
        rows, shape = self.rows(ins[0])
        out = backend.circuit(self, rows)
        assert out is not None
        out = out.reshape(*shape, 5)
        return {self.elements: ring.pool_unwindows2x2(out[..., :4]), self.out: np.ascontiguousarray(out[..., 4])}


@dataclass
class Argmax(CircuitStep):
    """The class label per pixel over the logits' low ``in_bits``, revealed to the client only."""

    def shapes(self, ins: list[Shape]) -> dict[str, Shape]:
        return {self.out: sh.labels(ins[0])}

    def rows(self, x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        r = np.moveaxis(x, 1, -1)
        return np.ascontiguousarray(r.reshape(-1, r.shape[-1])), r.shape[:-1]

    def gc_ops(self, ring_bits: int, in_shape: Shape) -> tuple[Any, ...]:
        return (gc.Argmax(ring_bits=ring_bits, in_bits=self.in_bits, k=in_shape[0]),)

    def plain(self, rows: np.ndarray, ring_bits: int) -> np.ndarray:
        return ring.argmax(rows, in_bits=self.in_bits)

    def secure(self, run: GcRun, rows: np.ndarray, ring_bits: int) -> np.ndarray | None:
        return run(gc.Argmax(ring_bits=ring_bits, in_bits=self.in_bits, k=rows.shape[1]), "", rows)


@dataclass
class LocalStep(Step):
    """A linear map without weights, done on each additive share alone."""

    def apply(self, ins: list[np.ndarray], ring_bits: int) -> np.ndarray:
        raise NotImplementedError

    def run(self, backend: Backend, ins: list[np.ndarray], shapes: dict[str, Shape]) -> dict[str, np.ndarray]:
        return {self.out: self.apply(ins, backend.ring_bits)}


@dataclass
class SumPool(LocalStep):
    """2x2 sum (an average-pool whose 1/4 is folded into the exponent: e + 2)."""

    def shapes(self, ins: list[Shape]) -> dict[str, Shape]:
        return {self.out: sh.pool2x2(ins[0])}

    def apply(self, ins: list[np.ndarray], ring_bits: int) -> np.ndarray:
        return ring.sum_pool2x2(ins[0], ring_bits)


@dataclass
class Upsample(LocalStep):
    """Nearest-neighbour upsampling by 2."""

    def shapes(self, ins: list[Shape]) -> dict[str, Shape]:
        return {self.out: sh.upsample2x(ins[0])}

    def apply(self, ins: list[np.ndarray], ring_bits: int) -> np.ndarray:
        return ring.upsample2x(ins[0])


@dataclass
class Concat(LocalStep):
    """Channel concatenation (inputs aligned to one exponent by the compiler)."""

    def shapes(self, ins: list[Shape]) -> dict[str, Shape]:
        return {self.out: sh.concat(ins)}

    def apply(self, ins: list[np.ndarray], ring_bits: int) -> np.ndarray:
        return np.concatenate(ins, axis=1)


@dataclass
class Scale(LocalStep):
    """Exact multiplication by 2^factor_log2 (aligns a concatenation's inputs)."""

    factor_log2: int = 0

    def apply(self, ins: list[np.ndarray], ring_bits: int) -> np.ndarray:
        return ring.mul_const(ins[0], 1 << self.factor_log2, ring_bits)
