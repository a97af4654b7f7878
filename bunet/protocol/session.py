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
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import gc, he, ring
from ..he import wire as he_wire
from ..model.format import Model
from ..model.plan import LOCAL_KINDS, Plan, Step, apply_local, compile_plan, nonlinear_windows, split_relu_pool
from .channel import Channel, MalformedMessage, ProtocolError

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


# The message order of a job (tags, windows, pre-messages): both builds must speak the same one.
# Raise it with every change to what goes on the wire, so a mismatch is a clear error, not a stall.
PROTOCOL_VERSION = 3
JOB_SPEC_BYTES = 4 << 10  # the job request is a few dozen bytes of JSON
SETUP_BYTES = 1 << 20  # public key, GC hello: well below
# What a job's stream may buffer in the transport (frames queued each way, one message being
# assembled): counted in every job's planned memory. The transport's own bounds must stay below it.
TRANSPORT_BYTES = 160 << 20


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
    protocol: int = PROTOCOL_VERSION

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @staticmethod
    def from_bytes(b: bytes) -> JobSpec:
        try:
            d = json.loads(b)
            version = d.get("protocol")
            if version != PROTOCOL_VERSION:
                raise ProtocolError(f"the client speaks protocol version {version}, this server {PROTOCOL_VERSION}:"
                                    " install the same BUNET release on both sides")
            return JobSpec(str(d["network"]), int(d["slices"]), int(d["height"]), int(d["width"]),
                           int(d["gc_window"]), int(version))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise MalformedMessage("malformed job request") from None


