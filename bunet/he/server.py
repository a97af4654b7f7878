"""Server half of HomConv: public parameters and public key only, never the secret key.

Per layer (``prepare``, once per model): the NTT-form kernels ("frequency-domain filters")
F[og, g] = sum_{o', c', tap} w[og*O'+o', g*I'+c', tap] * NTT(X^((o'*I' + I'-1 - c')*P + D - u*Wt - v))
(see :mod:`bunet.he.layout`), cached as float32
(exact: centred residues are below 2^21) in the slot-block layout of the native product kernel,
within ``filter_cache_bytes`` (else rebuilt per call).  For 1x1 layers the "taps" strategy is
used instead: the integer weights times the inputs, then the taps' NTT-form monomials, so no
kernel is stored.  Per call (``apply``), per chunk of tiles, all in ``bunet.he._native``:

1. regenerate each input ciphertext's ``a`` from the upload seed; ``c0`` arrives in NTT form;
   add Delta * x_s (NTT form) to it, so the ciphertext encrypts x_c + x_s and W*x_s needs no
   separate plaintext convolution;
2. point-wise products with the kernels, accumulated over input channels in NTT form
   (groups of I' channels; exact float64 FMA, one reduction per output slot);
3. re-randomise with the client's public key (u*pk + (e1, e2)) so c1 no longer reveals W,
   leave NTT form once per output ciphertext;
4. add Delta * (b - r) and a uniform flooding integer to the returned c0 coefficients;
5. switch to the power-of-two modulus 2^m (c1 whole, c0 only at valid outputs, top bits only)
   and write the download message in place.

The native calls release the GIL and split their work over ``threads`` POSIX threads.
"""

from __future__ import annotations

import copy
import os
import secrets
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from bunet import ring

from ..message import new_message
from ..native_errors import check
from . import wire
from ._native import ffi, lib
from .bfv import a_keys, plan_for, random_ring, tiling, u64_ptr
from .layout import ConvSpec, LayerSpec, Plan
from .params import HEParams
from .rand import derive, uniform_mod
from .rns import f64_ptr, mod_inplace, ptr, rns_for

_U64 = np.uint64
CHUNK_BYTES = 512 << 20  # working set (slot-block inputs and outputs) per chunk of tiles
FILTER_GROUP_BYTES = 256 << 20  # outputs whose kernels one call builds: about this many bytes of float64 kernels
# Kernels the server does not keep are built once per layer call, for all its parts, when they take at
# most this many bytes (counted in the job's memory); larger ones are built again for every part.
CALL_KERNEL_BYTES = 512 << 20
# Upload messages (parts) one computation may take together (``Apply.steps``): their tiles share one
# pass over the kernels, which the products read from memory once per pass (at 512x512, N = 8192,
# the deep layers' kernels are GBs and a part is one or two tiles).
MERGE_PARTS = 4
# How long the server may wait for the next part to merge with: what a pass over the layer's kept
# kernels would take at this rate (a conservative memory bandwidth), at most MERGE_WAIT_S.
KERNEL_PASS_BYTES_PER_S = 10e9
MERGE_WAIT_S = 0.25


def _strategy(plan: Plan) -> str:
    """ "taps" for a 1x1 layer without input packing (integer weights, then monomials), unless its
    outputs share polynomials and the kernels are few; "filters" (NTT-form kernels) otherwise."""
    kk = plan.k * plan.k
    n_filters = plan.n_og * plan.n_ig
    return "taps" if kk == 1 and plan.ipack == 1 and (plan.opack == 1 or n_filters > 8192) else "filters"


