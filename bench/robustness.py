"""Server robustness figures: memory under abuse, concurrent clients, timeouts. Loopback only;
every loop is bounded in count and time. Prints JSON.

    python bench/robustness.py --out robustness.json [--budget 4G] [--clients 4]

* abuse: a server in its own process with ``--memory-budget``; 20 abusive streams at once (endless
  messages, trickles, silent streams, oversized frames, illegal job specs, and jobs of the largest
  legal size that the budget must queue or refuse), then a real job; the server's resident memory
  before, at its peak and after, against the budget;
* concurrency: ``--clients`` clients started together on the default settings, their times and
  whether every mask equals a lone run's;
* timeouts: how long a trickling stream keeps its session (``--idle-timeout 5``), and how long a
  client takes to report a stalled (SIGSTOP) server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from bunet.client import Client, ClientError  # noqa: E402
from bunet.protocol.session import JobSpec  # noqa: E402
from bunet.server import bundled_model_path  # noqa: E402
from bunet.service import frames  # noqa: E402
from bunet.service.admission import parse_bytes  # noqa: E402
from bunet.service.transport import StubClient, open_channel  # noqa: E402
from tests.serverproc import ServerProcess, vm  # noqa: E402


def _raw(address: str, gen, timeout: float = 120.0) -> str:
    stub = StubClient(open_channel(address), address)
    try:
        list(stub._run(gen, timeout=timeout))
        return "OK"
    except grpc.RpcError as e:
        return e.code().name
    finally:
        stub.close()


def _hostile(i: int, size: tuple[int, int]):
    """The i-th of 20 abusive streams."""
    h, w = size

    def spec(**kw) -> bytes:
        return json.dumps({**JobSpec("main", 1, h, w).__dict__, **kw}).encode()

    kind = i % 10
    if kind == 0:  # endless message after a legal request
        yield frames.encode("job", spec(), False)
        for _ in range(600):
            yield frames.encode("he_pk", bytes(1 << 20), True)
    elif kind == 1:  # trickle
        yield frames.encode("job", spec(), False)
        for _ in range(100):
            time.sleep(0.5)
            yield frames.encode("he_pk", b"\x01", True)
    elif kind == 2:  # silent
        time.sleep(40)
        yield frames.encode("job", spec(), False)
    elif kind == 3:  # one oversized gRPC message
        yield frames.encode("job", bytes(64 << 20), False)
    elif kind == 4:  # the largest legal job, whose planned memory the budget must hold or refuse
        yield frames.encode("job", spec(slices=256, gc_window=64), False)
        time.sleep(30)
    else:  # illegal job specs of every kind
        bad = [
            spec(slices=10**9),
            spec(height=1 << 20, width=1 << 20),
            spec(height=h + 1),
            spec(gc_window=10**6),
            spec(network="x" * 10_000),
            b"{" * 50_000,
        ]
        yield frames.encode("job", bad[kind - 5], False)


def abuse(budget: str) -> dict:
    srv = ServerProcess("--memory-budget", budget, "--idle-timeout", "10", "--max-slices", "256")
    size = (96, 96)
    out: dict = {"budget_bytes": parse_bytes(budget), "rss_start_bytes": vm(srv.proc.pid, "VmRSS")}
    try:
        codes: list[str] = []
        peak = [0]
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.05):
                peak[0] = max(peak[0], vm(srv.proc.pid, "VmRSS"))

        threading.Thread(target=watch, daemon=True).start()
        ts = [
            threading.Thread(target=lambda i=i: codes.append(_raw(srv.address, _hostile(i, size)))) for i in range(20)
        ]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        time.sleep(2)
        x = np.random.default_rng(0).random((16, 1, *size)).astype(np.float32)
        with Client(srv.address) as c:
            t1 = time.monotonic()
            c.segment_slices(x)
            out["real_job_during_abuse_s"] = round(time.monotonic() - t1, 2)
        for t in ts:
            t.join(timeout=180)
        out["abuse_s"] = round(time.monotonic() - t0, 1)
        stop.set()
        out["codes"] = {c: codes.count(c) for c in sorted(set(codes))}
        out["rss_peak_bytes"] = max(peak[0], 0)
        out["vm_hwm_bytes"] = vm(srv.proc.pid, "VmHWM")
        out["rss_after_bytes"] = vm(srv.proc.pid, "VmRSS")
        out["within_budget"] = out["vm_hwm_bytes"] <= out["budget_bytes"]
    finally:
        err = srv.stop()
    out["server_tracebacks"] = err.count("Traceback")
    return out


def concurrency(n: int) -> dict:
    srv = ServerProcess()
    try:
        x = np.random.default_rng(1).random((12, 1, 96, 96)).astype(np.float32)
        with Client(srv.address) as c:
            t0 = time.monotonic()
            alone = c.segment_slices(x)
            alone_s = time.monotonic() - t0
        times: dict[int, float] = {}
        same: dict[int, bool] = {}
        waited: dict[int, bool] = {}

        def one(i: int) -> None:
            said: list[str] = []
            t0 = time.monotonic()
            with Client(srv.address, status=said.append) as c:
                same[i] = bool(np.array_equal(c.segment_slices(x), alone))
            times[i] = round(time.monotonic() - t0, 2)
            waited[i] = any("queue" in s for s in said)

        ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=900)
        return {
            "clients": n,
            "alone_s": round(alone_s, 2),
            "times_s": [times.get(i) for i in range(n)],
            "all_finished": len(times) == n,
            "masks_equal_alone": all(same.values()) and len(same) == n,
            "told_queue_place": sum(waited.values()),
        }
    finally:
        srv.stop()


def timeouts() -> dict:
    srv = ServerProcess("--idle-timeout", "5")
    out: dict = {}
    try:

        def trickle():
            yield frames.encode("job", json.dumps(JobSpec("main", 1, 96, 96).__dict__).encode(), False)
            for _ in range(120):  # 60 s at most
                time.sleep(0.5)
                yield frames.encode("he_pk", b"\x01", True)

        t0 = time.monotonic()
        out["trickle_code"] = _raw(srv.address, trickle())
        out["trickle_session_lost_after_s"] = round(time.monotonic() - t0, 2)
        box: list[str] = []

        def job() -> None:
            try:
                with Client(srv.address, lanes=1) as c:
                    c.segment_slices(np.random.default_rng(2).random((64, 1, 96, 96)).astype(np.float32))
            except ClientError as e:
                box.append(str(e))

        t = threading.Thread(target=job)
        t.start()
        time.sleep(5)
        srv.proc.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        t.join(timeout=120)
        out["stalled_server_reported_after_s"] = round(time.monotonic() - t0, 2)
        out["stalled_server_error"] = box[0] if box else None
    finally:
        srv.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="4G")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--out")
    ap.add_argument("--only", choices=["abuse", "concurrency", "timeouts"])
    args = ap.parse_args()
    if not bundled_model_path().is_file():
        raise SystemExit("the bundled model is missing")
    res: dict = {"machine": {"cores": os.cpu_count()}}
    if args.only in (None, "abuse"):
        res["abuse"] = abuse(args.budget)
    if args.only in (None, "concurrency"):
        res["concurrency"] = concurrency(args.clients)
    if args.only in (None, "timeouts"):
        res["timeouts"] = timeouts()
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
