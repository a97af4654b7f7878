"""Arithmetic in the ring Z_{2^l}: the one definition every party and reference shares.

Values of Z_{2^l} are held in ``numpy.uint64`` arrays with every element in ``[0, 2^l)``
(``1 <= l <= 64``). Additions and products are done in uint64, which wraps modulo 2^64,
and then reduced with :func:`reduce`; since 2^l divides 2^64 this is exact.

Fixed point: a real number x with ``e`` fraction bits is ``round(x * 2^e) mod 2^l``
(two's complement in l bits). The non-linear rule below is what the garbled circuits
compute and what the plaintext fixed-point reference computes, bit for bit:

``nonlinear(y, in_bits=b, shift=s, relu=r)`` over a window of k values ``y_0..y_{k-1}``:

1. ``v_j = signed_b(y_j mod 2^b)``: the low b bits of each value read as a b-bit two's
   complement number (b <= l is "the bits that enter the circuit"; b = l by default);
2. ``v = max_j v_j`` (k = 1: the value itself; k = 4: a 2x2 max-pool);
3. if r: ``v = max(v, 0)`` (ReLU);
4. ``out = floor(v / 2^s) mod 2^l`` (arithmetic shift: floor, also for negative v).

``argmax(y, in_bits=b)`` over K values: the smallest index j with the largest ``v_j``.
"""

from __future__ import annotations

import secrets

import numpy as np

U64 = np.uint64
MAX_RING_BITS = 64


def check_ring_bits(ring_bits: int) -> None:
    """Reject ring widths the uint64 representation cannot hold."""
    if not isinstance(ring_bits, (int, np.integer)) or not 1 <= ring_bits <= MAX_RING_BITS:
        raise ValueError(f"ring bits must be an integer in [1, {MAX_RING_BITS}], got {ring_bits!r}")


def mask(ring_bits: int) -> np.uint64:
    """2^l - 1 as uint64."""
    return U64((1 << ring_bits) - 1)


def reduce(a: np.ndarray, ring_bits: int) -> np.ndarray:
    """``a mod 2^l`` for a uint64 (or int64) array, as uint64."""
    return np.asarray(a).astype(U64, copy=False) & mask(ring_bits)


def from_signed(a: np.ndarray, ring_bits: int) -> np.ndarray:
    """Two's-complement embedding of signed integers into Z_{2^l}."""
    return np.asarray(a, dtype=np.int64).astype(U64) & mask(ring_bits)


def to_signed(a: np.ndarray, bits: int) -> np.ndarray:
    """Read the low ``bits`` bits of each element as a two's-complement integer (int64).

    For bits == 64 this is a plain reinterpretation.
    """
    a = np.asarray(a).astype(U64, copy=False)
    up = U64(64 - bits)
    # move bit (bits-1) to the sign position, then an arithmetic shift back sign-extends
    return (a << up).view(np.int64) >> np.int64(64 - bits)


def encode(x: np.ndarray, frac_bits: int, ring_bits: int) -> np.ndarray:
    """Fixed-point encoding ``floor(x * 2^e + 1/2) mod 2^l`` (round half up, deterministic)."""
    scaled = np.floor(np.asarray(x, dtype=np.float64) * float(2**frac_bits) + 0.5)
    return from_signed(scaled.astype(np.int64), ring_bits)


def decode(a: np.ndarray, frac_bits: int, ring_bits: int) -> np.ndarray:
    """Inverse of :func:`encode` (up to rounding): signed value / 2^e as float64."""
    return to_signed(a, ring_bits).astype(np.float64) / float(2**frac_bits)


def add(a: np.ndarray, b: np.ndarray, ring_bits: int) -> np.ndarray:
    return reduce(np.add(a, b, dtype=U64), ring_bits)


def sub(a: np.ndarray, b: np.ndarray, ring_bits: int) -> np.ndarray:
    return reduce(np.subtract(a, b, dtype=U64), ring_bits)


def neg(a: np.ndarray, ring_bits: int) -> np.ndarray:
    return reduce(np.negative(np.asarray(a, dtype=U64)), ring_bits)


