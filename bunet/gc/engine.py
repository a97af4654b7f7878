"""Garbler (server) and evaluator (client) over NumPy share arrays; messages are bytes.

Session setup (four messages, once)::

    m1 = ev.hello(); m2 = g.hello(m1); m3 = ev.finish_hello(m2); m4 = g.finish_hello(m3)
    ev.finish_setup(m4)

128 base OTs (Chou-Orlandi; the evaluator is the base-OT sender) set up the forward OT extension
(server = sender, its correlation is the free-XOR offset Delta); 128 forward OTs, hashed, are the
base OTs of a reverse extension (server = receiver, client's random correlation Delta'). Then
every layer is one request/response per chunk, after a pre-message for ops with a carry look-up::

    for j in range(op.link_passes):       # chained sign mode: one link pass per chunk after the first
        g.open_link(op, ev.link_request(op, yc, g.link_pre(op, ys, j), j))
    pre = g.pre(op, ys)                   # only if op.lut_bits: reverse OTs on the server's low bits
    req = ev.request(op, yc, pre)         # OT-extension message for the client's input bits (+ tables)
    resp, out_s = g.respond(op, req, ys)  # garbled tables + arithmetic output ciphertexts
    out_c = ev.finish(op, resp)

Correlated OTs come from silent OT by default (``ot="silent"``, ``bunet.gc.silent``: Ferret's LPN
extension with half-tree GGM, 1 bit of choice corrections per OT plus its iteration messages, about
0.30 bytes per OT), bootstrapped at set-up by SoftSpoken (Roy, CRYPTO 2022) with k bits per block
(``Evaluator(ot_k=4)``, k = 1 is plain IKNP), or from SoftSpoken alone (``ot="softspoken"`` on both
parties): the receiver sends 128/k bits per OT (16 bytes for IKNP, 4 for the default k = 4; k = 2
costs 8 bytes and less CPU). The forward correlated OTs are directly the client's input labels
(silent: the garbler's zero labels are q ^ d Delta for the client's corrections d): the garbler sends
nothing per client input bit but the silent iteration messages, and the server's own share bits are
XOR-ed in for free.
With silent OT, an iteration's message rides on the first response (forward) or request (reverse)
that uses it, and ``finish`` of a later response of that iteration waits for the one carrying it.

Every batch of forward SoftSpoken OTs (the set-up's 128, silent OT's base COTs, each SoftSpoken
request's) ends with ``otcheck.PAD_ROWS`` rows of random choices and the client's consistency proof
(``bunet.gc.otcheck``); the server checks it before it uses the rows and raises ``OTCheckFailed``
otherwise: a cheating receiver cannot probe Delta.

Look-ups (``op.lut_plan``, ``op.lut_bits`` reverse OTs per value): instead of AND gates, the
client sends 2^d-bit tables per value, encrypted under d reverse OTs so that the server opens
exactly the entry of its own d bits x (1-of-2^d OT from d random OTs, Naor-Pinkas; see
``bn_luts_send`` in native/gc/luts.c). Entry x holds a bit of (client's bits a) + x - the carry
out ("generate") or "propagate" - XOR a fresh random bit rho of the client. The server learns
f ^ rho (uniform), the client nothing; in the circuit the wire is rho (client input) XOR f ^ rho
(garbler plaintext) = f.

* Carry mode (truncations and pools): the d = min(shift, 8) low bits are dropped by the
  truncation, only their carry matters: one table instead of d - 1 ANDs and a garbler half gate.
* Sign mode (plain ReLU): one carry chain over chunks, LSB first: the dropped bits (one chunk up
  to 8 bits, else chunks of at most 8: 5 + 5 for a shift of 10), then the kept bits below the top
  one (at most SIGN_CHUNK bits: 5 + 5 + 5 at 24/24/8); per chunk its generate and propagate bits
  (the first only its generate bit), on b - 1 reverse OTs per value; the circuit chains the
  chunks with one AND each and outputs
  ``n (S' + C' + k - 2^(m-1) (a ^ g))`` by arithmetic gates (``circuits.relu_sign_circuit``),
  except ``n C'``: the circuit reveals ``n' = n ^ r0`` (r0: the server's random bit, on one more
  reverse OT), the client adds ``n' C'`` and the rest, ``r0 (1 - 2n') C'``, is a correlated OT on
  r0's row, closed by the client's post-message (``Evaluator.take_posts`` / ``Garbler.post``)
  once the step's responses are evaluated.

Chained (``MaxTrunc.chain``, the default in sign mode): the carry goes through *link* tables
instead of AND gates: chunk j's table is indexed by the server's chunk bits and its share s of the
carry in (c = s ^ rho_in), entry [a + x + c >= 2^d] ^ rho_out (``bn_luts_send``, w = 3). The
server picks s only after it opened the previous table, so each link is a pass before the op's
pre-message: ``g.link_pre(op, ys, j)`` -> ``ev.link_request(op, yc, lpre, j)`` -> ``g.open_link``
(``prepare_link_pre`` / ``prepare_link`` / ``claim_link`` to pipeline them); the last link rides in
the request and the circuit has no AND (``circuits.relu_link_circuit``). docs/protocol.md has the
argument.

Bytes per ReLU (24, 24, 8) at ot_k = 4: 720.5 without look-ups (624.5 garbled + 96 up), 272.3
in sign mode (85.2 garbled + 96 of reverse OTs down; 91 up: 8 OTs, 56 bytes of tables, and
3 bytes of post-message). Chunks of 8 + 7 bits took 311.6 (128 bytes of tables, one AND less).
With silent OT 156.3 (2^18 ReLUs, set-up included): 1 + 3 bytes of corrections for the 8 + 24 OTs
and about 5 bytes of iteration messages instead of 32 + 96. Chained (the default), silent OT:
56.3 (no garbled gate; 30 bytes of tables, 11.9 of output conversion, 3.5 of reverse OTs; 4 link
passes), ReLU + 2x2 max-pool window 351.5 instead of 899.6 (``bench/gc.py``, same run).

Both parties make their messages on worker threads: ``prepare`` (client requests) and
``prepare_pre`` (server pre-messages) claim the OT ranges in order and return the job, like
``claim`` for the garbling.

Requests must reach ``respond`` in the order they were made (checked: the sequence number fixes
the OT range and the hash tweaks, which are never reused); pre-messages pair with requests in
order. ``finish`` may take responses in any order (with silent OT: concurrently, see above) and
the C calls release the GIL, so chunks can be pipelined and run on two threads.
``g.claim(op, req, ys)`` does the in-order part of ``respond`` and returns the garbling job, so a
server can garble several chunks at once (``respond(...)`` is ``claim(...)()``). Chunks of about
8192 ReLUs keep each call's working set in cache (``bunet.protocol.gc_pipeline`` pipelines both
parties, two worker threads each).

Costs per instance (AND = three-halves garbling, Rosulek-Roy 2021: 24 bytes + 5 control bits;
ANDG = garbler half gate, 16 bytes; see ``circuits``). Without look-ups (``lut=False``):
MaxTrunc k=1 (ReLU or truncation): b-2 AND + 1 ANDG, plus (l-j)-bit arithmetic ciphertexts per
output bit j (two per bit for the ReLU, fused with its multiplexer); MaxTrunc k=4: 4(b-2) + 5(b-s)
(+2 with ReLU) AND + 4 ANDG. With them (the default): ReLU in sign mode 3 AND (272.3 bytes in
all; at shift 0 and 16 bits, the max-pool's comparisons in ``bunet.gc.pool``: 2 AND, 165.6
bytes), carry mode b - d - 1 AND per value and no ANDG. Argmax over K <= 4 in sign mode: K + K(K-1)/2
look-up chains (``Argmax``), K = 2 at 24 bits 9 AND, 773.8 bytes; without look-ups (K > 4):
K(b-2) + (K-1)b + (K-2)b + index muxes AND + K ANDG, 1,898.6 bytes for K = 2.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..message import new_message
from ..native_errors import check
from . import circuits, otcheck, silent
from .native import circuit_fields, run_circuit
from .ot import N_BASE, POINT, SEED, BaseOTReceiver, BaseOTSender, ggm_choices, ggm_client, ggm_garbler

try:
    from ._native import ffi, lib
except ImportError as e:  # pragma: no cover - build problem
    raise ImportError("bunet.gc._native is not built: run `pip install .` or `python native/build_ffi.py`") from e

if not lib.bn_cpu_ok():  # pragma: no cover - hardware dependent
    raise RuntimeError("bunet.gc needs a CPU with AES-NI, PCLMULQDQ, SSSE3 and SSE4.1 (not found by cpuid)")

MAGIC = b"BNG2"
T_HELLO1, T_HELLO2, T_REQ, T_RESP, T_HELLO3, T_HELLO4, T_PRE, T_POST, T_LPRE, T_LREQ = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
LUT_MAX = 8  # carries out of at most this many low bits come from look-up tables (2^d-bit tables)
# Sign mode's chunks of kept bits: at most 5 bits, a 64-bit generate/propagate table, one hash block
# per key. Against 8-bit chunks (512-bit tables, two blocks per key) a 24/24/8 ReLU has 3 chunks
# instead of 2: one more AND and two more mask bits in, 72 fewer table bytes, 8 fewer hash blocks
# for the server and 16 for the client; 272.3 bytes instead of 311.6 (bench/gc.py), the same CPU
# time within the noise.
SIGN_CHUNK = 5
# Argmax in sign mode (``Argmax``): chunks of at most 6 bits (b = 24: 6 + 6 + 6 + 6, 3 ANDs, 8 input
# bits and 56 table bytes per value, 773.8 bytes per K = 2 instance in all; chunks of 5: 799.6, of 8:
# 988), for up to 4 classes (k + k(k-1)/2 chains grow quadratically; K = 4: 2,727 bytes against the
# adder circuit's 5,644).
ARGMAX_CHUNK = 6
# Chained sign mode (``MaxTrunc.chain``): the dropped bits' carry in chunks of at most 4 bits. The
# truncation's 8 bits at 24/24/8 as 4 + 4 take a 16-bit generate table and a 32-bit link, 6 bytes,
# instead of one 256-bit table, 32 bytes, for one more link pass; the kept bits stay in chunks of
# SIGN_CHUNK (a 5-bit chunk's link is 8 bytes; two 4-bit ones, 8 in all, would cost a pass to save
# 2 bytes).
LINK_DROP_CHUNK = 4
ARGMAX_SIGN_MAX = 4
_SETUP_DOM = 0x5245560000000000  # "REV": hash domain of the reverse OT extension's base-OT keys
_MUX_DOM = 0x4D55580000000000  # "MUX": hash domain of the post-message's correlated OTs
OT_BACKENDS = ("silent", "softspoken")
DEFAULT_OT = "silent"
_SILENT_BIT = 0x80  # in the first hello's OT byte: the client asks for silent OT (low bits: SoftSpoken's k)
_HDR = struct.Struct("<4sB8sQBBBBBHQ")  # magic, type, tag, seq, opcode, l, b, s, relu, k, n
OP_MAXTRUNC, OP_ARGMAX = 1, 2  # (3 was the fused ReLU + max-pool circuit; see bunet.gc.pool)


def _check_int(name: str, v: object, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
    return int(v)


def _lut_bytes(d: int, w: int) -> int:
    """Bytes of a table of d index bits, w bits per entry (w = 3: a link, one bit per entry)."""
    return max(1, (1 << d) * (1 if w == 3 else w) // 8)


@dataclass(frozen=True)
class LutPlan:
    """How an op uses carry look-ups (see the module docstring).

    ``rows`` reverse OTs per value, on the server's bits 0 .. rows-1; one table per entry of
    ``tables``: (bit offset, d, w) with w bits per entry: the generate bit (the carry out of bits
    off .. off+d-1 of the two shares) and, for w = 2, the propagate bit; the circuit input of a
    value is the masked table bits (one wire each, in this order), then its bits from ``keep_from``.
    """

    rows: int
    tables: tuple[tuple[int, int, int], ...]
    keep_from: int
    chunks: tuple[int, ...] = ()  # sign mode: the chunk sizes of the kept bits (generate/propagate pairs)
    drop: tuple[int, ...] = ()  # sign mode: the chunk sizes of the dropped bits (their carry chain)
    # sign mode: the last row is the server's random bit r0 (the mask of the revealed n), not a share bit
    # chained (``MaxTrunc.chain``): the carry goes through linked tables in passes before this one; this
    # plan is the last pass's: one link table over the last chunk's bits and the carry share (rows 0 .. d),
    # then r0; the circuit's masked wires are the truncation's carry k0 (if any) and the carry k'
    chain: bool = False

    @property
    def mux(self) -> bool:
        return bool(self.chunks)

    @property
    def table_bytes(self) -> int:
        return sum(_lut_bytes(d, w) for _, d, w in self.tables)

    @property
    def n_masked(self) -> int:
        """Masked table bits (circuit wires) per value."""
        if self.chain:
            return 1 + bool(self.drop)
        return sum(w for _, _, w in self.tables)

    @property
    def seq(self) -> tuple[int, ...]:
        """The carry chain's chunk sizes, LSB first: the dropped bits', then the kept bits'."""
        return self.drop + self.chunks

    def link_table(self, j: int) -> tuple[int, int, int]:
        """Chained: table j of the chain as the native calls read it from a link word
        (``MaxTrunc.link_word``): the first chunk's generate table, then links (w = 3)."""
        d = self.seq[j]
        return (0, d, 1) if j == 0 else (0, d + 1, 3)

    def link_rows(self, j: int) -> int:
        """Chained: reverse OTs per value of link pass j (its chunk's bits, and the carry share after the first)."""
        return self.seq[j] + (j > 0)

    def tabs(self) -> np.ndarray:
        """The tables as the native calls read them: (off, d, w) per table, flattened."""
        return np.array(self.tables, dtype=np.uint32).reshape(-1)

    def circuit_words(self, v: np.ndarray, masked: np.ndarray, in_bits: int) -> np.ndarray:
        """The circuit's input words: the masked table bits (bits 0 .. n_masked - 1 of ``masked``, one
        word per value), then bits keep_from.. of v."""
        high = (v.reshape(-1) >> np.uint64(self.keep_from)) & _mask(in_bits - self.keep_from)
        return (high << np.uint64(self.n_masked)) | masked


