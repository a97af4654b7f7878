"""Exact RNS arithmetic on float64 arrays, and a negacyclic NTT built from BLAS matrix products.

Every residue is an integer below p < 2^22 stored in a float64.  A product of two residues is
below 2^44 and a sum of up to 2^9 of them below 2^53, so float64 arithmetic (and BLAS, in any
summation order) is exact.  The NTT is the four-step algorithm: N = n1 * n2, two dense
DFT matrices applied with matmul (sums of n <= 128 products < 2^51) and a twiddle multiply.
The evaluation order of the transform is a fixed permutation, which is all a pointwise
product needs.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

F64 = np.float64


def mod_inplace(x: np.ndarray, p: np.ndarray | float, pinv: np.ndarray | float) -> np.ndarray:
    """Centred lazy reduction in place: exact float64 integers |x| < 2^53 -> |x| <= p/2 + 1.

    Every intermediate stays centred, so a product is below 2^42 and sums of up to 2^10 of
    them stay exact; only values leaving the module are made canonical (:func:`canon`).
    """
    q = np.multiply(x, pinv)
    np.rint(q, out=q)
    q *= p
    x -= q
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


def _centred(a: np.ndarray, p: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.int64) % p
    return np.where(a > p // 2, a - p, a).astype(F64)


def _powers(g: int, count: int, p: int) -> np.ndarray:
    out = np.empty(count, dtype=np.int64)
    v = 1
    for i in range(count):
        out[i] = v
        v = v * g % p
    return out


class PrimeNTT:
    """Negacyclic NTT of length N modulo one prime, vectorised over leading axes.

    Four-step: index i = i1 + n1*i2, output k = j2 + n2*j1 stored at [j2, j1].  The twist by
    psi^i is folded into the first DFT matrix (psi^(n1*i2)) and the twiddles (psi^i1).
    """

    def __init__(self, p: int, n: int) -> None:
        self.p, self.n = p, n
        self.pf, self.pinv = float(p), 1.0 / p
        n1 = 64
        n2 = n // n1
        self.n1, self.n2 = n1, n2
        psi = _primitive_root_2n(p, n)
        psi_inv = pow(psi, -1, p)
        pw = _powers(psi, 2 * n, p)          # psi^e, e < 2N  (omega^e = psi^(2e))
        pwi = _powers(psi_inv, 2 * n, p)
        i2 = np.arange(n2)
        j2 = np.arange(n2)
        i1 = np.arange(n1)
        j1 = np.arange(n1)
        # forward
        e = (2 * n1 * np.outer(j2, i2) + n1 * i2[None, :]) % (2 * n)
        self.f2 = _centred(pw[e], p)                                        # [j2, i2]
        e = (2 * np.outer(j2, i1) + i1[None, :]) % (2 * n)
        self.tw = _centred(pw[e], p)                                        # [j2, i1]
        e = (2 * n2 * np.outer(i1, j1)) % (2 * n)
        self.f1 = _centred(pw[e], p)                                        # [i1, j1]
        # inverse
        self.f1i = _centred(pwi[(2 * n2 * np.outer(j1, i1)) % (2 * n)], p)   # [j1, i1]
        e = (2 * np.outer(j2, i1) + i1[None, :]) % (2 * n)
        self.twi = _centred(pwi[e], p)                                      # [j2, i1]
        n_inv = pow(n, -1, p)
        e = (2 * n1 * np.outer(i2, j2) + n1 * i2[:, None]) % (2 * n)
        self.f2i = _centred(pwi[e] * n_inv % p, p)                          # [i2, j2]

    def _red(self, x: np.ndarray) -> np.ndarray:
        return mod_inplace(x, self.pf, self.pinv)

    def forward(self, a: np.ndarray) -> np.ndarray:
        """(..., N) residues (|a| <= p) -> (..., N) centred evaluations at psi^(odd)."""
        shp = a.shape
        x = a.reshape(-1, self.n2, self.n1)                     # [i2, i1]
        x = self._red(np.matmul(self.f2, x))                    # [j2, i1]
        x *= self.tw
        x = self._red(np.matmul(self._red(x), self.f1))         # [j2, j1]
        return x.reshape(shp)

    def inverse(self, a: np.ndarray) -> np.ndarray:
        shp = a.shape
        x = a.reshape(-1, self.n2, self.n1)
        x = self._red(np.matmul(x, self.f1i))                   # [j2, i1]
        x *= self.twi
        x = self._red(np.matmul(self.f2i, self._red(x)))        # [i2, i1]
        return x.reshape(shp)


class RNS:
    """The K-prime basis of q with an NTT per prime; arrays carry the prime as axis 0."""

    def __init__(self, primes: tuple[int, ...], n: int) -> None:
        self.primes = primes
        self.n = n
        self.k = len(primes)
        self.ntts = [PrimeNTT(p, n) for p in primes]
        self.pf = np.array(primes, dtype=F64)
        self.pinv = 1.0 / self.pf
        q = 1
        for p in primes:
            q *= p
        self.q = q
        # CRT: c/q = sum_i [c_i * (q/p_i)^-1]_{p_i} / p_i  (mod 1)
        self.crt_inv = np.array([pow(q // p % p, -1, p) for p in primes], dtype=F64)

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
        """Signed or unsigned integer array -> (K, ...) residues (exact for |x| < 2^63)."""
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
        """Integers in [0, 2^53) -> centred residues (K, ...) using float arithmetic only."""
        xf = np.asarray(x).astype(F64)
        out = np.empty((self.k,) + xf.shape)
        for i in range(self.k):
            out[i] = xf
            mod_inplace(out[i], self.pf[i], self.pinv[i])
        return out

    def mul_const(self, x: np.ndarray, c: int) -> np.ndarray:
        """x * c mod q for centred residues x (K, ...) and an integer constant, in place."""
        for i, p in enumerate(self.primes):
            cc = c % p
            cc = cc - p if cc > p // 2 else cc
            x[i] *= float(cc)
            mod_inplace(x[i], self.pf[i], self.pinv[i])
        return x

    def forward(self, a: np.ndarray) -> np.ndarray:
        """(K, ..., N) -> NTT form per prime."""
        out = np.empty(a.shape)
        for i, nt in enumerate(self.ntts):
            out[i] = nt.forward(a[i])
        return out

    def inverse(self, a: np.ndarray) -> np.ndarray:
        out = np.empty(a.shape)
        for i, nt in enumerate(self.ntts):
            out[i] = nt.inverse(a[i])
        return out

    def to_pow2(self, x: np.ndarray, bits: int) -> np.ndarray:
        """round(2^bits * c / q) mod 2^bits for c given by (centred) residues (K, ...), as uint64.

        Float rounding adds at most K * 2^(bits-52) < 1 to the exact rounding error (bits <= 50);
        the noise analysis budgets |error| <= 2 per coefficient.
        """
        if bits > 50:
            raise ValueError("download precision above 50 bits is not supported")
        acc = None
        scale = float(1 << bits)
        for i in range(self.k):
            y = mod_inplace(x[i] * self.crt_inv[i], self.pf[i], self.pinv[i])   # centred is fine
            y *= scale / self.pf[i]
            acc = y if acc is None else acc + y
        v = np.rint(acc).astype(np.int64).view(np.uint64)
        return v & np.uint64((1 << bits) - 1)


@lru_cache(maxsize=8)
def rns_for(primes: tuple[int, ...], n: int) -> RNS:
    return RNS(primes, n)