class _ScratchPool:
    """Reusable float64 work arrays for the per-chunk slot blocks.

    A fresh large array is mapped anew and every page is faulted in and zeroed by the kernel on
    first touch, which cost as much as the products themselves; concurrent calls (sessions)
    each take their own buffer.  At most ``keep`` buffers are retained.
    """

    def __init__(self, keep: int = 4) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._keep = keep

    @staticmethod
    def _new(size: int) -> np.ndarray:
        raw = np.empty(size + 8)
        skip = (-raw.ctypes.data % 64) // 8  # 64-byte aligned: one slot block row = 1/2 line
        return raw[skip : skip + size]

    def _give(self, buf: np.ndarray) -> None:
        with self._lock:
            self._free.append(buf)
            self._free.sort(key=lambda b: -b.size)
            del self._free[self._keep :]

    @contextmanager
    def take(self, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
        size = int(np.prod(shape))
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.size >= size]
            buf = self._free.pop(min(fits, key=lambda i: self._free[i].size)) if fits else None
        if buf is None:
            buf = self._new(size)
        try:
            yield buf[:size].reshape(shape)
        finally:
            self._give(buf)

    def reserve(self, size: int, count: int) -> None:
        """Hold ``count`` buffers of at least ``size`` float64s, faulted in now: at start-up rather
        than in the first job (at 512x512 the work arrays of a call reach hundreds of MB)."""
        with self._lock:
            missing = count - sum(b.size >= size for b in self._free)
        for _ in range(max(0, min(missing, self._keep))):
            buf = self._new(size)
            buf.fill(0.0)
            self._give(buf)


@dataclass
class ServerLayer:
    """Weights of one layer in the form the server's hot loop needs (built once per model)."""

    spec: LayerSpec
    plan: Plan
    weight: np.ndarray  # original integer weights
    bias: np.ndarray | None
    wmat: np.ndarray  # (c_out_eff * k*k, c_in) float64
    # (K, N, O'*I'*k*k) NTT-form monomials, dense per slot (the kernels' left operand); kept only
    # when the kernels are rebuilt per call (not cached): up to 512 N K float64 per layer
    taps: np.ndarray | None
    strategy: str  # "taps" (1x1: integer weights, then monomials) or "filters" (NTT-form kernels)
    wgroup: np.ndarray | None  # (O'*I'*k*k, n_og * n_ig) weights grouped per product polynomial
    filters: np.ndarray | None  # (K*N/4, n_og, n_ig, 4) float32 cached NTT-form kernels, if they fit
    tapvec: np.ndarray | None = None  # (O', K*N) monomials of a 1x1 layer, for the taps strategy


@dataclass
class _Segment:
    """A part's tiles within one chunk of a call, with what finishing them needs: the part's answer
    buffers (``out``: finishing key, c1 and c0 bodies), the server share's effective mask and bias,
    and where the part's ciphertexts start in the chunk's c0 (``c0_at``, in ciphertexts)."""

    part: wire.Part
    tiles: np.ndarray
    r_bias: tuple[np.ndarray, np.ndarray]
    out: tuple[bytes, memoryview, memoryview]
    c0_at: int = 0


