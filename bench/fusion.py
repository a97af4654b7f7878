"""Does the axial model help when also applied to sagittal and coronal slices? (issue 17, part 4)

    python bench/fusion.py [--model data/covid_unet.bunet] > fusion.json

On phantoms with known 3D lesion labels (bunet/phantom.py: the bundled 12-slice scan and taller
ones), the bundled model's labels per plane are computed with the float reference (three times
faster than the fixed-point one, which the secure protocol equals bit for bit; the two agree on
over 99 % of pixels, see the model's quantization_choice), then fused: xy alone vs three-plane majority vs
union, Dice against the lesion labels, inside the lung fields as the client does by default.
Two ways to feed sagittal/coronal slices to a model trained on axial ones:
  stretch: every slice resized to the model's input size (what the client does for any plane);
  spacing: resampled to the model's pixel spacing on the axial slices (mm per input pixel), then
           padded with air to the input size, so anatomy keeps its size and aspect.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bunet import volume
from bunet.lungs import dice, lung_fields
from bunet.model.format import Model
from bunet.model.reference import float_labels
from bunet.phantom import make_phantom, save_nifti

AIR_HU = -1000.0
PHANTOMS = [  # (shape, spacing, seed)
    ((128, 128, 12), (2.5, 2.5, 3.0), 2020),  # the bundled sample scan
    ((128, 128, 40), (2.5, 2.5, 3.0), 2020),
    ((128, 128, 48), (2.5, 2.5, 2.5), 7),
]


def plane_labels(model: Model, scan: volume.Scan, plane: str, mode: str) -> np.ndarray:
    """Canonical label volume of one plane (float reference of the model)."""
    pp = model.preprocessing
    size = tuple(pp.input_size)
    st = volume.to_slices(scan.hu, plane)
    if mode == "stretch" or plane == "xy":
        x = volume.resize_stack(pp.apply(st), size)
        lab = float_labels(model.network("xy"), x[:, None].astype(np.float32))
        return volume.from_slices(volume.resize_stack(lab.astype(np.uint8), st.shape[1:], labels=True), plane)
    # mm per model pixel on this scan's axial slices (rows: y, cols: x in the canonical grid)
    zx, zy, zz = scan.zooms
    nx, ny, _ = scan.shape
    mm = (ny * zy / size[0], nx * zx / size[1])
    row_mm, col_mm = volume.slice_spacing(scan.zooms, plane)
    h = min(size[0], max(1, round(st.shape[1] * row_mm / mm[0])))
    w = min(size[1], max(1, round(st.shape[2] * col_mm / mm[1])))
    small = volume.resize_stack(pp.apply(st), (h, w))
    x = np.full((len(st), *size), float(pp.apply(np.float32(AIR_HU))), dtype=np.float32)
    r0, c0 = (size[0] - h) // 2, (size[1] - w) // 2
    x[:, r0 : r0 + h, c0 : c0 + w] = small
    lab = float_labels(model.network("xy"), x[:, None]).astype(np.uint8)
    lab = lab[:, r0 : r0 + h, c0 : c0 + w]
    return volume.from_slices(volume.resize_stack(lab, st.shape[1:], labels=True), plane)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "data" / "covid_unet.bunet"))
    args = ap.parse_args()
    model = Model.load(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape, spacing, seed in PHANTOMS:
            hu, lab, aff = make_phantom(shape=shape, spacing=spacing, seed=seed)
            save_nifti(Path(tmp) / "ct.nii.gz", hu, aff)
            save_nifti(Path(tmp) / "lab.nii.gz", lab, aff)
            scan = volume.load_scan(Path(tmp) / "ct.nii.gz")
            truth = volume.load_scan(Path(tmp) / "lab.nii.gz").hu > 0
            lungs = lung_fields(scan.hu, scan.zooms).mask
            row: dict[str, object] = {
                "shape": shape,
                "spacing_mm": spacing,
                "seed": seed,
                "lesion_voxels": int(truth.sum()),
            }
            t0 = time.perf_counter()
            for mode in ("stretch", "spacing"):
                per = {p: plane_labels(model, scan, p, mode) for p in volume.PLANES}
                d = {f"{p}_alone": dice((per[p] > 0) & lungs, truth) for p in volume.PLANES}
                for fusion in ("majority", "union"):
                    d[fusion] = dice((volume.fuse(per, fusion) > 0) & lungs, truth)
                row[mode] = {k: round(v, 4) for k, v in d.items()}
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)  # partial results while it runs
    print(
        json.dumps(
            {"model": model.name, "metric": "Dice vs phantom lesion labels, inside the lung fields", "phantoms": rows},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
