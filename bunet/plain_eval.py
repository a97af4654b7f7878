"""Plaintext evaluation for validation studies: the float model's and the fixed-point reference's
masks of slices the client sends in the clear (``PlainEval`` in protos/bunet.proto).

Only for public labelled sets: the server sees the images. It returns masks only, the same
output the secure path gives, so it reveals nothing more about the weights than a secure job
does. A server offers it only when started with ``--allow-plain-eval``; the limits of a job
(slices, pixels per slice) apply to every request.
"""

from __future__ import annotations

import numpy as np

from .model.format import Model
from .model.plan import Plan
from .model.reference import float_labels, run_plan
from .protocol.session import Limits
from .service.proto import bunet_pb2

PIXEL_DTYPE = np.dtype("<f4")  # the wire layout of PlainEvalRequest.pixels
LABEL_DTYPE = np.uint8


class PlainEvaluator:
    """The server's handler: ``PlainEvalRequest`` -> ``PlainEvalReply``; ``ValueError`` (one line)
    for a request it refuses."""

    def __init__(self, model: Model, plans: dict[str, Plan], limits: Limits) -> None:
        self.model = model
        self.plans = plans  # the compiled plans the secure jobs run: the same integers
        self.limits = limits

    def __call__(self, req: bunet_pb2.PlainEvalRequest) -> bunet_pb2.PlainEvalReply:
        x = self._slices(req)
        net = self.model.networks[req.network]
        fl = float_labels(net, x).astype(LABEL_DTYPE)
        fx = run_plan(self.plans[req.network], x).astype(LABEL_DTYPE)
        return bunet_pb2.PlainEvalReply(float_labels=fl.tobytes(), fixed_labels=fx.tobytes())

    def _slices(self, req: bunet_pb2.PlainEvalRequest) -> np.ndarray:
        """The request's pixels as (slices, channels, height, width) float32, or ValueError."""
        if req.network not in self.plans:
            raise ValueError(f"unknown network {req.network!r}")
        n, c, h, w = req.slices, req.channels, req.height, req.width
        if not 1 <= n <= self.limits.max_slices:
            raise ValueError(f"request of {n} slices is outside the server's limit of 1..{self.limits.max_slices}")
        if h * w > self.limits.max_pixels or min(h, w) < 1:
            raise ValueError("slice size is over the server's limit")
        want_c = int(self.model.networks[req.network].graph.input.attrs.get("channels", 1))
        if c != want_c:
            raise ValueError(f"the network takes {want_c} channel(s), the request has {c}")
        if len(req.pixels) != n * c * h * w * PIXEL_DTYPE.itemsize:
            raise ValueError("pixel data does not match the announced shape")
        x = np.frombuffer(req.pixels, dtype=PIXEL_DTYPE).reshape(n, c, h, w).astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError("pixel data holds NaN or infinity")
        return x


def request(network: str, x: np.ndarray) -> bunet_pb2.PlainEvalRequest:
    """The client's request for slices x (n, C, H, W)."""
    n, c, h, w = x.shape
    return bunet_pb2.PlainEvalRequest(
        network=network,
        slices=n,
        channels=c,
        height=h,
        width=w,
        pixels=np.ascontiguousarray(x, dtype=PIXEL_DTYPE).tobytes(),
    )


def labels(reply: bunet_pb2.PlainEvalReply, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(float labels, fixed-point labels), each (n, H, W), from a reply; ValueError if malformed."""
    size = int(np.prod(shape))
    if len(reply.float_labels) != size or len(reply.fixed_labels) != size:
        raise ValueError("the server's plaintext masks do not match the slices sent")
    return (
        np.frombuffer(reply.float_labels, dtype=LABEL_DTYPE).reshape(shape),
        np.frombuffer(reply.fixed_labels, dtype=LABEL_DTYPE).reshape(shape),
    )
