"""The project's BFV (``bunet.he``, native kernels in native/he/) against SEAL, through
TenSEAL's ``tenseal.sealapi``, under the same secret key:

* the NTT: SEAL's and the project's agree up to the order of the evaluation points (both
  evaluate at the primitive 2N-th roots of unity, in their own orders): the order is read off
  the NTT of X (whose values are the roots), then the key and a random polynomial must match;
* an upload the project encrypts decrypts in SEAL to the encoded share;
* a ciphertext SEAL encrypts decrypts with the project's key, NTT and scaling to SEAL's plaintext.

SEAL keeps its last prime for key switching, so its context has the project's primes and one
extra prime; its data level is then exactly the project's modulus q. ``sealapi`` exposes no
writable buffers, so the key and ciphertexts go into SEAL through its own (uncompressed)
serialization format.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from bunet.he import ClientHE, ConvSpec, HEParams, LayerSpec, wire
from bunet.he.bfv import expand_a, plan_for
from bunet.he.params import _is_prime

seal = pytest.importorskip("tenseal.sealapi")

_SEAL_MAGIC = 0xA15E


def _at(arr: object) -> np.ndarray:
    """A SEAL DynArray's values (read one by one: sealapi has no buffer view)."""
    return np.array([arr.at(i) for i in range(arr.size())], dtype=np.uint64)  # type: ignore[attr-defined]


class _Seal:
    """A SEAL BFV context with the project's N, t and primes (+ a key-switching prime) and ``s``."""

    def __init__(self, params: HEParams, s: np.ndarray, tmp_path) -> None:
        n, t = params.poly_degree, params.t
        special = (1 << 30) // (2 * n) * (2 * n) + 1
        while not _is_prime(special) or special in params.primes:
            special -= 2 * n
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
        parms.set_poly_modulus_degree(n)
        parms.set_coeff_modulus([seal.Modulus(p) for p in (*params.primes, special)])
        parms.set_plain_modulus(seal.Modulus(t))
        self.ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.NONE)  # 128-bit checked on the project's q
        assert self.ctx.parameters_set(), self.ctx.parameters_error_message()
        self.n, self.k, self.tmp = n, len(params.primes), tmp_path
        # the secret key: s as a plaintext (-1 as t - 1: SEAL lifts the upper half of Z_t to negatives),
        # moved to NTT form at the key level by SEAL, saved and loaded as a secret key (same format)
        sk_pt = self.plaintext(np.mod(s, t))
        seal.Evaluator(self.ctx).transform_to_ntt_inplace(sk_pt, self.ctx.key_parms_id())
        sk_pt.save(str(tmp_path / "sk"))
        with open(tmp_path / "sk", "rb") as f:
            self.version = f.read(16)[3:5]  # SEAL's serialization version, for the blobs written here
        self.sk = seal.SecretKey()
        self.sk.load(self.ctx, str(tmp_path / "sk"))

    @staticmethod
    def plaintext(coeffs: np.ndarray) -> object:
        """A SEAL plaintext from coefficients in [0, t) (its text format: hex, highest power first)."""
        terms = [f"{int(c):X}x^{i}" if i else f"{int(c):X}" for i, c in enumerate(coeffs) if c][::-1]
        return seal.Plaintext(" + ".join(terms) or "0")

    def ntt(self, coeffs: np.ndarray) -> np.ndarray:
        """SEAL's NTT (K, N) at the data level of a polynomial with coefficients in [0, t), the upper
        half of Z_t read as negative."""
        pt = self.plaintext(coeffs)
        seal.Evaluator(self.ctx).transform_to_ntt_inplace(pt, self.ctx.first_parms_id())
        return _at(pt.dyn_array()).reshape(self.k, self.n)

    def _blob(self, members: bytes) -> bytes:
        """A SEAL serialization header (uncompressed) before ``members``."""
        return struct.pack("<HB2sBHQ", _SEAL_MAGIC, 16, self.version, 0, 0, 16 + len(members)) + members

    def ciphertext(self, c0: np.ndarray, c1: np.ndarray) -> object:
        """A SEAL ciphertext (coefficient form, data level) from two (K, N) residue arrays in [0, p)."""
        data = np.stack([c0, c1]).astype("<u8")
        arr = self._blob(struct.pack("<Q", data.size) + data.tobytes())  # its DynArray, own header
        pid = self.ctx.first_parms_id()
        members = struct.pack("<4Q", *pid) + b"\x00" + struct.pack("<QQQdQ", 2, self.n, self.k, 1.0, 1) + arr
        (self.tmp / "ct").write_bytes(self._blob(members))
        ct = seal.Ciphertext(self.ctx)
        ct.load(self.ctx, str(self.tmp / "ct"))  # SEAL checks every residue is below its prime
        return ct

    def decrypt(self, ct: object) -> np.ndarray:
        out = seal.Plaintext()
        seal.Decryptor(self.ctx, self.sk).decrypt(ct, out)
        m = np.zeros(self.n, dtype=np.uint64)
        m[: out.coeff_count()] = _at(out.dyn_array())
        return m


@pytest.fixture(scope="module")
def parties(tmp_path_factory):
    params = HEParams.for_ring(24)
    cli = ClientHE(params)
    return params, cli, _Seal(params, cli._s, tmp_path_factory.mktemp("seal"))


