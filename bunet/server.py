"""``bunet.Server``: the vendor's endpoint — a model behind the secure protocol behind gRPC."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .model.format import Model
from .protocol.channel import Channel
from .protocol.session import Limits, ServerProtocol
from .service.transport import GrpcServer, SegmentationServicer, ServerLimits

log = logging.getLogger("bunet.server")


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


class Server:
    """Serve one model. ``Server(model).start()`` listens; ``stop()`` shuts down gracefully.

    The model's HomConv filters are prepared once and shared by all sessions; each session gets
    its own garbled-circuit keys and runs in its own thread, and a failing session only ends
    itself.
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
        max_slices: int = 256,
        idle_timeout_s: float = 300.0,
    ) -> None:
        if model is None:
            model = bundled_model_path()
        self.model = model if isinstance(model, Model) else Model.load(model)
        self.protocol = ServerProtocol(self.model)
        self.protocol.prepare(*self.model.preprocessing.input_size)  # filters once, before any job
        self.job_limits = Limits(max_slices=max_slices)
        servicer = SegmentationServicer(
            json.dumps(self.protocol.describe()),
            self._run_job,
            ServerLimits(max_sessions=max_sessions, idle_timeout_s=idle_timeout_s),
            token,
            max_slices,
        )
        self.grpc = GrpcServer(
            listen, servicer, tls_cert=tls_cert, tls_key=tls_key, client_ca=client_ca, workers=max_sessions + 4
        )
        host = listen.rsplit(":", 1)[0]
        self.address = f"{host}:{self.grpc.port}"

    def _run_job(self, chan: Channel) -> None:
        t = self.protocol.run_job(chan, self.job_limits)
        log.info(
            "job done: %d bytes in, %d bytes out, %s",
            chan.traffic.received,
            chan.traffic.sent,
            ", ".join(f"{k} {v:.2f}s" for k, v in t.seconds.items()),
        )

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
