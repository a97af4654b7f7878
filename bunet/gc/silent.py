"""Silent correlated OT (Ferret: primal LPN with regular noise, half-tree GGM) as a stream of COTs for the engine.

One party is the COT sender (holds Delta and q_j), the other the receiver (choice c_j, t_j = q_j ^ c_j Delta).
Iterations run in ``native/silent_ot.c``: the first (``SETUP``) from base COTs made by SoftSpoken at
session set-up, every later one (``MAIN``) from the first ``base`` outputs of the one before; the rest of
each iteration is handed out in order, as rows [lo, hi) of one stream per direction.

The receiver's choice bits need no message (they follow from its own base choice bits), so it can
derandomise as soon as it claims rows; its t rows need the sender's iteration message, which travels
with the *first* protocol message that consumes rows of that iteration (``firsts``): both parties know
from the claimed range which iterations' messages it carries (``ext_len``).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..native_errors import check
from ._native import ffi, lib

LPN_D = 10  # nonzeros per row of the LPN code (SOT_D in native/silent_ot.c)
WAIT_S = 120.0  # how long a receiver waits for an iteration's message that an earlier message carries


@dataclass(frozen=True)
class LpnParams:
    """One LPN parameter set: n = t * 2^h outputs from k = 2^logk + t*h base COTs, t noise positions."""

    name: str
    t: int
    logk: int
    h: int
    test_only: bool = False

    @property
    def n(self) -> int:
        return self.t << self.h

    @property
    def k(self) -> int:
        return 1 << self.logk

    @property
    def base(self) -> int:
        """Base COTs one iteration consumes (LPN secret, then h per tree)."""
        return self.k + self.t * self.h

    @property
    def msg_len(self) -> int:
        return int(lib.bn_sot_msg_len(self.t, self.h))

    def check(self, allow_test: bool = False) -> LpnParams:
        """Refuse a parameter set that is not in the native vetted table (or is test-only, unless allowed)."""
        if lib.bn_sot_check(self.t, self.logk, self.h, int(allow_test)) != 0:
            raise ValueError(
                f"silent OT: LPN parameters {self.name} (t={self.t}, k=2^{self.logk}, "
                f"h={self.h}) are not a vetted 128-bit set"
            )
        return self


def vetted() -> dict[str, LpnParams]:
    """The native table, by name (ferret_b10 .. ferret_b13 from emp-ot's tuning.h; test_* are not secure)."""
    out = {}
    i = 0
    t, lk, h, test = ffi.new("uint32_t *"), ffi.new("uint32_t *"), ffi.new("uint32_t *"), ffi.new("int *")
    while lib.bn_sot_param(i, t, lk, h, test) == 0:
        name = f"test_{t[0]}_{h[0]}" if test[0] else f"ferret_b{h[0]}"
        out[name] = LpnParams(name, t[0], lk[0], h[0], bool(test[0]))
        i += 1
    return out


_TABLE = vetted()
SETUP = _TABLE["ferret_b10"].check()  # from ~74k SoftSpoken COTs
# b10 for every iteration too: 0.80 M COTs per iteration, 14 MB of rows per party and direction, its
# 1 MB LPN secret in a core's L2 cache and 16-bit LPN positions. b11 sends 0.09 bytes of iteration
# message per COT instead of 0.17 (0.1 % of a U-Net's bytes) for about a fifth more CPU per COT
# (docs/protocol.md, bench/ot.py).
MAIN = _TABLE["ferret_b10"].check()


def party_bytes(main: LpnParams = MAIN) -> int:
    """An upper bound on what one party's two streams (a sender and a receiver) hold: per stream up
    to three iterations' rows (the one being taken, the next made ahead, and the one before until
    the next was made from it), 16 bytes each, and the receiver's choice bytes; plus the LPN
    positions (shared by every stream of the process, counted here once per party)."""
    return 3 * main.n * (16 + 16 + 1) + main.n * 2 * LPN_D


@functools.lru_cache(maxsize=4)
def positions(logk: int, n: int) -> np.ndarray | None:
    """The public LPN code's positions of rows 0 .. n - 1 (16-bit, LPN_D a row), made once per process and
    parameter set and read by every iteration of both parties; None for k > 2^16 (made on the fly)."""
    if logk > 16:
        return None
    pos = np.empty(n * LPN_D, dtype=np.uint16)
    check(lib, lib.bn_sot_positions(logk, n, ffi.from_buffer("uint16_t[]", pos)), "silent OT positions")
    pos.flags.writeable = False
    return pos


def _pos_arg(p: LpnParams) -> object:
    pos = positions(p.logk, p.n)
    return ffi.NULL if pos is None else ffi.cast("const uint16_t *", pos.ctypes.data)


class Schedule:
    """Where iteration j's usable outputs sit in the stream: iteration j's first ``base`` outputs of the
    next parameter set are reserved as its base COTs, the rest are stream rows."""

    def __init__(self, setup: LpnParams, main: LpnParams, allow_test: bool = False) -> None:
        self.setup, self.main = setup.check(allow_test), main.check(allow_test)
        self.allow_test = allow_test
        if setup.n < main.base + 1 or main.n < main.base + 1:
            raise ValueError("silent OT: an iteration must produce more than the next one's base COTs")

    def params(self, j: int) -> LpnParams:
        return self.setup if j == 0 else self.main

    def usable(self, j: int) -> int:
        return self.params(j).n - self.main.base

    def start(self, j: int) -> int:
        return 0 if j == 0 else self.usable(0) + (j - 1) * self.usable(1)

    def iteration(self, row: int) -> int:
        u0 = self.usable(0)
        return 0 if row < u0 else 1 + (row - u0) // self.usable(1)

    def firsts(self, lo: int, hi: int) -> range:
        """The iterations whose first stream row lies in [lo, hi): their messages go with rows [lo, hi)."""
        if hi <= lo:
            return range(0)
        a = self.iteration(lo)
        if self.start(a) < lo:
            a += 1
        b = self.iteration(hi - 1)
        return range(a, b + 1)

    def ext_len(self, lo: int, hi: int) -> int:
        return sum(self.params(j).msg_len for j in self.firsts(lo, hi))


class _Stream:
    """Iterations by number, each freed once all its stream rows were taken and the next one was made.

    Iterations are made outside the data lock (one at a time), so rows of made iterations can be taken
    meanwhile; the next one is started on a background thread once half of the newest is taken (the
    sender) or as soon as its message is in (the receiver), so consumers rarely wait for one."""

    def __init__(self, sched: Schedule, gk: object) -> None:
        self.sched = sched
        self._gk = gk
        self._lock = threading.Condition()  # the stores and counters
        self._make = threading.Lock()  # one iteration made at a time
        self._taken: dict[int, int] = {}
        self._bg: threading.Thread | None = None
        self._free: list[np.ndarray] = []  # rows of dropped iterations, reused (no fresh pages to fault in)

    def _rows_buffer(self, n: int) -> np.ndarray:
        """An (n, 16) array for an iteration's rows: a dropped iteration's if one fits."""
        with self._lock:
            for i, a in enumerate(self._free):
                if a.shape[0] == n:
                    return self._free.pop(i)
        return np.empty((n, 16), dtype=np.uint8)

    def _iteration_args(self, p: LpnParams) -> tuple:
        """The leading arguments of bn_sot_send / bn_sot_recv: the parameters of an iteration and the
        stream's GGM key."""
        return (p.t, p.logk, p.h, int(self.sched.allow_test), self._gk)

    def _gather(
        self, lo: int, hi: int, have: dict[int, np.ndarray], width: int, copy: Callable | None = None
    ) -> np.ndarray:
        """Rows [lo, hi) copied out of the iterations' outputs (``width`` bytes per row), by
        ``copy(dest, src, k)`` (k: dest's first row in [0, hi - lo)) if given."""
        out = np.empty((hi - lo, width), dtype=np.uint8)
        row = lo
        while row < hi:
            j = self.sched.iteration(row)
            off = self.sched.main.base + row - self.sched.start(j)
            take = min(hi - row, self.sched.start(j) + self.sched.usable(j) - row)
            dest, src = out[row - lo : row - lo + take], have[j][off : off + take]
            if copy is None:
                dest[...] = src
            else:
                copy(dest, src, row - lo)
            self._taken[j] = self._taken.get(j, 0) + take
            row += take
        return out

    def _drop_done(self, stores: list[dict[int, np.ndarray]], made: int) -> None:
        for j in [j for j, n in self._taken.items() if n == self.sched.usable(j) and j + 1 < made]:
            for s in stores:
                a = s.pop(j, None)
                if a is not None and a.ndim == 2 and len(self._free) < 2:
                    self._free.append(a)
            del self._taken[j]

    def _background(self, fn: object, j: int) -> None:
        """Make iteration j on a daemon thread (errors are left to the consumer that needs it)."""
        if self._bg is not None and self._bg.is_alive():
            return

        def run() -> None:
            with contextlib.suppress(Exception):  # the consumer's own call raises it
                fn(j)

        self._bg = threading.Thread(target=run, name="silent-ot", daemon=True)
        self._bg.start()


class Sender(_Stream):
    """The COT sender: q rows; every iteration made here (locally) and its message handed out once."""

    def __init__(self, sched: Schedule, delta: object, base_q: np.ndarray, gk: object) -> None:
        super().__init__(sched, gk)
        self._delta = delta
        self._q: dict[int, np.ndarray] = {-1: np.ascontiguousarray(base_q[: sched.setup.base])}
        self._msg: dict[int, bytes] = {}
        self._made = 0

    def _make_through(self, j: int) -> None:
        while True:
            with self._lock:
                if self._made > j:  # without waiting for one being made ahead
                    return
            with self._make:
                with self._lock:
                    if self._made > j:
                        return
                    i = self._made
                    p = self.sched.params(i)
                    base = np.ascontiguousarray(self._q[i - 1][: p.base])
                out = self._rows_buffer(p.n)
                msg = bytearray(p.msg_len)
                rc = lib.bn_sot_send(
                    *self._iteration_args(p),
                    self._delta,
                    ffi.from_buffer("uint8_t[]", base),
                    ffi.from_buffer("uint8_t[]", msg),
                    ffi.from_buffer("uint8_t[]", out),
                    _pos_arg(p),
                )
                check(lib, rc, "silent OT iteration")
                with self._lock:
                    self._q[i] = out
                    self._q.pop(-1, None)
                    self._msg[i] = bytes(msg)
                    self._made += 1

    def take(self, lo: int, hi: int, d: object | None = None) -> tuple[bytes, np.ndarray]:
        """(messages of the iterations starting in [lo, hi), q rows [lo, hi) as (hi - lo, 16) bytes); with
        ``d``, the receiver's packed corrections of these rows, q ^ d Delta instead (in the same pass)."""
        j = self.sched.iteration(max(lo, hi - 1))
        self._make_through(j)
        copy = None
        if d is not None:
            dp = ffi.from_buffer("uint8_t[]", d)

            def copy(dest: np.ndarray, src: np.ndarray, k: int) -> None:
                lib.bn_sot_derand(
                    ffi.from_buffer("uint8_t[]", src), len(src), dp, k, self._delta, ffi.from_buffer("uint8_t[]", dest)
                )

        with self._lock:
            msgs = b"".join(self._msg.pop(i) for i in self.sched.firsts(lo, hi))
            rows = self._gather(lo, hi, self._q, 16, copy)
            self._drop_done([self._q], self._made)
            ahead = self._made == j + 1 and 2 * (hi - self.sched.start(j)) >= self.sched.usable(j)
        if ahead:
            self._background(self._make_through, j + 1)
        return msgs, rows


class Receiver(_Stream):
    """The COT receiver: choice bits at claim time (no message needed), t rows once the messages are in."""

    def __init__(self, sched: Schedule, base_c: np.ndarray, base_t: np.ndarray, gk: object) -> None:
        super().__init__(sched, gk)
        m = sched.setup.base
        self._c: dict[int, np.ndarray] = {-1: np.ascontiguousarray(base_c[:m], dtype=np.uint8)}
        self._t: dict[int, np.ndarray] = {-1: np.ascontiguousarray(base_t[:m])}
        self._cbase: dict[int, np.ndarray] = {}  # iteration i's base choice bits, until its t rows are made
        self._msg: dict[int, bytes] = {}
        self._cmade = 0
        self._tmade = 0
        self._ctaken: dict[int, int] = {}

    def _choices_through(self, j: int) -> None:
        """(Under the data lock.) Local and cheap: the choice bits of iterations 0 .. j."""
        while self._cmade <= j:
            i = self._cmade
            p = self.sched.params(i)
            out = np.empty(p.n, dtype=np.uint8)
            base = self._cbase[i] = np.ascontiguousarray(self._c[i - 1][: p.base])
            self._c.pop(-1, None)
            if (
                lib.bn_sot_choice(
                    p.t,
                    p.logk,
                    p.h,
                    int(self.sched.allow_test),
                    ffi.from_buffer("uint8_t[]", base),
                    ffi.from_buffer("uint8_t[]", out),
                    _pos_arg(p),
                )
                != 0
            ):
                raise ValueError("silent OT: parameters refused")
            self._c[i] = out
            self._cmade += 1

    def choices(self, lo: int, hi: int) -> np.ndarray:
        """The random choice bits (0/1 bytes) of rows [lo, hi); rows are claimed once, in order."""
        with self._lock:
            self._choices_through(self.sched.iteration(max(lo, hi - 1)))
            out = np.empty(hi - lo, dtype=np.uint8)
            row = lo
            while row < hi:
                j = self.sched.iteration(row)
                off = self.sched.main.base + row - self.sched.start(j)
                take = min(hi - row, self.sched.start(j) + self.sched.usable(j) - row)
                out[row - lo : row - lo + take] = self._c[j][off : off + take]
                self._ctaken[j] = self._ctaken.get(j, 0) + take
                row += take
            # an iteration's choice bits are kept until the next one's were made from its base
            for j in [j for j, n in self._ctaken.items() if n == self.sched.usable(j) and j + 1 < self._cmade]:
                self._c.pop(j, None)
                del self._ctaken[j]
        return out

    def deposit(self, lo: int, hi: int, blob: memoryview) -> None:
        """Keep the messages that come with rows [lo, hi) (exactly ``sched.ext_len(lo, hi)`` bytes) and
        start making their t rows."""
        off = 0
        new = self.sched.firsts(lo, hi)
        with self._lock:
            for j in new:
                n = self.sched.params(j).msg_len
                self._msg[j] = bytes(blob[off : off + n])
                off += n
            self._lock.notify_all()
        if off != len(blob):
            raise ValueError("silent OT: extension message of the wrong length")
        if len(new):
            self._background(self._rows_through, new[-1])

    def _rows_through(self, j: int) -> None:
        while True:
            with self._lock:
                if self._tmade > j:
                    return
                i = self._tmade
                if not self._lock.wait_for(lambda i=i: self._tmade > i or i in self._msg, timeout=WAIT_S):
                    raise ValueError("silent OT: an extension message never arrived")
            with self._make:
                with self._lock:
                    if self._tmade != i:  # made meanwhile by another thread
                        continue
                    p = self.sched.params(i)
                    self._choices_through(i)
                    cb, msg = self._cbase[i], self._msg[i]
                    tb = np.ascontiguousarray(self._t[i - 1][: p.base])
                out = self._rows_buffer(p.n)
                rc = lib.bn_sot_recv(
                    *self._iteration_args(p),
                    ffi.from_buffer("uint8_t[]", cb),
                    ffi.from_buffer("uint8_t[]", tb),
                    ffi.from_buffer("uint8_t[]", msg),
                    ffi.from_buffer("uint8_t[]", out),
                    _pos_arg(p),
                )
                check(lib, rc, "silent OT iteration")
                with self._lock:
                    self._t[i] = out
                    self._t.pop(-1, None)
                    del self._msg[i], self._cbase[i]
                    self._tmade += 1
                    self._lock.notify_all()

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """t rows [lo, hi) as (hi - lo, 16) bytes; waits for the messages that earlier rows carry."""
        self._rows_through(self.sched.iteration(max(lo, hi - 1)))
        with self._lock:
            out = self._gather(lo, hi, self._t, 16)
            self._drop_done([self._t], self._tmade)
        return out
