"""The 2PC session: a compiled plan executed layer by layer on additive shares.

Both halves walk the same plan with the one executor (``bunet.model.executor``) in lock step over a
:class:`Channel`, each through its backend here:

* input: the client's share is its encoded slice, the server's share is zero;
* linear steps: HomConv (``bunet.he``): the client uploads its encrypted share, the server
  returns Enc(W*x_c) + W*x_s + b - r and keeps r;
* circuit steps (ReLU, truncation, max-pool, ReLU + pool, argmax): the step's rule in garbled
  circuits (``bunet.gc``), each op through the pipeline of ``gc_pipeline``; argmax is revealed
  to the client only;
* local steps (sum-pool, upsampling, concatenation, scaling) on each share alone.

Nothing here knows about gRPC, and nothing here logs a share, a key or a weight.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import gc, he, ring
from ..he import wire as he_wire
from ..he.bfv import plan_for
from ..he.params import FLOOD_JOB_CIPHERTEXTS
from ..model.executor import execute, last_reads
from ..model.format import Model
from ..model.plan import Plan, compile_plan
from ..model.steps import CircuitStep, Input, Linear, Shape, Step
from . import gc_pipeline
from .channel import Channel, MalformedMessage, ProtocolError, from_client

# Requests in flight; the server garbles up to this many chunks at once. Each message crosses two
# transport threads and the network, so a deeper window hides that latency, and each party wakes up
# fewer times per chunk: with silent OT 16 rather than 8 saves time and CPU on loopback and over a
# WAN link (SoftSpoken on loopback: no gain beyond the noise; docs/benchmarks.md). A deeper one
# also holds more memory (the server makes pre-messages PRE_AHEAD + 1 windows ahead: 6.3 MB of OT
# rows per 16,384-ReLU chunk), so a job that needs more than the server allows one job at
# GC_WINDOW is sent again with GC_WINDOW_SMALL (bunet.client).
GC_WINDOW = 16
GC_WINDOW_SMALL = 8
MAX_GC_WINDOW = 64  # the deepest window a server accepts (memory: PRE_AHEAD + 1 windows of pre-messages per job)
GC_THREADS = min(2, os.cpu_count() or 1)  # garbling / evaluation threads per party

Progress = Callable[[int], None]  # called with the number of plan steps just finished


# The message order of a job (tags, windows, pre-messages): both builds must speak the same one.
# Raise it with every change to what goes on the wire or how either side computes it (keys, hashes),
# so a mismatch is a clear error, not a stall or a wrong mask.
PROTOCOL_VERSION = 11
# An HE layer's parts the client sends ahead of the answers: the next parts travel and are computed
# while the client decrypts the last answer. Each side holds at most this many parts in its queues
# (4 x 64 input ciphertexts, about 34 MB at N = 8192), which the transport's buffers hold, so neither
# side can block the other.
HE_WINDOW = 4
# The server waits for further HE parts to merge (up to what a pass over the kernels costs) only while
# a part comes in within 1 / MERGE_FAST of that cost.
MERGE_FAST = 4
JOB_SPEC_BYTES = 4 << 10  # the job request is a few dozen bytes of JSON
SETUP_BYTES = 1 << 20  # public key, GC hello: well below
# What a job's stream may buffer in the transport (frames queued each way, one message being
# assembled): counted in every job's planned memory. The transport's own bounds must stay below it.
TRANSPORT_BYTES = 160 << 20


@dataclass
class JobSpec:
    """What the client announces at the start of a job (all public). ``gc_window``: the
    garbled-circuit requests it keeps in flight; the server adopts it, because pre-messages and
    responses interleave on the stream in an order both ends derive from it. ``gc_ot``: the
    correlated-OT backend of the job's garbled circuits (``gc.OT_BACKENDS``), one of the server's."""

    network: str
    slices: int
    height: int
    width: int
    gc_window: int = GC_WINDOW
    protocol: int = PROTOCOL_VERSION
    gc_ot: str = gc.DEFAULT_OT

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @staticmethod
    def from_bytes(b: bytes) -> JobSpec:
        try:
            d = json.loads(b)
            version = d.get("protocol")
            if version != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"the client speaks protocol version {version}, this server {PROTOCOL_VERSION}:"
                    " install the same BUNET release on both sides"
                )
            return JobSpec(
                str(d["network"]),
                int(d["slices"]),
                int(d["height"]),
                int(d["width"]),
                int(d["gc_window"]),
                int(version),
                str(d["gc_ot"]),
            )
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


def _on_step(t: Timings, progress: Progress | None = None) -> Callable[[Step, float], None]:
    """Books each step's time under its phase (and reports progress)."""

    def done(step: Step, t0: float) -> None:
        if step.phase is not None:
            t.add(step.phase, t0)
        if progress:
            progress(1)

    return done


