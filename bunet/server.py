"""``bunet.Server``: the vendor's endpoint — a model behind the secure protocol behind gRPC."""

from __future__ import annotations

import json
import logging
import resource
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from .model.format import Model
from .plain_eval import PlainEvaluator
from .protocol.session import JobSpec, Limits, ServerProtocol
from .service.admission import Admission, default_budget
from .service.transport import GrpcServer, SegmentationServicer, ServerLimits, Session, StreamChannel

log = logging.getLogger("bunet.server")

# Beyond what start-up measures: freed memory glibc may keep (bunet.heap.tune_malloc's trim
# threshold), and the buffers of streams that are open but not (yet) admitted.
HEAP_SLACK_BYTES = 512 << 20
STREAM_BYTES = 28 << 20  # a stream before admission: its inbound frames (INQ_FRAMES) and a few notices


def bundled_model_path() -> Path:
    """The model shipped with the package (trained by ``bunet.model.train``)."""
    from importlib import resources

    try:
        p = Path(str(resources.files("bunet.data") / "covid_unet.bunet"))
        if p.is_file():
            return p
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "data" / "covid_unet.bunet"


def _rss_bytes() -> int:
    """This process's resident memory now (Linux /proc; elsewhere its peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Server:
    """Serve one model. ``Server(model).start()`` listens; ``stop()`` shuts down gracefully.

    The model's HomConv filters are prepared once, at start-up, for every slice size the server
    serves (``slice_sizes``, default the model's input size), and shared by all sessions; each
    session gets its own garbled-circuit keys and runs in its own thread, and a failing session
    only ends itself. Every job is admitted against ``memory_budget`` (bytes; default three
    quarters of the host's memory) with its planned memory, after the prepared HomConv kernels
    (at most ``filter_cache_bytes``, default three quarters of the budget; the kernels beyond it are
    rebuilt in every call); ``max_sessions`` clients run at once
    (a client's parallel streams count as one), up to ``max_queue`` more wait their turn.
    """

    def __init__(
        self,
        model: Model | str | Path | None = None,
        listen: str = "127.0.0.1:0",
        *,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        client_ca: str | None = None,
        token: str | None = None,
        max_sessions: int = 2,
        max_queue: int = 16,
        max_slices: int = 256,
        idle_timeout_s: float = 120.0,
        memory_budget: int | None = None,
        filter_cache_bytes: int | None = None,
        slice_sizes: list[tuple[int, int]] | None = None,
        deadline_s_per_mpixel: float = 7200.0,
        max_streams_per_client: int = 4,
        allow_plain_eval: bool = False,
        ots: tuple[str, ...] | None = None,
        insecure: bool = False,
    ) -> None:
        if token and not tls_cert and not insecure:
            raise ValueError(
                "a token over plaintext gRPC can be read on the wire: give --tls-cert/--tls-key, "
                "or --insecure on a trusted network"
            )
        if model is None:
            model = bundled_model_path()
        self.model = model if isinstance(model, Model) else Model.load(model)
        budget = memory_budget or default_budget()
        # the HomConv kernels of every served size, in NTT form (a 512x512 seed U-Net at N = 8192
        # needs 13 GB; kernels that do not fit are rebuilt in every call, about twice the HE time)
        cache = (3 * budget) // 4 if filter_cache_bytes is None else filter_cache_bytes
        self.protocol = ServerProtocol(self.model, filter_cache_bytes=cache)
        if ots is not None:  # the correlated-OT backends jobs may ask for (default: all)
            self.protocol.gc_ots = ots
        sizes = tuple(dict.fromkeys([tuple(self.model.preprocessing.input_size), *(slice_sizes or [])]))
        for h, w in sizes:  # filters for every served size, before any job: the state is bounded by the list
            self.protocol.prepare(h, w)
        self.job_limits = Limits(
            max_slices=max_slices,
            slice_sizes=sizes,  # type: ignore[arg-type]
            deadline_s_per_mpixel=deadline_s_per_mpixel,
        )
        streams = max_sessions * max_streams_per_client + max_queue + 4
        self.admission = Admission(
            budget,
            _rss_bytes() + HEAP_SLACK_BYTES + streams * STREAM_BYTES,
            max_running=max_sessions,
            max_queue=max_queue,
            max_streams_per_client=max_streams_per_client,
        )
        self.transport_limits = ServerLimits(idle_timeout_s=idle_timeout_s, max_streams=streams)
        describe = {
            **self.protocol.describe(),
            "limits": {
                "slice_sizes": [list(s) for s in sizes],
                "max_slices": max_slices,
                "job_memory_bytes": self.admission.job_budget,
                "idle_timeout_s": idle_timeout_s,
                "deadline_base_s": self.job_limits.deadline_base_s,
                "deadline_s_per_mpixel": deadline_s_per_mpixel,
            },
        }
        # plaintext masks of slices sent in the clear: for public validation sets only, off by default
        self._plain = PlainEvaluator(self.model, self.protocol.plans, self.job_limits) if allow_plain_eval else None
        servicer = SegmentationServicer(
            json.dumps(describe),
            self._run_job,
            self.transport_limits,
            token,
            max_slices,
            self._plain_eval if allow_plain_eval else None,
        )
        self.grpc = GrpcServer(listen, servicer, tls_cert=tls_cert, tls_key=tls_key, client_ca=client_ca)
        host = listen.rsplit(":", 1)[0]
        self.address = f"{host}:{self.grpc.port}"

    def _run_job(self, chan: StreamChannel, session: Session) -> None:
        def admit(cost: int) -> AbstractContextManager[object]:
            return self._admitted(chan, session, cost)

        t = self.protocol.run_job(chan, self.job_limits, admit)
        log.info(
            "session %s done: %d bytes in, %d bytes out, %s",
            session.sid,
            chan.traffic.received,
            chan.traffic.sent,
            ", ".join(f"{k} {v:.2f}s" for k, v in t.seconds.items()),
        )

    @contextmanager
    def _admitted(self, chan: StreamChannel, session: Session, cost: int) -> Iterator[None]:
        """The job waits for its memory and turn; then messages may take the idle timeout each."""
        with self.admission.admit(
            session.client, cost, notify=lambda place: chan.notify("queue", str(place)), alive=lambda: not chan.aborted
        ):
            log.info("session %s admitted: %.1f MB planned", session.sid, cost / 1e6)
            chan.timeout = self.transport_limits.idle_timeout_s
            yield

    def _plain_eval(self, request: Any, session: Session) -> Any:
        """A plaintext evaluation request, admitted like a job of its size (served sizes only)."""
        assert self._plain is not None
        size = (request.height, request.width)
        if request.network not in self.protocol.plans or size not in (self.job_limits.slice_sizes or ()):
            raise ValueError(f"slice size {size[0]}x{size[1]} is not served or the network is unknown")
        if not 1 <= request.slices <= self.job_limits.max_slices:
            raise ValueError(
                f"request of {request.slices} slices is outside the server's limit of 1..{self.job_limits.max_slices}"
            )
        cost = self.protocol.job_memory(JobSpec(request.network, request.slices, *size))
        with self.admission.admit(session.client, cost):
            return self._plain(request)

    def start(self) -> Server:
        self.grpc.start()
        log.info("serving model %r on %s", self.model.name, self.address)
        return self

    def stop(self, grace: float = 5.0) -> None:
        self.grpc.stop(grace)

    def wait(self) -> None:
        self.grpc.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=1.0)
