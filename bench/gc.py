"""Benchmark of the garbled-circuit engine; prints (and optionally writes) JSON.

    python bench/gc.py --out gc.json [--relus 1048576] [--quick] [--ot silent|softspoken]

Keys: garble_and_per_s / eval_and_per_s (one core, in memory, three-halves ANDs in a large batch),
bytes_per_and (24 bytes + 5 control bits), ot_per_s (SoftSpoken k=4 correlated OTs per second, in
memory, sender and receiver each on one core: the slower side; ot_k1 = IKNP, ot_k2), and per
quantization (default l=24, b=24, s=8 and l=32, s=12): relu_and_gates, relu_bytes (all bytes both
ways per ReLU over the socket, OT and session setup included), relu_bytes_by_part (the same bytes
split into garbled_gates, output_conversion, ot_extension, look_up_tables, look_up_ots,
post_messages and setup, counted per message tag), relu_per_s (two processes over loopback TCP,
end to end, each running the service's garbled-circuit pipeline, ``bunet.protocol.gc_pipeline``,
with the service's window and two worker threads, --chunk ReLUs per message),
relu_client_cpu_us / relu_server_cpu_us (CPU time per ReLU of each process, all threads) and
relu_per_s_cpu_bound (the rate with both cores ours: the machine is shared, so relu_per_s varies
with the other load; loadavg_at_start/end are recorded). relu_pool: a ReLU feeding a 2x2 max-pool
(--relus / 4 windows, ``bunet.gc.relu_pool``: 4 ReLUs, then 3 comparisons in two rounds):
window_bytes (measured; window_bytes_by_part) and window_bytes_circuit (from the ops' message sizes), windows_per_s,
CPU time per window, all summed over the three rounds. The sign-mode ReLUs chain their carries
through linked look-ups (``MaxTrunc.chain``, no AND gate, one more round per link);
default_quantization_no_chain and relu_pool_no_chain are the same with the ANDs chaining them
(``chain=False``), measured in the same run as the baseline. argmax_k2 / argmax_k2_no_look_ups: the
argmax of 2 classes at 24 bits (--relus / 4 pixels) with look-up chains and with the adder circuit:
argmax_bytes (measured; argmax_bytes_by_part), argmax_per_s, CPU time per pixel.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# no BLAS worker threads (idle spinning steals CPU from the two parties; both inherit this)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from jsonout import emit  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bunet import ring  # noqa: E402
from bunet.gc import Argmax, MaxTrunc, relu_pool, relu_pool_ops  # noqa: E402
from bunet.gc import circuits as gcc  # noqa: E402
from bunet.gc.engine import _lut_bytes, ffi, lib  # noqa: E402
from bunet.gc.native import circuit_fields, run_circuit  # noqa: E402
from bunet.protocol import gc_pipeline  # noqa: E402
from bunet.protocol.session import GC_WINDOW  # noqa: E402
from tests.gcpair import LocalCot, RunStats, two_party  # noqa: E402


def _best(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_and(n: int = 1 << 14, depth: int = 64, reps: int = 5) -> dict:
    """A layer of `depth` ANDs per instance (each gate ANDs the two previous wires)."""
    bld = gcc._Builder(2)
    a, b = 0, 1
    for i in range(depth):
        c = bld.and_(a, b)
        a, b = b, c
        if i == depth - 1:
            bld._emit(gcc.REVEAL, c, 0, 0, 0, out=False)
    circ = gcc._finish(bld)
    assert circ.and_gates == depth
    rng = np.random.default_rng(0)
    m = (n * 2 + 127) // 128 * 128
    u = rng.integers(0, 256, size=m * 16, dtype=np.uint8)  # input labels come from IKNP inside the run
    ks = ffi.new("uint8_t[]", 176 * 256)  # SoftSpoken k=2: 64 blocks x 4 leaves
    for i in range(256):
        lib.bn_aes_keysched(rng.bytes(16), ks + 176 * i)
    rk = ffi.new("uint8_t[]", 176)
    lib.bn_aes_keysched(bytes(16), rk)
    delta = bytearray(rng.bytes(16))
    delta[0] |= 1
    ct = np.empty(n * circ.ct_bytes, dtype=np.uint8)
    ar = np.zeros(max(1, circ.arith_len(n)), dtype=np.uint8)
    out = np.empty(n, dtype=np.uint64)
    fields = circuit_fields(circ, n, 1, 2, rk, 0)
    u8 = lambda a: ffi.from_buffer("uint8_t[]", a)  # noqa: E731

    def run(garbler: int) -> None:
        run_circuit(
            bool(garbler),
            **fields,
            ot_leaves=ks,
            ot_k=2,
            ct=u8(ct),
            arith=u8(ar),
            out=ffi.from_buffer("uint64_t[]", out),
            outmask=(1 << 64) - 1,
            delta=bytes(delta) if garbler else None,
            cm=u8(u) if garbler else None,
        )

    tg = _best(lambda: run(1), reps)
    te = _best(lambda: run(0), reps)
    return {
        "garble_and_per_s": n * depth / tg,
        "eval_and_per_s": n * depth / te,
        "bytes_per_and": (circ.bytes_per_inst - 1 / 8) / depth,
    }  # less the REVEAL bit


def bench_ot(m: int = 1 << 21, reps: int = 3, k: int = 4) -> dict:
    """Correlated OT extension (SoftSpoken with k bits per block; k = 1 is IKNP), in memory, and the
    consistency check of a malicious receiver (``bunet.gc.otcheck``) over the same rows."""
    from bunet.gc import otcheck

    cot = LocalCot(k, m)
    tr = _best(cot.recv, reps)
    ts = _best(cot.send, reps)
    seed = otcheck.challenge(b"bench", cot.cm)
    proof = otcheck.prove(cot.t, cot.choice, seed)
    if not otcheck.verify(cot.q, cot.delta, seed, proof):
        raise RuntimeError("an honest OT consistency proof was refused")
    tc = _best(lambda: otcheck.challenge(b"bench", cot.cm), reps)
    tp = _best(lambda: otcheck.prove(cot.t, cot.choice, seed), reps)
    tv = _best(lambda: otcheck.verify(cot.q, cot.delta, seed, proof), reps)
    return {
        "ot_per_s": m / max(tr, ts),
        "ot_recv_per_s": m / tr,
        "ot_send_per_s": m / ts,
        "ot_bytes_per_cot": 16 / k,
        "ot_softspoken_k": k,
        "ot_check_ns_per_ot": {
            "extension_recv": round(tr * 1e9 / m, 2),
            "extension_send": round(ts * 1e9 / m, 2),
            "challenge_hash": round(tc * 1e9 / m, 2),
            "prove": round(tp * 1e9 / m, 2),
            "verify": round(tv * 1e9 / m, 2),
        },
    }


def _message_bytes(op, n: int, ot_k: int) -> float:
    """Bytes per instance from the op's message sizes: pre-message, request and response."""
    req, resp = op.message_sizes(n, ot_k)
    links = sum(op.link_pre_size(n, j, ot_k) + op.link_req_size(n, j) for j in range(op.link_passes))
    return (op.pre_size(n, ot_k) + req + resp + op.post_size(n) + links) / n


