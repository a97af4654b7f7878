"""Quantization benchmark: the Blind U-Net paper's Table 1 for the bundled model.

    python bench/quantization.py --out quant.json [--data ../shared/data/medseg_covid19_2d_infnet]
                                 [--model data/covid_unet.bunet] [--secure [--secure-slices 4]]

For each ring / fraction configuration, runs the fixed-point reference
(:func:`bunet.model.reference.fixed_forward`, the integers the secure protocol computes) on the
48 MedSeg test slices and reports lesion Dice of the fixed-point mask against the float mask
(pooled over all pixels at model resolution, where the two engines are compared) and against
the radiologist's mask (labels nearest-resized to each slice's original size, pooled, as in
training), the pixel agreement with the float labels, and the overflow fraction: the share of
values entering a garbled circuit (ReLU / truncation / argmax inputs) whose float magnitude does
not fit the signed ``in_bits`` window at that tensor's scale (a wrap-around in the ring).
With ``--secure``, every row also runs the secure protocol over gRPC (server in its own process,
as bench/e2e.py does) on the first ``--secure-slices`` test slices: seconds and bytes each way per
slice against the NumPy float model on the same slices, and whether the secure labels equal the
fixed-point reference. Prints the JSON, then the table (bits, Dice vs float, Dice vs truth, time,
bytes) on stderr, and writes the JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bunet.model.format import Model, Network, Quantization  # noqa: E402
from bunet.model.plan import compile_plan  # noqa: E402
from bunet.model.reference import float_forward, run_plan  # noqa: E402
from bunet.model.steps import CircuitStep  # noqa: E402
from bunet.model.train import _load_split, evaluate_labels  # noqa: E402

# (ring_bits, frac_bits, weight_frac_bits)
CONFIGS: list[tuple[int, int, int]] = [
    (32, 12, 12),
    (32, 13, 10),
    (32, 10, 10),
    (24, 8, 8),
    (24, 9, 7),
    (24, 7, 9),
    (24, 8, 6),
    (24, 6, 6),
    (22, 8, 8),
    (22, 7, 9),
    (22, 7, 7),
    (21, 8, 8),
    (21, 7, 9),
    (20, 8, 8),
    (20, 7, 9),
    (20, 6, 6),
    (20, 6, 5),
    (18, 5, 5),
    (16, 4, 4),
    (16, 5, 3),
]


def overflow_fraction(net: Network, quant: Quantization, floats: dict[str, np.ndarray]) -> tuple[float, float]:
    """Share of garbled-circuit inputs whose float value * 2^exp leaves the signed in_bits range,
    and the headroom: min over those inputs of log2(range / max |value * 2^exp|), in bits
    (negative = overflow; what a narrower ``in_bits`` could save)."""
    plan = compile_plan(net, quant)
    exp = {o: s.exp for s in plan.steps for o in s.outs}
    bad = total = 0
    headroom = np.inf
    for s in plan.steps:
        if not isinstance(s, CircuitStep):
            continue
        src = s.inputs[0]
        v = floats.get(src.split(":")[0])
        if v is None:
            continue
        lim = 2.0 ** (s.in_bits - 1)
        scaled = np.abs(v) * 2.0 ** exp[src]
        bad += int((scaled >= lim).sum())
        total += v.size
        headroom = min(headroom, float(np.log2(lim / max(float(scaled.max()), 1e-30))))
    return bad / max(total, 1), headroom


def _dice_pooled(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def secure_row(model: Model, q: Quantization, x: np.ndarray, fixed: np.ndarray) -> dict:
    """The secure protocol on slices x with the model re-quantized to q: per-slice seconds and
    bytes, and equality with the fixed-point labels ``fixed`` of the same slices; the plaintext
    float and fixed-point engines (NumPy, bunet.model.reference) on the same slices just before,
    as the same-run baselines of the time."""
    from e2e import ServerProcess  # bench/e2e.py: a server in its own process

    from bunet.client import Client, Summary

    plan = compile_plan(model.network("xy"), q)
    t0 = time.perf_counter()
    run_plan(plan, x)
    plain_fixed = time.perf_counter() - t0
    t0 = time.perf_counter()
    float_forward(model.network("xy"), x)
    plain_float = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.bunet"
        dataclasses.replace(model, quantization=q).save(path)
        srv = ServerProcess(path)
        try:
            with Client(srv.address) as c:
                summary = Summary()
                t0 = time.perf_counter()
                lab = c.segment_slices(x, "xy", summary=summary)
                secs = time.perf_counter() - t0
        finally:
            srv.stop()
    n = len(x)
    return {
        "secure_slices": n,
        "secure_s_per_slice": round(secs / n, 3),
        "plain_fixed_s_per_slice": round(plain_fixed / n, 3),
        "plain_float_s_per_slice": round(plain_float / n, 3),
        "secure_over_plain_float": round(secs / plain_float, 2),
        "bytes_up_per_slice": summary.bytes_up // n,
        "bytes_down_per_slice": summary.bytes_down // n,
        "secure_equals_fixed_point": bool(np.array_equal(lab, fixed)),
    }


def run(
    model_path: Path, data: Path, configs: list[tuple[int, int, int]], limit: int = 0, secure_slices: int = 0
) -> dict:
    model = Model.load(model_path)
    net = model.network("xy")
    h, w = model.preprocessing.input_size
    x, _, _, truths = _load_split(data, "test", h)  # 8-bit slices / 255: already windowed
    if (h, w) != (x.shape[1], x.shape[2]):
        raise SystemExit(f"model input {h}x{w} is not square; the MedSeg bench resizes to squares")
    if limit:
        x, truths = x[:limit], truths[:limit]
    x = x[:, None].astype(np.float32)
    floats = float_forward(net, x, keep=True)
    float_lab = np.argmax(floats[net.graph.nodes[-1].inputs[0]], axis=1)
    float_truth = evaluate_labels(list(float_lab), truths)
    rows = []
    for L, f, fw in configs:
        q = Quantization(ring_bits=L, frac_bits=f, weight_frac_bits=fw)
        t0 = time.time()
        try:
            plan = compile_plan(net, q)
            lab = np.concatenate([run_plan(plan, x[i : i + 8]) for i in range(0, len(x), 8)])
        except Exception as e:  # a config the plan rejects (exponent does not fit the ring)
            rows.append({"ring_bits": L, "frac_bits": f, "weight_frac_bits": fw, "error": str(e)})
            continue
        vs_truth = evaluate_labels(list(lab), truths)
        ovf, headroom = overflow_fraction(net, q, floats)
        row = {
            "ring_bits": L,
            "frac_bits": f,
            "weight_frac_bits": fw,
            "dice_vs_float": round(_dice_pooled(lab > 0, float_lab > 0), 5),
            "dice_vs_truth": round(vs_truth["dice_pooled"], 5),
            "dice_vs_truth_mean_per_slice": round(vs_truth["dice_mean"], 5),
            "pixel_agreement_vs_float": round(float((lab == float_lab).mean()), 6),
            "overflow_fraction": ovf,
            "headroom_bits": round(headroom, 2),
            "seconds": round(time.time() - t0, 2),
        }
        if secure_slices:
            try:
                row.update(secure_row(model, q, x[:secure_slices], lab[:secure_slices]))
            except Exception as e:  # a ring the HE parameters or the server refuse: say so in the row
                row["secure_error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return {
        "benchmark": "quantization",
        "model": str(model_path.name),
        "model_sha_params": model.parameter_count(),
        "input_size": [h, w],
        "slices": len(x),
        "float": {
            "dice_vs_truth": round(float_truth["dice_pooled"], 5),
            "dice_vs_truth_mean_per_slice": round(float_truth["dice_mean"], 5),
        },
        "dice_vs_float_protocol": "lesion Dice of fixed vs float labels, pooled over all slices at model resolution",
        "dice_vs_truth_protocol": "labels nearest-resized to each slice's original size, pooled over all pixels",
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON output file")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "medseg_covid19_2d_infnet"))
    p.add_argument("--model", default=str(ROOT / "data" / "covid_unet.bunet"))
    p.add_argument("--limit", type=int, default=0, help="first N test slices only (smoke runs)")
    p.add_argument("--configs", default="", help="override, e.g. '24:8:8,20:6:6'")
    p.add_argument("--secure", action="store_true", help="also run the secure protocol per row (time, bytes)")
    p.add_argument("--secure-slices", type=int, default=4, help="test slices per secure run (default 4)")
    a = p.parse_args(argv)
    data = Path(a.data)
    if not (data / "test" / "images").is_dir():
        raise SystemExit(f"error: no MedSeg test slices under {data}")
    configs = CONFIGS
    if a.configs:
        configs = [tuple(int(v) for v in c.split(":")) for c in a.configs.split(",")]  # type: ignore[misc]
    result = run(Path(a.model), data, configs, a.limit, a.secure_slices if a.secure else 0)
    text = json.dumps(result, indent=1)
    Path(a.out).write_text(text + "\n")
    print(text)
    print("\n".join(table(result)), file=sys.stderr)


def table(result: dict) -> list[str]:
    """Rows as in the BUNET paper's Table 1: bits, Dice against float and truth, time, bytes."""
    f = result["float"]
    lines = [
        f"{'ring/frac/wfrac':<16} {'Dice vs float':>13} {'Dice vs truth':>13} {'s / slice':>10} "
        f"{'x float':>8} {'MB up / slice':>13} {'MB down / slice':>15}",
        f"{'float':<16} {1.0:>13.4f} {f['dice_vs_truth']:>13.4f} {'-':>10} {'-':>8} {'-':>13} {'-':>15}",
    ]
    for r in result["rows"]:
        bits = f"{r['ring_bits']}/{r['frac_bits']}/{r['weight_frac_bits']}"
        if "error" in r:
            lines.append(f"{bits:<16} plan refused: {r['error']}")
            continue
        sec = ratio = up = down = "-"
        if "secure_s_per_slice" in r:
            sec = f"{r['secure_s_per_slice']:.2f}" + ("" if r["secure_equals_fixed_point"] else " (!= fixed)")
            ratio = f"{r['secure_over_plain_float']:.1f}x"
            up, down = f"{r['bytes_up_per_slice'] / 1e6:.1f}", f"{r['bytes_down_per_slice'] / 1e6:.1f}"
        elif "secure_error" in r:
            sec = "failed"
        lines.append(
            f"{bits:<16} {r['dice_vs_float']:>13.4f} {r['dice_vs_truth']:>13.4f} {sec:>10} {ratio:>8} "
            f"{up:>13} {down:>15}"
        )
    return lines


if __name__ == "__main__":
    main()
