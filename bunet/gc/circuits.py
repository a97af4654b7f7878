"""Circuit construction: one small gate list, the same for every instance, run by the C engine.

The circuits are built here symbolically (with constant folding), dead gates are removed,
wires are packed into few slots (the engine keeps ``slots x 256`` labels per chunk), and every
hashing gate gets its own tweak offset, ciphertext index and arithmetic bit offset. The C
engine applies each gate to a whole chunk of instances in one loop.

Gates (and what they cost per instance):

* XOR, NOT, XORG (XOR with a garbler share bit, known to the garbler in plaintext): free.
* AND: three-halves garbling (Rosulek-Roy, CRYPTO 2021): three 64-bit half ciphertexts plus 5 control
  bits, 24.625 bytes (half gates: 32); the garbler hashes 6 times, the evaluator 3 times.
  CARRY is an AND fused with its XORs, the full-adder carry ``c ^ ((a ^ c) & (g ^ c))`` with g a garbler
  share bit; SUM is ``a ^ c ^ g`` (free).
* ANDG: AND with a garbler share bit, a garbler half gate: 1 ciphertext (16 bytes).
* B2A: unary Boolean-to-arithmetic gate, one ``m``-bit ciphertext (the share of ``w * bit``
  in Z_{2^m}, scaled by 2^j into Z_{2^l}; bit j of the output needs only l - j bits).
* B2A2 + NOUT: the ReLU output ``n * V`` with ``n = NOT sign``, ``V = sum_j 2^j S_j``.
  With ``c`` the colour of n's label and ``r`` its permute bit (``n = c ^ r``):
  ``n V = r V + c (1 - 2r) V``. B2A2 gives the evaluator shares of ``r * 2^j S_j`` and
  ``(1-2r) 2^j S_j`` (two (l-j)-bit ciphertexts from one hash), NOUT one l-bit ciphertext
  with which the evaluator turns ``Y = R_Y + (1-2r) V`` into a share of ``c (1-2r) V``.
  This fuses the ReLU multiplexer into the output conversion: no AND gate for it.
* REVEAL: the permute bit of an output wire, for the evaluator only (argmax): 1 bit.
* GVAL: adds ``n * M`` to a ReLU output, M = some bits of the garbler's own value (plaintext to it):
  ``n M = r M + c (1 - 2r) M``, so the garbler moves ``r M`` into its share and ``(1 - 2r) M`` into
  the Y of the output's NOUT. No message.

Arithmetic gates (B2A, B2A2, NOUT) carry an output index (gate field 8): a circuit may produce
several re-shared outputs per instance (``Compiled.n_outputs``; the sign-mode ReLU has 2).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ._native import lib

# gate opcodes and the fields of a gate record, as the engine defines them (native/bunet_gc.h)
XOR, NOT, XORG, AND, ANDG = lib.BN_G_XOR, lib.BN_G_NOT, lib.BN_G_XORG, lib.BN_G_AND, lib.BN_G_ANDG
B2A, B2A2, NOUT, REVEAL, GVAL = lib.BN_G_B2A, lib.BN_G_B2A2, lib.BN_G_NOUT, lib.BN_G_REVEAL, lib.BN_G_GVAL
CARRY, SUM = lib.BN_G_CARRY, lib.BN_G_SUM
GATE_FIELDS = lib.BN_GC_GATE_FIELDS
_TWO_IN = (XOR, AND, B2A2, CARRY, SUM)
_SINKS = {B2A, B2A2, NOUT, REVEAL, GVAL}

C0, C1 = -1, -2  # constant wires (folded away, never reach the engine)


def _is_const(w: int) -> bool:
    return w < 0


def _cval(w: int) -> int:
    return 0 if w == C0 else 1


def _const(bit: int) -> int:
    return C1 if bit else C0


@dataclass(frozen=True)
class Compiled:
    """A compiled circuit: gate records for the engine plus its per-instance costs."""

    gates: np.ndarray  # int32 (ngates, GATE_FIELDS): op, a, b, o, tweak, ct/bit offset, p1, p2, output index
    nwires: int  # wire slots
    n_inputs: int  # k * b input wires (slots 0 .. n_inputs-1 at chunk start)
    tweaks_per_inst: int
    ct_bytes: int  # ciphertext bytes per instance: 24 per AND/CARRY (three halves), 16 per ANDG
    arith_regions: tuple[int, ...]  # bit width of each packed region (n values each): arithmetic
    # ciphertexts, REVEAL bits, and the 5 control-bit planes of each three-halves AND
    and_gates: int  # three-halves ANDs (AND and CARRY): 24 bytes + 5 bits each
    andg_gates: int  # garbler half gates (1 ciphertext each)
    const_out: int  # constant output bits OR-ed into the evaluator's result (argmax)
    n_outputs: int = 1  # arithmetic outputs per instance

    def arith_len(self, n: int) -> int:
        """Bytes of arithmetic ciphertexts for n instances (each region packed, byte padded)."""
        return sum((n * m + 7) // 8 for m in self.arith_regions)

    @property
    def bytes_per_inst(self) -> float:
        """Garbled bytes per instance, server to client (asymptotic)."""
        return self.ct_bytes + sum(self.arith_regions) / 8


class _Builder:
    def __init__(self, n_inputs: int) -> None:
        self.n_inputs = n_inputs
        self.next = n_inputs
        self.gates: list[list[int]] = []  # [op, a, b, o, p1, p2, width, output index]

    def _emit(
        self, op: int, a: int, b: int = 0, p1: int = 0, p2: int = 0, width: int = 0, out: bool = True, oi: int = 0
    ) -> int:
        o = -3
        if out:
            o = self.next
            self.next += 1
        self.gates.append([op, a, b, o, p1, p2, width, oi])
        return o

    # --- Boolean layer with constant folding
    def xor(self, x: int, y: int) -> int:
        if _is_const(x) and _is_const(y):
            return _const(_cval(x) ^ _cval(y))
        if _is_const(x):
            x, y = y, x
        if _is_const(y):
            return self.not_(x) if _cval(y) else x
        return self._emit(XOR, x, y)

    def not_(self, x: int) -> int:
        if _is_const(x):
            return _const(1 - _cval(x))
        return self._emit(NOT, x)

    def and_(self, x: int, y: int) -> int:
        if _is_const(x):
            x, y = y, x
        if _is_const(y):
            return x if _cval(y) else C0
        return self._emit(AND, x, y)

    def xorg(self, x: int, j: int, bit: int) -> int:
        assert not _is_const(x)
        return self._emit(XORG, x, 0, j, bit)

    def andg(self, x: int, j: int, bit: int) -> int:
        assert not _is_const(x)
        return self._emit(ANDG, x, 0, j, bit)

    def maj(self, x: int, y: int, c: int) -> int:
        """Carry ``maj(x, y, c) = c ^ ((x ^ c) & (y ^ c))``: one AND."""
        if c == C0:
            return self.and_(x, y)
        if c == C1:
            return self.not_(self.and_(self.not_(x), self.not_(y)))
        return self.xor(c, self.and_(self.xor(x, c), self.xor(y, c)))

    def mux(self, sel: int, x: int, y: int) -> int:
        """``sel ? x : y``: one AND."""
        return self.xor(y, self.and_(sel, self.xor(x, y)))

    # --- arithmetic
    def share_sum(self, j: int, b: int, keep_from: int, carry_in: bool = False) -> list[int]:
        """Bits keep_from..b-1 of (client share + server share) mod 2^b for input value j.

        The server's bits are garbler plaintext (free XOR); carries: ANDG for bit 0, then one
        AND per bit: b - 2 ANDs + 1 garbler half gate. With ``carry_in``, bit 0 is not a value bit
        but the carry into bit 1, shared as (client bit) XOR (server bit) (see ``engine``'s carry
        look-up): b - 2 ANDs, no garbler half gate.
        """
        s: list[int] = []
        c = C0
        for i in range(b):
            a = j * b + i
            if carry_in and i == 0:
                if keep_from == 0:
                    raise ValueError("with carry_in, bit 0 is a carry, not an output bit")
                c = self.xorg(a, j, 0)
                s.append(C0)  # placeholder: never kept
                continue
            s.append(self.xorg(a, j, i) if c == C0 else self._emit(SUM, a, c, j, i))
            if i < b - 1:
                # carry c' = c ^ ((a ^ c) & (g ^ c)): one fused CARRY gate (a three-halves AND)
                c = self.andg(a, j, i) if c == C0 else self._emit(CARRY, a, c, j, i)
        return s[keep_from:]

    def times(self, w: int, bits: list[int], neg: list[int], l: int, oi: int = 0) -> None:
        """Add ``w * sum_i (+-2^i) bits[i]`` to output oi (B2A2 gates + one NOUT, no AND)."""
        for i, (bi, ng) in enumerate(zip(bits, neg, strict=True)):
            self._emit(B2A2, bi, w, ng, i, width=l - i, out=False, oi=oi)
        self._emit(NOUT, w, 0, 0, 0, width=l, out=False, oi=oi)

    def gt_signed(self, x: list[int], y: list[int]) -> int:
        """[x > y] for two's-complement bit vectors (LSB first): len(x) ANDs."""
        m = len(x)
        xs = x[:-1] + [self.not_(x[-1])]
        ys = y[:-1] + [self.not_(y[-1])]
        c = C1  # carry of ys + ~xs + 1: 1 iff ys >= xs
        for i in range(m):
            c = self.maj(ys[i], self.not_(xs[i]), c)
        return self.not_(c)


