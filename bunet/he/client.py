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
from .layout import LayerSpec
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
    def upload(self, spec: LayerSpec, x_c: np.ndarray) -> Upload:
        """Seeded symmetric BFV encryption of the client's share (B, C, H, W) in Z_{2^l}, message by
        message (:func:`wire.parts`)."""
        return Upload(self, spec, x_c)

    def encrypt(self, spec: LayerSpec, x_c: np.ndarray) -> bytes:
        """The whole upload as one byte string (its messages one after the other)."""
        up = self.upload(spec, x_c)
        return b"".join(up.message(i) for i in range(len(up)))

    # ----- download -----------------------------------------------------------------------------
    def download(self, spec: LayerSpec, batch: int, rounded: bool = True) -> Download:
        """Decryption of a layer's result message by message; ``rounded``: the new share, else the
        phases (diagnostics)."""
        return Download(self, spec, batch, rounded)

    def decrypt(self, spec: LayerSpec, msg: bytes) -> np.ndarray:
        """The client's new share y_c = W*x + b - r (B, C_out, H', W') from a whole download."""
        return self._whole(spec, msg, True)

    def noise(self, spec: LayerSpec, msg: bytes) -> np.ndarray:
        """Diagnostics: signed decryption noise of every returned coefficient, modulo 2^m.

        Decryption is correct while |noise| < 2^m / (2t); nothing here is secret to the client.
        """
        prm = self.params
        x = self._whole(spec, msg, False)
        shift = prm.down_bits - prm.ring_bits
        y = (x + _U64(1 << (shift - 1))) >> _U64(shift)
        d = (x - (y << _U64(shift))) & _U64((1 << prm.down_bits) - 1)
        d = d.astype(np.int64)
        return np.where(d >= 1 << (prm.down_bits - 1), d - (1 << prm.down_bits), d)

    def _whole(self, spec: LayerSpec, msg: bytes, rounded: bool) -> np.ndarray:
        view = memoryview(msg)
        off = len(wire.MAGIC_DOWN) + 2 * wire.DIGEST_BYTES
        if len(view) < wire.DOWN_HEAD_BYTES:
            raise ValueError("HE result too short")
        (batch,) = struct.unpack("<I", view[off : off + 4])
        if not 1 <= batch <= 1 << 16:
            raise ValueError("HE result has the wrong number of ciphertexts")
        down = self.download(spec, batch, rounded)
        pos = 0
        for i in range(len(down)):
            size = down.size(i)
            if pos + size > len(view):
                raise ValueError("HE result too short")
            down.add(i, view[pos : pos + size])
            pos += size
        if pos != len(view):
            raise ValueError("HE result has trailing bytes")
        return down.result()

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


