"""Server half of HomConv: public parameters and public key only, never the secret key.

Per layer (``prepare``, once per model): the NTT-form kernels ("frequency-domain filters")
F[og, c] = sum_{o', tap} w[og*O'+o', c, tap] * NTT(X^(o'*P + D - u*Wt - v)), cached as float32
within ``filter_cache_bytes`` (else rebuilt per call by one exact GEMM).  For 1x1 layers whose
kernels would be many, the "taps" strategy is used instead: one BLAS product with the integer
weights per tap, then the taps' NTT-form monomials.  Per call (``apply``):

1. regenerate each input ciphertext's ``a`` from the upload seed; ``c0`` arrives in NTT form;
   add Delta * x_s (NTT form) to it, so the ciphertext encrypts x_c + x_s and W*x_s needs no
   separate plaintext convolution;
2. point-wise products with the kernels, accumulated over input channels in NTT form
   (a batched matrix product per NTT slot, exact in float64);
3. re-randomise with the client's public key (u*pk + (e1, e2)) so c1 no longer reveals W,
   leave NTT form once per output ciphertext;
4. add Delta * (b - r) and a uniform flooding integer to the returned c0 coefficients;
5. switch to the power-of-two modulus 2^m (c1 whole, c0 only at valid outputs, top bits only).

Heavy NumPy calls release the GIL, so a thread pool spreads input preparation, kernel groups
and output blocks over the cores (``sealapi`` calls hold the GIL, one reason SEAL is not on this
path).
"""

from __future__ import annotations

import copy
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from bunet import ring

from . import wire
from .bfv import expand_a_at, plan_for, scaled_message
from .layout import ConvSpec, LayerSpec, Plan
from .params import HEParams
from .rand import Sampler, derive, uniform_mod
from .rns import mod_inplace, rns_for

_U64 = np.uint64
CHUNK_BYTES = 768 << 20  # working-set target per chunk of tiles
FINISH_CTS = 32          # output ciphertexts finished together (keeps the NTT working set small)


@dataclass
class ServerLayer:
    """Weights of one layer in the form the server's hot loop needs (built once per model)."""

    spec: LayerSpec
    plan: Plan
    weight: np.ndarray          # original integer weights
    bias: np.ndarray | None
    wmat: np.ndarray            # (c_out_eff * k*k, c_in) float64
    taps: np.ndarray            # (K, O', k*k, N) NTT-form monomials
    strategy: str               # "taps" (one BLAS product per tap) or "filters" (NTT-form kernels)
    wgroup: np.ndarray | None   # (O'*k*k, n_og * c_in) weights grouped per product polynomial
    filters: np.ndarray | None  # (K*N, n_og, c_in) float32 cached NTT-form kernels, if they fit


