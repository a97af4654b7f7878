"""Garbler (server) and evaluator (client) over NumPy share arrays; messages are bytes.

Session setup (three messages, once)::

    m1 = ev.hello(); m2 = g.hello(m1); ev.finish_hello(m2)

128 base OTs (Chou-Orlandi; the evaluator is the base-OT sender), then every layer is one
request/response::

    req = ev.request(op, yc)              # OT-extension message for the client's input bits
    resp, out_s = g.respond(op, req, ys)  # garbled tables + arithmetic output ciphertexts
    out_c = ev.finish(op, resp)

OT extension is SoftSpoken (Roy, CRYPTO 2022) with k bits per block (``Evaluator(ot_k=4)``,
k = 1 is plain IKNP): the client sends 128/k bits per input bit (16 bytes for IKNP, 4 for the
default k = 4; k = 2 costs 8 bytes and less CPU). Its correlation is the garbler's free-XOR
offset Delta, so the correlated OTs are directly the client's input labels: the garbler sends
nothing per client input bit, and the server's own share bits are XOR-ed in for free. The
GGM-punctured trees behind SoftSpoken are set up once: the client's encrypted level sums ride
on the first request (4 KiB, once).

Requests must reach ``respond`` in the order they were made (checked: the sequence number fixes
the OT range and the hash tweaks, which are never reused); ``finish`` may take responses in any
order and the C calls release the GIL, so chunks can be pipelined and run on two threads.
``g.claim(op, req, ys)`` does the in-order part of ``respond`` and returns the garbling job, so
a server can garble several chunks at once (``respond(...)`` is ``claim(...)()``). Chunks of
about 8192 ReLUs keep each call's working set in cache (bunet.gc.harness shows the pattern:
both parties pipelined, two worker threads each).

Costs per instance (AND = three-halves garbling, Rosulek-Roy 2021: 24 bytes + 5 control bits;
ANDG = garbler half gate, 16 bytes; see ``circuits``): MaxTrunc k=1 (ReLU or truncation): b-2 AND
+ 1 ANDG, plus (l-j)-bit arithmetic ciphertexts per output bit j (two per bit for the ReLU, fused
with its multiplexer): 624.5 bytes for the default ReLU (l = b = 24, s = 8), plus 96 bytes of
client OT messages at ot_k = 4; MaxTrunc k=4: 4(b-2) + 5(b-s) (+2 with ReLU) AND + 4 ANDG;
ReluPool (a 2x2 window's 4 ReLUs and their max, 5 outputs): the same gates as MaxTrunc k=4 with
ReLU, 4650.75 bytes for (24, 24, 8); Argmax over K: K(b-2) + (K-1)b + (K-2)b + index muxes AND + K ANDG.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import circuits
from .ot import N_BASE, POINT, SEED, BaseOTReceiver, BaseOTSender, ggm_choices, ggm_client, ggm_garbler

try:
    from ._native import ffi, lib
except ImportError as e:  # pragma: no cover - build problem
    raise ImportError(
        "bunet.gc._native is not built: run `pip install .` or `python native/build_ffi.py`"
    ) from e

if not lib.bn_cpu_ok():  # pragma: no cover - hardware dependent
    raise RuntimeError("bunet.gc needs a CPU with AES-NI, PCLMULQDQ, SSSE3 and SSE4.1 (not found by cpuid)")

MAGIC = b"BNG1"
T_HELLO1, T_HELLO2, T_REQ, T_RESP = 1, 2, 3, 4
_HDR = struct.Struct("<4sB8sQBBBBBHQ")  # magic, type, tag, seq, opcode, l, b, s, relu, k, n
OP_MAXTRUNC, OP_ARGMAX, OP_RELUPOOL = 1, 2, 3


def _check_int(name: str, v: object, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
    return int(v)


class _Op:
    """What every op shares: its message sizes, from its circuit and its k * in_bits input bits."""

    k: int
    in_bits: int | None

    @property
    def circuit(self) -> circuits.Compiled:  # pragma: no cover - each op defines it
        raise NotImplementedError

    @property
    def n_outputs(self) -> int:
        """Re-shared values per instance (MaxTrunc: 1; Argmax reveals labels instead)."""
        return 1

    def message_sizes(self, n: int, ot_k: int = 4) -> tuple[int, int]:
        """(request bytes, response bytes) for n instances, to size chunks for a transport.

        The first request of a session carries 4 KiB more (the OT-extension setup)."""
        m = _pad128(n * self.k * int(self.in_bits or 0))
        c = self.circuit
        return _HDR.size + _cot_len(ot_k, m), _HDR.size + n * c.ct_bytes + c.arith_len(n)


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

    def __post_init__(self) -> None:
        l = _check_int("ring_bits", self.ring_bits, 1, 64)
        b = l if self.in_bits is None else _check_int("in_bits", self.in_bits, 1, l)
        object.__setattr__(self, "in_bits", b)
        _check_int("shift", self.shift, 0, b - 1)
        _check_int("k", self.k, 1, 64)
        if not isinstance(self.relu, (bool, np.bool_)):
            raise ValueError("relu must be a bool")

    @property
    def circuit(self) -> circuits.Compiled:
        return circuits.max_trunc_circuit(self.ring_bits, self.in_bits, self.shift, bool(self.relu), self.k)

    def _params(self) -> tuple[int, int, int, int, int, int]:
        return (OP_MAXTRUNC, self.ring_bits, self.in_bits, self.shift, int(bool(self.relu)), self.k)



@dataclass(frozen=True)
class ReluPool(_Op):
    """ReLU with truncation over 2x2 windows plus their max-pool: (n, 4) shares -> (n, 5) shares.

    Columns 0..3: ``ring.nonlinear`` with k = 1, relu=True of each of the 4 values (the ReLU
    outputs, e.g. for a skip connection); column 4: the window maximum of those, i.e.
    ``ring.relu_pool``. One circuit per window: each value's adder serves both (see
    ``circuits.relu_pool_circuit``).
    """

    ring_bits: int
    in_bits: int | None = None
    shift: int = 0
    k = 4
    relu = True

    def __post_init__(self) -> None:
        l = _check_int("ring_bits", self.ring_bits, 1, 64)
        b = l if self.in_bits is None else _check_int("in_bits", self.in_bits, 1, l)
        object.__setattr__(self, "in_bits", b)
        _check_int("shift", self.shift, 0, b - 1)

    @property
    def circuit(self) -> circuits.Compiled:
        return circuits.relu_pool_circuit(self.ring_bits, self.in_bits, self.shift)

    @property
    def n_outputs(self) -> int:
        return 5

    def _params(self) -> tuple[int, int, int, int, int, int]:
        return (OP_RELUPOOL, self.ring_bits, self.in_bits, self.shift, 1, 4)



@dataclass(frozen=True)
class Argmax(_Op):
    """Index of the largest of k signed in_bits-bit values (ties: lowest), for the client only."""

    ring_bits: int
    in_bits: int | None = None
    k: int = 2

    def __post_init__(self) -> None:
        l = _check_int("ring_bits", self.ring_bits, 1, 64)
        b = l if self.in_bits is None else _check_int("in_bits", self.in_bits, 1, l)
        object.__setattr__(self, "in_bits", b)
        _check_int("k", self.k, 1, 64)

    @property
    def circuit(self) -> circuits.Compiled:
        return circuits.argmax_circuit(self.in_bits, self.k)

    def _params(self) -> tuple[int, int, int, int, int, int]:
        return (OP_ARGMAX, self.ring_bits, self.in_bits, 0, 0, self.k)



Op = MaxTrunc | ReluPool | Argmax


def _check_op(op: object) -> Op:
    if not isinstance(op, (MaxTrunc, ReluPool, Argmax)):
        raise ValueError("op must be a MaxTrunc, ReluPool or Argmax")
    return op


def _check_shares(op: Op, y: object, who: str) -> np.ndarray:
    if not isinstance(y, np.ndarray):
        raise ValueError(f"{who} shares must be a numpy array")
    if y.dtype != np.uint64:
        raise ValueError(f"{who} shares must have dtype uint64, got {y.dtype}")
    if y.ndim == 1 and op.k == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape[1] != op.k:
        raise ValueError(f"{who} shares must have shape (n, {op.k}), got {y.shape}")
    if op.ring_bits < 64 and y.size and bool((y >> np.uint64(op.ring_bits)).any()):
        raise ValueError(f"{who} shares must lie in [0, 2^{op.ring_bits})")
    return np.ascontiguousarray(y)


def _pad128(x: int) -> int:
    return (x + 127) // 128 * 128


def _derive(nonce_c: bytes, nonce_s: bytes, a_pt: bytes) -> tuple[bytes, bytes, bytes]:
    sid = hashlib.blake2b(nonce_c + nonce_s + a_pt, digest_size=32, person=b"bunet-gc-sid-v1").digest()
    aes_key = hashlib.blake2b(sid, digest_size=16, person=b"bunet-gc-aes-v1").digest()
    return sid, sid[:8], aes_key


def aes_key_schedules(keys: list[bytes]) -> object:
    buf = ffi.new("uint8_t[]", 176 * len(keys))
    for i, k in enumerate(keys):
        lib.bn_aes_keysched(k, buf + 176 * i)
    return buf


class _Party:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._seq = 0
        self._blk = 0  # OT offset, in 128-row blocks per column
        self._tweak = 0  # global gate-hash tweak counter
        self._tag: bytes | None = None
        self._rk: object = None
        self.bytes_sent = 0
        self.bytes_received = 0

    def _ready(self) -> None:
        if self._tag is None:
            raise ValueError("session not set up: run the hello exchange first")

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
    m = _pad128(n * op.k * op.in_bits)
    return m, n * c.ct_bytes, c.arith_len(n)


_PyBytes_FromStringAndSize = ctypes.pythonapi.PyBytes_FromStringAndSize
_PyBytes_FromStringAndSize.restype = ctypes.py_object
_PyBytes_FromStringAndSize.argtypes = [ctypes.c_char_p, ctypes.c_ssize_t]


def _new_message(header: bytes, body_len: int) -> tuple[bytes, object]:
    """A fresh, unshared bytes object (header + body_len bytes) and a writable pointer to its body.

    The engine writes the body in place: this saves a copy and a second set of page faults per
    message (large messages dominate the cost of a layer otherwise). The object is not visible to
    anyone else until it is returned, so filling it is safe.
    """
    msg = _PyBytes_FromStringAndSize(None, len(header) + body_len)
    ptr = ffi.cast("uint8_t *", ffi.from_buffer(msg))
    ffi.memmove(ptr, header, len(header))
    return msg, ptr + len(header)


OT_KS = (1, 2, 4, 8)  # SoftSpoken bits per block: the client sends 128/k bits per OT (k = 1: IKNP)


def _cot_len(k: int, m: int) -> int:
    return (128 // k) * (m // 8)


def _xor16(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(SEED, "little")


def _buf(a: object) -> object:
    return ffi.from_buffer("uint8_t[]", a)


def _u64(a: np.ndarray) -> object:
    return ffi.from_buffer("uint64_t[]", a)


class Evaluator(_Party):
    """The client: OT-extension receiver and circuit evaluator."""

    def __init__(self, ot_k: int = 4) -> None:
        super().__init__()
        if ot_k not in OT_KS:
            raise ValueError(f"ot_k must be one of {OT_KS}")
        self.ot_k = ot_k
        self._base = BaseOTSender()
        self._nonce = os.urandom(16)
        self._leaves: object = None
        self._setup = b""  # GGM level sums under the base-OT keys, sent with the first request
        self._pending: dict[int, tuple[tuple[int, ...], int, np.ndarray, int]] = {}
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
        msg = MAGIC + bytes([T_HELLO1, self.ot_k]) + self._nonce + self._base.A
        self.bytes_sent += len(msg)
        return msg

    def finish_hello(self, msg: bytes) -> None:
        """Consume the server's base-OT reply; the session is ready afterwards."""
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
        k0, k1 = self._base.keys(sid, bs)
        leaves, sums = ggm_client(self.ot_k)
        self._leaves = aes_key_schedules([leaf for tree in leaves for leaf in tree])
        self._setup = b"".join(_xor16(s0, a) + _xor16(s1, b) for (s0, s1), a, b in zip(sums, k0, k1, strict=True))
        rk = ffi.new("uint8_t[]", 176)
        lib.bn_aes_keysched(aes_key, rk)
        self._rk = rk
        self._tag = tag

    def request(self, op: Op, yc: np.ndarray) -> bytes:
        """Client -> server: OT-extension message for the client's input bits of this layer."""
        op = _check_op(op)
        self._ready()
        yc = _check_shares(op, yc, "client")
        n = yc.shape[0]
        m, _, _ = _sizes(op, n)
        seq, blk, tw = self._alloc(op, n, m)
        choice = np.empty(m // 8, dtype=np.uint8)
        lib.bn_pack_choice(_u64(yc), n, op.k, op.in_bits, _buf(choice), m)
        setup = self._setup if seq == 0 else b""
        out, body = _new_message(self._header(T_REQ, seq, op, n) + setup, _cot_len(self.ot_k, m))
        labels = self._take_buffer(16 * m)  # the client's input labels, made in the same pass
        lib.bn_cot_recv_fused(self._leaves, self.ot_k, blk, m, _buf(choice), body, _buf(labels))
        with self._lock:
            self._pending[seq] = (op._params(), n, labels, tw)
            self.bytes_sent += len(out)
        return out

    def finish(self, op: Op, resp: bytes) -> np.ndarray:
        """Consume the server's response: the client's new shares (MaxTrunc: (n,), ReluPool: (n, 5))
        or labels (Argmax)."""
        op = _check_op(op)
        self._ready()
        seq, n, body = self._parse(resp, T_RESP, op)
        with self._lock:
            pend = self._pending.get(seq)
            if pend is None or pend[0] != op._params() or pend[1] != n:
                raise ValueError("response does not match any pending request")
            _, nct, nar = _sizes(op, n)
            if len(body) != nct + nar:
                raise ValueError("response has the wrong length")
            del self._pending[seq]
            self.bytes_received += len(resp)
        _, _, labels, tw = pend
        c = op.circuit
        m = _pad128(n * op.k * op.in_bits)
        nout = op.n_outputs
        out = np.empty(n * nout, dtype=np.uint64)
        mask = (1 << 64) - 1 if isinstance(op, Argmax) else (1 << op.ring_bits) - 1
        ct = body[:nct]
        ar = body[nct:]
        rc = lib.bn_gc_run_multi(0, ffi.from_buffer("int32_t[]", c.gates), c.gates.shape[0], c.nwires, n, op.k,
                                 op.in_bits, ffi.NULL, ffi.NULL, self.ot_k, ffi.NULL, m, 0, _buf(labels), self._rk,
                                 ffi.NULL, tw, c.tweaks_per_inst, _buf(ct), c.ct_bytes, _buf(ar), nar, _u64(out), mask,
                                 nout)
        self._give_buffer(labels)
        if rc != 0:
            raise MemoryError(f"garbled-circuit evaluation failed (engine code {rc})")
        if isinstance(op, Argmax):
            return (out | np.uint64(c.const_out)).astype(np.int64)
        return out.reshape(n, nout) if nout > 1 else out


class Garbler(_Party):
    """The server: OT-extension sender (correlation = Delta) and garbler."""

    def __init__(self) -> None:
        super().__init__()
        d = bytearray(16)
        if lib.bn_prg_fill(_buf(d), 16) != 0:
            raise OSError("getrandom() failed")
        d[0] |= 1  # point-and-permute: lsb(Delta) = 1
        self._delta = ffi.new("uint8_t[]", bytes(d))
        d[:] = bytes(16)
        self._leaves: object = None
        self._ot_k = 0
        self._base_keys: list[bytes] = []
        self._choices: list[int] = []

    def hello(self, msg: bytes) -> bytes:
        """Base OT round 2 (server -> client); the session is ready afterwards."""
        if not isinstance(msg, (bytes, bytearray)) or len(msg) != 6 + 16 + POINT:
            raise ValueError("malformed hello")
        if msg[:4] != MAGIC or msg[4] != T_HELLO1:
            raise ValueError("not a BUNET GC hello")
        if msg[5] not in OT_KS:
            raise ValueError("unsupported OT extension parameter")
        if self._tag is not None:
            raise ValueError("session already set up")
        self.bytes_received += len(msg)
        self._ot_k = msg[5]
        nonce_c, a_pt = bytes(msg[6:22]), bytes(msg[22:])
        dbytes = bytes(ffi.buffer(self._delta, 16))
        self._choices = ggm_choices(self._ot_k, dbytes)
        rcv = BaseOTReceiver(a_pt, self._choices)
        nonce_s = os.urandom(16)
        sid, tag, aes_key = _derive(nonce_c, nonce_s, a_pt)
        self._base_keys = rcv.keys(sid)
        rk = ffi.new("uint8_t[]", 176)
        lib.bn_aes_keysched(aes_key, rk)
        self._rk = rk
        self._tag = tag
        out = MAGIC + bytes([T_HELLO2]) + nonce_s + b"".join(rcv.bs)
        self.bytes_sent += len(out)
        return out

    def _finish_setup(self, blob: memoryview) -> None:
        """Rebuild the punctured GGM trees from the client's encrypted level sums (first request)."""
        sums = []
        for i, (key, c) in enumerate(zip(self._base_keys, self._choices, strict=True)):
            off = 32 * i + 16 * c
            sums.append(_xor16(bytes(blob[off : off + 16]), key))
        dbytes = bytes(ffi.buffer(self._delta, 16))
        leaves = ggm_garbler(self._ot_k, dbytes, sums)
        self._leaves = aes_key_schedules([leaf for tree in leaves for leaf in tree])
        self._base_keys = []

    def respond(self, op: Op, req: bytes, ys: np.ndarray) -> tuple[bytes, np.ndarray | None]:
        """Garble one layer. Returns (response for the client, server's new shares or None).

        Shares have shape (n,) (MaxTrunc) or (n, 5) (ReluPool); Argmax gives the server None."""
        return self.claim(op, req, ys)()

    def claim(self, op: Op, req: bytes, ys: np.ndarray) -> Callable[[], tuple[bytes, np.ndarray | None]]:
        """Check a request and claim its OT range and hash tweaks; returns the garbling job.

        ``respond`` is ``claim(...)()``. Requests must be claimed in order (cheap); the jobs may then
        run concurrently on several threads (the C call releases the GIL) and finish in any order.
        The job keeps references to req and ys until it has run.
        """
        op = _check_op(op)
        self._ready()
        ys = _check_shares(op, ys, "server")
        n = ys.shape[0]
        seq, n_req, body = self._parse(req, T_REQ, op)
        if n_req != n:
            raise ValueError("request was made for a different number of instances")
        m, nct, nar = _sizes(op, n)
        setup_len = 32 * N_BASE if seq == 0 else 0
        if len(body) != setup_len + _cot_len(self._ot_k, m):
            raise ValueError("request has the wrong length")
        with self._lock:
            if seq != self._seq:
                raise ValueError("request out of order (or replayed)")
            if seq == 0:
                self._finish_setup(body[:setup_len])
            _, blk, tw = self._alloc(op, n, m)
            self.bytes_received += len(req)
        body = body[setup_len:]
        c = op.circuit

        def job() -> tuple[bytes, np.ndarray | None]:
            out, body_out = _new_message(self._header(T_RESP, seq, op, n), nct + nar)
            nout = op.n_outputs
            acc = np.empty(n * nout, dtype=np.uint64)
            rc = lib.bn_gc_run_multi(1, ffi.from_buffer("int32_t[]", c.gates), c.gates.shape[0], c.nwires, n, op.k,
                                     op.in_bits, _u64(ys), self._leaves, self._ot_k, _buf(body), m, blk, ffi.NULL,
                                     self._rk, self._delta, tw, c.tweaks_per_inst, body_out, c.ct_bytes,
                                     body_out + nct, nar, _u64(acc), (1 << 64) - 1, nout)
            if rc != 0:
                raise MemoryError(f"garbling failed (engine code {rc})")
            with self._lock:
                self.bytes_sent += len(out)
            if isinstance(op, Argmax):
                return out, None
            mask = np.uint64((1 << op.ring_bits) - 1)
            res = (np.uint64(0) - acc) & mask
            return out, res.reshape(n, nout) if nout > 1 else res

        return job
