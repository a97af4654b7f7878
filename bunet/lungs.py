"""The lung fields of a CT scan, found in plaintext on the client's own volume.

A lesion mask is only meaningful inside the lungs: the lesion U-Net sees ground-glass-like texture
in the bowel, fat and muscle too. :func:`lung_fields` finds the two lungs with the classic
threshold-and-components method (no model):

1. aerated tissue: voxels below ``AIR_HU`` (-400 HU), grouped into 3D connected components;
2. a component is a lung field when it holds at least ``MIN_ML`` millilitres and fewer than
   ``PURE_GAS_MAX`` of its voxels are pure gas (below -950 HU). The air around the body and the
   gas in the bowel are pure gas; aerated lung carries vessels, interstitium and partial volume and
   sits around -850 HU. This also keeps lungs that touch the image border in a tight chest crop,
   where "touches the border" would wrongly call them outside air;
3. left/right: voxels right of the body's midline are the right lung (a component that crosses
   the midline through the trachea is split there);
4. each lung is closed and its holes filled slice by slice, so that lesions (ground glass -700 to
   -300 HU, consolidation around 0 HU), vessels and juxta-pleural opacities count as lung.

Known limits: severe emphysema (much lung below -950 HU) can fail test 2, and the trachea and main
bronchi count as lung. Arrays are canonical RAS+ (x towards the patient's right), as in
:mod:`bunet.volume`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

AIR_HU = -400.0
PURE_GAS_HU = -950.0
PURE_GAS_MAX = 0.2
MIN_ML = 10.0
CLOSE_MM = 25.0  # wide enough to take in lesions along the pleura, which a threshold cuts out

RIGHT, LEFT = 1, 2  # values in the lung label volume
SIDES = {"right": RIGHT, "left": LEFT}


@dataclass
class Lungs:
    """Lung label volume (0 outside, RIGHT, LEFT) in canonical orientation."""

    labels: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.labels > 0


def lung_fields(hu: np.ndarray, zooms: tuple[float, float, float]) -> Lungs:
    """Right/left lung labels of a canonical HU volume with voxel size ``zooms`` (mm)."""
    voxel_ml = float(np.prod(zooms)) / 1000.0
    air = hu < AIR_HU
    comp, n = ndimage.label(air)
    if n == 0:
        return Lungs(np.zeros(hu.shape, dtype=np.uint8))
    idx = np.arange(1, n + 1)
    size = ndimage.sum_labels(air, comp, idx)
    pure = ndimage.sum_labels(hu < PURE_GAS_HU, comp, idx) / np.maximum(size, 1)
    keep = idx[(size * voxel_ml >= MIN_ML) & (pure < PURE_GAS_MAX)]
    fields = np.isin(comp, keep)
    mid = _midline_x(hu)
    x = np.arange(hu.shape[0])[:, None, None]
    out = np.zeros(hu.shape, dtype=np.uint8)
    for value, side in ((RIGHT, x >= mid), (LEFT, x < mid)):
        out[_close_fill(fields & side, zooms)] = value  # right wins the (rare) overlap at the midline
    return Lungs(out)


def _midline_x(hu: np.ndarray) -> float:
    """x of the body's centre (mean x of non-air voxels); the image centre when the body fills it."""
    body = hu >= AIR_HU
    counts = body.sum(axis=(1, 2)).astype(float)
    if counts.sum() == 0:
        return (hu.shape[0] - 1) / 2
    return float((np.arange(hu.shape[0]) * counts).sum() / counts.sum())


def _close_fill(m: np.ndarray, zooms: tuple[float, float, float]) -> np.ndarray:
    """Per axial slice: closing with a disc of CLOSE_MM, then hole filling."""
    if not m.any():
        return m
    rx, ry = (max(1, round(CLOSE_MM / z)) for z in zooms[:2])
    gx, gy = np.ogrid[-rx : rx + 1, -ry : ry + 1]
    disc = ((gx / rx) ** 2 + (gy / ry) ** 2) <= 1
    out = np.zeros_like(m)
    for k in np.nonzero(m.any(axis=(0, 1)))[0]:
        # pad so the closing does not glue the lung to the image border
        s = np.pad(m[..., k], ((rx, rx), (ry, ry)))
        s = ndimage.binary_closing(s, disc)[rx:-rx, ry:-ry] | m[..., k]
        out[..., k] = ndimage.binary_fill_holes(s)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
