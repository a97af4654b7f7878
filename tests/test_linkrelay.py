"""bench/linkrelay.py, the shaping relay of ``bench/e2e.py --link``: rate, delay, shutdown (loopback)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from linkrelay import LinkSpec, Relay  # noqa: E402


class _Sink:
    """A loopback server that echoes short messages and counts the bytes of long ones."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(20)
            while data := conn.recv(1 << 16):
                conn.sendall(data[:1] if len(data) > 1 else data)  # one byte back per read: an ack

    def close(self) -> None:
        self.sock.close()


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def test_parse() -> None:
    assert LinkSpec.parse("1gbit,10ms") == LinkSpec(125e6, 0.01)
    assert LinkSpec.parse("100mbit,40ms") == LinkSpec(12.5e6, 0.04)
    assert LinkSpec.parse("none") == LinkSpec()
    with pytest.raises(ValueError, match="RATE,RTT"):
        LinkSpec.parse("fast")
    with pytest.raises(ValueError, match="positive"):
        LinkSpec.parse("0mbit,1ms")


def test_delay_is_applied() -> None:
    sink = _Sink()
    with Relay(("127.0.0.1", sink.port), LinkSpec(None, 0.08)) as relay, _connect(relay.port) as s:
        rtts = []
        for _ in range(3):
            t0 = time.perf_counter()
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            rtts.append(time.perf_counter() - t0)
    sink.close()
    assert min(rtts) >= 0.075 and max(rtts) < 0.5  # one-way 40 ms each way (slack: a loaded machine)


@pytest.mark.parametrize("rtt", [0.0, 0.05])
def test_rate_gives_the_expected_time(rtt: float) -> None:
    """4 MB at 40 Mbit/s take 0.8 s (+ one-way delay for the last byte, + the ack's way back)."""
    size, rate = 4 << 20, 5e6
    sink = _Sink()
    with Relay(("127.0.0.1", sink.port), LinkSpec(rate, rtt, burst=16 << 10)) as relay, _connect(relay.port) as s:
        t0 = time.perf_counter()
        s.sendall(bytes(size))
        s.shutdown(socket.SHUT_WR)
        while s.recv(1 << 16):  # acks until the sink closes: it has read everything
            pass
        took = time.perf_counter() - t0
    sink.close()
    expect = size / rate + rtt
    assert expect * 0.9 <= took <= expect * 1.5 + 0.2, (took, expect)  # slack: a loaded machine


def test_unshaped_relay_passes_everything() -> None:
    sink = _Sink()
    with Relay(("127.0.0.1", sink.port), LinkSpec()) as relay, _connect(relay.port) as s:
        t0 = time.perf_counter()
        s.sendall(bytes(16 << 20))
        s.shutdown(socket.SHUT_WR)
        while s.recv(1 << 16):
            pass
        assert time.perf_counter() - t0 < 10
    sink.close()


def test_process_stops_when_its_parent_closes_stdin() -> None:
    sink = _Sink()
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "linkrelay.py"), "--target", f"127.0.0.1:{sink.port}", "--link", "100mbit,2ms"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening 127.0.0.1:")
        with _connect(int(line.split(":")[-1])) as s:
            s.sendall(b"y")
            assert s.recv(1) == b"y"
            proc.stdin.close()
            assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sink.close()


def test_refuses_a_bad_link_and_a_remote_target() -> None:
    r = subprocess.run(
        [sys.executable, str(BENCH / "linkrelay.py"), "--target", "127.0.0.1:1", "--link", "x"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode != 0 and "RATE,RTT" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(ValueError, match="loopback"):
        Relay(("10.0.0.1", 80), LinkSpec())


def test_traffic_counts_turns() -> None:
    """``rounds`` of bench/e2e.py: a receive after a send is one turn, in each end's own order."""
    from bunet.protocol.channel import pipe

    a, b = pipe()
    a.send("x", b"1")
    a.send("x", b"2")  # two sends, then their answers: one turn
    for _ in range(2):
        b.recv("x")
    b.send("y", b"3")
    b.send("y", b"4")
    assert a.recv("y") == b"3" and a.recv("y") == b"4"
    a.send("x", b"5")
    b.recv("x")
    b.send("y", b"6")
    a.recv("y")
    assert a.traffic.turns == 2 and b.traffic.turns == 1  # b received first: no turn for that
    assert a.traffic.sent == 3 and a.traffic.received == 3