def _split(bits: int, most: int = LUT_MAX) -> tuple[int, ...]:
    """bits into the fewest chunks of at most ``most``, as equal as possible, larger first."""
    c = -(-bits // most)
    return tuple(bits // c + (1 if i < bits % c else 0) for i in range(c))


def _lut_plan(in_bits: int, shift: int, relu: bool, k: int) -> LutPlan | None:
    """Sign mode for a plain ReLU (the whole comparison by look-ups: the circuit keeps one AND per
    chunk after the first; the client's kept bits stay out of it); carry mode otherwise (the carry
    out of the min(shift, 8) low bits); None for what is left with shift 0 (nothing is dropped)."""
    m = in_bits - shift
    chunks = _split(m - 1, SIGN_CHUNK) if m >= 2 else ()
    drop = _split(shift) if shift else ()
    # sign mode's tables, one carry chain LSB first: the dropped bits' chunks (their carry out is the
    # truncation's carry), then the kept bits' below the top one; each a generate and a propagate
    # bit, but the first, which has no carry in: only its generate bit
    tabs = []
    off = 0
    for d in drop + chunks:
        tabs.append((off, d, 2 if tabs else 1))
        off += d
    sign = LutPlan(in_bits, tuple(tabs), in_bits - 1, chunks, drop)
    # the garbler's circuit word (masks, g, r0, S') must fit 64 bits
    if relu and k == 1 and chunks and sign.n_masked + 1 + m <= 64:
        return sign
    if shift == 0:
        return None
    d = min(shift, LUT_MAX)
    return LutPlan(d, ((0, d, 1),), d)


# The plans are pure functions of an op's fields; they are cached because the engines and the
# pipelines ask for them per chunk and per message (hundreds of thousands of times a slice).
@lru_cache(maxsize=256)
def _max_trunc_plan(in_bits: int, shift: int, relu: bool, k: int, chain: bool) -> LutPlan | None:
    lp = _lut_plan(in_bits, shift, relu, k)
    if chain and lp is not None and lp.chunks and len(lp.seq) >= 2:
        # a link's index is its chunk and the carry share (chunks after the first of at most 7 bits);
        # the dropped bits go in chunks of LINK_DROP_CHUNK: one more pass for far smaller tables
        drop = _split(shift, LINK_DROP_CHUNK)
        d = lp.chunks[-1]
        return LutPlan(d + 2, ((0, d + 1, 3),), lp.keep_from, lp.chunks, drop, chain=True)
    return lp


@lru_cache(maxsize=256)
def _argmax_plan(b: int) -> LutPlan:
    tabs, off = [], 0
    for d in _split(b, ARGMAX_CHUNK):  # one carry chain over the low b bits, LSB first
        tabs.append((off, d, 2 if tabs else 1))
        off += d
    return LutPlan(b, tuple(tabs), b)


def _mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def _post_bytes(op: _Op) -> int:
    return (int(op.ring_bits) + 7) // 8


def _pack_ring(v: np.ndarray, nb: int) -> bytes:
    return np.ascontiguousarray(v.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :nb]).tobytes()


def _unpack_ring(b: memoryview, count: int, nb: int) -> np.ndarray:
    raw = np.zeros((count, 8), dtype=np.uint8)
    raw[:, :nb] = np.frombuffer(b, dtype=np.uint8).reshape(count, nb)
    return raw.view("<u8").reshape(-1).astype(np.uint64)


class _Op:
    """What every op shares: its message sizes, from its circuit and its k * circ_bits input bits."""

    k: int
    in_bits: int | None
    ring_bits: int

    @property
    def lut_plan(self) -> LutPlan | None:
        """How the op uses carry look-ups (None: not at all)."""
        return None

    @property
    def items(self) -> int:
        """Values per instance in the circuit (and in the look-ups): the k inputs, unless ``words``
        derives others from them."""
        return self.k

    @property
    def word_bits(self) -> int:
        """Bits of each value the circuit reads (of ``words``' values)."""
        return int(self.in_bits or 0)

    def words(self, y: np.ndarray, client: bool) -> np.ndarray:
        """One party's (n, items) circuit values from its (n, k) shares (local, no message)."""
        return y

    @property
    def lut_bits(self) -> int:
        """Reverse OTs per value for the look-ups (0: the op has no pre-message)."""
        return self.lut_plan.rows if self.lut_plan else 0

    @property
    def circ_bits(self) -> int:
        """Input bits per value in the circuit: in_bits, or the masked table bits and the kept bits."""
        b = int(self.in_bits or 0)
        lp = self.lut_plan
        return lp.n_masked + self.word_bits - lp.keep_from if lp else b

    @property
    def circuit(self) -> circuits.Compiled:  # pragma: no cover - each op defines it
        raise NotImplementedError

    def message_sizes(self, n: int, ot_k: int = 4) -> tuple[int, int]:
        """(request bytes, response bytes) for n instances, to size chunks for a transport.

        Ops with a carry look-up also have a pre-message (``pre_size``) before the request."""
        m = _pad128(n * self.items * self.circ_bits)
        c = self.circuit
        tables = n * self.items * self.lut_plan.table_bytes if self.lut_plan else 0
        return _HDR.size + _req_len(ot_k, m) + tables, _HDR.size + n * c.ct_bytes + c.arith_len(n)

    def pre_size(self, n: int, ot_k: int = 4) -> int:
        """Bytes of the server's pre-message for n instances (0 without a carry look-up)."""
        d = self.lut_bits
        return _HDR.size + _cot_len(ot_k, _pad128(n * self.items * d)) if d else 0

    @property
    def link_passes(self) -> int:
        """Passes of linked look-ups before the op's pre-message (0: none)."""
        return 0

    def link_pre_size(self, n: int, j: int, ot_k: int = 4) -> int:
        """Bytes of the server's pre-message of link pass j for n instances."""
        return _HDR.size + 1 + _cot_len(ot_k, _pad128(n * self.items * self.lut_plan.link_rows(j)))

    def link_req_size(self, n: int, j: int) -> int:
        """Bytes of the client's link request of pass j for n instances (without silent OT's iteration messages)."""
        return _HDR.size + 1 + n * self.items * _lut_bytes(*self.lut_plan.link_table(j)[1:])

    @property
    def has_post(self) -> bool:
        """Sign mode: the client's post-message completes the server's shares after the step."""
        return self.lut_plan is not None and self.lut_plan.mux

    def post_size(self, n: int) -> int:
        """Bytes of the client's post-message for n instances (0 unless in sign mode)."""
        return _HDR.size + n * self.items * _post_bytes(self) if self.has_post else 0


@dataclass(frozen=True)
class MaxTrunc(_Op):
    """``ring.nonlinear`` over windows of k values, re-shared: (n, k) shares -> (n,) shares.

    k=1, relu=True: ReLU fused with truncation; k=1, relu=False: truncation; k=4: 2x2 max-pool.
    """

    ring_bits: int
    in_bits: int | None = None
    shift: int = 0
    relu: bool = True
    k: int = 1
    lut: bool = True  # carries out of the low shift bits (up to LUT_MAX) by look-up tables
    chain: bool = True  # sign mode: the carry chained through linked tables (no AND gate; more rounds)

    def __post_init__(self) -> None:
        l = _check_int("ring_bits", self.ring_bits, 1, 64)
        b = l if self.in_bits is None else _check_int("in_bits", self.in_bits, 1, l)
        object.__setattr__(self, "in_bits", b)
        _check_int("shift", self.shift, 0, b - 1)
        _check_int("k", self.k, 1, 64)
        for name in ("relu", "lut", "chain"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be a bool")

    @property
    def lut_plan(self) -> LutPlan | None:
        if not self.lut:
            return None
        return _max_trunc_plan(int(self.in_bits or 0), self.shift, bool(self.relu), self.k, bool(self.chain))

    @property
    def link_passes(self) -> int:
        lp = self.lut_plan
        return len(lp.seq) - 1 if lp is not None and lp.chain else 0

    def link_word(self, y: np.ndarray, j: int, s: np.ndarray | None) -> np.ndarray:
        """Chained: the bits table j reads of each value: chunk j of y (n values), and on top the
        server's carry share s (0/1 per value; None: the client's word, or the first table)."""
        lp = self.lut_plan
        off, d = sum(lp.seq[:j]), lp.seq[j]
        w = (y.reshape(-1) >> np.uint64(off)) & _mask(d)
        if s is not None:
            w |= s.astype(np.uint64) << np.uint64(d)
        return w

    @property
    def circuit(self) -> circuits.Compiled:
        lp = self.lut_plan
        if lp is None:
            return circuits.max_trunc_circuit(self.ring_bits, self.in_bits, self.shift, bool(self.relu), self.k)
        if lp.chain:
            return circuits.relu_link_circuit(self.ring_bits, self.in_bits, self.shift)
        if lp.chunks:
            return circuits.relu_sign_circuit(self.ring_bits, self.in_bits, self.shift, lp.chunks, lp.drop)
        return circuits.max_trunc_circuit(
            self.ring_bits, self.circ_bits, self.shift - lp.keep_from + 1, bool(self.relu), self.k, carry_in=True
        )

    def _params(self) -> tuple[int, int, int, int, int, int]:
        lp = self.lut_plan
        mode = 0 if lp is None else 3 if lp.chain else 2 if lp.chunks else 1
        return (OP_MAXTRUNC, self.ring_bits, self.in_bits, self.shift, int(bool(self.relu)) | mode << 1, self.k)


@dataclass(frozen=True)
class Argmax(_Op):
    """Index of the largest of k signed in_bits-bit values (ties: lowest), for the client only.

    Sign mode (``lut``, 2 <= k <= ARGMAX_SIGN_MAX, b = in_bits <= 62): every comparison is one bit
    of look-ups, no adder. With u_i = (y_i + 2^(b-1)) mod 2^b (the b-bit value x_i offset to
    unsigned, order kept) and each party's b-bit parts a_i (client, offset added) and s_i,
    u_i = a_i + s_i - 2^b kappa_i (kappa_i: the carry out of a_i + s_i), so for i < j

        [u_i < u_j] = bit b of (u_i - u_j) mod 2^(b+1)
                    = A_b ^ S_b ^ carry(A mod 2^b + S mod 2^b) ^ kappa_i ^ kappa_j,

    A = (a_i - a_j) mod 2^(b+1), S = (s_i - s_j) mod 2^(b+1) (adding 2^b (kappa_j - kappa_i) flips
    bit b iff the carries differ). The circuit's values (``words``) are the k shares' b-bit parts
    and the k(k-1)/2 differences' (b+1)-bit parts; each value's carry out of its low b bits comes
    from one sign-mode chain of look-ups (``ARGMAX_CHUNK``-bit chunks, one AND per chunk after the
    first), its bit b enters as an input bit. Then i wins iff u_j < u_i for j < i and not
    u_i < u_j for j > i (k - 2 ANDs per class, none for k = 2); the index bits are XORs of the
    one-hot wins. K = 2 at b = 24: 3 chains of 6 + 6 + 6 + 6 bits.
    """

    ring_bits: int
    in_bits: int | None = None
    k: int = 2
    lut: bool = True  # sign mode where it applies (False: the adder-and-comparator circuit)

    def __post_init__(self) -> None:
        l = _check_int("ring_bits", self.ring_bits, 1, 64)
        b = l if self.in_bits is None else _check_int("in_bits", self.in_bits, 1, l)
        object.__setattr__(self, "in_bits", b)
        _check_int("k", self.k, 1, 64)
        if not isinstance(self.lut, (bool, np.bool_)):
            raise ValueError("lut must be a bool")

    @property
    def sign_mode(self) -> bool:
        return bool(self.lut) and 2 <= self.k <= ARGMAX_SIGN_MAX and 2 <= int(self.in_bits or 0) <= 62

    @property
    def lut_plan(self) -> LutPlan | None:
        return _argmax_plan(int(self.in_bits or 0)) if self.sign_mode else None

    @property
    def items(self) -> int:
        return self.k + self.k * (self.k - 1) // 2 if self.sign_mode else self.k

    @property
    def word_bits(self) -> int:
        return int(self.in_bits or 0) + 1 if self.sign_mode else int(self.in_bits or 0)

    def words(self, y: np.ndarray, client: bool) -> np.ndarray:
        """Sign mode: the b-bit parts (the client's offset by 2^(b-1)), then for each pair i < j the
        (b+1)-bit part of their difference."""
        if not self.sign_mode:
            return y
        b = int(self.in_bits or 0)
        own = y & _mask(b)
        if client:
            own = (own + np.uint64(1 << (b - 1))) & _mask(b)
        i, j = np.triu_indices(self.k, 1)
        pairs = (own[:, i] - own[:, j]) & _mask(b + 1)
        return np.ascontiguousarray(np.concatenate([own, pairs], axis=1))

    @property
    def circuit(self) -> circuits.Compiled:
        lp = self.lut_plan
        if lp is None:
            return circuits.argmax_circuit(self.in_bits, self.k)
        return circuits.argmax_sign_circuit(self.k, tuple(d for _, d, _ in lp.tables))

    def _params(self) -> tuple[int, int, int, int, int, int]:
        return (OP_ARGMAX, self.ring_bits, self.in_bits, 0, int(self.sign_mode) << 1, self.k)


Op = MaxTrunc | Argmax


def _check_op(op: object) -> Op:
    if not isinstance(op, (MaxTrunc, Argmax)):
        raise ValueError("op must be a MaxTrunc or an Argmax")
    return op


def _link_pass(op: object, y: object, j: object, client: bool) -> tuple[Op, np.ndarray, int, int, int]:
    """A link pass's checked arguments: the op, one party's circuit values, instances, values and
    reverse OT rows per value of pass j."""
    op = _check_op(op)
    if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < op.link_passes:
        raise ValueError("no such link pass for this operation")
    y = op.words(_check_shares(op, y, "client" if client else "server"), client)
    n = y.shape[0]
    return op, y, n, n * op.items, op.lut_plan.link_rows(j)


def _check_shares(op: Op, y: object, who: str) -> np.ndarray:
    if not isinstance(y, np.ndarray):
        raise ValueError(f"{who} shares must be a numpy array")
    if y.dtype != np.uint64:
        raise ValueError(f"{who} shares must have dtype uint64, got {y.dtype}")
    if y.ndim == 1 and op.k == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape[1] != op.k:
        raise ValueError(f"{who} shares must have shape (n, {op.k}), got {y.shape}")
    if op.ring_bits < 64 and y.size and int(y.max()) >> op.ring_bits:  # one pass, no temporary
        raise ValueError(f"{who} shares must lie in [0, 2^{op.ring_bits})")
    return np.ascontiguousarray(y)


def _pad128(x: int) -> int:
    return (x + 127) // 128 * 128


def _derive(nonce_c: bytes, nonce_s: bytes, a_pt: bytes) -> tuple[bytes, bytes, bytes]:
    sid = hashlib.blake2b(nonce_c + nonce_s + a_pt, digest_size=32, person=b"bunet-gc-sid-v1").digest()
    aes_key = hashlib.blake2b(sid, digest_size=16, person=b"bunet-gc-aes-v1").digest()
    return sid, sid[:8], aes_key


def _ggm_keys(sid: bytes) -> tuple[object, object]:
    """The silent OT's half-tree GGM keys (public, per session): one for the forward stream, one for
    the reverse."""
    keys = hashlib.blake2b(sid, digest_size=32, person=b"bunet-sot-ggm-v2").digest()
    return aes_key_schedules([keys[:16]]), aes_key_schedules([keys[16:]])


def _random_bits(m: int) -> np.ndarray:
    """m fresh CSPRNG bits as 0/1 bytes."""
    r = np.empty(m, dtype=np.uint8)
    check(lib, lib.bn_prg_fill(_buf(r), m), "random bits")
    return r & 1


def _silent_base(m: int) -> int:
    """SoftSpoken OTs made at set-up for the first silent iteration (whole 128-row blocks)."""
    return _pad128(m)


def _corrections(choice: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Packed choice bits XOR the random COTs' choice bits (0/1 bytes): what a silent receiver sends."""
    return choice ^ np.packbits(r, bitorder="little")


def aes_key_schedules(keys: list[bytes]) -> object:
    buf = ffi.new("uint8_t[]", 176 * len(keys))
    for i, k in enumerate(keys):
        lib.bn_aes_keysched(k, buf + 176 * i)
    return buf


@dataclass
class _Pre:
    """The server's state of a pre-message it sent, until the request answering it arrives."""

    params: tuple
    n: int
    t: np.ndarray | None  # its reverse OT rows (silent OT: made when the request brings the iteration messages)
    low: np.ndarray | None  # the share bits it was made for (checked against the request's)
    rblk: int
    rows: int
    r0: np.ndarray | None = None  # sign mode: the random bits of the last row
    link: tuple | None = None  # chained: the opened carry shares (k0, carry in) before this table
    j: int = -1  # link pass (-1: the op's own pre-message)
    words: np.ndarray | None = None  # link pass: the choice words (chunk bits, carry share)


def _pre_low(op: Op, ys: np.ndarray) -> np.ndarray:
    """The server's share bits a pre-message depends on (chained: all of them, every pass read some)."""
    lp = op.lut_plan
    v = ys.reshape(-1)
    return v if lp.chain else v & _mask(lp.rows - lp.mux)


class _Party:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._seq = 0
        self._blk = 0  # OT offset, in 128-row blocks per column
        self._tweak = 0  # global gate-hash tweak counter
        self._tag: bytes | None = None
        self._rk: object = None
        self._rleaves: object = None  # the reverse OT extension's trees (server: receiver, client: sender)
        self._rblk = 0  # reverse OT offset, in 128-row blocks
        # silent OT: the COT streams (forward: server sends; reverse: client sends) and where they start
        self._fwd: silent.Sender | silent.Receiver | None = None
        self._rev: silent.Sender | silent.Receiver | None = None
        self._blk0 = self._rblk0 = 0
        self._gk: tuple[object, object] | None = None
        self._pre_seq = 0
        # chained look-ups: per chunk of instances (in order), its carry state after the last link pass
        # that ran: (op params, n, pass, state); the client's state is its masks (rho of k0, rho of the
        # carry), the server's a Future of its opened shares (s of k0, s of the carry)
        self._links: deque[tuple] = deque()
        self.bytes_sent = 0
        self.bytes_received = 0

    def _ready(self) -> None:
        if self._rleaves is None:
            raise ValueError("session not set up: run the hello exchange first")

    def _alloc_rev(self, rows: int) -> tuple[int, int]:
        """(pre-message sequence number, reverse OT block offset) for rows reverse OTs."""
        with self._lock:
            pseq, rblk = self._pre_seq, self._rblk
            self._pre_seq += 1
            self._rblk += rows // 128
            if self._rblk >= 1 << 52:
                raise ValueError("session exhausted: start a new session")
        return pseq, rblk

    def _pop_link(self, op: Op, n: int, j: int) -> object:
        """The carry state of the oldest chunk, which must have finished link pass j of this op."""
        with self._lock:
            if not self._links or self._links[0][:3] != (op._params(), n, j):
                raise ValueError(f"linked look-ups out of order (expected the chunk's link pass {j} first)")
            return self._links.popleft()[3]

    def _hello_msg(self, msg: object, typ: int, size: int) -> memoryview:
        if not isinstance(msg, (bytes, bytearray, memoryview)) or memoryview(msg).nbytes != 13 + size:
            raise ValueError("malformed hello message")  # large ones may come as a view (bunet.protocol.channel)
        msg = memoryview(msg).cast("B")
        if msg[:4] != MAGIC or msg[4] != typ:
            raise ValueError("not a BUNET GC hello message of the expected type")
        if bytes(msg[5:13]) != self._tag:
            raise ValueError("hello message belongs to another session")
        self.bytes_received += len(msg)
        return memoryview(msg)[13:]

    def _alloc(self, op: Op, n: int, m: int) -> tuple[int, int, int]:
        with self._lock:
            seq, blk, tw = self._seq, self._blk, self._tweak
            self._seq += 1
            self._blk += m // 128
            self._tweak += n * op.circuit.tweaks_per_inst
            if self._tweak >= 1 << 63 or self._blk >= 1 << 62:
                raise ValueError("session exhausted: start a new session")
        return seq, blk, tw

    def _header(self, typ: int, seq: int, op: Op, n: int) -> bytes:
        return _HDR.pack(MAGIC, typ, self._tag, seq, *op._params(), n)

    def _parse(self, msg: object, typ: int, op: Op) -> tuple[int, int, memoryview]:
        if not isinstance(msg, (bytes, bytearray, memoryview)):
            raise ValueError("message must be bytes")
        mv = memoryview(msg).cast("B")
        if len(mv) < _HDR.size:
            raise ValueError("message too short")
        magic, t, tag, seq, *params, n = _HDR.unpack_from(mv)
        if magic != MAGIC or t != typ:
            raise ValueError("not a BUNET GC message of the expected type")
        if tag != self._tag:
            raise ValueError("message belongs to another session")
        if tuple(params) != op._params():
            raise ValueError("message was made for a different operation")
        return seq, n, mv[_HDR.size :]


def _sizes(op: Op, n: int) -> tuple[int, int, int]:
    c = op.circuit
    m = _pad128(n * op.items * op.circ_bits)
    return m, n * c.ct_bytes, c.arith_len(n)


def _new_message(header: bytes, body_len: int) -> tuple[bytes, object]:
    """A fresh message (``bunet.message``) and a writable pointer to its body."""
    msg, body = new_message(header, body_len)
    return msg, ffi.cast("uint8_t *", ffi.from_buffer(body))


OT_KS = (1, 2, 4, 8)  # SoftSpoken bits per block: the client sends 128/k bits per OT (k = 1: IKNP)


def _cot_len(k: int, m: int) -> int:
    """Bytes of the receiver's message for m OTs: SoftSpoken's 128/k bits per OT, or (k = 0) silent OT's
    one choice-correction bit per OT (the iterations' messages come on top, amortised; ``bunet.gc.silent``)."""
    return m // 8 if k == 0 else (128 // k) * (m // 8)


def _checked_rows(k: int, m: int) -> int:
    """OT rows a request for m input bits claims: SoftSpoken's are checked (``bunet.gc.otcheck``),
    so they end with ``otcheck.PAD_ROWS`` rows of random choices; silent OT's need no check."""
    return m if k == 0 else m + otcheck.PAD_ROWS


def _req_len(k: int, m: int) -> int:
    """Bytes of a request's OT part for m input bits: the correction over the checked rows, and
    (SoftSpoken) the receiver's consistency proof."""
    return _cot_len(k, _checked_rows(k, m)) + (otcheck.PROOF_BYTES if k else 0)


def _check_seed(sid: bytes, blk: int, cm: object) -> bytes:
    """The Fiat-Shamir challenge key of the rows at block ``blk``: session, row range, correction."""
    return otcheck.challenge(sid + blk.to_bytes(8, "little"), cm)


_SETUP_BLOCKS = 1 + otcheck.PAD_ROWS // 128  # forward OT blocks of the set-up's 128 OTs and their padding


class OTCheckFailed(ValueError):
    """The client's OT correction failed the consistency check: a cheating (or broken) receiver."""


_CHECK_FAILED = (
    "the client's OT correction failed the consistency check (not one choice vector in every column: a"
    " cheating or broken client); nothing made with it was sent"
)


def _xor16(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(SEED, "little")


def _buf(a: object) -> object:
    return ffi.from_buffer("uint8_t[]", a)


def _u64(a: np.ndarray) -> object:
    return ffi.from_buffer("uint64_t[]", a)


class Evaluator(_Party):
    """The client: OT-extension receiver and circuit evaluator.

    ``ot``: "silent" (LPN-based silent OT bootstrapped from SoftSpoken with ``ot_k``) or "softspoken"
    (SoftSpoken with ``ot_k`` bits per block for every OT); the server must be set for the same."""

    def __init__(self, ot_k: int = 4, ot: str = DEFAULT_OT) -> None:
        super().__init__()
        if ot_k not in OT_KS:
            raise ValueError(f"ot_k must be one of {OT_KS}")
        if ot not in OT_BACKENDS:
            raise ValueError(f"ot must be one of {OT_BACKENDS}")
        self.ot_k = ot_k
        self.ot = ot
        self._wk = 0 if ot == "silent" else ot_k  # the OT messages' format (_cot_len)
        self._base = BaseOTSender()
        self._nonce = os.urandom(16)
        self._leaves: object = None
        self._rdelta = bytearray(16)  # the reverse extension's correlation (the client's secret)
        self._rchoice: list[int] = []
        self._rkeys: list[bytes] = []
        self._pending: dict[int, tuple[tuple[int, ...], int, np.ndarray, int, tuple | None]] = {}
        self._posts: dict[int, bytes] = {}
        self._pool: list[np.ndarray] = []  # label buffers, reused (fresh pages are costly)

    def _take_buffer(self, size: int) -> np.ndarray:
        with self._lock:
            for i, buf in enumerate(self._pool):
                if buf.size >= size:
                    return self._pool.pop(i)[:size]
        return np.empty(size, dtype=np.uint8)

    def _give_buffer(self, buf: np.ndarray) -> None:
        base = buf.base if isinstance(buf.base, np.ndarray) else buf
        with self._lock:
            if len(self._pool) < 4:
                self._pool.append(base)

    def hello(self) -> bytes:
        """Base OT round 1 (client -> server)."""
        mode = self.ot_k | (_SILENT_BIT if self.ot == "silent" else 0)
        msg = MAGIC + bytes([T_HELLO1, mode]) + self._nonce + self._base.A
        self.bytes_sent += len(msg)
        return msg

    def finish_hello(self, msg: bytes) -> bytes:
        """Consume the server's base-OT reply; returns the third hello message (client -> server).

        It carries the forward extension's GGM level sums under the base-OT keys (4 KiB) and 128
        forward OTs whose choice bits are the client's reverse-extension base-OT choices (from its
        own random Delta'): the reverse extension (server = OT receiver) is bootstrapped from the
        forward one, with no more public-key work.
        """
        if not isinstance(msg, (bytes, bytearray)) or len(msg) != 5 + 16 + N_BASE * POINT:
            raise ValueError("malformed hello reply")
        if msg[:4] != MAGIC or msg[4] != T_HELLO2:
            raise ValueError("not a BUNET GC hello reply")
        if self._tag is not None:
            raise ValueError("session already set up")
        self.bytes_received += len(msg)
        nonce_s = bytes(msg[5:21])
        bs = [bytes(msg[21 + POINT * i : 21 + POINT * (i + 1)]) for i in range(N_BASE)]
        sid, tag, aes_key = _derive(self._nonce, nonce_s, self._base.A)
        self._sid = sid
        k0, k1 = self._base.keys(sid, bs)
        leaves, sums = ggm_client(self.ot_k)
        self._leaves = aes_key_schedules([leaf for tree in leaves for leaf in tree])
        setup = b"".join(_xor16(s0, a) + _xor16(s1, b) for (s0, s1), a, b in zip(sums, k0, k1, strict=True))
        rk = ffi.new("uint8_t[]", 176)
        lib.bn_aes_keysched(aes_key, rk)
        self._rk = rk
        self._tag = tag
        check(lib, lib.bn_prg_fill(_buf(self._rdelta), 16), "random bits")
        self._rchoice = ggm_choices(self.ot_k, bytes(self._rdelta))
        choice = np.packbits(np.array(self._rchoice, dtype=np.uint8), bitorder="little")
        cm = bytearray(_req_len(self.ot_k, N_BASE))
        t = np.empty(16 * _checked_rows(self.ot_k, N_BASE), dtype=np.uint8)
        self._checked_recv(0, N_BASE, choice, _buf(cm), t)
        lib.bn_hash_batch(self._rk, _buf(t), _buf(t), N_BASE, 0, 1, _SETUP_DOM)
        self._rkeys = [t[16 * i : 16 * (i + 1)].tobytes() for i in range(N_BASE)]
        self._blk = _SETUP_BLOCKS  # forward OT block 0 served the reverse setup, the next ones its padding
        if self.ot == "silent":  # SoftSpoken OTs (blocks 1 ..) as the forward silent OT's first base COTs
            cm += self._silent_fwd_base(sid)
        out = MAGIC + bytes([T_HELLO3]) + tag + setup + bytes(cm)
        self.bytes_sent += len(out)
        return out

    def _silent_fwd_base(self, sid: bytes) -> bytes:
        """Receiver of the forward silent OT: its first base COTs by SoftSpoken on random choice bits;
        returns their SoftSpoken message and consistency proof (the server checks them: they carry its Δ)."""
        m = _silent_base(silent.SETUP.base)
        r = _random_bits(m)
        rows = _checked_rows(self.ot_k, m)
        cm = bytearray(_req_len(self.ot_k, m))
        t = np.empty(16 * rows, dtype=np.uint8)
        self._checked_recv(self._blk, m, np.packbits(r, bitorder="little"), _buf(cm), t)
        self._gk = _ggm_keys(sid)
        t = t[: 16 * m].reshape(m, 16)
        self._fwd = silent.Receiver(silent.Schedule(silent.SETUP, silent.MAIN), r, t, self._gk[0])
        self._blk += rows // 128
        self._blk0 = self._blk
        return bytes(cm)

    def finish_setup(self, msg: bytes) -> None:
        """Consume the fourth hello message (the reverse extension's level sums); the session is ready."""
        if self._rleaves is not None or not self._rkeys:
            raise ValueError("setup message out of order")
        m = _silent_base(silent.SETUP.base) if self.ot == "silent" else 0
        body = self._hello_msg(msg, T_HELLO4, 32 * N_BASE + (_cot_len(self.ot_k, m) if m else 0))
        chosen = [
            _xor16(bytes(body[32 * i + 16 * c : 32 * i + 16 * c + 16]), key)
            for i, (c, key) in enumerate(zip(self._rchoice, self._rkeys, strict=True))
        ]
        leaves = ggm_garbler(self.ot_k, bytes(self._rdelta), chosen)
        rleaves = aes_key_schedules([leaf for tree in leaves for leaf in tree])
        self._rkeys = []
        if m:  # sender of the reverse silent OT: its first base COTs from the server's SoftSpoken message
            self._rdelta_c = _buf(self._rdelta)
            q = np.empty((m, 16), dtype=np.uint8)
            lib.bn_cot_send(rleaves, self.ot_k, self._rdelta_c, 0, m, _buf(body[32 * N_BASE :]), _buf(q))
            self._rev = silent.Sender(silent.Schedule(silent.SETUP, silent.MAIN), self._rdelta_c, q, self._gk[1])
            self._rblk = self._rblk0 = m // 128
        self._rleaves = rleaves

    def request(self, op: Op, yc: np.ndarray, pre: bytes | None = None) -> bytes:
        """Client -> server: OT-extension message for the client's input bits of this layer.

        Ops with ``lut_bits`` > 0 need the server's pre-message for the same instances (``Garbler.pre``):
        the request then also carries the look-up tables (see the module docstring).
        ``request(...)`` is ``prepare(...)()``.
        """
        return self.prepare(op, yc, pre)()

    def prepare(self, op: Op, yc: np.ndarray, pre: bytes | None = None) -> Callable[[], bytes]:
        """Check the inputs and claim the request's OT ranges in order; returns the job that makes it.

        Jobs may run on several threads (the C calls release the GIL); each request must reach the
        server after the ones prepared before it.
        """
        op = _check_op(op)
        self._ready()
        yc = op.words(_check_shares(op, yc, "client"), True)
        n = yc.shape[0]
        if not op.lut_bits and pre is not None:
            raise ValueError("this operation has no pre-message")
        with self._lock:
            link = self._pop_link(op, n, op.link_passes - 1) if op.link_passes else None
            lut = (*self._claim_pre(op, n, pre)[1:], link) if op.lut_bits else None
        m, _, _ = _sizes(op, n)
        rows = _checked_rows(self._wk, m)
        seq, blk, tw = self._alloc(op, n, rows)

        ext = 0 if lut is None else self._rev_ext(_pad128(n * op.items * op.lut_bits), lut[1])

        def job() -> bytes:
            cot = _req_len(self._wk, m)
            tables_len = 0 if lut is None else n * op.items * op.lut_plan.table_bytes
            out, body = _new_message(self._header(T_REQ, seq, op, n), cot + ext + tables_len)
            # the reverse silent OT's iteration messages and the tables go straight into the request
            y, mux = (yc, None) if lut is None else self._tables(op, yc, lut, body + cot, ext)
            choice = np.empty(m // 8, dtype=np.uint8)
            lib.bn_pack_choice(_u64(y), n, op.items, op.circ_bits, _buf(choice), m)
            if self.ot == "silent":  # the labels come at finish, with the server's iteration messages
                lo = 128 * (blk - self._blk0)
                ffi.memmove(body, _corrections(choice, self._fwd.choices(lo, lo + m)), m // 8)
                labels: np.ndarray | tuple[int, int] = (lo, m)
            else:
                labels = self._take_buffer(16 * rows)  # the client's input labels, made in the same pass
                self._checked_recv(blk, m, choice, body, labels)
                labels = labels[: 16 * m]
            with self._lock:
                self._pending[seq] = (op._params(), n, labels, tw, mux)
                self.bytes_sent += len(out)
            return out

        return job

    def _checked_recv(self, blk: int, m: int, choice: np.ndarray, body: object, t: np.ndarray) -> None:
        """SoftSpoken receiver of checked rows from block ``blk`` (a request's, or the set-up's): m rows of
        ``choice`` and ``PAD_ROWS`` rows of random choices (they hide the real ones in the proof);
        writes the correction and the proof at ``body``, the t rows into ``t``."""
        rows = _checked_rows(self.ot_k, m)
        full = np.empty(rows // 8, dtype=np.uint8)
        full[: m // 8] = choice
        check(lib, lib.bn_prg_fill(_buf(full[m // 8 :]), (rows - m) // 8), "random bits")
        lib.bn_cot_recv(self._leaves, self.ot_k, blk, rows, _buf(full), body, _buf(t))
        cm_len = _cot_len(self.ot_k, rows)
        cm = ffi.buffer(body, cm_len)
        proof = otcheck.prove(t[: 16 * rows], full, _check_seed(self._sid, blk, cm))
        ffi.memmove(body + cm_len, proof, len(proof))

    def _claim_pre(self, op: Op, n: int, pre: bytes | None) -> tuple[int, memoryview, int]:
        """Check the server's pre-message (in order) and claim its reverse OT rows."""
        if pre is None:
            raise ValueError("this operation needs the server's pre-message (Garbler.pre)")
        return self._claim_rev(op, n, pre, T_PRE, op.lut_plan.rows)

    def _claim_rev(
        self, op: Op, n: int, msg: object, typ: int, per_item: int, j: int | None = None
    ) -> tuple[int, memoryview, int]:
        """Check a pre-message of type ``typ`` (in order; a link pass's carries its pass j in its
        first body byte) for per_item reverse OTs per value and claim them: (sequence, corrections, block)."""
        pseq, n_pre, body = self._parse(msg, typ, op)
        rows = _pad128(n * op.items * per_item)
        head = 0 if j is None else 1
        if n_pre != n or len(body) != head + _cot_len(self._wk, rows):
            raise ValueError("pre-message was made for a different number of instances")
        if j is not None and body[0] != j:
            raise ValueError("link pre-message of another pass")
        with self._lock:
            if pseq != self._pre_seq:
                raise ValueError("pre-message out of order (or replayed)")
            _, rblk = self._alloc_rev(rows)
            self.bytes_received += len(msg)
        return pseq, body[head:], rblk

    def _rev_ext(self, rows: int, rblk: int) -> int:
        """Bytes of reverse silent-OT iteration messages a request for these pre-message rows carries."""
        if self.ot != "silent":
            return 0
        lo = 128 * (rblk - self._rblk0)
        return self._rev.sched.ext_len(lo, lo + rows)

    def _rev_q(self, rblk: int, rows: int, body: memoryview, dest: object, ext: int) -> np.ndarray:
        """The reverse OT sender's rows q for the server's pre-message ``body`` (silent: q ^ d Delta' with
        its corrections d; the iteration messages, ``ext`` bytes, are written at ``dest``)."""
        if self.ot == "silent":
            lo = 128 * (rblk - self._rblk0)
            msgs, q = self._rev.take(lo, lo + rows, body)
            if len(msgs) != ext:
                raise AssertionError("silent OT: iteration messages out of step")
            ffi.memmove(dest, msgs, ext)
            return q.reshape(-1)
        q = np.empty(16 * rows, dtype=np.uint8)
        lib.bn_cot_send(self._rleaves, self.ot_k, _buf(self._rdelta), rblk, rows, _buf(body), _buf(q))
        return q

    def _send_tables(
        self, items: int, tabs: np.ndarray, stride: int, q: np.ndarray, rblk: int, a: np.ndarray, rho: np.ndarray, dest
    ) -> None:
        rc = lib.bn_luts_send(
            items,
            tabs.size // 3,
            ffi.from_buffer("uint32_t[]", tabs),
            stride,
            _buf(q),
            _buf(self._rdelta),
            self._rk,
            128 * rblk,
            _u64(np.ascontiguousarray(a)),
            _u64(np.ascontiguousarray(rho)),
            dest,
        )
        check(lib, rc, "look-up tables")

    def link_request(self, op: Op, yc: np.ndarray, lpre: bytes, j: int) -> bytes:
        """Client -> server, link pass j of a chained op (``MaxTrunc.chain``): the link tables for the
        server's link pre-message (``Garbler.link_pre``). ``link_request(...)`` is ``prepare_link(...)()``."""
        return self.prepare_link(op, yc, lpre, j)()

    def prepare_link(self, op: Op, yc: np.ndarray, lpre: bytes, j: int) -> Callable[[], bytes]:
        """Claim link pass j's reverse OT rows in order and draw the chunk's fresh masks; returns the job
        that makes the link request (any thread)."""
        self._ready()
        op, yc, n, items, per = _link_pass(op, yc, j, True)
        lp = op.lut_plan
        rho = _random_bits(items)  # the mask of this table's carry
        with self._lock:
            prev = self._pop_link(op, n, j - 1) if j else None
            pseq, body, rblk = self._claim_rev(op, n, lpre, T_LPRE, per, j)
            k0 = rho if j == len(lp.drop) - 1 else prev[0] if prev else None
            self._links.append((op._params(), n, j, (k0, rho)))
        rows = _pad128(items * per)
        ext = self._rev_ext(rows, rblk)
        tab = lp.link_table(j)

        def job() -> bytes:
            out, dest = _new_message(self._header(T_LREQ, pseq, op, n), 1 + ext + items * _lut_bytes(*tab[1:]))
            dest[0] = j
            q = self._rev_q(rblk, rows, body, dest + 1, ext)
            rw = rho.astype(np.uint64)
            if prev is not None:  # rho_in: the previous table's mask
                rw |= prev[1].astype(np.uint64) << np.uint64(1)
            tabs = np.array(tab, dtype=np.uint32)
            self._send_tables(items, tabs, per, q, rblk, op.link_word(yc, j, None), rw, dest + 1 + ext)
            with self._lock:
                self.bytes_sent += len(out)
            return out

        return job

    def _tables(
        self, op: Op, yc: np.ndarray, lut: tuple, dest: object, ext: int = 0
    ) -> tuple[np.ndarray, tuple | None]:
        """The look-up tables for the server's pre-message (``lut``: its corrections, block and, chained,
        the carry masks of the last link pass), written at ``dest`` (a pointer to ``ext`` bytes of reverse
        silent-OT iteration messages, then n * k * table_bytes bytes), and the circuit inputs (masks,
        kept bits)."""
        body, rblk, link = lut
        lp, n = op.lut_plan, yc.shape[0]
        assert lp is not None
        items = n * op.items
        q = self._rev_q(rblk, _pad128(items * lp.rows), body, dest, ext)
        dest = dest + ext
        if lp.chain:  # the last link: its fresh mask is k''s, the masks of k0 and of the carry in come along
            k0, rho_in = link
            rho = _random_bits(items).astype(np.uint64)
            a = op.link_word(yc, len(lp.seq) - 1, None)
            self._send_tables(
                items, lp.tabs(), lp.rows, q, rblk, a, rho | rho_in.astype(np.uint64) << np.uint64(1), dest
            )
            masked = (k0.astype(np.uint64) | rho << np.uint64(1)) if lp.drop else rho
        else:
            rho = np.empty(items, dtype=np.uint64)  # fresh CSPRNG mask bits, one per table bit (bit col + p)
            check(lib, lib.bn_prg_fill(_buf(rho), 8 * items), "random bits")
            rho &= _mask(lp.n_masked)
            self._send_tables(items, lp.tabs(), lp.rows, q, rblk, yc.reshape(-1), rho, dest)
            masked = rho
        mux = None
        if lp.mux:  # the sender's keys of the r0 row: the post-message's correlated OT
            rq = np.ascontiguousarray(q.reshape(-1, 16)[lp.rows - 1 : items * lp.rows : lp.rows])
            keys = []
            for blob in (rq, rq ^ np.frombuffer(bytes(self._rdelta), dtype=np.uint8)):
                lib.bn_hash_batch(self._rk, _buf(blob), _buf(blob), items, 128 * rblk + lp.rows - 1, lp.rows, _MUX_DOM)
                keys.append(blob.view("<u8")[:, 0].astype(np.uint64) & _mask(op.ring_bits))
            kept = (yc.reshape(-1) >> np.uint64(op.shift)) & _mask(op.in_bits - op.shift - 1)  # C'
            mux = (kept, keys[0], keys[1])
        return lp.circuit_words(yc, masked, op.word_bits).reshape(yc.shape), mux

    def finish(self, op: Op, resp: bytes) -> np.ndarray:
        """Consume the server's response: the client's new shares (MaxTrunc: (n,)) or labels (Argmax)."""
        op = _check_op(op)
        self._ready()
        seq, n, body = self._parse(resp, T_RESP, op)
        with self._lock:
            pend = self._pending.get(seq)
            if pend is None or pend[0] != op._params() or pend[1] != n:
                raise ValueError("response does not match any pending request")
            _, nct, nar = _sizes(op, n)
            silent_rows = pend[2] if self.ot == "silent" else None
            ext = self._fwd.sched.ext_len(silent_rows[0], sum(silent_rows)) if silent_rows else 0
            if len(body) != ext + nct + nar:
                raise ValueError("response has the wrong length")
            del self._pending[seq]
            self.bytes_received += len(resp)
        _, _, labels, tw, mux = pend
        if silent_rows:  # the server's iteration messages, then the labels t (its zero labels: q ^ d Delta)
            lo, rows = silent_rows
            self._fwd.deposit(lo, lo + rows, body[:ext])
            body = body[ext:]
            labels = self._fwd.rows(lo, lo + rows).reshape(-1)
        c = op.circuit
        nout = c.n_outputs
        out = np.empty(n * nout, dtype=np.uint64)
        mask = (1 << 64) - 1 if isinstance(op, Argmax) else (1 << op.ring_bits) - 1
        ct = body[:nct]
        ar = body[nct:]
        try:
            run_circuit(
                False,
                **circuit_fields(c, n, op.items, op.circ_bits, self._rk, tw),
                in_labels=_buf(labels),
                ot_k=self.ot_k,
                ct=_buf(ct),
                arith=_buf(ar),
                out=_u64(out),
                outmask=mask,
            )
        finally:
            if not silent_rows:
                self._give_buffer(labels)
        if isinstance(op, Argmax):
            return (out | np.uint64(c.const_out)).astype(np.int64)
        if mux is not None:
            return self._mux(op, seq, n, out.reshape(n, 2), mux)
        return out.reshape(n, nout) if nout > 1 else out

    def _mux(self, op: Op, seq: int, n: int, out: np.ndarray, mux: tuple) -> np.ndarray:
        """Sign mode: add n C' = n' C' + r0 (1 - 2n') C' (n' revealed); the second term by the
        correlated OT on the server's r0: the client keeps -K0 and posts K1 - K0 - (1 - 2n') C'."""
        kept, k0, k1 = mux
        mk = _mask(op.ring_bits)
        nb = out[:, 1] & np.uint64(1)
        z = np.where(nb == 1, np.uint64(0) - kept, kept) & mk
        share = (out[:, 0] + nb * kept - k0) & mk
        post = self._header(T_POST, seq, op, n) + _pack_ring((k1 - k0 - z) & mk, _post_bytes(op))
        with self._lock:
            self._posts[seq] = post
        return share

    def take_posts(self) -> list[bytes]:
        """The post-messages of the finished sign-mode responses, in request order (then forgotten)."""
        with self._lock:
            posts = [self._posts[k] for k in sorted(self._posts)]
            self._posts.clear()
            self.bytes_sent += sum(len(p) for p in posts)
        return posts


class Garbler(_Party):
    """The server: OT-extension sender (correlation = Delta) and garbler; ``ot`` as the client's
    (``Evaluator``), or the session set-up fails with a clear error."""

    def __init__(self, ot: str = DEFAULT_OT) -> None:
        super().__init__()
        if ot not in OT_BACKENDS:
            raise ValueError(f"ot must be one of {OT_BACKENDS}")
        self.ot = ot
        self._wk = 0
        self.rows_checked = 0  # SoftSpoken request rows whose consistency proof held
        d = bytearray(16)
        check(lib, lib.bn_prg_fill(_buf(d), 16), "random bits")
        d[0] |= 1  # point-and-permute: lsb(Delta) = 1
        self._delta = ffi.new("uint8_t[]", bytes(d))
        d[:] = bytes(16)
        self._leaves: object = None
        self._ot_k = 0
        self._base_keys: list[bytes] = []
        self._choices: list[int] = []
        self._pres: dict[int, _Pre | None] = {}  # pre-messages by sequence number (None: being made)
        # the pending pre-messages' sequence numbers, in order: the op's own (the next request consumes
        # the first) and link passes' (the next link request answers the first)
        self._pre_q: deque[int] = deque()
        self._lpre_q: deque[int] = deque()
        # sign mode, per claimed request: [seq, params, n, K_{r0} (set by its garbling job), r0]
        self._post_due: deque[list] = deque()

    def hello(self, msg: bytes) -> bytes:
        """Base OT round 2 (server -> client)."""
        if not isinstance(msg, (bytes, bytearray)) or len(msg) != 6 + 16 + POINT:
            raise ValueError("malformed hello")
        if msg[:4] != MAGIC or msg[4] != T_HELLO1:
            raise ValueError("not a BUNET GC hello")
        if msg[5] & ~_SILENT_BIT not in OT_KS:
            raise ValueError("unsupported OT extension parameter")
        asked = "silent" if msg[5] & _SILENT_BIT else "softspoken"
        if asked != self.ot:
            raise ValueError(f"OT backend mismatch: the client uses {asked} OT, this server {self.ot} OT")
        if self._tag is not None:
            raise ValueError("session already set up")
        self.bytes_received += len(msg)
        self._ot_k = msg[5] & ~_SILENT_BIT
        self._wk = 0 if self.ot == "silent" else self._ot_k
        nonce_c, a_pt = bytes(msg[6:22]), bytes(msg[22:])
        dbytes = bytes(ffi.buffer(self._delta, 16))
        self._choices = ggm_choices(self._ot_k, dbytes)
        rcv = BaseOTReceiver(a_pt, self._choices)
        nonce_s = os.urandom(16)
        sid, tag, aes_key = _derive(nonce_c, nonce_s, a_pt)
        self._sid = sid
        self._base_keys = rcv.keys(sid)
        rk = ffi.new("uint8_t[]", 176)
        lib.bn_aes_keysched(aes_key, rk)
        self._rk = rk
        self._tag = tag
        out = MAGIC + bytes([T_HELLO2]) + nonce_s + b"".join(rcv.bs)
        self.bytes_sent += len(out)
        return out

    def finish_hello_limit(self) -> int:
        """The exact size of the third hello message for the OT the first one agreed (SoftSpoken's k:
        with silent OT and k = 1 it carries over a megabyte of base COTs)."""
        if self._tag is None:
            raise ValueError("hello message out of order")
        sm = _silent_base(silent.SETUP.base) if self.ot == "silent" else 0
        return 13 + 32 * N_BASE + _req_len(self._ot_k, N_BASE) + (_req_len(self._ot_k, sm) if sm else 0)

    def finish_hello(self, msg: bytes) -> bytes:
        """Consume the third hello message; returns the fourth (server -> client).

        Rebuilds the forward extension's punctured trees, opens the 128 setup OTs as base-OT key
        pairs (H(q), H(q ^ Delta)) and sends the reverse extension's level sums under them; the
        server's side of the session is ready afterwards.
        """
        if self._tag is None or self._leaves is not None:
            raise ValueError("hello message out of order")
        sm = _silent_base(silent.SETUP.base) if self.ot == "silent" else 0
        setup_len = _req_len(self._ot_k, N_BASE)
        body = self._hello_msg(msg, T_HELLO3, self.finish_hello_limit() - 13)
        self._finish_setup(body[: 32 * N_BASE])
        q = self._checked_send(0, N_BASE, body[32 * N_BASE : 32 * N_BASE + setup_len]).reshape(-1)
        q1 = q ^ np.tile(np.frombuffer(ffi.buffer(self._delta, 16), dtype=np.uint8), N_BASE)
        for a in (q, q1):
            lib.bn_hash_batch(self._rk, _buf(a), _buf(a), N_BASE, 0, 1, _SETUP_DOM)
        leaves, sums = ggm_client(self._ot_k)
        out = (
            MAGIC
            + bytes([T_HELLO4])
            + self._tag
            + b"".join(
                _xor16(s0, q[16 * i : 16 * i + 16].tobytes()) + _xor16(s1, q1[16 * i : 16 * i + 16].tobytes())
                for i, (s0, s1) in enumerate(sums)
            )
        )
        self._blk = _SETUP_BLOCKS  # forward OT block 0 served the reverse setup, the next ones its padding
        rleaves = aes_key_schedules([leaf for tree in leaves for leaf in tree])
        if sm:
            out += self._silent_bases(sm, body[32 * N_BASE + setup_len :], rleaves)
        self._rleaves = rleaves
        self.bytes_sent += len(out)
        return out

    def _silent_bases(self, m: int, cm: memoryview, rleaves: object) -> bytes:
        """The first base COTs of both silent OT streams: the forward ones (sender) from the client's
        SoftSpoken message ``cm``, the reverse ones (receiver, random choices) by SoftSpoken, whose
        message this returns (the tail of the fourth hello)."""
        self._gk = _ggm_keys(self._sid)
        sched = silent.Schedule(silent.SETUP, silent.MAIN)
        q = self._checked_send(self._blk, m, cm)
        self._fwd = silent.Sender(sched, self._delta, q, self._gk[0])
        self._blk += _checked_rows(self._ot_k, m) // 128
        self._blk0 = self._blk
        r = _random_bits(m)
        rcm = bytearray(_cot_len(self._ot_k, m))
        t = np.empty((m, 16), dtype=np.uint8)
        lib.bn_cot_recv(rleaves, self._ot_k, 0, m, _buf(np.packbits(r, bitorder="little")), _buf(rcm), _buf(t))
        self._rev = silent.Receiver(sched, r, t, self._gk[1])
        self._rblk = self._rblk0 = m // 128
        return bytes(rcm)

    def _finish_setup(self, blob: memoryview) -> None:
        """Rebuild the punctured GGM trees from the client's encrypted level sums (third hello)."""
        sums = []
        for i, (key, c) in enumerate(zip(self._base_keys, self._choices, strict=True)):
            off = 32 * i + 16 * c
            sums.append(_xor16(bytes(blob[off : off + 16]), key))
        dbytes = bytes(ffi.buffer(self._delta, 16))
        leaves = ggm_garbler(self._ot_k, dbytes, sums)
        self._leaves = aes_key_schedules([leaf for tree in leaves for leaf in tree])
        self._base_keys = []

    def pre(self, op: Op, ys: np.ndarray) -> bytes:
        """Server -> client, before the request of an op with ``lut_bits`` > 0: the reverse OT
        extension's message for the server's table choices (its low share bits; in sign mode also
        a fresh random bit r0 per value).

        Pre-messages and requests pair up in order: the k-th request of such ops consumes the k-th
        pre-message, for the same shares ys. ``pre(...)`` is ``prepare_pre(...)()``.
        """
        return self.prepare_pre(op, ys)()

    def prepare_pre(self, op: Op, ys: np.ndarray) -> Callable[[], bytes]:
        """Claim a pre-message's reverse OT rows in order; returns the job that makes it (any thread)."""
        op = _check_op(op)
        self._ready()
        d = op.lut_bits
        if not d:
            raise ValueError("this operation has no pre-message")
        ys = op.words(_check_shares(op, ys, "server"), False)
        n = ys.shape[0]
        rows = _pad128(n * op.items * d)
        params = op._params()
        lp = op.lut_plan
        with self._lock:
            link = self._pop_link(op, n, op.link_passes - 1) if op.link_passes else None
            pseq, rblk = self._alloc_rev(rows)
            self._pres[pseq] = None  # claimed; the job fills it in
            self._pre_q.append(pseq)

        def job() -> bytes:
            r0, st = None, None
            if lp.mux:  # the last row is a fresh random bit r0, not a share bit
                r0 = _random_bits(n * op.items)
                if link is not None:  # chained: the last chunk's bits and the carry share, then r0
                    st = link.result()
                    vals = op.link_word(ys, len(lp.seq) - 1, st[1])
                else:
                    vals = ys.reshape(-1) & _mask(d - 1)
                vals |= r0.astype(np.uint64) << np.uint64(d - 1)
            else:
                vals = ys.reshape(-1)
            out, body = _new_message(self._header(T_PRE, pseq, op, n), _cot_len(self._wk, rows))
            t = self._rev_choose(vals, n * op.items, d, rows, rblk, body)
            with self._lock:
                self._pres[pseq] = _Pre(params, n, t, _pre_low(op, ys), rblk, rows, r0, st)
                self.bytes_sent += len(out)
            return out

        return job

    def _rev_choose(
        self, vals: np.ndarray, items: int, d: int, rows: int, rblk: int, dest: object
    ) -> np.ndarray | None:
        """The reverse OT receiver's message for choice bits 0 .. d-1 of each of vals (row i*d + j: bit
        j), written at ``dest``; returns its rows t (silent OT: None, they come with the client's
        iteration messages)."""
        choice = np.empty(rows // 8, dtype=np.uint8)
        lib.bn_pack_bits(_u64(np.ascontiguousarray(vals)), items, d, _buf(choice), rows)
        if self.ot == "silent":
            lo = 128 * (rblk - self._rblk0)
            ffi.memmove(dest, _corrections(choice, self._rev.choices(lo, lo + rows)), rows // 8)
            return None
        t = np.empty(16 * rows, dtype=np.uint8)
        lib.bn_cot_recv(self._rleaves, self._ot_k, rblk, rows, _buf(choice), dest, _buf(t))
        return t

    def link_pre(self, op: Op, ys: np.ndarray, j: int) -> bytes:
        """Server -> client, link pass j of a chained op (``MaxTrunc.chain``): the reverse OTs on the
        chunk's share bits and (j > 0) on its share of the carry in, opened from the previous pass's
        link request. ``link_pre(...)`` is ``prepare_link_pre(...)()``."""
        return self.prepare_link_pre(op, ys, j)()

    def prepare_link_pre(self, op: Op, ys: np.ndarray, j: int) -> Callable[[], bytes]:
        """Claim link pass j's reverse OT rows in order; returns the job that makes its pre-message
        (any thread; it waits for the chunk's previous link to be opened)."""
        self._ready()
        op, ys, n, items, per = _link_pass(op, ys, j, False)
        rows = _pad128(items * per)
        params = op._params()
        with self._lock:
            prev = self._pop_link(op, n, j - 1) if j else None
            pseq, rblk = self._alloc_rev(rows)
            self._pres[pseq] = None
            self._lpre_q.append(pseq)

        def job() -> bytes:
            st = prev.result() if prev is not None else None
            words = op.link_word(ys, j, None if st is None else st[1])
            out, body = _new_message(self._header(T_LPRE, pseq, op, n), 1 + _cot_len(self._wk, rows))
            body[0] = j
            t = self._rev_choose(words, items, per, rows, rblk, body + 1)
            with self._lock:
                self._pres[pseq] = _Pre(params, n, t, None, rblk, rows, None, st, j, words)
                self.bytes_sent += len(out)
            return out

        return job

    def open_link(self, op: Op, lreq: bytes) -> None:
        """Consume the client's link request: open the server's entry of each link table (its share of
        the chunk's carry out). ``open_link(...)`` is ``claim_link(...)()``."""
        self.claim_link(op, lreq)()

    def claim_link(self, op: Op, lreq: bytes) -> Callable[[], None]:
        """Check a link request (in order) and claim it; returns the job that opens the tables (any
        thread). The chunk's next pass waits for it."""
        op = _check_op(op)
        self._ready()
        seq, n, body = self._parse(lreq, T_LREQ, op)
        lp = op.lut_plan
        with self._lock:
            pre = self._pres.get(seq) if self._lpre_q and self._lpre_q[0] == seq else None
            if (
                pre is None
                or pre.j < 0
                or (pre.params, pre.n) != (op._params(), n)
                or len(body) < 1
                or body[0] != pre.j
            ):
                raise ValueError("link request out of order, replayed or for another pass")
            j, tab = pre.j, lp.link_table(pre.j)
            rng = self._rev_range(pre)
            ext = self._rev.sched.ext_len(*rng) if self.ot == "silent" else 0
            if len(body) != 1 + ext + n * op.items * _lut_bytes(*tab[1:]):
                raise ValueError("link request has the wrong length")
            if self.ot == "silent":
                self._rev.deposit(*rng, body[1 : 1 + ext])
            del self._pres[seq]
            self._lpre_q.popleft()
            fut: Future = Future()
            self._links.append((op._params(), n, j, fut))
            self.bytes_received += len(lreq)

        def job() -> None:
            try:
                t = pre.t if pre.t is not None else self._rev.rows(*rng).reshape(-1)
                u = self._recv_tables(
                    n * op.items,
                    np.array(tab, dtype=np.uint32),
                    lp.link_rows(j),
                    t,
                    pre.rblk,
                    pre.words,
                    body[1 + ext :],
                )
                s = (u & np.uint64(1)).astype(np.uint8)
                k0 = s if j == len(lp.drop) - 1 else None if pre.link is None else pre.link[0]
                fut.set_result((k0, s))
            except BaseException as e:
                fut.set_exception(e)
                raise

        return job

    def _recv_tables(
        self, items: int, tabs: np.ndarray, stride: int, t: np.ndarray, rblk: int, x: np.ndarray, tables: memoryview
    ) -> np.ndarray:
        """The server's opened entries of the tables ``tabs`` (its bits x choose them)."""
        u = np.empty(items, dtype=np.uint64)
        rc = lib.bn_luts_recv(
            items,
            tabs.size // 3,
            ffi.from_buffer("uint32_t[]", tabs),
            stride,
            _buf(t),
            self._rk,
            128 * rblk,
            _u64(np.ascontiguousarray(x)),
            _buf(tables),
            _u64(u),
        )
        check(lib, rc, "look-up tables")
        return u

    def respond(self, op: Op, req: bytes, ys: np.ndarray) -> tuple[bytes, np.ndarray | None]:
        """Garble one layer. Returns (response for the client, server's new shares or None).

        Shares have shape (n,) (MaxTrunc); Argmax gives the server None."""
        return self.claim(op, req, ys)()

    def claim(self, op: Op, req: bytes, ys: np.ndarray) -> Callable[[], tuple[bytes, np.ndarray | None]]:
        """Check a request and claim its OT range and hash tweaks; returns the garbling job.

        ``respond`` is ``claim(...)()``. Requests must be claimed in order (cheap); the jobs may then
        run concurrently on several threads (the C call releases the GIL) and finish in any order.
        The job keeps references to req and ys until it has run.
        """
        op = _check_op(op)
        self._ready()
        ys = op.words(_check_shares(op, ys, "server"), False)
        n = ys.shape[0]
        seq, n_req, body = self._parse(req, T_REQ, op)
        if n_req != n:
            raise ValueError("request was made for a different number of instances")
        m, nct, nar = _sizes(op, n)
        d = op.lut_bits
        cot = _req_len(self._wk, m)
        with self._lock:
            ext = self._rev_ext_due(op, n) if d else 0
            if len(body) != cot + ext + (n * op.items * op.lut_plan.table_bytes if d else 0):
                raise ValueError("request has the wrong length")
            if seq != self._seq:
                raise ValueError("request out of order (or replayed)")
            pre = self._take_pre(op, n, ys) if d else None
            if pre is not None and self.ot == "silent":  # the client's iteration messages, in order
                self._rev.deposit(*self._rev_range(pre), body[cot : cot + ext])
            _, blk, tw = self._alloc(op, n, _checked_rows(self._wk, m))
            self.bytes_received += len(req)
            due = None
            if pre is not None and pre.r0 is not None:
                due = [seq, op._params(), n, None, pre.r0]
                self._post_due.append(due)
        c = op.circuit

        def job() -> tuple[bytes, np.ndarray | None]:
            if pre is not None and pre.t is None:  # silent: the t rows (made here, off the claiming thread)
                pre.t = self._rev.rows(*self._rev_range(pre)).reshape(-1)
            if due is not None:
                due[3] = self._mux_keys(op, pre)[0]
            yg = ys if pre is None else self._open_tables(op, ys, pre, body[cot + ext :])
            msgs, labels, chk = b"", ffi.NULL, {}
            if self.ot == "silent":  # zero labels q ^ d Delta; the iteration messages lead the response
                lo = 128 * (blk - self._blk0)
                msgs, q = self._fwd.take(lo, lo + m, body[:cot])
                labels = _buf(q)
            else:  # the q rows come from the OT extension chunk by chunk, checked as they are made
                chk = self._request_check(blk, m, body[:cot])
            out, head = _new_message(self._header(T_RESP, seq, op, n), len(msgs) + nct + nar)
            ffi.memmove(head, msgs, len(msgs))
            body_out = head + len(msgs)
            nout = c.n_outputs
            acc = np.empty(n * nout, dtype=np.uint64)
            run_circuit(
                True,
                **circuit_fields(c, n, op.items, op.circ_bits, self._rk, tw),
                in_labels=labels,
                ot_leaves=self._leaves,
                ot_k=self._ot_k,
                blk_off=blk,
                ct=body_out,
                arith=body_out + nct,
                out=_u64(acc),
                outmask=(1 << 64) - 1,
                ys=_u64(yg),
                delta=self._delta,
                cm=_buf(body),
                **chk,
            )
            if chk and not chk["chk_ok"][0]:  # the response (made against unchecked rows) is dropped
                raise OTCheckFailed(_CHECK_FAILED)
            with self._lock:
                self.bytes_sent += len(out)
                self.rows_checked += _checked_rows(self._wk, m) if chk else 0
            if isinstance(op, Argmax):
                return out, None
            mask = np.uint64((1 << op.ring_bits) - 1)
            res = (np.uint64(0) - acc) & mask
            if pre is not None and pre.r0 is not None:  # sign mode: output 1 is the client's revealed bit
                return out, np.ascontiguousarray(res.reshape(n, nout)[:, 0])
            return out, res.reshape(n, nout) if nout > 1 else res

        return job

    def _checked_send(self, blk: int, m: int, body: memoryview) -> np.ndarray:
        """SoftSpoken sender of checked rows from block ``blk`` (a request's, or the set-up's): the q rows
        of the m real ones (a request's: the zero labels), after the client's consistency proof over
        them and the padding rows checks out."""
        rows = _checked_rows(self._ot_k, m)
        cm_len = _cot_len(self._ot_k, rows)
        q = np.empty((rows, 16), dtype=np.uint8)
        lib.bn_cot_send(self._leaves, self._ot_k, self._delta, blk, rows, _buf(body[:cm_len]), _buf(q))
        seed = _check_seed(self._sid, blk, body[:cm_len])
        if not otcheck.verify(q, self._delta, seed, bytes(body[cm_len:])):
            raise OTCheckFailed(_CHECK_FAILED)
        return q[:m]

    def _request_check(self, blk: int, m: int, body: memoryview) -> dict[str, object]:
        """The ``bn_gc_garble`` fields that check the client's proof over a request's rows from block
        ``blk`` (m real rows, then the padding) in the garbling run itself."""
        rows = _checked_rows(self._ot_k, m)
        cm_len = _cot_len(self._ot_k, rows)
        return {
            "chk_seed": _check_seed(self._sid, blk, body[:cm_len]),
            "chk_proof": body[cm_len:],
            "chk_pad": rows - m,
            "chk_ok": ffi.new("int32_t *"),
        }

    def request_limit(self, op: Op, n: int) -> int:
        """The most bytes a well-formed request for n instances may have: SoftSpoken's largest OT
        message (k = 1), or silent OT's correction bits plus the reverse iteration messages its
        look-up rows may open."""
        if self.ot != "silent":
            return op.message_sizes(n, ot_k=1)[0]
        size = op.message_sizes(n, ot_k=0)[0]
        if op.lut_bits:
            sched = self._rev.sched
            rows = _pad128(n * op.items * op.lut_bits)
            size += (2 + rows // sched.usable(1)) * max(sched.setup.msg_len, sched.main.msg_len)
        return size

    def link_request_limit(self, op: Op, n: int, j: int) -> int:
        """The most bytes a well-formed link request of pass j for n instances may have."""
        size = op.link_req_size(n, j)
        if self.ot == "silent":
            sched = self._rev.sched
            rows = _pad128(n * op.items * op.lut_plan.link_rows(j))
            size += (2 + rows // sched.usable(1)) * max(sched.setup.msg_len, sched.main.msg_len)
        return size

    def _rev_ext_due(self, op: Op, n: int) -> int:
        """Bytes of the client's reverse silent-OT iteration messages in the request that answers the
        oldest pending pre-message (0 without silent OT or without such a pre-message)."""
        st = self._pres.get(self._pre_q[0]) if self._pre_q else None
        if self.ot != "silent" or st is None:
            return 0
        return self._rev.sched.ext_len(*self._rev_range(st))

    def _rev_range(self, pre: _Pre) -> tuple[int, int]:
        """The reverse silent-OT stream rows of a pre-message."""
        lo = 128 * (pre.rblk - self._rblk0)
        return lo, lo + pre.rows

    def _mux_keys(self, op: Op, pre: _Pre) -> tuple[np.ndarray, np.ndarray]:
        """The receiver's key of each value's r0 row (K_{r0}), and r0."""
        t_rows, rblk, r0 = pre.t, pre.rblk, pre.r0
        rows = op.lut_bits
        rt = np.ascontiguousarray(t_rows.reshape(-1, 16)[rows - 1 : r0.size * rows : rows])
        lib.bn_hash_batch(self._rk, _buf(rt), _buf(rt), r0.size, 128 * rblk + rows - 1, rows, _MUX_DOM)
        return rt.view("<u8")[:, 0].astype(np.uint64) & _mask(op.ring_bits), r0

    def post(self, op: Op, msg: bytes, out_s: np.ndarray) -> np.ndarray:
        """Sign mode: consume the client's post-message for the oldest finished request; returns that
        request's server shares (from ``respond``) completed with K_{r0} - r0 e."""
        op = _check_op(op)
        self._ready()
        seq, n, body = self._parse(msg, T_POST, op)
        with self._lock:
            if (
                not self._post_due
                or self._post_due[0][0] != seq
                or tuple(self._post_due[0][1:3]) != (op._params(), n)
                or self._post_due[0][3] is None
            ):
                raise ValueError("post-message out of order, replayed or for another request")
            if len(body) != n * op.items * _post_bytes(op) or out_s.shape != (n,):
                raise ValueError("post-message (or shares) of the wrong length")
            _, _, _, key, r0 = self._post_due.popleft()
            self.bytes_received += len(msg)
        e = _unpack_ring(body, n * op.items, _post_bytes(op))
        return (out_s + key - r0.astype(np.uint64) * e) & _mask(op.ring_bits)

    def _take_pre(self, op: Op, n: int, ys: np.ndarray) -> _Pre:
        """The oldest pending pre-message's state; it must be for this op, n and these shares."""
        pre = self._pres.get(self._pre_q[0]) if self._pre_q else None
        if pre is None:
            raise ValueError("request needs a pre-message that was not sent")
        if pre.j >= 0 or pre.params != op._params() or pre.n != n:
            raise ValueError("request does not match the pending pre-message")
        if not np.array_equal(pre.low, _pre_low(op, ys)):
            raise ValueError("request and pre-message were made for different server shares")
        del self._pres[self._pre_q.popleft()]
        return pre

    def _open_tables(self, op: Op, ys: np.ndarray, pre: _Pre, tables: memoryview) -> np.ndarray:
        """Open the server's entry of each table (f ^ rho); the circuit's garbler bits are those, then
        the kept bits (sign mode: the top bit g, r0, then S'; see ``circuits.relu_sign_circuit``;
        chained: the shares of k0 and k', ``circuits.relu_link_circuit``)."""
        r0 = pre.r0
        lp = op.lut_plan
        assert lp is not None
        v = ys.reshape(-1)
        x = op.link_word(ys, len(lp.seq) - 1, pre.link[1]) if lp.chain else v
        u = self._recv_tables(v.size, lp.tabs(), lp.rows, pre.t, pre.rblk, x, tables)
        if lp.chain:  # the last link's bit is k''s share; k0's was opened in its pass
            u &= np.uint64(1)
            if lp.drop:
                u = pre.link[0].astype(np.uint64) | u << np.uint64(1)
        w = lp.circuit_words(ys, u, op.word_bits)
        if r0 is not None:
            nt = np.uint64(lp.n_masked)
            kept = (v >> np.uint64(op.shift)) & _mask(op.in_bits - op.shift - 1)  # S'
            w |= (r0.astype(np.uint64) << (nt + np.uint64(1))) | (kept << (nt + np.uint64(2)))
        return w.reshape(ys.shape)
