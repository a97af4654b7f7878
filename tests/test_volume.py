"""NIfTI I/O, planes, resizing, fusion."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bunet import volume


def _write(tmp_path, data, affine, name="scan.nii.gz"):
    p = tmp_path / name
    nib.save(nib.Nifti1Image(data, affine), str(p))
    return p


@pytest.mark.parametrize("flip", [(1, 1, 1), (-1, -1, 1), (-1, 1, -1)])
def test_round_trip_keeps_geometry_in_any_orientation(tmp_path, flip):
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 400, (12, 10, 7)).astype(np.int16)
    aff = np.diag([1.5 * flip[0], 2.0 * flip[1], 3.0 * flip[2], 1.0])
    aff[:3, 3] = [10, -20, 30]
    scan = volume.load_scan(_write(tmp_path, data, aff))
    assert scan.zooms == (1.5, 2.0, 3.0)
    labels = (scan.hu > 0).astype(np.uint8)
    out = tmp_path / "mask.nii.gz"
    volume.write_mask(labels, scan, out)
    m = nib.load(str(out))
    assert np.allclose(m.affine, aff) and m.shape == data.shape
    assert np.array_equal(np.asarray(m.dataobj) > 0, data > 0)


def test_planes_round_trip_and_shapes():
    v = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    assert volume.to_slices(v, "xy").shape == (6, 5, 4)
    assert volume.to_slices(v, "xz").shape == (5, 6, 4)
    assert volume.to_slices(v, "yz").shape == (4, 6, 5)
    for p in volume.PLANES:
        assert np.array_equal(volume.from_slices(volume.to_slices(v, p), p), v)


def test_resize_labels_is_nearest_and_round_trips():
    lab = np.zeros((2, 6, 9), dtype=np.uint8)
    lab[:, 2:4, 3:6] = 1
    up = volume.resize_stack(lab, (12, 18), labels=True)
    assert set(np.unique(up)) <= {0, 1}
    assert np.array_equal(volume.resize_stack(up, (6, 9), labels=True), lab)


def test_fusion_rules():
    a = np.array([1, 1, 0, 0], dtype=np.uint8)
    b = np.array([1, 0, 1, 0], dtype=np.uint8)
    c = np.array([0, 1, 1, 0], dtype=np.uint8)
    assert volume.fuse({"xy": a, "yz": b, "xz": c}).tolist() == [1, 1, 1, 0]
    assert volume.fuse({"xy": a, "yz": b}).tolist() == [1, 0, 0, 0]  # ties -> background
    assert volume.fuse({"xy": a, "yz": b}, "union").tolist() == [1, 1, 1, 0]
    assert volume.fuse({"xy": a}, "single").tolist() == a.tolist()
    with pytest.raises(ValueError):
        volume.fuse({"xy": a, "yz": b}, "single")


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(volume.ScanError, match="not found"):
        volume.load_scan(tmp_path / "nope.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(volume.ScanError, match="cannot read"):
        volume.load_scan(junk)
    flat = _write(tmp_path, np.zeros((5, 5), dtype=np.int16), np.eye(4), "flat.nii.gz")
    with pytest.raises(volume.ScanError, match="3D"):
        volume.load_scan(flat)


def test_real_ct_round_trip(shared_data, tmp_path):
    src = shared_data / "totalsegmentator_examples" / "pulmonary_ct_cropped.nii.gz"  # LPS orientation
    scan = volume.load_scan(src)
    out = tmp_path / "m.nii.gz"
    volume.write_mask((scan.hu < -600).astype(np.uint8), scan, out)
    orig = nib.load(str(src))
    m = nib.load(str(out))
    assert np.allclose(m.affine, orig.affine)
    assert np.array_equal(np.asarray(m.dataobj) > 0, np.asarray(orig.dataobj) < -600)
