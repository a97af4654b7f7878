"""``bunet.Client``: the hospital's side — a scan in, a lesion mask out, the scan never leaving
in the clear. Cuts the volume into slices along the requested planes, runs secure jobs (two at a
time, one per core), puts the slices back together and fuses the planes."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import volume
from .protocol.channel import ProtocolError
from .protocol.session import ClientProtocol
from .service.transport import StubClient, TransportError, open_channel


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

    def __init__(self, address: str | None = None, *, token: str | None = None, tls: bool = False,
                 ca: str | None = None, cert: str | None = None, key: str | None = None,
                 model: str | Path | None = None, lanes: int = 2, max_batch: int = 16) -> None:
        self._embedded = None
        if address is None:
            from .server import Server

            self._embedded = Server(model, "127.0.0.1:0", max_sessions=lanes).start()
            address, token, tls = self._embedded.address, None, False
        self.address = address
        try:
            self.stub = StubClient(open_channel(address, tls=tls, ca=ca, cert=cert, key=key), address, token)
            reply = self.stub.describe()
        except (TransportError, ValueError) as e:
            self.close()
            raise ClientError(str(e)) from None
        self.max_slices = int(reply.max_slices_per_job) or max_batch
        self.protocol = ClientProtocol(json.loads(reply.description_json))
        self.model = self.protocol.model
        self.lanes = max(1, lanes)
        self.max_batch = max(1, min(max_batch, self.max_slices))

    # ---------------------------------------------------------------------------------------
    def segment_slices(self, x: np.ndarray, plane: str = "xy",
                       progress: Callable[[int], None] | None = None, summary: Summary | None = None) -> np.ndarray:
        """Secure labels for preprocessed slices x (n, C, H, W) in [0, 1] at the model's input size."""
        network = self.model.plane_networks.get(plane)
        if network is None:
            raise ClientError(f"the model does not serve plane {plane} (it serves {', '.join(self.model.planes)})")
        batches = self._batches(len(x))
        summary = summary or Summary()
        lock = threading.Lock()

        def one(sl: slice) -> np.ndarray:
            chan, finish = self.stub.job()
            try:
                labels, t = self.protocol.run_job(chan, network, x[sl], progress)
            except ProtocolError as e:
                raise ClientError(f"secure session failed: {e}") from None
            finally:
                finish()
            with lock:
                summary.bytes_up += chan.traffic.sent
                summary.bytes_down += chan.traffic.received
                summary.jobs += 1
                for k, v in t.seconds.items():
                    summary.add_phase(k, v)
            return labels

        with ThreadPoolExecutor(self.lanes) as pool:
            outs = list(pool.map(one, batches))
        return np.concatenate(outs)

    def steps_per_job(self, plane: str) -> int:
        return len(self.protocol.plans[self.model.plane_networks[plane]].steps)

    def segment(self, scan: str | Path | volume.Scan, planes: list[str] | None = None, fusion: str = "majority",
                progress: Callable[[int, int], None] | None = None, roi: np.ndarray | None = None) -> Result:
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
        size = tuple(pp.input_size)
        summary = Summary()
        stacks = {p: volume.to_slices(s.hu, p) for p in planes}
        sent = {p: np.arange(len(st)) if roi is None else np.flatnonzero(volume.to_slices(roi, p).any(axis=(1, 2)))
                for p, st in stacks.items()}
        per_plane: dict[str, np.ndarray] = {}
        done = [0]
        total_steps = sum(len(self._batches(len(sent[p]))) * self.steps_per_job(p) for p in stacks)

        def tick(k: int) -> None:
            done[0] += k
            if progress:
                progress(done[0], total_steps)

        for p, st in stacks.items():
            if self.model.network(p).graph.input.attrs.get("channels", 1) != 1:
                raise ClientError("the model expects multi-channel slices; BUNET scans give one channel")
            lab = np.zeros(st.shape, dtype=np.uint8)
            if len(sent[p]):
                x = volume.resize_stack(pp.apply(st[sent[p]]), size)[:, None].astype(np.float32)
                lab[sent[p]] = volume.resize_stack(self.segment_slices(x, p, tick, summary).astype(np.uint8),
                                                   st.shape[1:], labels=True)
            per_plane[p] = volume.from_slices(lab, p)
            summary.slices[p] = len(sent[p])
        try:
            fused = volume.fuse(per_plane, fusion, classes=len(pp.classes))
        except ValueError as e:
            raise ClientError(str(e)) from None
        summary.wall_s = time.perf_counter() - t_start
        return Result(fused, s, per_plane, summary)

    def _batches(self, n: int) -> list[slice]:
        """Slices per secure job: spread over the lanes, at most ``max_batch`` each."""
        per_job = max(1, min(self.max_batch, math.ceil(n / self.lanes)))
        return [slice(i, min(i + per_job, n)) for i in range(0, n, per_job)]

    def close(self) -> None:
        if getattr(self, "stub", None) is not None:
            self.stub.close()
        if self._embedded is not None:
            self._embedded.stop(grace=1.0)
            self._embedded = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
