"""Public layer geometry: how shares become polynomials and how results come back out.

Coefficient encoding (Cheetah-style).  For a k x k convolution the padded input is cut into
overlap-save tiles: an output tile of th x tw pixels needs an input tile of Ht x Wt =
(th+k-1) x (tw+k-1) pixels (the halo).  One input tile of one channel is one polynomial,
pixel (a, b) at coefficient a*Wt + b.  The kernel of output channel o against input channel c
is the polynomial sum_{u,v} w[o,c,u,v] X^(D - u*Wt - v) with D = (k-1)*Wt + (k-1); then the
coefficient D + i*Wt + j of the product is sum_{u,v} w * x[i+u, j+v], the convolution.
When a tile is at most N/2 coefficients (small planes), channels share polynomials in both
directions.  I' input channels share one input polynomial (channel c' of the group at X^(c'*P))
and O' output channels one product polynomial: the kernel of output slot o' against input slot c'
is shifted by X^((o'*I' + I'-1 - c')*P), so the matching terms (c' against its own kernel) of
every input slot land in block o'*I' + I'-1 and sum there, while the cross terms (c' against the
kernel of c'' != c') land in the blocks on either side, each of which spills at most D
coefficients into the next block, below the first valid output at offset D.  With
O'*I'*P <= N the negacyclic wrap-around of the last block also stays below the first valid
output.  Summing the products over input groups gives the full convolution in each valid
coefficient.  I' cuts the upload (one ciphertext per I' channels instead of one per channel) and
the products; O' cuts the returned c1 polynomials; the planner weighs both.

A 2x2 stride-2 transposed convolution is four 1x1 convolutions (one per kernel offset),
i.e. one 1x1 convolution with 4*C_out outputs whose results are interleaved afterwards.

Everything here depends only on public data (shapes, kernel size, padding, N), so the client
and the server derive the same plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

# Input ciphertexts per part of an HE message (per batch element).  Both messages of a layer go in
# parts of consecutive tiles, so the server computes a part while the next one travels and the client
# decrypts a part's result while the server computes the next: over a WAN the transfer hides behind
# the work.  Small parts pipeline better (a part is about 8.5 MB at N = 8192, 68 ms at 1 Gbit/s, and
# the deep layers of few tiles are split too), at a price only for kernels the server does not keep:
# each part is one pass over the layer's kernels and, for those, one rebuild (docs/benchmarks.md).
PART_IN_CTS = 64
MIN_PART_TILES = 1


@dataclass(frozen=True)
class ConvSpec:
    """Kind of linear layer: ``conv`` (k x k, stride 1, zero padding ``pad``) or ``convT`` (2x2, s2)."""

    kind: str = "conv"
    k: int = 3
    pad: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("conv", "convT"):
            raise ValueError("kind must be 'conv' or 'convT'")
        if self.kind == "convT" and (self.k, self.pad) != (2, 0):
            object.__setattr__(self, "k", 2)
            object.__setattr__(self, "pad", 0)
        if not 1 <= self.k <= 7 or not 0 <= self.pad < self.k:
            raise ValueError("unsupported kernel size or padding")


@dataclass(frozen=True)
class LayerSpec:
    """Everything the client needs to know about a layer: public shapes, never weights."""

    conv: ConvSpec
    c_in: int
    c_out: int
    h: int
    w: int

    def __post_init__(self) -> None:
        for v in (self.c_in, self.c_out, self.h, self.w):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError("layer dimensions must be positive integers")
        if self.c_in > 512:
            raise ValueError("at most 512 input channels per layer")

    def to_bytes(self) -> bytes:
        c = self.conv
        return f"{c.kind}:{c.k}:{c.pad}:{self.c_in}:{self.c_out}:{self.h}:{self.w}".encode()


#: Planner weights in units of one ciphertext-plaintext product (K*N multiply-adds): an input
#: ciphertext costs its forward NTTs plus its upload (K*N residues), an output ciphertext its
#: inverse NTTs, finishing and the download of its whole c1.  The wire weights are set for a
#: link of about 1 Gbit/s; on loopback they cost a few percent of compute at most.
COST_IN_CT = 33 + 60
COST_OUT_CT = 60 + 40


def _plan_cost(tiles: int, n_ig: int, n_og: int) -> int:
    """Relative cost of one layer: products, plus per input and per output ciphertext."""
    return tiles * (n_ig * n_og + COST_IN_CT * n_ig + COST_OUT_CT * n_og)


def _sizes(n: int) -> list[int]:
    """Distinct values ceil(n / m): the tile sizes worth trying along one axis."""
    return sorted({math.ceil(n / m) for m in range(1, n + 1)})


@dataclass(frozen=True)
class Plan:
    """Tiling and packing of one layer for polynomial degree N (derived, never transmitted)."""

    spec: LayerSpec
    n: int
    k: int  # effective kernel size (1 for convT)
    pad: int
    c_in: int
    c_out: int  # effective outputs (4*C_out for convT)
    ho: int
    wo: int
    th: int
    tw: int
    opack: int  # O': output channels per product polynomial
    ipack: int = 1  # I': input channels per input polynomial

    @staticmethod
    def make(spec: LayerSpec, n: int, max_filters: int = 8192) -> Plan:
        """Cheapest tiling and packing (see :func:`_plan_cost`); for k > 1 also at most
        ``max_filters`` NTT-form kernels (memory: each is K*N residues)."""
        if spec.conv.kind == "convT":
            k, pad, c_out = 1, 0, 4 * spec.c_out
        else:
            k, pad, c_out = spec.conv.k, spec.conv.pad, spec.c_out
        ho, wo = spec.h + 2 * pad - k + 1, spec.w + 2 * pad - k + 1
        if ho < 1 or wo < 1:
            raise ValueError("input smaller than the kernel")
        best = None
        for tw in _sizes(wo):
            wt = tw + k - 1
            if wt > n:
                continue
            for th in _sizes(ho):
                p = (th + k - 1) * wt
                if p > n:
                    continue
                tiles = math.ceil(ho / th) * math.ceil(wo / tw)
                for ipack in _sizes(spec.c_in):
                    if ipack * p > n or ipack * k * k > 512:
                        continue
                    # O' * I' * k*k <= 512 keeps every NTT-domain sum below 2^53 (exact in float64)
                    opack = max(1, min(c_out, n // (p * ipack), 512 // (k * k * ipack)))
                    n_ig, n_og = math.ceil(spec.c_in / ipack), math.ceil(c_out / opack)
                    over = max(0, n_og * n_ig - max_filters) if k > 1 else 0
                    key = (over, _plan_cost(tiles, n_ig, n_og), tiles * n_ig, -th * tw, -ipack)
                    if best is None or key < best[0]:
                        best = (key, th, tw, opack, ipack)
        if best is None:
            raise ValueError("layer too wide for the polynomial degree")
        _, th, tw, opack, ipack = best
        return Plan(spec, n, k, pad, spec.c_in, c_out, ho, wo, th, tw, opack, ipack)

    # ----- geometry ---------------------------------------------------------------------------
    @property
    def ht(self) -> int:
        return self.th + self.k - 1

    @property
    def wt(self) -> int:
        return self.tw + self.k - 1

    @property
    def p(self) -> int:
        return self.ht * self.wt

    @property
    def n_ti(self) -> int:
        return math.ceil(self.ho / self.th)

    @property
    def n_tj(self) -> int:
        return math.ceil(self.wo / self.tw)

    @property
    def tiles(self) -> int:
        return self.n_ti * self.n_tj

    @property
    def n_og(self) -> int:
        return math.ceil(self.c_out / self.opack)

    @property
    def n_ig(self) -> int:
        """Input polynomials per tile (I' channels each)."""
        return math.ceil(self.c_in / self.ipack)

    @property
    def d(self) -> int:
        return (self.k - 1) * self.wt + (self.k - 1)

    # ----- parts of the messages ----------------------------------------------------------------
    @property
    def part_tiles(self) -> int:
        """Tiles per part (the last part may have fewer)."""
        return max(1, min(self.tiles, max(MIN_PART_TILES, PART_IN_CTS // self.n_ig)))

    @property
    def n_parts(self) -> int:
        """Parts per batch element; message i of a layer carries part i % n_parts of element i // n_parts."""
        return -(-self.tiles // self.part_tiles)

    def part_range(self, part: int) -> tuple[int, int]:
        """Tiles [t0, t1) of a part."""
        t0 = part * self.part_tiles
        return t0, min(t0 + self.part_tiles, self.tiles)

    def _wire(self, group: np.ndarray | int, tile: np.ndarray | int, groups: int) -> np.ndarray | int:
        """Position within a batch element of the ciphertext (group, tile): part by part, then group
        by group (input groups up, output groups down), then tile."""
        t0 = (np.asarray(tile) // self.part_tiles) * self.part_tiles
        width = np.minimum(t0 + self.part_tiles, self.tiles) - t0
        return t0 * groups + group * width + (tile - t0)

    def up_wire(self, c: np.ndarray | int, tile: np.ndarray | int) -> np.ndarray | int:
        """Upload position (within a batch element) of input ciphertext (group c, tile)."""
        return self._wire(c, tile, self.n_ig)

    def down_wire(self, og: np.ndarray | int, tile: np.ndarray | int) -> np.ndarray | int:
        """Download position (within a batch element) of output ciphertext (group og, tile)."""
        return self._wire(og, tile, self.n_og)

    def _order(self, groups: int) -> np.ndarray:
        """Per position of one batch element: the ciphertext's group * tiles + tile (int64)."""
        g, t = np.meshgrid(np.arange(groups), np.arange(self.tiles), indexing="ij")
        out = np.empty(groups * self.tiles, dtype=np.int64)
        out[self._wire(g, t, groups).reshape(-1)] = (g * self.tiles + t).reshape(-1)
        return out

    @cached_property
    def up_order(self) -> np.ndarray:
        """Per upload position: the ciphertext's index c * tiles + tile in :meth:`encode_input` order."""
        return self._order(self.n_ig)

    @cached_property
    def _down_order(self) -> np.ndarray:
        """Per download position: the ciphertext's og * tiles + tile."""
        return self._order(self.n_og)

    def n_in_cts(self, batch: int) -> int:
        return batch * self.n_ig * self.tiles

    def n_out_cts(self, batch: int) -> int:
        return batch * self.n_og * self.tiles

    def tap_exponents(self) -> np.ndarray:
        """(O', I', k*k) exponents of X for output slot o', input slot c' and kernel tap (u, v)."""
        u, v = np.meshgrid(np.arange(self.k), np.arange(self.k), indexing="ij")
        base = self.d - u.ravel() * self.wt - v.ravel()
        o, c = np.arange(self.opack)[:, None, None], np.arange(self.ipack)[None, :, None]
        return (o * self.ipack + self.ipack - 1 - c) * self.p + base[None, None, :]

    def out_block(self, op: np.ndarray | int) -> np.ndarray | int:
        """First coefficient of the block holding output slot ``op``'s sums."""
        return (op * self.ipack + self.ipack - 1) * self.p

    # ----- encoding ---------------------------------------------------------------------------
    def encode_input(self, x: np.ndarray) -> np.ndarray:
        """(B, C, H, W) share -> (B, n_ig, tiles, N) uint64 coefficient vectors (zero padded)."""
        b, c, h, w = x.shape
        if (c, h, w) != (self.c_in, self.spec.h, self.spec.w):
            raise ValueError("share shape does not match the layer")
        hp = self.n_ti * self.th + self.k - 1
        wp = self.n_tj * self.tw + self.k - 1
        xp = np.zeros((b, self.n_ig * self.ipack, hp, wp), dtype=np.uint64)
        xp[:, :c, self.pad : self.pad + h, self.pad : self.pad + w] = x
        out = np.zeros((b, self.n_ig, self.n_ti, self.n_tj, self.n), dtype=np.uint64)
        width = self.ipack * self.p
        for ti in range(self.n_ti):
            for tj in range(self.n_tj):
                blk = xp[:, :, ti * self.th : ti * self.th + self.ht, tj * self.tw : tj * self.tw + self.wt]
                out[:, :, ti, tj, :width] = blk.reshape(b, self.n_ig, width)
        return out.reshape(b, self.n_ig, self.tiles, self.n)

    def _returned_counts(self) -> np.ndarray:
        """Returned c0 coefficients per ciphertext og*tiles + tile (not by download position): its valid
        output slots x rows x columns."""
        n_o = np.clip(self.c_out - np.arange(self.n_og, dtype=np.int64) * self.opack, 0, self.opack)
        n_r = np.clip(self.ho - np.arange(self.n_ti, dtype=np.int64) * self.th, 0, self.th)
        n_c = np.clip(self.wo - np.arange(self.n_tj, dtype=np.int64) * self.tw, 0, self.tw)
        return (n_o[:, None, None] * n_r[None, :, None] * n_c[None, None, :]).reshape(-1)

    @cached_property
    def n_returned(self) -> int:
        """Returned c0 coefficients per batch element (every output exactly once)."""
        return int(self._returned_counts().sum())

    @cached_property
    def _returned(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Index maps of the returned c0 coefficients of one batch element, in the wire order (by
        ciphertext in download order, then output slot, row, column of its tile): per download
        position [lo, hi) into that order (int64), and per coefficient its index in the ciphertext
        and its flat output index (both int32).

        Kept for the plan's lifetime (every layer's plan, on both sides), so they are compact: 8
        bytes per output. Each index is broadcast along its own axis only: the full-size work is the
        validity mask and two gathers (a meshgrid of six full-size index arrays cost 1.7 s per job at
        256x256 on the client, which meets every layer's plan once)."""
        if self.c_out * self.ho * self.wo >= 1 << 31:
            raise ValueError("layer output too large for 32-bit output indices")
        og, ti, tj, op, i, j = (
            np.arange(n, dtype=np.int32).reshape([-1 if a == k else 1 for a in range(6)])
            for k, n in enumerate((self.n_og, self.n_ti, self.n_tj, self.opack, self.th, self.tw))
        )
        o = og * self.opack + op
        row = ti * self.th + i
        col = tj * self.tw + j
        valid = (o < self.c_out) & (row < self.ho) & (col < self.wo)
        shape = valid.shape
        coef = np.broadcast_to(self.out_block(op) + self.d + i * self.wt + j, shape)[valid]
        flat = np.broadcast_to((o * self.ho + row) * self.wo + col, shape)[valid]
        counts = self._returned_counts()  # by og*tiles + tile: the order of coef and flat so far
        start = np.cumsum(counts) - counts
        order = self._down_order
        counts = counts[order]
        hi = np.cumsum(counts)
        lo = hi - counts
        # regroup by download position: each ciphertext's run of coefficients moves as a whole
        src = np.repeat(start[order] - lo, counts) + np.arange(int(hi[-1]), dtype=np.int64)
        return lo, hi, coef.astype(np.int32, copy=False)[src], flat.astype(np.int32, copy=False)[src]

    @property
    def returned_ranges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per download position: [lo, hi) into the wire order (int64); the coefficients (int32)."""
        lo, hi, coef, _ = self._returned
        return lo, hi, coef

    @property
    def returned_flat(self) -> np.ndarray:
        """Flat output index (o * ho + row) * wo + col of every returned coefficient (int32, wire order)."""
        return self._returned[3]

    @property
    def returned(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ciphertext, coefficient, flat output index) of every returned coefficient as int64 arrays,
        in the wire order (made on demand: the native paths read the compact maps)."""
        lo, hi, coef, flat = self._returned
        ct = np.repeat(np.arange(lo.size, dtype=np.int64), hi - lo)
        return ct, coef.astype(np.int64), flat.astype(np.int64)

    @cached_property
    def returned_channels(self) -> np.ndarray:
        """Effective output channel of every returned coefficient (int32, wire order)."""
        return (self.returned_flat // np.int32(self.ho * self.wo)).astype(np.int32)

    def to_eff_output(self, y: np.ndarray) -> np.ndarray:
        """Layer output (B, C_out, Ho', Wo') -> effective (B, c_out_eff, ho, wo) layout."""
        if self.spec.conv.kind != "convT":
            return y
        b, co, h2, w2 = y.shape
        h, w = h2 // 2, w2 // 2
        return y.reshape(b, co, h, 2, w, 2).transpose(0, 1, 3, 5, 2, 4).reshape(b, 4 * co, h, w)

    def from_eff_output(self, y: np.ndarray) -> np.ndarray:
        if self.spec.conv.kind != "convT":
            return y
        b, c4, h, w = y.shape
        co = c4 // 4
        return y.reshape(b, co, 2, 2, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(b, co, 2 * h, 2 * w)

    def eff_weights(self, weight: np.ndarray) -> np.ndarray:
        """Weights as (c_out_eff, c_in, k*k) signed int64."""
        w = np.asarray(weight)
        if not np.issubdtype(w.dtype, np.integer):
            raise ValueError("weights must be integers")
        w = w.astype(np.int64)
        if self.spec.conv.kind == "convT":
            if w.shape != (self.c_in, self.spec.c_out, 2, 2):
                raise ValueError("transposed-conv weight shape does not fit the layer")
            return w.transpose(1, 2, 3, 0).reshape(4 * self.spec.c_out, self.c_in, 1)
        if w.shape != (self.c_out, self.c_in, self.k, self.k):
            raise ValueError("conv weight shape does not fit the layer")
        return w.reshape(self.c_out, self.c_in, self.k * self.k)
