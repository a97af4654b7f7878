"""The 2PC session: a compiled plan executed layer by layer on additive shares.

Both halves walk the same plan (``bunet.model.plan``) in lock step over a :class:`Channel`:

* input: the client's share is its encoded slice, the server's share is zero;
* linear steps: HomConv (``bunet.he``): the client uploads its encrypted share, the server
  returns Enc(W*x_c) + W*x_s + b - r and keeps r;
* non-linear steps: the garbled-circuit engine (``bunet.gc``): ReLU/truncation/max-pool re-share
  their output; a ReLU feeding a max-pool and a skip connection is the ReLU of every value, then
  the 2x2 window max as ``y + ReLU(x - y)`` over pairs (two more rounds of sign-mode ReLUs, on
  differences of the ReLU outputs: ``_relu_pool``); instances go in chunks with ``GC_WINDOW``
  requests in flight. The server claims requests in order and garbles them on a thread pool; the
  client makes requests (OT extension) on its protocol thread while a pool evaluates the
  responses, so OT, garbling, transfer and evaluation overlap on both sides (the C calls release
  the GIL);
* local steps (sum-pool, upsampling, concatenation, scaling) on each share alone;
* argmax: revealed to the client only.

Nothing here knows about gRPC, and nothing here logs a share, a key or a weight.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import gc, he, ring
from ..he import wire as he_wire
from ..model.format import Model
from ..model.plan import LOCAL_KINDS, Plan, Step, apply_local, compile_plan, nonlinear_windows, split_relu_pool
from .channel import Channel, ProtocolError

GC_CHUNK = 1 << 14  # instances per garbled-circuit message (bounds memory, keeps the C working set in cache)
# Requests in flight; the server garbles up to this many chunks at once. Each message crosses two
# transport threads and the network, so a deeper window hides that latency: at 256x256 the two
# parties kept 85-86% of the two cores busy in the ReLU steps with 4, 88-90% with 8, 90-92% with
# 16 (/proc CPU time per step over wall time); 8 holds half the memory of 16 (the server makes
# pre-messages PRE_AHEAD + 1 windows ahead: 6.3 MB of OT rows per 16,384-ReLU chunk).
GC_WINDOW = 8
MAX_GC_WINDOW = 64  # the deepest window a server accepts (memory: PRE_AHEAD + 1 windows of pre-messages per job)
GC_THREADS = min(2, os.cpu_count() or 1)  # garbling / evaluation threads per party
# Windows of pre-messages the server keeps on the wire ahead of its answers: with two, the client
# holds the next request's pre-message while it waits for an answer and makes that request on its
# pool meanwhile (with one, its requests were made one at a time, each after the answer that carried
# its pre-message). Part of the message order, like the window.
PRE_AHEAD = 2

Progress = Callable[[int], None]  # called with the number of plan steps just finished


@dataclass
class JobSpec:
    """What the client announces at the start of a job (all public). ``gc_window``: the
    garbled-circuit requests it keeps in flight; the server adopts it, because pre-messages and
    responses interleave on the stream in an order both ends derive from it."""

    network: str
    slices: int
    height: int
    width: int
    gc_window: int = GC_WINDOW

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @staticmethod
    def from_bytes(b: bytes) -> JobSpec:
        try:
            d = json.loads(b)
            return JobSpec(str(d["network"]), int(d["slices"]), int(d["height"]), int(d["width"]),
                           int(d["gc_window"]))
        except (ValueError, KeyError, TypeError):
            raise ProtocolError("malformed job request") from None


@dataclass
class Timings:
    """Wall-clock seconds per phase, as seen by one party."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, t0: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0


@dataclass
class Limits:
    """Server-side limits for one job."""

    max_slices: int = 4096
    max_pixels: int = 1024 * 1024


def _gc_op(step: Step, ring_bits: int, classes: int) -> gc.MaxTrunc | gc.Argmax:
    """The garbled-circuit op of a non-linear step other than a fused ReLU + max-pool."""
    a = step.attrs
    if step.kind == "argmax":
        return gc.Argmax(ring_bits=ring_bits, in_bits=a["in_bits"], k=classes)
    return gc.MaxTrunc(ring_bits=ring_bits, in_bits=a["in_bits"], shift=a["shift"], relu=a["relu"], k=a["window"])