def conv_spec(step: Linear) -> he.ConvSpec:
    return he.ConvSpec(kind="conv" if step.op == "conv" else "convT", k=step.k, pad=step.pad)


def layer_spec(step: Linear, in_shape: Shape) -> he.LayerSpec:
    """The public description of a linear layer both halves agree on."""
    c, h, w = in_shape
    return he.LayerSpec(conv_spec(step), c, step.out_channels, h, w)


def returned_ciphertexts(plan: Plan, poly_degree: int, height: int, width: int, slices: int = 1) -> int:
    """HE result ciphertexts a job of ``slices`` slices of this size receives (public: both sides)."""
    shapes = plan.shapes(height, width)
    return sum(
        plan_for(layer_spec(step, shapes[step.inputs[0]]), poly_degree).n_out_cts(slices)
        for step in plan.steps
        if isinstance(step, Linear)
    )


def max_job_slices(plan: Plan, poly_degree: int, height: int, width: int) -> int:
    """The most slices of this size one job may hold: flooding's statistical distance is bounded per
    job of at most ``FLOOD_JOB_CIPHERTEXTS`` returned ciphertexts (see :mod:`bunet.he.params`)."""
    return max(1, FLOOD_JOB_CIPHERTEXTS // returned_ciphertexts(plan, poly_degree, height, width))


class _ServerBackend:
    """The server's side of each step of one job."""

    def __init__(self, srv: ServerProtocol, chan: Channel, spec: JobSpec, hes: Any, garbler: Any) -> None:
        self.srv, self.chan, self.spec, self.hes, self.garbler = srv, chan, spec, hes, garbler
        self.ring_bits = srv.model.quantization.ring_bits

    def input(self, step: Input, shape: Shape) -> np.ndarray:
        return np.zeros((self.spec.slices, *shape), dtype=np.uint64)  # the server's share is 0

    def linear(self, step: Linear, x: np.ndarray, in_shape: Shape) -> np.ndarray:
        layer = self.srv._layer(self.spec.network, step, in_shape)
        job = self.hes.start(layer, x)
        i = 0
        while i < len(job):  # each part's answer goes out while the client sends the next parts
            ups = [self.chan.recv(f"he:{step.out}:{i}", limit=job.up_size(i))]
            # The parts here are computed with it: one pass over the layer's kernels for all. When
            # parts cross the wire fast (the client sets the pace: loopback, a fast LAN), the next
            # ones are worth waiting for up to what a pass costs; over a slower link a wait would hold
            # this part's answer back while they travel. The client sends HE_WINDOW >= merge ahead.
            fast = self.chan.arrival_s is not None and self.chan.arrival_s < job.merge_wait_s / MERGE_FAST
            wait = job.merge_wait_s if fast else 0.0
            while i + len(ups) < len(job) and len(ups) < job.merge and self.chan.ready(wait):
                j = i + len(ups)
                ups.append(self.chan.recv(f"he:{step.out}:{j}", limit=job.up_size(j)))
            with from_client(f"HE upload of {step.out}"):
                downs = job.steps(i, ups)
            for down in downs:
                self.chan.send(f"he:{step.out}:{i}", down)
                i += 1
        return job.y_s

    def circuit(self, step: CircuitStep, rows: np.ndarray) -> np.ndarray | None:
        def run(op: Any, sub: str, r: np.ndarray) -> np.ndarray | None:
            tag = f"gc:{step.out}:{sub}"
            outs = gc_pipeline.garble(self.chan, self.garbler, self.srv._gc_pool, op, tag, r, self.spec.gc_window)
            return None if isinstance(op, gc.Argmax) else np.concatenate(outs)  # labels: client only

        return step.secure(run, rows, self.ring_bits)


class _ClientBackend:
    """The client's side of each step of one job."""

    def __init__(
        self,
        cli: ClientProtocol,
        chan: Channel,
        hec: he.ClientHE,
        x: np.ndarray,
        frac_bits: int,
        ring_bits: int,
        ev: gc.Evaluator,
        window: int,
    ) -> None:
        self.cli, self.chan, self.hec, self.x, self.ev = cli, chan, hec, x, ev
        self.frac_bits, self.ring_bits = frac_bits, ring_bits
        self.window = window  # the job's, as announced in its spec

    def input(self, step: Input, shape: Shape) -> np.ndarray:
        return ring.encode(self.x, self.frac_bits, self.ring_bits)

    def linear(self, step: Linear, x: np.ndarray, in_shape: Shape) -> np.ndarray:
        spec = layer_spec(step, in_shape)
        up, down = self.hec.upload(spec, x), self.hec.download(spec, x.shape[0])
        sent = 0
        for i in range(len(down)):  # HE_WINDOW parts in flight: encrypting and sending overlap the server's work
            while sent < len(up) and sent - i < HE_WINDOW:
                self.chan.send(f"he:{step.out}:{sent}", up.message(sent))
                sent += 1
            down.add(i, self.chan.recv(f"he:{step.out}:{i}", limit=down.size(i)))
        return down.result()

    def circuit(self, step: CircuitStep, rows: np.ndarray) -> np.ndarray | None:
        def run(op: Any, sub: str, r: np.ndarray) -> np.ndarray:
            tag = f"gc:{step.out}:{sub}"
            return np.concatenate(gc_pipeline.evaluate(self.chan, self.ev, self.cli._gc_pool, op, tag, r, self.window))

        return step.secure(run, rows, self.ring_bits)


class ServerProtocol:
    """The vendor's half: holds the weights; prepares every layer's frequency-domain filters once
    per model and serves any number of jobs (each job on its own channel and GC session)."""

    gc_ots: tuple[str, ...] = gc.OT_BACKENDS  # the correlated-OT backends a job may ask for

    def __init__(self, model: Model, he_params: he.HEParams | None = None, filter_cache_bytes: int = 6 << 30) -> None:
        model.validate()
        self.model = model
        self.plans: dict[str, Plan] = {k: compile_plan(n, model.quantization) for k, n in model.networks.items()}
        self.he_params = he_params or he.HEParams.for_ring(model.quantization.ring_bits)
        self.he_params.validate()  # SEAL's 128-bit check, at start-up
        # public parameters only; per-job views add the client's key. Kernels beyond the cache are
        # rebuilt in every call (slower, no memory held)
        self.he = he.ServerHE(self.he_params, filter_cache_bytes=filter_cache_bytes)
        self._layers: dict[tuple[str, str, int, int], Any] = {}
        self._prepare_lock = threading.Lock()
        self._gc_pool = ThreadPoolExecutor(GC_THREADS, thread_name_prefix="garble")  # shared by all jobs

    def describe(self) -> dict[str, Any]:
        """Public description: the model's public header (no weights), the HE parameters and the
        correlated-OT backends a job may ask for."""
        return {
            "model": self.model.public_header(),
            "he_params": self.he_params.to_bytes().hex(),
            "gc_ots": list(self.gc_ots),
        }

    def _layer(self, net: str, step: Linear, shape: Shape, cache: bool = True) -> Any:
        """Frequency-domain filters: computed once per model and slice size, shared by all jobs."""
        key = (net, step.out, shape[1], shape[2])
        with self._prepare_lock:
            if key not in self._layers:
                self._layers[key] = self.he.prepare(
                    conv_spec(step), step.weight, step.bias, in_shape=shape, cache=cache
                )
        return self._layers[key]

    def prepare(self, height: int, width: int) -> None:
        """Precompute every layer's filters for slices of this size (at start-up, not in a job); the
        kernel cache goes to the layers that save the most per byte (``ServerHE.choose_cached``)."""
        todo = [
            (net, step, plan.shapes(height, width)[step.inputs[0]])
            for net, plan in self.plans.items()
            for step in plan.steps
            if isinstance(step, Linear)
        ]
        specs = [layer_spec(step, shape) for _, step, shape in todo]
        for (net, step, shape), cache in zip(todo, self.he.choose_cached(specs), strict=True):
            self._layer(net, step, shape, cache)
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
        cap = max_job_slices(self.plans[spec.network], self.he_params.poly_degree, spec.height, spec.width)
        if spec.slices > cap:
            raise ProtocolError(
                f"job of {spec.slices} slices of {spec.height}x{spec.width} is over the {cap} that one job's "
                "flooding bound covers"
            )
        if not 1 <= spec.gc_window <= MAX_GC_WINDOW:
            raise MalformedMessage(f"garbled-circuit window {spec.gc_window} is outside 1..{MAX_GC_WINDOW}")
        if spec.gc_ot not in self.gc_ots:
            raise ProtocolError(
                f"the client asks for {spec.gc_ot[:20]!r} OT; this server offers {', '.join(self.gc_ots)}"
            )

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
        with from_client("public key"):
            hes = self.he.with_public_key(chan.recv("he_pk", limit=SETUP_BYTES))  # re-randomises results
        t.add("he", t0)
        t0 = time.perf_counter()
        with from_client("GC hello"):
            garbler = gc_pipeline.open_garbler(chan, spec.gc_ot)
        t.add("gc", t0)
        execute(plan, _ServerBackend(self, chan, spec, hes, garbler), spec.height, spec.width, on_step=_on_step(t))
        chan.send("done", b"")
        return t

    def _upload_bytes(self, layer: Any, batch: int) -> int:
        """The size of a well-formed HE upload of this layer (header, seed, then c0 of every ciphertext)."""
        prm = self.he_params
        return 256 + layer.plan.n_in_cts(batch) * he_wire.up_ct_bytes(prm.primes, prm.poly_degree)

    def _download_bytes(self, layer: Any, batch: int) -> int:
        prm, lp = self.he_params, layer.plan
        return (
            256
            + lp.n_out_cts(batch) * prm.poly_degree * ((prm.down_bits + 7) // 8)
            + batch * lp.n_returned * ((prm.down_c0_bits + 7) // 8)
        )

    def job_memory(self, spec: JobSpec) -> int:
        """An upper bound on the memory one job holds on the server beyond the shared model state.

        The peak of: the live shares (each tensor from the step that makes it to its last reader,
        ``last_reads``) twice over, for the copies a step makes (window rows, outputs), plus the
        largest step's own buffers: an HE step's upload, download, fresh mask and work arrays; a
        garbled-circuit step's messages in flight (PRE_AHEAD + 1 windows of pre-messages, a window of
        requests and of responses). Plus the silent-OT streams' rows and the transport's bounded
        queues. Call it for a spec that passed :meth:`check_spec` only (it reads the prepared filters
        of the spec's size)."""
        plan = self.plans[spec.network]
        shapes = plan.shapes(spec.height, spec.width)
        B = spec.slices
        size = {name: 8 * B * int(np.prod(shp)) for name, shp in shapes.items()}
        drops = last_reads(plan)
        live, peak_shares, peak_step = 0, 0, 0
        chunk = gc_pipeline.GC_CHUNK
        for idx, step in enumerate(plan.steps):
            out = sum(size.get(name, 0) for name in step.outs)
            live += out
            peak_shares = max(peak_shares, live)
            in_shape = shapes[step.inputs[0]] if step.inputs else None
            if isinstance(step, Linear):
                layer = self._layer(spec.network, step, in_shape)
                tiles = self.he.max_chunk_tiles(layer.plan, B)
                work = sum(8 * int(np.prod(s)) for s in self.he._work_shapes(layer.plan, tiles))
                work += self.he.call_kernel_bytes(layer)
                step_bytes = self._upload_bytes(layer, B) + self._download_bytes(layer, B) + 2 * out + work
                peak_step = max(peak_step, step_bytes)
            elif isinstance(step, CircuitStep):
                # an op has at most one instance per input element: small jobs fill neither a chunk nor the window
                most = B * int(np.prod(in_shape)) if in_shape is not None else chunk
                n = max(1, min(chunk, most))
                win = min(spec.gc_window, -(-most // n))
                for op in step.gc_ops(plan.ring_bits, in_shape):
                    req, resp = op.message_sizes(n, ot_k=1)
                    inflight = (gc_pipeline.PRE_AHEAD + 1) * win * op.pre_size(n, ot_k=1) + win * (req + resp)
                    for j in range(op.link_passes):  # a chained op's link passes come first, one at a time
                        lpre, lreq = op.link_pre_size(n, j, ot_k=1), op.link_req_size(n, j)
                        inflight = max(inflight, (gc_pipeline.PRE_AHEAD + 1) * win * lpre + win * lreq)
                    peak_step = max(peak_step, inflight + op.post_size(n))
            live -= sum(size.get(name, 0) for name in drops.get(idx, ()))
        ot_bytes = gc.silent.party_bytes() if spec.gc_ot == "silent" else 0
        return 2 * peak_shares + peak_step + ot_bytes + TRANSPORT_BYTES

    def _message_cap(self, spec: JobSpec, plan: Plan, shapes: dict[str, Shape]) -> int:
        """The largest message a well-behaved client sends in this job, plus 1 MiB: HE uploads of
        the job's slices, GC requests of a full chunk with the costliest OT extension (IKNP)."""
        biggest = 1 << 20  # job spec, public key, GC hello: well below
        for step in plan.steps:
            in_shape = shapes[step.inputs[0]] if step.inputs else None
            if isinstance(step, Linear):
                biggest = max(biggest, self._upload_bytes(self._layer(spec.network, step, in_shape), spec.slices))
            elif isinstance(step, CircuitStep):
                ops = step.gc_ops(plan.ring_bits, in_shape)
                biggest = max(biggest, *(op.message_sizes(gc_pipeline.GC_CHUNK, ot_k=1)[0] for op in ops))
        return biggest + (1 << 20)


class ClientProtocol:
    """The hospital's half: knows the public architecture and its own secret key, never weights."""

    def __init__(self, description: dict[str, Any]) -> None:
        self.model = Model.from_header(description["model"])
        shapes = self.model.weight_shapes()
        self.plans = {
            k: compile_plan(n, self.model.quantization, {s: tuple(v) for s, v in shapes[k].items()})
            for k, n in self.model.networks.items()
        }
        self.he_params = he.HEParams.from_bytes(bytes.fromhex(description["he_params"]))
        self.he_params.validate()
        self._gc_pool = ThreadPoolExecutor(GC_THREADS, thread_name_prefix="evaluate")  # shared by all jobs
        self.gc_window = GC_WINDOW  # announced in each job's spec; the server follows it
        offered = description.get("gc_ots", [gc.DEFAULT_OT])
        # likewise: the job's correlated-OT backend, the default unless the server does not offer it
        self.gc_ot = gc.DEFAULT_OT if gc.DEFAULT_OT in offered else str(offered[0])

    def max_job_slices(self, network: str, height: int, width: int) -> int:
        """The most slices of this size the server accepts in one job (the flooding bound)."""
        return max_job_slices(self.plans[network], self.he_params.poly_degree, height, width)

    def run_job(
        self,
        chan: Channel,
        network: str,
        x: np.ndarray,
        progress: Progress | None = None,
        gc_window: int | None = None,
    ) -> tuple[np.ndarray, Timings]:
        """Segment a batch of preprocessed slices x (B, C, H, W) float in [0, 1] -> labels (B, H, W);
        ``gc_window``: this job's window instead of ``self.gc_window``."""
        plan = self.plans[network]
        B, C, H, W = x.shape
        t = Timings()
        window = self.gc_window if gc_window is None else gc_window
        chan.send("job", JobSpec(network, B, H, W, window, gc_ot=self.gc_ot).to_bytes())
        t0 = time.perf_counter()
        hec = he.ClientHE(self.he_params)  # a key pair per job: jobs are unlinkable by key; the secret stays here
        chan.send("he_pk", hec.public_key())
        ev = gc_pipeline.open_evaluator(chan, ot=self.gc_ot)
        backend = _ClientBackend(self, chan, hec, x, plan.frac_bits, plan.ring_bits, ev, window)
        t.add("gc", t0)
        out = execute(plan, backend, H, W, on_step=_on_step(t, progress))
        chan.recv("done")
        return out[plan.output], t
