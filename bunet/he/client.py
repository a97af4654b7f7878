"""Client half of HomConv: holds the secret key, encrypts its share, decrypts its new share."""

from __future__ import annotations

import secrets
import struct

import numpy as np

from bunet import ring

from ..message import new_message
from ..native_errors import check
from . import wire
from ._native import ffi, lib
from .bfv import a_keys, plan_for, tiling, u64_ptr
from .layout import LayerSpec, Plan
from .params import HEParams
from .rand import Sampler, derive, uniform_mod
from .rns import THREADS, f64_ptr, ptr, rns_for

_U64 = np.uint64


class ClientHE:
    """Secret-key side.  Keys are generated here from the OS CSPRNG and never leave this object."""

    def __init__(self, params: HEParams) -> None:
        params.validate()
        self.params = params
        self.rns = rns_for(params.primes, params.poly_degree)
        self._rand = Sampler()
        n = params.poly_degree
        self._s = self._rand.ternary((n,))
        self._s_hat = self.rns.forward(np.array(self.rns.small(self._s)))  # (K, N) contiguous
        self._delta = self.rns.delta_residues(params.delta)
        # c1 * s at decryption: exact modulo three primes whose product exceeds 4 N 2^m (else the FFT path)
        top = sorted(range(self.rns.k), key=lambda i: -params.primes[i])[:3]
        big = len(top) == 3 and np.prod([params.primes[i] for i in top], dtype=object) > 4 * n << params.down_bits
        self._dec_primes = ffi.new("int[3]", top) if big else None
        # negacyclic convolution by a twisted length-N complex FFT: zeta^j, zeta = e^(i pi / N)
        self._twist = np.exp(1j * np.pi * np.arange(n) / n)
        self._s_fft = np.fft.fft(self._s * self._twist)
        self._pk_seed = secrets.token_bytes(wire.SEED_BYTES)
        a = uniform_mod(derive(self._pk_seed, 0, b"pk"), params.primes, n)
        e = self.rns.forward(self.rns.small(self._rand.cbd((n,))))
        self._pk0 = self.rns.reduce(-(self.rns.reduce(a * self._s_hat)) - e)

    def __repr__(self) -> str:
        return f"ClientHE(N={self.params.poly_degree}, l={self.params.ring_bits})"

    def public_key(self) -> bytes:
        """(pk0, seed of pk1): an encryption of zero the server uses to re-randomise results."""
        return wire.MAGIC_PK + self.params.digest() + self._pk_seed + wire.pack_int(self._pk0, wire.RESIDUE_BYTES)

    # ----- upload -------------------------------------------------------------------------------
    def encrypt(self, spec: LayerSpec, x_c: np.ndarray) -> bytes:
        """Seeded symmetric BFV encryption of the client's share (B, C, H, W) in Z_{2^l}."""
        x_c = np.asarray(x_c)
        if x_c.ndim != 4 or x_c.dtype != np.uint64:
            raise ValueError("share must be a (B, C, H, W) uint64 array")
        prm, rns = self.params, self.rns
        plan = plan_for(spec, prm.poly_degree)
        if x_c.shape[1:] != (plan.c_in, spec.h, spec.w):
            raise ValueError("share shape does not match the layer")
        x_c = np.ascontiguousarray(x_c)
        batch = x_c.shape[0]
        count = plan.n_in_cts(batch)
        seed = secrets.token_bytes(wire.SEED_BYTES)
        head = (
            wire.MAGIC_UP + prm.digest() + wire.spec_digest(spec.to_bytes()) + struct.pack("<II", batch, count) + seed
        )
        msg, body = new_message(head, count * wire.up_ct_bytes(prm.primes, prm.poly_degree))
        # c0 = NTT(Delta * m + e) - a * s per ciphertext, residues bit-packed (wire.up_ct_bytes)
        # per ciphertext (tiles encoded natively, Plan.encode_input order):
        fails = lib.bh_encrypt(
            rns.ctx,
            u64_ptr(x_c),
            tiling(plan, prm.ring_bits),
            count,
            f64_ptr(self._delta),
            f64_ptr(self._s_hat),
            a_keys(seed, np.arange(count)),
            secrets.token_bytes(32),
            ptr("uint8_t *", body),
            THREADS,
        )
        if fails:
            raise RuntimeError("keystream too short for rejection sampling (probability < 2^-100)")
        return msg

    # ----- download -----------------------------------------------------------------------------
    def decrypt(self, spec: LayerSpec, msg: bytes) -> np.ndarray:
        """The client's new share y_c = W*x + b - r (B, C_out, H', W')."""
        prm = self.params
        if self._dec_primes is not None:  # native: decrypted values written straight to their outputs
            plan, batch, out = self._phase(spec, msg, rounded=True)
            return plan.from_eff_output(out.reshape(batch, plan.c_out, plan.ho, plan.wo))
        plan, batch, x = self._phase(spec, msg)
        shift = prm.down_bits - prm.ring_bits
        y = ((x + _U64(1 << (shift - 1))) >> _U64(shift)) & ring.mask(prm.ring_bits)
        out = np.zeros((batch, plan.c_out * plan.ho * plan.wo), dtype=_U64)
        out[:, plan.returned_flat] = y.reshape(batch, -1)
        return plan.from_eff_output(out.reshape(batch, plan.c_out, plan.ho, plan.wo))

    def noise(self, spec: LayerSpec, msg: bytes) -> np.ndarray:
        """Diagnostics: signed decryption noise of every returned coefficient, modulo 2^m.

        Decryption is correct while |noise| < 2^m / (2t); nothing here is secret to the client.
        """
        prm = self.params
        _, _, x = self._phase(spec, msg)
        shift = prm.down_bits - prm.ring_bits
        y = (x + _U64(1 << (shift - 1))) >> _U64(shift)
        d = (x - (y << _U64(shift))) & _U64((1 << prm.down_bits) - 1)
        d = d.astype(np.int64)
        return np.where(d >= 1 << (prm.down_bits - 1), d - (1 << prm.down_bits), d)

    def _phase(self, spec: LayerSpec, msg: bytes, rounded: bool = False) -> tuple[Plan, int, np.ndarray]:
        """Parse a result and return c0 + c1*s mod 2^m at every returned coefficient (wire order),
        or with ``rounded`` (native path only) the decrypted values in the effective output layout
        (B, c_out_eff * ho * wo); every output is returned exactly once."""
        prm = self.params
        n = prm.poly_degree
        plan = plan_for(spec, n)
        rd = wire.Reader(msg)
        rd.expect(wire.MAGIC_DOWN, "HE result")
        rd.check(prm.digest(), "HE parameters")
        rd.check(wire.spec_digest(spec.to_bytes()), "layer spec")
        batch, n_out, n_ret = struct.unpack("<III", rd.take(12))
        if not 1 <= batch <= 1 << 16 or n_out != plan.n_out_cts(batch) or n_ret != batch * plan.n_returned:
            raise ValueError("HE result has the wrong number of ciphertexts")
        b1 = (prm.down_bits + 7) // 8
        b0 = (prm.down_c0_bits + 7) // 8
        c1 = rd.take(n_out * n * b1)
        c0 = rd.take(n_ret * b0)
        rd.done()
        m_bits = prm.down_bits
        if self._dec_primes is not None:
            lo, hi, coef = plan.returned_ranges
            flat = plan.returned_flat
            n_flat = plan.c_out * plan.ho * plan.wo
            full = plan.n_returned == n_flat  # distinct in-range outputs: then each is written once
            res = (np.empty if full or not rounded else np.zeros)(batch * n_flat if rounded else n_ret, dtype=_U64)
            phase, out = (ffi.NULL, u64_ptr(res)) if rounded else (u64_ptr(res), ffi.NULL)
            fields = dict(  # the pointers' buffers stay referenced here for the call
                prime_idx=self._dec_primes,
                s_hat=f64_ptr(self._s_hat),
                c1=ptr("uint8_t *", c1),
                c0=ptr("uint8_t *", c0),
                batch=batch,
                per_ct=plan.n_og * plan.tiles,
                n_ret=plan.n_returned,
                ret_lo=ptr("int64_t *", lo),
                ret_hi=ptr("int64_t *", hi),
                ret_coef=ptr("int32_t *", coef),
                down_bits=m_bits,
                down_c0_bits=prm.down_c0_bits,
                phase=phase,
                ret_flat=ptr("int32_t *", flat),
                ring_bits=prm.ring_bits,
                out=out,
                out_stride=n_flat,
            )
            bad = lib.bh_decrypt_phase(self.rns.ctx, ffi.new("bh_decrypt_args *", fields), THREADS)
            if bad < 0:
                check(lib, int(bad), "HE decryption")
            if bad:
                raise ValueError("HE result coefficients out of range")
            return plan, batch, res
        c1 = wire.unpack_uint(c1, n_out * n, b1).reshape(n_out, n)
        c0 = wire.unpack_uint(c0, n_ret, b0)
        if np.any(c1 >> _U64(m_bits)) or np.any(c0 >> _U64(prm.down_c0_bits)):
            raise ValueError("HE result coefficients out of range")
        ct, coef, _ = plan.returned
        per_ct = plan.n_og * plan.tiles
        cts = (np.arange(batch)[:, None] * per_ct + ct[None, :]).reshape(-1)
        prod = self._mul_s(c1, m_bits)
        x = (c0 << _U64(m_bits - prm.down_c0_bits)) + prod[cts, np.tile(coef, batch)]
        return plan, batch, x & _U64((1 << m_bits) - 1)

    def _mul_s(self, c1: np.ndarray, m_bits: int) -> np.ndarray:
        """c1 * s mod (X^N + 1, 2^m) exactly, via a float FFT on two signed limbs (fallback path).

        Limbs have at most 25 bits, so every coefficient of limb * s is below 2^(25 + log N)
        <= 2^38 and the float64 FFT error stays far below 1/2.
        """
        half = (m_bits + 1) // 2
        c = c1.astype(np.int64)
        c = np.where(c >= 1 << (m_bits - 1), c - (1 << m_bits), c)
        hi = c >> half
        lo = c - (hi << half)
        z = (lo + 1j * hi) * self._twist  # both limbs at once: s is real
        r = np.fft.ifft(np.fft.fft(z, axis=1) * self._s_fft, axis=1) * self._twist.conj()
        lo_n = np.rint(r.real).astype(np.int64)
        hi_n = np.rint(r.imag).astype(np.int64)
        res = lo_n.astype(_U64) + (hi_n.astype(_U64) << _U64(half))
        return res & _U64((1 << m_bits) - 1)
