"""Shape rules of the layers, (C, H, W) per slice: the one place both the layer graph
(``Graph.shapes``) and the plan's steps (``bunet.model.steps``) take them from."""

from __future__ import annotations

Shape = tuple[int, int, int]


def conv(c_out: int, k: int, pad: int, s: Shape) -> Shape:
    """k x k convolution, stride 1, zero padding ``pad``."""
    d = 2 * pad - k + 1
    return (c_out, s[1] + d, s[2] + d)


def conv_transpose2x2(c_out: int, s: Shape) -> Shape:
    return (c_out, 2 * s[1], 2 * s[2])


def pool2x2(s: Shape) -> Shape:
    return (s[0], s[1] // 2, s[2] // 2)


def upsample2x(s: Shape) -> Shape:
    return (s[0], 2 * s[1], 2 * s[2])


def concat(ins: list[Shape]) -> Shape:
    """Channel concatenation (the inputs' H, W agree)."""
    return (sum(s[0] for s in ins), *ins[0][1:])


def labels(s: Shape) -> Shape:
    """One class label per pixel."""
    return (1, *s[1:])