def bytes_by_part(op, n: int, chunk: int, st: RunStats) -> dict:
    """Bytes per instance of each part of a run, from the bytes counted per message tag
    (``gc_pipeline.PARTS``), a request split into its OT extension and its look-up tables and a
    response into its garbled gates and its output conversion by the op's layout (each message's
    small header is counted with the OT or the output conversion)."""
    sizes = [sl.stop - sl.start for sl in gc_pipeline.chunks(n, chunk)]
    lp = op.lut_plan
    tables = sum(m * op.items * lp.table_bytes for m in sizes) if lp else 0
    link_tables = sum(m * op.items * _lut_bytes(*lp.link_table(j)[1:]) for j in range(op.link_passes) for m in sizes)
    garbled = sum(m * op.circuit.ct_bytes for m in sizes)
    part = {p: st.by_part.get(p, [0, 0]) for p in (*gc_pipeline.PARTS, "gc_hello")}
    got = {
        "garbled_gates": garbled,
        "output_conversion": part["resp"][1] - garbled,
        "ot_extension": part["req"][0] - tables + part["lreq"][0] - link_tables,
        "look_up_tables": tables + link_tables,
        "look_up_ots": part["pre"][1] + part["lpre"][1],
        "post_messages": part["post"][0],
        "setup": sum(part["gc_hello"]),
    }
    assert sum(got.values()) == st.total_bytes
    return {k: v / n for k, v in got.items()}


