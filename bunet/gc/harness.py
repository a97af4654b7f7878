"""Two-party harness over a socket (socketpair or loopback TCP), for tests and benchmarks.

Frames are length-prefixed. Both parties pipeline: the evaluator's sender thread computes and
sends requests up to ``depth`` chunks ahead while its main thread receives responses for a small
pool of evaluation threads; the garbler receives and claims requests in order, garbles on a pool
of threads and sends from a third, so OT, garbling, transfer and evaluation overlap.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..heap import tune_malloc
from .engine import Argmax, Evaluator, Garbler, MaxTrunc

_LEN = struct.Struct("<Q")
MAX_FRAME = 1 << 31


class Channel:
    """Length-prefixed frames over a connected socket, with byte counters."""

    def __init__(self, sock: socket.socket) -> None:
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            with contextlib.suppress(OSError):  # best effort
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        self.sock = sock
        self._rbuf = bytearray(0)
        self.sent = 0
        self.received = 0
        self._slock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self._slock:
            self.sock.sendall(_LEN.pack(len(data)))
            self.sock.sendall(data)
            self.sent += _LEN.size + len(data)

    def _recv_exact(self, n: int, reuse: bool = False) -> bytearray | memoryview:
        if reuse:  # into the channel's receive buffer (fresh pages per frame are costly)
            if len(self._rbuf) < n:
                self._rbuf = bytearray(n)  # a new object: views of the old one stay valid
            mv = memoryview(self._rbuf)[:n]
            buf: bytearray | memoryview = mv
        else:
            buf = bytearray(n)
            mv = memoryview(buf)
        got = 0
        while got < n:
            r = self.sock.recv_into(mv[got:], n - got)
            if r == 0:
                raise ConnectionError("peer closed the connection")
            got += r
        return buf

    def recv(self, reuse: bool = False) -> bytearray | memoryview:
        """The next frame. reuse=True: a view of the channel's buffer, valid until the next recv."""
        (n,) = _LEN.unpack(self._recv_exact(_LEN.size))
        if n > MAX_FRAME:
            raise ValueError("frame too large")
        data = self._recv_exact(n, reuse)  # the engine takes any bytes-like message: no copy
        self.received += _LEN.size + n
        return data

    def recv_into(self, buf: bytearray) -> tuple[bytearray, int]:
        """The next frame into buf (grown if too small): returns (buffer, frame length)."""
        (n,) = _LEN.unpack(self._recv_exact(_LEN.size))
        if n > MAX_FRAME:
            raise ValueError("frame too large")
        if len(buf) < n:
            buf = bytearray(n)
        mv = memoryview(buf)
        got = 0
        while got < n:
            r = self.sock.recv_into(mv[got:n], n - got)
            if r == 0:
                raise ConnectionError("peer closed the connection")
            got += r
        self.received += _LEN.size + n
        return buf, n

    def close(self) -> None:
        self.sock.close()


def _chunks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(i, min(n, i + chunk)) for i in range(0, n, chunk)] or [(0, 0)]


def run_garbler(ch: Channel, op: MaxTrunc | Argmax, ys: np.ndarray, chunk: int = 1 << 13,
                workers: int = 2, ot: str = "silent") -> np.ndarray | None:
    """Server side of one session and one layer: returns the server's output shares (or None).

    The main thread receives requests and claims them in order; ``workers`` threads garble (the C
    calls release the GIL) and a sender thread sends the responses in order, so receiving,
    garbling and sending overlap.
    """
    g = Garbler(ot=ot)
    ch.send(g.hello(ch.recv()))
    ch.send(g.finish_hello(ch.recv()))
    ys = ys.reshape(ys.shape[0], -1)
    parts = _chunks(ys.shape[0], chunk)
    if op.lut_bits:  # every chunk's pre-message first (small: the session code interleaves them)
        for lo, hi in parts:
            ch.send(g.pre(op, ys[lo:hi]))
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    futs: queue.Queue = queue.Queue(maxsize=2 * max(1, workers))
    outs: list = []
    err: list[BaseException] = []

    def sender() -> None:
        while (f := futs.get()) is not None:  # drains the queue to the end, even after an error
            if err:
                continue
            try:
                resp, out_s = f.result()
                ch.send(resp)
                outs.append(out_s)
            except BaseException as e:  # surfaced by the main thread
                err.append(e)
                with contextlib.suppress(OSError):
                    ch.sock.shutdown(socket.SHUT_RDWR)  # unblock the receiving main thread

    th = threading.Thread(target=sender, daemon=True)
    th.start()
    try:
        for lo, hi in parts:
            if err:
                break
            futs.put(pool.submit(g.claim(op, ch.recv(), ys[lo:hi])))
    finally:
        futs.put(None)
        th.join()
        pool.shutdown()
    if err:
        raise err[0]
    if isinstance(op, Argmax):
        return None
    if op.has_post:  # sign mode: the client's post-messages complete the shares, in order
        outs = [g.post(op, ch.recv(), o) for o in outs]
    return np.concatenate(outs)