def _finish(bld: _Builder, const_out: int = 0, n_outputs: int = 1) -> Compiled:
    gates = bld.gates
    # dead-gate elimination
    needed: set[int] = set()
    live = [False] * len(gates)
    for gi in range(len(gates) - 1, -1, -1):
        op, a, b, o = gates[gi][:4]
        if op in _SINKS or o in needed:
            live[gi] = True
            needed.add(a)
            if op in _TWO_IN:
                needed.add(b)
    gates = [g for g, lv in zip(gates, live, strict=False) if lv]
    # slot allocation (outputs get a fresh slot before the inputs are released: no aliasing)
    last_use: dict[int, int] = {}
    for gi, g in enumerate(gates):
        op, a, b = g[:3]
        last_use[a] = gi
        if op in _TWO_IN:
            last_use[b] = gi
    slot: dict[int, int] = {w: w for w in range(bld.n_inputs)}
    free: list[int] = []
    nslots = bld.n_inputs
    for w in range(bld.n_inputs):  # unused inputs free their slot at once
        if w not in last_use:
            free.append(w)
    recs = []
    tw = ct = 0
    regions: list[int] = []
    n_and = n_andg = 0
    for gi, g in enumerate(gates):
        op, a, b, o, p1, p2, width, oi = g
        sa = slot[a]
        sb = slot[b] if op in _TWO_IN else 0
        so = 0
        if o >= 0:
            if free:
                so = free.pop()
            else:
                so = nslots
                nslots += 1
            slot[o] = so
        t = c = 0
        q1, q2 = p1, p2
        if op in (AND, CARRY):  # three halves: hash tweaks t, t+1, t+2; G0 G1 G2; 5 control bits
            t, c = tw, ct
            tw, ct = tw + 3, ct + 24
            regions += [1] * 5  # control bits z0..z4, one bit plane each
            n_and += 1
        elif op == ANDG:
            t, c = tw, ct
            tw, ct = tw + 1, ct + 16
            n_andg += 1
        elif op in (B2A, B2A2):
            t, c = tw, len(regions)
            tw += 1
            regions += [width] * (2 if op == B2A2 else 1)
            q1, q2 = width, p2
            if op == B2A:
                sb = p1  # weight code: 0 -> +1, 1 -> -1
            else:
                so = p1  # B2A2 weight code (in the unused output field): 0 -> +1, 1 -> -1
        elif op == NOUT:
            t, c = tw, len(regions)
            tw += 1
            regions.append(width)
            q1, q2 = width, 0
        elif op == REVEAL:
            c = len(regions)
            regions.append(1)
            q1, q2 = 0, p2
        elif op == GVAL:  # a = the n wire, b = the garbler's value index, bits [p1, p1 + width)
            sb, q1, q2 = b, p1, width
        recs.append([op, sa, sb, so, t, c, q1, q2, oi])
        for w in {a} | ({b} if op in _TWO_IN else set()):
            if last_use.get(w) == gi:
                free.append(slot[w])
    arr = np.array(recs, dtype=np.int32).reshape(-1, GATE_FIELDS)
    return Compiled(
        arr, max(nslots, 1), bld.n_inputs, max(tw, 1), ct, tuple(regions), n_and, n_andg, const_out, n_outputs
    )