def mul_const(a: np.ndarray, c: int, ring_bits: int) -> np.ndarray:
    """``a * c mod 2^l`` for a (possibly negative) Python integer c."""
    return reduce(np.multiply(a, U64(c % (1 << 64)), dtype=U64), ring_bits)


def random(shape: tuple[int, ...] | int, ring_bits: int) -> np.ndarray:
    """Uniform elements of Z_{2^l} from the OS CSPRNG (used for every mask)."""
    n = int(np.prod(shape))
    raw = np.frombuffer(secrets.token_bytes(8 * n), dtype=U64).copy()
    return reduce(raw, ring_bits).reshape(shape)


def share(x: np.ndarray, ring_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Split x into two uniformly random additive shares (x0 + x1 = x mod 2^l)."""
    x = reduce(x, ring_bits)
    x1 = random(x.shape, ring_bits)
    return sub(x, x1, ring_bits), x1


def nonlinear(y: np.ndarray, *, in_bits: int, shift: int, relu: bool, ring_bits: int) -> np.ndarray:
    """The fused non-linear rule (see module docstring) over the last axis as the window.

    ``y`` has shape (..., k); the result has shape (...) and lives in Z_{2^l}.
    """
    check_ring_bits(ring_bits)
    if not 1 <= in_bits <= ring_bits:
        raise ValueError(f"in_bits must be in [1, ring_bits={ring_bits}], got {in_bits}")
    if not 0 <= shift < in_bits:
        raise ValueError(f"shift must be in [0, in_bits={in_bits}), got {shift}")
    v = to_signed(y, in_bits).max(axis=-1)
    if relu:
        v = np.maximum(v, 0)
    return from_signed(v >> shift, ring_bits)  # >> on int64 is floor division by 2^s


def relu_pool(y: np.ndarray, *, in_bits: int, shift: int, ring_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """A ReLU feeding a max-pool and other consumers, over windows y (..., k) -> (elements, pooled).

    ``elements`` (..., k): the ReLU of each value, ``nonlinear(k = 1, relu=True)``; ``pooled`` (...):
    the max-pool of those ReLU outputs as the separate pooling step computes it, ``nonlinear`` over
    the window reading their b - s bits (they fit: 0 <= relu(v) >> s < 2^(b-s-1)). It equals
    ``nonlinear(y, relu=True)`` over the window, which is what the fused circuit computes.
    """
    elements = nonlinear(y[..., None], in_bits=in_bits, shift=shift, relu=True, ring_bits=ring_bits)
    pooled = nonlinear(elements, in_bits=in_bits - shift, shift=0, relu=False, ring_bits=ring_bits)
    return elements, pooled


def argmax(y: np.ndarray, *, in_bits: int) -> np.ndarray:
    """Smallest index of the largest signed value over the last axis (ties -> lowest index)."""
    return np.argmax(to_signed(y, in_bits), axis=-1).astype(np.int64)


# --- exact linear maps on Z_{2^l} tensors -------------------------------------------------
# Shapes: activations (B, C, H, W); conv weights (C_out, C_in, k, k) as signed integers
# (PyTorch's cross-correlation layout); transposed-conv weights (C_in, C_out, 2, 2).
# Exactness: x is split into limbs of LIMB_BITS bits and each limb is convolved in float64,
# which is exact while |limb| * sum|w| < 2^53; the limbs are recombined in uint64 mod 2^l.

LIMB_BITS = 16


def _limbs(x: np.ndarray, ring_bits: int) -> list[tuple[int, np.ndarray]]:
    x = reduce(x, ring_bits)
    return [
        (off, ((x >> U64(off)) & U64((1 << LIMB_BITS) - 1)).astype(np.float64))
        for off in range(0, ring_bits, LIMB_BITS)
    ]


def _combine(parts: list[tuple[int, np.ndarray]], ring_bits: int) -> np.ndarray:
    out = None
    for off, p in parts:
        v = np.rint(p).astype(np.int64).astype(U64) << U64(off)
        out = v if out is None else np.add(out, v, dtype=U64)
    return reduce(out, ring_bits)


def _check_exact(w: np.ndarray, fan_in_terms: int) -> None:
    bound = float(np.abs(w).max(initial=0)) * fan_in_terms * 2.0**LIMB_BITS
    if bound >= 2.0**53:
        raise ValueError("weights too large for exact evaluation (|w| * fan-in >= 2^37)")


def conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, pad: int, ring_bits: int) -> np.ndarray:
    """``y[b,o,i,j] = sum_{c,u,v} w[o,c,u,v] x[b,c,i+u-pad,j+v-pad] + bias[o]  (mod 2^l)``, stride 1."""
    B, C, H, W = x.shape
    Co, Ci, k, k2 = w.shape
    if Ci != C or k != k2:
        raise ValueError(f"conv weight {w.shape} does not fit input {x.shape}")
    Ho, Wo = H + 2 * pad - k + 1, W + 2 * pad - k + 1
    wf = np.asarray(w, dtype=np.float64)
    _check_exact(wf, C * k * k)
    parts = []
    for off, xl in _limbs(x, ring_bits):
        xp = np.pad(xl, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        acc = np.zeros((B, Co, Ho, Wo))
        for u in range(k):
            for v in range(k):
                acc += np.einsum("oc,bchw->bohw", wf[:, :, u, v], xp[:, :, u : u + Ho, v : v + Wo], optimize=True)
        parts.append((off, acc))
    y = _combine(parts, ring_bits)
    if bias is not None:
        y = add(y, from_signed(np.asarray(bias, dtype=np.int64), ring_bits)[None, :, None, None], ring_bits)
    return y


def conv_transpose2x2(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, ring_bits: int) -> np.ndarray:
    """2x2, stride-2 transposed convolution: ``y[b,o,2i+u,2j+v] = sum_c w[c,o,u,v] x[b,c,i,j] + bias[o]``."""
    B, C, H, W = x.shape
    Ci, Co, k, k2 = w.shape
    if Ci != C or (k, k2) != (2, 2):
        raise ValueError(f"transposed-conv weight {w.shape} does not fit input {x.shape}")
    wf = np.asarray(w, dtype=np.float64)
    _check_exact(wf, C)
    parts = []
    for off, xl in _limbs(x, ring_bits):
        acc = np.einsum("couv,bchw->bohuwv", wf, xl, optimize=True).reshape(B, Co, 2 * H, 2 * W)
        parts.append((off, acc))
    y = _combine(parts, ring_bits)
    if bias is not None:
        y = add(y, from_signed(np.asarray(bias, dtype=np.int64), ring_bits)[None, :, None, None], ring_bits)
    return y


def sum_pool2x2(x: np.ndarray, ring_bits: int) -> np.ndarray:
    """Sum over 2x2 windows, stride 2 (local on shares; H and W must be even)."""
    B, C, H, W = x.shape
    if H % 2 or W % 2:
        raise ValueError(f"2x2 pooling needs even height and width, got {H}x{W}")
    s = np.asarray(x, dtype=U64).reshape(B, C, H // 2, 2, W // 2, 2).sum(axis=(3, 5), dtype=U64)
    return reduce(s, ring_bits)


def pool_windows2x2(x: np.ndarray) -> np.ndarray:
    """(B, C, H, W) -> (B, C, H/2, W/2, 4): the 2x2 windows as the last axis, for max-pool."""
    B, C, H, W = x.shape
    if H % 2 or W % 2:
        raise ValueError(f"2x2 pooling needs even height and width, got {H}x{W}")
    return x.reshape(B, C, H // 2, 2, W // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(B, C, H // 2, W // 2, 4)


def pool_unwindows2x2(w: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pool_windows2x2`: (B, C, H/2, W/2, 4) -> (B, C, H, W)."""
    B, C, H2, W2, _ = w.shape
    return w.reshape(B, C, H2, W2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(B, C, 2 * H2, 2 * W2)


def upsample2x(x: np.ndarray) -> np.ndarray:
    """Nearest-neighbour x2 upsampling (local on shares)."""
    return np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)
