"""Labelled cases for a validation study: NIfTI volumes with lesion label volumes, or 2D slices
(PNG/JPEG, e.g. MedSeg's 8-bit windowed CT slices) with mask images.

A case folder holds the images themselves or an ``images/`` sub-folder; the truth folder holds one
label file per case with the same stem (``7.jpg`` -> ``7.png``; ``ct.nii.gz`` -> ``ct.nii.gz``),
optionally with a suffix such as ``_mask`` or ``_seg``. Any label above zero is lesion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import volume

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_EXTS = (".nii.gz", ".nii")
TRUTH_SUFFIXES = ("", "_mask", "_seg", "_label", "_labels", "_gt")


class CaseError(ValueError):
    """Cases or labels that cannot be used (one line, names the file)."""


@dataclass
class Case:
    name: str
    kind: str  # "slice" (2D image) or "volume" (NIfTI)
    image: Path
    truth: Path


def _ext(p: Path) -> str | None:
    low = p.name.lower()
    return next((e for e in NIFTI_EXTS + IMAGE_EXTS if low.endswith(e)), None)


def _stem(p: Path) -> str:
    e = _ext(p)
    return p.name[: -len(e)] if e else p.stem


def _order(stem: str) -> tuple[int, int | str]:
    return (0, int(stem)) if stem.isdigit() else (1, stem)


def find_cases(cases: str | Path, truth: str | Path | None) -> list[Case]:
    """Pair every case image with its label file; CaseError if anything is missing or mixed."""
    cases, truth_p = Path(cases), Path(truth) if truth else None
    if truth_p is None:
        raise CaseError("no labels given: --truth LABELS (a folder of label files, or one label volume)")
    if not cases.exists():
        raise CaseError(f"cases not found: {cases}")
    if not truth_p.exists():
        raise CaseError(f"labels not found: {truth_p}")
    if cases.is_file():
        kind = "volume" if _ext(cases) in NIFTI_EXTS else "slice" if _ext(cases) else None
        if kind is None:
            raise CaseError(f"{cases.name} is neither NIfTI nor a PNG/JPEG image")
        label = truth_p if truth_p.is_file() else _truth_for(_stem(cases), kind, truth_p)
        return _checked([Case(_stem(cases), kind, cases, label)])
    folder = cases / "images" if (cases / "images").is_dir() else cases
    files = [p for p in folder.iterdir() if p.is_file() and _ext(p)]
    vols = [p for p in files if _ext(p) in NIFTI_EXTS]
    imgs = [p for p in files if _ext(p) in IMAGE_EXTS]
    if vols and imgs:
        raise CaseError(f"{folder} mixes NIfTI volumes and 2D images; give one kind of case")
    if not files:
        raise CaseError(f"no NIfTI volumes or PNG/JPEG slices in {folder}")
    if not truth_p.is_dir():
        raise CaseError(f"--truth must be a folder of label files when the cases are a folder ({truth_p})")
    kind = "volume" if vols else "slice"
    out = [Case(_stem(p), kind, p, _truth_for(_stem(p), kind, truth_p)) for p in (vols or imgs)]
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise CaseError(f"{folder} holds two images with the same name stem")
    return _checked(sorted(out, key=lambda c: _order(c.name)))


def _checked(cases: list[Case]) -> list[Case]:
    """Fail fast, before any server is contacted: every image and its label have the same size
    (read from the file headers, no pixel data decoded)."""
    for c in cases:
        a, b = _size(c.image, c), _size(c.truth, c)
        if a != b:
            what = "image and label" if c.kind == "slice" else "scan and label volume"
            raise CaseError(
                f"case {c.name!r}: {what} differ in {'size' if c.kind == 'slice' else 'shape'} "
                f"({'x'.join(map(str, a))} vs {'x'.join(map(str, b))})"
            )
    return cases


def _size(path: Path, case: Case) -> tuple[int, ...]:
    try:
        if case.kind == "slice":
            from PIL import Image

            with Image.open(path) as im:
                return im.size
        import nibabel as nib

        return tuple(int(v) for v in nib.load(str(path)).shape[:3])
    except Exception as e:  # PIL and nibabel raise many types for unreadable files
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CaseError(f"cannot read {path.name} (case {case.name!r}): {why}") from None


def _truth_for(stem: str, kind: str, folder: Path) -> Path:
    exts = NIFTI_EXTS if kind == "volume" else IMAGE_EXTS
    for suffix in TRUTH_SUFFIXES:
        for e in exts:
            for cand in (folder / f"{stem}{suffix}{e}", folder / f"{stem}{suffix}{e.upper()}"):
                if cand.is_file():
                    return cand
    raise CaseError(f"no label file for case {stem!r} in {folder}")


# ---------------------------------------------------------------------------------------------


def load_slice(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """A 2D case: the image as float32 in [0, 1] (8-bit grey / 255: already windowed) and the
    lesion mask (bool), same shape."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(case.image) as im:
            img = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        with Image.open(case.truth) as m:
            if m.mode in ("P", "1", "I", "I;16"):  # label indices
                lab = np.asarray(m) > 0
            else:  # grey or colour masks (0 / 255, possibly JPEG-noisy)
                g = np.asarray(m.convert("L"))
                lab = g > (127 if g.max() > 1 else 0)
    except (OSError, UnidentifiedImageError) as e:
        raise CaseError(f"cannot read case {case.name!r}: {e}") from None
    if img.shape != lab.shape:
        raise CaseError(
            f"case {case.name!r}: image {img.shape[1]}x{img.shape[0]} and label "
            f"{lab.shape[1]}x{lab.shape[0]} differ in size"
        )
    return img, lab


def load_volume(case: Case) -> tuple[volume.Scan, np.ndarray]:
    """A NIfTI case: the scan, and the lesion mask (bool) in the scan's canonical orientation."""
    try:
        scan = volume.load_scan(case.image)
        lab = volume.load_scan(case.truth)
    except volume.ScanError as e:
        raise CaseError(f"case {case.name!r}: {e}") from None
    if lab.image.shape[:3] != scan.image.shape[:3]:
        raise CaseError(
            f"case {case.name!r}: scan {scan.image.shape[:3]} and label volume {lab.image.shape[:3]} differ in shape"
        )
    if not np.allclose(lab.image.affine, scan.image.affine, atol=1e-3):
        raise CaseError(f"case {case.name!r}: scan and label volume have different affines (grids)")
    return scan, lab.hu > 0