def _canon(x: np.ndarray, primes: tuple[int, ...]) -> np.ndarray:
    """Centred float residues (K, ..., N) -> [0, p) uint64."""
    p = np.array(primes, dtype=np.int64).reshape(-1, *([1] * (x.ndim - 1)))
    return np.mod(np.rint(x).astype(np.int64), p).astype(np.uint64)


def test_same_ntt(parties) -> None:
    params, cli, sl = parties
    rns, t, n = cli.rns, params.t, sl.n

    def ours(coeffs: np.ndarray) -> np.ndarray:  # the same lift of Z_t as SEAL's
        signed = np.where(coeffs >= t // 2, coeffs.astype(np.int64) - t, coeffs.astype(np.int64))
        return _canon(rns.forward(rns.from_int(signed)), params.primes)

    x = np.zeros(n, dtype=np.uint64)
    x[1] = 1
    roots_ours, roots_seal = ours(x), sl.ntt(x)  # NTT(X): the evaluation points themselves
    rng = np.random.default_rng(3)
    polys = [np.mod(cli._s, t).astype(np.uint64), rng.integers(0, t, n, dtype=np.uint64)]  # the key, a random one
    for i in range(sl.k):
        assert len(set(roots_ours[i].tolist())) == n  # N distinct roots: the order is determined
        np.testing.assert_array_equal(np.sort(roots_ours[i]), np.sort(roots_seal[i]))
        perm = np.argsort(roots_seal[i])[np.argsort(np.argsort(roots_ours[i]))]  # ours[j] at seal[perm[j]]
        for a in polys:
            np.testing.assert_array_equal(ours(a)[i], sl.ntt(a)[i][perm], err_msg=f"prime {i}")


def _unpack_upload(body: memoryview, primes: tuple[int, ...], n: int, count: int) -> np.ndarray:
    """(count, K, N) centred residues from the upload's bit-packed c0 (``wire.up_ct_bytes``: per
    ciphertext, per prime a row of N values of bitlen(p - 1) bits, LSB first), read independently
    of the native packer."""
    out = np.empty((count, len(primes), n), dtype=np.int64)
    off = 0
    for j in range(count):
        for i, p in enumerate(primes):
            w = (p - 1).bit_length()
            row = np.frombuffer(body[off : off + n * w // 8], dtype=np.uint8)
            bits = np.unpackbits(row, bitorder="little").reshape(n, w).astype(np.int64)
            v = bits @ (np.int64(1) << np.arange(w, dtype=np.int64))
            assert (v < p).all()
            out[j, i] = np.where(v > p // 2, v - p, v)
            off += n * w // 8
    return out


@pytest.mark.parametrize("h,w", [(16, 16), (40, 24)])
def test_project_encrypts_seal_decrypts(parties, h: int, w: int) -> None:
    params, cli, sl = parties
    rns = cli.rns
    spec = LayerSpec(ConvSpec("conv", 3, 1), 1, 1, h, w)
    x = np.random.default_rng(h).integers(0, params.t, (1, 1, h, w), dtype=np.uint64)
    msg = cli.encrypt(spec, x)
    head = wire.UP_HEAD_BYTES - wire.SEED_BYTES
    seed = bytes(msg[head : head + wire.SEED_BYTES])
    count = plan_for(spec, params.poly_degree).n_in_cts(1)
    body = memoryview(msg)[head + wire.SEED_BYTES :]
    assert len(body) == count * wire.up_ct_bytes(params.primes, sl.n)
    c0_hat = _unpack_upload(body, params.primes, sl.n, count)
    a_hat = expand_a(rns, seed, count)  # (K, count, N): c1 of each ciphertext, regenerated from the seed
    plan = plan_for(spec, params.poly_degree)
    want = plan.encode_input(x).reshape(count, sl.n)[plan.up_order]  # in upload order
    for j in range(count):
        c0 = _canon(rns.inverse(c0_hat[j].astype(np.float64)), params.primes)
        c1 = _canon(rns.inverse(np.ascontiguousarray(a_hat[:, j])), params.primes)
        np.testing.assert_array_equal(sl.decrypt(sl.ciphertext(c0, c1)), want[j] % np.uint64(params.t))


def test_seal_encrypts_project_decrypts(parties) -> None:
    params, cli, sl = parties
    rns = cli.rns
    m = np.random.default_rng(5).integers(0, params.t, sl.n, dtype=np.uint64)
    ct = seal.Ciphertext(sl.ctx)
    seal.Encryptor(sl.ctx, sl.sk).encrypt_symmetric(sl.plaintext(m), ct)
    c = _at(ct.dyn_array()).reshape(2, sl.k, sl.n).astype(np.float64)
    p = np.array(params.primes, dtype=np.float64)[:, None]
    c = np.where(c > p / 2, c - p, c)  # centred residues, as the project's kernels take them
    phase = rns.inverse(rns.reduce(rns.forward(c[0]) + rns.reduce(rns.forward(c[1]) * cli._s_hat)))
    np.testing.assert_array_equal(rns.to_pow2(phase, params.ring_bits).reshape(-1), m)
