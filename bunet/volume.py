"""CT volumes: NIfTI I/O, intensity preprocessing, slicing along planes, resizing, fusion.

Volumes are handled in nibabel's closest canonical orientation (RAS+: array axes x -> patient
right... left-to-right, y posterior-to-anterior, z inferior-to-superior), whatever the file's
orientation, and mapped back on writing, so a mask always has the input's grid and affine.
2D slices use the radiological display convention the training images use: for an axial (xy)
slice, rows run anterior -> posterior and columns patient-right -> patient-left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

PLANES = ("xy", "yz", "xz")
FUSIONS = ("majority", "union", "single")

# Stack layout per plane from a canonical array v[x, y, z]: (slice, row, col) after flipping
# x and/or y/z so rows/cols follow the display convention above.
_LAYOUT = {
    "xy": ((2, 1, 0), (0, 1)),  # slices along z; rows = -y (A->P), cols = -x (R->L)
    "xz": ((1, 2, 0), (0, 2)),  # slices along y; rows = -z (S->I), cols = -x
    "yz": ((0, 2, 1), (1, 2)),  # slices along x; rows = -z, cols = -y (A->P)
}


class ScanError(ValueError):
    """An input scan that cannot be used (message is one line, names the problem)."""


@dataclass
class Scan:
    """A loaded CT volume: HU values in canonical orientation plus what is needed to go back."""

    hu: np.ndarray  # float32 (X, Y, Z), canonical RAS+
    image: nib.Nifti1Image  # the file as loaded (affine, header, original orientation)
    ornt: np.ndarray  # orientation transform original -> canonical

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel size (mm) along the canonical axes."""
        z = np.asarray(self.image.header.get_zooms()[:3], dtype=float)
        return tuple(float(z[int(a)]) for a in np.argsort(self.ornt[:, 0]))  # type: ignore[return-value]


def load_scan(path: str | Path) -> Scan:
    """Load a .nii / .nii.gz CT scan (any orientation) as HU in canonical orientation."""
    path = Path(path)
    if not path.is_file():
        raise ScanError(f"scan not found: {path}")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)  # applies scl_slope / scl_inter
    except Exception as e:  # nibabel raises many types for corrupt files
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ScanError(f"cannot read {path.name} as NIfTI: {why}") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ScanError(f"{path.name} is not a NIfTI image")
    return scan_from_image(img, data, path.name)


def scan_from_image(img: nib.Nifti1Image, data: np.ndarray, name: str) -> Scan:
    """A Scan from HU ``data`` in ``img``'s voxel order (any orientation); ``name`` for errors."""
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ScanError(f"{name} has {data.ndim} dimensions {data.shape}; a 3D CT volume is needed")
    if min(data.shape) < 1:
        raise ScanError(f"{name} has an empty dimension {data.shape}: no voxels to segment")
    if not np.isfinite(data).all():
        raise ScanError(f"{name} holds non-finite voxel values")
    aff = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(aff).all() or np.linalg.matrix_rank(aff[:3, :3]) < 3:
        raise ScanError(f"{name} has a singular or non-finite affine: its voxel geometry is unknown")
    ornt = nib.orientations.io_orientation(img.affine)
    canon = nib.orientations.apply_orientation(data, ornt)
    return Scan(np.ascontiguousarray(canon, dtype=np.float32), img, ornt)


def to_slices(vol: np.ndarray, plane: str) -> np.ndarray:
    """(X, Y, Z) canonical volume -> (n, rows, cols) stack of display-oriented slices."""
    if plane not in _LAYOUT:
        raise ValueError(f"unknown plane {plane!r}; use one of {', '.join(PLANES)}")
    perm, flips = _LAYOUT[plane]
    return np.ascontiguousarray(np.transpose(np.flip(vol, flips), perm))


def slice_spacing(zooms: tuple[float, float, float], plane: str) -> tuple[float, float]:
    """(row, column) pixel spacing in mm of :func:`to_slices` slices of a volume with voxel size ``zooms``."""
    perm = _LAYOUT[plane][0]
    return zooms[perm[1]], zooms[perm[2]]


def from_slices(stack: np.ndarray, plane: str) -> np.ndarray:
    """Inverse of :func:`to_slices`."""
    perm, flips = _LAYOUT[plane]
    return np.ascontiguousarray(np.flip(np.transpose(stack, np.argsort(perm)), flips))


