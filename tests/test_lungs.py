"""Lung fields: phantom lungs found with their lesions, outside air and bowel gas left out."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bunet import lungs, volume
from bunet.phantom import make_phantom, save_nifti


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    d = tmp_path_factory.mktemp("ph")
    hu, lab, aff = make_phantom(shape=(64, 64, 8), spacing=(5.0, 5.0, 4.0))
    save_nifti(d / "ct.nii.gz", hu, aff)
    save_nifti(d / "lab.nii.gz", lab, aff)
    return volume.load_scan(d / "ct.nii.gz"), volume.load_scan(d / "lab.nii.gz").hu > 0


def test_phantom_lungs_hold_the_lesions(phantom):
    scan, truth = phantom
    lf = lungs.lung_fields(scan.hu, scan.zooms)
    assert (lf.mask & truth).sum() >= 0.95 * truth.sum()  # coarse 5 mm grid; 0.99 at 2.5 mm
    right, left = (np.nonzero(lf.labels == v)[0].mean() for v in (lungs.RIGHT, lungs.LEFT))
    assert right > left  # canonical +x is the patient's right
    assert not lf.mask[0].any() and not lf.mask[-1].any()  # outside air at the sides


def test_bowel_gas_and_small_pockets_are_not_lung(phantom):
    scan, _ = phantom
    hu = scan.hu.copy()
    base = lungs.lung_fields(hu, scan.zooms).mask
    x, y, z = np.ogrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    # a gas-filled loop (pure air, -1000 HU) in the soft tissue between the lungs, behind the sternum
    body_only = (hu > -200) & ~base
    cx, cy = 32, np.nonzero(body_only[32, :, 4])[0].max() - 4
    gas = ((x - cx) ** 2 + (y - cy) ** 2 <= 9) & (z >= 1) & (z <= 6)
    hu[gas] = -1000.0
    lf = lungs.lung_fields(hu, scan.zooms)
    assert not (lf.mask & gas).any()


def test_empty_and_gas_only_volumes():
    hu = np.full((20, 20, 4), 40.0, dtype=np.float32)
    assert not lungs.lung_fields(hu, (5.0, 5.0, 5.0)).mask.any()
    hu[5:15, 5:15] = -1000.0  # pure gas
    assert not lungs.lung_fields(hu, (5.0, 5.0, 5.0)).mask.any()
    hu[5:15, 5:15] = -850.0  # aerated lung density
    assert lungs.lung_fields(hu, (5.0, 5.0, 5.0)).mask[5:15, 5:15].all()


def test_dice():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert lungs.dice(a, b) == 1.0
    a[0, :2] = True
    b[0, 1:3] = True
    assert lungs.dice(a, b) == 0.5


@pytest.mark.shared_data
def test_real_lung_bases_match_the_lobe_labels(shared_data):
    d = shared_data / "totalsegmentator_examples"
    scan = volume.load_scan(d / "example_ct.nii.gz")
    seg = np.asarray(nib.as_closest_canonical(nib.load(str(d / "example_seg_fast_force_split.nii.gz"))).dataobj)
    lf = lungs.lung_fields(scan.hu, scan.zooms)
    assert lungs.dice(lf.labels == lungs.RIGHT, np.isin(seg, [12, 13, 14])) > 0.9
    assert lungs.dice(lf.labels == lungs.LEFT, np.isin(seg, [10, 11])) > 0.9
    assert not (lf.mask & np.isin(seg, [18, 19, 20])).any()  # no bowel
