"""Transport benchmark: bytes through the product's gRPC path (StreamChannel over a Run stream)
between two processes on localhost, and the CPU both spend per GB.

    python bench/transport.py [--gb 4] [--up-mb 2] [--down-mb 8] [--window 4] [--tls | --unix]
                              [--frame-bytes N] [--tuning '[["grpc.option", value], ...]']

The server is a real GrpcServer (SegmentationServicer) in its own process whose job handler
answers every ``up`` message with a bigger ``down`` message (like garbled-circuit requests and
their tables), with up to ``--window`` requests in flight, so both directions are busy at once.
Payloads are made once before timing; what is measured is moving them. CPU seconds are each
process's own (all threads: Python, gRPC core, polling), from the first message to the last.
Prints JSON: gb_per_s and cpu_s_per_gb count the bytes of both directions together.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bunet.service import transport  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _payload(nbytes: int) -> bytes:
    block = os.urandom(1 << 16)  # incompressible, cheap to make
    return (block * (nbytes // len(block) + 1))[:nbytes]


def _job(chan: transport.StreamChannel) -> None:
    """Server side: job spec, then ``n`` ups each answered by a down, then the CPU report."""
    chan.max_message = 1 << 40
    spec = json.loads(chan.recv("job"))
    down = _payload(spec["down"])
    chan.send("ready", b"")
    cpu0, wall0 = _cpu(), time.perf_counter()
    for _ in range(spec["n"]):
        if len(chan.recv("up")) != spec["up"]:
            raise RuntimeError("short up message")
        chan.send("down", down)
    chan.recv("done")
    chan.send("cpu", json.dumps({"cpu_s": _cpu() - cpu0, "wall_s": time.perf_counter() - wall0}).encode())


def _tls_files(tmp: Path) -> tuple[str, str]:
    from tests.devcert import self_signed

    return self_signed(tmp)


def _apply_overrides(args: argparse.Namespace) -> None:
    if args.frame_bytes:
        transport.FRAME_BYTES = args.frame_bytes
    if args.tuning is not None:
        transport.GRPC_TUNING[:] = [tuple(kv) for kv in json.loads(args.tuning)]


def serve(args: argparse.Namespace) -> None:
    _apply_overrides(args)
    servicer = transport.SegmentationServicer("{}", _job, transport.ServerLimits(max_sessions=1), None, 1)
    srv = transport.GrpcServer(args.listen, servicer, tls_cert=args.cert, tls_key=args.key).start()
    print("serving", flush=True)
    srv.wait()


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, tmp: Path) -> dict:
    _apply_overrides(args)
    if args.unix:
        address = f"unix:{tmp / 'bench.sock'}"
    else:
        address = f"{'localhost' if args.tls else '127.0.0.1'}:{_free_port()}"
    cmd = [sys.executable, __file__, "--serve", "--listen", address]
    if args.frame_bytes:
        cmd += ["--frame-bytes", str(args.frame_bytes)]
    if args.tuning is not None:
        cmd += ["--tuning", args.tuning]
    cert = None
    if args.tls:
        cert, key = _tls_files(tmp)
        cmd += ["--cert", cert, "--key", key]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        if "serving" not in (proc.stdout.readline() if proc.stdout else ""):
            raise RuntimeError("benchmark server did not start")
        up_b, down_b = int(args.up_mb * 2**20), int(args.down_mb * 2**20)
        n = max(1, round(args.gb * 1e9 / (up_b + down_b)))
        stub = transport.StubClient(transport.open_channel(address, tls=args.tls, ca=cert), address)
        up = _payload(up_b)
        chan, finish = stub.job()
        chan.max_message = 1 << 40
        chan.send("job", json.dumps({"n": n, "up": up_b, "down": down_b}).encode())
        chan.recv("ready")
        if args.pid_file:
            Path(args.pid_file).write_text(f"{os.getpid()} {proc.pid}\n")
        cpu0, wall0 = _cpu(), time.perf_counter()
        sent = 0
        for i in range(n):
            while sent < n and sent < i + args.window:
                chan.send("up", up)
                sent += 1
            if len(chan.recv("down")) != down_b:
                raise RuntimeError("short down message")
        wall = time.perf_counter() - wall0
        cpu_client = _cpu() - cpu0
        chan.send("done", b"")
        server = json.loads(chan.recv("cpu"))
        finish()
        stub.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    gb = n * (up_b + down_b) / 1e9
    cpu = cpu_client + server["cpu_s"]
    return {
        "benchmark": "transport",
        "gb": round(gb, 3),
        "messages_each_way": n,
        "up_bytes": up_b,
        "down_bytes": down_b,
        "window": args.window,
        "tls": args.tls,
        "address": address.split(":")[0] if args.unix else "tcp loopback",
        "wall_s": round(wall, 3),
        "gb_per_s": round(gb / wall, 3),
        "cpu_s_client": round(cpu_client, 3),
        "cpu_s_server": round(server["cpu_s"], 3),
        "cpu_s_per_gb": round(cpu / gb, 3),
        "frame_bytes": transport.FRAME_BYTES,
        "grpc_tuning": transport.GRPC_TUNING,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "transport_module": transport.__file__,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=4.0, help="bytes to move, both directions together")
    ap.add_argument("--up-mb", type=float, default=2.0, help="client -> server message size (MiB)")
    ap.add_argument("--down-mb", type=float, default=8.0, help="server -> client answer size (MiB)")
    ap.add_argument("--window", type=int, default=4, help="requests in flight")
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--unix", action="store_true", help="a Unix domain socket instead of TCP loopback")
    ap.add_argument("--frame-bytes", type=int, default=0, help="override transport.FRAME_BYTES")
    ap.add_argument("--tuning", help="override transport.GRPC_TUNING, JSON list of [name, value]")
    ap.add_argument("--pid-file", help="write 'client_pid server_pid' here once timing starts (profiling)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--listen", help=argparse.SUPPRESS)
    ap.add_argument("--cert", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args)
    else:
        print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