class ServerHE:
    """Public side: ``params`` plus the client's public key (no secret key anywhere)."""

    def __init__(self, params: HEParams, public_key: bytes | None = None, threads: int | None = None,
                 filter_cache_bytes: int = 6 << 30) -> None:
        params.validate()
        self.cache_left = filter_cache_bytes
        self.params = params
        self.rns = rns_for(params.primes, params.poly_degree)
        self._rand = Sampler()
        self.threads = threads or min(2, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self._pk = self._load_public_key(public_key) if public_key is not None else None

    def with_public_key(self, public_key: bytes) -> ServerHE:
        """A per-client view: same parameters, thread pool and prepared layers, the client's key.

        Layers from :meth:`prepare` do not depend on the key, so one model preparation serves
        every session.
        """
        other = copy.copy(self)
        other._rand = Sampler()
        other._pk = other._load_public_key(public_key)
        return other

    def _load_public_key(self, public_key: bytes) -> np.ndarray:
        params = self.params
        n = params.poly_degree
        rd = wire.Reader(public_key)
        rd.expect(wire.MAGIC_PK, "public key")
        rd.check(params.digest(), "HE parameters")
        seed = bytes(rd.take(wire.SEED_BYTES))
        k = self.rns.k
        pk0 = wire.unpack_int(rd.take(k * n * wire.RESIDUE_BYTES), k * n, wire.RESIDUE_BYTES)
        rd.done()
        pk0 = pk0.astype(np.float64).reshape(k, n)
        if np.any(np.abs(pk0) > self.rns.pf[:, None] // 2 + 1):
            raise ValueError("public key residues out of range")
        return np.stack([pk0, uniform_mod(derive(seed, 0, b"pk"), params.primes, n)])  # (2, K, N)

    # ----- per model ------------------------------------------------------------------------------
    def prepare(self, conv: ConvSpec, weight: np.ndarray, bias: np.ndarray | None,
                in_shape: tuple[int, int, int]) -> ServerLayer:
        c_in, h, w = (int(v) for v in in_shape)
        weight = np.asarray(weight)
        c_out = weight.shape[1] if conv.kind == "convT" else weight.shape[0]
        spec = LayerSpec(conv, c_in, int(c_out), h, w)
        plan = plan_for(spec, self.params.poly_degree)
        weff = plan.eff_weights(weight)
        l1 = np.abs(weff).sum(axis=(1, 2)).max(initial=0)
        if l1 > 1 << self.params.weight_l1_bits:
            raise ValueError("layer weights exceed the public weight bound of the HE parameters")
        if bias is not None:
            bias = np.asarray(bias).astype(np.int64).reshape(spec.c_out)
        kk = plan.k * plan.k
        wmat = weff.transpose(0, 2, 1).reshape(plan.c_out * kk, c_in).astype(np.float64)
        mono = np.zeros((plan.opack * kk, self.params.poly_degree), dtype=np.int64)
        mono[np.arange(plan.opack * kk), plan.tap_exponents().reshape(-1)] = 1
        taps = self.rns.forward(self.rns.from_int(mono)).reshape(self.rns.k, plan.opack, kk, -1)
        n_filters = plan.n_og * c_in
        strategy = "taps" if kk * plan.c_out <= 3 * plan.n_og or (kk == 1 and n_filters > 8192) else "filters"
        wgroup = filters = None
        if strategy == "filters":
            wg = np.zeros((plan.n_og * plan.opack, c_in, kk))
            wg[: plan.c_out] = weff
            wg = wg.reshape(plan.n_og, plan.opack, c_in, kk).transpose(1, 3, 0, 2)
            wgroup = np.ascontiguousarray(wg.reshape(plan.opack * kk, plan.n_og * c_in))
            if np.abs(wgroup).sum(axis=0).max(initial=0) * (1 << 22) >= 2.0**53:
                raise ValueError("weights too large for exact kernel transforms")
            size = self.rns.k * plan.n * plan.n_og * c_in * 4
            if size <= self.cache_left:
                self.cache_left -= size
                filters = self._filters(taps, wgroup, np.arange(plan.n_og), c_in).astype(np.float32)
        _ = plan.returned          # index maps of the returned coefficients, computed once per shape
        return ServerLayer(spec, plan, np.array(weight, dtype=np.int64), bias, wmat, taps,
                           strategy, wgroup, filters)

    def _filters(self, taps: np.ndarray, wgroup: np.ndarray, ogs: np.ndarray, c_in: int) -> np.ndarray:
        """NTT-form kernels F[og, c] = sum_{o', tap} w * V[o', tap]: (K*N, len(ogs), c_in)."""
        k, n = self.rns.k, self.params.poly_degree
        cols = (ogs[:, None] * c_in + np.arange(c_in)[None, :]).reshape(-1)
        v = taps.reshape(k, -1, n).transpose(0, 2, 1)                       # (K, N, O'*kk)
        f = np.matmul(v, wgroup[:, cols])                                   # (K, N, len*c_in)
        f = self.rns.reduce(f)
        return f.reshape(k * n, ogs.size, c_in)

    def layer_spec(self, layer: ServerLayer) -> LayerSpec:
        """What to send the client about this layer (public)."""
        return layer.spec

    # ----- per call ---------------------------------------------------------------------------------
    def apply(self, layer: ServerLayer, up: bytes, x_s: np.ndarray) -> tuple[bytes, np.ndarray]:
        """Returns (download message, server's new share y_s = r)."""
        if self._pk is None:
            raise ValueError("no client public key: use with_public_key() for a session")
        prm, plan, rns = self.params, layer.plan, self.rns
        n, k = prm.poly_degree, rns.k
        rd = wire.Reader(up)
        rd.expect(wire.MAGIC_UP, "HE upload")
        rd.check(prm.digest(), "HE parameters")
        rd.check(wire.spec_digest(layer.spec.to_bytes()), "layer spec")
        batch, count = struct.unpack("<II", rd.take(8))
        seed = bytes(rd.take(wire.SEED_BYTES))
        if batch < 1 or count != plan.n_in_cts(batch):
            raise ValueError("HE upload has the wrong number of ciphertexts")
        c0 = wire.unpack_int(rd.take(count * k * n * wire.RESIDUE_BYTES), count * k * n, wire.RESIDUE_BYTES)
        rd.done()
        x_s = np.asarray(x_s)
        if x_s.shape != (batch, layer.spec.c_in, layer.spec.h, layer.spec.w) or x_s.dtype != _U64:
            raise ValueError("server share shape does not match the upload")
        c0 = c0.astype(np.float64).reshape(batch, plan.c_in, plan.tiles, k, n)
        if np.any(np.abs(c0) > rns.pf[:, None] // 2 + 1):
            raise ValueError("ciphertext residues out of range")

        y_s, m_s = self._plain_part(layer, x_s)
        xs_poly = plan.encode_input(ring.reduce(x_s, prm.ring_bits))          # (B, C, T, N)
        ct_ids, coef, _ = plan.returned
        per_ct = plan.n_og * plan.tiles
        n_out = batch * per_ct
        c1_out = np.empty((n_out, n), dtype=_U64)
        c0_out = np.empty((batch, ct_ids.size), dtype=_U64)
        for b in range(batch):
            for tiles in self._tile_chunks(layer):
                self._chunk(layer, b, tiles, c0[b][:, tiles], xs_poly[b][:, tiles], seed, m_s[b],
                            c1_out, c0_out)
        head = (wire.MAGIC_DOWN + prm.digest() + wire.spec_digest(layer.spec.to_bytes())
                + struct.pack("<III", batch, n_out, c0_out.size))
        b1 = (prm.down_bits + 7) // 8
        b0 = (prm.down_c0_bits + 7) // 8
        return head + wire.pack_uint(c1_out, b1) + wire.pack_uint(c0_out, b0), y_s

    # ----- internals --------------------------------------------------------------------------------
    def _plain_part(self, layer: ServerLayer, x_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """r (the server's new share) and b - r laid out in the wire order.

        The server's share x_s itself rides along inside the ciphertext (added to c0 before the
        products), so W*x_s costs no separate plaintext convolution.
        """
        lb = self.params.ring_bits
        batch = x_s.shape[0]
        shape = (batch,) + layer.spec.out_shape
        r = ring.random(shape, lb)
        bias = np.zeros(layer.spec.c_out, dtype=np.int64) if layer.bias is None else layer.bias
        b = np.broadcast_to(ring.from_signed(bias, lb)[None, :, None, None], shape)
        m = layer.plan.to_eff_output(ring.sub(b, r, lb)).reshape(batch, -1)
        return r, m[:, layer.plan.returned[2]]

    def _tile_chunks(self, layer: ServerLayer) -> list[np.ndarray]:
        """Tiles per chunk: as many as fit CHUNK_BYTES, so each kernel is read few times."""
        plan = layer.plan
        extra = plan.c_out * plan.k * plan.k if layer.strategy == "taps" else plan.c_in
        per_tile = 8 * 2 * self.rns.k * plan.n * (plan.c_in + extra + 2 * plan.n_og)
        size = max(1, min(plan.tiles, CHUNK_BYTES // per_tile))
        return [np.arange(s, min(s + size, plan.tiles)) for s in range(0, plan.tiles, size)]

    def _map(self, fn, items: list) -> None:
        if self._pool is not None and len(items) > 1:
            list(self._pool.map(fn, items))
        else:
            for it in items:
                fn(it)

    def _chunk(self, layer: ServerLayer, b: int, tiles: np.ndarray, c0: np.ndarray, xs: np.ndarray,
               seed: bytes, m_s: np.ndarray, c1_out: np.ndarray, c0_out: np.ndarray) -> None:
        plan, rns = layer.plan, self.rns
        n, k, tc = plan.n, rns.k, tiles.size
        # X[c, tile, poly, K, N]: poly 0 = c0 (NTT form on the wire), poly 1 = a (from the seed)
        x = np.empty((plan.c_in, tc, 2, k, n))

        def prep(cs: np.ndarray) -> None:
            # c0 + Delta * x_s: the ciphertext now encrypts x_c + x_s (noise + |q mod t| per input)
            xs_hat = rns.forward(scaled_message(self.params, rns, xs[cs].reshape(-1, n)))
            x[cs, :, 0] = c0[cs] + xs_hat.reshape(k, cs.size, tc, n).transpose(1, 2, 0, 3)
            rns.reduce(x[cs, :, 0].transpose(2, 0, 1, 3))
            idx = ((b * plan.c_in + cs)[:, None] * plan.tiles + tiles[None, :]).reshape(-1)
            a = expand_a_at(rns, seed, idx)                                    # (K, cs*tc, N)
            x[cs, :, 1] = a.reshape(k, cs.size, tc, n).transpose(1, 2, 0, 3)

        self._map(prep, np.array_split(np.arange(plan.c_in), min(plan.c_in, 2 * self.threads)))
        if layer.strategy == "filters":
            self._product_filters(layer, x, b, tiles, m_s, c1_out, c0_out)
        else:
            y = self._product_taps(layer, x)
            tb = max(1, min(tc, FINISH_CTS))
            jobs = [(og, t0) for og in range(plan.n_og) for t0 in range(0, tc, tb)]
            self._map(lambda j: self._finish(plan, b, tiles[j[1]:j[1] + tb], np.array([j[0]]),
                                             y[:, j[0]:j[0] + 1, j[1]:j[1] + tb], m_s, c1_out, c0_out), jobs)

    def _product_filters(self, layer: ServerLayer, x: np.ndarray, b: int, tiles: np.ndarray,
                         m_s: np.ndarray, c1_out: np.ndarray, c0_out: np.ndarray) -> None:
        """Pointwise products with the NTT-form kernels, summed over input channels (batched GEMM),
        then the output ciphertexts of each group of kernels are finished (threads over groups)."""
        plan, rns = layer.plan, self.rns
        n, k, tc = plan.n, rns.k, x.shape[1]
        xs = np.ascontiguousarray(x.transpose(3, 4, 0, 1, 2)).reshape(k * n, plan.c_in, tc * 2)
        step = max(1, min(plan.n_og, CHUNK_BYTES // (8 * k * n * (2 * plan.c_in + 2 * tc)) // self.threads,
                          FINISH_CTS // tc))
        groups = [np.arange(s0, min(s0 + step, plan.n_og)) for s0 in range(0, plan.n_og, step)]

        def run(ogs: np.ndarray) -> None:
            if layer.filters is not None:
                f = layer.filters[:, ogs[0]:ogs[-1] + 1].astype(np.float64)
            else:
                f = self._filters(layer.taps, layer.wgroup, ogs, plan.c_in)
            prod = rns.reduce(np.matmul(f, xs).reshape(k, n, ogs.size, tc, 2))   # sums < c_in * 2^43
            y = prod.transpose(0, 2, 3, 4, 1)                                     # (K, og, tile, 2, N)
            tb = max(1, FINISH_CTS // ogs.size)
            for t0 in range(0, tc, tb):
                sub = np.ascontiguousarray(y[:, :, t0:t0 + tb])
                self._finish(plan, b, tiles[t0:t0 + tb], ogs, sub, m_s, c1_out, c0_out)

        self._map(run, groups)

    def _product_taps(self, layer: ServerLayer, x: np.ndarray) -> np.ndarray:
        """One integer-weight BLAS product per kernel tap, then the taps' NTT-form monomials."""
        plan, rns = layer.plan, self.rns
        n, k, kk, tc = plan.n, rns.k, plan.k * plan.k, x.shape[1]
        # Z[(o, tap)] = sum_c w * X[c]: exact (|sum| <= ||W||_1 * p < 2^53)
        z = np.matmul(layer.wmat, x.reshape(plan.c_in, -1)).reshape(plan.c_out, kk, tc, 2, k, n)
        z = z.transpose(4, 0, 1, 2, 3, 5)                      # (K, c_out, kk, tc, 2, N)
        y = np.zeros((k, plan.n_og, tc, 2, n))
        for i in range(k):
            zi = mod_inplace(z[i], rns.pf[i], rns.pinv[i])
            for op in range(plan.opack):
                o = np.arange(op, plan.c_out, plan.opack)
                part = zi[o] * layer.taps[i, op][None, :, None, None, :]  # (len(o), kk, tc, 2, N)
                s = part.sum(axis=1)
                y[i, : o.size] += s
            y[i] = mod_inplace(y[i], rns.pf[i], rns.pinv[i])
        return y

    def _finish(self, plan: Plan, b: int, tiles: np.ndarray, ogs: np.ndarray, y: np.ndarray,
                m_s: np.ndarray, c1_out: np.ndarray, c0_out: np.ndarray) -> None:
        """Re-randomise, leave NTT form, add the server term and flooding, switch to 2^m."""
        rns, prm = self.rns, self.params
        k, n = rns.k, plan.n
        n_og, tc = ogs.size, tiles.size
        y = y.reshape(k, n_og * tc, 2, n)
        cnt = n_og * tc
        u = rns.forward(np.array(rns.small(self._rand.ternary((cnt, n)))))          # (K, cnt, N)
        y[:, :, 0] += u * self._pk[0][:, None, :]
        y[:, :, 1] += u * self._pk[1][:, None, :]
        y = rns.inverse(rns.reduce(y.reshape(k, cnt * 2, n)).reshape(k, cnt, 2, n))
        ct_local = (ogs[:, None] * plan.tiles + tiles[None, :]).reshape(-1)    # og*T + tile, ascending
        ct_global = b * plan.n_og * plan.tiles + ct_local
        # c1: + e2, then to 2^m
        c1 = y[:, :, 1] + rns.small(self._rand.cbd((cnt, n)))
        c1_out[ct_global] = rns.to_pow2(rns.reduce(c1), prm.down_bits)
        # c0: only the returned coefficients of these ciphertexts
        ret_ct, ret_coef, _ = plan.returned
        lo = np.searchsorted(ret_ct, ct_local, "left")
        hi = np.searchsorted(ret_ct, ct_local, "right")
        if not np.any(hi > lo):
            return
        pos = np.concatenate([np.arange(a, z) for a, z in zip(lo, hi, strict=True)])
        row = np.repeat(np.arange(cnt), hi - lo)
        v = y[:, row, 0, ret_coef[pos]]                                           # (K, npos)
        v += rns.small(self._rand.cbd((pos.size,)))
        v += self._rand.uniform_signed_residues(prm.flood_bits, rns.primes, (pos.size,))
        v += scaled_message(prm, rns, m_s[pos])
        hi = rns.to_pow2(rns.reduce(v), prm.down_bits)
        drop = prm.down_bits - prm.down_c0_bits
        c0_out[b, pos] = ((hi + _U64(1 << (drop - 1))) >> _U64(drop)) & _U64((1 << prm.down_c0_bits) - 1)

