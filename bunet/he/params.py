"""BFV parameters for HomConv: plain modulus t = 2^l, NTT-friendly small primes, noise budget.

Why these choices (see also the module docstring of :mod:`bunet.he`):

* Coefficient modulus q is a product of K primes p_i < 2^22, each = 1 mod 2N (negacyclic NTT).
  Residues below 2^22 make every product fit exactly in a float64 (2^44) and sums of up to
  2^9 such products stay exact, so the native kernels accumulate over input channels with
  FMA and reduce once per output slot.
* The primes are chosen so that q = 1 mod t.  In BFV with t not dividing q the term
  (q mod t) * floor(W*m / t) lands in the noise; with q = 1 mod t it is at most ||W||_1.
* The bound on the pre-flooding noise B_w is worst case (bounded noise sampler, ternary key),
  so decryption is correct deterministically, not with high probability.
* Flooding adds a uniform integer in [-F, F) to every returned c0 coefficient, with
  F >= 2^60 * N * B_w: statistical distance <= 2^-61 per ciphertext from a weight-independent
  distribution, so <= 2^-41 per job of at most FLOOD_JOB_CIPHERTEXTS = 2^20 returned ciphertexts
  (the server refuses larger jobs, the client splits its scans below the bound).
* q is at most the HomomorphicEncryption.org 128-bit bound for N (checked by SEAL itself).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from functools import cache

from bunet import ring

#: HomomorphicEncryption.org standard, classical 128-bit security, ternary secret: max log2(q).
MAX_LOGQ_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438}
PRIME_BITS = 22  # residues < 2^22: products < 2^44, exact in float64 with 2^9 accumulations
NOISE_ETA = 21  # centred binomial, variance 10.5 (sigma 3.24 >= 3.2), |e| <= 21
FLOOD_SD_BITS = 60  # statistical distance of flooding <= 2^-(FLOOD_SD_BITS + 1) per returned ciphertext
#: Returned ciphertexts per job the flooding bound covers: 2^20 * 2^-61 = 2^-41 per job.
FLOOD_JOB_CIPHERTEXTS = 1 << 20
MIN_RING_BITS, MAX_RING_BITS = 2, 40
#: Version of the encodings behind the parameters (in the digest every message carries).
#: 3: layer plans pack input channels (I') as well as output channels, flooding 2^-61 per
#: ciphertext; 2: radix-2 NTT with
#: bit-reversed evaluation order (native kernels); 1 was a four-step order.
PARAMS_VERSION = 3


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    for sp in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % sp == 0:
            return n == sp
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7, 11, 13, 17):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


@cache
def _candidates(n: int) -> tuple[int, ...]:
    """Primes p = 1 mod 2N below 2^PRIME_BITS, largest first."""
    step = 2 * n
    top = ((1 << PRIME_BITS) - 2) // step * step + 1
    return tuple(p for p in range(top, step, -step) if _is_prime(p))


def centred_q_mod_t(q: int, t: int) -> int:
    r = q % t
    return r - t if r > t // 2 else r


def noise_bound_pre_flood(weight_l1_bits: int, r_t: int) -> int:
    """Worst-case |noise| of c0 + c1*s that depends on the weights, at the full modulus q.

    Sum over inputs of w * e (|e| <= NOISE_ETA); |q mod t| * |floor(W*m/t)| with
    |floor(W*m/t)| <= ||W||_1 + 1; |q mod t| * ||W||_1 for the server adding its share to the
    input (x_c + x_s may exceed t); 2 for the rounding of the scaled plaintext terms.
    """
    l1 = 1 << weight_l1_bits
    return NOISE_ETA * l1 + abs(r_t) * (2 * l1 + 1) + 2 * max(1, abs(r_t))


def _needed_q(ring_bits: int, weight_l1_bits: int, n: int, r_t: int = 1) -> tuple[int, int]:
    """(minimum q, flood bits): the full noise must stay below q / (8 t) after flooding."""
    b_w = noise_bound_pre_flood(weight_l1_bits, r_t)
    flood_bits = FLOOD_SD_BITS + math.ceil(math.log2(n * b_w))
    rerand = NOISE_ETA * (2 * n + 1)  # -e*u + e1 + e2*s of the public-key re-randomisation
    total = (1 << flood_bits) + b_w + rerand + 2
    return 8 * (1 << ring_bits) * total, flood_bits


def _search_primes(n: int, ring_bits: int, q_min: int, q_max: int) -> tuple[int, ...] | None:
    """Deterministic meet-in-the-middle search for K primes with q = 1 mod 2^l and q in range."""
    cands = _candidates(n)
    mod = 1 << ring_bits
    k_min = max(1, math.ceil(math.log2(q_min) / PRIME_BITS))
    for k in range(k_min, k_min + 3):
        if k > len(cands):
            return None
        k1 = k // 2
        k2 = k - k1
        table: dict[int, list[tuple[int, ...]]] = {}
        for combo in itertools.combinations(range(len(cands)), k1):
            r = math.prod(cands[i] for i in combo) % mod
            table.setdefault(r, []).append(combo)
        for combo2 in itertools.combinations(range(len(cands)), k2):
            prod2 = math.prod(cands[i] for i in combo2)
            want = pow(prod2, -1, mod)
            for combo1 in table.get(want, []):
                if set(combo1) & set(combo2):
                    continue
                q = prod2 * math.prod(cands[i] for i in combo1)
                if q_min <= q <= q_max:
                    return tuple(sorted((cands[i] for i in set(combo1) | set(combo2)), reverse=True))
    return None


def _greedy_primes(n: int, ring_bits: int, weight_l1_bits: int, q_max: int) -> tuple[int, ...] | None:
    """Fallback when q = 1 mod t is out of reach (l > 2 log2(2N) - 2): budget for q mod t instead."""
    cands = _candidates(n)
    for k in range(1, len(cands) + 1):
        q = math.prod(cands[:k])
        if q > q_max:
            return None
        q_min, _ = _needed_q(ring_bits, weight_l1_bits, n, centred_q_mod_t(q, 1 << ring_bits))
        if q >= q_min:
            return cands[:k]
    return None


@dataclass(frozen=True)
class HEParams:
    """Public BFV parameters both parties agree on (compare :meth:`digest` at start-up)."""

    ring_bits: int
    poly_degree: int
    primes: tuple[int, ...]
    weight_l1_bits: int
    flood_bits: int
    down_bits: int  # c1 (and c0 before truncation) returned modulo 2^down_bits
    down_c0_bits: int  # top bits of c0 returned
    version: int = PARAMS_VERSION
    _seal_checked: bool = field(default=False, compare=False, repr=False)

    # ----- construction -------------------------------------------------------------
    @staticmethod
    def for_ring(ring_bits: int = 24, weight_l1_bits: int = 22) -> HEParams:
        """Smallest N (4096 or 8192) for which a prime set exists within the 128-bit bound.

        ``weight_l1_bits``: public bound log2 of max_o sum_{c,u,v} |W[o,c,u,v]| over every layer.
        """
        return _for_ring(int(ring_bits), int(weight_l1_bits))

    # ----- derived quantities -------------------------------------------------------
    @property
    def t(self) -> int:
        return 1 << self.ring_bits

    @property
    def q(self) -> int:
        return math.prod(self.primes)

    @property
    def n_primes(self) -> int:
        return len(self.primes)

    @property
    def delta(self) -> int:
        return self.q // self.t

    def to_bytes(self) -> bytes:
        d = asdict(self)
        d.pop("_seal_checked")
        d["primes"] = list(self.primes)
        return json.dumps(d, sort_keys=True).encode()

    @staticmethod
    def from_bytes(blob: bytes) -> HEParams:
        try:
            d = json.loads(blob.decode())
            d["primes"] = tuple(int(p) for p in d["primes"])
            p = HEParams(**d)
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise ValueError("malformed HE parameter blob") from exc
        p.validate()
        return p

    def digest(self) -> bytes:
        """16-byte hash carried in every message so mismatched parameters fail loudly."""
        return hashlib.sha256(self.to_bytes()).digest()[:16]

    # ----- checks -----------------------------------------------------------------------
    def validate(self) -> None:
        """Re-derive every security and correctness condition (used on blobs from the peer)."""
        if self.version != PARAMS_VERSION:
            raise ValueError(f"unsupported HE parameter version {self.version} (this build: {PARAMS_VERSION})")
        ring.check_ring_bits(self.ring_bits)
        if not MIN_RING_BITS <= self.ring_bits <= MAX_RING_BITS:
            raise ValueError(f"ring bits must be in [{MIN_RING_BITS}, {MAX_RING_BITS}]")
        n = self.poly_degree
        if n not in MAX_LOGQ_128 or n < 4096:
            raise ValueError("poly degree must be 4096, 8192 or 16384")
        if len(set(self.primes)) != len(self.primes) or not self.primes:
            raise ValueError("primes must be distinct")
        for p in self.primes:
            if p >= 1 << PRIME_BITS or p % (2 * n) != 1 or not _is_prime(p):
                raise ValueError("every prime must be < 2^22, prime, and 1 mod 2N")
        if self.q.bit_length() > MAX_LOGQ_128[n]:
            raise ValueError("coefficient modulus exceeds the 128-bit security bound")
        r_t = centred_q_mod_t(self.q, self.t)
        q_min, flood_bits = _needed_q(self.ring_bits, self.weight_l1_bits, n, r_t)
        if self.q < q_min or self.flood_bits != flood_bits:
            raise ValueError("parameters do not satisfy the noise bound")
        if self.down_bits != _down_bits(self.ring_bits, n) or self.down_c0_bits != self.ring_bits + 3:
            raise ValueError("inconsistent download precision")
        if not self._seal_checked:
            seal_check(self)
            object.__setattr__(self, "_seal_checked", True)


def _down_bits(ring_bits: int, n: int) -> int:
    """Download modulus 2^m with 2^m / t = 16 N: rounding noise 2 + 2||s||_1 stays below a third."""
    return ring_bits + int(math.log2(n)) + 4


@cache
def _for_ring(ring_bits: int, weight_l1_bits: int) -> HEParams:
    if not MIN_RING_BITS <= ring_bits <= MAX_RING_BITS:
        raise ValueError(f"ring bits must be in [{MIN_RING_BITS}, {MAX_RING_BITS}], got {ring_bits}")
    if not 0 <= weight_l1_bits <= 30:
        raise ValueError("weight_l1_bits must be in [0, 30]")
    for n in (4096, 8192, 16384):
        q_min, flood_bits = _needed_q(ring_bits, weight_l1_bits, n)
        q_max = (1 << MAX_LOGQ_128[n]) - 1
        if q_min > q_max:
            continue
        primes = _search_primes(n, ring_bits, q_min, q_max) or _greedy_primes(n, ring_bits, weight_l1_bits, q_max)
        if primes is None:
            continue
        flood_bits = _needed_q(ring_bits, weight_l1_bits, n, centred_q_mod_t(math.prod(primes), 1 << ring_bits))[1]
        p = HEParams(ring_bits, n, primes, weight_l1_bits, flood_bits, _down_bits(ring_bits, n), ring_bits + 3)
        p.validate()
        return p
    raise ValueError("no parameter set found for this ring width and weight bound")


def seal_check(params: HEParams) -> None:
    """Let SEAL itself validate the parameters with its 128-bit security check switched on."""
    import tenseal.sealapi as seal

    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(params.poly_degree)
    parms.set_coeff_modulus([seal.Modulus(p) for p in params.primes])
    parms.set_plain_modulus(seal.Modulus(params.t))
    ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not ctx.parameters_set():
        raise ValueError(f"SEAL rejects the parameters: {ctx.parameters_error_message()}")
