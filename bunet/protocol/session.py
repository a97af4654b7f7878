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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import gc, he, ring
from ..he import wire as he_wire
from ..model.executor import execute
from ..model.format import Model
from ..model.plan import Plan, compile_plan
from ..model.steps import CircuitStep, Input, Linear, Shape, Step
from . import gc_pipeline
from .channel import Channel, ProtocolError

# Requests in flight; the server garbles up to this many chunks at once. Each message crosses two
# transport threads and the network, so a deeper window hides that latency; a deeper one also holds
# more memory (the server makes pre-messages PRE_AHEAD + 1 windows ahead: 6.3 MB of OT rows per
# 16,384-ReLU chunk), and 8 kept the two cores about as busy as 16.
GC_WINDOW = 8
MAX_GC_WINDOW = 64  # the deepest window a server accepts (memory: PRE_AHEAD + 1 windows of pre-messages per job)
GC_THREADS = min(2, os.cpu_count() or 1)  # garbling / evaluation threads per party

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
            return JobSpec(str(d["network"]), int(d["slices"]), int(d["height"]), int(d["width"]), int(d["gc_window"]))
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


class _ServerBackend:
    """The server's side of each step of one job."""

    def __init__(self, srv: ServerProtocol, chan: Channel, spec: JobSpec, hes: Any, garbler: Any) -> None:
        self.srv, self.chan, self.spec, self.hes, self.garbler = srv, chan, spec, hes, garbler
        self.ring_bits = srv.model.quantization.ring_bits

    def input(self, step: Input, shape: Shape) -> np.ndarray:
        return np.zeros((self.spec.slices, *shape), dtype=np.uint64)  # the server's share is 0

    def linear(self, step: Linear, x: np.ndarray, in_shape: Shape) -> np.ndarray:
        layer = self.srv._layer(self.spec.network, step, in_shape)
        down, y_s = self.hes.apply(layer, self.chan.recv(f"he:{step.out}"), x)
        self.chan.send(f"he:{step.out}", down)
        return y_s

    def circuit(self, step: CircuitStep, rows: np.ndarray) -> np.ndarray | None:
        def run(op: Any, sub: str, r: np.ndarray) -> np.ndarray | None:
            tag = f"gc:{step.out}:{sub}"
            outs = gc_pipeline.garble(self.chan, self.garbler, self.srv._gc_pool, op, tag, r, self.spec.gc_window)
            return None if isinstance(op, gc.Argmax) else np.concatenate(outs)  # labels: client only

        return step.secure(run, rows, self.ring_bits)


class _ClientBackend:
    """The client's side of each step of one job."""

    def __init__(
        self, cli: ClientProtocol, chan: Channel, x: np.ndarray, frac_bits: int, ring_bits: int, ev: gc.Evaluator
    ) -> None:
        self.cli, self.chan, self.x, self.frac_bits, self.ring_bits, self.ev = cli, chan, x, frac_bits, ring_bits, ev
        self.window = cli.gc_window

    def input(self, step: Input, shape: Shape) -> np.ndarray:
        return ring.encode(self.x, self.frac_bits, self.ring_bits)

    def linear(self, step: Linear, x: np.ndarray, in_shape: Shape) -> np.ndarray:
        spec = layer_spec(step, in_shape)
        self.chan.send(f"he:{step.out}", self.cli.he.encrypt(spec, x))
        return self.cli.he.decrypt(spec, self.chan.recv(f"he:{step.out}"))

    def circuit(self, step: CircuitStep, rows: np.ndarray) -> np.ndarray | None:
        def run(op: Any, sub: str, r: np.ndarray) -> np.ndarray:
            tag = f"gc:{step.out}:{sub}"
            return np.concatenate(gc_pipeline.evaluate(self.chan, self.ev, self.cli._gc_pool, op, tag, r, self.window))

        return step.secure(run, rows, self.ring_bits)


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
        """Public description: the model header (no weights) and the HE parameters."""
        return {"model": self.model.header(), "he_params": self.he_params.to_bytes().hex()}

    def _layer(self, net: str, step: Linear, shape: Shape) -> Any:
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
                if isinstance(step, Linear):
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
        garbler = gc_pipeline.open_garbler(chan)
        t.add("gc", t0)
        execute(plan, _ServerBackend(self, chan, spec, hes, garbler), spec.height, spec.width, on_step=_on_step(t))
        chan.send("done", b"")
        return t

    def _message_cap(self, spec: JobSpec, plan: Plan, shapes: dict[str, Shape]) -> int:
        """The largest message a well-behaved client sends in this job, plus 1 MiB: HE uploads of
        the job's slices, GC requests of a full chunk with the costliest OT extension (IKNP)."""
        prm = self.he_params
        biggest = 1 << 20  # job spec, public key, GC hello: well below
        for step in plan.steps:
            in_shape = shapes[step.inputs[0]] if step.inputs else None
            if isinstance(step, Linear):
                cts = self._layer(spec.network, step, in_shape).plan.n_in_cts(spec.slices)
                biggest = max(biggest, cts * len(prm.primes) * prm.poly_degree * he_wire.RESIDUE_BYTES)
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
        self.he = he.ClientHE(self.he_params)  # generates the secret key; it never leaves this object
        self.public_key = self.he.public_key()
        self._gc_pool = ThreadPoolExecutor(GC_THREADS, thread_name_prefix="evaluate")  # shared by all jobs
        self.gc_window = GC_WINDOW  # announced in each job's spec; the server follows it

    def run_job(
        self, chan: Channel, network: str, x: np.ndarray, progress: Progress | None = None
    ) -> tuple[np.ndarray, Timings]:
        """Segment a batch of preprocessed slices x (B, C, H, W) float in [0, 1] -> labels (B, H, W)."""
        plan = self.plans[network]
        B, C, H, W = x.shape
        t = Timings()
        chan.send("job", JobSpec(network, B, H, W, self.gc_window).to_bytes())
        t0 = time.perf_counter()
        chan.send("he_pk", self.public_key)
        backend = _ClientBackend(self, chan, x, plan.frac_bits, plan.ring_bits, gc_pipeline.open_evaluator(chan))
        t.add("gc", t0)
        out = execute(plan, backend, H, W, on_step=_on_step(t, progress))
        chan.recv("done")
        return out[plan.output], t