def _gc_ops(step: Step, ring_bits: int, classes: int) -> tuple[gc.MaxTrunc | gc.Argmax, ...]:
    """Every op a non-linear step runs (a fused ReLU + max-pool: its rounds', ``gc.relu_pool``)."""
    a = step.attrs
    if "elements" in a:
        return gc.relu_pool_ops(ring_bits, a["in_bits"], a["shift"])
    return (_gc_op(step, ring_bits, classes),)


GcRun = Callable[[gc.MaxTrunc | gc.Argmax, str, np.ndarray], np.ndarray | None]  # (op, round, rows) -> outputs


def _relu_pool(run: GcRun, step: Step, x: np.ndarray, ring_bits: int) -> dict[str, np.ndarray]:
    """One party's half of a fused ReLU + max-pool on its shares x (``gc.relu_pool``): the ReLU
    tensor and the pool (``step.attrs["elements"]``, ``step.out``)."""
    win = nonlinear_windows(step, x)
    out = gc.relu_pool(lambda op, rnd, rows: _must(run(op, rnd, rows)), win.reshape(-1, win.shape[-1]),
                       ring_bits=ring_bits, in_bits=step.attrs["in_bits"], shift=step.attrs["shift"])
    return split_relu_pool(step, out.reshape(*win.shape[:-1], win.shape[-1] + 1))


