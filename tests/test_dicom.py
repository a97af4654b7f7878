"""DICOM series in (geometry, HU, series choice) and DICOM-SEG out, against the NIfTI path."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bunet import dicom, volume
from bunet.phantom import make_phantom, save_nifti


def _rotation(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    r = np.eye(4)
    r[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return r


AFFINES = {  # storage orientations a scanner or converter may produce
    "LPS": np.array([[-0.8, 0, 0, 40.0], [0, -0.7, 0, 30.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]]),
    "RAS": np.array([[0.8, 0, 0, -40.0], [0, 0.7, 0, -30.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]]),
    "LAI": np.array([[-0.8, 0, 0, 40.0], [0, 0.7, 0, -30.0], [0, 0, -2.5, 20.0], [0, 0, 0, 1]]),
    "oblique": _rotation(20) @ np.array([[-0.8, 0, 0, 40.0], [0, -0.7, 0, 30.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]]),
}


def _volume(tmp_path, affine, shape=(12, 10, 5), name="v.nii.gz"):
    rng = np.random.default_rng(1)
    data = rng.integers(-1024, 1500, size=shape).astype(np.int16)
    p = tmp_path / name
    save_nifti(p, data, affine)
    return p, data


@pytest.mark.parametrize("orient", sorted(AFFINES))
def test_series_matches_nifti(tmp_path, orient):
    src, _ = _volume(tmp_path, AFFINES[orient])
    dicom.write_series(src, tmp_path / "dcm", shuffle_seed=3)  # file order != slice order
    d = dicom.load_series(tmp_path / "dcm")
    s = volume.load_scan(src)
    np.testing.assert_allclose(d.scan.image.affine, s.image.affine, atol=1e-4)
    np.testing.assert_array_equal(d.scan.hu, s.hu)
    np.testing.assert_allclose(d.scan.zooms, s.zooms, atol=1e-5)


def test_mask_geometry_matches_nifti_path(tmp_path):
    src, _ = _volume(tmp_path, AFFINES["LPS"])
    dicom.write_series(src, tmp_path / "dcm")
    d, s = dicom.load_series(tmp_path / "dcm"), volume.load_scan(src)
    labels = (s.hu > 200).astype(np.uint8)
    volume.write_mask(labels, d.scan, tmp_path / "from_dicom.nii.gz")
    volume.write_mask(labels, s, tmp_path / "from_nifti.nii.gz")
    a, b = nib.load(str(tmp_path / "from_dicom.nii.gz")), nib.load(str(tmp_path / "from_nifti.nii.gz"))
    assert a.shape == b.shape
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))


def test_rescale_slope_intercept(tmp_path):
    src, data = _volume(tmp_path, AFFINES["LPS"])
    dicom.write_series(src, tmp_path / "dcm", slope=2.0, intercept=-2048.0)
    d = dicom.load_series(tmp_path / "dcm")
    # stored values are rounded to the slope's step: HU within 1 of the source
    assert np.abs(d.scan.hu - volume.load_scan(src).hu).max() <= 1.0


def test_dicom_seg_round_trip(tmp_path):
    hu, lab, aff = make_phantom(shape=(32, 32, 4), spacing=(10.0, 10.0, 10.0), n_lesions=3)
    save_nifti(tmp_path / "ct.nii.gz", hu, aff)
    dicom.write_series(tmp_path / "ct.nii.gz", tmp_path / "dcm", shuffle_seed=5)
    d = dicom.load_series(tmp_path / "dcm")
    canon = volume.from_slices(volume.to_slices((d.scan.hu > -700).astype(np.uint8), "xy"), "xy")
    dicom.write_seg(canon, d, tmp_path / "seg.dcm")
    back = dicom.read_seg_labels(tmp_path / "seg.dcm", d)
    np.testing.assert_array_equal(back, volume.to_original(canon, d.scan))
    assert back.any() and not back.all()
    import pydicom

    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == d.series_uid
    assert seg.FrameOfReferenceUID == d.datasets[0].FrameOfReferenceUID


def test_several_series_listed_then_chosen(tmp_path):
    a, _ = _volume(tmp_path, AFFINES["LPS"], name="a.nii.gz")
    b, _ = _volume(tmp_path, AFFINES["RAS"], shape=(8, 8, 3), name="b.nii.gz")
    dicom.write_series(a, tmp_path / "dcm")
    dicom.write_series(b, tmp_path / "dcm_b")
    for f in (tmp_path / "dcm_b").iterdir():
        f.rename(tmp_path / "dcm" / f"b_{f.name}")
    with pytest.raises(volume.ScanError, match="2 series; choose one with --series") as e:
        dicom.load_series(tmp_path / "dcm")
    uids = sorted(dicom.list_series(tmp_path / "dcm"))
    assert all(u in str(e.value) for u in uids) and "\n" not in str(e.value)
    chosen = [dicom.load_series(tmp_path / "dcm", u).scan.shape for u in uids]
    assert sorted(chosen) == sorted([(8, 8, 3), (12, 10, 5)])
    with pytest.raises(volume.ScanError, match="not in"):
        dicom.load_series(tmp_path / "dcm", "1.2.3")


def test_missing_or_duplicate_slices(tmp_path):
    src, _ = _volume(tmp_path, AFFINES["LPS"])
    paths = sorted(dicom.write_series(src, tmp_path / "dcm"))
    paths[2].unlink()  # a gap
    with pytest.raises(volume.ScanError, match="unevenly spaced"):
        dicom.load_series(tmp_path / "dcm")


def test_not_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert not dicom.is_dicom_folder(tmp_path)
    with pytest.raises(volume.ScanError, match="no DICOM image slices"):
        dicom.load_series(tmp_path)


@pytest.mark.shared_data
def test_real_ct_as_dicom_series(shared_data, tmp_path):
    src = shared_data / "totalsegmentator_examples" / "pulmonary_ct_cropped.nii.gz"  # LPS storage, int16
    dicom.write_series(src, tmp_path / "dcm", shuffle_seed=0)
    d, s = dicom.load_series(tmp_path / "dcm"), volume.load_scan(src)
    np.testing.assert_array_equal(d.scan.hu, s.hu)
    np.testing.assert_allclose(d.scan.image.affine, s.image.affine, atol=1e-3)


def test_multiframe_is_named(tmp_path):
    import pydicom

    src, _ = _volume(tmp_path, AFFINES["LPS"], shape=(6, 6, 2))
    paths = dicom.write_series(src, tmp_path / "dcm")
    ds = pydicom.dcmread(paths[0])
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(paths[0])
    paths[1].unlink()
    with pytest.raises(volume.ScanError, match="multi-frame"):
        dicom.load_series(tmp_path / "dcm")
