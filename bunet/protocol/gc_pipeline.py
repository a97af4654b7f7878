"""The garbled-circuit pipeline: one op over many instances, in chunks, over a :class:`Channel`.

The session runs every non-linear step through these two loops, and ``bench/gc.py`` measures them.
Instances go in chunks of ``GC_CHUNK`` with ``window`` requests in flight. The server claims
requests in order and garbles them on a thread pool; the client makes requests (OT extension) on its
pool while the same pool evaluates the responses, so OT, garbling, transfer and evaluation overlap
on both sides (the C calls release the GIL).

Messages of one op carry its tag and their part, ``<tag>:<part>`` (:data:`PARTS`): per chunk the
server's pre-message (``pre``: reverse OTs for the look-ups, ops with a carry look-up only), the
client's request (``req``: OT extension and look-up tables), the server's response (``resp``:
garbled gates and output conversion), and at the end the client's post-messages (``post``,
sign-mode ops). A chained op (``gc.MaxTrunc.chain``) first runs its link passes, each a loop over the
chunks of the server's link pre-message (``lpre``: reverse OTs on a chunk of share bits and on the
carry share) and the client's link request (``lreq``: the link tables), no response; a pass ends
before the next starts (each chunk's next pass needs its opened carry). Counting bytes by tag gives
each part's share (``bench/gc.py``).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np

from .. import gc
from .channel import Channel, ProtocolError, from_client

GC_CHUNK = 1 << 14  # instances per garbled-circuit message (bounds memory, keeps the C working set in cache)
# Windows of pre-messages the server keeps on the wire ahead of its answers: with two, the client
# holds the next request's pre-message while it waits for an answer and makes that request on its
# pool meanwhile. Part of the message order, like the window.
PRE_AHEAD = 2
HELLO_BYTES = 1 << 20  # the first hello is 54 bytes; the third's exact size follows from it
PARTS = ("pre", "req", "resp", "post", "lpre", "lreq")


def open_garbler(chan: Channel, ot: str = gc.DEFAULT_OT) -> gc.Garbler:
    """The server's half of the session setup (base OTs, both OT extensions' keys), with the
    correlated-OT backend the job agreed on."""
    garbler = gc.Garbler(ot=ot)
    chan.send("gc_hello", garbler.hello(chan.recv("gc_hello", limit=HELLO_BYTES)))
    chan.send("gc_hello", garbler.finish_hello(chan.recv("gc_hello", limit=garbler.finish_hello_limit())))
    return garbler


def open_evaluator(chan: Channel, ot_k: int = 4, ot: str = gc.DEFAULT_OT) -> gc.Evaluator:
    """The client's half of the session setup."""
    ev = gc.Evaluator(ot_k=ot_k, ot=ot)
    chan.send("gc_hello", ev.hello())
    chan.send("gc_hello", ev.finish_hello(chan.recv("gc_hello")))
    ev.finish_setup(chan.recv("gc_hello"))
    return ev


def chunks(n: int, size: int | None = None) -> list[slice]:
    """Instances per message: ``size``, by default GC_CHUNK."""
    size = size or GC_CHUNK
    return [slice(i, min(i + size, n)) for i in range(0, n, size)] or [slice(0, 0)]


def garble(
    chan: Channel,
    garbler: Any,
    pool: Executor,
    op: Any,
    tag: str,
    rows: np.ndarray,
    window: int,
    chunk: int | None = None,
) -> list[Any]:
    """The server's loop: receive and claim requests in order, garble on the pool, answer in order;
    returns the server's output shares per chunk.

    At most ``window`` (the client's) chunks are in flight, which is all the client sends before
    it needs an answer, so the loop never waits for a request that cannot come. Ops with a carry
    look-up need a pre-message per chunk before its request: the first two windows' go out at
    once, then chunk j + 2 window's right after the answer to chunk j, so the client always holds
    the pre-message of the chunk after its window and makes that request while it waits
    (``PRE_AHEAD``); they are made on the pool one window further ahead.
    """
    _garble_links(chan, garbler, pool, op, tag, rows, window, chunk)
    t_pre, t_req, t_resp, t_post = (f"{tag}:{p}" for p in PARTS[:4])
    inflight: deque[Future] = deque()
    pres: deque[Future] = deque()  # pre-messages being made on the pool, in order
    outs: list[Any] = []
    parts = chunks(len(rows), chunk)
    pre_parts = iter(parts if op.lut_bits else [])

    def make_pre() -> None:  # claims the next chunk's reverse OT rows in order; made on the pool
        sl = next(pre_parts, None)
        if sl is not None:
            pres.append(pool.submit(garbler.prepare_pre(op, rows[sl])))

    def send_pre() -> None:
        if pres:
            chan.send(t_pre, pres.popleft().result())

    def answer() -> None:
        try:
            resp, out_s = inflight.popleft().result()
        except gc.OTCheckFailed as e:  # a cheating client: refused before its chunk was garbled
            raise ProtocolError(f"GC request refused: {e}") from None
        chan.send(t_resp, resp)
        outs.append(out_s)
        send_pre()
        make_pre()

    try:
        for _ in range((PRE_AHEAD + 1) * window):  # sent: PRE_AHEAD windows now, the rest after answers
            make_pre()
        for _ in range(PRE_AHEAD * window):
            send_pre()
        for sl in parts:
            req = chan.recv(t_req, limit=garbler.request_limit(op, sl.stop - sl.start))
            with from_client("GC request"):
                job = garbler.claim(op, req, rows[sl])
            inflight.append(pool.submit(job))
            while inflight and (len(inflight) >= window or inflight[0].done()):
                answer()
        while inflight:
            answer()
    finally:
        for f in (*inflight, *pres):  # a failed job: let the pool finish what it started, drop the rest
            f.cancel()
    if op.has_post:  # sign mode: the client's post-messages complete the shares, in order
        with from_client("GC post-message"):
            outs = [garbler.post(op, chan.recv(t_post, limit=op.post_size(len(o))), o) for o in outs]
    return outs