def bench_relu(
    l: int, s: int, n: int, chunk: int, ot_k: int = 4, lut: bool = True, ot: str = "silent", chain: bool = True
) -> dict:
    op = MaxTrunc(ring_bits=l, in_bits=l, shift=s, relu=True, k=1, lut=lut, chain=chain)
    x = ring.random((n, 1), l)
    yc, ys = ring.share(x, l)
    out_c, out_s, st = two_party(op, yc, ys, chunk=chunk, window=GC_WINDOW, tcp=True, ot_k=ot_k, ot=ot)
    ok = bool(np.array_equal(ring.add(out_c, out_s, l), ring.nonlinear(x, in_bits=l, shift=s, relu=True, ring_bits=l)))
    c = op.circuit
    return {
        "relu_and_gates": c.and_gates + c.andg_gates,
        "relu_three_halves_ands": c.and_gates,
        "relu_garbler_half_gates": c.andg_gates,
        "relu_bytes": st.total_bytes / n,
        "relu_bytes_by_part": bytes_by_part(op, n, chunk, st),
        "relu_bytes_client_to_server": st.client_sent / n,
        "relu_bytes_server_to_client": st.client_received / n,
        "relu_per_s": n / st.seconds,
        # CPU time per ReLU of each party over the session (independent of other load on the
        # machine); both parties run several threads, so with the machine's cores all ours the
        # rate is bounded by the total CPU time over the cores
        "relu_client_cpu_us": st.extra["client_cpu_s"] / n * 1e6,
        "relu_server_cpu_us": st.extra["server_cpu_s"] / n * 1e6,
        "relu_per_s_cpu_bound": n * min(2, os.cpu_count() or 1) / (st.extra["client_cpu_s"] + st.extra["server_cpu_s"]),
        "relu_n": n,
        "relu_seconds": st.seconds,
        "relu_exact": ok,
        "ot_softspoken_k": ot_k,
        "ot": ot,
        "look_ups": "none" if op.lut_plan is None else "sign" if op.lut_plan.chunks else "carry",
        "link_passes": op.link_passes,
        "relu_bytes_from_message_sizes": _message_bytes(op, n, 0 if ot == "silent" else ot_k),
        "reverse_ots_per_relu": op.lut_bits,
    }


def bench_relu_pool(l: int, s: int, n: int, chunk: int, ot_k: int = 4, ot: str = "silent", chain: bool = True) -> dict:
    """A ReLU feeding a 2x2 max-pool (a U-Net encoder level) as ``bunet.gc.relu_pool`` does it: n
    windows, 5 outputs each, in three rounds (the ReLUs, then two of comparisons); each round is a
    two-process session here (both parties' shares stacked, as relu_pool allows). Bytes and time per
    window, summed over the rounds, against the circuit bytes of the old fused window."""
    x = ring.random((n, 4), l)
    yc, ys = ring.share(x, l)
    tot = {"seconds": 0.0, "bytes": 0, "client_cpu_s": 0.0, "server_cpu_s": 0.0}
    parts: dict[str, float] = {}

    def run(op, rnd, rows):
        m = rows.shape[0] // 2
        out_c, out_s, st = two_party(op, rows[:m], rows[m:], chunk=chunk, window=GC_WINDOW, tcp=True, ot_k=ot_k, ot=ot)
        for k, v in bytes_by_part(op, m, chunk, st).items():
            parts[k] = parts.get(k, 0.0) + v * m / n
        tot["seconds"] += st.seconds
        tot["bytes"] += st.total_bytes
        tot["client_cpu_s"] += st.extra["client_cpu_s"]
        tot["server_cpu_s"] += st.extra["server_cpu_s"]
        return np.concatenate([out_c, out_s])

    out = relu_pool(run, np.concatenate([yc, ys]), ring_bits=l, in_bits=l, shift=s, chain=chain)
    el, pooled = ring.relu_pool(x, in_bits=l, shift=s, ring_bits=l)
    got = ring.add(out[:n], out[n:], l)
    ok = bool(np.array_equal(got[:, :4], el) and np.array_equal(got[:, 4], pooled))
    relu, cmp = relu_pool_ops(l, l, s, chain)
    m = 1 << 16
    ot_k = 0 if ot == "silent" else ot_k  # message sizes: silent OT's 1 bit per OT
    return {
        "window_three_halves_ands": 4 * relu.circuit.and_gates + 3 * cmp.circuit.and_gates,
        "window_bytes_circuit": 4 * _message_bytes(relu, m, ot_k) + 3 * _message_bytes(cmp, m, ot_k),
        "comparison_bytes_circuit": _message_bytes(cmp, m, ot_k),
        "window_bytes": tot["bytes"] / n,
        "window_bytes_by_part": parts,
        "windows_per_s": n / tot["seconds"],
        "window_client_cpu_us": tot["client_cpu_s"] / n * 1e6,
        "window_server_cpu_us": tot["server_cpu_s"] / n * 1e6,
        "window_n": n,
        "window_exact": ok,
    }


