"""The duplex channel the 2PC session runs over: tagged byte messages, counted both ways.

The protocol only sees this interface; the in-memory pair below serves tests and the
embedded mode, and ``bunet.service`` adapts a gRPC stream to it (chunking large messages).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field


class ProtocolError(RuntimeError):
    """The peer sent something the protocol did not expect, or went away."""


class ChannelClosed(ProtocolError):
    pass


@dataclass
class Traffic:
    """Bytes and messages each way, and counts per phase (tag prefix before ':').

    ``turns``: how often this end received a message after sending one, in its own order of
    calls: the protocol's sequential message steps as seen from this end (each turn waits for the
    peer at most once; pipelined messages that are already there when asked for count too, so it
    bounds the round trips a link's latency adds from above).
    """

    sent: int = 0
    received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    by_phase: dict[str, list[int]] = field(default_factory=dict)  # phase -> [sent, received]
    turns: int = 0
    _last_sent: bool = False

    def count(self, tag: str, n: int, sent: bool) -> None:
        phase = tag.split(":", 1)[0]
        slot = self.by_phase.setdefault(phase, [0, 0])
        if sent:
            self.sent += n
            self.messages_sent += 1
            slot[0] += n
            self._last_sent = True
        else:
            self.turns += self._last_sent
            self._last_sent = False
            self.received += n
            self.messages_received += 1
            slot[1] += n


class Channel:
    """Base class: subclasses implement ``_send`` and ``_recv``; this one checks tags and counts."""

    def __init__(self) -> None:
        self.traffic = Traffic()
        self.timeout: float | None = None
        # largest message to accept (None: any). Transports that reassemble messages from frames
        # refuse to buffer past it, so a peer cannot exhaust memory with an endless message.
        self.max_message: int | None = None

    def send(self, tag: str, payload: bytes | bytearray | memoryview) -> None:
        self._send(tag, payload)
        self.traffic.count(tag, len(payload), True)

    def recv(self, tag: str) -> bytes | memoryview:
        """The next message, which must carry ``tag`` (protocol steps run in lock step); large
        messages may come as a read-only view of the received data."""
        got, payload = self._recv()
        if got != tag:
            raise ProtocolError(f"expected message {tag!r}, peer sent {got!r}")
        self.traffic.count(tag, len(payload), False)
        return payload

    def close(self) -> None:  # pragma: no cover - trivial default
        pass

    def _send(self, tag: str, payload: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def _recv(self) -> tuple[str, bytes | memoryview]:
        raise NotImplementedError


_CLOSE = ("\x00close", b"")


class QueueChannel(Channel):
    """One end of an in-memory pair."""

    def __init__(self, inbox: queue.Queue, outbox: queue.Queue) -> None:
        super().__init__()
        self._in, self._out = inbox, outbox
        self._closed = threading.Event()

    def _send(self, tag: str, payload: bytes | bytearray | memoryview) -> None:
        if self._closed.is_set():
            raise ChannelClosed("channel closed")
        self._out.put((tag, bytes(payload)))

    def _recv(self) -> tuple[str, bytes]:
        try:
            item = self._in.get(timeout=self.timeout)
        except queue.Empty:
            raise ProtocolError("peer idle for too long") from None
        if item == _CLOSE:
            raise ChannelClosed("peer closed the channel")
        return item

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._out.put(_CLOSE)


def pipe() -> tuple[QueueChannel, QueueChannel]:
    """Two connected in-memory channel ends."""
    a: queue.Queue = queue.Queue()
    b: queue.Queue = queue.Queue()
    return QueueChannel(a, b), QueueChannel(b, a)