@functools.lru_cache(maxsize=64)
def max_trunc_circuit(ring_bits: int, in_bits: int, shift: int, relu: bool, k: int, carry_in: bool = False) -> Compiled:
    """``ring.nonlinear`` over windows of k values, output re-shared in Z_{2^l}.

    Truncation commutes with max (floor is monotone), so the window maximum is taken over the
    (b - s)-bit truncated values, m = b - s bits. The last comparison selects no bits: the output
    is ``w1 * V(x) + w2 * V(y)`` in arithmetic gates (w1 = keep & gt, w2 = keep & ~gt).
    AND gates per instance (three halves, 24.625 bytes each; plus k garbler half gates, 16 bytes):
    k = 1: b - 2;  k = 2: 2(b-2) + m (+2 with ReLU);  k = 4: 4(b-2) + 5m (+2 with ReLU).
    Garbled bytes per instance (``Compiled.bytes_per_inst``; the client's input OTs come on top,
    b * 128/ot_k bits per value, 96 bytes for b = 24 at ot_k = 4):
    ReLU l = b = 24, s = 8: 22 AND + 1 ANDG, 624.5 bytes; l = b = 32, s = 12: 30 AND + 1 ANDG, 868 bytes;
    2x2 max-pool with ReLU (24, 8): 170 AND + 4 ANDG, 4383.75 bytes.
    """
    b, s, l = in_bits, shift, ring_bits
    bld = _Builder(k * b)
    vals = [bld.share_sum(j, b, s, carry_in) for j in range(k)]
    _max_out(bld, vals, relu, l, 0)
    return _finish(bld)


