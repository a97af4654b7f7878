"""Benchmark HomConv on every linear layer of the seed U-Net (JSON on stdout and in --out).

    python bench/he.py --out he.json [--size 512] [--batch 1] [--ring-bits 24] [--check] [--filter-cache GIB]

Per layer: milliseconds (client encrypt + server apply + client decrypt, both parties in this
process), CPU milliseconds over all threads, ciphertext-plaintext products, bytes client->server
and server->client (also on stdout: bytes_per_layer, [up, down] per layer).  Totals: total_seconds,
total_cpu_seconds, bytes_up, bytes_down.  Every
layer is prepared first (as the server does at start-up); prepare time and the parameter set
are reported separately.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bunet import ring  # noqa: E402
from bunet.he import ClientHE, ConvSpec, HEParams, ServerHE  # noqa: E402
from bunet.server import default_budget  # noqa: E402


def seed_unet_layers(size: int) -> list[tuple[str, str, int, int, int]]:
    """(name, kind, c_in, c_out, input size) of the seed U-Net's linear layers."""
    feats = [16, 32, 64, 128, 256]
    out, c, s = [], 2, size
    for i, f in enumerate(feats):
        out += [(f"enc{i}a", "conv", c, f, s), (f"enc{i}b", "conv", f, f, s)]
        c = f
        if i < len(feats) - 1:
            s //= 2
    for j, f in enumerate(reversed(feats[:-1])):
        out.append((f"up{j}", "convT", c, f, s))
        s *= 2
        out += [(f"dec{j}a", "conv", 2 * f, f, s), (f"dec{j}b", "conv", f, f, s)]
        c = f
    out.append(("head", "conv1", c, 2, s))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--ring-bits", type=int, default=24)
    ap.add_argument("--weight-bits", type=int, default=8, help="|w| < 2^bits for the random weights")
    ap.add_argument("--check", action="store_true", help="compare with bunet.ring (slow)")
    ap.add_argument("--only", default="", help="comma-separated layer names")
    ap.add_argument(
        "--filter-cache",
        type=float,
        help="GiB of kept kernels (default: the server's, three quarters of its default memory budget)",
    )
    args = ap.parse_args()

    lb = args.ring_bits
    params = HEParams.for_ring(lb)
    cli = ClientHE(params)
    cache = int(args.filter_cache * 2**30) if args.filter_cache is not None else (3 * default_budget()) // 4
    srv = ServerHE(params, cli.public_key(), filter_cache_bytes=cache)
    rng = np.random.default_rng(0)
    specs = {"conv": ConvSpec("conv", 3, 1), "conv1": ConvSpec("conv", 1, 0), "convT": ConvSpec("convT")}
    rows, tot_t, tot_cpu, tot_up, tot_down = [], 0.0, 0.0, 0, 0
    only = set(filter(None, args.only.split(",")))
    # like the server: every layer's kernels are prepared once at start-up, before any request
    prepared = []
    t0 = time.perf_counter()
    for name, kind, ci, co, s in seed_unet_layers(args.size):
        if only and name not in only:
            continue
        conv = specs[kind]
        wshape = (ci, co, 2, 2) if kind == "convT" else (co, ci, conv.k, conv.k)
        w = rng.integers(-(1 << args.weight_bits) + 1, 1 << args.weight_bits, wshape)
        bias = rng.integers(-(1 << 16), 1 << 16, co)
        prepared.append((name, kind, ci, co, s, conv, w, bias, srv.prepare(conv, w, bias, (ci, s, s))))
    prep_t = time.perf_counter() - t0
    for name, kind, ci, co, s, conv, w, bias, layer in prepared:
        xc = ring.random((args.batch, ci, s, s), lb)
        xs = ring.random((args.batch, ci, s, s), lb)
        c0 = time.process_time()
        t0 = time.perf_counter()
        up = cli.encrypt(layer.spec, xc)
        t1 = time.perf_counter()
        down, ys = srv.apply(layer, up, xs)
        t2 = time.perf_counter()
        yc = cli.decrypt(layer.spec, down)
        t3 = time.perf_counter()
        cpu = time.process_time() - c0
        plan = layer.plan
        row = {
            "layer": name,
            "kind": kind,
            "c_in": ci,
            "c_out": co,
            "size": s,
            "ms": round((t3 - t0) * 1e3, 1),
            "cpu_ms": round(cpu * 1e3, 1),
            "ms_encrypt": round((t1 - t0) * 1e3, 1),
            "ms_server": round((t2 - t1) * 1e3, 1),
            "ms_decrypt": round((t3 - t2) * 1e3, 1),
            "ct_pt_products": args.batch * plan.c_in * plan.tiles * plan.n_og,
            "cts_up": plan.n_in_cts(args.batch),
            "cts_down": plan.n_out_cts(args.batch),
            "bytes_up": len(up),
            "bytes_down": len(down),
            "tile": [plan.th, plan.tw],
            "out_pack": plan.opack,
            "strategy": layer.strategy,
            "cached_filters": layer.filters is not None,
        }
        if args.check:
            x = ring.add(xc, xs, lb)
            ref = ring.conv_transpose2x2(x, w, bias, lb) if kind == "convT" else ring.conv2d(x, w, bias, conv.pad, lb)
            row["exact"] = bool(np.array_equal(ring.add(yc, ys, lb), ref))
        rows.append(row)
        tot_t += t3 - t0
        tot_cpu += cpu
        tot_up += len(up)
        tot_down += len(down)
        print(json.dumps(row), file=sys.stderr, flush=True)
    result = {
        "size": args.size,
        "batch": args.batch,
        "params": {
            "ring_bits": lb,
            "N": params.poly_degree,
            "log2_q": params.q.bit_length(),
            "primes": list(params.primes),
            "flood_bits": params.flood_bits,
            "down_bits": params.down_bits,
            "down_c0_bits": params.down_c0_bits,
            "weight_l1_bits": params.weight_l1_bits,
            "security": "128-bit (HE standard, SEAL check)",
        },
        "prepare_seconds": round(prep_t, 2),
        "layers": rows,
        "total_seconds": round(tot_t, 2),
        "bytes_up": tot_up,
        "bytes_down": tot_down,
        "total_cpu_seconds": round(tot_cpu, 2),
        "threads": srv.threads,
    }
    args.out.write_text(json.dumps(result, indent=1))
    summary = {
        k: result[k] for k in ("total_seconds", "total_cpu_seconds", "bytes_up", "bytes_down", "prepare_seconds")
    }
    summary["bytes_per_layer"] = {r["layer"]: [r["bytes_up"], r["bytes_down"]] for r in rows}  # [up, down]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
