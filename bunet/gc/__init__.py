"""Garbled circuits for BUNET's non-linear layers (C engine in native/, bound with cffi).

The server garbles, the client evaluates::

    from bunet.gc import Garbler, Evaluator, MaxTrunc, Argmax
    ev, g = Evaluator(), Garbler()
    ev.finish_setup(g.finish_hello(ev.finish_hello(g.hello(ev.hello()))))
    op = MaxTrunc(ring_bits=24, in_bits=24, shift=8, relu=True, k=1)
    for j in range(op.link_passes):    # chained sign mode: the carry's link passes first
        g.open_link(op, ev.link_request(op, yc, g.link_pre(op, ys, j), j))
    pre = g.pre(op, ys)                # ops with a carry look-up (op.lut_bits > 0) only
    resp, out_s = g.respond(op, ev.request(op, yc, pre), ys)
    out_c = ev.finish(op, resp)
    for post in ev.take_posts():       # sign-mode ReLUs: the client's post-messages complete out_s
        out_s = g.post(op, post, out_s)

Correlated OTs are silent OT (``bunet.gc.silent``) or SoftSpoken (``ot="softspoken"``), the same on both parties.
A ReLU feeding a 2x2 max-pool is ``relu_pool`` over these ops (three rounds).
"""

from . import silent
from .engine import DEFAULT_OT, OT_BACKENDS, Argmax, Evaluator, Garbler, MaxTrunc, OTCheckFailed
from .pool import relu_pool, relu_pool_ops

__all__ = [
    "DEFAULT_OT",
    "OT_BACKENDS",
    "Argmax",
    "Evaluator",
    "Garbler",
    "MaxTrunc",
    "OTCheckFailed",
    "relu_pool",
    "relu_pool_ops",
    "silent",
]