def _max_out(bld: _Builder, vals: list[list[int]], relu: bool, l: int, oi: int) -> None:
    """Output oi := the maximum of the m-bit signed values (with ReLU: of it and 0), re-shared in Z_{2^l}.

    Pairwise tree of comparisons and multiplexers down to two values (m ANDs each for both);
    the last comparison selects no bits: ``w1 * V(x) + w2 * V(y)`` in arithmetic gates. ANDs for
    k values: (k - 1) m + (k - 2) m, plus 2 with ReLU (k >= 2).
    """
    mb = len(vals[0])
    while len(vals) > 2:  # pairwise tree down to two values (k = 4: one level)
        nxt = []
        for x, y in zip(vals[0::2], vals[1::2], strict=False):
            gt = bld.gt_signed(x, y)
            nxt.append([bld.mux(gt, xi, yi) for xi, yi in zip(x, y, strict=False)])
        if len(vals) % 2:
            nxt.append(vals[-1])
        vals = nxt
    if len(vals) == 1:
        m = vals[0]
        if relu:
            bld.times(bld.not_(m[-1]), m[:-1], [0] * (mb - 1), l, oi)
        else:
            for i in range(mb):
                bld._emit(B2A, m[i], 0, 1 if i == mb - 1 else 0, i, width=l - i, out=False, oi=oi)
        return
    # last level: no Boolean multiplexer; out = w1 * V(x) + w2 * V(y) with
    # w1 = keep & gt, w2 = keep & ~gt (keep = NOT sign of the max for ReLU, else 1)
    x, y = vals
    gt = bld.gt_signed(x, y)
    if relu:
        keep = bld.not_(bld.mux(gt, x[-1], y[-1]))
        w1 = bld.and_(keep, gt)
        w2 = bld.xor(keep, w1)
        bld.times(w1, x[:-1], [0] * (mb - 1), l, oi)
        bld.times(w2, y[:-1], [0] * (mb - 1), l, oi)
    else:
        signs = [0] * (mb - 1) + [1]  # two's complement: the top bit weighs -2^(mb-1)
        bld.times(gt, x, signs, l, oi)
        bld.times(bld.not_(gt), y, signs, l, oi)


@functools.lru_cache(maxsize=64)
def argmax_circuit(in_bits: int, k: int) -> Compiled:
    """Smallest index of the largest of k signed b-bit values, revealed to the evaluator.

    AND gates per instance: k * (b - 2) [adders] + (k - 1) * b [comparisons]
    + (k - 2) * b [value multiplexers] + index multiplexers; plus k garbler half gates.
    K = 2, b = 24: 68 AND + 2 ANDG, 1706.6 bytes; b = 32: 92 AND + 2 ANDG, 2297.6 bytes.
    """
    b = in_bits
    bld = _Builder(k * b)
    vals = [bld.share_sum(j, b, 0) for j in range(k)]
    idx_bits = max(1, (k - 1).bit_length())
    best = vals[0]
    idx = [C0] * idx_bits
    for j in range(1, k):
        gt = bld.gt_signed(vals[j], best)
        if j < k - 1:
            best = [bld.mux(gt, x, y) for x, y in zip(vals[j], best, strict=False)]
        idx = [bld.mux(gt, _const((j >> i) & 1), idx[i]) for i in range(idx_bits)]
    const_out = 0
    for i, w in enumerate(idx):
        if _is_const(w):
            const_out |= _cval(w) << i
        else:
            bld._emit(REVEAL, w, 0, 0, i, out=False)
    return _finish(bld, const_out)