class ServerHE:
    """Public side: ``params`` plus the client's public key (no secret key anywhere)."""

    def __init__(
        self,
        params: HEParams,
        public_key: bytes | None = None,
        threads: int | None = None,
        filter_cache_bytes: int = 6 << 30,
    ) -> None:
        params.validate()
        self.cache_left = filter_cache_bytes
        self.params = params
        self.rns = rns_for(params.primes, params.poly_degree)
        self.threads = threads or min(2, os.cpu_count() or 1)
        self._delta = self.rns.delta_residues(params.delta)
        self._scratch = _ScratchPool()  # shared by the per-client views
        self._pk = self._load_public_key(public_key) if public_key is not None else None

    def with_public_key(self, public_key: bytes) -> ServerHE:
        """A per-client view: same parameters and prepared layers, the client's key.

        Layers from :meth:`prepare` do not depend on the key, so one model preparation serves
        every session.
        """
        other = copy.copy(self)
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
        pk = np.stack([pk0, uniform_mod(derive(seed, 0, b"pk"), params.primes, n)])  # (2, K, N)
        return np.ascontiguousarray(pk)

    # ----- per model ------------------------------------------------------------------------------
    def choose_cached(self, specs: list[LayerSpec]) -> list[bool]:
        """Which of these layers get their kernels prepared and kept, within the cache left.

        A layer left out rebuilds its kernels in every call: K N (O' I' k k) (n_og n_ig) products per
        rebuild, against K N (n_og n_ig) float32 kept; a call rebuilds them once if they fit
        CALL_KERNEL_BYTES and come in several parts, else once per chunk of tiles (each part at least
        one). So the kernels kept save the most per byte where O' I' k k times the rebuilds per call
        is largest (big 3x3 layers at a high resolution; a transposed 2x2 layer has O' I' k k = 1 or
        2): those go first."""
        rank = []
        for i, spec in enumerate(specs):
            plan = plan_for(spec, self.params.poly_degree)
            if _strategy(plan) == "filters":
                per_part = len(self._chunks(plan, plan.part_tiles))  # chunks of a part computed alone
                rebuilds = 1 if self._built_per_call(plan) else plan.n_parts * per_part
                rank.append((-plan.opack * plan.ipack * plan.k * plan.k * rebuilds, self.kernel_bytes(plan), i))
        chosen = [False] * len(specs)
        left = self.cache_left
        for _, size, i in sorted(rank):
            if size <= left:
                chosen[i], left = True, left - size
        return chosen

    def prepare(
        self,
        conv: ConvSpec,
        weight: np.ndarray,
        bias: np.ndarray | None,
        in_shape: tuple[int, int, int],
        cache: bool = True,
    ) -> ServerLayer:
        """The layer's prepared form; its kernels are kept if ``cache`` and they fit the cache left
        (:meth:`choose_cached` picks the layers worth it), else rebuilt in every call."""
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
        k, n = self.rns.k, self.params.poly_degree
        wmat = np.ascontiguousarray(weff.transpose(0, 2, 1).reshape(plan.c_out * kk, c_in).astype(np.float64))
        n_ig, ik = plan.n_ig, plan.ipack * kk
        taps = self.monomials(plan)
        taps_t = np.ascontiguousarray(taps.reshape(k, -1, n).transpose(0, 2, 1))  # once: BLAS wants it dense
        strategy = _strategy(plan)
        wgroup = filters = tapvec = None
        if strategy == "taps":
            tapvec = np.ascontiguousarray(taps[:, :, 0, :].transpose(1, 0, 2).reshape(plan.opack, k * n))
            if plan.opack == 1 and not np.all(tapvec == 1):  # the kernel relies on X^0 -> NTT(1) = 1
                raise AssertionError("1x1 tap of a single-output polynomial must be the constant 1")
        else:
            wg = np.zeros((plan.n_og * plan.opack, n_ig * plan.ipack, kk))
            wg[: plan.c_out, :c_in] = weff
            wg = wg.reshape(plan.n_og, plan.opack, n_ig, plan.ipack, kk).transpose(1, 3, 4, 0, 2)
            wgroup = np.ascontiguousarray(wg.reshape(plan.opack * ik, plan.n_og * n_ig))
            if np.abs(wgroup).sum(axis=0).max(initial=0) * (1 << 22) >= 2.0**53:
                raise ValueError("weights too large for exact kernel transforms")
            size = k * n * plan.n_og * n_ig * 4
            if cache and size <= self.cache_left:
                self.cache_left -= size
                filters = np.empty((k * n // 4, plan.n_og, n_ig, 4), dtype=np.float32)
                for ogs in self._og_groups(plan):
                    self._block_filters(taps_t, wgroup, ogs, n_ig, out=filters[:, ogs[0] : ogs[-1] + 1])
        _ = plan.returned_ranges, plan.returned_channels  # index maps of the returned coefficients, once per shape
        return ServerLayer(
            spec,
            plan,
            np.array(weight, dtype=np.int64),
            bias,
            wmat,
            taps_t if strategy == "filters" and filters is None else None,
            strategy,
            wgroup,
            filters,
            tapvec,
        )

    def monomials(self, plan: Plan) -> np.ndarray:
        """(K, O', I'*k*k, N): the NTT forms of the layer's kernel monomials X^e (``Plan.tap_exponents``)."""
        k, n, ik = self.rns.k, plan.n, plan.ipack * plan.k * plan.k
        mono = np.zeros((plan.opack * ik, n), dtype=np.int64)
        mono[np.arange(plan.opack * ik), plan.tap_exponents().reshape(-1)] = 1
        return self.rns.forward(self.rns.from_int(mono)).reshape(k, plan.opack, ik, n)

    def kernel_bytes(self, plan: Plan) -> int:
        """Bytes of a layer's NTT-form kernels (float32), kept or built."""
        return self.rns.k * plan.n * plan.n_og * plan.n_ig * 4

    def _built_per_call(self, plan: Plan) -> bool:
        """Whether a call builds the layer's kernels, if not kept, once for all its parts (several
        parts, kernels within CALL_KERNEL_BYTES) rather than again for every chunk of tiles."""
        return plan.n_parts > 1 and self.kernel_bytes(plan) <= CALL_KERNEL_BYTES

    def call_kernel_bytes(self, layer: ServerLayer) -> int:
        """Bytes of the kernels one call of this layer builds and keeps for its parts (0: none)."""
        if layer.strategy != "filters" or layer.filters is not None or not self._built_per_call(layer.plan):
            return 0
        return self.kernel_bytes(layer.plan)

    def _og_groups(self, plan: Plan) -> list[np.ndarray]:
        step = max(1, FILTER_GROUP_BYTES // (8 * self.rns.k * plan.n * plan.n_ig))
        return [np.arange(s0, min(s0 + step, plan.n_og)) for s0 in range(0, plan.n_og, step)]

    def _block_filters(
        self, taps_t: np.ndarray, wgroup: np.ndarray, ogs: np.ndarray, c_in: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """NTT-form kernels F[og, g] = sum_{o', c', tap} w * V[o', c', tap] of the output groups
        ``ogs`` against the ``c_in`` input groups, in slot blocks: (K*N/4, len(ogs), c_in, 4) float32,
        written into ``out`` if given.  ``taps_t``: the layer's monomials V, (K, N, O'*I'*k*k)
        (``ServerLayer.taps``)."""
        k, n = self.rns.k, self.params.poly_degree
        cols = (ogs[:, None] * c_in + np.arange(c_in)[None, :]).reshape(-1)
        w = np.ascontiguousarray(wgroup[:, cols])
        if out is None:
            out = np.empty((k * n // 4, ogs.size, c_in, 4), dtype=np.float32)
        # a few hundred kB at a time: the products (exact), their reduction, the slot-block layout and
        # the cast; whole-array passes ran out of cache and took most of the start-up
        rows = max(4, (1 << 15) // cols.size // 4 * 4)  # slots per pass, a multiple of 4
        for i in range(k):
            for s0 in range(0, n, rows):
                blk = mod_inplace(taps_t[i, s0 : s0 + rows] @ w, self.rns.pf[i], self.rns.pinv[i])
                out[(i * n + s0) // 4 : (i * n + s0 + blk.shape[0]) // 4] = blk.reshape(
                    -1, 4, ogs.size, c_in
                ).transpose(0, 2, 3, 1)
        return out

    def reserve_scratch(self, layers: list[ServerLayer]) -> None:
        """Fault in the work arrays one ``apply`` of the largest of these layers takes (its slot-block
        inputs and outputs), so the first job does not pay for fresh pages."""
        sizes = [
            int(np.prod(shape))
            for layer in layers
            for shape in self._work_shapes(layer.plan, self.max_chunk_tiles(layer.plan))
        ]
        if sizes:
            self._scratch.reserve(max(sizes), 2)

    def _work_shapes(self, plan: Plan, tc: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The slot blocks of a chunk of tc tiles: inputs X[blk, g, 2*tile + poly, 4], outputs Y[blk, og, ...]."""
        nblk = self.rns.k * plan.n // 4
        return (nblk, plan.n_ig, 2 * tc, 4), (nblk, plan.n_og, 2 * tc, 4)

    def layer_spec(self, layer: ServerLayer) -> LayerSpec:
        """What to send the client about this layer (public)."""
        return layer.spec

    # ----- per call ---------------------------------------------------------------------------------
    def start(self, layer: ServerLayer, x_s: np.ndarray) -> Apply:
        """One layer call on the server's share ``x_s`` (B, C, H, W), message by message
        (:func:`wire.parts`): each upload message in, its download message out."""
        if self._pk is None:
            raise ValueError("no client public key: use with_public_key() for a session")
        return Apply(self, layer, x_s)

    def apply(
        self, layer: ServerLayer, up: bytes | bytearray | memoryview, x_s: np.ndarray
    ) -> tuple[bytes, np.ndarray]:
        """The whole call at once: (download message, server's new share y_s = r); its parts
        computed ``Apply.merge`` at a time."""
        job = self.start(layer, x_s)
        view, pos, downs = memoryview(up), 0, []
        for i in range(0, len(job), job.merge):
            ups = []
            for j in range(i, min(i + job.merge, len(job))):
                size = job.up_size(j)
                if pos + size > len(view):
                    raise ValueError("HE upload too short")
                ups.append(view[pos : pos + size])
                pos += size
            downs += job.steps(i, ups)
        if pos != len(view):
            raise ValueError("HE upload has trailing bytes")
        return b"".join(downs), job.y_s

    # ----- internals --------------------------------------------------------------------------------
    def _plain_part(self, layer: ServerLayer, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """r (the server's new share), r in the effective output layout, and the bias per effective channel.

        The finishing kernel adds Delta * (b - r) at every returned coefficient.  The server's
        share x_s itself rides along inside the ciphertext (added to c0 before the products), so
        W*x_s costs no separate plaintext convolution.
        """
        plan, lb = layer.plan, self.params.ring_bits
        r_eff = random_ring((batch, plan.c_out * plan.ho * plan.wo), lb, self.threads)  # uniform in any layout
        y_s = plan.from_eff_output(r_eff.reshape(batch, plan.c_out, plan.ho, plan.wo))
        bias = np.zeros(layer.spec.c_out, dtype=np.int64) if layer.bias is None else layer.bias
        bias_eff = ring.from_signed(np.repeat(bias, plan.c_out // layer.spec.c_out), lb)  # convT: 4 per channel
        return np.ascontiguousarray(y_s), r_eff, np.ascontiguousarray(bias_eff, dtype=_U64)

    def _chunk_cap(self, plan: Plan) -> int:
        """The most tiles whose slot-block inputs and outputs fit CHUNK_BYTES (at least one)."""
        per_tile = 8 * 2 * self.rns.k * plan.n * (plan.n_ig + plan.n_og)
        return max(1, CHUNK_BYTES // per_tile)

    def max_chunk_tiles(self, plan: Plan, batch: int | None = None) -> int:
        """The most tiles one chunk of a call computes together: MERGE_PARTS parts' worth at most
        (and no more than the call has), cut at CHUNK_BYTES; the work arrays are sized for it."""
        most = MERGE_PARTS * plan.part_tiles
        if batch is not None:
            most = min(most, batch * plan.tiles)
        return min(most, self._chunk_cap(plan))

    def _chunks(self, plan: Plan, count: int) -> list[slice]:
        """``count`` tiles in balanced chunks of at most ``_chunk_cap`` tiles."""
        n_chunks = -(-count // self._chunk_cap(plan))
        size = -(-count // n_chunks)
        return [slice(s, min(s + size, count)) for s in range(0, count, size)]

    def _chunk(
        self,
        layer: ServerLayer,
        segs: list[_Segment],
        c0: bytes | memoryview,
        x_s: np.ndarray,
        tiles_of: object,
        seed: bytes,
        filters: np.ndarray | None,
    ) -> None:
        """One chunk of tiles, made of one or more parts' tiles (``segs``; their upload ciphertexts in
        ``c0``, each part's from ``seg.c0_at``): the products (with ``filters``, the layer's kernels,
        if given; else they are built group by group), one pass over the kernels for all the chunk's
        tiles, then each part's download ciphertexts of these tiles into that part's message."""
        plan, rns = layer.plan, self.rns
        c_in, n_og = plan.n_ig, plan.n_og  # c_in: input polynomials per tile
        tc = sum(seg.tiles.size for seg in segs)
        rows = 2 * tc
        # inputs: X[blk, c, 2*tile + poly, 4], poly 0 = c0 + Delta * x_s, poly 1 = a (both NTT form);
        # items channel by channel, each channel's tiles in chunk order (the parts' one after another)
        c_idx = np.arange(c_in)[:, None]
        pos = np.concatenate([plan.up_wire(c_idx, seg.tiles[None, :]) for seg in segs], axis=1)
        start = np.concatenate([np.full(seg.tiles.size, seg.c0_at - seg.part.u0) for seg in segs])
        local = np.ascontiguousarray((pos + start).reshape(-1), dtype=np.int64)  # in c0
        ct_index = np.concatenate([(seg.part.b * c_in + c_idx) * plan.tiles + seg.tiles for seg in segs], axis=1)
        ct_index = np.ascontiguousarray(ct_index.reshape(-1), dtype=np.int64)  # the share's group and tile of each
        up_base = np.concatenate([np.full(seg.tiles.size, seg.part.up_base) for seg in segs])
        x_shape, y_shape = self._work_shapes(plan, tc)
        with self._scratch.take(x_shape) as x, self._scratch.take(y_shape) as y:
            bad = lib.bh_server_prep(
                rns.ctx,
                ptr("uint8_t *", c0),
                ptr("int64_t *", local),
                ptr("int64_t *", ct_index),
                u64_ptr(x_s),
                tiles_of,
                f64_ptr(self._delta),
                a_keys(seed, up_base + pos),  # keyed by the layer's upload position
                c_in,
                tc,
                f64_ptr(x),
                self.threads,
            )
            if bad:
                raise ValueError("ciphertext residues out of range")
            # products, summed over input channels: Y[blk, og, 2*tile + poly, 4]
            if layer.strategy == "taps":
                lib.bh_product_taps(
                    rns.ctx,
                    f64_ptr(layer.wmat),
                    f64_ptr(layer.tapvec),
                    plan.c_out,
                    plan.opack,
                    n_og,
                    c_in,
                    rows,
                    f64_ptr(x),
                    f64_ptr(y),
                    self.threads,
                )
            elif filters is not None:
                lib.bh_product_filters(
                    rns.ctx,
                    ptr("float *", filters),
                    n_og,
                    c_in,
                    rows,
                    f64_ptr(x),
                    f64_ptr(y),
                    0,
                    n_og,
                    self.threads,
                )
            else:
                for ogs in self._og_groups(plan):
                    f = self._block_filters(layer.taps, layer.wgroup, ogs, c_in)
                    lib.bh_product_filters(
                        rns.ctx,
                        ptr("float *", f),
                        ogs.size,
                        c_in,
                        rows,
                        f64_ptr(x),
                        f64_ptr(y),
                        int(ogs[0]),
                        n_og,
                        self.threads,
                    )
            row = 0
            for seg in segs:
                self._finish(layer, seg, row, tc, y)
                row += seg.tiles.size

    def _finish(self, layer: ServerLayer, seg: _Segment, row: int, tc: int, y: np.ndarray) -> None:
        """Every output ciphertext of a part's tiles in a chunk (``seg``; the chunk's tiles ``row`` ..
        of ``tc``), written at its place in the part's message body (c1 by download position, c0's
        returned coefficients by wire position, both from the part's first). The finishing
        randomness is keyed per message (``seg.out[0]``), its nonce the ciphertext's place in the
        message."""
        plan, rns, prm = layer.plan, self.rns, self.params
        part, tiles, r_bias = seg.part, seg.tiles, seg.r_bias
        key, c1_out, c0_out = seg.out
        n_og, rows = plan.n_og, 2 * tc
        og = np.repeat(np.arange(n_og, dtype=np.int64), tiles.size)
        tl = np.tile(np.arange(tiles.size, dtype=np.int64), n_og)
        pos = plan.down_wire(og, tiles[tl])  # download position within the batch element
        tl += row  # the tile's row pair in the chunk's outputs
        r0, r1 = part.r0, part.r1
        slot = np.ascontiguousarray(pos - part.d0, dtype=np.int64)
        lo_all, hi_all, coef = plan.returned_ranges
        lo = np.ascontiguousarray(lo_all[pos] - r0)
        hi = np.ascontiguousarray(hi_all[pos] - r0)
        fields = dict(  # the pointers' buffers stay referenced here for the call
            y=f64_ptr(y),
            n_og=n_og,
            rows=rows,
            jobs_og=ptr("int64_t *", og),
            jobs_tl=ptr("int64_t *", tl),
            ct_global=ptr("int64_t *", slot),
            njobs=og.size,
            ret_lo=ptr("int64_t *", lo),
            ret_hi=ptr("int64_t *", hi),
            ret_coef=ptr("int32_t *", coef[r0:r1]),
            ret_base=0,
            ret_flat=ptr("int32_t *", plan.returned_flat[r0:r1]),
            ret_ch=ptr("int32_t *", plan.returned_channels[r0:r1]),
            r_out=u64_ptr(r_bias[0]),
            bias=u64_ptr(r_bias[1]),
            ring_bits=prm.ring_bits,
            pk=f64_ptr(self._pk),
            delta=f64_ptr(self._delta),
            flood_bits=prm.flood_bits,
            down_bits=prm.down_bits,
            down_c0_bits=prm.down_c0_bits,
            key=ptr("uint8_t *", key),
            c1_out=ptr("uint8_t *", c1_out),
            c0_out=ptr("uint8_t *", c0_out),
        )
        rc = lib.bh_finish(rns.ctx, ffi.new("bh_finish_args *", fields), self.threads)
        check(lib, rc, "HE finishing kernel")


class Apply:
    """One layer call in progress on the server (``ServerHE.start``): upload message i in, download
    message i out (``wire.parts``), so a part is computed while the next one travels. The server's
    new share (a fresh uniform mask) is ``y_s``. Messages that are in may be computed together
    (``steps``, at most ``merge``); ``merge_wait_s``: how long the next one is worth waiting for
    (about what a pass over the layer's kernels costs)."""

    merge = MERGE_PARTS

    def __init__(self, he: ServerHE, layer: ServerLayer, x_s: np.ndarray) -> None:
        x_s = np.asarray(x_s)
        spec = layer.spec
        if x_s.ndim != 4 or x_s.shape[1:] != (spec.c_in, spec.h, spec.w) or x_s.dtype != _U64 or x_s.shape[0] < 1:
            raise ValueError("server share shape does not match the layer")
        self.he, self.layer, self.batch = he, layer, x_s.shape[0]
        self.x_s = np.ascontiguousarray(x_s)
        self.parts = wire.parts(layer.plan, he.params, self.batch)
        self.y_s, self._r_eff, self._bias_eff = he._plain_part(layer, self.batch)
        self._tiles_of = tiling(layer.plan, he.params.ring_bits)  # x_s tiles encoded natively
        self._filters = layer.filters
        if he.call_kernel_bytes(layer):  # not kept: built once for all the parts of this call
            plan = layer.plan
            self._filters = he._block_filters(layer.taps, layer.wgroup, np.arange(plan.n_og), plan.n_ig)
        self._seed = b""
        self._next = 0
        # waiting for the next part pays when it saves a pass over large kernels (the deep layers)
        kernels = he.kernel_bytes(layer.plan) if layer.strategy == "filters" else 0
        self.merge_wait_s = min(MERGE_WAIT_S, kernels / KERNEL_PASS_BYTES_PER_S)

    def __len__(self) -> int:
        return len(self.parts)

    def up_size(self, i: int) -> int:
        """The exact size of upload message i (the limit to receive it with)."""
        return self.parts[i].up_bytes

    def step(self, i: int, up: bytes | bytearray | memoryview) -> bytes:
        """Upload message i (in order) in, download message i out; a ValueError for a malformed one."""
        return self.steps(i, [up])[0]

    def steps(self, i: int, ups: Sequence[bytes | bytearray | memoryview]) -> list[bytes]:
        """Upload messages i, i + 1, ... (in order; at most MERGE_PARTS) in, their download messages
        out, computed together: every chunk of their tiles takes one pass over the kernels. Each
        answer is the one ``step`` gives (its own randomness); a ValueError for a malformed message."""
        if not 1 <= len(ups) <= self.merge:
            raise ValueError(f"one computation takes 1 to {self.merge} HE upload messages")
        opened = [self._open(i + j, up) for j, up in enumerate(ups)]
        c0 = opened[0][1] if len(opened) == 1 else b"".join(c for _, c, _ in opened)
        c0_at = np.cumsum([0] + [seg.part.u1 - seg.part.u0 for seg, _, _ in opened])  # each part's in c0
        segs = [replace(seg, c0_at=int(at)) for (seg, _, _), at in zip(opened, c0_at, strict=False)]
        # the parts' tiles one after another, cut into chunks; a chunk holds pieces of one or more parts
        first = np.cumsum([0] + [seg.tiles.size for seg in segs])  # each part's first in that order
        for sl in self.he._chunks(self.layer.plan, int(first[-1])):
            chunk = [
                replace(seg, tiles=seg.tiles[max(0, sl.start - a) : sl.stop - a])
                for seg, a in zip(segs, first, strict=False)
                if a < sl.stop and a + seg.tiles.size > sl.start
            ]
            self.he._chunk(self.layer, chunk, c0, self.x_s, self._tiles_of, self._seed, self._filters)
        return [msg for _, _, msg in opened]

    def _open(self, i: int, up: bytes | bytearray | memoryview) -> tuple[_Segment, memoryview, bytes]:
        """Check upload message i (the next one) and lay out its answer: (the part with its
        answer's buffers, its ciphertexts' c0, the answer message)."""
        if i != self._next:
            raise ValueError("HE upload messages out of order")
        if i >= len(self.parts):
            raise ValueError("more HE upload messages than the layer has")
        he, layer, part = self.he, self.layer, self.parts[i]
        prm, plan = he.params, layer.plan
        rd = wire.Reader(up)
        if i == 0:
            rd.expect(wire.MAGIC_UP, "HE upload")
            rd.check(prm.digest(), "HE parameters")
            rd.check(wire.spec_digest(layer.spec.to_bytes()), "layer spec")
            batch, count = struct.unpack("<II", rd.take(8))
            if batch != self.batch or count != plan.n_in_cts(batch):
                raise ValueError("HE upload has the wrong number of ciphertexts")
            self._seed = bytes(rd.take(wire.SEED_BYTES))
        c0 = rd.take((part.u1 - part.u0) * wire.up_ct_bytes(prm.primes, prm.poly_degree))
        rd.done()
        self._next += 1
        n = prm.poly_degree
        b1, b0 = (prm.down_bits + 7) // 8, (prm.down_c0_bits + 7) // 8
        head = b""
        if i == 0:
            head = (
                wire.MAGIC_DOWN
                + prm.digest()
                + wire.spec_digest(layer.spec.to_bytes())
                + struct.pack("<III", self.batch, plan.n_out_cts(self.batch), self.batch * plan.n_returned)
            )
        n_c1 = (part.d1 - part.d0) * n * b1
        msg, body = new_message(head, n_c1 + (part.r1 - part.r0) * b0)
        # this message's randomness (u, e, floods: ChaCha20), nonces its ciphertexts' places in it
        out = (secrets.token_bytes(32), body[:n_c1], body[n_c1:])
        r_bias = (self._r_eff[part.b], self._bias_eff)
        return _Segment(part, np.arange(part.t0, part.t1), r_bias, out), c0, msg