class Upload:
    """One layer's upload: message i holds the ciphertexts of part i (``wire.parts``), encrypted when
    asked for, so a message can travel while the next is made; message 0 starts with the header."""

    def __init__(self, hec: ClientHE, spec: LayerSpec, x_c: np.ndarray) -> None:
        x_c = np.asarray(x_c)
        if x_c.ndim != 4 or x_c.dtype != np.uint64:
            raise ValueError("share must be a (B, C, H, W) uint64 array")
        prm = hec.params
        plan = plan_for(spec, prm.poly_degree)
        if x_c.shape[1:] != (plan.c_in, spec.h, spec.w):
            raise ValueError("share shape does not match the layer")
        self.hec, self.plan, self.x_c = hec, plan, np.ascontiguousarray(x_c)
        batch = x_c.shape[0]
        self.parts = wire.parts(plan, prm, batch)
        self.seed = secrets.token_bytes(wire.SEED_BYTES)
        self.head = (
            wire.MAGIC_UP
            + prm.digest()
            + wire.spec_digest(spec.to_bytes())
            + struct.pack("<II", batch, plan.n_in_cts(batch))
            + self.seed
        )
        self._tiling = tiling(plan, prm.ring_bits)

    def __len__(self) -> int:
        return len(self.parts)

    def message(self, i: int) -> bytes:
        """c0 = NTT(Delta * m + e) - a * s of the part's ciphertexts, residues bit-packed
        (wire.up_ct_bytes), in upload order (``Plan.up_wire``); a from the seed and the position."""
        part, plan, hec = self.parts[i], self.plan, self.hec
        count = part.u1 - part.u0
        msg, body = new_message(self.head if i == 0 else b"", count * wire.up_ct_bytes(hec.params.primes, plan.n))
        # the element's first ciphertext is up_base in both orders (upload and encode_input)
        order = np.ascontiguousarray(plan.up_order[part.u0 : part.u1] + part.up_base)
        fails = lib.bh_encrypt(
            hec.rns.ctx,
            u64_ptr(self.x_c),
            self._tiling,
            ptr("int64_t *", order),
            count,
            f64_ptr(hec._delta),
            f64_ptr(hec._s_hat),
            a_keys(self.seed, np.arange(part.up_base + part.u0, part.up_base + part.u1)),
            secrets.token_bytes(32),
            ptr("uint8_t *", body),
            THREADS,
        )
        if fails:
            raise RuntimeError("keystream too short for rejection sampling (probability < 2^-100)")
        return msg


