"""Cost of the OT consistency check (bunet/gc/otcheck.py) per OT, next to the OT extension itself.

    python bench/ot.py [--rows 1048576] [--k 4]

Times, best of 5 (alternated), of: the receiver's extension (``bn_cot_recv``), the sender's
(``bn_cot_send``), the receiver's proof and the sender's check, over the same rows. Prints JSON
with nanoseconds per OT and the check's share of the extension.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bunet.gc import otcheck  # noqa: E402
from bunet.gc.engine import aes_key_schedules, ffi, lib  # noqa: E402
from bunet.gc.ot import local_trees  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1 << 20)
    ap.add_argument("--k", type=int, default=4)
    args = ap.parse_args()
    m, k = args.rows // 128 * 128, args.k
    delta, leaves_c, leaves_g = local_trees(k)
    sc, sg = (aes_key_schedules([leaf for t in tree for leaf in t]) for tree in (leaves_c, leaves_g))
    rng = np.random.default_rng(0)
    choice = rng.integers(0, 256, size=m // 8, dtype=np.uint8)
    cm = np.empty((128 // k) * m // 8, dtype=np.uint8)
    t, q = np.empty(16 * m, dtype=np.uint8), np.empty(16 * m, dtype=np.uint8)
    u8 = lambda a: ffi.from_buffer("uint8_t[]", a)  # noqa: E731
    seed = otcheck.challenge(b"bench", b"")
    proof = b""
    ok = False

    def recv() -> None:
        lib.bn_cot_recv(sc, k, 0, m, u8(choice), u8(cm), u8(t))

    def send() -> None:
        lib.bn_cot_send(sg, k, delta, 0, m, u8(cm), u8(q))

    def prove() -> None:
        nonlocal proof
        proof = otcheck.prove(t, choice, seed)

    def verify() -> None:
        nonlocal ok
        ok = otcheck.verify(q, delta, seed, proof)

    def challenge() -> None:
        otcheck.challenge(b"sid", cm)

    steps = {"cot_recv": recv, "cot_send": send, "prove": prove, "verify": verify, "challenge_hash": challenge}
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(5):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    ns = {name: round(s * 1e9 / m, 3) for name, s in best.items()}
    print(
        json.dumps(
            {
                "benchmark": "ot_check",
                "rows": m,
                "k": k,
                "ns_per_ot": ns,
                "receiver_check_over_extension": round((ns["prove"] + ns["challenge_hash"]) / ns["cot_recv"], 3),
                "sender_check_over_extension": round((ns["verify"] + ns["challenge_hash"]) / ns["cot_send"], 3),
                "honest_proof_accepted": ok,
                "proof_bytes": otcheck.PROOF_BYTES,
                "pad_rows": otcheck.PAD_ROWS,
            }
        )
    )


if __name__ == "__main__":
    main()