def evaluate(
    chan: Channel,
    ev: Any,
    pool: Executor,
    op: Any,
    tag: str,
    rows: np.ndarray,
    window: int,
    chunk: int | None = None,
) -> list[Any]:
    """The client's loop: up to ``window`` requests in flight; responses evaluated on the pool;
    returns its results per chunk, in order.

    Requests are claimed here, in order (each fixes its OT range), and made on the pool: the
    ``window`` before an awaited answer are sent, the next one is being made; a new one starts
    only when at most ``window`` responses are still being evaluated, which bounds memory. With a
    carry look-up, each request answers the server's pre-message for its chunk (see :func:`garble`;
    they arrive ``PRE_AHEAD`` windows ahead).
    """
    _evaluate_links(chan, ev, pool, op, tag, rows, window, chunk)
    t_pre, t_req, t_resp, t_post = (f"{tag}:{p}" for p in PARTS[:4])
    parts = chunks(len(rows), chunk)
    n = len(parts)
    futs: list[Future] = []
    reqs: deque[Future] = deque()  # requests being made on the pool, sent in order
    pres: deque[bytes] = deque()  # the server's pre-messages (look-up ops), PRE_AHEAD windows ahead
    sent = made = 0

    def send_ready(upto: int) -> None:  # the finished requests in order, and all through chunk upto
        nonlocal sent
        while reqs and (sent <= upto or reqs[0].done()):
            chan.send(t_req, reqs.popleft().result())
            sent += 1

    if op.lut_bits:
        pres.extend(chan.recv(t_pre) for _ in range(min(n, PRE_AHEAD * window)))
    for i in range(n):
        # requests through chunk i + window - 1 must be out before the answer to chunk i can come;
        # the one after them is made meanwhile (its pre-message is here), so two overlap on the pool
        while made < n and made <= i + window:
            if made - window - 1 >= 0:
                futs[made - window - 1].result()  # evaluation keeps up before more is asked for
            pre = pres.popleft() if op.lut_bits else None
            reqs.append(pool.submit(ev.prepare(op, rows[parts[made]], pre)))  # OT ranges in order
            made += 1
            send_ready(-1)
        send_ready(i + window - 1)
        futs.append(pool.submit(ev.finish, op, chan.recv(t_resp)))
        if op.lut_bits and i + PRE_AHEAD * window < n:
            pres.append(chan.recv(t_pre))  # the server sends chunk i + PRE_AHEAD * window's after answer i
    outs = [f.result() for f in futs]
    for post in ev.take_posts():  # sign mode: completes the server's shares (in request order)
        chan.send(t_post, post)
    return outs


def _garble_links(
    chan: Channel, garbler: Any, pool: Executor, op: Any, tag: str, rows: np.ndarray, window: int, chunk: int | None
) -> None:
    """The server's link passes of a chained op (none for other ops): per pass, the link pre-messages
    go out ``PRE_AHEAD * window`` chunks ahead of the client's link requests (made on the pool, one
    window further ahead), each request is opened on the pool; the pass ends when every chunk's is."""
    parts = chunks(len(rows), chunk)
    ahead = PRE_AHEAD * window
    for j in range(op.link_passes):
        pres: deque[Future] = deque()
        opens: list[Future] = []
        made = sent = 0
        try:
            for i, sl in enumerate(parts):
                while made < len(parts) and made <= i + ahead + window:  # claimed in order, made on the pool
                    pres.append(pool.submit(garbler.prepare_link_pre(op, rows[parts[made]], j)))
                    made += 1
                while sent < len(parts) and sent < i + ahead:
                    chan.send(f"{tag}:lpre", pres.popleft().result())
                    sent += 1
                lreq = chan.recv(f"{tag}:lreq", limit=garbler.link_request_limit(op, sl.stop - sl.start, j))
                with from_client("GC link request"):
                    job = garbler.claim_link(op, lreq)
                opens.append(pool.submit(job))
            for f in opens:
                with from_client("GC link request"):
                    f.result()
        finally:
            for f in (*pres, *opens):
                f.cancel()


def _evaluate_links(
    chan: Channel, ev: Any, pool: Executor, op: Any, tag: str, rows: np.ndarray, window: int, chunk: int | None
) -> None:
    """The client's link passes of a chained op: each link pre-message answered by a link request
    made on the pool, sent in order; at most ``window`` being made."""
    parts = chunks(len(rows), chunk)
    for j in range(op.link_passes):
        reqs: deque[Future] = deque()
        for sl in parts:
            reqs.append(pool.submit(ev.prepare_link(op, rows[sl], chan.recv(f"{tag}:lpre"), j)))
            while reqs and (len(reqs) > window or reqs[0].done()):
                chan.send(f"{tag}:lreq", reqs.popleft().result())
        while reqs:
            chan.send(f"{tag}:lreq", reqs.popleft().result())
