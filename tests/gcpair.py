"""Two parties running one garbled-circuit op through the service's pipeline
(``bunet.protocol.gc_pipeline``), the garbler in its own process, over a socket :class:`Channel`.
For tests and ``bench/gc.py``; bytes are counted per message part (``gc_pipeline.PARTS``)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from bunet.gc import Argmax, MaxTrunc
from bunet.heap import tune_malloc
from bunet.protocol import gc_pipeline
from bunet.protocol.channel import Channel, ChannelClosed

_HDR = struct.Struct("<HQ")  # tag length, payload length
TAG = "gc:bench"


class SocketChannel(Channel):
    """Tagged length-prefixed messages over a connected socket; bytes per tag suffix both ways."""

    def __init__(self, sock: socket.socket, timeout: float | None = None) -> None:
        super().__init__()
        sock.settimeout(timeout)  # a test's bound on each send and receive: a deadlock fails, not hangs
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            with contextlib.suppress(OSError):  # best effort
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.by_part: dict[str, list[int]] = {}  # last tag component -> [sent, received]

    def _tally(self, tag: str, n: int, sent: bool) -> None:
        self.by_part.setdefault(tag.rsplit(":", 1)[-1], [0, 0])[0 if sent else 1] += n

    def _send(self, tag: str, payload: bytes | bytearray | memoryview) -> None:
        t = tag.encode()
        self.sock.sendall(_HDR.pack(len(t), len(payload)) + t)
        self.sock.sendall(payload)
        self._tally(tag, len(payload), True)

    def _exact(self, n: int) -> bytearray:
        buf = bytearray(n)
        mv, got = memoryview(buf), 0
        while got < n:
            r = self.sock.recv_into(mv[got:], n - got)
            if r == 0:
                raise ChannelClosed("peer closed the connection")
            got += r
        return buf

    def _recv(self, cap: int | None = None) -> tuple[str, bytearray]:
        nt, n = _HDR.unpack(self._exact(_HDR.size))
        tag = self._exact(nt).decode()
        data = self._exact(n)
        self._tally(tag, n, False)
        return tag, data

    def close(self) -> None:
        self.sock.close()


@dataclass
class RunStats:
    seconds: float
    client_sent: int
    client_received: int
    by_part: dict[str, list[int]]  # part -> [client sent, client received]
    extra: dict = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return self.client_sent + self.client_received


def _garbler_proc(conn: object, sock: socket.socket | None, op: MaxTrunc | Argmax, ys: np.ndarray, cfg: dict) -> None:
    tune_malloc()  # a party's process, as bunet-server's
    try:
        if sock is None:
            srv = socket.create_server(("127.0.0.1", 0))
            conn.send(srv.getsockname()[1])
            sock, _ = srv.accept()
            srv.close()
        ch = SocketChannel(sock, cfg["timeout"])
        try:
            cpu0 = time.process_time()
            g = gc_pipeline.open_garbler(ch, cfg["ot"])
            with ThreadPoolExecutor(cfg["threads"]) as pool:
                outs = gc_pipeline.garble(
                    ch, g, pool, op, TAG, ys.reshape(ys.shape[0], -1), cfg["window"], cfg["chunk"]
                )
            out = None if isinstance(op, Argmax) else np.concatenate(outs)
            conn.send(("ok", (out, time.process_time() - cpu0)))
        finally:
            ch.close()  # unblocks the evaluator if this side failed
    except BaseException as e:  # report to the parent, never hang it
        conn.send(("error", f"{type(e).__name__}: {e}"))


def two_party(
    op: MaxTrunc | Argmax,
    yc: np.ndarray,
    ys: np.ndarray,
    *,
    chunk: int = gc_pipeline.GC_CHUNK,
    window: int = 8,
    tcp: bool = False,
    ot_k: int = 4,
    threads: int = 2,
    ot: str = "silent",
    timeout: float | None = None,
) -> tuple[np.ndarray, np.ndarray | None, RunStats]:
    """Run one op over (instances, k) shares with the garbler in a spawned process and the evaluator
    here. tcp=False: a Unix socketpair; tcp=True: loopback TCP. Returns (client result, server
    shares or None, stats); stats.seconds covers the session from the client's hello to its last
    output, stats.extra each party's CPU seconds (process time, all threads). ``timeout``: seconds
    either party waits for the other at most, per message (default: no bound)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    cfg = {"chunk": chunk, "window": window, "threads": threads, "ot": ot, "timeout": timeout}
    if tcp:
        proc = ctx.Process(target=_garbler_proc, args=(child, None, op, ys, cfg))
        proc.start()
        port = parent.recv()
        s = socket.create_connection(("127.0.0.1", port))
    else:
        s, peer = socket.socketpair()
        proc = ctx.Process(target=_garbler_proc, args=(child, peer, op, ys, cfg))
        proc.start()
        peer.close()
    ch = SocketChannel(s, timeout)
    try:
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            ev = gc_pipeline.open_evaluator(ch, ot_k=ot_k, ot=ot)
            with ThreadPoolExecutor(threads) as pool:
                outs = gc_pipeline.evaluate(ch, ev, pool, op, TAG, yc.reshape(yc.shape[0], -1), window, chunk)
        except (ChannelClosed, OSError) as e:  # the garbler's own error says more
            if parent.poll(10):
                status, payload = parent.recv()
                if status != "ok":
                    raise RuntimeError(f"garbler failed: {payload}") from e
            raise
        dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        status, payload = parent.recv()
    finally:
        ch.close()
        proc.join(timeout=30)
    if status != "ok":
        raise RuntimeError(f"garbler failed: {payload}")
    out_s, server_cpu = payload
    stats = RunStats(
        dt, ch.traffic.sent, ch.traffic.received, ch.by_part, {"client_cpu_s": cpu, "server_cpu_s": server_cpu}
    )
    return np.concatenate(outs), out_s, stats


@dataclass
class LocalCot:
    """m correlated OTs with both parties in memory (base OTs done locally, never for a session):
    ``recv()`` fills the correction ``cm`` and the receiver's rows ``t`` from ``choice``;
    ``send(cm)`` returns the sender's rows q, with q_i = t_i ^ choice_i * delta for an honest cm."""

    k: int
    m: int
    seed: int = 1

    def __post_init__(self) -> None:
        from bunet.gc.engine import aes_key_schedules
        from bunet.gc.ot import local_trees

        self.delta, leaves_c, leaves_g = local_trees(self.k, seed=self.seed)
        self._sc, self._sg = (aes_key_schedules([x for t in tree for x in t]) for tree in (leaves_c, leaves_g))
        rng = np.random.default_rng(self.seed)
        self.choice = rng.integers(0, 256, size=self.m // 8, dtype=np.uint8)
        self.cm = np.empty((128 // self.k) * self.m // 8, dtype=np.uint8)
        self.t = np.empty(16 * self.m, dtype=np.uint8)
        self.q = np.empty(16 * self.m, dtype=np.uint8)

    def recv(self) -> None:
        from bunet.gc.engine import ffi, lib

        u8 = lambda a: ffi.from_buffer("uint8_t[]", a)  # noqa: E731
        lib.bn_cot_recv(self._sc, self.k, 0, self.m, u8(self.choice), u8(self.cm), u8(self.t))

    def send(self, cm: np.ndarray | None = None) -> np.ndarray:
        from bunet.gc.engine import ffi, lib

        u8 = lambda a: ffi.from_buffer("uint8_t[]", a)  # noqa: E731
        lib.bn_cot_send(self._sg, self.k, self.delta, 0, self.m, u8(self.cm if cm is None else cm), u8(self.q))
        return self.q
