"""The sample-scan phantom: deterministic, plausible HU, lesions of known extent inside the lungs."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bunet.phantom import main, make_phantom

DATA = Path(__file__).resolve().parents[1] / "data"


def test_deterministic_and_typed() -> None:
    a = make_phantom(shape=(64, 64, 6), spacing=(5.0, 5.0, 6.0), seed=7)
    b = make_phantom(shape=(64, 64, 6), spacing=(5.0, 5.0, 6.0), seed=7)
    c = make_phantom(shape=(64, 64, 6), spacing=(5.0, 5.0, 6.0), seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    hu, lab, aff = a
    assert hu.dtype == np.int16 and lab.dtype == np.uint8 and hu.shape == lab.shape == (64, 64, 6)
    np.testing.assert_allclose(np.abs(np.diag(aff)[:3]), [5.0, 5.0, 6.0])


def test_tissue_values_and_lesions() -> None:
    hu, lab, _ = make_phantom()
    assert hu.shape == (128, 128, 12)
    assert hu.min() <= -950 and hu.max() >= 600  # air and bone
    les = lab > 0
    assert 0.01 < les.mean() < 0.15
    # lesions are ground glass: well above aerated lung, below soft tissue
    assert -600 < np.median(hu[les]) < -100
    # aerated lung exists and is darker than the lesions: the voxels just around each lesion
    from scipy import ndimage

    ring = ndimage.binary_dilation(les, iterations=2) & ~les & (hu < -500)
    assert np.median(hu[ring]) < -750
    # every slice with lesions has some aerated lung (lesions sit inside the lung fields)
    assert all((hu[..., k] < -800).sum() > 500 for k in range(hu.shape[2]) if les[..., k].any())


def test_command_writes_nifti_with_affine(tmp_path: Path) -> None:
    out = tmp_path / "ct.nii.gz"
    main(["--out", str(out), "--size", "48", "--slices", "4"])
    img = nib.load(str(out))
    labels = nib.load(str(tmp_path / "ct_lesions.nii.gz"))
    hu, lab, aff = make_phantom(shape=(48, 48, 4))
    np.testing.assert_array_equal(np.asarray(img.dataobj), hu)
    np.testing.assert_array_equal(np.asarray(labels.dataobj), lab)
    np.testing.assert_allclose(img.affine, aff)
    np.testing.assert_allclose(labels.affine, aff)
    assert img.header.get_data_dtype() == np.int16


@pytest.mark.slow
def test_bundled_sample_is_the_phantom() -> None:
    path = DATA / "sample_ct.nii.gz"
    if not path.is_file():
        pytest.skip("data/sample_ct.nii.gz not generated")
    hu, lab, aff = make_phantom()
    np.testing.assert_array_equal(np.asarray(nib.load(str(path)).dataobj), hu)
    np.testing.assert_allclose(nib.load(str(path)).affine, aff)
    np.testing.assert_array_equal(np.asarray(nib.load(str(DATA / "sample_ct_lesions.nii.gz")).dataobj), lab)


@pytest.mark.slow
def test_bundled_model_finds_phantom_lesions() -> None:
    from bunet.phantom import model_dice

    model, scan = DATA / "covid_unet.bunet", DATA / "sample_ct.nii.gz"
    if not (model.is_file() and scan.is_file()):
        pytest.skip("bundled model or sample scan missing")
    r = model_dice(model, scan, DATA / "sample_ct_lesions.nii.gz")
    assert r["dice"] > 0.5, r
