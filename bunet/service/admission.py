"""Admission of jobs: a memory budget, a running limit counted per client, a bounded wait queue.

The server plans each job's memory before any work (the protocol knows the bound; this module
only adds numbers up). A job runs when its client already runs one (a client's parallel streams
are one job against the running limit) or fewer than ``max_running`` clients run, and when its
planned bytes fit what the budget has left. Otherwise it waits, first come first served, in a
queue of at most ``max_queue`` jobs, and is told its place; a full queue is refused at once with a
retry hint. A job that could never fit is refused at once, without a hint.

Nothing here knows about gRPC or U-Nets.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..protocol.channel import ChannelClosed, Refused

GIB = 1 << 30
RETRY_AFTER_S = 5.0  # hint to a refused client: a queue place frees at about this pace or slower


def default_budget() -> int:
    """Three quarters of the host's physical memory (18 GiB on a 24 GiB host)."""
    import os

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * GIB
    return int(total * 3 // 4)


def parse_bytes(text: str) -> int:
    """'16G', '512M', '1.5GiB', '2000000000' -> bytes (binary units)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if t and t[-1] in scale:
            return int(float(t[:-1]) * scale[t[-1]])
        return int(t)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 16G or 512M)") from None


@dataclass
class _Waiter:
    client: str
    cost: int
    seq: int


class Admission:
    """Thread-safe; one per server."""

    def __init__(
        self,
        budget: int,
        reserved: int,
        *,
        max_running: int = 2,
        max_queue: int = 16,
        max_streams_per_client: int = 4,
        max_wait_s: float = 1800.0,
    ) -> None:
        if reserved >= budget:
            raise ValueError(
                f"the memory budget ({budget / GIB:.1f} GiB) does not cover the model's own state "
                f"({reserved / GIB:.1f} GiB): raise --memory-budget"
            )
        self.budget = budget
        self.reserved = reserved  # the model, its prepared filters, the shared work arrays
        self.max_running = max_running
        self.max_queue = max_queue
        self.max_streams_per_client = max_streams_per_client
        self.max_wait_s = max_wait_s
        self._cv = threading.Condition()
        self._running: dict[str, list[int]] = {}  # client -> [streams, bytes]
        self._used = 0
        self._queue: list[_Waiter] = []
        self._seq = itertools.count()

    # ---- what the server reports -----------------------------------------------------------------
    @property
    def job_budget(self) -> int:
        """The most one job may plan: what the model's own state leaves of the budget."""
        return self.budget - self.reserved

    def snapshot(self) -> dict[str, int]:
        with self._cv:
            return {
                "running_clients": len(self._running),
                "running_streams": sum(s for s, _ in self._running.values()),
                "queued": len(self._queue),
                "planned_bytes": self.reserved + self._used,
                "budget_bytes": self.budget,
            }

    # ---- the one entry point ---------------------------------------------------------------------
    @contextmanager
    def admit(
        self,
        client: str,
        cost: int,
        notify: Callable[[int], None] | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> Iterator[None]:
        """Hold ``cost`` bytes for ``client`` while the block runs; wait for them in the queue.

        ``notify(place)`` is called with the job's place in the queue (1: next) whenever it changes;
        ``alive()`` false ends the wait (the client went away)."""
        if cost > self.job_budget:
            raise Refused(
                f"the job needs {cost / GIB:.2f} GiB of server memory, more than the "
                f"{self.job_budget / GIB:.2f} GiB the server's budget allows one job: "
                "send fewer slices per job"
            )
        with self._cv:
            w = _Waiter(client, cost, next(self._seq))
            if not (self._can_run(w) and self._first_in_line(w)):
                if len(self._queue) >= self.max_queue:
                    raise Refused(
                        f"server busy: {len(self._queue)} jobs are waiting already",
                        retry_after_s=RETRY_AFTER_S * (1 + len(self._queue) / max(1, self.max_running)),
                    )
                self._wait(w, notify, alive)
            slot = self._running.setdefault(client, [0, 0])
            slot[0] += 1
            slot[1] += cost
            self._used += cost
        try:
            yield
        finally:
            with self._cv:
                slot = self._running[client]
                slot[0] -= 1
                slot[1] -= cost
                if slot[0] == 0:
                    del self._running[client]
                self._used -= cost
                self._cv.notify_all()

    # ---- internals (called with the lock held) ---------------------------------------------------
    def _can_run(self, w: _Waiter) -> bool:
        slot = self._running.get(w.client)
        if slot is not None:
            if slot[0] >= self.max_streams_per_client:
                return False
        elif len(self._running) >= self.max_running:
            return False
        return self._used + w.cost <= self.job_budget

    def _first_in_line(self, w: _Waiter) -> bool:
        """First come first served; a stream of a running client joins its job ahead of the queue."""
        if w.client in self._running:
            return True
        ahead = [q for q in self._queue if q.seq < w.seq and q.client not in self._running]
        return not ahead

    def _place(self, w: _Waiter) -> int:
        return 1 + sum(1 for q in self._queue if q.seq < w.seq)

    def _wait(self, w: _Waiter, notify: Callable[[int], None] | None, alive: Callable[[], bool] | None) -> None:
        self._queue.append(w)
        end = time.monotonic() + self.max_wait_s
        told = 0
        try:
            while not (self._can_run(w) and self._first_in_line(w)):
                place = self._place(w)
                if notify is not None and place != told:
                    told = place
                    notify(place)
                if alive is not None and not alive():
                    raise ChannelClosed("the client left the queue")
                left = end - time.monotonic()
                if left <= 0:
                    raise Refused(f"no room for the job within {self.max_wait_s:g} s", retry_after_s=RETRY_AFTER_S)
                self._cv.wait(timeout=min(1.0, left))
        finally:
            self._queue.remove(w)
            self._cv.notify_all()