def run_evaluator(ch: Channel, op: MaxTrunc | Argmax, yc: np.ndarray, chunk: int = 1 << 13,
                  depth: int = 4, ot_k: int = 4, workers: int = 2, ot: str = "silent") -> np.ndarray:
    """Client side: returns the client's output shares (MaxTrunc) or labels (Argmax).

    A sender thread claims requests in order up to ``depth`` chunks ahead, has them made on the
    ``workers`` threads and sends them in order; the main thread receives responses and hands them
    to the same threads (``finish`` takes them in any order).
    """
    ev = Evaluator(ot_k=ot_k, ot=ot)
    ch.send(ev.hello())
    ch.send(ev.finish_hello(ch.recv()))
    ev.finish_setup(ch.recv())
    yc = yc.reshape(yc.shape[0], -1)
    parts = _chunks(yc.shape[0], chunk)
    pres = [ch.recv() for _ in parts] if op.lut_bits else [None] * len(parts)
    slots = threading.Semaphore(depth)
    err: list[BaseException] = []
    pool = ThreadPoolExecutor(max_workers=max(1, workers))

    def sender() -> None:
        try:
            made: list = []
            for (lo, hi), pre in zip(parts, pres, strict=True):
                if not slots.acquire(blocking=False):  # everything made goes out before waiting
                    while made:
                        ch.send(made.pop(0).result())
                    slots.acquire()
                if err:
                    return
                made.append(pool.submit(ev.prepare(op, yc[lo:hi], pre)))  # OT ranges claimed in order
                while made and made[0].done():
                    ch.send(made.pop(0).result())
            while made:
                ch.send(made.pop(0).result())
        except BaseException as e:  # surfaced by the main thread
            err.append(e)
            with contextlib.suppress(OSError):
                ch.sock.shutdown(socket.SHUT_RDWR)  # unblock the receiving main thread

    free: list[bytearray] = []  # receive buffers, reused (fresh pages per frame are costly)
    flock = threading.Lock()

    def finish(buf: bytearray, n: int) -> np.ndarray:
        try:
            return ev.finish(op, memoryview(buf)[:n])
        finally:
            with flock:
                free.append(buf)
            slots.release()

    def receive() -> tuple[bytearray, int]:
        with flock:
            buf = free.pop() if free else bytearray(0)
        return ch.recv_into(buf)

    th = threading.Thread(target=sender, daemon=True)
    th.start()
    try:
        with pool:
            futs = [pool.submit(finish, *receive()) for _ in parts]
            outs = [f.result() for f in futs]
    except BaseException:
        if err:  # the sender's error is the cause
            raise err[0] from None
        raise
    th.join()
    if err:
        raise err[0]
    for post in ev.take_posts():
        ch.send(post)
    return np.concatenate(outs)


@dataclass
class RunStats:
    seconds: float
    client_sent: int
    client_received: int
    extra: dict = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return self.client_sent + self.client_received


def _garbler_proc(conn: object, addr: tuple[str, int] | None, sock: socket.socket | None,
                  op: MaxTrunc | Argmax, ys: np.ndarray, chunk: int, ot: str = "silent") -> None:
    tune_malloc()  # a party's process, as bunet-server's
    try:
        if sock is None:
            srv = socket.create_server(addr or ("127.0.0.1", 0))
            conn.send(srv.getsockname()[1])
            s, _ = srv.accept()
            srv.close()
        else:
            s = sock
        if s.family != socket.AF_UNIX:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ch = Channel(s)
        cpu0 = time.process_time()
        out = run_garbler(ch, op, ys, chunk, ot=ot)
        conn.send(("ok", (out, time.process_time() - cpu0)))
        ch.close()
    except BaseException as e:  # report to the parent, never hang it
        conn.send(("error", f"{type(e).__name__}: {e}"))


def two_party(op: MaxTrunc | Argmax, yc: np.ndarray, ys: np.ndarray, *, chunk: int = 1 << 13,
              tcp: bool = False, depth: int = 4, ot_k: int = 4,
              ot: str = "silent") -> tuple[np.ndarray, np.ndarray | None, RunStats]:
    """Run one layer with the garbler in a separate process (spawned) and the evaluator here.

    tcp=False: a Unix socketpair; tcp=True: loopback TCP. Returns (client result, server shares,
    stats); stats.seconds covers the session from the client's hello to its last output, and
    stats.extra holds each party's CPU seconds over the session (process time, all threads).
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    if tcp:
        proc = ctx.Process(target=_garbler_proc, args=(child, ("127.0.0.1", 0), None, op, ys, chunk, ot))
        proc.start()
        port = parent.recv()
        if not isinstance(port, int):
            raise RuntimeError(f"garbler failed: {port}")
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        s, peer = socket.socketpair()
        proc = ctx.Process(target=_garbler_proc, args=(child, None, peer, op, ys, chunk, ot))
        proc.start()
        peer.close()
    ch = Channel(s)
    try:
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            out_c = run_evaluator(ch, op, yc, chunk, depth, ot_k, ot=ot)
        except (ConnectionError, OSError) as e:  # the garbler's own error says more
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
    return out_c, out_s, RunStats(dt, ch.sent, ch.received, {"client_cpu_s": cpu, "server_cpu_s": server_cpu})
