"""Exact RNS arithmetic on float64 arrays, and the negacyclic NTT (native, ``bunet.he._native``).

Every residue is an integer below p < 2^22 stored in a float64.  A product of two centred
residues is below 2^42 and sums of up to 2^10 of them stay below 2^53, so float64 arithmetic
is exact; reductions are x - rint(x / p) * p.  The NTT is a radix-2 Cooley-Tukey transform
(natural order in, bit-reversed evaluation order out; Gentleman-Sande back) in C with an
AVX2+FMA path chosen at run time.  The evaluation order is a fixed permutation, which is all
a pointwise product needs; both parties use this one transform.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np

from ._native import ffi, lib

F64 = np.float64
THREADS = max(1, min(2, os.cpu_count() or 1))


_MOD_BLOCK = 1 << 15  # elements per pass of mod_inplace: its temporary stays in cache


def mod_inplace(x: np.ndarray, p: np.ndarray | float, pinv: np.ndarray | float) -> np.ndarray:
    """Centred lazy reduction in place: exact float64 integers |x| < 2^52 -> |x| <= p/2 + 1.

    p, pinv: scalars, or one per row of x shaped (K, 1, ..., 1). Large arrays go in blocks of
    _MOD_BLOCK elements: four whole-array passes through a full-size temporary took 1.5 s for a
    (5, 4096, 2048) array, the blocks 0.07 s (the server's kernel preparation is mostly this)."""
    pa, pia = np.asarray(p, dtype=F64), np.asarray(pinv, dtype=F64)
    rows = x.shape[0] if x.ndim and pa.size > 1 else 1
    if (
        x.size <= _MOD_BLOCK
        or not x.flags.c_contiguous
        or pa.size != rows
        or pia.size != rows
        or (rows > 1 and pa.shape != (rows,) + (1,) * (x.ndim - 1))
    ):
        q = np.multiply(x, pinv)
        np.rint(q, out=q)
        q *= p
        x -= q
        return x
    xf = x.reshape(rows, -1)
    pc, pic = pa.reshape(-1, 1), pia.reshape(-1, 1)
    blk = max(1024, _MOD_BLOCK // rows)
    q = np.empty((rows, min(blk, xf.shape[1])), dtype=F64)
    for s in range(0, xf.shape[1], blk):
        xb = xf[:, s : s + blk]
        qb = q[:, : xb.shape[1]]
        np.multiply(xb, pic, out=qb)
        np.rint(qb, out=qb)
        qb *= pc
        xb -= qb
    return x


def canon(x: np.ndarray, p: np.ndarray | float) -> np.ndarray:
    """Centred residues -> [0, p), in place."""
    x += np.where(x < 0, p, 0.0)
    return x


def mod(x: np.ndarray, p: np.ndarray | float, pinv: np.ndarray | float) -> np.ndarray:
    return canon(mod_inplace(np.array(x, dtype=F64, copy=True), p, pinv), p)


def _primitive_root_2n(p: int, n: int) -> int:
    """A primitive 2N-th root of unity mod p (p = 1 mod 2N)."""
    order = 2 * n
    for g in range(2, p):
        psi = pow(g, (p - 1) // order, p)
        if pow(psi, n, p) == p - 1:
            return psi
    raise ValueError("no primitive root")


def _centred_int(v: int, p: int) -> int:
    v %= p
    return v - p if v > p // 2 else v


def _powers(g: int, count: int, p: int) -> np.ndarray:
    """g^e mod p for e < count, by repeated doubling of a vector (int64, exact for p < 2^31)."""
    out = np.ones(count, dtype=np.int64)
    step, filled = g % p, 1
    while filled < count:
        take = min(filled, count - filled)
        out[filled : filled + take] = out[:take] * step % p
        filled += take
        step = step * step % p
    return out


def _bitrev(n: int) -> np.ndarray:
    bits = n.bit_length() - 1
    idx = np.arange(n)
    rev = np.zeros(n, dtype=np.int64)
    for b in range(bits):
        rev |= ((idx >> b) & 1) << (bits - 1 - b)
    return rev


def f64_ptr(a: np.ndarray) -> Any:
    """A ``double *`` into a C-contiguous float64 array (no copy)."""
    if a.dtype != F64 or not a.flags.c_contiguous:
        raise ValueError("expected a C-contiguous float64 array")
    return ffi.cast("double *", ffi.from_buffer(a))


def ptr(ctype: str, a: np.ndarray | bytes | bytearray | memoryview) -> Any:
    """A typed pointer into a contiguous buffer (no copy); the caller keeps ``a`` alive."""
    if isinstance(a, np.ndarray) and not a.flags.c_contiguous:
        raise ValueError("expected a C-contiguous array")
    return ffi.cast(ctype, ffi.from_buffer(a))


class RNS:
    """The K-prime basis of q with NTT tables; arrays carry the prime as axis 0 unless noted."""

    def __init__(self, primes: tuple[int, ...], n: int) -> None:
        if n < 16 or n & (n - 1):
            raise ValueError("N must be a power of two >= 16")
        self.primes = primes
        self.n = n
        self.k = len(primes)
        self.pf = np.array(primes, dtype=F64)
        self.pinv = 1.0 / self.pf
        q = 1
        for p in primes:
            q *= p
        self.q = q
        # CRT: c/q = sum_i [c_i * (q/p_i)^-1]_{p_i} / p_i  (mod 1)
        self.crt_inv = np.array([_centred_int(pow(q // p % p, -1, p), p) for p in primes], dtype=F64)
        rev = _bitrev(n)
        tw = np.empty((self.k, n))
        itw = np.empty((self.k, n))
        ninv = np.empty(self.k)
        for i, p in enumerate(primes):
            psi = _primitive_root_2n(p, n)
            pw = _powers(psi, n, p)
            ipw = _powers(pow(psi, -1, p), n, p)
            tw[i] = np.where(pw[rev] > p // 2, pw[rev] - p, pw[rev])
            itw[i] = np.where(ipw[rev] > p // 2, ipw[rev] - p, ipw[rev])
            ninv[i] = _centred_int(pow(n, -1, p), p)
        self._tables = (tw, itw, ninv)  # kept alive: the C context points into them
        ctx = ffi.new("bh_rns *")
        ctx.k, ctx.n = self.k, n
        ctx.p, ctx.pinv = f64_ptr(self.pf), f64_ptr(self.pinv)
        ctx.tw, ctx.itw, ctx.ninv = f64_ptr(tw), f64_ptr(itw), f64_ptr(ninv)
        ctx.crt = f64_ptr(self.crt_inv)
        self.ctx = ctx

    def col(self, shape_tail: int) -> tuple[np.ndarray, np.ndarray]:
        """p and 1/p shaped (K, 1, ..., 1) for broadcasting against (K, ...) arrays."""
        s = (self.k,) + (1,) * shape_tail
        return self.pf.reshape(s), self.pinv.reshape(s)

    def reduce(self, x: np.ndarray) -> np.ndarray:
        """In-place centred reduction of an array shaped (K, ...)."""
        p, pinv = self.col(x.ndim - 1)
        return mod_inplace(x, p, pinv)

    def canon(self, x: np.ndarray) -> np.ndarray:
        """In-place: centred residues (K, ...) -> [0, p)."""
        return canon(x, self.col(x.ndim - 1)[0])

    def from_int(self, x: np.ndarray) -> np.ndarray:
        """Signed or unsigned integer array -> (K, ...) residues in [0, p) (exact for |x| < 2^63)."""
        x = np.asarray(x)
        out = np.empty((self.k,) + x.shape, dtype=F64)
        xi = x.astype(np.int64, copy=False)
        for i, p in enumerate(self.primes):
            out[i] = np.mod(xi, p).astype(F64)
        return out

    def small(self, x: np.ndarray) -> np.ndarray:
        """Small signed integers (|x| <= p/2, e.g. noise or ternary) as centred residues (K, ...)."""
        return np.broadcast_to(np.asarray(x, dtype=F64), (self.k,) + np.shape(x))

    def from_uint(self, x: np.ndarray) -> np.ndarray:
        """Integers in [0, 2^52) -> centred residues (K, ...) using float arithmetic only."""
        xf = np.asarray(x).astype(F64)
        out = np.empty((self.k,) + xf.shape)
        for i in range(self.k):
            out[i] = xf
            mod_inplace(out[i], self.pf[i], self.pinv[i])
        return out

    def delta_residues(self, delta: int) -> np.ndarray:
        """Centred residues of an integer constant (e.g. Delta), shape (K,)."""
        return np.array([_centred_int(delta, p) for p in self.primes], dtype=F64)

    def mul_const(self, x: np.ndarray, c: int) -> np.ndarray:
        """x * c mod q for centred residues x (K, ...) and an integer constant, in place."""
        for i, cc in enumerate(self.delta_residues(c)):
            x[i] *= cc
            mod_inplace(x[i], self.pf[i], self.pinv[i])
        return x

    def _transform(self, a: np.ndarray, inverse: bool) -> np.ndarray:
        a = np.asarray(a, dtype=F64)
        shp = a.shape
        if shp[0] != self.k or shp[-1] != self.n:
            raise ValueError("expected a (K, ..., N) residue array")
        x = np.ascontiguousarray(np.moveaxis(a.reshape(self.k, -1, self.n), 0, 1))  # (count, K, N)
        if np.may_share_memory(x, a):
            x = x.copy()
        if x.size and np.abs(x).max() > 2.0**22:
            self.reduce(x.transpose(1, 0, 2))
        fn = lib.bh_ntt_inv if inverse else lib.bh_ntt_fwd
        fn(self.ctx, f64_ptr(x), x.shape[0], THREADS)
        return np.ascontiguousarray(np.moveaxis(x, 1, 0)).reshape(shp)

    def forward(self, a: np.ndarray) -> np.ndarray:
        """(K, ..., N) -> NTT form per prime (new array, centred)."""
        return self._transform(a, False)

    def inverse(self, a: np.ndarray) -> np.ndarray:
        return self._transform(a, True)

    def to_pow2(self, x: np.ndarray, bits: int) -> np.ndarray:
        """round(2^bits * c / q) mod 2^bits for c given by centred residues (K, ...), as uint64.

        Float rounding adds at most K * 2^(bits-52) < 1 to the exact rounding error (bits <= 50);
        the noise analysis budgets |error| <= 2 per coefficient.
        """
        if bits > 50:
            raise ValueError("download precision above 50 bits is not supported")
        xs = np.ascontiguousarray(x, dtype=F64).reshape(self.k, -1)
        if xs.size and np.abs(xs).max() > 2.0**22:
            xs = self.reduce(xs.copy())
        out = np.empty(xs.shape[1], dtype=np.uint64)
        lib.bh_to_pow2(self.ctx, f64_ptr(xs), xs.shape[1], bits, ptr("uint64_t *", out))
        return out.reshape(np.shape(x)[1:])


@lru_cache(maxsize=8)
def rns_for(primes: tuple[int, ...], n: int) -> RNS:
    return RNS(primes, n)
