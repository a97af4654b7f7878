"""The lesion-burden report: how much of each lung the lesions take up.

What a radiologist reads from a COVID-19 CT is the share of each lung involved (the basis of the
CT severity scores, e.g. 0-5 per lobe by percent involved), so the client reports lesion and lung
volumes (mL) and the percent involvement per lung and in total, from the fused lesion mask and the
lung fields of :mod:`bunet.lungs`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .lungs import SIDES


@dataclass
class Part:
    lung_ml: float
    lesion_ml: float

    @property
    def involvement_percent(self) -> float:
        return 100.0 * self.lesion_ml / self.lung_ml if self.lung_ml > 0 else 0.0


@dataclass
class Burden:
    scan: str
    voxel_ml: float
    parts: dict[str, Part]  # right, left, total
    lesion_ml_outside_lungs: float  # left in the mask when the lung mask is off, else 0
    lung_mask_applied: bool
    removed_voxels: int  # predicted lesion voxels the lung mask removed
    extra: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["parts"] = {
            k: {**asdict(p), "involvement_percent": round(p.involvement_percent, 3)} for k, p in self.parts.items()
        }
        return d

    def lines(self) -> list[str]:
        out = ["lesion burden:      lung mL   lesion mL   involved"]
        for k, p in self.parts.items():
            out.append(f"  {k:<14} {p.lung_ml:>9.1f}   {p.lesion_ml:>9.1f}   {p.involvement_percent:>7.1f} %")
        if self.lung_mask_applied:
            out.append(f"  lung mask: removed {self.removed_voxels} predicted lesion voxels outside the lungs")
        else:
            out.append(f"  lung mask off: {self.lesion_ml_outside_lungs:.1f} mL of lesion lies outside the lung fields")
        return out

    def write_json(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(".part-" + path.name)
        tmp.write_text(json.dumps(self.as_dict(), indent=1) + "\n")
        os.replace(tmp, path)


def burden(
    lesion: np.ndarray,
    lung_labels: np.ndarray,
    zooms: tuple[float, float, float],
    *,
    scan: str = "",
    lung_mask_applied: bool = True,
    removed_voxels: int = 0,
) -> Burden:
    """Volumes and involvement from a lesion mask and right/left lung labels (same grid)."""
    voxel_ml = float(np.prod(zooms)) / 1000.0
    les = lesion > 0
    parts = {}
    for name, value in SIDES.items():
        lung = lung_labels == value
        parts[name] = Part(round(int(lung.sum()) * voxel_ml, 3), round(int((les & lung).sum()) * voxel_ml, 3))
    parts["total"] = Part(
        round(sum(p.lung_ml for p in parts.values()), 3), round(sum(p.lesion_ml for p in parts.values()), 3)
    )
    outside = round(int((les & (lung_labels == 0)).sum()) * voxel_ml, 3)
    return Burden(scan, voxel_ml, parts, outside, lung_mask_applied, removed_voxels)