class Download:
    """One layer's result, message by message (``wire.parts``): each is decrypted as it comes (the
    native path) into the new share, or with ``rounded`` False into the phases c0 + c1*s mod 2^m of
    the returned coefficients (wire order); every output is returned exactly once."""

    def __init__(self, hec: ClientHE, spec: LayerSpec, batch: int, rounded: bool = True) -> None:
        prm = hec.params
        self.hec, self.spec, self.batch, self.rounded = hec, spec, batch, rounded
        self.plan = plan = plan_for(spec, prm.poly_degree)
        self.parts = wire.parts(plan, prm, batch)
        self.n_flat = plan.c_out * plan.ho * plan.wo
        self._native = hec._dec_primes is not None
        full = plan.n_returned == self.n_flat  # distinct in-range outputs: then each is written once
        if rounded:
            self.res = (np.empty if full else np.zeros)(batch * self.n_flat, dtype=_U64)
        else:
            self.res = np.empty(batch * plan.n_returned, dtype=_U64)
        self._bytes: list[tuple[bytes, bytes]] = []  # the portable path decrypts at the end
        self._next = 0

    def __len__(self) -> int:
        return len(self.parts)

    def size(self, i: int) -> int:
        """The exact size of message i."""
        return self.parts[i].down_bytes

    def add(self, i: int, msg: bytes | memoryview) -> None:
        """Parse and decrypt message i (in order)."""
        if i != self._next:
            raise ValueError("HE result messages out of order")
        prm, plan, part = self.hec.params, self.plan, self.parts[i]
        rd = wire.Reader(msg)
        if i == 0:
            rd.expect(wire.MAGIC_DOWN, "HE result")
            rd.check(prm.digest(), "HE parameters")
            rd.check(wire.spec_digest(self.spec.to_bytes()), "layer spec")
            batch, n_out, n_ret = struct.unpack("<III", rd.take(12))
            if batch != self.batch or n_out != plan.n_out_cts(batch) or n_ret != batch * plan.n_returned:
                raise ValueError("HE result has the wrong number of ciphertexts")
        n = prm.poly_degree
        b1, b0 = (prm.down_bits + 7) // 8, (prm.down_c0_bits + 7) // 8
        c1 = rd.take((part.d1 - part.d0) * n * b1)
        c0 = rd.take((part.r1 - part.r0) * b0)
        rd.done()
        self._next += 1
        if self._native:
            self._decrypt(part, c1, c0)
        else:
            self._bytes.append((bytes(c1), bytes(c0)))

    def _decrypt(self, part: wire.Part, c1: memoryview, c0: memoryview) -> None:
        prm, plan, hec = self.hec.params, self.plan, self.hec
        lo, hi, coef = plan.returned_ranges
        d0, d1, r0, r1 = part.d0, part.d1, part.r0, part.r1
        if self.rounded:
            phase, out = ffi.NULL, u64_ptr(self.res[part.b * self.n_flat :])
        else:
            phase, out = u64_ptr(self.res[part.ret_base + r0 : part.ret_base + r1]), ffi.NULL
        lo_p = np.ascontiguousarray(lo[d0:d1] - r0)  # the part's ranges, from its first coefficient
        hi_p = np.ascontiguousarray(hi[d0:d1] - r0)
        fields = dict(  # the pointers' buffers stay referenced here for the call
            prime_idx=hec._dec_primes,
            s_hat=f64_ptr(hec._s_hat),
            c1=ptr("uint8_t *", c1),
            c0=ptr("uint8_t *", c0),
            batch=1,
            per_ct=d1 - d0,
            n_ret=r1 - r0,
            ret_lo=ptr("int64_t *", lo_p),
            ret_hi=ptr("int64_t *", hi_p),
            ret_coef=ptr("int32_t *", coef[r0:r1]),
            down_bits=prm.down_bits,
            down_c0_bits=prm.down_c0_bits,
            phase=phase,
            ret_flat=ptr("int32_t *", plan.returned_flat[r0:r1]),
            ring_bits=prm.ring_bits,
            out=out,
            out_stride=self.n_flat,
        )
        bad = lib.bh_decrypt_phase(hec.rns.ctx, ffi.new("bh_decrypt_args *", fields), THREADS)
        if bad < 0:
            check(lib, int(bad), "HE decryption")
        if bad:
            raise ValueError("HE result coefficients out of range")

    def result(self) -> np.ndarray:
        """The new share (B, C_out, H', W') with ``rounded``, else the phases (wire order)."""
        if self._next != len(self.parts):
            raise ValueError("HE result incomplete")
        plan, batch = self.plan, self.batch
        if not self._native:
            x = self._portable_phase()
            if not self.rounded:
                return x
            prm = self.hec.params
            shift = prm.down_bits - prm.ring_bits
            y = ((x + _U64(1 << (shift - 1))) >> _U64(shift)) & ring.mask(prm.ring_bits)
            out = np.zeros((batch, self.n_flat), dtype=_U64)
            out[:, plan.returned_flat] = y.reshape(batch, -1)
            self.res = out.reshape(-1)
        if not self.rounded:
            return self.res
        return plan.from_eff_output(self.res.reshape(batch, plan.c_out, plan.ho, plan.wo))

    def _portable_phase(self) -> np.ndarray:
        """c0 + c1 * s mod 2^m of every returned coefficient by a float FFT (parameters whose three
        largest primes are too small for the native exact product)."""
        prm, plan, batch = self.hec.params, self.plan, self.batch
        n, m_bits = prm.poly_degree, prm.down_bits
        b1, b0 = (m_bits + 7) // 8, (prm.down_c0_bits + 7) // 8
        n_out, n_ret = plan.n_out_cts(batch), batch * plan.n_returned
        c1 = wire.unpack_uint(b"".join(a for a, _ in self._bytes), n_out * n, b1).reshape(n_out, n)
        c0 = wire.unpack_uint(b"".join(b for _, b in self._bytes), n_ret, b0)
        if np.any(c1 >> _U64(m_bits)) or np.any(c0 >> _U64(prm.down_c0_bits)):
            raise ValueError("HE result coefficients out of range")
        ct, coef, _ = plan.returned
        per_ct = plan.n_og * plan.tiles
        cts = (np.arange(batch)[:, None] * per_ct + ct[None, :]).reshape(-1)
        prod = self.hec._mul_s(c1, m_bits)
        x = (c0 << _U64(m_bits - prm.down_c0_bits)) + prod[cts, np.tile(coef, batch)]
        return x & _U64((1 << m_bits) - 1)