def bench_argmax(l: int, k: int, n: int, chunk: int, lut: bool = True, ot_k: int = 4, ot: str = "silent") -> dict:
    """Argmax over k classes per pixel (the segmentation's last step), the index to the client only:
    bytes per pixel measured and by part, against the op's message sizes."""
    op = Argmax(ring_bits=l, in_bits=l, k=k, lut=lut)
    x = ring.random((n, k), l)
    yc, ys = ring.share(x, l)
    out_c, _, st = two_party(op, yc, ys, chunk=chunk, window=GC_WINDOW, tcp=True, ot_k=ot_k, ot=ot)
    return {
        "argmax_three_halves_ands": op.circuit.and_gates,
        "argmax_bytes": st.total_bytes / n,
        "argmax_bytes_by_part": bytes_by_part(op, n, chunk, st),
        "argmax_bytes_from_message_sizes": _message_bytes(op, n, 0 if ot == "silent" else ot_k),
        "argmax_per_s": n / st.seconds,
        "argmax_client_cpu_us": st.extra["client_cpu_s"] / n * 1e6,
        "argmax_server_cpu_us": st.extra["server_cpu_s"] / n * 1e6,
        "argmax_n": n,
        "argmax_exact": bool(np.array_equal(out_c, ring.argmax(x, in_bits=l))),
        "look_ups": op.lut_plan is not None,
    }


def main() -> None:
    from bunet.heap import tune_malloc

    tune_malloc()  # the evaluator's process, as bunet-client's (the garbler's process does the same)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the JSON here too")
    ap.add_argument("--relus", type=int, default=1 << 20, help="ReLUs per end-to-end run (default 2^20)")
    ap.add_argument(
        "--chunk", type=int, default=gc_pipeline.GC_CHUNK, help="instances per request/response (the service's)"
    )
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument(
        "--ot",
        choices=("silent", "softspoken"),
        default="silent",
        help="correlated-OT backend of the ReLU runs (default silent)",
    )
    a = ap.parse_args()
    n = 1 << 14 if a.quick else a.relus
    load0 = os.getloadavg()[0]
    res: dict = {}
    res.update(bench_and(reps=2 if a.quick else 5))
    res.update(bench_ot(m=1 << 17 if a.quick else 1 << 21))
    for k in (1, 2):  # IKNP, and SoftSpoken k=2 (twice the bytes of k=4, less CPU)
        res[f"ot_k{k}"] = bench_ot(m=1 << 17 if a.quick else 1 << 21, k=k)
    default = bench_relu(24, 8, n, a.chunk, ot=a.ot)
    res.update(default)  # the default quantization at top level
    res["default_quantization"] = {"ring_bits": 24, "in_bits": 24, "shift": 8, **default}
    res["l32"] = {"ring_bits": 32, "in_bits": 32, "shift": 12, **bench_relu(32, 12, n, a.chunk, ot=a.ot)}
    # the bandwidth/CPU knob: SoftSpoken k=2 sends twice the client OT bytes of k=4, for less CPU
    res["default_quantization_ot_k2"] = bench_relu(24, 8, n, a.chunk, ot_k=2, ot="softspoken")
    res["default_quantization_no_look_ups"] = bench_relu(24, 8, n, a.chunk, lut=False, ot=a.ot)  # the circuit alone
    # the carry chained by AND gates instead of linked look-ups (the baseline of the chained default)
    res["default_quantization_no_chain"] = bench_relu(24, 8, n, a.chunk, ot=a.ot, chain=False)
    for chain in (True, False):
        res["relu_pool" + ("" if chain else "_no_chain")] = {
            "ring_bits": 24,
            "in_bits": 24,
            "shift": 8,
            **bench_relu_pool(24, 8, n // 4, a.chunk // 4, ot=a.ot, chain=chain),
        }
    for lut in (True, False):  # look-up chains against the adder-and-comparator circuit
        res["argmax_k2" + ("" if lut else "_no_look_ups")] = bench_argmax(24, 2, n // 4, a.chunk, lut=lut, ot=a.ot)
    res["cpus"] = os.cpu_count()
    res["loadavg_at_start"] = load0
    res["loadavg_at_end"] = os.getloadavg()[0]
    emit(res, a.out)


if __name__ == "__main__":
    main()