@functools.lru_cache(maxsize=64)
def relu_sign_circuit(
    ring_bits: int, in_bits: int, shift: int, chunks: tuple[int, ...], drop: tuple[int, ...] | None = None
) -> Compiled:
    """ReLU with truncation, the sign from look-ups, the client's kept bits out of the circuit.

    One carry chain over chunks, LSB first: the s dropped bits in chunks ``drop`` (default: one
    chunk of s, none for s = 0), then the kept bits below the top one in chunks ``chunks`` (summing
    to m - 1; m = b - s). Client wires per value: the masks of the look-up bits, ``[g_1, g_2, p_2,
    ..., g_L, p_L]`` (the first chunk has no carry in, so no propagate bit; 2L - 1 wires), then the
    client's top kept bit a. Garbler value bits: the opened look-up bits (same places, t of them),
    its top kept bit g at t, a random bit r0 at t + 1, and its kept bits below the top one, S',
    from t + 2 (m - 1 bits).

    The look-up wires XOR the garbler's bits are the generate / propagate bits of each chunk of
    the two shares. The carry is one AND per chunk after the first (``k = G_i ^ (P_i & k)``): after
    the dropped chunks it is the truncation's carry k, after all of them the carry k' into the top
    bit, and ``n = NOT(a ^ g ^ k')``. No sum bit is needed: the kept part
    is ``X_h = S_h + C_h + k - 2^m w`` (w: the carry out of the top), the output ``n X_h``; with
    ``S_h = S' + 2^(m-1) g``, ``C_h = C' + 2^(m-1) a`` and ``n w = n (a OR g)`` (if a = g = 0 there is no
    carry out; if a = g = 1 there is; if a != g, n = 1 means k' = 1 and so w = 1),

        n X_h = n (S' + C' + k - 2^(m-1) (a ^ g))   in Z_{2^l}.

    Output 0 is ``n (S' + k - 2^(m-1) (a ^ g))``: B2A2 gates for k and a ^ g, a GVAL for S' (the
    garbler's own bits, no message) and one NOUT. Output 1 reveals ``n' = n ^ r0`` (uniform) to the
    client, who adds ``n' C'`` itself; the rest, ``r0 (1 - 2n') C'``, is one correlated OT after the
    circuit (``engine``: the post-message). L - 1 AND gates in all; at (24, 24, 8), dropped (8,),
    kept (5, 5, 5): 3 ANDs.
    """
    l, b, s = ring_bits, in_bits, shift
    m = b - s
    drop = ((s,) if s else ()) if drop is None else tuple(drop)
    if sum(chunks) != m - 1 or not chunks or min(chunks) < 1:
        raise ValueError("chunks must split the m - 1 kept bits below the top one")
    if sum(drop) != s or (drop and min(drop) < 1):
        raise ValueError("drop must split the s dropped bits")
    seq = drop + tuple(chunks)
    top = 2 * len(seq) - 1  # look-up wires before the top bit
    bld = _Builder(top + 1)
    w = 0
    k = k0 = None
    for i in range(len(seq)):
        g = bld.xorg(w, 0, w)
        if k is None:  # the first chunk: its carry out is its generate bit
            k, w = g, w + 1
        else:
            p = bld.xorg(w + 1, 0, w + 1)
            k = bld.xor(g, bld.and_(p, k))
            w += 2
        if i == len(drop) - 1:
            k0 = k  # the carry out of the dropped bits
    ag = bld.xorg(top, 0, top)  # a ^ g
    n = bld.not_(bld.xor(ag, k))
    if k0 is not None:
        bld._emit(B2A2, k0, n, 0, 0, width=l, out=False)
    bld._emit(B2A2, ag, n, 1, m - 1, width=l - (m - 1), out=False)
    bld._emit(GVAL, n, 0, top + 2, 0, width=m - 1, out=False)
    bld._emit(NOUT, n, 0, 0, 0, width=l, out=False)
    bld._emit(REVEAL, bld.xorg(n, 0, top + 1), 0, 0, 0, out=False, oi=1)
    return _finish(bld, n_outputs=2)