def _flat(step: Step, x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Share tensor -> (instances, window) rows for the garbled circuit, plus the result shape."""
    if step.kind == "argmax":
        rows = np.moveaxis(x, 1, -1)
        return np.ascontiguousarray(rows.reshape(-1, rows.shape[-1])), rows.shape[:-1]
    w = nonlinear_windows(step, x)
    return np.ascontiguousarray(w.reshape(-1, w.shape[-1])), w.shape[:-1]


def _chunks(n: int) -> list[slice]:
    """Instances per message: GC_CHUNK."""
    return [slice(i, min(i + GC_CHUNK, n)) for i in range(0, n, GC_CHUNK)] or [slice(0, 0)]


def _nonlinear(run: GcRun, step: Step, x: np.ndarray, ring_bits: int, classes: int,
               shares: dict[str, np.ndarray]) -> np.ndarray | None:
    """A non-linear or argmax step on one party's shares x, by ``run`` (that party's garbled-circuit
    loop): its output shares go into ``shares``; argmax returns what ``run`` gives (client: labels)."""
    if "elements" in step.attrs:
        shares.update(_relu_pool(run, step, x, ring_bits))
        return None
    op = _gc_op(step, ring_bits, classes)
    rows, shape = _flat(step, x)
    out = run(op, "", rows)
    if step.kind == "argmax":
        return None if out is None else out.reshape(shape)
    shares[step.out] = _must(out).reshape(shape)
    return None


def last_reads(plan: Plan) -> dict[int, list[str]]:
    """For each step index, the shares it is the last step to read: both parties drop them after it.
    (Keeping every intermediate share to the end of a job held about 0.5 GB per party at 512x512,
    all of it fresh pages faulted in during the job.)"""
    last: dict[str, int] = {}
    for i, step in enumerate(plan.steps):
        for name in step.inputs:
            last[name] = i
    drops: dict[int, list[str]] = {}
    for name, i in last.items():
        drops.setdefault(i, []).append(name)
    return drops


def _must(out: np.ndarray | None) -> np.ndarray:
    assert out is not None  # re-shared outputs: both parties get theirs
    return out


def conv_spec(step: Step) -> he.ConvSpec:
    a = step.attrs
    return he.ConvSpec(kind="conv" if a["op"] == "conv" else "convT", k=a["k"], pad=a["pad"])


def layer_spec(step: Step, in_shape: tuple[int, int, int]) -> he.LayerSpec:
    """The public description of a linear layer both halves agree on."""
    c, h, w = in_shape
    return he.LayerSpec(conv_spec(step), c, step.attrs["out_channels"], h, w)


class ServerProtocol:
    """The vendor's half: holds the weights; prepares every layer's frequency-domain filters once
    per model and serves any number of jobs (each job on its own channel and GC session)."""

    gc_ot = "silent"  # correlated-OT backend (gc.OT_BACKENDS); clients must use the same

    def __init__(self, model: Model, he_params: he.HEParams | None = None) -> None:
        model.validate()
        self.model = model
        self.plans: dict[str, Plan] = {k: compile_plan(n, model.quantization) for k, n in model.networks.items()}
        self.he_params = he_params or he.HEParams.for_ring(model.quantization.ring_bits)
        self.he_params.validate()  # SEAL's 128-bit check, at start-up
        self.he = he.ServerHE(self.he_params)  # public parameters only; per-job views add the client's key
        self._layers: dict[tuple[str, str, int, int], Any] = {}
        self._prepare_lock = threading.Lock()
        self._gc_pool = ThreadPoolExecutor(GC_THREADS, thread_name_prefix="garble")  # shared by all jobs

    def describe(self) -> dict[str, Any]:
        """Public description: the model header (no weights) and the HE parameters."""
        return {"model": self.model.header(), "he_params": self.he_params.to_bytes().hex()}

    def _layer(self, net: str, step: Step, shape: tuple[int, int, int]) -> Any:
        """Frequency-domain filters: computed once per model and slice size, shared by all jobs."""
        key = (net, step.out, shape[1], shape[2])
        with self._prepare_lock:
            if key not in self._layers:
                self._layers[key] = self.he.prepare(conv_spec(step), step.weight, step.bias, in_shape=shape)
        return self._layers[key]

    def prepare(self, height: int, width: int) -> None:
        """Precompute every layer's filters for slices of this size (at start-up, not in a job)."""
        for net, plan in self.plans.items():
            shapes = plan.shapes(height, width)
            for step in plan.steps:
                if step.kind == "linear":
                    self._layer(net, step, shapes[step.inputs[0]])
        self.he.reserve_scratch(list(self._layers.values()))

    def run_job(self, chan: Channel, limits: Limits | None = None) -> Timings:
        limits = limits or Limits()
        t = Timings()
        spec = JobSpec.from_bytes(chan.recv("job"))
        if spec.network not in self.plans:
            raise ProtocolError(f"unknown network {spec.network!r}")
        if not 1 <= spec.slices <= limits.max_slices:
            raise ProtocolError(f"job of {spec.slices} slices is over the server's limit of {limits.max_slices}")
        if spec.height * spec.width > limits.max_pixels or min(spec.height, spec.width) < 1:
            raise ProtocolError("slice size is over the server's limit")
        if not 1 <= spec.gc_window <= MAX_GC_WINDOW:
            raise ProtocolError(f"garbled-circuit window {spec.gc_window} is outside 1..{MAX_GC_WINDOW}")
        plan = self.plans[spec.network]
        shapes = plan.shapes(spec.height, spec.width)
        chan.max_message = self._message_cap(spec, plan, shapes)
        t0 = time.perf_counter()
        hes = self.he.with_public_key(chan.recv("he_pk"))  # the client's key: re-randomises results
        t.add("he", t0)
        t0 = time.perf_counter()
        garbler = gc.Garbler(ot=self.gc_ot)
        chan.send("gc_hello", garbler.hello(chan.recv("gc_hello")))
        chan.send("gc_hello", garbler.finish_hello(chan.recv("gc_hello")))
        t.add("gc", t0)
        classes = shapes[plan.steps[-1].inputs[0]][0]
        B = spec.slices
        shares: dict[str, np.ndarray] = {}
        drops = last_reads(plan)
        for idx, step in enumerate(plan.steps):
            ins = [shares[i] for i in step.inputs]
            t0 = time.perf_counter()
            if step.kind == "input":
                c, h, w = shapes[step.out]
                shares[step.out] = np.zeros((B, c, h, w), dtype=np.uint64)  # the server's share is 0
            elif step.kind == "linear":
                layer = self._layer(spec.network, step, shapes[step.inputs[0]])
                down, y_s = hes.apply(layer, chan.recv(f"he:{step.out}"), ins[0])
                chan.send(f"he:{step.out}", down)
                shares[step.out] = y_s
                t.add("he", t0)
            elif step.kind in ("nonlinear", "argmax"):
                def run(op: Any, sub: str, rows: np.ndarray, name: str = step.out) -> np.ndarray | None:
                    outs = self._gc_chunks(chan, garbler, op, f"{name}:{sub}", rows, spec.gc_window)
                    return None if isinstance(op, gc.Argmax) else np.concatenate(outs)  # labels: client only

                _nonlinear(run, step, ins[0], plan.ring_bits, classes, shares)
                t.add("gc", t0)
            elif step.kind in LOCAL_KINDS:
                shares[step.out] = apply_local(step, ins, plan.ring_bits)
                t.add("local", t0)
            else:  # pragma: no cover
                raise ProtocolError(f"unknown step kind {step.kind}")
            ins = []
            for name in drops.get(idx, ()):
                del shares[name]
        chan.send("done", b"")
        return t

    def _message_cap(self, spec: JobSpec, plan: Plan, shapes: dict[str, tuple[int, int, int]]) -> int:
        """The largest message a well-behaved client sends in this job, plus 1 MiB: HE uploads of
        the job's slices, GC requests of a full chunk with the costliest OT extension (IKNP)."""
        prm = self.he_params
        classes = shapes[plan.steps[-1].inputs[0]][0]
        biggest = 1 << 20  # job spec, public key, GC hello: well below
        for step in plan.steps:
            if step.kind == "linear":
                layer = self._layer(spec.network, step, shapes[step.inputs[0]])
                cts = layer.plan.n_in_cts(spec.slices)
                biggest = max(biggest, cts * len(prm.primes) * prm.poly_degree * he_wire.RESIDUE_BYTES)
            elif step.kind in ("nonlinear", "argmax"):
                biggest = max(biggest, *(op.message_sizes(GC_CHUNK, ot_k=1)[0]
                                         for op in _gc_ops(step, plan.ring_bits, classes)))
        return biggest + (1 << 20)

    def _gc_chunks(self, chan: Channel, garbler: Any, op: Any, name: str, rows: np.ndarray,
                   window: int) -> list[Any]:
        """Receive and claim requests in order, garble on the pool, answer in order.

        At most ``window`` (the client's) chunks are in flight, which is all the client sends before
        it needs an answer, so the loop never waits for a request that cannot come. Ops with a carry
        look-up need a pre-message per chunk before its request: the first two windows' go out at
        once, then chunk j + 2 window's right after the answer to chunk j, so the client always holds
        the pre-message of the chunk after its window and makes that request while it waits
        (``PRE_AHEAD``); they are made on the pool one window further ahead.
        """
        tag = f"gc:{name}"
        inflight: deque[Future] = deque()
        pres: deque[Future] = deque()  # pre-messages being made on the pool, in order
        outs: list[Any] = []
        chunks = _chunks(len(rows))
        pre_chunks = iter(chunks if op.lut_bits else [])

        def make_pre() -> None:  # claims the next chunk's reverse OT rows in order; made on the pool
            sl = next(pre_chunks, None)
            if sl is not None:
                pres.append(self._gc_pool.submit(garbler.prepare_pre(op, rows[sl])))

        def send_pre() -> None:
            if pres:
                chan.send(tag, pres.popleft().result())

        def answer() -> None:
            resp, out_s = inflight.popleft().result()
            chan.send(tag, resp)
            outs.append(out_s)
            send_pre()
            make_pre()

        try:
            for _ in range((PRE_AHEAD + 1) * window):  # sent: PRE_AHEAD windows now, the rest after answers
                make_pre()
            for _ in range(PRE_AHEAD * window):
                send_pre()
            for sl in chunks:
                job = garbler.claim(op, chan.recv(tag), rows[sl])
                inflight.append(self._gc_pool.submit(job))
                while inflight and (len(inflight) >= window or inflight[0].done()):
                    answer()
            while inflight:
                answer()
        finally:
            for f in (*inflight, *pres):  # a failed job: let the pool finish what it started, drop the rest
                f.cancel()
        if op.has_post:  # sign mode: the client's post-messages complete the shares, in order
            outs = [garbler.post(op, chan.recv(tag), o) for o in outs]
        return outs


