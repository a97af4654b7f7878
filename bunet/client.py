"""``bunet.Client``: the hospital's side — a scan in, a lesion mask out, the scan never leaving
in the clear. Cuts the volume into slices along the requested planes, runs secure jobs (two at a
time, one per core), puts the slices back together and fuses the planes."""

from __future__ import annotations

import itertools
import json
import math
import random
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import volume
from .protocol.channel import ProtocolError
from .protocol.session import GC_WINDOW_SMALL, ClientProtocol
from .service.transport import NotAllowed, StubClient, TransportError, job_failure, open_channel, rpc_error_message

RETRY_FOR_S = 600.0  # how long a job refused for a busy server is retried (with backoff) before giving up
PLAIN_EVAL_BYTES = 2 << 20  # pixels per plaintext-evaluation request: within the server's 2 MiB message cap


def _addresses(address: str) -> list[str]:
    """'a:1,b:2' -> ['a:1', 'b:2'] (a DNS name with several addresses is one entry: gRPC spreads
    its calls over them)."""
    out = [a.strip() for a in address.split(",") if a.strip()]
    if not out:
        raise ValueError("no server address given")
    return out


def _resolved(address: str) -> int:
    """How many machines a HOST:PORT names (a DNS name may resolve to several; gRPC's round robin
    then spreads the calls, and a retried job lands on the next one)."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        return 1
    family = infos[0][0] if infos else None  # localhost's IPv4 and IPv6 addresses are one machine
    return max(1, len({i[4][0] for i in infos if i[0] == family}))


def _on_this_machine(addresses: list[str]) -> bool:
    """Whether every address is a loopback one (the embedded server, or a server on this host)."""
    import ipaddress
    import socket

    for a in addresses:
        host, _, port = a.rpartition(":")
        try:
            infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError):
            return False
        if not infos or not all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos):
            return False
    return True


def _too_big(code: Any, retry_after: float | None) -> bool:
    """Whether the server refused a job as larger than it allows one job (not busy: no retry hint)."""
    import grpc

    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is None


def _server_failed(e: ProtocolError, code: Any, retry_after: float | None) -> bool:
    """Whether a job's failure is its server's (try another) rather than the job's own."""
    import grpc

    from .protocol.channel import DeadlineExceeded

    if isinstance(e, DeadlineExceeded):
        return True  # stalled
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return retry_after is not None  # busy, not too big (_too_big)
    return code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
    )


class ClientError(RuntimeError):
    """Anything that stops a segmentation, as one line for the user."""


@dataclass
class Summary:
    slices: dict[str, int] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # per phase, summed over jobs
    wall_s: float = 0.0
    jobs: int = 0

    def add_phase(self, phase: str, s: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + s

    def lines(self) -> list[str]:
        n = sum(self.slices.values())
        per = ", ".join(f"{p}: {c}" for p, c in self.slices.items())
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(self.seconds.items()))
        return [
            f"slices: {n} ({per}) in {self.jobs} secure jobs",
            f"traffic: {self.bytes_up / 1e6:.1f} MB up, {self.bytes_down / 1e6:.1f} MB down",
            f"time: {self.wall_s:.1f}s wall; client-side phases (summed over parallel jobs): {phases}",
        ]


@dataclass
class Result:
    labels: np.ndarray  # fused label volume in the scan's canonical orientation
    scan: volume.Scan
    per_plane: dict[str, np.ndarray]
    summary: Summary


