"""End-to-end benchmark: secure segmentation over gRPC on localhost, server in its own process.

    python bench/e2e.py --out e2e.json [--sizes 128 256 512] [--skip-bundled] [--ot silent softspoken]
        [--link direct none 1gbit,10ms]

For the seed U-Net (16 base features, 4 poolings, 2 classes, random weights) at each size, and
the bundled model on the bundled sample scan: secure seconds per slice, the plaintext fixed-point
and float seconds per slice in the same run, bytes each way, and whether the secure mask equals
the fixed-point reference exactly, and the CPU seconds each party spent. Prints JSON.

``--link`` (one row per link and model/size): ``direct`` (the default) connects the client to the
server; ``none`` goes through the relay of bench/linkrelay.py unshaped (its own cost); ``RATE,RTT``
(``1gbit,10ms``, ``100mbit,40ms``) through the relay with a token bucket and RTT/2 of delay each way.
Rows carry ``link``, ``secure_s`` under it, ``rounds`` (the client's send -> receive turns per
slice, ``bunet.protocol.channel.Traffic.turns``) and bytes per protocol phase each way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLIs do (the server subprocess inherits it)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bunet import volume  # noqa: E402
from bunet.client import Client  # noqa: E402
from bunet.model import reference  # noqa: E402
from bunet.model.format import Model  # noqa: E402
from bunet.model.plan import compile_plan  # noqa: E402
from bunet.server import bundled_model_path  # noqa: E402
from tests.seed_unet import seed_unet_model  # noqa: E402
from tests.serverproc import ServerProcess  # noqa: E402


class RelayProcess:
    """bench/linkrelay.py in its own process (it would contend for the client's GIL in this one);
    it stops when its stdin closes, so it cannot outlive this benchmark."""

    def __init__(self, target: str, link: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "linkrelay.py"), "--target", target, "--link", link],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"link relay did not start: {line!r}")
        self.address = line.split()[1]

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _plain(model: Model, x: np.ndarray, plane: str = "xy") -> dict:
    """The plaintext fixed-point reference's labels and seconds, and the float model's seconds."""
    net = model.network(plane)
    plan = compile_plan(net, model.quantization)
    t0 = time.perf_counter()
    ref = reference.run_plan(plan, x)
    plain_fixed = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference.float_labels(net, x)
    return {"ref": ref, "plan": plan, "fixed_s": plain_fixed, "float_s": time.perf_counter() - t0}


def _measure(
    model_path: Path, x: np.ndarray, plain: dict, link: str = "direct", plane: str = "xy", ot: str = "silent"
) -> dict:
    ref, plan, plain_fixed, plain_float = plain["ref"], plain["plan"], plain["fixed_s"], plain["float_s"]
    srv = ServerProcess("--model", str(model_path), "--max-slices", "4096")
    relay = None
    try:
        if link != "direct":
            relay = RelayProcess(srv.address, link)
        with Client(relay.address if relay else srv.address, ot=ot) as c:
            from bunet.client import Summary

            chans = []
            job = c.stub.job

            def counted_job(*args, **kwargs):  # the job channels, for their traffic counters (turns, phases)
                chan, finish = job(*args, **kwargs)
                chans.append(chan)
                return chan, finish

            c.stub.job = counted_job
            summary = Summary()
            cpu0 = (_cpu_s(os.getpid()), _cpu_s(srv.proc.pid))
            t0 = time.perf_counter()
            labels = c.segment_slices(x, plane, summary=summary)
            secure = time.perf_counter() - t0
            cpu = (_cpu_s(os.getpid()) - cpu0[0], _cpu_s(srv.proc.pid) - cpu0[1])
            relay_cpu = _cpu_s(relay.proc.pid) if relay else 0.0  # shares the cores with the parties
    finally:
        if relay:
            relay.stop()
        srv.stop()
    n = len(x)
    phases: dict[str, list[float]] = {}
    for ch in chans:
        for k, (up, down) in ch.traffic.by_phase.items():
            acc = phases.setdefault(k, [0, 0])
            acc[0] += up / n
            acc[1] += down / n
    return {
        "link": link,
        "slices": n,
        "secure_s": secure / n,
        "plain_s": plain_fixed / n,
        "plain_float_s": plain_float / n,
        "secure_over_plain": secure / plain_fixed,
        # CPU seconds of each party over the secure run (all threads): steadier than secure_s on
        # a shared machine, and secure_s >= their sum / cores
        "client_cpu_s": cpu[0] / n,
        "server_cpu_s": cpu[1] / n,
        "bytes_up": summary.bytes_up / n,
        "bytes_down": summary.bytes_down / n,
        "bytes_by_phase": phases,  # phase -> [up, down] per slice
        "rounds": sum(ch.traffic.turns for ch in chans) / n,
        "relay_cpu_s": relay_cpu / n,
        "jobs": len(chans),
        "client_phase_s": {k: v / n for k, v in summary.seconds.items()},
        "mask_equal_reference": bool(np.array_equal(labels, ref)),
        "relu_instances": plan.relu_count(x.shape[2], x.shape[3]),
        "ot": ot,
    }


def main() -> None:
    from bunet.heap import tune_malloc

    tune_malloc()  # as the command lines do (the server process runs bunet.cli.server_main)
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sizes", type=int, nargs="*", default=[128, 256, 512])
    ap.add_argument("--skip-bundled", action="store_true")
    ap.add_argument(
        "--ot",
        nargs="+",
        choices=("silent", "softspoken"),
        default=["silent"],
        help="correlated-OT backend(s); several: each size runs with each, alternated",
    )
    ap.add_argument(
        "--link",
        nargs="*",
        default=["direct"],
        help="direct, none (the relay unshaped) or RATE,RTT such as 1gbit,10ms; one row each",
    )
    args = ap.parse_args()
    from linkrelay import LinkSpec

    for lk in args.link:
        if lk != "direct":
            try:
                LinkSpec.parse(lk)
            except ValueError as e:
                ap.error(str(e))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            m = seed_unet_model(in_channels=1, base=16, depth=4, classes=2, input_size=size, seed=0)
            p = Path(tmp) / f"seed{size}.bunet"
            m.save(p)
            x = np.random.default_rng(size).random((1, 1, size, size)).astype(np.float32)
            plain = _plain(m, x)
            for ot in args.ot:
                for lk in args.link:
                    rows.append({"model": "seed-unet-16x4", "size": size, **_measure(p, x, plain, lk, ot=ot)})
                print(json.dumps(rows[-1]), file=sys.stderr)
        if not args.skip_bundled:
            mp = bundled_model_path()
            m = Model.load(mp)
            scan = volume.load_scan(ROOT / "data" / "sample_ct.nii.gz")
            t0 = time.perf_counter()
            pp = m.preprocessing
            st = volume.to_slices(scan.hu, "xy")
            x = volume.resize_stack(pp.apply(st), pp.input_size)[:, None].astype(np.float32)
            plain = _plain(m, x)
            prep_s = time.perf_counter() - t0
            for lk in args.link:
                t0 = time.perf_counter()
                row = {
                    "model": m.name,
                    "size": pp.input_size[0],
                    "scan": "data/sample_ct.nii.gz",
                    **_measure(mp, x, plain, lk, ot=args.ot[0]),
                }
                row["scan_total_s"] = prep_s + time.perf_counter() - t0
                rows.append(row)
                print(json.dumps(rows[-1]), file=sys.stderr)
    out = json.dumps({"benchmark": "e2e", "rows": rows}, indent=1)
    print(out)
    if args.out:
        args.out.write_text(out)


if __name__ == "__main__":
    main()
