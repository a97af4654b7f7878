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
    """x mod p for exact float64 integers |x| < 2^53 (p may broadcast); result in [0, p)."""
    q = np.multiply(x, pinv)
    np.floor(q, out=q)
    q *= p
    np.subtract(x, q, out=x)
    # one correction each way covers the rounding of x * pinv
    x += np.where(x < 0, p, 0.0)
    x -= np.where(x >= p, p, 0.0)
    return x


def mod(x: np.ndarray, p: np.ndarray | float, pinv: np.ndarray | float) -> np.ndarray:
    return mod_inplace(np.array(x, dtype=F64, copy=True), p, pinv)


def _primitive_root_2n(p: int, n: int) -> int:
    """A primitive 2N-th root of unity mod p (p = 1 mod 2N)."""
    order = 2 * n
    for g in range(2, p):
        psi = pow(g, (p - 1) // order, p)
        if pow(psi, n, p) == p - 1:
            return psi
    raise ValueError("no primitive root")


def _dft_matrix(root: int, n: int, p: int) -> np.ndarray:
    e = np.outer(np.arange(n), np.arange(n)) % (p - 1)
    pw = np.array([pow(root, i, p) for i in range(n)], dtype=object)
    # root^(i*j) with i*j reduced mod n since root has order n
    return np.array([[int(pw[(i * j) % n]) for j in range(n)] for i in range(n)], dtype=F64) if e is not None else None


class PrimeNTT:
    """Negacyclic NTT of length N modulo one prime, vectorised over leading axes."""

    def __init__(self, p: int, n: int) -> None:
        self.p, self.n = p, n
        self.pf, self.pinv = float(p), 1.0 / p
        n1 = 64
        n2 = n // n1
        self.n1, self.n2 = n1, n2
        psi = _primitive_root_2n(p, n)
        omega = psi * psi % p
        inv = lambda a: pow(a, p - 2, p)  # noqa: E731
        idx = np.arange(n)
        self.twist = np.array([pow(psi, int(i), p) for i in idx], dtype=F64)
        n_inv = inv(n)
        psi_inv = inv(psi)
        self.untwist = np.array([pow(psi_inv, int(i), p) * n_inv % p for i in idx], dtype=F64)
        self.f2 = _dft_matrix(pow(omega, n1, p), n2, p)           # (j2, i2)
        self.f1 = _dft_matrix(pow(omega, n2, p), n1, p)           # (i1, j1), symmetric
        om_inv = inv(omega)
        self.f2i = _dft_matrix(pow(om_inv, n1, p), n2, p)
        self.f1i = _dft_matrix(pow(om_inv, n2, p), n1, p)
        j2 = np.arange(n2)[:, None]
        i1 = np.arange(n1)[None, :]
        ex = (j2 * i1) % n
        powers = [1] * n
        for k in range(1, n):
            powers[k] = powers[k - 1] * omega % p
        powers_inv = [1] * n
        for k in range(1, n):
            powers_inv[k] = powers_inv[k - 1] * om_inv % p
        pw = np.array(powers, dtype=F64)
        pwi = np.array(powers_inv, dtype=F64)
        self.tw = pw[ex]            # (n2, n1): omega^(i1*j2)
        self.twi = pwi[ex]

    def _red(self, x: np.ndarray) -> np.ndarray:
        return mod_inplace(x, self.pf, self.pinv)

    def forward(self, a: np.ndarray) -> np.ndarray:
        """(..., N) residues -> (..., N) evaluations at psi^(odd), fixed order."""
        shp = a.shape
        x = self._red(a * self.twist)
        x = x.reshape(-1, self.n2, self.n1)                     # [i2, i1]
        x = self._red(np.matmul(self.f2, x))                    # [j2, i1]
        x = self._red(x * self.tw)
        x = self._red(np.matmul(x, self.f1))                    # [j2, j1]
        return x.reshape(shp)

    def inverse(self, a: np.ndarray) -> np.ndarray:
        shp = a.shape
        x = a.reshape(-1, self.n2, self.n1)
        x = self._red(np.matmul(x, self.f1i))                   # [j2, i1]
        x = self._red(x * self.twi)
        x = self._red(np.matmul(self.f2i, x))                   # [i2, i1]
        x = x.reshape(shp)
        return self._red(x * self.untwist)


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
        """In-place mod for an array shaped (K, ...)."""
        p, pinv = self.col(x.ndim - 1)
        return mod_inplace(x, p, pinv)

    def from_int(self, x: np.ndarray) -> np.ndarray:
        """Signed or unsigned integer array -> (K, ...) residues (exact for |x| < 2^63)."""
        x = np.asarray(x)
        out = np.empty((self.k,) + x.shape, dtype=F64)
        xi = x.astype(np.int64, copy=False)
        for i, p in enumerate(self.primes):
            out[i] = np.mod(xi, p).astype(F64)
        return out

    def forward(self, a: np.ndarray) -> np.ndarray:
        """(K, ..., N) -> NTT form per prime."""
        return np.stack([nt.forward(a[i]) for i, nt in enumerate(self.ntts)])

    def inverse(self, a: np.ndarray) -> np.ndarray:
        return np.stack([nt.inverse(a[i]) for i, nt in enumerate(self.ntts)])

    def to_pow2(self, x: np.ndarray, bits: int) -> np.ndarray:
        """round(2^bits * c / q) mod 2^bits for c given by residues (K, ...) in [0, p_i), as uint64.

        Float rounding adds at most K * 2^(bits-52) < 1 to the exact rounding error (bits <= 50);
        the noise analysis budgets |error| <= 2 per coefficient.
        """
        if bits > 50:
            raise ValueError("download precision above 50 bits is not supported")
        acc = None
        scale = float(1 << bits)
        for i in range(self.k):
            y = mod_inplace(x[i] * self.crt_inv[i], self.pf[i], self.pinv[i])
            y *= scale / self.pf[i]
            acc = y if acc is None else acc + y
        v = np.rint(acc).astype(np.int64).astype(np.uint64)
        return v & np.uint64((1 << bits) - 1)


@lru_cache(maxsize=8)
def rns_for(primes: tuple[int, ...], n: int) -> RNS:
    return RNS(primes, n)