class ClientProtocol:
    """The hospital's half: knows the public architecture and its own secret key, never weights."""

    gc_ot = "silent"  # correlated-OT backend (gc.OT_BACKENDS); the server must use the same

    def __init__(self, description: dict[str, Any]) -> None:
        self.model = Model.from_header(description["model"])
        shapes = self.model.weight_shapes()
        self.plans = {k: compile_plan(n, self.model.quantization, {s: tuple(v) for s, v in shapes[k].items()})
                      for k, n in self.model.networks.items()}
        self.he_params = he.HEParams.from_bytes(bytes.fromhex(description["he_params"]))
        self.he_params.validate()
        self.he = he.ClientHE(self.he_params)  # generates the secret key; it never leaves this object
        self.public_key = self.he.public_key()
        self._gc_pool = ThreadPoolExecutor(GC_THREADS, thread_name_prefix="evaluate")  # shared by all jobs
        self.gc_window = GC_WINDOW  # announced in each job's spec; the server follows it

    def run_job(self, chan: Channel, network: str, x: np.ndarray, progress: Progress | None = None) -> tuple[
            np.ndarray, Timings]:
        """Segment a batch of preprocessed slices x (B, C, H, W) float in [0, 1] -> labels (B, H, W)."""
        plan = self.plans[network]
        L = plan.ring_bits
        B, C, H, W = x.shape
        t = Timings()
        shapes = plan.shapes(H, W)
        classes = shapes[plan.steps[-1].inputs[0]][0]
        window = self.gc_window
        chan.send("job", JobSpec(network, B, H, W, window).to_bytes())
        t0 = time.perf_counter()
        chan.send("he_pk", self.public_key)
        ev = gc.Evaluator(ot=self.gc_ot)
        chan.send("gc_hello", ev.hello())
        chan.send("gc_hello", ev.finish_hello(chan.recv("gc_hello")))
        ev.finish_setup(chan.recv("gc_hello"))
        t.add("gc", t0)
        shares: dict[str, np.ndarray] = {}
        drops = last_reads(plan)
        labels = None
        for idx, step in enumerate(plan.steps):
            ins = [shares[i] for i in step.inputs]
            t0 = time.perf_counter()
            if step.kind == "input":
                shares[step.out] = ring.encode(x, plan.frac_bits, L)
            elif step.kind == "linear":
                spec = layer_spec(step, shapes[step.inputs[0]])
                chan.send(f"he:{step.out}", self.he.encrypt(spec, ins[0]))
                shares[step.out] = self.he.decrypt(spec, chan.recv(f"he:{step.out}"))
                t.add("he", t0)
            elif step.kind in ("nonlinear", "argmax"):
                def run(op: Any, sub: str, rows: np.ndarray, name: str = step.out) -> np.ndarray:
                    return np.concatenate(self._gc_chunks(chan, ev, op, f"{name}:{sub}", rows, window))

                out = _nonlinear(run, step, ins[0], L, classes, shares)
                labels = labels if out is None else out
                t.add("gc", t0)
            elif step.kind in LOCAL_KINDS:
                shares[step.out] = apply_local(step, ins, L)
                t.add("local", t0)
            ins = []
            for name in drops.get(idx, ()):
                del shares[name]
            if progress:
                progress(1)
        chan.recv("done")
        assert labels is not None
        return labels, t

    def _gc_chunks(self, chan: Channel, ev: Any, op: Any, name: str, rows: np.ndarray,
                   window: int) -> list[np.ndarray]:
        """Up to ``window`` requests in flight; responses evaluated on the pool; results in order.

        Requests are claimed here, in order (each fixes its OT range), and made on the pool: the
        ``window`` before an awaited answer are sent, the next one is being made; a new one starts
        only when at most ``window`` responses are still being evaluated, which bounds memory. With a
        carry look-up, each request answers the server's pre-message for its chunk (see the server's
        side; they arrive ``PRE_AHEAD`` windows ahead).
        """
        tag = f"gc:{name}"
        chunks = _chunks(len(rows))
        n = len(chunks)
        futs: list[Future] = []
        reqs: deque[Future] = deque()  # requests being made on the pool, sent in order
        pres: deque[bytes] = deque()  # the server's pre-messages (look-up ops), PRE_AHEAD windows ahead
        sent = made = 0

        def send_ready(upto: int) -> None:  # the finished requests in order, and all through chunk upto
            nonlocal sent
            while reqs and (sent <= upto or reqs[0].done()):
                chan.send(tag, reqs.popleft().result())
                sent += 1

        if op.lut_bits:
            pres.extend(chan.recv(tag) for _ in range(min(n, PRE_AHEAD * window)))
        for i in range(n):
            # requests through chunk i + window - 1 must be out before the answer to chunk i can come;
            # the one after them is made meanwhile (its pre-message is here), so two overlap on the pool
            while made < n and made <= i + window:
                if made - window - 1 >= 0:
                    futs[made - window - 1].result()  # evaluation keeps up before more is asked for
                pre = pres.popleft() if op.lut_bits else None
                reqs.append(self._gc_pool.submit(ev.prepare(op, rows[chunks[made]], pre)))  # OT ranges in order
                made += 1
                send_ready(-1)
            send_ready(i + window - 1)
            futs.append(self._gc_pool.submit(ev.finish, op, chan.recv(tag)))
            if op.lut_bits and i + PRE_AHEAD * window < n:
                pres.append(chan.recv(tag))  # the server sends chunk i + PRE_AHEAD * window's after answer i
        outs = [f.result() for f in futs]
        for post in ev.take_posts():  # sign mode: completes the server's shares (in request order)
            chan.send(tag, post)
        return outs
