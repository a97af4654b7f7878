"""A user-space link emulator for benchmarks: a TCP relay on 127.0.0.1 that shapes each direction
with a token bucket (rate) and a one-way delay (RTT / 2).

    python bench/linkrelay.py --target 127.0.0.1:50051 --link 1gbit,10ms

prints ``listening 127.0.0.1:PORT`` once it accepts connections and relays every connection to
the target until its standard input closes (the parent went away) or ``--max-seconds`` pass.
In a program: ``with Relay(("127.0.0.1", port), LinkSpec.parse("100mbit,40ms")) as r: ... r.port``.

Each direction is a reader and a writer thread. The reader stamps every chunk it reads with its
departure time from a token bucket (rate ``rate``, depth ``burst`` bytes: a chunk leaves when the
bucket holds its bytes, the bytes are payload bytes, headers are not counted) and its delivery
time, departure + RTT/2; the writer sends each chunk at its delivery time. The chunks in between
are the bandwidth-delay product in flight (not stop-and-wait). The queue per direction is bounded
in bytes (``buffer``, at least twice the one-way bandwidth-delay product): when it is full the
reader stops reading and TCP's flow control pushes back on the sender, like a router's queue.
The kernel here has ``tc tbf`` but no ``netem`` (no delay), hence user space.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import select
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

CHUNK = 256 << 10  # bytes per read: large enough that Python's per-chunk cost stays small
_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


@dataclass(frozen=True)
class LinkSpec:
    """A link: ``rate`` bytes per second each way (None: unshaped) and the round-trip time."""

    rate: float | None = None
    rtt: float = 0.0
    burst: int = 64 << 10  # token bucket depth, bytes

    @staticmethod
    def parse(text: str) -> LinkSpec:
        """``RATE,RTT`` as in ``1gbit,10ms``, ``100mbit,40ms``, ``500kbit,0``; ``none``: unshaped, no delay."""
        t = text.strip().lower()
        if t in ("none", "relay"):
            return LinkSpec()
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)(bit|bps|byte|b)?\s*,\s*(\d+(?:\.\d+)?)\s*(ms|s|us)?", t)
        if not m:
            raise ValueError(f"link {text!r}: expected RATE,RTT such as 1gbit,10ms or 100mbit,40ms, or none")
        rate = float(m[1]) * _UNITS[m[2]]
        rate = rate / 8 if (m[3] or "bit") in ("bit", "bps") else rate
        rtt = float(m[4]) * {"ms": 1e-3, "s": 1.0, "us": 1e-6}[m[5] or "ms"]
        if rate <= 0:
            raise ValueError(f"link {text!r}: the rate must be positive")
        return LinkSpec(rate, rtt)

    @property
    def buffer(self) -> int:
        """Bytes queued per direction: twice the one-way bandwidth-delay product, at least 4 MiB."""
        bdp = (self.rate or 1e9) * self.rtt / 2
        return max(4 << 20, int(2 * bdp))


class _Direction:
    """One direction of one connection: src -> (token bucket, delay) -> dst."""

    def __init__(self, src: socket.socket, dst: socket.socket, link: LinkSpec, done: threading.Event) -> None:
        self.src, self.dst, self.link, self.done = src, dst, link, done
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self.cond = threading.Condition()
        self.eof = False
        self.free_at = 0.0  # when the bucket's virtual serializer is free (token bucket as a clock)
        self.threads = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._write, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _stamp(self, n: int, now: float) -> float:
        """Delivery time of n bytes read at ``now``: leave when the bucket (depth ``burst``) holds them."""
        lk = self.link
        if lk.rate is None:
            return now + lk.rtt / 2
        self.free_at = max(self.free_at, now - lk.burst / lk.rate) + n / lk.rate
        return max(now, self.free_at) + lk.rtt / 2

    def _read(self) -> None:
        try:
            while not self.done.is_set():
                data = self.src.recv(CHUNK)
                if not data:
                    break
                when = self._stamp(len(data), time.monotonic())
                with self.cond:
                    while self.queued + len(data) > self.link.buffer and self.queued and not self.done.is_set():
                        self.cond.wait(0.5)
                    self.queue.append((when, data))
                    self.queued += len(data)
                    self.cond.notify_all()
        except OSError:
            self.done.set()
        finally:
            with self.cond:
                self.eof = True
                self.cond.notify_all()

    def _write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.eof and not self.done.is_set():
                        self.cond.wait(0.5)
                    if not self.queue:
                        break
                    when, data = self.queue[0]
                wait = when - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self.dst.sendall(data)
                with self.cond:
                    self.queue.popleft()
                    self.queued -= len(data)
                    self.cond.notify_all()
            if not self.done.is_set():
                self.dst.shutdown(socket.SHUT_WR)  # pass the end of the stream on, after the data
        except OSError:
            self.done.set()


class Relay:
    """Accepts on 127.0.0.1 (port 0: any free one) and relays each connection to ``target``."""

    def __init__(self, target: tuple[str, int], link: LinkSpec, port: int = 0) -> None:
        if target[0] not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the relay forwards to loopback addresses only")
        self.target, self.link = target, link
        self.sock = socket.create_server(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns: list[tuple[socket.socket, socket.socket, threading.Event, list[_Direction]]] = []
        self._lock = threading.Lock()
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            r, _, _ = select.select([self.sock], [], [], 0.2)
            if not r:
                continue
            try:
                a, _ = self.sock.accept()
                b = socket.create_connection(self.target, timeout=10)
            except OSError:
                continue
            b.settimeout(None)
            for s in (a, b):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            done = threading.Event()
            dirs = [_Direction(a, b, self.link, done), _Direction(b, a, self.link, done)]
            with self._lock:
                self._conns.append((a, b, done, dirs))

    def close(self) -> None:
        """Stop accepting, close every connection, join the threads (each wait is bounded)."""
        self._stop.set()
        self._accepter.join(timeout=5)
        self.sock.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for a, b, done, dirs in conns:
            done.set()
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            for d in dirs:
                with d.cond:
                    d.cond.notify_all()
                for t in d.threads:
                    t.join(timeout=5)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="HOST:PORT on loopback")
    ap.add_argument("--link", default="none", help="RATE,RTT (e.g. 1gbit,10ms) or none")
    ap.add_argument("--max-seconds", type=float, default=6 * 3600, help="stop after this long in any case")
    args = ap.parse_args()
    host, _, port = args.target.rpartition(":")
    try:
        relay = Relay((host, int(port)), LinkSpec.parse(args.link))
    except ValueError as e:
        sys.exit(f"linkrelay: {e}")
    print(f"listening {relay.address}", flush=True)
    t_end = time.monotonic() + args.max_seconds
    try:  # runs until the parent closes our stdin (or dies), or the time is up
        while time.monotonic() < t_end:
            r, _, _ = select.select([sys.stdin], [], [], 1.0)
            if r and not sys.stdin.buffer.read1(4096):
                break
    finally:
        relay.close()


if __name__ == "__main__":
    main()
