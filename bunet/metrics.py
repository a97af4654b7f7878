"""Segmentation overlap and distance metrics of binary masks (2D slices or 3D volumes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .model.train import dice

__all__ = ["dice", "iou", "hd95", "surface"]


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union (Jaccard) of two boolean masks (1.0 when both are empty)."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    union = int((p | t).sum())
    return 1.0 if union == 0 else int((p & t).sum()) / union


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask: in the mask, with a face neighbour outside it (or at the edge)."""
    m = np.asarray(mask, bool)
    inner = ndimage.binary_erosion(m, ndimage.generate_binary_structure(m.ndim, 1), border_value=0)
    return m & ~inner


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> float | None:
    """95th percentile of the symmetric surface distances (both directions pooled, as in MedPy's
    ``hd95``), in units of ``spacing`` (pixels without it). 0.0 when both masks are empty;
    None (undefined) when exactly one is."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return None
    sp, st = surface(p), surface(t)
    to_t = ndimage.distance_transform_edt(~st, sampling=spacing)  # distance of every pixel to truth's surface
    to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(np.percentile(np.concatenate([to_t[sp], to_p[st]]), 95))
