"""The duplex channel the 2PC session runs over: tagged byte messages, counted both ways.

The protocol only sees this interface; the in-memory pair below serves tests and the
embedded mode, and ``bunet.service`` adapts a gRPC stream to it (chunking large messages).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


class ProtocolError(RuntimeError):
    """The peer sent something the protocol did not expect, or went away."""


class ChannelClosed(ProtocolError):
    pass


class MalformedMessage(ProtocolError):
    """A message that does not parse, or does not fit the job (wrong size, values out of range)."""


@contextmanager
def from_client(what: str) -> Iterator[None]:
    """Parsing a peer's bytes: a ValueError there is a malformed message, not a bug of ours."""
    try:
        yield
    except ValueError as e:
        raise MalformedMessage(f"malformed {what}: {e}") from None


class DeadlineExceeded(ProtocolError):
    """The job ran past its deadline, or a message took longer than the idle timeout to arrive."""


class Refused(ProtocolError):
    """The job cannot run now or at all (server limits); ``retry_after_s`` is set when waiting helps."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


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
        # seconds a whole message may take to arrive (None: no limit): a trickle of bytes does not
        # extend it, only complete messages count as progress
        self.timeout: float | None = None
        # largest message to accept (None: any). Transports that reassemble messages from frames
        # refuse to buffer past it, so a peer cannot exhaust memory with an endless message.
        self.max_message: int | None = None
        self.deadline: float | None = None  # time.monotonic() after which the job is over
        self.on_notice: Callable[[str, str], None] | None = None  # transport notices (queue place)
        # seconds from the first to the last frame of the last message received, as they came in
        # (None: the transport cannot tell; 0: whole at once)
        self.arrival_s: float | None = None

    def send(self, tag: str, payload: bytes | bytearray | memoryview) -> None:
        self._check_deadline()
        self._send(tag, payload)
        self.traffic.count(tag, len(payload), True)

    def recv(self, tag: str, limit: int | None = None) -> bytes | memoryview:
        """The next message, which must carry ``tag`` (protocol steps run in lock step) and be at
        most ``limit`` bytes (and at most ``max_message``); large messages may come as a read-only
        view of the received data."""
        self._check_deadline()
        cap = self.max_message if limit is None else limit if self.max_message is None else min(limit, self.max_message)
        got, payload = self._recv(cap)
        if got != tag:
            raise ProtocolError(f"expected message {tag!r}, peer sent {got!r}")
        if cap is not None and len(payload) > cap:
            raise MalformedMessage(f"message {tag!r} is larger than this job allows ({cap} bytes)")
        self.traffic.count(tag, len(payload), False)
        return payload

    def ready(self, wait: float = 0.0) -> bool:
        """Whether the next message has arrived whole, so ``recv`` returns it without waiting; waits
        up to ``wait`` seconds for it. Transports that cannot tell say False (after no wait)."""
        return False

    def set_deadline(self, seconds: float) -> None:
        """End the job with :class:`DeadlineExceeded` once ``seconds`` from now have passed."""
        self.deadline = time.monotonic() + seconds

    def notify(self, kind: str, text: str) -> None:
        """Tell the peer's transport something outside the protocol (e.g. its place in a queue);
        transports without such a side channel ignore it."""

    def _wait_s(self) -> float | None:
        """How long the next receive may wait: the idle timeout, cut at the deadline."""
        left = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        if self.timeout is None:
            return left
        return self.timeout if left is None else min(self.timeout, left)

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded("the job ran past its deadline")

    def close(self) -> None:  # pragma: no cover - trivial default
        pass

    def _send(self, tag: str, payload: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def _recv(self, cap: int | None) -> tuple[str, bytes | memoryview]:
        """The next (tag, payload); transports that assemble messages stop past ``cap`` bytes."""
        raise NotImplementedError


_CLOSE = ("\x00close", b"")


class QueueChannel(Channel):
    """One end of an in-memory pair."""

    def __init__(self, inbox: queue.Queue, outbox: queue.Queue) -> None:
        super().__init__()
        self._in, self._out = inbox, outbox
        self.arrival_s = 0.0  # messages arrive whole
        self._closed = threading.Event()

    def _send(self, tag: str, payload: bytes | bytearray | memoryview) -> None:
        if self._closed.is_set():
            raise ChannelClosed("channel closed")
        self._out.put((tag, bytes(payload)))

    def _recv(self, cap: int | None) -> tuple[str, bytes]:
        try:
            item = self._in.get(timeout=self._wait_s())
        except queue.Empty:
            self._check_deadline()
            raise DeadlineExceeded("peer idle for too long") from None
        if item == _CLOSE:
            raise ChannelClosed("peer closed the channel")
        return item

    def ready(self, wait: float = 0.0) -> bool:
        with self._in.not_empty:  # messages are put whole
            if wait > 0:
                self._in.not_empty.wait_for(lambda: len(self._in.queue) > 0, timeout=wait)
            return len(self._in.queue) > 0

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._out.put(_CLOSE)


def pipe() -> tuple[QueueChannel, QueueChannel]:
    """Two connected in-memory channel ends."""
    a: queue.Queue = queue.Queue()
    b: queue.Queue = queue.Queue()
    return QueueChannel(a, b), QueueChannel(b, a)
