"""Runs of ``bunet-client segment``: one scan or a folder of cases.

A case is a NIfTI file or a folder holding one DICOM series. A folder that holds no DICOM file
itself is a folder of cases: its NIfTI files and its sub-folders that hold DICOM files. Each case's
outputs are named after it (``<name>_mask.nii.gz``, ``_report.json``, ``_preview.png``,
``_seg.dcm``) beside the input or in ``-o DIR``. Every output is first written to a hidden
``.part-`` file and renamed into place only when the whole case has succeeded (the mask last), so a
failed or interrupted case leaves nothing behind, and a case whose outputs all exist is done:
a rerun skips it (resume).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import volume
from .burden import Burden, burden
from .dicom import DicomScan, is_dicom_folder, load_series, write_seg
from .lungs import Lungs, lung_fields

if TYPE_CHECKING:  # the client (gRPC, native kernels) is needed only once a case runs
    from .client import Client

NIFTI_SUFFIXES = (".nii.gz", ".nii")
OUTPUTS = {"mask": "_mask.nii.gz", "report": "_report.json", "preview": "_preview.png", "dicom_seg": "_seg.dcm"}
# what a named output may end in, and what it is called in an error
OUTPUT_KINDS = {
    "mask": (volume.MASK_SUFFIXES, "mask file"),
    "report": ((".json",), "report"),
    "preview": ((".png",), "preview"),
    "dicom_seg": ((".dcm",), "DICOM-SEG file"),
}


@dataclass
class Case:
    path: Path
    name: str
    dicom: bool


@dataclass
class Options:
    planes: list[str] | None = None
    fusion: str = "majority"
    lung_mask: bool = True
    series: str | None = None


@dataclass
class Outcome:
    case: Case
    status: str  # done, skipped, failed
    message: str = ""
    report: Burden | None = None
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)


def case_name(path: Path) -> str:
    for suf in NIFTI_SUFFIXES:
        if path.name.endswith(suf):
            return path.name[: -len(suf)]
    return path.name


def discover(inputs: list[str]) -> list[Case]:
    """Cases named by the command line, in order. Paths that do not exist are kept as cases so
    that they fail on their own (with a clear message) without stopping the others."""
    cases: list[Case] = []
    for arg in inputs:
        p = Path(arg)
        if p.is_dir() and not is_dicom_folder(p):
            found = [
                Case(q, case_name(q), False)
                for q in sorted(p.iterdir())
                if q.is_file() and q.name.endswith(NIFTI_SUFFIXES) and not q.name.startswith(".")
            ]
            found += [Case(q, q.name, True) for q in sorted(p.iterdir()) if q.is_dir() and is_dicom_folder(q)]
            cases += sorted(found, key=lambda c: c.path.name) or [Case(p, p.name, True)]  # empty: fails alone
        else:
            cases.append(Case(p, case_name(p), p.is_dir()))
    return cases


def is_batch(inputs: list[str], cases: list[Case]) -> bool:
    """Several cases, or a folder of cases, as opposed to a single scan."""
    return len(cases) != 1 or (Path(inputs[0]).is_dir() and not cases[0].dicom)


def load_case(case: Case, series: str | None) -> tuple[volume.Scan, DicomScan | None]:
    if case.dicom:
        d = load_series(case.path, series)
        return d.scan, d
    if case.path.is_dir():
        raise volume.ScanError(f"{case.path} holds no NIfTI file and no DICOM series")
    if not case.path.name.endswith(NIFTI_SUFFIXES) and case.path.is_file():
        raise volume.ScanError(f"{case.path.name} is neither a NIfTI file (.nii, .nii.gz) nor a DICOM series folder")
    return volume.load_scan(case.path), None


def run_case(
    case: Case,
    client_for: Callable[[], Client],
    outputs: dict[str, Path],
    opts: Options,
    progress: Callable[[int, int], None] | None = None,
) -> Outcome:
    """Segment one case and write its outputs (``outputs``: kind -> final path) all or nothing.

    Raises the error that stopped it (ScanError, ClientError, ValueError, OSError...)."""
    t0 = time.perf_counter()
    # everything that can be checked is, before any server is contacted: a failed case writes nothing
    for kind, path in outputs.items():
        volume.check_output_path(path, *OUTPUT_KINDS[kind])
    scan, dscan = load_case(case, opts.series)
    if "dicom_seg" in outputs and dscan is None:
        raise volume.ScanError(f"--dicom-seg needs a DICOM series as input; {case.path.name} is NIfTI")
    lungs = lung_fields(scan.hu, scan.zooms)
    roi = lungs.mask if opts.lung_mask else None
    if roi is not None and not roi.any():
        raise volume.ScanError(
            f"{case.name}: no lung fields found (is it a chest CT in HU?); --no-lung-mask segments the whole scan"
        )
    client = client_for()
    result = client.segment(scan, opts.planes, opts.fusion, progress, roi=roi)
    labels, removed = mask_to_lungs(result.labels, lungs, opts.lung_mask)
    report = burden(
        labels, lungs.labels, scan.zooms, scan=str(case.path), lung_mask_applied=opts.lung_mask, removed_voxels=removed
    )
    report.extra = {"slices_sent": dict(result.summary.slices), "fusion": opts.fusion}
    _write_all(outputs, labels, scan, dscan, lungs, report, client)
    lesion = int((labels > 0).sum())
    lines = [
        f"mask: {outputs['mask']} ({lesion} lesion voxels of {labels.size})",
        *report.lines(),
        *result.summary.lines(),
    ]
    if roi is not None:
        total = {p: volume.to_slices(roi, p).shape[0] for p in result.summary.slices}
        lines.append(
            "lungs first: segmented only the slices that cut the lung fields ("
            + ", ".join(f"{p}: {n} of {total[p]}" for p, n in result.summary.slices.items())
            + ")"
        )
    return Outcome(case, "done", report=report, seconds=time.perf_counter() - t0, lines=lines)


def mask_to_lungs(labels: np.ndarray, lungs: Lungs, apply: bool) -> tuple[np.ndarray, int]:
    """Lesion labels kept inside the lung fields (when ``apply``), and how many voxels that removed."""
    if not apply:
        return labels, 0
    outside = (labels > 0) & ~lungs.mask
    return np.where(outside, 0, labels).astype(labels.dtype), int(outside.sum())


def _write_all(
    outputs: dict[str, Path],
    labels: np.ndarray,
    scan: volume.Scan,
    dscan: DicomScan | None,
    lungs: Lungs,
    report: Burden,
    client: Client,
) -> None:
    from .preview import write_preview

    parts = {k: p.with_name(".part-" + p.name) for k, p in outputs.items()}
    try:
        volume.write_mask(labels, scan, parts["mask"])
        if "report" in parts:
            report.write_json(parts["report"])
        if "preview" in parts:
            write_preview(scan, labels, lungs.labels, parts["preview"], report)
        if "dicom_seg" in parts and dscan is not None:
            write_seg(labels, dscan, parts["dicom_seg"], model_name=client.model.name)
        for k in sorted(parts, key=lambda k: k == "mask"):  # the mask last: it marks the case done
            os.replace(parts[k], outputs[k])
    finally:
        for p in parts.values():
            p.unlink(missing_ok=True)


def outputs_for(case: Case, out_dir: Path | None, wanted: list[str]) -> dict[str, Path]:
    """Default output paths of a case: ``<name><suffix>`` in ``out_dir`` or beside the input."""
    where = out_dir if out_dir is not None else case.path.parent
    return {k: where / f"{case.name}{OUTPUTS[k]}" for k in ["mask", *wanted]}


def is_done(outputs: dict[str, Path]) -> bool:
    return all(p.is_file() for p in outputs.values())


def summary_table(outcomes: list[Outcome]) -> list[str]:
    w = max([4, *(len(o.case.name) for o in outcomes)])
    lines = [f"{'case':<{w}}  {'status':<8} {'lesion mL':>9} {'involved':>9} {'time':>7}  note"]
    for o in outcomes:
        if o.report is not None:
            t = o.report.parts["total"]
            nums = f"{t.lesion_ml:>9.1f} {t.involvement_percent:>8.1f}% {o.seconds:>6.0f}s"
        else:
            nums = f"{'-':>9} {'-':>9} {'-':>7}"
        lines.append(f"{o.case.name:<{w}}  {o.status:<8} {nums}  {o.message}".rstrip())
    return lines


def run_batch(
    cases: list[Case],
    client_for: Callable[[], Client],
    out_dir: Path | None,
    wanted: list[str],
    opts: Options,
    *,
    overwrite: bool = False,
    errors: tuple[type[BaseException], ...] = (Exception,),
    progress_for: Callable[[Case], tuple[Callable[[int, int], None] | None, Callable[[], None]]] | None = None,
) -> list[Outcome]:
    """Run every case; one failure does not stop the others. ``errors``: what counts as a case's
    own failure (anything else, e.g. KeyboardInterrupt, stops the run)."""
    outcomes: list[Outcome] = []
    claimed: dict[Path, str] = {}
    for case in cases:
        outs = outputs_for(case, out_dir, [k for k in wanted if k != "dicom_seg" or case.dicom])
        if outs["mask"] in claimed:
            outcomes.append(Outcome(case, "failed", f"same output name as {claimed[outs['mask']]}"))
            continue
        claimed[outs["mask"]] = str(case.path)
        if not overwrite and is_done(outs):
            outcomes.append(Outcome(case, "skipped", "outputs exist"))
            continue
        progress, close = progress_for(case) if progress_for else (None, lambda: None)
        try:
            outcome = run_case(case, client_for, outs, opts, progress)
        except errors as e:
            outcome = Outcome(case, "failed", str(e).splitlines()[0] if str(e) else type(e).__name__)
        finally:
            close()
        outcomes.append(outcome)
        print(f"{case.name}: {outcome.status}{' - ' + outcome.message if outcome.message else ''}", file=sys.stderr)
    return outcomes
