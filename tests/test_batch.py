"""Runs of ``bunet-client segment`` over cases: discovery, outputs, resume, failures, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from seed_unet import seed_unet_model

from bunet import batch, dicom
from bunet.client import Summary
from bunet.phantom import make_phantom, save_nifti

SHAPE, SPACING = (32, 32, 4), (10.0, 10.0, 10.0)  # 1 mL voxels: lungs of a few hundred voxels


def _phantom(path: Path, seed: int = 1) -> Path:
    hu, _, aff = make_phantom(shape=SHAPE, spacing=SPACING, seed=seed, n_lesions=2)
    save_nifti(path, hu, aff)
    return path


class FakeClient:
    """Stands in for the secure client to test the orchestration: 'lesion' = denser than -600 HU,
    recording which slices were sent."""

    model = SimpleNamespace(name="fake")

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[np.ndarray] = []
        self.fail_on = fail_on

    def segment(self, scan, planes, fusion, progress, roi=None):
        if self.fail_on and self.fail_on in str(scan.image.get_filename() or ""):
            raise ValueError("server said no")
        keep = roi.any(axis=(0, 1)) if roi is not None else np.ones(scan.shape[2], bool)
        self.calls.append(keep)
        labels = ((scan.hu > -600) & keep[None, None, :]).astype(np.uint8)
        return SimpleNamespace(labels=labels, summary=Summary(slices={"xy": int(keep.sum())}))


def test_discover(tmp_path):
    _phantom(tmp_path / "a.nii.gz")
    _phantom(tmp_path / "b.nii")
    (tmp_path / "notes.txt").write_text("x")
    dicom.write_series(tmp_path / "a.nii.gz", tmp_path / "c_dicom")
    (tmp_path / "empty").mkdir()
    found = batch.discover([str(tmp_path)])
    assert [(c.name, c.dicom) for c in found] == [("a", False), ("b", False), ("c_dicom", True)]
    assert batch.is_batch([str(tmp_path)], found)
    one = batch.discover([str(tmp_path / "c_dicom")])
    assert len(one) == 1 and one[0].dicom and not batch.is_batch([str(tmp_path / "c_dicom")], one)
    missing = batch.discover([str(tmp_path / "nope.nii.gz"), str(tmp_path / "a.nii.gz")])
    assert [c.name for c in missing] == ["nope", "a"]


def test_batch_resume_failures_and_no_partial_files(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _phantom(src / "a.nii.gz")
    _phantom(src / "b.nii.gz", seed=2)
    dicom.write_series(src / "a.nii.gz", src / "d")
    (src / "broken.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "out"
    out.mkdir()
    fake = FakeClient(fail_on="b.nii.gz")
    wanted = ["report", "preview", "dicom_seg"]
    res = batch.run_batch(batch.discover([str(src)]), lambda: fake, out, wanted, batch.Options())
    status = {o.case.name: o.status for o in res}
    assert status == {"a": "done", "b": "failed", "broken": "failed", "d": "done"}
    assert "server said no" in next(o.message for o in res if o.case.name == "b")
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "a_mask.nii.gz",
        "a_preview.png",
        "a_report.json",
        "d_mask.nii.gz",
        "d_preview.png",
        "d_report.json",
        "d_seg.dcm",
    ]  # nothing of b, no .part
    # lungs first: only slices that cut the lungs were sent, and the mask is inside the lungs
    assert all(c.any() for c in fake.calls)
    m = np.asarray(nib.load(str(out / "a_mask.nii.gz")).dataobj)
    assert m.any() and nib.load(str(out / "a_mask.nii.gz")).shape == SHAPE
    # the DICOM case's NIfTI mask is the NIfTI case's (same volume, same geometry)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out / "d_mask.nii.gz")).dataobj), m)
    np.testing.assert_allclose(
        nib.load(str(out / "d_mask.nii.gz")).affine, nib.load(str(out / "a_mask.nii.gz")).affine, atol=1e-4
    )
    # resume: done cases are skipped, failed ones retried
    before = (out / "a_mask.nii.gz").stat().st_mtime_ns
    res = batch.run_batch(batch.discover([str(src)]), lambda: FakeClient(), out, wanted, batch.Options())
    assert {o.case.name: o.status for o in res} == {"a": "skipped", "b": "done", "broken": "failed", "d": "skipped"}
    assert (out / "a_mask.nii.gz").stat().st_mtime_ns == before
    table = batch.summary_table(res)
    assert len(table) == 5 and "failed" in table[3]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    _phantom(tmp_path / "a.nii.gz")
    import bunet.preview

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(bunet.preview, "write_preview", boom)
    outs = batch.outputs_for(batch.discover([str(tmp_path / "a.nii.gz")])[0], tmp_path / "o", ["report", "preview"])
    (tmp_path / "o").mkdir()
    with pytest.raises(OSError, match="disk full"):
        batch.run_case(batch.discover([str(tmp_path / "a.nii.gz")])[0], FakeClient, outs, batch.Options())
    assert list((tmp_path / "o").iterdir()) == []


def test_no_lung_mask_keeps_everything(tmp_path):
    _phantom(tmp_path / "a.nii.gz")
    c = batch.discover([str(tmp_path / "a.nii.gz")])[0]
    fake = FakeClient()
    o1 = batch.run_case(c, lambda: fake, batch.outputs_for(c, tmp_path, []), batch.Options(lung_mask=False))
    assert o1.report.lesion_ml_outside_lungs > 0 and not o1.report.lung_mask_applied
    o2 = batch.run_case(c, lambda: fake, batch.outputs_for(c, tmp_path, []), batch.Options())
    assert o2.report.lesion_ml_outside_lungs == 0 and o2.report.removed_voxels > 0
    assert o1.report.parts["total"].lesion_ml == o2.report.parts["total"].lesion_ml


def _cli(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from bunet import cli; sys.exit(cli.client_main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    p = tmp_path_factory.mktemp("m") / "m.bunet"
    seed_unet_model(in_channels=1, base=2, depth=1, input_size=8).save(p)
    return p


def test_cli_dicom_folder_and_folder_of_cases(tmp_path, tiny_model):
    """The real secure path end to end: a DICOM folder with --dicom-seg, then a folder of cases."""
    _phantom(tmp_path / "a.nii.gz")
    dicom.write_series(tmp_path / "a.nii.gz", tmp_path / "cases" / "a_dicom", shuffle_seed=1)
    r = _cli(
        "segment",
        str(tmp_path / "cases" / "a_dicom"),
        "--model",
        str(tiny_model),
        "-o",
        str(tmp_path / "m.nii.gz"),
        "--dicom-seg",
        str(tmp_path / "s.dcm"),
        "--report",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert "lesion burden" in r.stderr and (tmp_path / "m_report.json").is_file()
    d = dicom.load_series(tmp_path / "cases" / "a_dicom")
    mask = np.asarray(nib.load(str(tmp_path / "m.nii.gz")).dataobj)
    np.testing.assert_array_equal(dicom.read_seg_labels(tmp_path / "s.dcm", d), mask)
    # the NIfTI input gives the same mask on the same grid
    r = _cli(
        "segment", str(tmp_path / "a.nii.gz"), "--model", str(tiny_model), "-o", str(tmp_path / "n.nii.gz"), "--quiet"
    )
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "n.nii.gz")).dataobj), mask)
    # a folder of cases with one bad case: the others are done, exit 1, a summary table
    _phantom(tmp_path / "cases" / "b.nii.gz", seed=3)
    (tmp_path / "cases" / "bad.nii").write_bytes(b"x" * 10)
    r = _cli("segment", str(tmp_path / "cases"), "--model", str(tiny_model), "-o", str(tmp_path / "out"), "--quiet")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "1 of 3 cases failed" in r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_dicom_mask.nii.gz", "b_mask.nii.gz"]
    (tmp_path / "cases" / "bad.nii").unlink()
    r = _cli("segment", str(tmp_path / "cases"), "--model", str(tiny_model), "-o", str(tmp_path / "out"), "--quiet")
    assert r.returncode == 0 and r.stderr.count("skipped") >= 2
    r = _cli("segment", str(tmp_path / "cases"), "-o", str(tmp_path / "out"), "--report", "r.json")
    assert r.returncode == 2 and "without a file name" in r.stderr


def test_cli_dicom_seg_needs_dicom(tmp_path, tiny_model):
    _phantom(tmp_path / "a.nii.gz")
    r = _cli(
        "segment",
        str(tmp_path / "a.nii.gz"),
        "--model",
        str(tiny_model),
        "-o",
        str(tmp_path / "res"),
        "--report",
    )  # -o without a NIfTI suffix: a folder; no --quiet: the progress bar is off when stderr is a pipe
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["a_mask.nii.gz", "a_report.json"]
    r = _cli("segment", str(tmp_path / "a.nii.gz"), "--model", str(tiny_model), "--dicom-seg", "--quiet")
    assert r.returncode == 1 and "needs a DICOM series" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_lungs_first_equals_masking_afterwards(tmp_path):
    """Sending only the slices that cut the lungs gives, inside them, the labels of a full run
    (three planes, the real secure path)."""
    from bunet import volume
    from bunet.client import Client
    from bunet.lungs import lung_fields

    m = seed_unet_model(in_channels=1, base=2, depth=1, input_size=8, seed=4, planes=("xy", "yz", "xz"))
    m.save(tmp_path / "m.bunet")
    scan = volume.load_scan(_phantom(tmp_path / "a.nii.gz"))
    roi = lung_fields(scan.hu, scan.zooms).mask
    roi[:, :, 0] = False  # one axial slice without lung
    with Client(None, model=tmp_path / "m.bunet") as c:
        full = c.segment(scan, ["xy", "yz", "xz"], "majority")
        part = c.segment(scan, ["xy", "yz", "xz"], "majority", roi=roi)
    assert part.summary.slices["xy"] == SHAPE[2] - 1 and part.summary.slices["yz"] < SHAPE[0]
    np.testing.assert_array_equal(part.labels[roi], full.labels[roi])
    assert not part.per_plane["xy"][:, :, 0].any()
    assert (full.labels[roi] > 0).any() and (full.labels[roi] == 0).any()  # the comparison can fail


def test_folder_of_cases_over_two_servers(tmp_path, tiny_model):
    """The cases' jobs go through main's multi-server client: with one server gone after the first
    case, the next case moves to the other; the masks equal those of a run on one embedded server."""
    from bunet.client import Client
    from bunet.server import Server

    src = tmp_path / "cases"
    src.mkdir()
    _phantom(src / "a.nii.gz")
    _phantom(src / "b.nii.gz", seed=3)
    found = batch.discover([str(src)])
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    said: list[str] = []
    with (
        Server(tiny_model) as s1,
        Server(tiny_model) as s2,
        Client(f"{s1.address},{s2.address}", status=said.append) as c,
    ):
        first = batch.run_batch(found[:1], lambda: c, tmp_path / "two", [], batch.Options())
        s2.stop(grace=0)
        second = batch.run_batch(found[1:], lambda: c, tmp_path / "two", [], batch.Options())
    assert [o.status for o in first + second] == ["done", "done"], [o.message for o in first + second]
    assert any("moving the job" in m for m in said), said
    with Client(None, model=tiny_model) as c:
        ref = batch.run_batch(found, lambda: c, tmp_path / "one", [], batch.Options())
    assert [o.status for o in ref] == ["done", "done"]
    for name in ("a", "b"):
        got, want = (np.asarray(nib.load(str(tmp_path / d / f"{name}_mask.nii.gz")).dataobj) for d in ("two", "one"))
        np.testing.assert_array_equal(got, want)
