"""End-to-end benchmark: secure segmentation over gRPC on localhost, server in its own process.

    python bench/e2e.py --out e2e.json [--sizes 128 256 512] [--skip-bundled] [--ot silent softspoken]

For the seed U-Net (16 base features, 4 poolings, 2 classes, random weights) at each size, and
the bundled model on the bundled sample scan: secure seconds per slice, the plaintext fixed-point
and float seconds per slice in the same run, bytes each way, and whether the secure mask equals
the fixed-point reference exactly, and the CPU seconds each party spent. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLIs do (the server subprocess inherits it)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bunet import volume  # noqa: E402
from bunet.client import Client  # noqa: E402
from bunet.model import reference  # noqa: E402
from bunet.model.format import Model  # noqa: E402
from bunet.model.plan import compile_plan  # noqa: E402
from bunet.server import bundled_model_path  # noqa: E402
from tests.seed_unet import seed_unet_model  # noqa: E402
from tests.serverproc import ServerProcess  # noqa: E402


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(model: Model, model_path: Path, x: np.ndarray, plane: str = "xy", ot: str = "silent") -> dict:
    net = model.network(plane)
    plan = compile_plan(net, model.quantization)
    t0 = time.perf_counter()
    ref = reference.run_plan(plan, x)
    plain_fixed = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference.float_labels(net, x)
    plain_float = time.perf_counter() - t0
    srv = ServerProcess("--model", str(model_path), "--max-slices", "4096")
    try:
        with Client(srv.address, ot=ot) as c:
            from bunet.client import Summary

            summary = Summary()
            cpu0 = (_cpu_s(os.getpid()), _cpu_s(srv.proc.pid))
            t0 = time.perf_counter()
            labels = c.segment_slices(x, plane, summary=summary)
            secure = time.perf_counter() - t0
            cpu = (_cpu_s(os.getpid()) - cpu0[0], _cpu_s(srv.proc.pid) - cpu0[1])
    finally:
        srv.stop()
    n = len(x)
    return {
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
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            m = seed_unet_model(in_channels=1, base=16, depth=4, classes=2, input_size=size, seed=0)
            p = Path(tmp) / f"seed{size}.bunet"
            m.save(p)
            x = np.random.default_rng(size).random((1, 1, size, size)).astype(np.float32)
            for ot in args.ot:
                rows.append({"model": "seed-unet-16x4", "size": size, **_measure(m, p, x, ot=ot)})
                print(json.dumps(rows[-1]), file=sys.stderr)
        if not args.skip_bundled:
            mp = bundled_model_path()
            m = Model.load(mp)
            scan = volume.load_scan(ROOT / "data" / "sample_ct.nii.gz")
            t0 = time.perf_counter()
            pp = m.preprocessing
            st = volume.to_slices(scan.hu, "xy")
            x = volume.resize_stack(pp.apply(st), pp.input_size)[:, None].astype(np.float32)
            row = {
                "model": m.name,
                "size": pp.input_size[0],
                "scan": "data/sample_ct.nii.gz",
                **_measure(m, mp, x, ot=args.ot[0]),
            }
            row["scan_total_s"] = time.perf_counter() - t0
            rows.append(row)
            print(json.dumps(rows[-1]), file=sys.stderr)
    out = json.dumps({"benchmark": "e2e", "rows": rows}, indent=1)
    print(out)
    if args.out:
        args.out.write_text(out)


if __name__ == "__main__":
    main()