@functools.lru_cache(maxsize=64)
def relu_link_circuit(ring_bits: int, in_bits: int, shift: int) -> Compiled:
    """``relu_sign_circuit`` with the carry chained through linked look-ups (``engine.MaxTrunc``,
    ``chain``): the tables give the carries themselves, so the circuit has no AND gate.

    Client wires per value: the masks of the truncation's carry k0 (shift > 0 only) and of the carry
    k' into the top kept bit (t = 1 or 2 wires), then its top kept bit a. Garbler value bits: its
    opened shares of k0 and k' (same places), its top kept bit g at t, a random bit r0 at t + 1, S' from
    t + 2 (m - 1 bits). Outputs as ``relu_sign_circuit``'s: ``n = NOT(a ^ g ^ k')``, output 0
    ``n (S' + k0 - 2^(m-1) (a ^ g))``, output 1 reveals ``n ^ r0``.
    """
    l, b, s = ring_bits, in_bits, shift
    m = b - s
    if m < 2:
        raise ValueError("a linked ReLU needs at least two kept bits")
    top = 2 if s else 1
    bld = _Builder(top + 1)
    kp = bld.xorg(top - 1, 0, top - 1)  # k'
    ag = bld.xorg(top, 0, top)  # a ^ g
    n = bld.not_(bld.xor(ag, kp))
    if s:
        bld._emit(B2A2, bld.xorg(0, 0, 0), n, 0, 0, width=l, out=False)  # n k0
    bld._emit(B2A2, ag, n, 1, m - 1, width=l - (m - 1), out=False)
    bld._emit(GVAL, n, 0, top + 2, 0, width=m - 1, out=False)
    bld._emit(NOUT, n, 0, 0, 0, width=l, out=False)
    bld._emit(REVEAL, bld.xorg(n, 0, top + 1), 0, 0, 0, out=False, oi=1)
    return _finish(bld, n_outputs=2)


@functools.lru_cache(maxsize=64)
def argmax_sign_circuit(k: int, chunks: tuple[int, ...]) -> Compiled:
    """Argmax of k values from look-ups (``engine.Argmax``, sign mode), revealed to the evaluator.

    Values (k + k(k-1)/2 per instance, each 2L - 1 masked look-up wires ``[g_1, g_2, p_2, ..., g_L,
    p_L]`` for the chunks ``chunks`` of its low b bits, then its bit b; the garbler's bits in the
    same places): t_v = bit b ^ (carry out of the low b bits), the carry one AND per chunk after
    the first. Values 0..k-1 are the shares' own parts (bit b is 0: t is the wrap kappa_i), then
    pair (i, j), i < j, in ``triu_indices`` order, whose t XOR kappa_i XOR kappa_j is [u_i < u_j].
    Class i wins iff u_j < u_i for every j < i and not u_i < u_j for every j > i: k - 2 ANDs per
    class (none for k = 2); index bit r is the XOR of the wins of the classes with bit r set.
    ANDs: (k + k(k-1)/2)(L - 1) + k(k - 2).
    """
    L = len(chunks)
    cb = 2 * L  # 2L - 1 look-up wires and bit b
    nv = k + k * (k - 1) // 2
    bld = _Builder(nv * cb)
    t = []
    for v in range(nv):
        base = v * cb
        c = bld.xorg(base, v, 0)
        for w in range(1, 2 * L - 1, 2):
            g = bld.xorg(base + w, v, w)
            p = bld.xorg(base + w + 1, v, w + 1)
            c = bld.xor(g, bld.and_(p, c))
        t.append(bld.xor(c, bld.xorg(base + cb - 1, v, cb - 1)))
    less = {}  # (i, j) -> [u_i < u_j]
    for n, (i, j) in enumerate(zip(*np.triu_indices(k, 1), strict=True)):
        less[int(i), int(j)] = bld.xor(t[k + n], bld.xor(t[i], t[j]))
    idx_bits = max(1, (k - 1).bit_length())
    idx = [C0] * idx_bits
    for i in range(1, k):  # class 0's win sets no index bit
        win = C1
        for j in range(k):
            if j != i:
                win = bld.and_(win, less[j, i] if j < i else bld.not_(less[i, j]))
        idx = [bld.xor(idx[r], win) if (i >> r) & 1 else idx[r] for r in range(idx_bits)]
    for r, w in enumerate(idx):
        if not _is_const(w):
            bld._emit(REVEAL, w, 0, 0, r, out=False)
    return _finish(bld)