class Client:
    """Connects to a BUNET server (``address``) or, with ``address=None``, starts an embedded
    local server with the bundled (or given) model."""

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        tls: bool = False,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        model: str | Path | None = None,
        lanes: int = 2,
        max_batch: int = 16,
        status: Callable[[str], None] | None = None,
        allow_plain_eval: bool = False,
        ot: str | None = None,
        insecure: bool = False,
    ) -> None:
        if address is not None and token and not (tls or ca or cert) and not insecure:
            raise ClientError(
                "refusing to send the access token over plaintext gRPC: use TLS (--tls or --ca), "
                "or --insecure on a trusted network"
            )
        self._embedded = None
        self.status = status  # told about waits: the server's queue, retries
        self.client_id = secrets.token_hex(8)  # groups this client's parallel streams at the server
        if address is None:
            from .server import Server

            self._embedded = Server(model, "127.0.0.1:0", max_sessions=lanes, allow_plain_eval=allow_plain_eval).start()
            address, token, tls = self._embedded.address, None, False
        self.address = address
        self.servers: list[StubClient] = []
        try:
            description = self._connect(_addresses(address), token, tls, ca, cert, key)
        except (TransportError, ValueError) as e:
            self.close()
            raise ClientError(str(e)) from None
        self.stub = self.servers[0]
        self.max_slices = min(self._max_slices) or max_batch
        self.server_limits = description.get("limits", {})
        self.protocol = ClientProtocol(description)
        if ot is None and _on_this_machine(_addresses(address)) and "softspoken" in description.get("gc_ots", ()):
            # bytes are free on loopback and both parties share this machine's cores: SoftSpoken's
            # 4 bytes per OT cost less time here than silent OT's extra CPU
            ot = "softspoken"
        if ot is not None:  # the correlated-OT backend of this client's jobs (default: the protocol's choice)
            self.protocol.gc_ot = ot
        self.model = self.protocol.model
        self.lanes = max(1, lanes)
        self.max_batch = max(1, min(max_batch, self.max_slices))

    def _connect(
        self, addresses: list[str], token: str | None, tls: bool, ca: str | None, cert: str | None, key: str | None
    ) -> dict[str, Any]:
        """Describe every server; they must serve the same model with the same HE parameters."""
        first: dict[str, Any] | None = None
        self._max_slices: list[int] = []
        for a in addresses:
            stub = StubClient(open_channel(a, tls=tls, ca=ca, cert=cert, key=key), a, token)
            self.servers.append(stub)
            reply = stub.describe()
            d = json.loads(reply.description_json)
            if first is None:
                first = d
            elif (d.get("model"), d.get("he_params")) != (first.get("model"), first.get("he_params")):
                raise ValueError(f"the server at {a} serves another model than {addresses[0]}")
            self._max_slices.append(int(reply.max_slices_per_job))
        assert first is not None
        self._spread = sum(_resolved(a) for a in addresses)  # machines a failed job may move to
        self._down: dict[int, float] = {}  # server index -> when it may be tried again
        self._turn = itertools.count()
        return first

    def _pick(self, turn: int) -> int:
        """The server for a job's attempt: round robin over the servers not marked down."""
        now = time.monotonic()
        n = len(self.servers)
        for k in range(n):
            i = (turn + k) % n
            if self._down.get(i, 0.0) <= now:
                return i
        return turn % n  # all marked down: try anyway

    # ---------------------------------------------------------------------------------------
    def segment_slices(
        self,
        x: np.ndarray,
        plane: str = "xy",
        progress: Callable[[int], None] | None = None,
        summary: Summary | None = None,
    ) -> np.ndarray:
        """Secure labels for preprocessed slices x (n, C, H, W) in [0, 1] at the model's input size."""
        network = self.model.plane_networks.get(plane)
        if network is None:
            raise ClientError(f"the model does not serve plane {plane} (it serves {', '.join(self.model.planes)})")
        batches = self._batches(len(x), network, x.shape[-2:])
        summary = summary or Summary()
        lock = threading.Lock()

        failed = threading.Event()
        active: set[Any] = set()
        first_error: list[BaseException] = []

        def one(sl: slice) -> np.ndarray:
            if failed.is_set():
                raise ClientError("another job of this scan failed")
            try:
                chan, labels, t = self._job(network, x[sl], progress, active, lock)
            except BaseException as e:
                failed.set()
                with lock:
                    if not first_error:
                        first_error.append(e)
                    for other in active:  # a failed job ends the scan: the others stop now, not at their end
                        other.abort("another job of this scan failed")
                raise
            with lock:
                summary.bytes_up += chan.traffic.sent
                summary.bytes_down += chan.traffic.received
                summary.jobs += 1
                for k, v in t.seconds.items():
                    summary.add_phase(k, v)
            return labels

        pool = ThreadPoolExecutor(self.lanes)
        try:
            outs = list(pool.map(one, batches))
        except BaseException as e:
            pool.shutdown(wait=True, cancel_futures=True)  # the jobs not yet started are dropped
            raise (first_error[0] if first_error else e) from None
        pool.shutdown()
        return np.concatenate(outs)

    def _job(
        self,
        network: str,
        x: np.ndarray,
        progress: Callable[[int], None] | None,
        active: set[Any],
        lock: threading.Lock,
    ) -> tuple[Any, np.ndarray, Any]:
        """One secure job. A busy server's refusal (it says when to retry) is retried with backoff;
        with several servers, a job whose server fails (unreachable, stalled, crashed, busy) moves
        to the next one and starts again there: nothing of the scan is lost or revealed."""
        give_up = time.monotonic() + RETRY_FOR_S
        backoff = 1.0
        turn = next(self._turn)
        moves = 0
        window = self.protocol.gc_window
        while True:
            idx = self._pick(turn + moves)
            stub = self.servers[idx]
            chan, finish = stub.job(self.client_id, self._deadline_s(x), self._notice)
            with lock:
                active.add(chan)
            done = [0]

            def counted(k: int, done: list[int] = done) -> None:
                done[0] += k
                if progress:
                    progress(k)

            try:
                labels, t = self.protocol.run_job(chan, network, x, counted, gc_window=window)
                return chan, labels, t
            except ProtocolError as e:
                finish()
                if chan.aborted:  # ended on purpose (another job of the scan failed)
                    raise ClientError(str(e)) from None
                code, retry_after = job_failure(chan)
                if _too_big(code, retry_after) and window > GC_WINDOW_SMALL:
                    # refused before any work: fewer chunks in flight need less of the server's memory
                    window = GC_WINDOW_SMALL
                    if progress and done[0]:
                        progress(-done[0])
                    if self.status:
                        self.status(f"{self._failure(e, chan, stub.address)}; trying with fewer messages in flight")
                    continue
                if self._spread > 1 and moves < 3 * self._spread and _server_failed(e, code, retry_after):
                    self._down[idx] = time.monotonic() + (retry_after or 60.0)
                    if progress and done[0]:
                        progress(-done[0])  # the job starts again elsewhere
                    moves += 1
                    if self.status:
                        nxt = self.servers[self._pick(turn + moves)].address
                        self.status(f"{self._failure(e, chan, stub.address)}; moving the job to {nxt}")
                    continue
                wait = None if retry_after is None else max(retry_after, backoff) * random.uniform(1.0, 1.5)
                if wait is None or time.monotonic() + wait > give_up:
                    raise ClientError(self._failure(e, chan, stub.address)) from None
                if self.status:
                    self.status(f"server busy, retrying in {wait:.0f} s")
                time.sleep(wait)
                backoff = min(60.0, backoff * 2)
            finally:
                with lock:
                    active.discard(chan)
                finish()

    def _deadline_s(self, x: np.ndarray) -> float | None:
        """The whole call's deadline: the server's own for the job, plus its longest queue wait."""
        lim = self.server_limits
        if "deadline_s_per_mpixel" not in lim:
            return None
        n, _, h, w = x.shape
        return float(lim["deadline_base_s"]) + float(lim["deadline_s_per_mpixel"]) * n * h * w / 1e6 + 1800.0 + 60.0

    def _notice(self, kind: str, text: str) -> None:
        if kind == "queue" and self.status:
            self.status(f"waiting for the server: place {text} in its queue")

    def _failure(self, e: ProtocolError, chan: Any, address: str | None = None) -> str:
        import grpc

        from .protocol.channel import DeadlineExceeded

        address = address or self.address
        if isinstance(e, DeadlineExceeded):
            return f"the server at {address} stopped answering: {e}"
        if isinstance(chan.peer_error, grpc.RpcError):
            return f"secure session failed: {rpc_error_message(chan.peer_error, address)}"
        return f"secure session failed: {e}"

    def plain_labels(self, x: np.ndarray, plane: str = "xy") -> tuple[np.ndarray, np.ndarray]:
        """The server's plaintext float and fixed-point labels of slices x (n, C, H, W), sent in the
        clear; only for public validation data. Raises NotAllowed when the server does not offer it."""
        from . import plain_eval

        network = self.model.plane_networks[plane]
        per = max(1, min(self.max_slices, PLAIN_EVAL_BYTES // max(1, x[0].size * plain_eval.PIXEL_DTYPE.itemsize)))
        fl, fx = [], []
        for i in range(0, len(x), per):
            part = x[i : i + per]
            try:
                reply = self.stub.plain_eval(plain_eval.request(network, part))
                a, b = plain_eval.labels(reply, (len(part), *part.shape[2:]))
            except NotAllowed:
                raise
            except (TransportError, ValueError) as e:
                raise ClientError(str(e)) from None
            fl.append(a)
            fx.append(b)
        return np.concatenate(fl), np.concatenate(fx)

    @staticmethod
    def roi_slices(s: volume.Scan, plane: str, roi: np.ndarray | None) -> np.ndarray:
        """Indices of the slices along ``plane`` that cut ``roi`` (all of them without one)."""
        if roi is None:
            return np.arange(volume.to_slices(s.hu, plane).shape[0])
        return np.flatnonzero(volume.to_slices(roi, plane).any(axis=(1, 2)))

    def plane_inputs(
        self, s: volume.Scan, plane: str, which: np.ndarray | None = None
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """The network input (n, 1, H, W) of the scan's slices along ``plane`` (only those at
        indices ``which`` when given), and their own size."""
        pp = self.model.preprocessing
        st = volume.to_slices(s.hu, plane)
        if which is not None:
            st = st[which]
        if self.model.network(plane).graph.input.attrs.get("channels", 1) != 1:
            raise ClientError("the model expects multi-channel slices; BUNET scans give one channel")
        return volume.resize_stack(pp.apply(st), tuple(pp.input_size))[:, None].astype(np.float32), st.shape[1:]

    @staticmethod
    def plane_volume(labels: np.ndarray, size: tuple[int, int], plane: str) -> np.ndarray:
        """Labels (n, H, W) at model resolution -> a canonical label volume (inverse of plane_inputs)."""
        return volume.from_slices(volume.resize_stack(labels.astype(np.uint8), size, labels=True), plane)

    def steps_per_job(self, plane: str) -> int:
        return len(self.protocol.plans[self.model.plane_networks[plane]].steps)

    def segment(
        self,
        scan: str | Path | volume.Scan,
        planes: list[str] | None = None,
        fusion: str = "majority",
        progress: Callable[[int, int], None] | None = None,
        roi: np.ndarray | None = None,
    ) -> Result:
        """Segment a NIfTI file (or a loaded Scan): per-plane secure labels, fused.

        ``roi`` (canonical, boolean): only slices that cut it are sent; the others are background.
        """
        t_start = time.perf_counter()
        try:
            s = scan if isinstance(scan, volume.Scan) else volume.load_scan(scan)
        except volume.ScanError as e:
            raise ClientError(str(e)) from None
        planes = planes or self.model.planes
        for p in planes:
            if p not in volume.PLANES:
                raise ClientError(f"unknown plane {p!r}; use xy, yz, xz")
            if p not in self.model.plane_networks:
                raise ClientError(f"the model does not serve plane {p} (it serves {', '.join(self.model.planes)})")
        pp = self.model.preprocessing
        summary = Summary()
        sent = {p: self.roi_slices(s, p, roi) for p in planes}
        inputs = {p: self.plane_inputs(s, p, sent[p]) for p in planes}
        per_plane: dict[str, np.ndarray] = {}
        done = [0]
        total_steps = sum(
            len(self._batches(len(x), self.model.plane_networks[p], x.shape[-2:])) * self.steps_per_job(p)
            for p, (x, _) in inputs.items()
        )

        def tick(k: int) -> None:
            done[0] += k
            if progress:
                progress(done[0], total_steps)

        for p, (x, size) in inputs.items():
            lab = np.zeros((volume.to_slices(s.hu, p).shape[0], *x.shape[2:]), dtype=np.uint8)
            if len(x):
                lab[sent[p]] = self.segment_slices(x, p, tick, summary)
            per_plane[p] = self.plane_volume(lab, size, p)
            summary.slices[p] = len(x)
        try:
            fused = volume.fuse(per_plane, fusion, classes=len(pp.classes))
        except ValueError as e:
            raise ClientError(str(e)) from None
        summary.wall_s = time.perf_counter() - t_start
        return Result(fused, s, per_plane, summary)

    def _batches(self, n: int, network: str, size: tuple[int, ...]) -> list[slice]:
        """Slices per secure job: spread over the lanes, at most ``max_batch`` each and at most what
        one job's flooding bound covers at this slice size."""
        cap = self.protocol.max_job_slices(network, int(size[0]), int(size[1]))
        per_job = max(1, min(self.max_batch, cap, math.ceil(n / self.lanes)))
        return [slice(i, min(i + per_job, n)) for i in range(0, n, per_job)]

    def close(self) -> None:
        for stub in getattr(self, "servers", ()):
            stub.close()
        self.servers = []
        if self._embedded is not None:
            self._embedded.stop(grace=1.0)
            self._embedded = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
