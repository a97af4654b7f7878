"""``bunet-client evaluate``: a validation study of the secure path on the hospital's own labelled
cases — is the secure mask the vendor's plaintext mask, and how good is the model on our data?

Per case it runs the secure path and, when the server allows plaintext evaluation (public
validation sets only: the images then travel in the clear), the server's float and fixed-point
masks of the same network inputs. It scores each against the labels (Dice, IoU, HD95, lesion
volume), counts the pixels where secure and fixed point differ (the protocol promises none), and
summarises with the statistics of :mod:`bunet.evalstats`. The report goes to ``OUT/report.json``
(every figure) and ``OUT/report.html`` (:mod:`bunet.report_html`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, evalstats, metrics, volume
from .cases import Case, CaseError, find_cases, load_slice, load_volume
from .client import Client, ClientError, Summary
from .service.transport import NotAllowed

ENGINES = ("secure", "float", "fixed")
SLICES_PER_ROUND = 8  # 2D cases per round of secure jobs: enough to fill both lanes, a bar step each round


class EvaluationError(RuntimeError):
    """One line for the user."""


@dataclass
class Scored:
    """One case, scored: per engine its metrics; the comparisons at model resolution."""

    name: str
    unit_volume: str
    truth_volume: float
    engines: dict[str, dict[str, float | None]] = field(default_factory=dict)
    secure_vs_fixed_differ: int | None = None  # pixels, at model resolution
    pixels: int = 0  # compared at model resolution
    secure_float_agreement: float | None = None
    overlay: dict[str, np.ndarray] | None = None  # one 2D view for the report (image, truth, engines)

    def row(self) -> dict:
        return {
            "case": self.name,
            "truth_volume": self.truth_volume,
            **self.engines,
            "secure_vs_fixed_pixels_differ": self.secure_vs_fixed_differ,
            "pixels_compared": self.pixels,
            "secure_float_pixel_agreement": self.secure_float_agreement,
        }


def _score(mask: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...] | None, unit: float) -> dict:
    return {
        "dice": metrics.dice(mask, truth),
        "iou": metrics.iou(mask, truth),
        "hd95": metrics.hd95(mask, truth, spacing),
        "volume": float(mask.sum()) * unit,
        "_inter": int((mask & truth).sum()),
        "_sum": int(mask.sum()) + int(truth.sum()),
    }


def _compare(s: Scored, sec: np.ndarray, plain: tuple[np.ndarray, np.ndarray] | None) -> None:
    """Secure vs fixed point and vs float, on the labels at model resolution."""
    s.pixels = int(sec.size)
    if plain is not None:
        fl, fx = plain
        s.secure_vs_fixed_differ = int(np.count_nonzero(sec != fx))
        s.secure_float_agreement = float(np.mean(sec == fl))


class Study:
    """Runs the cases through a connected :class:`Client` and collects the scored results."""

    def __init__(self, client: Client, *, plain: bool = True) -> None:
        self.client = client
        self.plain = plain
        self.plain_note = "not requested"
        self.summary = Summary()
        self.scored: list[Scored] = []

    def _plain(self, x: np.ndarray, plane: str) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.plain:
            return None
        try:
            return self.client.plain_labels(x, plane)
        except NotAllowed as e:
            self.plain = False
            self.plain_note = str(e)
            return None

    def slices(self, group: list[Case]) -> None:
        """2D cases: resized to the model input like the training images, one round of jobs."""
        from .model.train import resize  # the training's resize, so the figures match its evaluation

        h, w = self.client.model.preprocessing.input_size
        plane = "xy" if "xy" in self.client.model.planes else self.client.model.planes[0]
        loaded = [load_slice(c) for c in group]
        x = np.stack([resize(img, (h, w)) for img, _ in loaded])[:, None].astype(np.float32)
        sec = self.client.segment_slices(x, plane, summary=self.summary)
        plain = self._plain(x, plane)
        for i, (case, (img, truth)) in enumerate(zip(group, loaded, strict=True)):
            masks = {"secure": sec[i]}
            if plain is not None:
                masks.update(float=plain[0][i], fixed=plain[1][i])
            s = Scored(case.name, "pixels", float(truth.sum()))
            full = {k: resize(v.astype(np.float32), truth.shape, nearest=True) > 0.5 for k, v in masks.items()}
            s.engines = {k: _score(m, truth, None, 1.0) for k, m in full.items()}
            _compare(s, sec[i], None if plain is None else (plain[0][i], plain[1][i]))
            s.overlay = {"image": img, "truth": truth, **full}
            self.scored.append(s)
        self.summary.slices[plane] = self.summary.slices.get(plane, 0) + len(group)

    def volume(self, case: Case) -> None:
        """A NIfTI case: every plane the model serves, fused by majority vote as ``segment`` does."""
        scan, truth = load_volume(case)
        per: dict[str, dict[str, np.ndarray]] = {k: {} for k in ENGINES}
        sec_all, fl_all, fx_all = [], [], []
        for p in self.client.model.planes:
            x, size = self.client.plane_inputs(scan, p)
            sec = self.client.segment_slices(x, p, summary=self.summary)
            self.summary.slices[p] = self.summary.slices.get(p, 0) + len(x)
            per["secure"][p] = self.client.plane_volume(sec, size, p)
            sec_all.append(sec.ravel())
            plain = self._plain(x, p)
            if plain is not None:
                per["float"][p] = self.client.plane_volume(plain[0], size, p)
                per["fixed"][p] = self.client.plane_volume(plain[1], size, p)
                fl_all.append(plain[0].ravel())
                fx_all.append(plain[1].ravel())
        classes = len(self.client.model.preprocessing.classes)
        masks = {k: volume.fuse(v, classes=classes) > 0 for k, v in per.items() if v}
        ml = float(np.prod(scan.zooms)) / 1000.0
        s = Scored(case.name, "mL", float(truth.sum()) * ml)
        s.engines = {k: _score(m, truth, scan.zooms, ml) for k, m in masks.items()}
        sec = np.concatenate(sec_all)
        _compare(s, sec, (np.concatenate(fl_all), np.concatenate(fx_all)) if fx_all else None)
        z = int(np.argmax(truth.sum(axis=(0, 1)) + masks["secure"].sum(axis=(0, 1))))  # axial slice, most lesion
        view = {
            "image": self.client.model.preprocessing.apply(scan.hu[:, :, z]),
            "truth": truth[:, :, z],
            **{k: m[:, :, z] for k, m in masks.items()},
        }
        s.overlay = {k: volume.to_slices(v[:, :, None], "xy")[0] for k, v in view.items()}
        self.scored.append(s)


# ---------------------------------------------------------------------------------------------


def summarise(scored: list[Scored], plain: bool) -> dict:
    """Every study-level figure: per engine mean Dice with CI, pooled Dice, IoU, HD95; secure
    minus float; paired tests; Bland-Altman of lesion volume; secure == fixed point."""
    engines = [e for e in ENGINES if plain or e == "secure"]
    out: dict = {"cases": len(scored)}
    for e in engines:
        d = [s.engines[e]["dice"] for s in scored]
        hd = [s.engines[e]["hd95"] for s in scored]
        hd_ok = [v for v in hd if v is not None]
        inter = sum(s.engines[e]["_inter"] for s in scored)
        tot = sum(s.engines[e]["_sum"] for s in scored)
        out[e] = {
            "dice_mean": evalstats.bootstrap_mean_ci(d),
            "dice_pooled": 2.0 * inter / tot if tot else 1.0,
            "iou_mean": float(np.mean([s.engines[e]["iou"] for s in scored])),
            "hd95_median": float(np.median(hd_ok)) if hd_ok else None,
            "hd95_mean": float(np.mean(hd_ok)) if hd_ok else None,
            "hd95_undefined_cases": len(hd) - len(hd_ok),
        }
    truth_v = [s.truth_volume for s in scored]
    sec_v = [s.engines["secure"]["volume"] for s in scored]
    out["bland_altman_volume_secure_vs_truth"] = evalstats.bland_altman(sec_v, truth_v)
    if plain:
        sd = np.array([s.engines["secure"]["dice"] for s in scored])
        fd = np.array([s.engines["float"]["dice"] for s in scored])
        out["dice_difference_secure_minus_float"] = evalstats.bootstrap_mean_ci(sd - fd)
        out["secure_vs_float_dice_tests"] = evalstats.paired_tests(sd, fd)
        out["bland_altman_volume_secure_vs_float"] = evalstats.bland_altman(
            sec_v, [s.engines["float"]["volume"] for s in scored]
        )
        differ = [s.secure_vs_fixed_differ for s in scored]
        out["secure_equals_fixed_point"] = {
            "cases_equal": sum(1 for d in differ if d == 0),
            "cases": len(scored),
            "fraction_equal": sum(1 for d in differ if d == 0) / max(1, len(scored)),
            "pixels_differ": int(sum(differ)),
            "pixels_compared": sum(s.pixels for s in scored),
        }
        agree = [s.secure_float_agreement for s in scored]
        out["secure_float_pixel_agreement"] = {"mean": float(np.mean(agree)), "min": float(np.min(agree))}
    return out


def _clean(row: dict) -> dict:
    """Drop the internal pooled-Dice counters from a per-case row."""
    return {
        k: ({kk: vv for kk, vv in v.items() if not kk.startswith("_")} if isinstance(v, dict) else v)
        for k, v in row.items()
    }


def build_report(study: Study, cases_path: str, truth_path: str, server: str | None, kind: str, wall_s: float) -> dict:
    m = study.client.model
    q = m.quantization
    plain = bool(study.scored) and "float" in study.scored[0].engines
    sm = study.summary
    return {
        "report": "bunet-client evaluate",
        "bunet_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cases_path": cases_path,
        "truth_path": truth_path,
        "server": server or "embedded (local)",
        "model": {
            "name": m.name,
            "ring_bits": q.ring_bits,
            "frac_bits": q.frac_bits,
            "weight_frac_bits": q.weight_frac_bits,
            "input_size": list(m.preprocessing.input_size),
            "planes": m.planes,
        },
        "case_kind": kind,
        "units": {
            "volume": "mL" if kind == "volume" else "pixels (2D slices carry no spacing)",
            "hd95": "mm" if kind == "volume" else "pixels",
            "dice_iou_hd95": "against the labels at the labels' own resolution",
            "secure_vs_fixed_and_float": "labels at model resolution (what the engines compute)",
        },
        "plain_eval": {
            "available": plain,
            "note": "float and fixed-point masks from the server's plaintext evaluation"
            if plain
            else f"secure against the labels only; {study.plain_note}",
        },
        "statistics": {
            "bootstrap_resamples": evalstats.RESAMPLES,
            "bootstrap_seed": evalstats.SEED,
            "confidence": evalstats.CONFIDENCE,
        },
        "summary": summarise(study.scored, plain),
        "secure_traffic": {
            "jobs": sm.jobs,
            "slices": sm.slices,
            "bytes_up": sm.bytes_up,
            "bytes_down": sm.bytes_down,
            "client_phase_seconds": sm.seconds,
        },
        "wall_seconds": round(wall_s, 2),
        "cases": [_clean(s.row()) for s in study.scored],
    }


def table(report: dict) -> list[str]:
    """The short table printed at the end."""
    s = report["summary"]
    unit = "px" if report["case_kind"] == "slice" else "mm"
    lines = [
        f"{s['cases']} cases ({report['case_kind']}s); plaintext comparison: "
        f"{'on' if report['plain_eval']['available'] else 'off — ' + report['plain_eval']['note']}",
        f"{'engine':<8} {'mean Dice [95% CI]':<24} {'pooled Dice':>11} {'mean IoU':>9} {'median HD95':>12}",
    ]
    for e in ENGINES:
        if e not in s:
            continue
        d = s[e]["dice_mean"]
        ci = f"{d['mean']:.3f} [{_n(d['low'])}, {_n(d['high'])}]"
        hd = "-" if s[e]["hd95_median"] is None else f"{s[e]['hd95_median']:.1f} {unit}"
        lines.append(f"{e:<8} {ci:<24} {s[e]['dice_pooled']:>11.3f} {s[e]['iou_mean']:>9.3f} {hd:>12}")
    if "secure_vs_float_dice_tests" in s:
        dd, t = s["dice_difference_secure_minus_float"], s["secure_vs_float_dice_tests"]
        w, k = t["wilcoxon"], t["ks_2samp"]
        lines.append(
            f"secure - float Dice: {dd['mean']:+.4f} [{_n(dd['low'], '+.4f')}, {_n(dd['high'], '+.4f')}]; "
            f"Wilcoxon p = {_n(w['p_value'])}{' (' + w['note'] + ')' if w.get('note') else ''}; "
            f"KS D = {_n(k['statistic'])}, p = {_n(k['p_value'])}"
        )
        eq = s["secure_equals_fixed_point"]
        lines.append(
            f"secure == fixed point: {eq['cases_equal']}/{eq['cases']} cases "
            f"({eq['pixels_differ']} of {eq['pixels_compared']:,} pixels differ); "
            f"pixel agreement secure vs float: mean {s['secure_float_pixel_agreement']['mean']:.4f}"
        )
    return lines


def _n(v: float | None, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, token: str | None) -> int:
    """The sub-command (arguments from :mod:`bunet.cli`); errors as EvaluationError (one line)."""
    from . import report_html
    from .model.graph import ModelError

    try:
        cases = find_cases(args.cases, args.truth)
    except CaseError as e:
        raise EvaluationError(str(e)) from None
    if args.limit:
        cases = cases[: args.limit]
    out = Path(args.out)
    if args.model and args.server:
        raise EvaluationError("--model is for the embedded server; a remote server has its own model")
    kind = cases[0].kind
    t0 = time.perf_counter()
    try:
        out.mkdir(parents=True, exist_ok=True)
        # the embedded server runs this machine's own copy of the model: plaintext evaluation is no disclosure
        with Client(
            args.server,
            token=token,
            tls=args.tls,
            ca=args.ca,
            cert=args.cert,
            key=args.key,
            model=args.model,
            allow_plain_eval=args.server is None,
            insecure=getattr(args, "insecure", False),
        ) as client:
            study = Study(client, plain=not args.secure_only)
            if args.secure_only:
                study.plain_note = "--secure-only was given"
            _run_cases(study, cases, args.quiet)
        report = build_report(study, str(args.cases), str(args.truth), args.server, kind, time.perf_counter() - t0)
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        report_html.write(report, [s for s in study.scored], out / "report.html")
    except (CaseError, ClientError, volume.ScanError, ModelError, ValueError, OSError) as e:
        raise EvaluationError(str(e)) from None
    for line in table(report):
        print(line)
    print(f"report: {out / 'report.html'}, {out / 'report.json'}")
    return 0


def _run_cases(study: Study, cases: list[Case], quiet: bool) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(cases), unit="case", desc="evaluate", file=sys.stderr, disable=True if quiet else None)
    try:
        if cases[0].kind == "slice":
            for i in range(0, len(cases), SLICES_PER_ROUND):
                group = cases[i : i + SLICES_PER_ROUND]
                study.slices(group)
                bar.update(len(group))
        else:
            for c in cases:
                study.volume(c)
                bar.update(1)
    finally:
        bar.close()