@dataclass
class Timings:
    """Wall-clock seconds per phase, as seen by one party."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, t0: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0


@dataclass
class Limits:
    """Server-side limits for one job.

    ``slice_sizes``: the (height, width) the server serves (None: any up to ``max_pixels``); the
    deadline of a job is ``deadline_base_s`` plus ``deadline_s_per_mpixel`` per megapixel of its
    slices, counted from its admission (a slice of the seed U-Net at 512x512 takes about a
    minute on two cores and loopback; the default leaves room for slow links)."""

    max_slices: int = 4096
    max_pixels: int = 1024 * 1024
    slice_sizes: tuple[tuple[int, int], ...] | None = None
    deadline_base_s: float = 120.0
    deadline_s_per_mpixel: float = 7200.0

    def deadline_s(self, spec: JobSpec) -> float:
        return self.deadline_base_s + self.deadline_s_per_mpixel * spec.slices * spec.height * spec.width / 1e6


Admit = Callable[[int], AbstractContextManager[object]]  # planned bytes -> held while the job runs


@contextmanager
def _from_client(what: str) -> Iterator[None]:
    """Parsing the client's bytes: a ValueError there is a malformed message, not a server bug."""
    try:
        yield
    except ValueError as e:
        raise MalformedMessage(f"malformed {what}: {e}") from None


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
        """Public description: the model's public header (no weights) and the HE parameters."""
        return {"model": self.model.public_header(), "he_params": self.he_params.to_bytes().hex()}

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

    def check_spec(self, spec: JobSpec, limits: Limits) -> None:
        """Refuse a job the server does not serve, before any work or memory is spent on it."""
        if spec.network not in self.plans:
            raise MalformedMessage(f"unknown network {spec.network!r}")
        if not 1 <= spec.slices <= limits.max_slices:
            raise ProtocolError(f"job of {spec.slices} slices is over the server's limit of {limits.max_slices}")
        if min(spec.height, spec.width) < 1 or spec.height * spec.width > limits.max_pixels:
            raise MalformedMessage(f"slice size {spec.height}x{spec.width} is outside the server's limit")
        if limits.slice_sizes is not None and (spec.height, spec.width) not in limits.slice_sizes:
            served = ", ".join(f"{h}x{w}" for h, w in limits.slice_sizes)
            raise MalformedMessage(f"slice size {spec.height}x{spec.width} is not served (served: {served})")
        if not 1 <= spec.gc_window <= MAX_GC_WINDOW:
            raise MalformedMessage(f"garbled-circuit window {spec.gc_window} is outside 1..{MAX_GC_WINDOW}")

    def run_job(self, chan: Channel, limits: Limits | None = None, admit: Admit | None = None) -> Timings:
        """One job: the client's spec, checked; then, once ``admit`` grants the job's planned memory
        (see :meth:`job_memory`), the session under the job's deadline."""
        limits = limits or Limits()
        spec = JobSpec.from_bytes(chan.recv("job", limit=JOB_SPEC_BYTES))
        self.check_spec(spec, limits)
        with admit(self.job_memory(spec)) if admit is not None else nullcontext():
            chan.set_deadline(limits.deadline_s(spec))
            return self._run_job(chan, spec)

    def _run_job(self, chan: Channel, spec: JobSpec) -> Timings:
        t = Timings()
        plan = self.plans[spec.network]
        shapes = plan.shapes(spec.height, spec.width)
        chan.max_message = self._message_cap(spec, plan, shapes)
        t0 = time.perf_counter()
        with _from_client("public key"):
            hes = self.he.with_public_key(chan.recv("he_pk", limit=SETUP_BYTES))  # re-randomises results
        t.add("he", t0)
        t0 = time.perf_counter()
        garbler = gc.Garbler()
        with _from_client("GC hello"):
            chan.send("gc_hello", garbler.hello(chan.recv("gc_hello", limit=SETUP_BYTES)))
            chan.send("gc_hello", garbler.finish_hello(chan.recv("gc_hello", limit=SETUP_BYTES)))
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
                up = chan.recv(f"he:{step.out}", limit=self._upload_bytes(layer, B))
                with _from_client(f"HE upload of {step.out}"):
                    down, y_s = hes.apply(layer, up, ins[0])
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

    def _upload_bytes(self, layer: Any, batch: int) -> int:
        """The size of a well-formed HE upload of this layer (header, seed, then c0 of every ciphertext)."""
        prm = self.he_params
        return 256 + layer.plan.n_in_cts(batch) * len(prm.primes) * prm.poly_degree * he_wire.RESIDUE_BYTES

    def _download_bytes(self, layer: Any, batch: int) -> int:
        prm, lp = self.he_params, layer.plan
        return 256 + lp.n_out_cts(batch) * prm.poly_degree * ((prm.down_bits + 7) // 8) \
            + batch * lp.n_returned * ((prm.down_c0_bits + 7) // 8)

    def job_memory(self, spec: JobSpec) -> int:
        """An upper bound on the memory one job holds on the server beyond the shared model state.

        The peak of: the live shares (each tensor from the step that makes it to its last reader,
        ``last_reads``) twice over, for the copies a step makes (window rows, outputs), plus the
        largest step's own buffers: an HE step's upload, download, fresh mask and work arrays; a
        garbled-circuit step's messages in flight (PRE_AHEAD + 1 windows of pre-messages, a window of
        requests and of responses). Plus the transport's bounded queues. tests/test_abuse.py checks
        the bound against the server's measured peak."""
        plan = self.plans[spec.network]
        shapes = plan.shapes(spec.height, spec.width)
        classes = shapes[plan.steps[-1].inputs[0]][0]
        B = spec.slices
        size = {name: 8 * B * int(np.prod(shp)) for name, shp in shapes.items()}
        drops = last_reads(plan)
        live, peak_shares, peak_step = 0, 0, 0
        for idx, step in enumerate(plan.steps):
            out = sum(size.get(name, 0) for name in step.outs)
            live += out
            peak_shares = max(peak_shares, live)
            if step.kind == "linear":
                layer = self._layer(spec.network, step, shapes[step.inputs[0]])
                work = sum(8 * int(np.prod(s)) for s in self.he._work_shapes(
                    layer.plan, max(t.size for t in self.he._tile_chunks(layer))))
                peak_step = max(peak_step, self._upload_bytes(layer, B) + self._download_bytes(layer, B)
                                + 2 * out + work)
            elif step.kind in ("nonlinear", "argmax"):
                for op in _gc_ops(step, plan.ring_bits, classes):
                    req, resp = op.message_sizes(GC_CHUNK, ot_k=1)
                    win = spec.gc_window
                    peak_step = max(peak_step, (PRE_AHEAD + 1) * win * op.pre_size(GC_CHUNK, ot_k=1)
                                    + win * (req + resp) + op.post_size(GC_CHUNK))
            live -= sum(size.get(name, 0) for name in drops.get(idx, ()))
        return 2 * peak_shares + peak_step + TRANSPORT_BYTES

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
                n = sl.stop - sl.start
                req = chan.recv(tag, limit=op.message_sizes(n, ot_k=1)[0])
                with _from_client("GC request"):
                    job = garbler.claim(op, req, rows[sl])
                inflight.append(self._gc_pool.submit(job))
                while inflight and (len(inflight) >= window or inflight[0].done()):
                    answer()
            while inflight:
                answer()
        finally:
            for f in (*inflight, *pres):  # a failed job: let the pool finish what it started, drop the rest
                f.cancel()
        if op.has_post:  # sign mode: the client's post-messages complete the shares, in order
            with _from_client("GC post-message"):
                outs = [garbler.post(op, chan.recv(tag, limit=op.post_size(len(o))), o) for o in outs]
        return outs


class ClientProtocol:
    """The hospital's half: knows the public architecture and its own secret key, never weights."""

    def __init__(self, description: dict[str, Any]) -> None:
        self.model = Model.from_header(description["model"])
        shapes = self.model.weight_shapes()
        self.plans = {k: compile_plan(n, self.model.quantization, {s: tuple(v) for s, v in shapes[k].items()})
                      for k, n in self.model.networks.items()}
        self.he_params = he.HEParams.from_bytes(bytes.fromhex(description["he_params"]))
        self.he_params.validate()
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
        hec = he.ClientHE(self.he_params)  # a key pair per job: jobs are unlinkable by key; the secret stays here
        chan.send("he_pk", hec.public_key())
        ev = gc.Evaluator()
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
                chan.send(f"he:{step.out}", hec.encrypt(spec, ins[0]))
                shares[step.out] = hec.decrypt(spec, chan.recv(f"he:{step.out}"))
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
