"""A ReLU feeding a 2x2 max-pool (and a skip connection), on additive shares, as sign-mode ReLUs.

Every value's ReLU with truncation (``MaxTrunc``, one round), then the window maximum by pairs,
``max(x, y) = y + ReLU(x - y)`` (two more rounds for 4 values). The ReLU outputs lie in
[0, 2^(m-1)) (m = in_bits - shift), so a difference fits m signed bits and its ReLU is a sign-mode
ReLU without truncation (``MaxTrunc(in_bits=m, shift=0)``); the differences and sums are local.
At (24, 24, 8): 4 x 272.3 + 3 x 165.6 = 1,586 bytes per window (ot_k = 4), under half of one fused
circuit per window (each value's adder shared by its ReLU and the max).

Both parties call :func:`relu_pool` on their own shares with their own ``run`` (their half of a
garbled-circuit round); the local arithmetic is per row, so a caller holding both parties' shares
may stack them along the first axis (``bench/gc.py`` does).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import ring
from .engine import MaxTrunc

# (op, round name, (m, 1) shares) -> (m,) re-shared outputs: one party's half of a round
Run = Callable[[MaxTrunc, str, np.ndarray], np.ndarray]


def relu_pool_ops(ring_bits: int, in_bits: int, shift: int, chain: bool = True) -> tuple[MaxTrunc, MaxTrunc]:
    """The two rounds' ops: the ReLU with truncation, and the ReLU of a difference of its outputs
    (``chain``: their carries through linked look-ups, ``MaxTrunc.chain``)."""
    return (
        MaxTrunc(ring_bits=ring_bits, in_bits=in_bits, shift=shift, chain=chain),
        MaxTrunc(ring_bits=ring_bits, in_bits=in_bits - shift, shift=0, chain=chain),
    )


def relu_pool(
    run: Run, windows: np.ndarray, *, ring_bits: int, in_bits: int, shift: int, chain: bool = True
) -> np.ndarray:
    """Shares of windows (n, k) -> shares (n, k + 1): the k ReLU outputs (``ring.relu_pool``'s
    elements), then the window max (its pool). Rounds: "relu", then "max0", "max1", ..."""
    relu, cmp = relu_pool_ops(ring_bits, in_bits, shift, chain)
    n, k = windows.shape
    el = run(relu, "relu", np.ascontiguousarray(windows.reshape(-1, 1))).reshape(n, k)
    cur, level = el, 0
    while cur.shape[1] > 1:
        h = cur.shape[1] // 2
        x, y = cur[:, :h], cur[:, h : 2 * h]
        r = run(cmp, f"max{level}", np.ascontiguousarray(ring.sub(x, y, ring_bits).reshape(-1, 1)))
        cur = np.concatenate([ring.add(y, r.reshape(n, h), ring_bits), cur[:, 2 * h :]], axis=1)
        level += 1
    return np.concatenate([el, cur], axis=1)