def resize_stack(stack: np.ndarray, size: tuple[int, int], *, labels: bool = False) -> np.ndarray:
    """Resize every slice of (n, h, w) to (n, *size): linear for intensities, nearest for labels."""
    n, h, w = stack.shape
    if (h, w) == tuple(size):
        return stack.copy()
    if labels:  # nearest neighbour by index arithmetic (pixel centres), exact and cheap
        rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
        cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
        return stack[:, rows][:, :, cols]
    factors = (1.0, size[0] / h, size[1] / w)
    src = stack.astype(np.float32)
    # when shrinking, low-pass first (as the training images were resized) so thin structures
    # do not alias into noise; sigma follows the usual anti-aliasing rule (1/factor - 1) / 2
    sigma = tuple(max(0.0, (1.0 / f - 1.0) / 2.0) for f in factors)
    if any(sigma):
        src = ndimage.gaussian_filter(src, sigma, mode="nearest")
    out = ndimage.zoom(src, factors, order=1, mode="nearest", grid_mode=True)
    return out[:, : size[0], : size[1]]


def fuse(labels: dict[str, np.ndarray], method: str = "majority", classes: int = 2) -> np.ndarray:
    """Fuse per-plane label volumes (all canonical, same shape) into one.

    majority: per voxel the class with most votes, a tie going to the lowest class (background),
    so with three binary planes a voxel is lesion when two or three planes say so;
    union: the highest class any plane gives (any lesion vote wins); single: exactly one plane.
    """
    if not labels:
        raise ValueError("nothing to fuse")
    vols = list(labels.values())
    if method == "single" or len(vols) == 1:
        if len(vols) != 1:
            raise ValueError("fusion 'single' needs exactly one plane")
        return vols[0].astype(np.uint8)
    if method == "union":
        return np.maximum.reduce(vols).astype(np.uint8)
    if method != "majority":
        raise ValueError(f"unknown fusion {method!r}; use one of {', '.join(FUSIONS)}")
    votes = np.stack([sum((v == c).astype(np.uint8) for v in vols) for c in range(classes)])
    return np.argmax(votes, axis=0).astype(np.uint8)  # argmax takes the first maximum


def write_mask(labels: np.ndarray, scan: Scan, path: str | Path) -> None:
    """Write canonical labels as a uint8 NIfTI in the input's own grid, affine and header."""
    back = to_original(labels, scan)
    hdr = scan.image.header.copy()
    hdr.set_data_dtype(np.uint8)
    hdr.set_slope_inter(1, 0)
    out = type(scan.image)(back, scan.image.affine, hdr)
    out.set_qform(scan.image.affine, code=int(scan.image.header["qform_code"]) or 1)
    out.set_sform(scan.image.affine, code=int(scan.image.header["sform_code"]) or 1)
    path = Path(path)
    tmp = path.with_name(".part-" + path.name)
    try:
        nib.save(out, str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def to_original(labels: np.ndarray, scan: Scan) -> np.ndarray:
    """Canonical labels -> uint8 array in the scan's own voxel order (the file's grid)."""
    back = nib.orientations.apply_orientation(labels.astype(np.uint8), _inverse(scan.ornt))
    if back.shape != scan.image.shape[:3]:
        raise AssertionError("mask shape does not match the scan")  # a bug, not bad input
    return back


MASK_SUFFIXES = (".nii", ".nii.gz")


def check_output_path(path: str | Path, suffixes: tuple[str, ...], what: str) -> Path:
    """Refuse an output path that cannot be written, before any work: a folder, a wrong
    extension, a missing or read-only folder."""
    p = Path(path)
    if p.is_dir():
        raise ScanError(f"{what} {p} is a folder; give a file name ending in {' or '.join(suffixes)}")
    if not p.name.lower().endswith(suffixes) or p.name.lower() in suffixes:
        raise ScanError(f"{what} {p.name} must end in {' or '.join(suffixes)}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ScanError(f"folder {parent} of the {what} does not exist")
    if not os.access(parent, os.W_OK):
        raise ScanError(f"folder {parent} of the {what} is not writable")
    return p


def _inverse(ornt: np.ndarray) -> np.ndarray:
    """Orientation transform that undoes ``ornt`` (canonical -> original)."""
    inv = np.zeros_like(ornt)
    for i, (ax, flip) in enumerate(ornt):
        inv[int(ax)] = (i, flip)
    return inv
