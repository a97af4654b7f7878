"""Lesion-burden report and the preview PNG."""

from __future__ import annotations

import json

import numpy as np

from bunet import lungs, volume
from bunet.burden import burden
from bunet.phantom import save_nifti
from bunet.preview import best_slice, write_preview


def test_volumes_and_involvement(tmp_path):
    lab = np.zeros((10, 10, 10), dtype=np.uint8)
    lab[:5] = lungs.LEFT
    lab[5:] = lungs.RIGHT  # 500 voxels each
    lesion = np.zeros_like(lab)
    lesion[6:8, :5, :5] = 1  # 50 voxels in the right lung
    lesion[0, 0, :2] = 1  # 2 in the left
    b = burden(lesion, lab, (2.0, 2.0, 2.5))  # 10 uL a voxel
    assert b.parts["right"].lung_ml == 5.0 and b.parts["right"].lesion_ml == 0.5
    assert b.parts["left"].lesion_ml == 0.02 and b.parts["total"].lung_ml == 10.0
    assert abs(b.parts["right"].involvement_percent - 10.0) < 1e-9
    assert abs(b.parts["total"].involvement_percent - 5.2) < 1e-9
    b.write_json(tmp_path / "r.json")
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["parts"]["total"]["involvement_percent"] == 5.2 and not list(tmp_path.glob(".part-*"))
    assert burden(lesion, np.zeros_like(lab), (1, 1, 1)).parts["total"].involvement_percent == 0.0


def test_best_slice():
    les = np.zeros((5, 4, 4), bool)
    lung = np.zeros_like(les)
    assert best_slice(les, lung) == 2
    lung[1] = True
    assert best_slice(les, lung) == 1
    les[3, :2] = True
    les[4, 0] = True
    assert best_slice(les, lung) == 3


def test_preview_png(tmp_path):
    hu = np.full((40, 30, 20), 40, dtype=np.int16)
    hu[5:18, 5:25, 2:18] = -850
    save_nifti(tmp_path / "ct.nii.gz", hu, np.diag([-2.0, -2.0, 3.0, 1]))
    scan = volume.load_scan(tmp_path / "ct.nii.gz")
    lf = lungs.lung_fields(scan.hu, scan.zooms)
    lesion = np.zeros(scan.shape, np.uint8)
    lesion[..., 15] = lf.mask[..., 15]
    lesion[: scan.shape[0] // 2] = 0
    assert lesion.sum() > 20
    write_preview(scan, lesion, lf.labels, tmp_path / "p.png", burden(lesion, lf.labels, scan.zooms))
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")).astype(int)
    assert img.shape[1] >= 3 * 400 and img.shape[0] >= 300  # readable
    red = (img[..., 0] > 180) & (img[..., 1] < 140)
    cyan = (img[..., 2] > 200) & (img[..., 0] < 80)
    assert red.sum() > 100 and cyan.sum() > 100
