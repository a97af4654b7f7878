"""The one walk over a compiled plan, for every party: the reference and both halves of the protocol.

Each step computes its output from its inputs' tensors through a :class:`~bunet.model.steps.Backend`
(``bunet.model.reference.PlainBackend``; ``bunet.protocol.session``'s server and client backends);
the two parties' backends exchange their messages in step order, so walking the same plan keeps them
in lock step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from .plan import Plan
from .steps import Backend, Step

OnStep = Callable[[Step, float], None]  # (step, perf_counter() when it started), after each step


def last_reads(plan: Plan) -> dict[int, list[str]]:
    """For each step index, the tensors it is the last step to read: dropped after it, so a party
    holds only live shares (all of them to the end of a job: about 0.5 GB per party at 512x512)."""
    last: dict[str, int] = {}
    for i, step in enumerate(plan.steps):
        for name in step.inputs:
            last[name] = i
    drops: dict[int, list[str]] = {}
    for name, i in last.items():
        drops.setdefault(i, []).append(name)
    return drops


def execute(
    plan: Plan, backend: Backend, height: int, width: int, *, keep: bool = False, on_step: OnStep | None = None
) -> dict[str, np.ndarray]:
    """Run every step of ``plan`` for slices of ``height`` x ``width``; returns the tensors still live
    at the end (the output; every tensor with ``keep=True``)."""
    shapes = plan.shapes(height, width)
    drops = {} if keep else last_reads(plan)
    t: dict[str, np.ndarray] = {}
    for idx, step in enumerate(plan.steps):
        t0 = time.perf_counter()
        t.update(step.run(backend, [t[i] for i in step.inputs], shapes))
        for name in drops.get(idx, ()):
            del t[name]
        if on_step is not None:
            on_step(step, t0)
    return t
