"""The preview PNG: per plane the slice with the most lesion, grey CT (lung window) under a red
lesion overlay and the lung contour, at a readable size, with a legend and the burden figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from .burden import Burden
from .volume import PLANES, Scan, slice_spacing, to_slices

TILE_PX = 420  # the longer side of each plane's tile
WINDOW = (-1350.0, 150.0)  # lung window (HU)
LESION_RGB = np.array([1.0, 0.15, 0.1])
CONTOUR_RGB = np.array([0.1, 0.9, 1.0])
NAMES = {"xy": "axial", "xz": "coronal", "yz": "sagittal"}


def best_slice(lesion: np.ndarray, lungs: np.ndarray) -> int:
    """Index of the slice (axis 0) with the most lesion; else the most lung; else the middle."""
    for m in (lesion, lungs):
        counts = m.reshape(len(m), -1).sum(axis=1)
        if counts.max() > 0:
            return int(np.argmax(counts))
    return len(lesion) // 2


def _tile(scan: Scan, lesion: np.ndarray, lungs: np.ndarray, plane: str) -> tuple[np.ndarray, str]:
    img, les, lung = (to_slices(v, plane) for v in (scan.hu, lesion > 0, lungs > 0))
    k = best_slice(les, lung)
    row_mm, col_mm = slice_spacing(scan.zooms, plane)
    h_mm, w_mm = img.shape[1] * row_mm, img.shape[2] * col_mm
    px_mm = TILE_PX / max(h_mm, w_mm)
    size = (max(1, round(h_mm * px_mm)), max(1, round(w_mm * px_mm)))
    lo, hi = WINDOW
    grey = ndimage.zoom(
        np.clip((img[k] - lo) / (hi - lo), 0, 1),
        (size[0] / img.shape[1], size[1] / img.shape[2]),
        order=1,
        grid_mode=True,
        mode="nearest",
    )[: size[0], : size[1]]
    rows = np.minimum((np.arange(size[0]) + 0.5) * img.shape[1] / size[0], img.shape[1] - 1).astype(int)
    cols = np.minimum((np.arange(size[1]) + 0.5) * img.shape[2] / size[1], img.shape[2] - 1).astype(int)
    m_les, m_lung = les[k][rows][:, cols], lung[k][rows][:, cols]
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[m_les] = 0.5 * rgb[m_les] + 0.5 * LESION_RGB
    edge = m_lung & ~ndimage.binary_erosion(m_lung, iterations=2, border_value=0)
    rgb[edge] = CONTOUR_RGB
    return rgb, f"{NAMES[plane]} slice {k + 1}/{img.shape[0]}: {int(les[k].sum())} lesion px"


def write_preview(
    scan: Scan, lesion: np.ndarray, lungs: np.ndarray, path: str | Path, report: Burden | None = None
) -> None:
    """Write the three-plane PNG (canonical ``lesion`` and ``lungs`` volumes on the scan's grid)."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    tiles = [_tile(scan, lesion, lungs, p) for p in PLANES]
    gap, title_h, legend_h = 10, 24, 30 + (20 * 4 if report else 0)
    W = sum(t.shape[1] for t, _ in tiles) + gap * (len(tiles) + 1)
    H = max(t.shape[0] for t, _ in tiles) + title_h + legend_h + 2 * gap
    canvas = Image.new("RGB", (W, H), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    x = gap
    for rgb, title in tiles:
        draw.text((x, gap // 2 + 2), title, fill=(235, 235, 235), font=font)
        canvas.paste(Image.fromarray((rgb * 255).astype(np.uint8)), (x, gap + title_h))
        x += rgb.shape[1] + gap
    y = H - legend_h
    draw.rectangle((gap, y + 4, gap + 14, y + 18), fill=tuple(int(255 * v) for v in 0.5 + 0.5 * LESION_RGB))
    draw.text((gap + 20, y + 3), "lesion (BUNET)", fill=(235, 235, 235), font=font)
    draw.line((gap + 170, y + 11, gap + 190, y + 11), fill=tuple(int(255 * v) for v in CONTOUR_RGB), width=3)
    draw.text((gap + 196, y + 3), "lung fields (threshold)", fill=(235, 235, 235), font=font)
    draw.text((gap + 400, y + 3), "axial, coronal: patient's right on the left", fill=(160, 160, 160), font=font)
    if report:  # a small table: fixed column positions, the font is proportional
        rows = [("", "lung mL", "lesion mL", "involved")] + [
            (k, f"{p.lung_ml:.1f}", f"{p.lesion_ml:.1f}", f"{p.involvement_percent:.1f} %")
            for k, p in report.parts.items()
        ]
        for i, row in enumerate(rows):
            for j, cell in enumerate(row):
                right = gap + 60 + 100 * j  # numbers right-aligned at the column's end
                x0 = gap if j == 0 else right - draw.textlength(cell, font=font)
                draw.text((x0, y + 26 + 20 * i), cell, fill=(235, 235, 235), font=font)
    path = Path(path)
    tmp = path.with_name(".part-" + path.name)
    canvas.save(str(tmp), format="PNG")
    tmp.replace(path)
